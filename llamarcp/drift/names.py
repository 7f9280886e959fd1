"""The C names Python code uses, checked against one llama.cpp API: removed, deprecated or undeclared functions.

Recognised: `lib.llama_x(...)` on any alias of a loaded library (`L = lib`, `self._lib = lib`,
`ffi.dlopen(...)`, `ctypes.CDLL(...)`, `get_lib()`, and by llamarcp's convention any `lib` / `_lib` name),
`llama_cpp.llama_x(...)`, `from m import llama_x`, `getattr(lib, "llama_x")`, `lib["llama_x"]`, and ctypes-style
binding tables that name a function in a string argument (`ctypes_function("llama_x", ...)`).
`llamarcp.drift.usage` builds on this visitor to check what the code does with them; `llamarcp.drift.scan` runs it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

from llamarcp.drift.facts import TreeFacts
from llamarcp.drift.replacements import REMOVED_FUNCTIONS

#: Modules whose attributes are the C functions themselves (llama-cpp-python re-exports them).
LIB_MODULES = ("llama_cpp", "llama_cpp.llama_cpp", "llamarcp.lib")

#: Calls whose result is a loaded library object.
LOADER_CALLS = ("dlopen", "CDLL", "PyDLL", "WinDLL", "LoadLibrary", "load_shared_library", "get_lib")

#: llamarcp's naming convention: a name or attribute spelled like this holds the loaded library.
LIB_NAMES = ("lib", "_lib")

#: A name with this prefix that the pinned API does not declare is reported as undeclared.
FUNCTION_PREFIXES = ("llama_",)


#: status -> severity. Beside names: "arity" (a call with another argument count), "field" (a struct field the
#: tree's struct lacks), "constant" / "type" (an enum constant, #define or C type the tree does not declare), and
#: "field-gone" (a field of the bindings' structs that no struct of the tree has, on a receiver of unknown type).
SEVERITY = {
    "removed": "error",
    "undeclared": "error",
    "deprecated": "warning",
    "arity": "error",
    "field": "error",
    "constant": "error",
    "type": "error",
    "field-gone": "warning",
}

STATUSES = tuple(SEVERITY)


@dataclass(frozen=True)
class Use:
    path: str
    line: int
    col: int  # 1-based, as editors count
    name: str
    status: str  # a key of SEVERITY
    hint: str
    how: str  # "attribute" | "import" | "name" | "string" | "call"

    @property
    def severity(self) -> str:
        return SEVERITY[self.status]

    def render(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.status} {self.name} -> {self.hint}"

    def render_github(self) -> str:
        message = gh_escape(f"{self.status} {self.name} -> {self.hint}")
        path = gh_escape(self.path).replace(":", "%3A").replace(",", "%2C")
        return f"::{self.severity} file={path},line={self.line},col={self.col}::{message}"


def gh_escape(text: str) -> str:
    """GitHub workflow-command escaping (`%`, CR, LF); property values also escape `:` and `,`."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


@dataclass
class ApiIndex:
    """What an API says about a name: declared, deprecated (with hint), known removed; and for the usage checks,
    its arities, struct fields, types and constants (`facts`), with the bindings' own API (`reference`) to name
    what moved."""

    functions: frozenset[str]
    deprecated: dict[str, str]
    other_names: frozenset[str]
    removed: dict[str, str] = field(default_factory=dict)
    facts: TreeFacts | None = None
    reference: TreeFacts | None = None

    @classmethod
    def from_manifest(
        cls,
        manifest: dict[str, Any],
        removed: dict[str, str] | None = None,
        reference: dict[str, Any] | None = None,
        label: str | None = None,
    ) -> ApiIndex:
        """`reference`: the manifest the code was written against (the pinned bindings) when `manifest` is
        another tree; it names fields that moved and types what the tree lacks. `label` names the API in
        findings when its manifest has no commit (a tree outside git)."""
        facts = TreeFacts.from_manifest(manifest, label)  # first: it names a malformed entry (DriftError)
        ref = TreeFacts.from_manifest(reference) if reference is not None else None
        functions = frozenset(f["name"] for f in manifest.get("functions", []))
        deprecated = {
            f["name"]: (f["deprecated"] or "deprecated without a named replacement")
            for f in manifest.get("functions", [])
            if f.get("deprecated") is not None
        }
        others: set[str] = set()
        for key in ("structs", "callbacks", "typedefs", "defines"):
            others.update(item["name"] for item in manifest.get(key, []))
        for enum in manifest.get("enums", []):
            others.add(enum["name"])
            others.update(c["name"] for c in enum.get("constants", []))
        table = dict(REMOVED_FUNCTIONS)
        table.update(removed or {})
        # A name the pinned API declares again is not removed, whatever an old table says.
        table = {k: v for k, v in table.items() if k not in functions}
        return cls(functions, deprecated, frozenset(others), table, facts, ref)

    @property
    def where(self) -> str:
        return f"llama.cpp {self.facts.commit}" if self.facts else "the pinned llama.h"

    def classify(self, name: str, *, strong: bool) -> tuple[str, str] | None:
        """(status, hint) for a reportable name; `strong` when the context proves it is a C function."""
        if name in self.deprecated:
            return "deprecated", self.deprecated[name]
        if name in self.functions or name in self.other_names:
            return None
        if name in self.removed:
            return "removed", self.removed[name]
        if strong and name.startswith(FUNCTION_PREFIXES):
            return "undeclared", f"not declared by {self.where} (removed, renamed or misspelled)"
        return None


