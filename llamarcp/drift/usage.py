"""What Python code does with llama.cpp's API, checked against one tree: arity, struct fields, constants, C types.

`drift scan` runs this on top of the name checks of `llamarcp.drift.names` whenever its API came from a manifest.
It reports, each with path:line:col and a severity:

- arity: a call of a C function (`lib.llama_x(...)`, an imported or aliased one) whose argument count differs
  from the tree's parameter count; only calls whose arguments can be counted (no `*args` / `**kwargs`). Also
  hand-written ctypes bindings: `ctypes_function("llama_x", [argtypes], restype)`, `clib.llama_x.argtypes = [...]`.
- field: `x.field` (read, write, `setattr`/`getattr` with a literal, `ffi.offsetof`) where `x` is known to be a
  struct of the tree that lacks that field.
- constant: `lib.LLAMA_X`, `getattr(lib, "LLAMA_X")` (or a `"LLAMA_X_" + ...` prefix), `ffi.integer_const("X")`
  naming an enum constant or #define the tree does not declare.
- type: a llama.cpp type in a cffi type string (`ffi.new("struct llama_x *")`, `ffi.cast`, `ffi.typeof`, ...)
  that the tree does not declare.
- field-gone (warning): `x.field` on a receiver of unknown type, where `field` is a field of the bindings' structs
  (the `reference` API) and of no struct of the tree.

Where a struct comes from, so its fields can be checked:
- the return type of a C function: `params = lib.llama_model_default_params()`, `lib.llama_batch_init(...)`;
- a cffi type string: `ffi.new("struct llama_model_params *")`, `ffi.new("llama_token_data[]", n)` (indexing
  gives the element), `ffi.cast("llama_batch *", p)`;
- a field of a known struct (`batch.seq_id[i]`), a ctypes-style constructor (`llama_cpp.llama_batch()`);
- an annotation naming a struct (`p: "llama_context_params"`, `p: llama_cpp.llama_model_params`);
- a function or property of the scanned code that returns one (`params = context_params(...)`);
- llamarcp's conventions: `self.x = <struct>` in a method types `self.x` in its class, and the pointer a
  `Managed` subclass passes to `super().__init__(ptr, ...)` is its `self.ptr`.

Code adapted to several releases is not flagged:
- a capability check is evaluated against the tree, and the branch the tree never takes is not checked (nor
  the rest of a block after `if <true>: return ...`): a call named `has*` / `supports*` / `hasattr` with
  string arguments naming C things (`caps.has("llama_x")`, `has_field("struct llama_model_params",
  "load_mode")`, `hasattr(lib, "LLAMA_X")`, `hasattr(params, "field")`), `"LLAMA_X" in caps`, a parameter
  count compared with a number (`arity(lib, "llama_x") == 5`), and `not` / `and` / `or` of them;
- a check the scan cannot evaluate (a label that is no C name) leaves both branches checked, but trusts the
  names it tests where they are known present: in its body, in the `else` of `if not ...:`, after
  `if not ...: return/raise/continue/break`, and after it in an `and` chain;
- a `# drift: adapted` comment on the line of a use, or on any line of the simple statement holding it,
  silences every finding there;
- `NAMES = ("a", "b")  # drift: fields llama_context_params` declares a list of field names of a struct (for
  code that sets them with `setattr`): each is checked like `params.a`.
"""

from __future__ import annotations

import ast
import io
import operator
import re
import tokenize
from dataclasses import dataclass, field
from typing import Any

from llamarcp.drift.facts import CONSTANT_NAME, TYPE_PREFIXES, CType
from llamarcp.drift.names import ApiIndex, call_name
from llamarcp.drift.values import Returns, Strings, TypedVisitor, is_ffi, literal_strings, str_const

#: cffi calls whose first argument is a C type string.
FFI_TYPE_CALLS = frozenset({"new", "cast", "typeof", "sizeof", "alignof", "offsetof", "callback", "new_array"})

#: A call spelled like this, with string arguments, is a capability check (`caps.has("x")`, `hasattr(lib, "X")`).
GUARD_CALL = re.compile(r"^(hasattr|has\w*|supports\w*|declares\w*|provides\w*)$")

#: A call spelled like this binds a C function by name (`ctypes_function`, `mtmd_function`, `bind_function`).
BINDING_CALL = re.compile(r"function|bind|ctypes|cfunc|prototype", re.IGNORECASE)
ADAPTED = re.compile(r"#\s*drift:\s*adapted\b")

