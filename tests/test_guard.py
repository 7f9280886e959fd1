"""Runtime guard: missing used functions, wrong build commit, opt-out, optional groups, the used-function list."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llamarcp import _guard, _lib
from llamarcp._pin import LLAMA_CPP_COMMIT
from llamarcp.errors import LibraryMismatchError

ROOT = Path(__file__).resolve().parent.parent


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
def test_unknown_or_unreadable_stamp_skips_the_commit_check(tmp_path: Path, stamp: str) -> None:
    path = lib_dir(tmp_path, None)
    (tmp_path / "llamarcp-build.json").write_text(stamp)
    _guard.check(FakeLib("llama_a"), path, used=["llama_a"])


def test_expected_commit_is_the_generated_bindings_commit() -> None:
    from llamarcp._generated import _symbols

    assert _guard.bindings_commit() == _symbols.LLAMA_CPP_COMMIT == LLAMA_CPP_COMMIT


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
    _guard.check(FakeLib("llama_a"), lib_dir(tmp_path, None), used=["llama_a", *rpc])


def test_optional_table_is_the_codegen_group_table() -> None:
    sys.path.insert(0, str(ROOT))
    from codegen.parse import GROUPS

    assert set(_guard.optional_groups()) == {g.name for g in GROUPS if g.optional}


def test_used_function_list_is_current() -> None:
    """`python -m llamarcp.drift used --write` must be rerun when llamarcp starts calling other functions."""
    from llamarcp.drift import used
    from llamarcp.drift.inputs import pinned_manifest

    expected = used.render(used.compute(pinned_manifest()))
    assert used.current_text() == expected, "stale: run `python -m llamarcp.drift used --write`"
    from llamarcp.drift.used_functions import USED_FUNCTIONS

    declared = {f["name"] for f in pinned_manifest()["functions"]}
    assert set(USED_FUNCTIONS) <= declared and "llama_backend_init" in USED_FUNCTIONS


def test_used_scanner_sees_attribute_and_getattr_uses(tmp_path: Path) -> None:
    from llamarcp.drift import used

    pkg = tmp_path / "pkg"
    (pkg / "_generated").mkdir(parents=True)
    (pkg / "mod.py").write_text("def f(lib):\n    lib.llama_decode(1)\n    getattr(lib, 'llama_free')\n    x.not_c\n")
    (pkg / "_generated" / "wrappers.py").write_text("lib.llama_everything()\n")
    names = used.compute({"functions": [{"name": n} for n in ("llama_decode", "llama_free", "llama_everything")]}, pkg)
    assert names == ["llama_decode", "llama_free"]


# ------------------------------------------------------------------------- with the real cffi bindings


def build_so(tmp: Path, source: str) -> Path:
    assert shutil.which("gcc"), "gcc is needed to build the test library"
    src = tmp / "fake.c"
    src.write_text(source)
    out = tmp / "libllama.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(src)], check=True, capture_output=True)
    return out


def test_real_dlopen_lookup_reports_missing_symbols(tmp_path: Path) -> None:
    from llamarcp._generated._llama_ffi import ffi

    path = build_so(tmp_path, "void llama_backend_init(void) {}\n")
    raw = ffi.dlopen(str(path))
    assert _guard.missing_functions(raw, ["llama_backend_init", "llama_backend_free"]) == ["llama_backend_free"]
    with pytest.raises(LibraryMismatchError, match="not exported: llama_backend_free"):
        _guard.check(raw, path, used=["llama_backend_init", "llama_backend_free"])


def test_load_runs_the_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = build_so(tmp_path, "void llama_backend_init(void) {}\n")
    (tmp_path / "llamarcp-build.json").write_text(json.dumps({"commit": "f" * 40}))
    monkeypatch.setenv("LLAMARCP_LIB_PATH", str(path))
    monkeypatch.setattr(_lib, "_loaded", {})
    with pytest.raises(LibraryMismatchError) as info:
        _lib.load()
    assert f"commit {'f' * 40}" in str(info.value) and "not exported" in str(info.value)
    assert "lib" not in _lib._loaded  # nothing half-loaded is cached
    monkeypatch.setenv(_guard.SKIP_ENV, "1")
    assert _lib.load() is not None


def test_guard_accepts_the_pinned_library() -> None:
    sys.path.insert(0, str(ROOT))
    import build_lib
    from llamarcp._generated._llama_ffi import ffi

    path = build_lib.build() / "libllama.so"
    raw = ffi.dlopen(str(path))
    _guard.check(raw, path)  # raises LibraryMismatchError if the pinned build does not fit its own bindings


def test_used_check_names_the_difference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llamarcp.drift import used, used_functions
    from llamarcp.drift.__main__ import main

    stale = tmp_path / "used_functions.py"
    stale.write_text(used.render(["llama_not_called_anymore"]))
    monkeypatch.setattr(used, "USED_FILE", stale)
    monkeypatch.setattr(used_functions, "USED_FUNCTIONS", ("llama_not_called_anymore",))
    assert main(["used", "--check"]) == 1
    err = capsys.readouterr().err
    assert "no longer called: llama_not_called_anymore" in err
    assert "llama_backend_init" in err.split("new: ")[1].split(";")[0].split(", ")
    assert main(["used", "--write"]) == 0
    from llamarcp.drift.inputs import pinned_manifest

    assert stale.read_text() == used.render(used.compute(pinned_manifest()))