def dotted_name(node: ast.AST) -> str | None:
    """`a.b.c` for a Name/Attribute chain, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _module_kind(module: str) -> str:
    return "lib" if module == "llamarcp.lib" else "module"


def call_name(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


class NameVisitor(ast.NodeVisitor):
    """Finds the C names a module uses (`llamarcp.drift.usage.UsageVisitor` adds what it does with them)."""

    def __init__(self, api: ApiIndex, path: str) -> None:
        self.api = api
        self.path = path
        self.uses: list[Use] = []
        #: dotted name -> "lib" (a loaded C library: any llama_* attribute is a C function) or "module"
        #: (a Python module re-exporting them: only known removed/deprecated names are reported).
        self.aliases: dict[str, str] = {}
        #: local name -> imported C name (`from llama_cpp import llama_x as y`).
        self.imported: dict[str, str] = {}
        self.star = False
        #: Dotted callables returning llamarcp's loaded library (`from llamarcp._lib import load`).
        self.loaders = {"_lib.load", "llamarcp._lib.load"}
        self._seen: set[tuple[int, int, str, str]] = set()
        self._called: set[int] = set()

    # -- helpers
    def _report(self, node: ast.AST, name: str, how: str, *, strong: bool, col: int | None = None) -> None:
        verdict = self.api.classify(name, strong=strong)
        if verdict is not None:
            self._add(node, name, *verdict, how, col=col)

    def _add(self, node: ast.AST, name: str, status: str, hint: str, how: str, *, col: int | None = None) -> None:
        """Record one finding at `node` (`col`: 0-based override), once per place, name and status."""
        line = getattr(node, "lineno", 0)
        col = (getattr(node, "col_offset", 0) if col is None else col) + 1
        key = (line, col, name, status)
        if key in self._seen or self._silenced(line, name):
            return
        self._seen.add(key)
        self.uses.append(Use(self.path, line, col, name, status, hint, how))

    def _silenced(self, line: int, name: str) -> bool:
        """A use the code marks as handled (`# drift: adapted`, a capability check): see UsageVisitor."""
        return False

    def _alias_kind(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Call) and self._is_loader_call(node):
            return "lib"  # get_lib().llama_x(...)
        dotted = dotted_name(node)
        if dotted is None:
            return None
        if dotted in self.aliases:
            return self.aliases[dotted]
        if dotted.rsplit(".", 1)[-1] in LIB_NAMES:
            return "lib"
        return None

    def _is_loader_call(self, node: ast.Call) -> bool:
        return call_name(node) in LOADER_CALLS or dotted_name(node.func) in self.loaders

    def _is_lib_value(self, value: ast.AST) -> str | None:
        """Kind of alias an assigned value creates, if any."""
        return self._alias_kind(value)  # an alias, a loader call (`get_lib()`, `ffi.dlopen(...)`) or `lib`

    # -- imports
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            local_root = alias.asname or alias.name
            for module in LIB_MODULES:
                if module == alias.name or module.startswith(alias.name + "."):
                    # `import llama_cpp as lc` makes `lc` and `lc.llama_cpp` library modules.
                    self.aliases[local_root + module[len(alias.name) :]] = _module_kind(module)
                elif alias.asname is None and alias.name.startswith(module + "."):
                    # `import llama_cpp.llama_cpp` also binds the package `llama_cpp` itself.
                    self.aliases[module] = _module_kind(module)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        for alias in node.names:
            bound = alias.asname or alias.name
            if alias.name == "*":
                self.star = self.star or module in LIB_MODULES
                continue
            full = f"{module}.{alias.name}"
            if full == "llamarcp._lib.load":
                self.loaders.add(bound)
            if full in LIB_MODULES:
                self.aliases[bound] = _module_kind(full)
                continue
            # Modules also export Python helpers named llama_*: only known removed/deprecated names count.
            if self.api.classify(alias.name, strong=False) is not None:
                where = alias if hasattr(alias, "lineno") else node  # ast.alias has a position from 3.10 on
                self._report(where, alias.name, "import", strong=False)
                self.imported[bound] = alias.name

    # -- aliases
    def visit_Assign(self, node: ast.Assign) -> None:
        kind = self._is_lib_value(node.value)
        if kind:
            for target in node.targets:
                dotted = dotted_name(target)
                if dotted:
                    self.aliases[dotted] = kind
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            kind = self._is_lib_value(node.value)
            dotted = dotted_name(node.target)
            if kind and dotted:
                self.aliases[dotted] = kind
        self.generic_visit(node)

    # -- uses
    def visit_Call(self, node: ast.Call) -> None:
        self._called.add(id(node.func))
        callee = call_name(node)
        if callee in ("getattr", "hasattr") and len(node.args) >= 2:
            target, name = node.args[0], node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                self._report(name, name.value, "string", strong=self._alias_kind(target) == "lib")
        else:
            # ctypes binding tables: `ctypes_function("llama_x", argtypes, restype)` and the like.
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    self._report(arg, arg.value, "string", strong=False)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        key = node.slice
        if self._alias_kind(node.value) == "lib" and isinstance(key, ast.Constant) and isinstance(key.value, str):
            self._report(key, key.value, "string", strong=True)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        # Python modules (llama_cpp) define helpers and ctypes types named llama_*: only a loaded C library
        # proves that an unknown llama_* attribute is a C function.
        strong = self._alias_kind(node.value) == "lib"
        # Point at the attribute name itself, not at the start of `self._lib.llama_x`.
        end = getattr(node, "end_col_offset", None)
        same_line = getattr(node, "end_lineno", node.lineno) == node.lineno
        col = end - len(node.attr) if end is not None and same_line else None
        self._report(node, node.attr, "attribute", strong=strong, col=col)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if not isinstance(node.ctx, ast.Load):
            return
        if node.id in self.imported:
            self._report(node, self.imported[node.id], "name", strong=True)
        elif self.star:
            self._report(node, node.id, "name", strong=id(node) in self._called)
