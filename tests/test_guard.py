"""Runtime guard: missing used functions, build commit, ABI stamp and probe, opt-out, optional groups, used list."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from llamarcp import _guard, _lib
from llamarcp.drift import abi
from llamarcp.errors import LibraryMismatchError

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: The commit the generated bindings describe (the pin, or the tree of a bump in progress): the guard expects it.
LLAMA_CPP_COMMIT = _guard.bindings_commit()


class FakeLib:
    """Stands in for a dlopen'ed library: attribute access works only for exported names."""

    def __init__(self, *exported: str) -> None:
        self._exported = set(exported)

    def __getattr__(self, name: str) -> Any:
        if name in self._exported:
            return lambda *a: 0
        raise AttributeError(name)


def lib_dir(tmp_path: Path, commit: str | None) -> Path:
    path = tmp_path / "libllama.so"
    path.write_bytes(b"")
    if commit is not None:
        (tmp_path / "llamarcp-build.json").write_text(json.dumps({"commit": commit, "pinned": True}))
    return path


@pytest.fixture(autouse=True)
def _guard_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_guard.SKIP_ENV, raising=False)


def test_matching_library_passes(tmp_path: Path) -> None:
    path = lib_dir(tmp_path, LLAMA_CPP_COMMIT)
    _guard.check(FakeLib("llama_a", "llama_b"), path, used=["llama_a", "llama_b"])


def test_missing_functions_are_named_with_path_commit_and_fix(tmp_path: Path) -> None:
    path = lib_dir(tmp_path, None)
    with pytest.raises(LibraryMismatchError) as info:
        _guard.check(FakeLib("llama_a"), path, used=["llama_a", "llama_kv_self_clear", "llama_b"])
    err = info.value
    message = str(err)
    assert f"libllama at {path}" in message
    assert "2 function(s) llamarcp calls are not exported: llama_b, llama_kv_self_clear" in message
    assert f"expected llama.cpp commit {LLAMA_CPP_COMMIT}" in message
    assert "python build_lib.py" in message and "codegen/generate.py --source" in message
    assert "LLAMARCP_SKIP_GUARD=1" in message
    assert err.missing == ("llama_b", "llama_kv_self_clear")
    assert err.library == str(path) and err.expected_commit == LLAMA_CPP_COMMIT and err.found_commit is None


def test_wrong_build_commit_is_refused(tmp_path: Path) -> None:
    path = lib_dir(tmp_path, "4227c9be4268ac844921b90f31595f81236bd317")
    with pytest.raises(LibraryMismatchError) as info:
        _guard.check(FakeLib("llama_a"), path, used=["llama_a"])
    message = str(info.value)
    assert "built from llama.cpp commit 4227c9be4268ac844921b90f31595f81236bd317" in message
    assert f"llamarcp's bindings were generated from {LLAMA_CPP_COMMIT}" in message
    assert str(tmp_path / "llamarcp-build.json") in message
    assert info.value.found_commit == "4227c9be4268ac844921b90f31595f81236bd317"


@pytest.mark.parametrize("stamp", ['{"commit": "unknown"}', "{broken json", '["not", "a", "dict"]', '{"pinned": 1}'])
def test_unknown_or_unreadable_stamp_skips_the_commit_check_and_warns(tmp_path: Path, stamp: str) -> None:
    path = lib_dir(tmp_path, None)
    (tmp_path / "llamarcp-build.json").write_text(stamp)
    with pytest.warns(_guard.LibraryUnverifiedWarning, match="no build stamp with an ABI fingerprint"):
        _guard.check(FakeLib("llama_a"), path, used=["llama_a"])


def test_expected_commit_is_the_generated_bindings_commit() -> None:
    from llamarcp._generated import _abi, _symbols

    assert _guard.bindings_commit() == _symbols.LLAMA_CPP_COMMIT == _abi.LLAMA_CPP_COMMIT


def test_bare_soname_from_system_loader_has_no_stamp() -> None:
    assert _guard.stamp_commit("libllama.so") == (None, None)


