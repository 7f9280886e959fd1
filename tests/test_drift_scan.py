"""drift scan: every recognised use pattern, output formats, exit codes, the reviewed table, real old code."""

from __future__ import annotations

import json
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from llamarcp.drift.__main__ import main
from llamarcp.drift.replacements import REMOVED_FUNCTIONS
from llamarcp.drift.scan import ApiIndex, scan_paths, scan_source
from llamarcp.errors import DriftError

ROOT = Path(__file__).resolve().parent.parent


def function(name: str, deprecated: str | None = None, params: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "name": name,
        "return_type": "void",
        "params": [{"name": p, "type": "int32_t"} for p in params],
        "variadic": False,
        "deprecated": deprecated,
    }


MANIFEST: dict[str, Any] = {
    "llama_cpp_commit": "test",
    "headers": ["llama.h"],
    "functions": [
        function("llama_memory_clear", params=("mem", "data")),
        function("llama_decode", params=("ctx", "batch")),
        function("llama_n_vocab", "use llama_vocab_n_tokens instead", ("vocab",)),
    ],
    "structs": [{"name": "llama_batch", "kind": "struct", "opaque": False, "fields": []}],
    "typedefs": [{"name": "llama_token", "type": "int32_t"}],
    "enums": [{"name": "llama_vocab_type", "constants": [{"name": "LLAMA_VOCAB_TYPE_SPM", "value": 1}]}],
    "callbacks": [{"name": "llama_progress_callback", "return_type": "bool", "params": []}],
    "defines": [],
}


@pytest.fixture(scope="module")
def api() -> ApiIndex:
    return ApiIndex.from_manifest(MANIFEST)


def scan(api: ApiIndex, code: str) -> list[tuple[int, int, str, str]]:
    return [(u.line, u.col, u.status, u.name) for u in scan_source(textwrap.dedent(code), "f.py", api)]


def test_llama_cpp_module_calls(api: ApiIndex) -> None:
    found = scan(
        api,
        """\
        import llama_cpp
        llama_cpp.llama_kv_self_clear(ctx)
        llama_cpp.llama_cpp.llama_get_kv_self(ctx)
        llama_cpp.llama_n_vocab(vocab)
        llama_cpp.llama_decode(ctx, batch)
        llama_cpp.llama_chat_format.format_thing()
        llama_cpp.llama_sampler_i_apply(fn)
        """,
    )
    assert found == [
        (2, 11, "removed", "llama_kv_self_clear"),
        (3, 21, "removed", "llama_get_kv_self"),
        (4, 11, "deprecated", "llama_n_vocab"),
    ]


def test_lib_object_aliases_and_unknown_names(api: ApiIndex) -> None:
    found = scan(
        api,
        """\
        from llamarcp import lib
        L = lib
        class Ctx:
            def __init__(self):
                self._lib = L
            def reset(self):
                self._lib.llama_kv_self_seq_rm(self.ctx, -1, 0, -1)
                self._lib.llama_memroy_clear(self.mem, True)
                self._lib.llama_memory_clear(self.mem, True)
                self._lib.llama_batch
        """,
    )
    assert found == [
        (7, 19, "removed", "llama_kv_self_seq_rm"),
        (8, 19, "undeclared", "llama_memroy_clear"),
    ]


def test_llamarcp_lib_and_loader_aliases(api: ApiIndex) -> None:
    found = scan(
        api,
        """\
        import llamarcp
        from llamarcp._lib import load as get_lib
        llamarcp.lib.llama_kv_self_clear(ctx)
        raw = get_lib()
        raw.llama_nonexistent_fn()
        """,
    )
    assert found == [(3, 14, "removed", "llama_kv_self_clear"), (5, 5, "undeclared", "llama_nonexistent_fn")]


def test_dlopen_and_ctypes_style_access(api: ApiIndex) -> None:
    found = scan(
        api,
        """\
        import ctypes
        from cffi import FFI
        ffi = FFI()
        raw = ffi.dlopen("libllama.so")
        raw.llama_kv_self_update(ctx)
        clib = ctypes.CDLL("libllama.so")
        clib.llama_kv_self_defrag.argtypes = [ctypes.c_void_p]
        clib["llama_kv_self_seq_cp"]
        getattr(clib, "llama_kv_self_seq_keep")(ctx, 0)
        getattr(clib, "llama_not_a_thing")
        @ctypes_function("llama_kv_self_seq_add", [ctypes.c_void_p], None)
        def binding(ctx): ...
        log.info("llama_kv_self_clear is gone")
        """,
    )
    assert [(f[2], f[3]) for f in found] == [
        ("removed", "llama_kv_self_update"),
        ("removed", "llama_kv_self_defrag"),
        ("removed", "llama_kv_self_seq_cp"),
        ("removed", "llama_kv_self_seq_keep"),
        ("undeclared", "llama_not_a_thing"),
        ("removed", "llama_kv_self_seq_add"),
    ]


