"""Golden tests: small headers in tests/data/codegen/ exercise each C construct the generator handles.

Expected outputs live in tests/data/codegen/expected/<header>/ and are rewritten by exactly one command:
    python codegen/generate.py --update-golden
Besides the byte-for-byte comparison, each construct's meaning is asserted, and each golden cdef is
loaded into cffi and checked against gcc's layout of the same header.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cffi
import pytest

from codegen import generate, parse, render
from codegen.model import Api

DATA = Path(__file__).resolve().parent / "data" / "codegen"
HEADERS = sorted(DATA.glob("*.h"))


def _api(name: str) -> Api:
    return parse.parse_header(DATA / f"{name}.h", commit="golden")


def test_golden_headers_exist_for_every_construct() -> None:
    assert {h.stem for h in HEADERS} >= {"callbacks", "structs", "enums_defines", "deprecated"}


@pytest.mark.parametrize("header", HEADERS, ids=lambda p: p.stem)
def test_generated_files_match_golden(header: Path) -> None:
    produced = generate.golden_outputs(header)
    for name, text in produced.items():
        expected = (DATA / "expected" / header.stem / name).read_text(encoding="utf-8")
        assert text == expected, f"{header.stem}/{name} differs; run: python codegen/generate.py --update-golden"


def test_callbacks_and_variadics() -> None:
    api = _api("callbacks")
    progress = next(c for c in api.callbacks if c.name == "cb_progress")
    assert (progress.return_type, [(p.name, p.type) for p in progress.params]) == (
        "bool",
        [("progress", "float"), ("user_data", "void *")],
    )
    factory = next(c for c in api.callbacks if c.name == "cb_factory")
    assert [p.type for p in factory.params] == ["int", "const char *"]
    assert api.function("cb_log").variadic is True
    assert api.function("cb_set_progress").variadic is False
    assert api.function("cb_visit").params[1].type == "void (*)(struct cb_thing *, void *)"
    assert api.function("cb_names").return_type == "const char * const *"
    assert api.function("cb_set_progress").doc == "Register a progress callback (doc comment with three slashes)."
    vtable = api.struct("cb_vtable")
    assert [f.type for f in vtable.fields][:2] == [
        "const char * (*)(const struct cb_thing *)",
        "void (*)(struct cb_thing *, int32_t *, size_t)",
    ]


def test_structs_arrays_bitfields_anonymous_members_and_opaque_types() -> None:
    api = _api("structs")
    record = api.struct("st_record")
    fields = {f.name: f for f in record.flat_fields()}
    assert fields["name"].type == "char[16]"
    assert fields["matrix"].type == "float[2][3]"
    assert (fields["small"].bitwidth, fields["more"].bitwidth) == (3, 5)
    assert fields["small"].offset is None  # no byte offset for a bit-field
    assert fields["as_int"].offset == fields["as_float"].offset == fields["as_text"].offset
    assert fields["range"].type == "struct {...}"
    assert fields["box"].type == "st_rect"
    assert api.struct("st_opaque").opaque is True and api.struct("st_opaque").size is None
    assert api.struct("st_value").kind == "union" and api.struct("st_value").size == 4
    assert {t.name: t.type for t in api.typedefs} == {
        "st_bf16": "struct {...}",
        "st_handle": "struct st_opaque *",
        "st_id": "int32_t",
        "st_mode": "enum {...}",
        "st_rect": "struct st_rect",
    }
    # Untagged types are known by their typedef names only.
    bf16 = api.struct("st_bf16")
    assert (bf16.typedef, bf16.c_name, [f.name for f in bf16.fields]) == (True, "st_bf16", ["bits"])
    assert (api.enum("st_mode").typedef, api.enum("st_mode").c_name) == (True, "st_mode")
    assert [f.type for f in api.struct("st_holder").fields] == ["st_bf16", "st_mode"]
    assert not [line for line in api.diagnostics if line.startswith(("WARN", "ERROR"))]


def test_enum_expressions_and_defines_are_evaluated_by_the_compiler() -> None:
    api = _api("enums_defines")
    flags = {c.name: c.value for c in api.enum("ed_flags").constants}
    assert flags == {"ED_FLAG_NONE": 0, "ED_FLAG_A": 1, "ED_FLAG_B": 2, "ED_FLAG_AB": 3, "ED_FLAG_FROM_DEFINE": 16}
    assert [c.value for c in api.enum("ed_signed").constants] == [-2, -1, 0, 40]
    assert api.enum("ed_wide").constants[-1].value == 0xFFFFFFFF
    assert [c.name for c in api.enum("").constants] == ["ED_ANON_ONE", "ED_ANON_TWO"]
    defines = {d.name: (d.value, d.expr) for d in api.defines}
    assert defines == {
        "ED_ALIAS": (33, "ED_DERIVED"),
        "ED_BASE": (16, "0x10u"),
        "ED_BIG": (0xFFFFFFFFFF, "0xFFFFFFFFFFull"),
        "ED_CHAR": (ord("x"), "'x'"),
        "ED_DERIVED": (33, "(ED_BASE * 2 + 1)"),
        "ED_NEGATIVE": (-7, "-7"),
        "ED_SCALE": (0.25, "0.25f"),
        "ED_SHIFTED": (4096, "(1 << 12)"),
        "ED_VERSION": ("1.2.3", '"1.2.3"'),
    }
    assert any(line.startswith("INFO: macro ED_API (enums_defines.h)") for line in api.diagnostics)
    assert "INFO: 1 function-like macros not emitted: ED_MAX" in api.diagnostics
    assert "INFO: 1 empty macros not emitted: ED_EMPTY" in api.diagnostics


def test_deprecations_carry_their_messages() -> None:
    api = _api("deprecated")
    assert api.function("dp_old_free").deprecated == "use dp_free instead"
    assert api.function("dp_old_count").deprecated == "use dp_count instead (split message)"
    assert api.function("dp_bare").deprecated == "deprecated"
    assert api.function("dp_count").deprecated is None
    assert api.function("dp_new").doc == "Create a context.\nMulti-line comments become the doc."
    assert api.function("dp_free").doc == "C-style block comment doc."
    stub = render.render_stub(api)
    assert '@deprecated("use dp_free instead")\ndef dp_old_free(ctx: CData, /) -> None:' in stub


def test_symbols_and_manifest_follow_the_api() -> None:
    api = _api("deprecated")
    files = generate.render_all(api, ())
    manifest = json.loads(files["api.json"])
    assert manifest["headers"] == ["deprecated.h"]
    assert [f["name"] for f in manifest["functions"]] == sorted(f["name"] for f in manifest["functions"])
    namespace: dict[str, object] = {}
    exec(compile(files["_symbols.py"], "_symbols.py", "exec"), namespace)
    assert namespace["FUNCTIONS"] == frozenset(f.name for f in api.functions)
    assert namespace["DEPRECATED"] == {"dp_bare": "deprecated", "dp_old_count": api.function("dp_old_count").deprecated,
                                       "dp_old_free": "use dp_free instead"}  # fmt: skip


# ------------------------------------------------------------------------------------- layouts vs gcc


def _gcc_facts(header: Path, api: Api, work: Path) -> dict[str, int]:
    prog = [f'#include "{header}"', "#include <stdio.h>", "#include <stddef.h>", "int main(void) {"]
    for s in api.structs:
        if s.opaque:
            continue
        tag = s.c_name
        prog.append(f'printf("size:{tag}=%zu\\n", sizeof({tag}));')
        for f in s.flat_fields():
            if f.bitwidth is None:
                prog.append(f'printf("{tag}.{f.name}=%zu\\n", offsetof({tag}, {f.name}));')
    for e in api.enums:
        for c in e.constants:
            prog.append(f'printf("{c.name}=%lld\\n", (long long){c.name});')
    for d in api.defines:
        if isinstance(d.value, int):
            prog.append(f'printf("{d.name}=%lld\\n", (long long)({d.name}));')
    prog += ["return 0;", "}"]
    src = work / f"{header.stem}.c"
    src.write_text("\n".join(prog) + "\n")
    exe = work / header.stem
    subprocess.run(["gcc", "-std=c11", "-w", str(src), "-o", str(exe)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split("=") for line in out.splitlines())}


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("header", HEADERS, ids=lambda p: p.stem)
def test_golden_cdef_loads_in_cffi_with_gcc_layouts(header: Path, tmp_path: Path) -> None:
    api = parse.parse_header(header, commit="golden")
    ffi = cffi.FFI()
    ffi.cdef(render.render_cdef(api))
    facts = _gcc_facts(header, api, tmp_path)
    assert bool(facts) == bool([s for s in api.structs if not s.opaque] or api.enums or api.defines)
    consts = ffi.dlopen(None)  # ABI mode: enum constants and #defines need no real symbols
    for key, value in facts.items():
        if "." in key:
            tag, field = key.split(".")
            got = ffi.offsetof(tag, field)
        elif key.startswith("size:"):
            got = ffi.sizeof(key[5:])
        else:
            got = getattr(consts, key)
        assert got == value, key
    for s in api.structs:
        if not s.opaque:
            assert ffi.sizeof(s.c_name) == s.size


def test_manifest_reads_back_into_the_same_model() -> None:
    manifest = json.loads((Path(generate.DEFAULT_OUT) / "api.json").read_text())
    manifest.pop("_comment")
    assert Api.from_manifest(manifest).to_manifest() == manifest