def test_opt_out_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = lib_dir(tmp_path, "0" * 40)
    monkeypatch.setenv(_guard.SKIP_ENV, "1")
    _guard.check(FakeLib(), path, used=["llama_a"])
    monkeypatch.setenv(_guard.SKIP_ENV, "0")
    with pytest.raises(LibraryMismatchError):
        _guard.check(FakeLib(), path, used=["llama_a"])


def test_optional_group_functions_may_be_missing(tmp_path: Path) -> None:
    from llamarcp._generated import _symbols

    optional = _guard.optional_functions()
    rpc = sorted(_symbols.GROUPS["ggml-rpc"])
    assert rpc and all(name in optional for name in rpc)
    with pytest.warns(_guard.LibraryUnverifiedWarning):  # no stamp, nothing to probe on the stand-in
        _guard.check(FakeLib("llama_a"), lib_dir(tmp_path, None), used=["llama_a", *rpc])


def test_optional_table_is_the_codegen_group_table() -> None:
    sys.path.insert(0, str(ROOT))
    from codegen.parse import GROUPS

    assert set(_guard.optional_groups()) == {g.name for g in GROUPS if g.optional}


def test_used_function_list_is_current() -> None:
    """`python codegen/generate.py` must be rerun when llamarcp starts calling other functions."""
    from codegen import used
    from llamarcp._generated._used import USED_FUNCTIONS
    from llamarcp.drift.inputs import pinned_manifest

    declared = [f["name"] for f in pinned_manifest()["functions"]]
    assert list(USED_FUNCTIONS) == used.compute(declared), "stale: run `python codegen/generate.py`"
    assert set(USED_FUNCTIONS) <= set(declared) and "llama_backend_init" in USED_FUNCTIONS
    assert _guard.used_functions() == USED_FUNCTIONS


def test_used_scanner_sees_attribute_and_getattr_uses(tmp_path: Path) -> None:
    from codegen import used

    pkg = tmp_path / "pkg"
    (pkg / "_generated").mkdir(parents=True)
    (pkg / "drift").mkdir()
    (pkg / "mod.py").write_text("def f(lib):\n    lib.llama_decode(1)\n    getattr(lib, 'llama_free')\n    x.not_c\n")
    (pkg / "drift" / "tool.py").write_text("lib.llama_free_model()\n")
    (pkg / "_generated" / "wrappers.py").write_text("lib.llama_everything()\n")
    names = used.compute(("llama_decode", "llama_free", "llama_free_model", "llama_everything"), pkg)
    assert names == ["llama_decode", "llama_free", "llama_free_model"]


# ------------------------------------------------------------------------- with the real cffi bindings


def build_so(tmp: Path, source: str) -> Path:
    assert shutil.which("gcc"), "gcc is needed to build the test library"
    src = tmp / "fake.c"
    src.write_text(source)
    out = tmp / "libllama.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(src)], check=True, capture_output=True)
    return out


def test_real_dlopen_lookup_reports_missing_symbols(tmp_path: Path) -> None:
    from llamarcp._ffi import ffi

    path = build_so(tmp_path, "void llama_backend_init(void) {}\n")
    raw = ffi.dlopen(str(path))
    assert _guard.missing_functions(raw, ["llama_backend_init", "llama_backend_free"]) == ["llama_backend_free"]
    with pytest.raises(LibraryMismatchError, match="not exported: llama_backend_free"):
        _guard.check(raw, path, used=["llama_backend_init", "llama_backend_free"])


def test_load_runs_the_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = build_so(tmp_path, "void llama_backend_init(void) {}\n")
    (tmp_path / "llamarcp-build.json").write_text(json.dumps({"commit": "f" * 40}))
    from llamarcp import _release

    monkeypatch.setenv("LLAMARCP_LIB_PATH", str(path))
    monkeypatch.setattr(_lib, "_loaded", {})
    monkeypatch.setattr(_release, "_state", {"ffi": _release.selected_ffi()})
    with pytest.raises(LibraryMismatchError) as info:
        _lib.load()
    # a library exporting one function is no release of the window: refused before the guard, naming the nearest
    assert "matches no llama.cpp release llamarcp knows" in str(info.value) and "lacks" in str(info.value)
    assert "lib" not in _lib._loaded  # nothing half-loaded is cached
    monkeypatch.setenv(_guard.SKIP_ENV, "1")
    monkeypatch.setattr(_release, "_state", {"ffi": _release.selected_ffi()})
    assert _lib.load() is not None


