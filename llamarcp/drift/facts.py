"""What a llama.cpp API manifest says about the things Python code uses: arities, struct fields, C types, constants.

`TreeFacts.from_manifest` condenses an api.json manifest (or `codegen.parse.parse_source(...).to_manifest()` of a
tree) into the tables the usage scan (`llamarcp.drift.usage`) checks code against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from llamarcp.errors import DriftError

#: Identifiers in a C type that are not type names.
C_WORDS = frozenset(
    {
        "const", "volatile", "restrict", "struct", "union", "enum", "signed", "unsigned", "short", "long", "int",
        "char", "float", "double", "void", "bool", "_Bool", "size_t", "ssize_t", "intptr_t", "uintptr_t",
        "ptrdiff_t", "FILE",
    }
)  # fmt: skip
#: Type names llama.cpp's headers declare start with one of these (others in a type string are not checked).
TYPE_PREFIXES = ("llama_", "ggml_", "gguf_", "mtmd_")
#: `lib.NAME` spelled like this is an enum constant or a #define of llama.cpp's headers.
CONSTANT_NAME = re.compile(r"^(LLAMA|GGML|GGUF|MTMD|RPC)_[A-Z0-9_]+$")


@dataclass(frozen=True)
class CType:
    """A struct (or union) reached through `depth` pointers/array dimensions; cffi reads fields through one."""

    struct: str
    depth: int = 0

    def element(self) -> CType | None:
        return CType(self.struct, self.depth - 1) if self.depth > 0 else None


@dataclass
class TreeFacts:
    """The parts of one llama.cpp API that decide whether a use still fits it."""

    commit: str
    #: function -> (parameter count, variadic)
    arity: dict[str, tuple[int, bool]] = field(default_factory=dict)
    returns: dict[str, str] = field(default_factory=dict)
    #: non-opaque struct or union -> {field: C type}
    fields: dict[str, dict[str, str]] = field(default_factory=dict)
    typedefs: dict[str, str] = field(default_factory=dict)
    #: every type name declared: structs (opaque ones too), unions, enums, typedefs, callbacks
    types: frozenset[str] = frozenset()
    #: enum constants and #defines
    constants: frozenset[str] = frozenset()

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], label: str | None = None) -> TreeFacts:
        """`label` names the API where the manifest knows no commit (a tree outside git: "unknown")."""
        _check_entries(manifest, label)
        functions = manifest.get("functions", [])
        structs = manifest.get("structs", [])
        types = {s["name"] for s in structs}
        types.update(e["name"] for e in manifest.get("enums", []))
        types.update(t["name"] for t in manifest.get("typedefs", []))
        types.update(c["name"] for c in manifest.get("callbacks", []))
        constants = {c["name"] for e in manifest.get("enums", []) for c in e.get("constants", [])}
        constants.update(d["name"] for d in manifest.get("defines", []))
        commit = str(manifest.get("llama_cpp_commit") or "unknown")
        if commit == "unknown":
            commit = label or "(unknown commit)"
        return cls(
            commit=commit[:12] if re.fullmatch(r"[0-9a-f]{40}", commit) else commit,
            arity={f["name"]: (len(f["params"]), bool(f.get("variadic"))) for f in functions},
            returns={f["name"]: f["return_type"] for f in functions},
            fields={
                s["name"]: {f["name"]: f["type"] for f in s["fields"]}
                for s in structs
                if not s.get("opaque") and s.get("fields")
            },
            typedefs={t["name"]: t["type"] for t in manifest.get("typedefs", [])},
            types=frozenset(types),
            constants=frozenset(constants),
        )

    @cached_property
    def all_fields(self) -> frozenset[str]:
        return frozenset(name for fields in self.fields.values() for name in fields)

    def struct_of(self, ctype: str, other: TreeFacts | None = None, _depth: int = 0) -> CType | None:
        """The struct a C type string reaches (`struct llama_batch *`, `llama_token_data[]`, a typedef of one);
        names this API lacks are looked up in `other` (the bindings' own API)."""
        raw = re.findall(r"[A-Za-z_]\w*", ctype)
        words = [w for w in raw if w not in C_WORDS]
        if "(" in ctype or "enum" in raw or len(words) != 1 or _depth > 8:  # function pointers, enums, loops
            return None
        name = words[0]
        depth = ctype.count("*") + ctype.count("[")
        for facts in (self, other):
            if facts is not None and name in facts.fields:
                return CType(name, depth)
        for facts in (self, other):
            if facts is not None and name in facts.typedefs:
                inner = self.struct_of(facts.typedefs[name], other, _depth + 1)
                return CType(inner.struct, inner.depth + depth) if inner else None
        return None

    def unknown_types(self, ctype: str) -> list[str]:
        """llama.cpp type names in a C type string (as cffi reads it) that this API does not declare."""
        words = re.findall(r"[A-Za-z_]\w*", ctype)
        return [w for w in words if w.startswith(TYPE_PREFIXES) and w not in self.types and w not in C_WORDS]

    def declares_constant_prefix(self, prefix: str) -> bool:
        return any(name.startswith(prefix) for name in self.constants)


def _check_entries(manifest: dict[str, Any], label: str | None) -> None:
    """The nested entries the usage checks read (inputs.validate_manifest checks the sections' own keys)."""
    where = label or str(manifest.get("llama_cpp_commit") or "manifest")
    for struct in manifest.get("structs", []):
        for i, member in enumerate(struct.get("fields") or []):
            if not isinstance(member, dict) or not isinstance(member.get("name"), str) or "type" not in member:
                raise DriftError(f"{where}: struct {struct.get('name')} field #{i} lacks a name or type")
    for enum in manifest.get("enums", []):
        for i, constant in enumerate(enum.get("constants") or []):
            if not isinstance(constant, dict) or not isinstance(constant.get("name"), str):
                raise DriftError(f"{where}: enum {enum.get('name')} constant #{i} lacks a name")