FIELDS_PRAGMA = re.compile(r"#\s*drift:\s*fields\s+(?:of\s+)?(?:struct\s+)?(\w+)")


@dataclass
class Pragmas:
    adapted: set[int] = field(default_factory=set)
    fields: dict[int, str] = field(default_factory=dict)  # line -> struct

    @classmethod
    def read(cls, source: str) -> Pragmas:
        found = cls()
        try:
            for tok in tokenize.generate_tokens(io.StringIO(source).readline):
                if tok.type != tokenize.COMMENT:
                    continue
                if ADAPTED.search(tok.string):
                    found.adapted.add(tok.start[0])
                match = FIELDS_PRAGMA.search(tok.string)
                if match:
                    found.fields[tok.start[0]] = match.group(1)
        except (tokenize.TokenError, SyntaxError):  # ast accepted it; a tokenizer quirk only loses pragmas
            pass
        return found


def _prefix(node: ast.AST) -> str | None:
    """The literal start of a computed name: `"LLAMA_X_" + mode`, `f"LLAMA_X_{mode}"`."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return str_const(node.left) or None
    if isinstance(node, ast.JoinedStr) and node.values:
        return str_const(node.values[0]) or None
    return None


def _c_name(text: str) -> str:
    """The name in a capability check's C spelling: "struct llama_model_params" -> "llama_model_params"."""
    words = text.replace("*", " ").split()
    while len(words) > 1 and words[0] in ("const", "struct", "union", "enum"):
        words.pop(0)
    return " ".join(words)


def _guard_strings(call: ast.Call) -> set[str]:
    names: set[str] = set()
    for arg in call.args:
        text = str_const(arg)
        if text:
            names.update({text, _c_name(text), *text.split(".")})
    return names


#: `arity(lib, "llama_x") == 5`: a call spelled like this, with a function's name, counts its parameters.
ARITY_CALL = re.compile(r"(^|_)(arity|n_params|param_count)$")

COMPARISONS: dict[type, Any] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}  # fmt: skip


