"""libmtmd bindings: the `mtmd` and `mtmd-helper` header groups, their runtime loading and their drift check.

libmtmd is a second library beside libllama (libllama does not link it), so `lib.mtmd_*` resolves through its
own dlopen handle; where it is absent, a call raises MissingSymbolError saying how to build it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from llamarcp import _lib, lib
from llamarcp._ffi import ffi
from llamarcp._generated import _symbols
from llamarcp._libproxy import LibProxy, companion_path, is_available, library_of
from llamarcp.drift import symbols
from llamarcp.errors import MissingSymbolError

GENERATED = Path(__file__).resolve().parent.parent / "llamarcp" / "_generated"
MANIFEST = json.loads((GENERATED / "api.json").read_text())
FUNCTIONS = {f["name"]: f for f in MANIFEST["functions"]}
STRUCTS = {s["name"]: s for s in MANIFEST["structs"]}

#: Declared under `#ifdef __cplusplus` (a std::map return): not part of the C API the bindings read.
CPP_ONLY = {"mtmd_get_memory_usage"}


def _declared_in(header: Path) -> set[str]:
    """Function names the header declares with MTMD_API (a regex cross-check of what libclang found)."""
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", header.read_text(), flags=re.S)
    return set(re.findall(r"MTMD_API\b[^;(]*?\b(mtmd_\w+)\s*\(", text)) - CPP_ONLY


def _built_so(tmp: Path, name: str, source: str, *extra: str) -> Path:
    assert shutil.which("gcc"), "gcc is needed to build the test libraries"
    src = tmp / f"{name}.c"
    src.write_text(source)
    out = tmp / f"{name}.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(src), *extra], check=True, capture_output=True)
    return out


# ------------------------------------------------------------------------------------------------ generation


def test_every_mtmd_function_of_the_headers_is_generated(llama_cpp_source: Path) -> None:
    mtmd_dir = llama_cpp_source / "tools" / "mtmd"
    assert set(_symbols.GROUPS["mtmd"]) == _declared_in(mtmd_dir / "mtmd.h")
    assert set(_symbols.GROUPS["mtmd-helper"]) == _declared_in(mtmd_dir / "mtmd-helper.h")
    assert len(_symbols.GROUPS["mtmd"]) > 40 and len(_symbols.GROUPS["mtmd-helper"]) > 10


def test_mtmd_groups_are_optional_and_exported_by_libmtmd() -> None:
    assert _symbols.LIBRARIES["mtmd"] == _symbols.LIBRARIES["mtmd-helper"] == "mtmd"
    assert "build_lib.py --mtmd" in _symbols.HINTS["mtmd"] == _symbols.HINTS["mtmd-helper"]
    fn = FUNCTIONS["mtmd_init_from_file"]
    assert (fn["group"], fn["library"], fn["header"]) == ("mtmd", "mtmd", "mtmd.h")
    assert [p["type"] for p in fn["params"]] == [
        "const char *",
        "const struct llama_model *",
        "const struct mtmd_context_params",
    ]
    assert FUNCTIONS["mtmd_helper_eval_chunks"]["library"] == "mtmd"
    assert FUNCTIONS["mtmd_encode"]["deprecated"] == "use mtmd_encode_chunk() instead"
    assert library_of("mtmd_default_marker") == "mtmd" and library_of("llama_decode") == "llama"


def test_mtmd_types_are_in_the_cdef_and_the_stubs() -> None:
    fields = [f["name"] for f in STRUCTS["mtmd_context_params"]["fields"]]
    assert fields[:4] == ["use_gpu", "device", "print_timings", "n_threads"]
    assert "media_marker" in fields and "progress_callback" in fields
    (chunk_type,) = (e for e in MANIFEST["enums"] if e["name"] == "mtmd_input_chunk_type")
    assert {c["name"]: c["value"] for c in chunk_type["constants"]} == {
        "MTMD_INPUT_CHUNK_TYPE_TEXT": 0,
        "MTMD_INPUT_CHUNK_TYPE_IMAGE": 1,
        "MTMD_INPUT_CHUNK_TYPE_AUDIO": 2,
        "MTMD_INPUT_CHUNK_TYPE_COUNT": 3,
    }
    assert ffi.integer_const("MTMD_INPUT_CHUNK_TYPE_IMAGE") == 1
    stubs = (GENERATED / "lib.pyi").read_text()
    assert "def mtmd_context_params_default() -> struct_mtmd_context_params:" in stubs
    assert "def mtmd_support_vision(ctx: CData, /) -> bool:" in stubs
    protocol = (GENERATED / "lib_types.pyi").read_text()
    assert "def mtmd_helper_init_opt_default(self) -> struct_mtmd_helper_init_opt: ..." in protocol


def test_mtmd_struct_layouts_match_gcc(llama_cpp_source: Path, tmp_path: Path) -> None:
    names = sorted(n for n, s in STRUCTS.items() if n.startswith("mtmd_") and not s["opaque"])
    assert {"mtmd_context_params", "mtmd_input_text", "mtmd_helper_init_opt", "mtmd_gen_inp"} <= set(names)
    lines = ['#include "mtmd-helper.h"', "#include <stdio.h>", "#include <stddef.h>", "int main(void) {"]
    for name in names:
        lines.append(f'  printf("{name}|%zu|%zu\\n", sizeof(struct {name}), _Alignof(struct {name}));')
        for f in STRUCTS[name]["fields"]:
            lines.append(f'  printf("{name}.{f["name"]}|%zu\\n", offsetof(struct {name}, {f["name"]}));')
    src = tmp_path / "mtmd_layout.c"
    src.write_text("\n".join([*lines, "  return 0;", "}"]) + "\n")
    inc = [f"-I{llama_cpp_source / d}" for d in ("include", "ggml/include", "tools/mtmd")]
    subprocess.run(["gcc", "-std=c11", "-w", *inc, str(src), "-o", str(tmp_path / "l")], check=True)
    facts = dict(line.split("|", 1) for line in subprocess.check_output([str(tmp_path / "l")], text=True).split())
    for name in names:
        assert facts[name] == f"{ffi.sizeof(f'struct {name}')}|{ffi.alignof(f'struct {name}')}", name
        assert int(facts[name].split("|")[0]) == STRUCTS[name]["size"], name
        for f in STRUCTS[name]["fields"]:
            offset = int(facts[f"{name}.{f['name']}"])
            assert offset == ffi.offsetof(f"struct {name}", f["name"]) == f["offset"], f"{name}.{f['name']}"


# ------------------------------------------------------------------------------------------------ runtime


@pytest.fixture
def fake_build(tmp_path: Path) -> Path:
    """A libllama.so and a libmtmd.so (sharing a directory, like a cache entry's lib dir)."""
    _built_so(tmp_path, "libllama", "int llama_max_devices(void) { return 3; }")
    _built_so(
        tmp_path,
        "libmtmd",
        'const char * mtmd_default_marker(void) { return "<__fake__>"; }\n'
        "int mtmd_input_chunks_size(const void * c) { return 5; }\n",
    )
    return tmp_path


def test_mtmd_function_resolves_from_the_library_beside_libllama(fake_build: Path) -> None:
    main = fake_build / "libllama.so"
    proxy = LibProxy(ffi.dlopen(str(main)), str(main))
    assert ffi.string(proxy.mtmd_default_marker()) == b"<__fake__>"
    assert proxy.llama_max_devices() == 3
    # Declared in mtmd.h but not in this libmtmd: the error names libmtmd, not libllama.
    with pytest.raises(MissingSymbolError) as info:
        proxy.mtmd_support_vision(ffi.NULL)
    assert info.value.library == str(fake_build / "libmtmd.so")
    assert "libmtmd beside libllama lacks it" in str(info.value) and "--mtmd" not in str(info.value)


def test_without_libmtmd_a_call_raises_missing_symbol_with_the_build_hint(tmp_path: Path) -> None:
    main = _built_so(tmp_path, "libllama", "int llama_max_devices(void) { return 3; }")
    proxy = LibProxy(ffi.dlopen(str(main)), str(main))
    assert not is_available(proxy, "mtmd_default_marker")
    assert not is_available(proxy, "mtmd_helper_get_n_tokens")
    with pytest.raises(MissingSymbolError) as info:
        proxy.mtmd_context_params_default()
    assert str(info.value).startswith("mtmd_context_params_default is declared by mtmd.h but not exported by")
    with pytest.raises(MissingSymbolError, match="mtmd_helper_get_n_tokens is declared by mtmd-helper.h"):
        proxy.mtmd_helper_get_n_tokens(ffi.NULL)
    assert "python build_lib.py --mtmd" in str(info.value)
    assert str(tmp_path / "libmtmd.so") in str(info.value)
    assert proxy.llama_max_devices() == 3  # the rest of the library is untouched


def _loaded_has_libmtmd() -> bool:
    lib.llama_max_devices()  # make sure the library is loaded
    path = _lib.loaded_path()
    return path is not None and companion_path("mtmd", path) is not None


@pytest.fixture()
def libmtmd() -> None:
    """Fails (never skips) without libmtmd beside the loaded libllama: ci/setup.sh builds it."""
    assert _loaded_has_libmtmd(), "the loaded libllama has no libmtmd beside it: run `python build_lib.py --mtmd`"


needs_libmtmd = pytest.mark.usefixtures("libmtmd")


@needs_libmtmd
def test_real_libmtmd_defaults_are_callable() -> None:
    assert ffi.string(lib.mtmd_default_marker()) == b"<__media__>"
    params = lib.mtmd_context_params_default()
    assert ffi.typeof(params) is ffi.typeof("struct mtmd_context_params")
    assert params.use_gpu in (True, False) and params.n_threads > 0
    assert ffi.string(params.media_marker) == b"<__media__>"
    flash_attn = (lib.LLAMA_FLASH_ATTN_TYPE_AUTO, lib.LLAMA_FLASH_ATTN_TYPE_DISABLED, lib.LLAMA_FLASH_ATTN_TYPE_ENABLED)
    assert params.flash_attn_type in flash_attn
    opt = lib.mtmd_helper_init_opt_default()
    assert opt.video_params.fps_target >= 0


@needs_libmtmd
def test_real_libmtmd_objects_round_trip() -> None:
    chunks = lib.mtmd_input_chunks_init()
    try:
        assert lib.mtmd_input_chunks_size(chunks) == 0
        assert lib.mtmd_helper_get_n_tokens(chunks) == 0
    finally:
        lib.mtmd_input_chunks_free(chunks)
    pixels = ffi.new("unsigned char[]", bytes(range(12)))
    bitmap = lib.mtmd_bitmap_init(2, 2, pixels)
    try:
        assert (lib.mtmd_bitmap_get_nx(bitmap), lib.mtmd_bitmap_get_ny(bitmap)) == (2, 2)
        assert lib.mtmd_bitmap_get_n_bytes(bitmap) == 12 and not lib.mtmd_bitmap_is_audio(bitmap)
        assert bytes(ffi.buffer(lib.mtmd_bitmap_get_data(bitmap), 12)) == bytes(range(12))
    finally:
        lib.mtmd_bitmap_free(bitmap)


@needs_libmtmd
def test_every_declared_mtmd_function_is_exported_by_the_real_libmtmd() -> None:
    names = _symbols.GROUPS["mtmd"] + _symbols.GROUPS["mtmd-helper"]
    assert [n for n in names if not is_available(lib, n)] == []


# ------------------------------------------------------------------------------------------------ drift


def _fn(name: str, group: str, library: str) -> dict[str, Any]:
    return {"name": name, "params": [], "deprecated": None, "header": f"{group}.h", "group": group, "library": library}


DRIFT_MANIFEST = {
    "functions": [
        _fn("llama_max_devices", "llama", "llama"),
        _fn("mtmd_default_marker", "mtmd", "mtmd"),
        _fn("mtmd_input_chunks_size", "mtmd", "mtmd"),
        _fn("mtmd_support_vision", "mtmd", "mtmd"),
    ]
}


def test_drift_without_libmtmd_notes_the_optional_group(tmp_path: Path) -> None:
    main = _built_so(tmp_path, "libllama", "int llama_max_devices(void) { return 3; }")
    report = symbols.compare(DRIFT_MANIFEST, main, optional={"mtmd": "build it"}, abi_check=False)
    assert not report.failed()
    kinds = {(f.kind, f.name): f.severity for f in report.findings}
    assert kinds == {("optional-missing", n): "note" for n in _symbols_of(DRIFT_MANIFEST, "mtmd")}


def test_drift_with_libmtmd_checks_every_function_of_it(fake_build: Path) -> None:
    _built_so(
        fake_build,
        "libmtmd",
        'const char * mtmd_default_marker(void) { return "x"; }\n'
        "int mtmd_input_chunks_size(const void * c) { return 5; }\n"
        "int mtmd_brand_new(void) { return 1; }\n",
    )
    report = symbols.compare(DRIFT_MANIFEST, fake_build, optional={"mtmd": "build it"}, abi_check=False)
    by_kind = {(f.kind, f.name): f for f in report.findings}
    assert str(fake_build / "libmtmd.so") in report.libraries
    missing = by_kind[("missing", "mtmd_support_vision")]
    assert missing.severity == "error" and "not exported by libmtmd.so" in missing.message
    assert by_kind[("undeclared", "mtmd_brand_new")].severity == "warning"
    assert ("missing", "mtmd_default_marker") not in by_kind
    assert report.failed() and report.count("error") == 1


def _symbols_of(manifest: dict[str, Any], group: str) -> list[str]:
    return [f["name"] for f in manifest["functions"] if f["group"] == group]


def test_build_lib_rejects_an_unknown_library() -> None:
    import build_lib

    with pytest.raises(build_lib.BuildError, match="unknown library 'vision'; known: mtmd"):
        build_lib.build(libraries=["vision"], allow_build=False)


# ------------------------------------------------------------------------------------------------ ABI


def test_libmtmd_items_stay_out_of_libllamas_abi_fingerprint() -> None:
    from llamarcp._generated import _abi
    from llamarcp.drift import abi

    assert abi.companion_headers(MANIFEST) == {"mtmd.h", "mtmd-helper.h"}
    assert not [key for key in _abi.ABI_ITEMS if "mtmd" in key.lower()]
    assert not [p for p in _abi.PROBES if p["function"].startswith("mtmd_")]
    # The same fingerprint as the manifest without the mtmd groups: a libllama stamped before them still matches.
    without = {
        **MANIFEST,
        **{
            kind: [x for x in MANIFEST[kind] if not x["header"].startswith("mtmd")]
            for kind in ("structs", "enums", "defines", "functions", "callbacks", "typedefs")
        },
    }
    assert abi.fingerprint(abi.items(without)) == abi.fingerprint(abi.items(MANIFEST)) == _abi.ABI_FINGERPRINT
