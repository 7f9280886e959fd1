"""Layouts and values of the generated bindings against what gcc says for the same headers.

A C program printing sizeof/alignof/offsetof of every struct and field, and the value of every enum
constant and integer #define, is generated from api.json, compiled with gcc against the pinned
headers and compared with the cffi module (ffi.sizeof/offsetof/integer_const) and with api.json.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from llamarcp._generated._llama_ffi import ffi

GENERATED = Path(__file__).resolve().parent.parent / "llamarcp" / "_generated"
MANIFEST = json.loads((GENERATED / "api.json").read_text())

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def _sized(api: dict) -> list[dict]:
    """Typedefs and callbacks with a size: not those naming an opaque struct (`typedef struct mtmd_context ...`)."""
    opaque = {f"{s['kind']} {s['name']}" for s in api["structs"] if s["opaque"]}
    return [t for t in api["typedefs"] + api["callbacks"] if t.get("type") not in opaque]


def _c_program(api: dict) -> str:
    # Every header the bindings read (mtmd.h and mtmd-helper.h included: their structs are checked too).
    lines = [*(f'#include "{h}"' for h in api["headers"]), "#include <stdio.h>", "#include <stddef.h>"]
    lines.append("int main(void) {")
    for s in api["structs"]:
        if s["opaque"]:
            continue
        tag = f"{s['kind']} {s['name']}"
        lines.append(f'  printf("size|{tag}|%zu|%zu\\n", sizeof({tag}), _Alignof({tag}));')
        for f in s["fields"]:
            if f["bitwidth"] is None:
                lines.append(f'  printf("offset|{tag}|{f["name"]}|%zu\\n", offsetof({tag}, {f["name"]}));')
    for e in api["enums"]:
        if e["name"]:
            tag = f"enum {e['name']}"
            lines.append(f'  printf("size|{tag}|%zu|%zu\\n", sizeof({tag}), _Alignof({tag}));')
        for c in e["constants"]:
            lines.append(f'  printf("value|{c["name"]}|%lld\\n", (long long)({c["name"]}));')
    for d in api["defines"]:
        if isinstance(d["value"], int):
            lines.append(f'  printf("value|{d["name"]}|%lld\\n", (long long)({d["name"]}));')
    for t in _sized(api):
        lines.append(f'  printf("size|{t["name"]}|%zu|%zu\\n", sizeof({t["name"]}), _Alignof({t["name"]}));')
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def compiler_facts(llama_cpp_source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    work = tmp_path_factory.mktemp("layout")
    src = work / "layout.c"
    src.write_text(_c_program(MANIFEST))
    exe = work / "layout"
    inc = [f"-I{llama_cpp_source / d}" for d in ("include", "ggml/include", "tools/mtmd")]
    subprocess.run(["gcc", "-std=c11", "-w", *inc, str(src), "-o", str(exe)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    facts: dict[str, list[str]] = {}
    for line in out.splitlines():
        kind, key, *rest = line.split("|")
        if kind == "offset":
            facts[f"offset|{key}|{rest[0]}"] = rest[1:]
        else:
            facts[f"{kind}|{key}"] = rest
    return facts


def test_every_struct_size_and_alignment_matches_gcc(compiler_facts: dict[str, list[str]]) -> None:
    checked = 0
    for s in MANIFEST["structs"]:
        tag = f"{s['kind']} {s['name']}"
        if s["opaque"]:
            assert s["size"] is None
            continue
        size, align = (int(v) for v in compiler_facts[f"size|{tag}"])
        assert ffi.sizeof(tag) == size == s["size"], tag
        assert ffi.alignof(tag) == align == s["align"], tag
        checked += 1
    assert checked == sum(1 for s in MANIFEST["structs"] if not s["opaque"]) > 20


def test_every_field_offset_matches_gcc(compiler_facts: dict[str, list[str]]) -> None:
    checked = 0
    for s in MANIFEST["structs"]:
        tag = f"{s['kind']} {s['name']}"
        for f in s["fields"]:
            if f["bitwidth"] is not None:
                continue
            expected = int(compiler_facts[f"offset|{tag}|{f['name']}"][0])
            assert ffi.offsetof(tag, f["name"]) == expected == f["offset"], f"{tag}.{f['name']}"
            checked += 1
    assert checked == sum(1 for s in MANIFEST["structs"] for f in s["fields"] if f["bitwidth"] is None) > 100


_TYPEDEFS = {t["name"]: t["type"] for t in MANIFEST["typedefs"]}
_CALLBACKS = {c["name"] for c in MANIFEST["callbacks"]}


def _expected_kind(c_type: str) -> str:
    c_type = c_type.replace("const ", "").strip()
    while c_type in _TYPEDEFS:
        c_type = _TYPEDEFS[c_type].replace("const ", "").strip()
    if c_type in _CALLBACKS or "(*)" in c_type:
        return "function"
    if c_type.endswith("*"):
        return "pointer"
    if c_type.endswith("]"):
        return "array"
    for kind in ("struct", "union", "enum"):
        if c_type.startswith(kind + " "):
            return kind
    return "primitive"


def test_every_field_has_the_declared_kind_in_cffi() -> None:
    # Equal sizes can hide a bool-vs-char or pointer-vs-integer slip; compare what kind of thing each field is.
    checked = 0
    for s in MANIFEST["structs"]:
        if s["opaque"]:
            continue
        cffi_fields = dict(ffi.typeof(f"{s['kind']} {s['name']}").fields)
        for f in s["fields"]:
            cffi_type = cffi_fields[f["name"]].type
            expected = "struct" if f["type"].endswith("{...}") else _expected_kind(f["type"])
            assert cffi_type.kind == expected, f"{s['name']}.{f['name']}: {cffi_type.cname} vs {f['type']}"
            if expected == "primitive":
                base = f["type"].replace("const ", "").strip()
                assert cffi_type.cname == ffi.typeof(base).cname, f"{s['name']}.{f['name']}"
            checked += 1
    assert checked == sum(len(s["fields"]) for s in MANIFEST["structs"]) > 100


def test_every_enum_constant_value_matches_gcc(compiler_facts: dict[str, list[str]]) -> None:
    checked = 0
    for e in MANIFEST["enums"]:
        if e["name"]:
            size, align = (int(v) for v in compiler_facts[f"size|enum {e['name']}"])
            assert ffi.sizeof(f"enum {e['name']}") == size, e["name"]
        for c in e["constants"]:
            expected = int(compiler_facts[f"value|{c['name']}"][0])
            assert ffi.integer_const(c["name"]) == expected == c["value"], c["name"]
            checked += 1
    assert checked > 150


def test_every_integer_define_matches_gcc(compiler_facts: dict[str, list[str]]) -> None:
    checked = 0
    for d in MANIFEST["defines"]:
        if isinstance(d["value"], int):
            expected = int(compiler_facts[f"value|{d['name']}"][0])
            assert ffi.integer_const(d["name"]) == expected == d["value"], d["name"]
            checked += 1
    assert checked >= 15
    names = {d["name"] for d in MANIFEST["defines"]}
    assert {"LLAMA_DEFAULT_SEED", "LLAMA_TOKEN_NULL", "LLAMA_SESSION_MAGIC", "LLAMA_STATE_SEQ_MAGIC"} <= names


def test_every_typedef_size_matches_gcc(compiler_facts: dict[str, list[str]]) -> None:
    for t in _sized(MANIFEST):
        size, align = (int(v) for v in compiler_facts[f"size|{t['name']}"])
        assert ffi.sizeof(t["name"]) == size, t["name"]
        assert ffi.alignof(t["name"]) == align, t["name"]


def test_anonymous_union_members_are_reachable() -> None:
    kv = ffi.new("struct llama_model_kv_override *")
    kv.val_i64 = 7
    assert kv.val_i64 == 7
    kv.val_str = b"hello"
    assert ffi.string(kv.val_str) == b"hello"
    assert ffi.offsetof("struct llama_model_kv_override", "val_i64") == ffi.offsetof(
        "struct llama_model_kv_override", "val_str"
    )