def _guards(test: ast.AST) -> tuple[frozenset[str], frozenset[str]]:
    """(names known present where `test` is true, names known present where it is false)."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        yes, no = _guards(test.operand)
        return no, yes
    if isinstance(test, ast.BoolOp):
        parts = [_guards(v) for v in test.values]
        if isinstance(test.op, ast.And):
            return frozenset().union(*(p[0] for p in parts)), frozenset()
        return frozenset(), frozenset().union(*(p[1] for p in parts))
    if isinstance(test, ast.Call) and GUARD_CALL.match(call_name(test) or ""):
        return frozenset(_guard_strings(test)), frozenset()
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        text = str_const(test.left)
        if text and isinstance(test.ops[0], ast.In):
            return frozenset({text, *text.split(".")}), frozenset()
        if text and isinstance(test.ops[0], ast.NotIn):
            return frozenset(), frozenset({text, *text.split(".")})
    return frozenset(), frozenset()


def _api_like(name: str) -> bool:
    """Spelled like a llama.cpp function, type or constant (not like a struct field or a Python attribute)."""
    return name.startswith(TYPE_PREFIXES) or CONSTANT_NAME.match(name) is not None


def _exits(body: list[ast.stmt]) -> bool:
    return bool(body) and isinstance(body[-1], (ast.Return, ast.Raise, ast.Continue, ast.Break))


class UsageVisitor(TypedVisitor):
    """The usage checks (see the module docstring) on top of TypedVisitor's types."""

    def __init__(self, api: ApiIndex, path: str, source: str, returns: Returns | None = None) -> None:
        super().__init__(api, path, returns)
        self.pragmas = Pragmas.read(source)

    # -- capability checks: a branch the tree cannot take is not checked; names a check proved are trusted
    def _declared(self, name: str) -> bool | None:
        """Whether the tree declares `name` (function, constant, type, field; `struct.field`); None: not a C name
        of the tree or of the bindings (a capability label the scan cannot evaluate)."""
        if "." in name:
            struct, _, member = name.partition(".")
            if struct in self.facts.fields:
                return member in self.facts.fields[struct]
            known = struct in self.facts.types or (self.ref is not None and struct in self.ref.fields)
            return False if known else None
        for facts, verdict in ((self.facts, True), (self.ref, False)):
            if facts is None:
                continue
            if name in facts.arity or name in facts.constants or name in facts.types or name in facts.all_fields:
                return verdict
        return None

    def _truth(self, test: ast.AST) -> bool | None:
        """The value a capability check has on the tree (`caps.has("x")`, `hasattr(lib, "X")`, `not`/`and`/`or`
        of them), or None when it cannot be told."""
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            value = self._truth(test.operand)
            return None if value is None else not value
        if isinstance(test, ast.BoolOp):
            values = [self._truth(v) for v in test.values]
            decisive = isinstance(test.op, ast.Or)  # True decides an `or`, False an `and`
            if decisive in values:
                return decisive
            return None if None in values else not decisive
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in COMPARISONS:
            return self._arity_truth(test.left, test.ops[0], test.comparators[0])
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.In, ast.NotIn)):
            # `"llama_x" in caps`; `"data" in some_dict` is no capability check: API-looking names only
            text = str_const(test.left)
            value = self._declared(text) if text and _api_like(text) else None
            return None if value is None else value == isinstance(test.ops[0], ast.In)
        if not isinstance(test, ast.Call) or not GUARD_CALL.match(call_name(test) or ""):
            return None
        strings = [_c_name(text) for text in map(str_const, test.args) if text]
        if call_name(test) == "hasattr":
            if len(test.args) != 2 or len(strings) != 1:
                return None
            ctype = self._type_of(test.args[0])
            if ctype is not None and ctype.struct in self.facts.fields:
                return strings[0] in self.facts.fields[ctype.struct]  # hasattr(params, "load_mode")
            # hasattr(lib, "llama_x"); on any other object it is Python duck typing
            return self._declared(strings[0]) if self._alias_kind(test.args[0]) and _api_like(strings[0]) else None
        if len(strings) == 2 and self._struct_fields(strings[0]) is not None:
            return self._declared(".".join(strings))  # has_field("llama_model_params", "load_mode")
        # caps.has("llama_x"); config.has("n_ctx") or a field name alone is not evaluated (a struct and a field are)
        values = [self._declared(text) if _api_like(text) else None for text in strings]
        if not values or None in values:
            return None
        return all(values)

    def _arity_truth(self, left: ast.AST, op: ast.cmpop, right: ast.AST) -> bool | None:
        """`arity(lib, "llama_x") == 5` (either side) on the tree's parameter count."""
        if isinstance(left, ast.Constant):
            left, right = right, left
            op = {ast.Lt: ast.Gt(), ast.LtE: ast.GtE(), ast.Gt: ast.Lt(), ast.GtE: ast.LtE()}.get(type(op), op)
        if not isinstance(left, ast.Call) or not ARITY_CALL.search(call_name(left) or ""):
            return None
        if not isinstance(right, ast.Constant) or type(right.value) is not int:
            return None
        names = [text for text in map(str_const, left.args) if text and text in self.facts.arity]
        if len(names) != 1:
            return None
        return bool(COMPARISONS[type(op)](self.facts.arity[names[0]][0], right.value))

    def _visit_guarded(self, node: ast.AST, names: frozenset[str]) -> None:
        self.guards.append(names)
        try:
            self.visit(node)
        finally:
            self.guards.pop()

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        value = self._truth(node.test)
        yes, no = _guards(node.test)
        if value is not False:
            self._visit_block(node.body, yes)
        if value is not True:
            self._visit_block(node.orelse, no)
        if (value is True and _exits(node.body)) or (value is False and _exits(node.orelse)):
            self.rest_unreachable = True  # `if caps.has("x"): return new_way()`: the old way below is dead here
        elif no and value is None and not node.orelse and _exits(node.body):
            self.guards.append(no)  # `if not caps.has("x"): return` guards the rest of the block

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.visit(node.test)
        value = self._truth(node.test)
        yes, no = _guards(node.test)
        if value is not False:
            self._visit_guarded(node.body, yes)
        if value is not True:
            self._visit_guarded(node.orelse, no)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        depth = len(self.guards)
        is_and = isinstance(node.op, ast.And)
        for value in node.values:
            self.visit(value)
            if self._truth(value) is (not is_and):
                break  # `has("x") and ...` on a tree without x: the rest is never evaluated
            yes, no = _guards(value)
            names = yes if is_and else no
            if names:
                self.guards.append(names)
        del self.guards[depth:]

    def _silenced(self, line: int, name: str) -> bool:
        if any(name in names for names in self.guards):
            return True
        if line in self.pragmas.adapted:
            return True
        if self.statements:
            stmt = self.statements[-1]
            if not hasattr(stmt, "body") and not hasattr(stmt, "cases"):  # simple: a pragma on any of its lines
                end = getattr(stmt, "end_lineno", None) or stmt.lineno
                return any(stmt.lineno <= ln <= end for ln in self.pragmas.adapted)
        return False

    # -- checks
    def visit_Assign(self, node: ast.Assign) -> None:
        super().visit_Assign(node)
        for target in node.targets:  # clib.llama_x.argtypes = [...]
            if isinstance(target, ast.Attribute) and target.attr == "argtypes":
                fn = self._c_function(target.value)
                if fn is not None:
                    where, col = self._position(target.value)
                    self._check_argtypes(where, fn, node.value, "attribute", col)
        self._check_fields_pragma(node, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        super().visit_AnnAssign(node)
        self._check_fields_pragma(node, node.value)

    def visit_Call(self, node: ast.Call) -> None:
        self._check_arity(node)
        self._check_binding_table(node)
        self._check_reflection(node)
        self._check_ffi(node)
        super().visit_Call(node)

    def _position(self, func: ast.AST) -> tuple[ast.AST, int | None]:
        """Where a finding about a callee points: the attribute name itself, else the name."""
        if isinstance(func, ast.Attribute):
            end = getattr(func, "end_col_offset", None)
            if end is not None and getattr(func, "end_lineno", func.lineno) == func.lineno:
                return func, end - len(func.attr)
        return func, None

    def _check_arity(self, node: ast.Call) -> None:
        fn = self._c_function(node.func)
        if fn is None or fn not in self.facts.arity:
            return
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            return  # not countable
        given = len(node.args) + len(node.keywords)
        count, variadic = self.facts.arity[fn]
        if given == count or (variadic and given >= count):
            return
        takes = f"at least {count}" if variadic else str(count)
        hint = f"takes {takes} argument(s) in llama.cpp {self.facts.commit}, called with {given}"
        if self.ref is not None and fn in self.ref.arity and self.ref.arity[fn][0] != count:
            hint += f" (as the bindings' {self.ref.commit} declare it)" if self.ref.arity[fn][0] == given else ""
        where, col = self._position(node.func)
        self._add(where, fn, "arity", hint, "call", col=col)

    def _check_argtypes(self, where: ast.AST, fn: str, argtypes: ast.AST, how: str, col: int | None = None) -> None:
        """A hand-written ctypes binding's argument type list against the tree's parameters."""
        if fn not in self.facts.arity or not isinstance(argtypes, (ast.List, ast.Tuple)):
            return
        if any(isinstance(e, ast.Starred) for e in argtypes.elts):
            return
        declared, (count, variadic) = len(argtypes.elts), self.facts.arity[fn]
        if declared == count or (variadic and declared >= count):
            return
        hint = f"bound with {declared} argument type(s); takes {count} in llama.cpp {self.facts.commit}"
        self._add(where, fn, "arity", hint, how, col=col)

    def _check_binding_table(self, node: ast.Call) -> None:
        """`ctypes_function("llama_x", [argtypes], restype)` (llama-cpp-python's binding tables)."""
        if not BINDING_CALL.search(call_name(node) or ""):
            return  # log("llama_decode", [a, b]) is no binding
        for name, argtypes in zip(node.args, node.args[1:]):
            text = str_const(name)
            if text is not None:
                self._check_argtypes(name, text, argtypes, "string")

    def _check_reflection(self, node: ast.Call) -> None:
        """`setattr(params, "field", v)`, `getattr(params, name)` over known names, `getattr(lib, "LLAMA_X")`."""
        callee = node.func.id if isinstance(node.func, ast.Name) else None
        if callee not in ("getattr", "setattr") or len(node.args) < 2:
            return
        target, key = node.args[0], node.args[1]
        nodes: tuple[ast.Constant, ...] = ()
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            nodes = (key,)
        elif isinstance(key, ast.Name) and isinstance(self._lookup(key.id), Strings):
            binding = self._lookup(key.id)
            assert isinstance(binding, Strings)
            nodes = binding.nodes
        ctype = self._type_of(target)
        for constant in nodes:
            name = str(constant.value)
            if ctype is not None:
                self._check_field(constant, ctype, name, "string")
            elif self._alias_kind(target) is not None:
                self._check_constant(constant, name, self._alias_kind(target), "string")
        prefix = _prefix(key)
        if not prefix or self._alias_kind(target) != "lib" or not CONSTANT_NAME.match(prefix + "X"):
            return
        if not self.facts.declares_constant_prefix(prefix):
            hint = f"llama.cpp {self.facts.commit} declares no constant named {prefix}*"
            self._add(key, prefix + "*", "constant", hint, "string")

    def _check_ffi(self, node: ast.Call) -> None:
        func = node.func
        if not isinstance(func, ast.Attribute) or not is_ffi(func.value) or not node.args:
            return
        text = str_const(node.args[0])
        if text is None:
            return
        if func.attr == "integer_const":
            if not text.startswith("__"):
                self._check_constant(node.args[0], text, "lib", "string")
            return
        if func.attr not in FFI_TYPE_CALLS:
            return
        for name in dict.fromkeys(self.facts.unknown_types(text)):
            hint = f"C type {name} is not declared by llama.cpp {self.facts.commit}"
            self._add(node.args[0], name, "type", hint, "string")
        ctype = self.facts.struct_of(text, self.ref)
        if ctype is None:
            return
        if func.attr == "offsetof":
            names = node.args[1:]
        elif func.attr == "new" and len(node.args) > 1 and isinstance(node.args[1], ast.Dict):
            names = [key for key in node.args[1].keys if key is not None]  # ffi.new("struct x *", {"field": v})
        else:
            return
        for arg in names:
            field_name = str_const(arg)
            if field_name is not None:
                self._check_field(arg, ctype, field_name, "string")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        where, col = self._position(node)
        kind = self._alias_kind(node.value)
        ctype = self._type_of(node.value)
        if ctype is not None:
            self._check_field(where, ctype, node.attr, "attribute", col)
        elif kind is not None:
            self._check_constant(where, node.attr, kind, "attribute", col)
        elif self.ref is not None and not self._is_self_attribute(node):
            self._check_gone_field(where, node.attr, col)
        super().visit_Attribute(node)

    def visit_Name(self, node: ast.Name) -> None:
        super().visit_Name(node)
        if self.star and isinstance(node.ctx, ast.Load):  # `from llama_cpp import *` ... LLAMA_X
            self._check_constant(node, node.id, "module", "name")

    def _check_field(self, where: ast.AST, ctype: CType, name: str, how: str, col: int | None = None) -> None:
        fields = self.facts.fields.get(ctype.struct)
        if fields is None or ctype.depth > 1 or name in fields:
            return  # a struct this tree lacks (reported where it is named) or a valid field
        hint = f"struct {ctype.struct} has no field {name} in llama.cpp {self.facts.commit}"
        ref_fields = self.ref.fields.get(ctype.struct) if self.ref else None
        if ref_fields is not None and name in ref_fields:
            instead = [f for f in fields if f not in ref_fields]
            hint += f"; it has {', '.join(instead)} instead" if instead else ""
        self._add(where, name, "field", hint, how, col=col)

    def _check_constant(self, where: ast.AST, name: str, kind: str | None, how: str, col: int | None = None) -> None:
        if not CONSTANT_NAME.match(name) or name in self.facts.constants:
            return
        # A Python module (llama_cpp) also defines constants of its own: only a loaded library, or a name the
        # bindings declare, proves it is one of llama.cpp's.
        if kind != "lib" and not (self.ref is not None and name in self.ref.constants):
            return
        hint = f"enum constant or #define not declared by llama.cpp {self.facts.commit}"
        self._add(where, name, "constant", hint, how, col=col)

    def _check_gone_field(self, where: ast.AST, name: str, col: int | None) -> None:
        assert self.ref is not None
        if name in self.facts.all_fields:
            return
        # Only structs the tree has too: a field of a struct new since the tree (mtmd_gen_inp.seed) says nothing
        # about a Python attribute spelled alike.
        structs = sorted(s for s, fields in self.ref.fields.items() if name in fields and s in self.facts.fields)
        if not structs:
            return
        hint = (
            f"no struct of llama.cpp {self.facts.commit} has a field {name} "
            f"(struct {', '.join(structs)} of the bindings' {self.ref.commit} does)"
        )
        self._add(where, name, "field-gone", hint, "attribute", col=col)

    def _check_fields_pragma(self, node: ast.Assign | ast.AnnAssign, value: ast.AST | None) -> None:
        end = getattr(node, "end_lineno", None) or node.lineno
        structs = [s for line, s in self.pragmas.fields.items() if node.lineno <= line <= end]
        strings = literal_strings(value)
        if not structs or strings is None:
            return
        struct = structs[0]
        if struct not in self.facts.fields:
            hint = f"C type {struct} is not declared by llama.cpp {self.facts.commit}"
            self._add(node, struct, "type", hint, "string")
            return
        for constant in strings:
            self._check_field(constant, CType(struct), str(constant.value), "string")