def test_guard_on_the_pinned_library_is_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stamped library of the bindings passes on fingerprint equality: no ELF reading, no parsing, no probe."""
    from codegen import parse
    from llamarcp._ffi import ffi
    from llamarcp.drift import symbols

    path = Path(_lib.find_library())  # the library the package loads: the pinned build unless a bump points elsewhere
    stamp, _ = _guard.read_stamp(path)
    assert stamp is not None and stamp["abi_fingerprint"] == _guard.bindings_abi()[0]
    raw = ffi.dlopen(str(path))

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the guard's happy path must stay cheap")

    for module, name in ((symbols, "read_exports"), (parse, "parse_source"), (abi, "probe"), (abi, "items")):
        monkeypatch.setattr(module, name, forbidden)
    _guard.check(raw, path)


def test_stale_used_list_is_named_by_generate_check(
    llama_cpp_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from codegen import generate

    same = ["--source", str(llama_cpp_source), "--commit", LLAMA_CPP_COMMIT]  # the bindings' own tree
    out = tmp_path / "_generated"
    shutil.copytree(ROOT / "llamarcp" / "_generated", out, ignore=shutil.ignore_patterns("__pycache__"))
    text = (out / "_used.py").read_text()
    stale = text.replace('    "llama_backend_init",\n', '    "llama_not_called_anymore",\n')
    assert stale != text
    (out / "_used.py").write_text(stale)
    assert generate.main(["--check", "--out", str(out), *same]) == 1
    err = capsys.readouterr().err
    assert "codegen: 1 generated file(s) are stale" in err
    assert "_used.py: llamarcp now calls other C functions" in err
    assert "new: llama_backend_init;" in err and "no longer called: llama_not_called_anymore)" in err
    assert generate.main(["--out", str(out), "-q", *same]) == 0
    assert (out / "_used.py").read_text() == text


# -------------------------------------------------- the ABI: a tree whose struct layout changed, old bindings

#: Like the `size_t moe_cache_size` of b11549: inserted before `abort_callback`, it moves the later fields and
#: grows the struct by 8 bytes.
NEW_FIELD = "        size_t llamarcp_test_grown;\n"
CPARAMS_SRC = """
#include "llama.h"
struct llama_context_params llama_context_default_params(void) {
    struct llama_context_params p = {0};
    p.n_ctx = 512; p.n_batch = 2048; p.n_ubatch = 512; p.n_seq_max = 1;
    p.rope_scaling_type = LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED; p.pooling_type = LLAMA_POOLING_TYPE_UNSPECIFIED;
    p.attention_type = LLAMA_ATTENTION_TYPE_UNSPECIFIED; p.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_AUTO;
    p.type_k = GGML_TYPE_F16; p.type_v = GGML_TYPE_F16;
    p.offload_kqv = true; p.no_perf = true; p.op_offload = true; p.swa_full = true;
    return p;
}
"""


def header_tree(dest: Path, source: Path, *, grow: bool) -> Path:
    """include/ and ggml/include/ of `source` (the tree the bindings were generated from), optionally changed."""
    shutil.copytree(source / "include", dest / "include")
    shutil.copytree(source / "ggml" / "include", dest / "ggml" / "include")
    if grow:
        header = dest / "include" / "llama.h"
        text = header.read_text()
        anchor = "        ggml_abort_callback abort_callback;\n"
        assert text.count(anchor) == 1, "llama_context_params no longer has abort_callback: pick another anchor"
        header.write_text(text.replace(anchor, NEW_FIELD + anchor))
    return dest


def built_library(tmp: Path, tree: Path, *, stamp: bool, source: str = CPARAMS_SRC) -> Path:
    """A libllama compiled against `tree`'s llama.h (gcc), stamped the way build_lib.py stamps its builds."""
    lib_dir = tmp / "lib"
    lib_dir.mkdir()
    src = tmp / "cparams.c"
    src.write_text(source)
    out = lib_dir / "libllama.so"
    includes = [f"-I{tree / 'include'}", f"-I{tree / 'ggml' / 'include'}"]
    subprocess.run(["gcc", "-shared", "-fPIC", *includes, "-o", str(out), str(src)], check=True, capture_output=True)
    if stamp:
        from codegen.abi import stamp_library

        fields = stamp_library(tree, "unknown", lib_dir)
        assert isinstance(fields["abi_fingerprint"], str), fields
        (lib_dir / "llamarcp-build.json").write_text(json.dumps({"commit": "unknown", "source": str(tree), **fields}))
    return out


