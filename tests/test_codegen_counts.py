"""Nothing of the pinned llama.h is missing: a second, independent route (gcc -E + pycparser) lists it.

libclang produced api.json; here gcc preprocesses llama.h against tiny libc shims and pycparser walks
the result. Every function, struct, enum, typedef and #define it finds in llama.h must be in api.json
(and nothing more), and every DEPRECATED(...) of the raw header must carry its message.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pycparser = pytest.importorskip("pycparser")
from pycparser import c_ast  # noqa: E402

from codegen.parse import GROUPS  # noqa: E402

GENERATED = Path(__file__).resolve().parent.parent / "llamarcp" / "_generated"
MANIFEST = json.loads((GENERATED / "api.json").read_text())

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

# Just enough libc for the llama.cpp headers, in plain C that pycparser reads.
SHIMS = {
    "stddef.h": "typedef unsigned long size_t;\ntypedef long ptrdiff_t;\n#define NULL ((void*)0)\n",
    "stdint.h": "".join(
        f"typedef {c} {n};\n"
        for n, c in [
            ("int8_t", "signed char"),
            ("int16_t", "short"),
            ("int32_t", "int"),
            ("int64_t", "long"),
            ("uint8_t", "unsigned char"),
            ("uint16_t", "unsigned short"),
            ("uint32_t", "unsigned int"),
            ("uint64_t", "unsigned long"),
            ("intptr_t", "long"),
            ("uintptr_t", "unsigned long"),
        ]
    ),  # fmt: skip
    "stdio.h": "typedef struct _IO_FILE FILE;\n",
    "stdbool.h": "#define bool _Bool\n#define true 1\n#define false 0\n",
}


class Inventory(c_ast.NodeVisitor):
    """Top-level declarations per header file name."""

    def __init__(self) -> None:
        self.functions: dict[str, set[str]] = {}
        self.structs: dict[str, set[str]] = {}
        self.enums: dict[str, set[str]] = {}
        self.enum_constants: dict[str, set[str]] = {}
        self.typedefs: dict[str, set[str]] = {}
        self.callbacks: dict[str, set[str]] = {}

    @staticmethod
    def _file(node: c_ast.Node) -> str:
        return Path(node.coord.file).name if node.coord else ""

    def _add(self, table: dict[str, set[str]], node: c_ast.Node, name: str) -> None:
        table.setdefault(self._file(node), set()).add(name)

    def _tag(self, node: c_ast.Node) -> None:
        if isinstance(node, (c_ast.Struct, c_ast.Union)) and node.name:
            self._add(self.structs, node, node.name)
        elif isinstance(node, c_ast.Enum) and node.values is not None:
            if node.name:
                self._add(self.enums, node, node.name)
            for value in node.values.enumerators:
                self._add(self.enum_constants, node, value.name)

    def visit_FileAST(self, node: c_ast.FileAST) -> None:
        for ext in node.ext:
            inner = ext.type
            while isinstance(inner, (c_ast.TypeDecl, c_ast.PtrDecl, c_ast.ArrayDecl)):
                inner = inner.type
            if isinstance(ext, c_ast.Typedef):
                self._tag(inner)
                is_callback = isinstance(ext.type, c_ast.PtrDecl) and isinstance(ext.type.type, c_ast.FuncDecl)
                self._add(self.callbacks if is_callback else self.typedefs, ext, ext.name)
            elif isinstance(ext, c_ast.Decl):
                if isinstance(ext.type, c_ast.FuncDecl):
                    self._add(self.functions, ext, ext.name)
                else:
                    self._tag(inner)


@pytest.fixture(scope="module")
def preprocessed(llama_cpp_source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Inventory, str]:
    work = tmp_path_factory.mktemp("shims")
    for name, text in SHIMS.items():
        (work / name).write_text(text)
    # Every header of the group table (llama.h, ggml-rpc.h, mtmd.h, ...), each from its own directory.
    (work / "all.h").write_text("".join(f'#include "{Path(g.header).name}"\n' for g in GROUPS))
    dirs = sorted({str(llama_cpp_source / Path(g.header).parent) for g in GROUPS})
    cmd = [
        "gcc", "-E", "-nostdinc", f"-I{work}", *(f"-I{d}" for d in dirs), "-D__attribute__(x)=", "-x", "c",
    ]  # fmt: skip
    text = subprocess.run([*cmd, str(work / "all.h")], check=True, capture_output=True, text=True).stdout
    defines = subprocess.run([*cmd, "-dD", str(work / "all.h")], check=True, capture_output=True, text=True).stdout
    inventory = Inventory()
    inventory.visit(pycparser.CParser().parse(text, "all.h"))
    return inventory, defines


def _manifest(kind: str, header: str) -> set[str]:
    return {item["name"] for item in MANIFEST[kind] if item["header"] == header}


def test_every_llama_h_function_is_generated(preprocessed: tuple[Inventory, str]) -> None:
    inventory, _ = preprocessed
    found = inventory.functions["llama.h"]
    assert len(found) > 200
    assert found == _manifest("functions", "llama.h")
    generated = {f["name"]: f for f in MANIFEST["functions"]}
    assert all(generated[name]["library"] == "llama" for name in found)


def test_optional_groups_take_exactly_their_table_rows(preprocessed: tuple[Inventory, str]) -> None:
    inventory, _ = preprocessed
    for group in GROUPS:
        if group.primary:
            continue
        header = Path(group.header).name
        expected = {n for n in inventory.functions[header] if not group.prefixes or n.startswith(group.prefixes)}
        got = {f["name"] for f in MANIFEST["functions"] if f["group"] == group.name}
        assert expected and got == expected, group.name
        assert {f["library"] for f in MANIFEST["functions"] if f["group"] == group.name} == {group.library}


def test_every_llama_h_struct_enum_and_typedef_is_generated(preprocessed: tuple[Inventory, str]) -> None:
    inventory, _ = preprocessed
    assert inventory.structs["llama.h"] <= {s["name"] for s in MANIFEST["structs"]}
    assert inventory.structs["llama.h"] >= _manifest("structs", "llama.h")
    assert inventory.enums["llama.h"] == _manifest("enums", "llama.h")
    constants = {c["name"] for e in MANIFEST["enums"] if e["header"] == "llama.h" for c in e["constants"]}
    assert inventory.enum_constants["llama.h"] == constants
    assert inventory.typedefs["llama.h"] == _manifest("typedefs", "llama.h")
    assert inventory.callbacks["llama.h"] == _manifest("callbacks", "llama.h")


def test_every_type_a_function_names_is_declared(preprocessed: tuple[Inventory, str]) -> None:
    known = {t["name"] for t in MANIFEST["typedefs"] + MANIFEST["callbacks"]}
    known |= {f"{s['kind']} {s['name']}" for s in MANIFEST["structs"]}
    known |= {f"enum {e['name']}" for e in MANIFEST["enums"]}
    builtin = {"void", "char", "int", "float", "double", "bool", "size_t", "FILE", "unsigned int", "long"}
    builtin |= {"unsigned char"}  # mtmd.h: image bytes
    builtin |= {f"{u}int{n}_t" for u in ("", "u") for n in (8, 16, 32, 64)}
    for f in MANIFEST["functions"]:
        for c_type in [f["return_type"], *(p["type"] for p in f["params"])]:
            base = re.sub(r"\b(const|volatile)\b|\*|\[\d*\]", "", c_type).strip()
            base = " ".join(base.split())
            assert base in known or base in builtin, f"{f['name']}: {c_type}"


def test_every_llama_h_define_is_generated(preprocessed: tuple[Inventory, str]) -> None:
    _, dumped = preprocessed
    names = set()
    current = ""
    for line in dumped.splitlines():
        marker = re.match(r'# \d+ "([^"]+)"', line)
        if marker:
            current = Path(marker.group(1)).name
            continue
        m = re.match(r"#define (\w+)(\(?)\s*(.*)$", line)
        if current == "llama.h" and m and not m.group(2) and m.group(3) and "__attribute__" not in m.group(3):
            names.add(m.group(1))
    assert names == _manifest("defines", "llama.h")
    assert len(names) >= 10


def test_every_deprecation_of_the_raw_header_is_recorded(llama_cpp_source: Path) -> None:
    text = (llama_cpp_source / "include" / "llama.h").read_text()
    # Drop preprocessor lines (the macro's own definitions) and comments; what is left are its uses.
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    body = re.sub(r"//[^\n]*", "", body)
    pattern = re.compile(
        r"DEPRECATED\(\s*(?:LLAMA_API\s+)?[^;]*?\b(\w+)\s*\([^;]*?\)\s*,\s*((?:\"[^\"]*\"\s*)+)\)\s*;", re.S
    )
    expected = {m.group(1): "".join(re.findall(r'"([^"]*)"', m.group(2))) for m in pattern.finditer(body)}
    assert len(expected) > 20
    got = {f["name"]: f["deprecated"] for f in MANIFEST["functions"] if f["deprecated"] and f["header"] == "llama.h"}
    assert got == expected