def test_from_imports_and_their_uses(api: ApiIndex) -> None:
    found = scan(
        api,
        """\
        from llama_cpp import llama_kv_self_clear as clear, llama_decode
        from llama_cpp.llama_cpp import llama_n_vocab
        from llama_cpp import llama_types
        clear(ctx)
        llama_n_vocab(v)
        llama_decode(ctx, b)
        """,
    )
    assert found == [
        (1, 23, "removed", "llama_kv_self_clear"),
        (2, 33, "deprecated", "llama_n_vocab"),
        (4, 1, "removed", "llama_kv_self_clear"),
        (5, 1, "deprecated", "llama_n_vocab"),
    ]


def test_star_import(api: ApiIndex) -> None:
    found = scan(api, "from llama_cpp import *\nllama_kv_self_clear(ctx)\nllama_memory_clear(m, True)\n")
    assert found == [(2, 1, "removed", "llama_kv_self_clear")]


def test_types_constants_and_unrelated_code_are_quiet(api: ApiIndex) -> None:
    code = """\
    import llama_cpp
    from llamarcp import lib
    batch = llama_cpp.llama_batch()
    t = llama_cpp.llama_token(1)
    lib.LLAMA_VOCAB_TYPE_SPM
    lib.llama_progress_callback
    data = json.load(fh)
    data.llama_whatever
    other.llama_unrelated_attribute
    """
    assert scan(api, code) == []


def test_syntax_error_is_reported_not_fatal(api: ApiIndex, tmp_path: Path) -> None:
    with pytest.raises(DriftError, match=r"bad\.py:1: cannot parse Python"):
        scan_source("def (:\n", "bad.py", api)
    (tmp_path / "bad.py").write_text("def (:\n")
    (tmp_path / "good.py").write_text("import llama_cpp\nllama_cpp.llama_kv_self_clear(c)\n")
    result = scan_paths([tmp_path], api)
    assert result.files == 2 and len(result.errors) == 1 and result.count("removed") == 1
    assert result.failed()