@pytest.fixture(scope="module")
def grown(llama_cpp_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return header_tree(tmp_path_factory.mktemp("grown"), llama_cpp_source, grow=True)


def _dlopen(path: Path) -> Any:
    from llamarcp._ffi import ffi

    return ffi.dlopen(str(path))


def test_stamped_library_with_a_changed_struct_is_refused_naming_it(grown: Path, tmp_path: Path) -> None:
    path = built_library(tmp_path, grown, stamp=True)
    with pytest.raises(LibraryMismatchError) as info:
        _guard.check(_dlopen(path), path, used=["llama_context_default_params"])
    message = str(info.value)
    assert "its headers differ in ABI from the bindings': 1 item(s) changed: struct llama_context_params;" in message
    assert f"python -m codegen.drift diff pinned {grown}" in message
    assert "a llama.cpp of unknown commit" in message and str(path.parent / "llamarcp-build.json") in message


def test_stamped_library_from_the_bindings_tree_passes(llama_cpp_source: Path, tmp_path: Path) -> None:
    tree = header_tree(tmp_path / "same", llama_cpp_source, grow=False)
    path = built_library(tmp_path, tree, stamp=True)
    stamp, _ = _guard.read_stamp(path)
    assert stamp is not None and stamp["abi_fingerprint"] == _guard.bindings_abi()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _guard.check(_dlopen(path), path, used=["llama_context_default_params"])


def test_stamped_library_that_only_adds_items_passes(llama_cpp_source: Path, tmp_path: Path) -> None:
    tree = header_tree(tmp_path / "added", llama_cpp_source, grow=False)
    header = tree / "include" / "llama.h"
    header.write_text(
        header.read_text().replace(
            "#ifdef __cplusplus\n}", "LLAMA_API int32_t llama_brand_new(void);\n#ifdef __cplusplus\n}", 1
        )
    )
    path = built_library(tmp_path, tree, stamp=True)
    stamp, _ = _guard.read_stamp(path)
    assert stamp is not None and stamp["abi_fingerprint"] != _guard.bindings_abi()[0]
    _guard.check(_dlopen(path), path, used=["llama_context_default_params"])


def test_stamp_without_items_file_points_at_drift_diff(grown: Path, tmp_path: Path) -> None:
    path = built_library(tmp_path, grown, stamp=True)
    (path.parent / abi.ITEMS_FILE).unlink()
    with pytest.raises(LibraryMismatchError, match=r"llamarcp-abi\.json is missing beside it.*codegen\.drift diff"):
        _guard.check(_dlopen(path), path, used=["llama_context_default_params"])


@pytest.mark.skipif(platform.machine().lower() not in abi.PROBE_MACHINES, reason="the probe needs an x86-64 ABI")
def test_unstamped_library_with_a_changed_struct_is_refused_by_the_probe(grown: Path, tmp_path: Path) -> None:
    path = built_library(tmp_path, grown, stamp=False)
    with pytest.raises(LibraryMismatchError) as info:
        _guard.check(_dlopen(path), path, used=["llama_context_default_params"])
    message = str(info.value)
    assert "the probe of its default parameters found another struct layout" in message
    size = next(p["size"] for p in _guard.bindings_abi()[2] if p["struct"] == "llama_context_params")
    expected = f"llama_context_default_params() wrote {size + 8} bytes, the bindings' struct has {size} (fields added?)"
    assert f"struct llama_context_params: {expected}" in message


@pytest.mark.skipif(platform.machine().lower() not in abi.PROBE_MACHINES, reason="the probe needs an x86-64 ABI")
def test_probe_checks_enum_fields_of_a_same_size_layout(llama_cpp_source: Path, tmp_path: Path) -> None:
    """Same size, other layout: four bools where the bindings have an enum read 0x01010101 there."""
    tree = header_tree(tmp_path / "shuffled", llama_cpp_source, grow=False)
    header = tree / "include" / "llama.h"
    old = "        enum llama_flash_attn_type   flash_attn_type;"
    assert old in header.read_text(), "llama_context_params changed: pick another field for this test"
    header.write_text(header.read_text().replace(old, "        bool shuffled_a, shuffled_b, shuffled_c, shuffled_d;"))
    source = CPARAMS_SRC.replace(
        "p.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_AUTO;",
        "p.shuffled_a = p.shuffled_b = p.shuffled_c = p.shuffled_d = 1;",
    )
    path = built_library(tmp_path, tree, stamp=False, source=source)
    with pytest.raises(LibraryMismatchError) as info:
        _guard.check(_dlopen(path), path, used=["llama_context_default_params"])
    assert f"enum field flash_attn_type at offset 52 reads {0x01010101}, not a known value" in str(info.value)
    assert "wrote" not in str(info.value)  # the size matched: only the field check saw it


@pytest.mark.skipif(platform.machine().lower() not in abi.PROBE_MACHINES, reason="the probe needs an x86-64 ABI")
def test_probe_verifies_the_real_library_of_the_bindings() -> None:
    result = _guard._probe(_dlopen(Path(_lib.find_library())))
    assert not result.problems and not result.skipped, result
    at_load = [p for p in _guard.bindings_abi()[2] if not any(a.startswith("live") for a in p.get("args", ()))]
    assert result.verified == [f"struct {p['struct']} ({p['size']} bytes)" for p in at_load]
    structs = {p["struct"] for p in _guard.bindings_abi()[2]}
    # every struct libllama returns by value through a buffer is probed; llama_perf_context's needs a live context
    assert {"llama_batch", "llama_context_params", "llama_model_params", "llama_perf_context_data"} <= structs


def test_load_refuses_the_grown_library(grown: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`from llamarcp import lib` (and so `Llama`) on old bindings + a new library: refused before any call."""
    path = built_library(tmp_path, grown, stamp=True)
    from llamarcp import _release

    monkeypatch.setenv("LLAMARCP_LIB_PATH", str(path))
    monkeypatch.setattr(_lib, "_loaded", {})
    monkeypatch.setattr(_release, "_state", {"ffi": _release.selected_ffi()})  # a new selection, the same ffi
    with pytest.raises(LibraryMismatchError, match="struct llama_context_params"):
        _lib.load()
    assert "lib" not in _lib._loaded


def test_drift_symbols_reports_the_same_mismatch(grown: Path, tmp_path: Path) -> None:
    from llamarcp.drift import symbols
    from llamarcp.drift.inputs import pinned_manifest

    path = built_library(tmp_path, grown, stamp=True)
    report = symbols.compare(pinned_manifest(), path)
    abi_errors = [f for f in report.findings if f.kind == "abi-changed"]
    assert [f.name for f in abi_errors] == ["struct llama_context_params"]
    assert report.failed()


def test_unstamped_unprobeable_library_warns(tmp_path: Path) -> None:
    path = tmp_path / "libllama.so"
    path.write_bytes(b"")
    with pytest.warns(_guard.LibraryUnverifiedWarning, match=f"libllama at {path} has no build stamp"):
        _guard.check(FakeLib("llama_a"), path, used=["llama_a"])
