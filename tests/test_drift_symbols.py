"""drift symbols: the ELF reader on gcc-built libraries, the manifest comparison, the CLI and ci/drift.sh."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llamarcp.drift import symbols
from llamarcp.drift.__main__ import main
from llamarcp.errors import DriftError

ROOT = Path(__file__).resolve().parent.parent


def build_so(tmp: Path, name: str, source: str, *extra: str) -> Path:
    """A shared library from C source (gcc is required anyway: build_lib.py compiles llama.cpp)."""
    assert shutil.which("gcc"), "gcc is needed to build the test libraries"
    src = tmp / f"{name}.c"
    src.write_text(source)
    out = tmp / f"{name}.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(src), *extra], check=True, capture_output=True)
    return out


FAKE_LIB = """
int llama_present(int x) { return x + 1; }
const char * llama_also_present(void) { return "x"; }
int llama_extra_undeclared(void) { return 7; }          /* exported llama_* the manifest does not declare */
int llama_old_style(void) { return 1; }                  /* declared deprecated in the manifest */
static int llama_static_helper(void) { return 2; }       /* not exported: static */
__attribute__((visibility("hidden"))) int llama_hidden(void) { return llama_static_helper(); }
int llama_global_counter = 3;                            /* exported object, not a function */
extern int printf(const char *, ...);
int uses_libc(void) { return printf("") + llama_hidden(); }
"""


def manifest(*functions: dict[str, Any]) -> dict[str, Any]:
    return {"llama_cpp_commit": "test", "headers": ["llama.h"], "functions": list(functions)}


def fn(name: str, deprecated: str | None = None, group: str = "llama") -> dict[str, Any]:
    return {
        "name": name,
        "return_type": "int",
        "params": [],
        "variadic": False,
        "deprecated": deprecated,
        "doc": None,
        "header": "llama.h",
        "group": group,
    }


TEST_MANIFEST = manifest(
    fn("llama_present"),
    fn("llama_also_present"),
    fn("llama_missing_one"),
    fn("llama_old_style", deprecated="use llama_present instead"),
    fn("ggml_backend_rpc_thing", group="ggml-rpc"),
)


@pytest.fixture(scope="module")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_so(tmp_path_factory.mktemp("fakelib"), "libllama", FAKE_LIB)


def test_elf_reader_reports_exported_functions_only(fake_lib: Path) -> None:
    ex = symbols.read_exports(fake_lib)
    assert ex.format == "ELF"
    assert {"llama_present", "llama_also_present", "llama_extra_undeclared", "uses_libc"} <= ex.functions
    assert "llama_static_helper" not in ex.functions
    assert "llama_hidden" not in ex.functions
    assert "printf" not in ex.functions  # undefined import, not an export
    assert "llama_global_counter" in ex.objects and "llama_global_counter" not in ex.functions
    assert any(n.startswith("libc.so") for n in ex.needed)


def test_dt_needed_siblings_are_read(tmp_path: Path) -> None:
    build_so(tmp_path, "libggmlfake", "int ggml_backend_thing(void) { return 1; }")
    main_lib = build_so(
        tmp_path,
        "libllama",
        "extern int ggml_backend_thing(void); int llama_calls(void) { return ggml_backend_thing(); }",
        f"-L{tmp_path}",
        "-lggmlfake",
    )
    main_ex, siblings = symbols.read_with_siblings(main_lib)
    assert "ggml_backend_thing" not in main_ex.functions
    assert [Path(s.path).name for s in siblings] == ["libggmlfake.so"]
    assert "ggml_backend_thing" in siblings[0].functions


def test_compare_finds_missing_undeclared_deprecated_and_optional(fake_lib: Path) -> None:
    report = symbols.compare(TEST_MANIFEST, fake_lib, optional={"ggml-rpc": "build with --rpc"})
    by_kind = {(f.kind, f.name): f for f in report.findings}
    assert by_kind[("missing", "llama_missing_one")].severity == "error"
    assert by_kind[("undeclared", "llama_extra_undeclared")].severity == "warning"
    assert by_kind[("deprecated", "llama_old_style")].severity == "warning"
    assert "use llama_present instead" in by_kind[("deprecated", "llama_old_style")].message
    assert by_kind[("optional-missing", "ggml_backend_rpc_thing")].severity == "note"
    assert ("missing", "llama_present") not in by_kind
    assert report.failed() and report.count("error") == 1
    text = report.render_text()
    assert text.splitlines()[0] == f"library: {fake_lib}"  # libc is not beside it, so no siblings
    assert text.splitlines()[1].startswith("error: llama_missing_one is declared in llama.h but not exported")
    assert text.splitlines()[-1].startswith("symbols: 5 functions declared")


def test_compare_clean_library_passes_unless_strict(fake_lib: Path) -> None:
    clean = manifest(fn("llama_present"), fn("llama_also_present"), fn("llama_extra_undeclared"), fn("llama_old_style"))
    assert not symbols.compare(clean, fake_lib, optional={}).failed(strict=True)
    warned = manifest(fn("llama_present"), fn("llama_also_present"), fn("llama_old_style", deprecated="x"))
    report = symbols.compare(warned, fake_lib, optional={})
    assert not report.failed() and report.failed(strict=True)


def test_directory_resolves_to_libllama(fake_lib: Path) -> None:
    assert symbols.resolve_library(fake_lib.parent) == fake_lib


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xcf\xfa\xed\xfe" + b"\0" * 60, "Mach-O libraries are not supported yet"),
        (b"MZ" + b"\0" * 60, "PE libraries are not supported yet"),
        (b"#!/bin/sh\necho hi\n", "not a shared library in a known format"),
        (b"\x7fELF" + b"\0" * 12, "not a readable ELF file"),
    ],
)
def test_bad_library_files_raise_drift_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "libllama.so"
    path.write_bytes(content)
    with pytest.raises(DriftError, match=message):
        symbols.read_exports(path)


def test_missing_library_raises(tmp_path: Path) -> None:
    with pytest.raises(DriftError, match="does not exist"):
        symbols.resolve_library(tmp_path / "nope.so")
    with pytest.raises(DriftError, match="directory without libllama"):
        symbols.resolve_library(tmp_path)


def test_cli_exit_codes_and_json(fake_lib: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api = tmp_path / "api.json"
    api.write_text(json.dumps(TEST_MANIFEST))
    assert main(["symbols", str(fake_lib), "--api", str(api), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["errors"] == 1 and data["warnings"] == 2
    assert {f["name"] for f in data["findings"] if f["kind"] == "missing"} == {"llama_missing_one"}
    assert main(["symbols", str(tmp_path / "absent.so"), "--api", str(api)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_real_library_matches_generated_api() -> None:
    """The library of the bindings (the pinned build, or $LLAMARCP_LIB_PATH in a bump) exports every
    non-optional declared function and carries the bindings' ABI fingerprint."""
    from llamarcp._lib import find_library
    from llamarcp.drift.inputs import pinned_manifest

    report = symbols.compare(pinned_manifest(), find_library())
    assert report.count("error") == 0, report.render_text()
    assert report.declared == len(pinned_manifest()["functions"])
    assert any(f.kind == "abi" and "matches the API manifest" in f.message for f in report.findings), report.findings