def test_output_formats_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api_file = tmp_path / "api.json"
    api_file.write_text(json.dumps(MANIFEST))
    old = tmp_path / "old_wrapper.py"
    old.write_text("import llama_cpp\n\nllama_cpp.llama_kv_self_clear(ctx)\nllama_cpp.llama_n_vocab(v)\n")
    assert main(["scan", str(old), "--api", str(api_file)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{old}:3:11: removed llama_kv_self_clear -> use llama_memory_clear"
    assert lines[1] == f"{old}:4:11: deprecated llama_n_vocab -> use llama_vocab_n_tokens instead"
    assert lines[-1] == "scan: 1 file(s); 1 removed, 0 undeclared, 1 deprecated use(s)"

    assert main(["scan", str(old), "--api", str(api_file), "--format", "github"]) == 1
    gh = capsys.readouterr().out.splitlines()
    assert gh[0] == f"::error file={old},line=3,col=11::removed llama_kv_self_clear -> use llama_memory_clear"
    assert gh[1].startswith(f"::warning file={old},line=4,col=11::deprecated llama_n_vocab")

    assert main(["scan", str(old), "--api", str(api_file), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["summary"] == {
        "removed": 1, "undeclared": 0, "deprecated": 1, "arity": 0, "field": 0, "constant": 0, "type": 0,
        "field-gone": 0,
    }  # fmt: skip
    assert data["uses"][0] == {
        "path": str(old), "line": 3, "col": 11, "name": "llama_kv_self_clear", "status": "removed",
        "hint": "use llama_memory_clear", "how": "attribute", "severity": "error",
    }  # fmt: skip

    only_deprecated = tmp_path / "dep.py"
    only_deprecated.write_text("import llama_cpp\nllama_cpp.llama_n_vocab(v)\n")
    assert main(["scan", str(only_deprecated), "--api", str(api_file)]) == 0
    assert main(["scan", str(only_deprecated), "--api", str(api_file), "--strict"]) == 1
    capsys.readouterr()
    assert main(["scan", str(tmp_path / "nope"), "--api", str(api_file)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_since_adds_removed_names_with_old_hints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old_api = {"functions": [function("llama_vanished", "use llama_decode instead")]}
    (tmp_path / "old.json").write_text(json.dumps(old_api))
    (tmp_path / "new.json").write_text(json.dumps(MANIFEST))
    src = tmp_path / "x.py"
    src.write_text("import llama_cpp\nllama_cpp.llama_vanished()\n")
    args = ["scan", str(src), "--api", str(tmp_path / "new.json")]
    assert main(args) == 0  # a Python module attribute alone does not prove an unknown name is a C function
    assert main([*args, "--since", str(tmp_path / "old.json")]) == 1
    assert "removed llama_vanished -> old header said: use llama_decode instead" in capsys.readouterr().out


def test_malformed_manifest_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "api.json"
    bad.write_text(json.dumps({"functions": [{"name": "llama_x", "params": []}]}))
    assert main(["scan", str(tmp_path), "--api", str(bad)]) == 2
    assert "functions entry llama_x lacks return_type" in capsys.readouterr().err


def test_reviewed_table_matches_the_pinned_api() -> None:
    from llamarcp.drift.inputs import pinned_manifest

    declared = {f["name"] for f in pinned_manifest()["functions"]}
    assert not set(REMOVED_FUNCTIONS) & declared, "a 'removed' name is declared again by the pinned llama.h"
    import re

    for name, hint in REMOVED_FUNCTIONS.items():
        for target in re.findall(r"\bllama_\w+", hint):
            assert target in declared, f"{name}: hint names {target}, which the pinned llama.h does not declare"


def test_project_scan_is_clean() -> None:
    from llamarcp.drift.inputs import pinned_manifest

    result = scan_paths(
        [ROOT / "llamarcp", ROOT / "codegen", ROOT / "build_lib.py"], ApiIndex.from_manifest(pinned_manifest())
    )
    assert result.count("removed") == 0 and result.count("undeclared") == 0, result.render("text")


def test_real_llama_cpp_python_0_3_16_uses_removed_functions(tmp_path: Path) -> None:
    """The old wrapper this project replaces: its kv_self calls must be found with their replacements."""
    import sys

    sys.path.insert(0, str(ROOT))
    import build_lib
    from llamarcp import _cache, _pin

    carrier = _pin.KNOWN_CARRIERS["0.3.16"]
    build_lib.ensure_source(carrier)  # downloads and verifies the sdist once
    archive = _cache.cache_root() / "downloads" / carrier.filename
    prefix = f"llama_cpp_python-{carrier.version}/llama_cpp/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.name.endswith(".py")]
        tar.extractall(tmp_path, members=members, filter="data")
    from llamarcp.drift.inputs import pinned_manifest

    result = scan_paths([tmp_path], ApiIndex.from_manifest(pinned_manifest()))
    lines = result.render("text").splitlines()
    llama_py = [ln for ln in lines if "/llama_cpp/llama.py:" in ln]
    assert any(ln.endswith("removed llama_kv_self_clear -> use llama_memory_clear") for ln in llama_py)
    removed = {u.name for u in result.uses if u.status == "removed"}
    assert {"llama_get_kv_self", "llama_kv_self_clear", "llama_kv_self_seq_rm", "llama_sampler_init_softmax"} <= removed
    assert result.count("undeclared") == 0, "\n".join(ln for ln in lines if "undeclared" in ln)
    # What it does with the API the pin changed: penalties gained n_vocab, dry lost n_ctx_train, the mmap/mlock
    # flags became load_mode, flash_attn became flash_attn_type; its hand-written ctypes tables say so too.
    usage = {(Path(u.path).name, u.status, u.name) for u in result.uses if u.status in ("arity", "field")}
    assert usage == {
        ("_internals.py", "arity", "llama_sampler_init_penalties"),
        ("_internals.py", "arity", "llama_sampler_init_dry"),
        ("llama_cpp.py", "arity", "llama_sampler_init_penalties"),
        ("llama_cpp.py", "arity", "llama_sampler_init_dry"),
        ("mtmd_cpp.py", "arity", "mtmd_helper_bitmap_init_from_buf"),
        ("llama.py", "field", "use_mmap"), ("llama.py", "field", "use_mlock"), ("llama.py", "field", "flash_attn"),
    }  # fmt: skip
    assert result.failed()


def test_github_annotations_are_escaped() -> None:
    from llamarcp.drift.scan import Use

    use = Use("dir,x/a:b.py", 4, 2, "llama_x", "removed", "use 100% y\nthen z", "attribute")
    assert use.render_github() == "::error file=dir%2Cx/a%3Ab.py,line=4,col=2::removed llama_x -> use 100%25 y%0Athen z"


@pytest.mark.parametrize(
    ("source", "message"),
    [("x = 1\0\n", "cannot parse Python"), ("x = " + "(" * 5000 + ")" * 5000 + "\n", "cannot parse|too deeply")],
)
def test_pathological_sources_are_clear_errors(api: ApiIndex, source: str, message: str) -> None:
    with pytest.raises(DriftError, match=message):
        scan_source(source, "weird.py", api)
