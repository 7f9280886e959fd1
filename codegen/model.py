"""The API model: plain dataclasses describing one parsed C API (no libclang, no jinja, no cffi).

`codegen.parse` fills it from headers; the renderers and the drift checker read it.
`Api.to_manifest()` is the exact `api.json` schema; `Api.from_manifest()` reads one back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DefineValue = int | float | str


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    #: Full C declarator text, e.g. "const char * (*name)(const struct llama_sampler *)" (for rendering).
    decl: str = ""


@dataclass(frozen=True)
class Function:
    name: str
    return_type: str
    params: tuple[Param, ...]
    variadic: bool = False
    deprecated: str | None = None
    doc: str | None = None
    header: str = ""
    #: Which shared library exports it ("llama", "ggml", "ggml-rpc"); see codegen.generate.GROUPS.
    library: str = "llama"
    #: Function group from the generator's table ("llama", "ggml-backend", "ggml-rpc", ...).
    group: str = "llama"
    #: Declaration text without the trailing ';' (for rendering the cffi cdef).
    decl: str = ""


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    offset: int | None = None
    bitwidth: int | None = None
    decl: str = ""
    #: Set for an anonymous struct/union member: its own fields are reachable from the parent.
    anonymous: Struct | None = None


@dataclass(frozen=True)
class Struct:
    name: str
    kind: str = "struct"  # "struct" | "union"
    opaque: bool = False
    size: int | None = None
    align: int | None = None
    fields: tuple[Field, ...] = ()
    header: str = ""
    doc: str | None = None
    #: Declared as `typedef struct { ... } name;`: no tag, C code names it by the typedef only.
    typedef: bool = False

    @property
    def c_name(self) -> str:
        """How C code names the type: `struct x`, `union x`, or the typedef name of an untagged one."""
        return self.name if self.typedef else f"{self.kind} {self.name}"

    def flat_fields(self) -> list[Field]:
        """Fields as C code reaches them: members of anonymous structs/unions lifted into the parent."""
        out: list[Field] = []
        for f in self.fields:
            if f.anonymous is not None and not f.name:
                out.extend(f.anonymous.flat_fields())
            else:
                out.append(f)
        return out


@dataclass(frozen=True)
class EnumConstant:
    name: str
    value: int


@dataclass(frozen=True)
class Enum:
    name: str
    constants: tuple[EnumConstant, ...]
    header: str = ""
    #: Underlying integer type as the compiler chose it ("unsigned int", "int", ...).
    underlying: str = "int"
    doc: str | None = None
    #: Declared as `typedef enum { ... } name;` (no tag).
    typedef: bool = False

    @property
    def c_name(self) -> str:
        return self.name if self.typedef or not self.name else f"enum {self.name}"


@dataclass(frozen=True)
class Callback:
    name: str
    return_type: str
    params: tuple[Param, ...]
    header: str = ""
    variadic: bool = False
    decl: str = ""
    doc: str | None = None


@dataclass(frozen=True)
class Typedef:
    name: str
    type: str
    header: str = ""
    decl: str = ""
    doc: str | None = None


@dataclass(frozen=True)
class Define:
    name: str
    value: DefineValue
    expr: str
    header: str = ""


@dataclass
class Api:
    """Everything the generator emits, sorted by name in every list."""

    llama_cpp_commit: str
    headers: list[str] = field(default_factory=list)
    functions: list[Function] = field(default_factory=list)
    structs: list[Struct] = field(default_factory=list)
    enums: list[Enum] = field(default_factory=list)
    callbacks: list[Callback] = field(default_factory=list)
    typedefs: list[Typedef] = field(default_factory=list)
    defines: list[Define] = field(default_factory=list)
    #: "WARN: ..." / "ERROR: ..." lines for anything skipped or guessed (also written to the report).
    diagnostics: list[str] = field(default_factory=list)

    def sort(self) -> None:
        for name in ("functions", "structs", "enums", "callbacks", "typedefs", "defines"):
            getattr(self, name).sort(key=lambda item: item.name)

    def function(self, name: str) -> Function:
        return _by_name(self.functions, name)

    def struct(self, name: str) -> Struct:
        return _by_name(self.structs, name)

    def enum(self, name: str) -> Enum:
        return _by_name(self.enums, name)

    def to_manifest(self, generator: str = "codegen/generate.py") -> dict[str, Any]:
        """The `api.json` document (schema documented in the shared brief; extra keys: library, group)."""
        return {
            "generator": generator,
            "llama_cpp_commit": self.llama_cpp_commit,
            "headers": list(self.headers),
            "functions": [
                {
                    "name": f.name,
                    "return_type": f.return_type,
                    "params": [{"name": p.name, "type": p.type} for p in f.params],
                    "variadic": f.variadic,
                    "deprecated": f.deprecated,
                    "doc": f.doc,
                    "header": f.header,
                    "library": f.library,
                    "group": f.group,
                }
                for f in self.functions
            ],
            "structs": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "opaque": s.opaque,
                    "size": s.size,
                    "align": s.align,
                    "fields": [
                        {"name": f.name, "type": f.type, "offset": f.offset, "bitwidth": f.bitwidth}
                        for f in s.flat_fields()
                    ],
                    "header": s.header,
                }
                for s in self.structs
            ],
            "enums": [
                {
                    "name": e.name,
                    "constants": [{"name": c.name, "value": c.value} for c in e.constants],
                    "header": e.header,
                }
                for e in self.enums
            ],
            "callbacks": [
                {
                    "name": c.name,
                    "return_type": c.return_type,
                    "params": [{"name": p.name, "type": p.type} for p in c.params],
                    "header": c.header,
                }
                for c in self.callbacks
            ],
            "typedefs": [{"name": t.name, "type": t.type, "header": t.header} for t in self.typedefs],
            "defines": [{"name": d.name, "value": d.value, "expr": d.expr, "header": d.header} for d in self.defines],
        }

    @classmethod
    def from_manifest(cls, data: dict[str, Any]) -> Api:
        """Rebuild a model from an `api.json` document (declarator texts are not stored there)."""

        def params(items: list[dict[str, Any]]) -> tuple[Param, ...]:
            return tuple(Param(p["name"], p["type"]) for p in items)

        api = cls(llama_cpp_commit=data["llama_cpp_commit"], headers=list(data["headers"]))
        api.functions = [
            Function(
                name=f["name"],
                return_type=f["return_type"],
                params=params(f["params"]),
                variadic=f["variadic"],
                deprecated=f["deprecated"],
                doc=f["doc"],
                header=f["header"],
                library=f.get("library", "llama"),
                group=f.get("group", "llama"),
            )
            for f in data["functions"]
        ]
        api.structs = [
            Struct(
                name=s["name"],
                kind=s["kind"],
                opaque=s["opaque"],
                size=s["size"],
                align=s["align"],
                fields=tuple(Field(f["name"], f["type"], f["offset"], f["bitwidth"]) for f in s["fields"]),
                header=s["header"],
            )
            for s in data["structs"]
        ]
        api.enums = [
            Enum(e["name"], tuple(EnumConstant(c["name"], c["value"]) for c in e["constants"]), e["header"])
            for e in data["enums"]
        ]
        api.callbacks = [
            Callback(c["name"], c["return_type"], params(c["params"]), c["header"]) for c in data["callbacks"]
        ]
        api.typedefs = [Typedef(t["name"], t["type"], t["header"]) for t in data["typedefs"]]
        api.defines = [Define(d["name"], d["value"], d["expr"], d["header"]) for d in data["defines"]]
        return api


def _by_name(items: list[Any], name: str) -> Any:
    for item in items:
        if item.name == name:
            return item
    raise KeyError(name)