# ------------------------------------------------------------------------------------ the CI step


def run_ci(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHON=sys.executable, **env_extra)
    return subprocess.run(["bash", str(ROOT / "ci" / "drift.sh")], capture_output=True, text=True, env=env, timeout=120)


def test_ci_drift_step_fails_on_missing_symbol(fake_lib: Path, tmp_path: Path) -> None:
    api = tmp_path / "api.json"
    api.write_text(json.dumps(manifest(fn("llama_present"), fn("llama_also_present"), fn("llama_missing_one"))))
    proc = run_ci({"DRIFT_LIB": str(fake_lib), "DRIFT_API": str(api), "DRIFT_STEPS": "symbols"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"library: {fake_lib}" in out
    assert "error: llama_missing_one is declared in llama.h but not exported; a call would fail" in out
    assert "warning: llama_extra_undeclared is exported but not declared in the API manifest" in out
    assert "drift check FAILED: symbols" in out


def test_ci_drift_step_passes_on_matching_library(fake_lib: Path, tmp_path: Path) -> None:
    api = tmp_path / "api.json"
    api.write_text(json.dumps(manifest(fn("llama_present"), fn("llama_also_present"))))
    proc = run_ci({"DRIFT_LIB": str(fake_lib), "DRIFT_API": str(api), "DRIFT_STEPS": "symbols"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "drift check passed" in proc.stdout


def test_ci_drift_step_fails_on_scanned_removed_call(tmp_path: Path) -> None:
    # The scan step runs over the project; here a stand-in project proves a removed call fails it.
    bad = tmp_path / "old_wrapper.py"
    bad.write_text("import llama_cpp\nllama_cpp.llama_kv_self_clear(ctx)\n")
    proc = subprocess.run(
        [sys.executable, "-m", "llamarcp.drift", "scan", str(bad)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 1
    assert f"{bad}:2:11: removed llama_kv_self_clear -> use llama_memory_clear" in proc.stdout


def test_truncated_elf_is_a_clear_error(fake_lib: Path, tmp_path: Path) -> None:
    data = fake_lib.read_bytes()
    for cut in (64, len(data) // 2, len(data) - 100):
        broken = tmp_path / f"libllama-{cut}.so"
        broken.write_bytes(data[:cut])
        with pytest.raises(DriftError, match="not a readable ELF file"):
            symbols.read_exports(broken)


def test_object_file_without_dynsym_is_rejected(tmp_path: Path) -> None:
    src = tmp_path / "obj.c"
    src.write_text("int llama_present(int x) { return x; }\n")
    obj = tmp_path / "obj.o"
    subprocess.run(["gcc", "-c", "-fPIC", "-o", str(obj), str(src)], check=True, capture_output=True)
    with pytest.raises(DriftError, match="without a dynamic symbol table"):
        symbols.read_exports(obj)


def test_a_library_the_loader_refuses_fails_the_check(tmp_path: Path) -> None:
    """Exports readable from the file but unloadable here (a library it links is gone): exit 1, naming why."""
    (tmp_path / "dep.c").write_text("int dep_value(void) { return 1; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "libdep.so"), str(tmp_path / "dep.c")], check=True)
    (tmp_path / "llama.c").write_text("int dep_value(void);\nint llama_backend_init(void) { return dep_value(); }\n")
    lib = tmp_path / "libllama.so"
    link = ["-Wl,--no-as-needed", "-L", str(tmp_path), "-ldep"]
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "llama.c"), *link], check=True)
    (tmp_path / "libdep.so").unlink()
    done = subprocess.run(
        [sys.executable, "-m", "codegen.drift", "symbols", str(lib), "--api", "pinned"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot load" in done.stdout + done.stderr and "libdep.so" in done.stdout + done.stderr
