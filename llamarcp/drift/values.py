"""What a value of the scanned code is, as far as the usage checks need to know: the llama.cpp struct it holds
(through pointers and arrays), the C function it names, or a literal list of names.

`TypedVisitor` tracks these through assignments, scopes, loops, classes (`self.x`), annotations and the functions
of the scanned code that return a struct (`project_returns`, the first of `scan_paths`' two passes); it also walks
blocks so that `llamarcp.drift.usage` can skip the branches a tree never takes.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from llamarcp.drift.facts import CType, TreeFacts
from llamarcp.drift.names import LIB_MODULES, ApiIndex, NameVisitor, call_name, dotted_name

#: cffi calls whose result is a struct (pointer) of their type string.
FFI_STRUCT_CALLS = frozenset({"new", "cast"})


@dataclass(frozen=True)
class FunctionRef:
    """A name bound to a C function (`decode = lib.llama_decode`)."""

    name: str


@dataclass(frozen=True)
class Strings:
    """A name bound to a literal tuple/list of strings (`for name in ("n_ctx", ...)`, a module constant)."""

    nodes: tuple[ast.Constant, ...]


Binding = CType | FunctionRef | Strings


@dataclass
class Returns:
    """Which struct each function (or property) of the scanned code returns, by bare name (unique names only)."""

    functions: dict[str, CType] = field(default_factory=dict)
    properties: dict[str, CType] = field(default_factory=dict)


def literal_strings(node: ast.AST | None) -> tuple[ast.Constant, ...] | None:
    """The string constants of a literal tuple/list/set of strings (or the keys of a dict literal), else None."""
    elts: list[ast.AST | None]
    if isinstance(node, ast.Dict):
        elts = list(node.keys)
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        elts = list(node.elts)
    else:
        return None
    constants = tuple(e for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return constants if elts and len(constants) == len(elts) else None


def str_const(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def is_super_init(func: ast.AST) -> bool:
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "__init__"
        and isinstance(func.value, ast.Call)
        and isinstance(func.value.func, ast.Name)
        and func.value.func.id == "super"
    )


def is_ffi(node: ast.AST) -> bool:
    dotted = dotted_name(node)
    return dotted is not None and dotted.rsplit(".", 1)[-1].lower().endswith("ffi")


class TypedVisitor(NameVisitor):
    """NameVisitor plus the type of each expression (`_type_of`) and the C function it names (`_c_function`)."""

    def __init__(self, api: ApiIndex, path: str, returns: Returns | None = None) -> None:
        super().__init__(api, path)
        if api.facts is None:
            raise ValueError("the usage checks need an ApiIndex made from a manifest (ApiIndex.from_manifest)")
        self.facts: TreeFacts = api.facts
        self.ref = api.reference
        self.returns = returns or Returns()
        #: this module's functions: name -> struct types of their `return` values (None: not a struct)
        self.returned: dict[str, list[CType | None]] = {}
        self.properties: set[str] = set()
        self.defined: Counter[str] = Counter()
        #: name -> what it holds; None: something the scan does not know (it shadows outer scopes)
        self.scopes: list[dict[str, Binding | None]] = [{}]
        self.classes: list[dict[str, CType]] = []
        self.functions: list[str] = []
        #: local name -> C function imported from a module re-exporting them (`from llama_cpp import llama_x`)
        self.imported_functions: dict[str, str] = {}
        #: flow state the checks drive: the innermost statement, names trusted in this block (capability
        #: checks), and whether the rest of the block is unreachable on the tree
        self.statements: list[ast.stmt] = []
        self.guards: list[frozenset[str]] = []
        self.rest_unreachable = False

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.stmt):
            self.statements.append(node)
            try:
                super().visit(node)
            finally:
                self.statements.pop()
        else:
            super().visit(node)

    def generic_visit(self, node: ast.AST) -> None:
        for _name, value in ast.iter_fields(node):
            if isinstance(value, list):
                depth = len(self.guards)  # guards an early exit adds last to the end of their block
                for item in value:
                    if isinstance(item, ast.AST):
                        self.visit(item)
                    if self.rest_unreachable:
                        self.rest_unreachable = False
                        break
                del self.guards[depth:]
            elif isinstance(value, ast.AST):
                self.visit(value)

    def _visit_all(self, nodes: Iterable[ast.AST | None]) -> None:
        for node in nodes:
            if node is not None:
                self.visit(node)

    def _visit_block(self, body: list[ast.stmt], guards: frozenset[str] = frozenset()) -> None:
        depth = len(self.guards)
        if guards:
            self.guards.append(guards)
        for stmt in body:
            self.visit(stmt)
            if self.rest_unreachable:
                self.rest_unreachable = False
                break
        del self.guards[depth:]

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.defined[node.name] += 1
        decorators = {dotted_name(d) for d in node.decorator_list}
        if decorators & {"property", "functools.cached_property", "cached_property"}:
            self.properties.add(node.name)
        args = node.args
        self._visit_all(node.decorator_list)
        self._visit_all([*args.defaults, *args.kw_defaults, node.returns])
        scope: dict[str, Binding | None] = {}
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is None:
                continue
            scope[arg.arg] = None
            if arg.annotation is not None:
                self.visit(arg.annotation)
                scope[arg.arg] = self._annotation_type(arg.annotation)
        self.scopes.append(scope)
        self.functions.append(node.name)
        self.returned.setdefault(node.name, [])
        try:
            self._visit_block(node.body)
        finally:
            self.functions.pop()
            self.scopes.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._visit_function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._visit_function(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._visit_all([*node.args.defaults, *node.args.kw_defaults])
        args = node.args
        self.scopes.append(
            {a.arg: None for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a}
        )
        try:
            self.visit(node.body)
        finally:
            self.scopes.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.classes.append({})
        try:
            self.generic_visit(node)
        finally:
            self.classes.pop()

    def visit_Return(self, node: ast.Return) -> None:
        self.generic_visit(node)
        if self.functions:
            self.returned[self.functions[-1]].append(self._type_of(node.value) if node.value else None)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        super().visit_ImportFrom(node)
        if (node.module or "") in LIB_MODULES:
            for alias in node.names:
                if alias.name != "*" and self._is_function(alias.name):
                    self.imported_functions[alias.asname or alias.name] = alias.name

    def _lookup(self, name: str) -> Binding | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    def _binding_of(self, value: ast.AST) -> Binding | None:
        strings = literal_strings(value)
        if strings is not None:
            return Strings(strings)
        fn = self._c_function(value)
        if fn is not None:
            return FunctionRef(fn)
        return self._type_of(value)

    def _bind(self, target: ast.AST, value: ast.AST | None) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts):
                for t, v in zip(target.elts, value.elts, strict=True):
                    self._bind(t, v)
            else:
                for t in target.elts:
                    self._bind(t, None)
            return
        binding = self._binding_of(value) if value is not None else None
        if isinstance(target, ast.Name):
            self.scopes[-1][target.id] = binding
        elif self._is_self_attribute(target) and self.classes:
            assert isinstance(target, ast.Attribute)
            if isinstance(binding, CType):
                self.classes[-1][target.attr] = binding
            else:
                self.classes[-1].pop(target.attr, None)

    def _is_self_attribute(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"

    def visit_Assign(self, node: ast.Assign) -> None:
        super().visit_Assign(node)
        for target in node.targets:
            self._bind(target, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        super().visit_AnnAssign(node)
        ctype = self._annotation_type(node.annotation)
        if ctype is not None and isinstance(node.target, ast.Name):
            self.scopes[-1][node.target.id] = ctype
        elif node.value is not None:
            self._bind(node.target, node.value)

    def visit_Call(self, node: ast.Call) -> None:
        if is_super_init(node.func) and node.args and self.classes:
            ctype = self._type_of(node.args[0])  # llamarcp's Managed: the pointer becomes self.ptr
            if ctype is not None:
                self.classes[-1]["ptr"] = ctype
        super().visit_Call(node)

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        self._bind_loop(node.target, node.iter)
        self.visit(node.target)
        self._visit_block(node.body)
        self._visit_block(node.orelse)

    def _bind_loop(self, target: ast.AST, iterable: ast.AST) -> None:
        """`for x in <strings or struct array>`, through `zip(...)` and `enumerate(...)`."""
        if isinstance(target, (ast.Tuple, ast.List)) and isinstance(iterable, ast.Call) and not iterable.keywords:
            name = iterable.func.id if isinstance(iterable.func, ast.Name) else None
            args = iterable.args
            if name == "zip" and len(args) == len(target.elts):
                for t, a in zip(target.elts, args, strict=True):
                    self._bind_loop(t, a)
                return
            if name == "enumerate" and len(args) == 1 and len(target.elts) == 2:
                self._bind(target.elts[0], None)
                self._bind_loop(target.elts[1], args[0])
                return
        if not isinstance(target, ast.Name):
            self._bind(target, None)
            return
        binding: Binding | None = None
        strings = literal_strings(iterable)
        if strings is not None:
            binding = Strings(strings)
        elif isinstance(iterable, ast.Name) and isinstance(self._lookup(iterable.id), Strings):
            binding = self._lookup(iterable.id)
        else:
            ctype = self._type_of(iterable)
            binding = ctype.element() if ctype else None
        self.scopes[-1][target.id] = binding

    def _annotation_type(self, node: ast.AST) -> CType | None:
        text = str_const(node)
        if text is None:
            dotted = dotted_name(node)
            text = dotted.rsplit(".", 1)[-1] if dotted else None
        return self.facts.struct_of(text, self.ref) if text else None

    def _c_function(self, node: ast.AST) -> str | None:
        """The C function `node` names: `lib.llama_x`, an imported `llama_x`, a name bound to one."""
        if isinstance(node, ast.Attribute):
            if self._alias_kind(node.value) in ("lib", "module") and self._is_function(node.attr):
                return node.attr
            return None
        if isinstance(node, ast.Name):
            if node.id in self.imported_functions:
                return self.imported_functions[node.id]
            binding = self._lookup(node.id)
            if isinstance(binding, FunctionRef):
                return binding.name
            if self.star and node.id in self.facts.arity:
                return node.id
        if isinstance(node, ast.Call) and call_name(node) == "getattr" and len(node.args) == 2:
            name = str_const(node.args[1])  # getattr(lib, "llama_x")
            if name and self._alias_kind(node.args[0]) in ("lib", "module") and self._is_function(name):
                return name
        return None

    def _is_function(self, name: str) -> bool:
        return name in self.facts.arity or (self.ref is not None and name in self.ref.arity)

    def _struct_fields(self, struct: str) -> dict[str, str] | None:
        fields = self.facts.fields.get(struct)
        if fields is None and self.ref is not None:
            fields = self.ref.fields.get(struct)
        return fields

    def _type_of(self, node: ast.AST | None) -> CType | None:
        if isinstance(node, ast.Name):
            binding = self._lookup(node.id)
            return binding if isinstance(binding, CType) else None
        if isinstance(node, ast.Attribute):
            if self._is_self_attribute(node) and self.classes and node.attr in self.classes[-1]:
                return self.classes[-1][node.attr]
            base = self._type_of(node.value)
            if base is not None and base.depth <= 1:
                ftype = (self._struct_fields(base.struct) or {}).get(node.attr)
                return self.facts.struct_of(ftype, self.ref) if ftype else None
            if base is None and node.attr in self.returns.properties:
                return self.returns.properties[node.attr]
            return None
        if isinstance(node, ast.Subscript):
            base = self._type_of(node.value)
            return base.element() if base else None
        if isinstance(node, ast.Call):
            return self._call_type(node)
        return None

    def _call_type(self, node: ast.Call) -> CType | None:
        fn = self._c_function(node.func)
        if fn is not None:
            ret = self.facts.returns.get(fn) or (self.ref.returns.get(fn) if self.ref else None)
            return self.facts.struct_of(ret, self.ref) if ret else None
        func = node.func
        if isinstance(func, ast.Attribute):
            if func.attr in FFI_STRUCT_CALLS and is_ffi(func.value) and node.args:
                text = str_const(node.args[0])
                return self.facts.struct_of(text, self.ref) if text else None
            if self._alias_kind(func.value) in ("lib", "module"):  # ctypes-style constructor: llama_cpp.llama_batch()
                ctype = self.facts.struct_of(func.attr, self.ref)
                return CType(ctype.struct, 0) if ctype and ctype.depth == 0 else None
        name = call_name(node)
        return self.returns.functions.get(name) if name else None


def project_returns(modules: Iterable[tuple[str, str, ast.Module]], api: ApiIndex) -> Returns:
    """First pass over the scanned code: the struct each uniquely named function or property returns."""
    defined: Counter[str] = Counter()
    returned: dict[str, list[CType | None]] = {}
    properties: set[str] = set()
    for path, _source, tree in modules:
        visitor = TypedVisitor(api, path)
        try:
            visitor.visit(tree)
        except RecursionError:
            continue  # the second pass reports it
        defined.update(visitor.defined)
        for name, types in visitor.returned.items():
            returned.setdefault(name, []).extend(types)
        properties |= visitor.properties
    out = Returns()
    for name, types in returned.items():
        if defined[name] != 1 or not types or types[0] is None or any(t != types[0] for t in types):
            continue
        first = types[0]
        (out.properties if name in properties else out.functions)[name] = first
    return out
