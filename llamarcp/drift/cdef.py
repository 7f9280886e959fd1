"""An API manifest (the parts of the api.json schema the scan reads) from cffi declarations.

This is how `drift scan --api release:b8672` checks code against any release of llamarcp's window from an
installed package: the wheel carries every release's declarations (`_generated/_releases.py`), not their headers,
and no libclang. The declarations are parsed with pycparser (cffi's own parser). They carry no deprecation notes
and no enum values beyond literals, which the usage checks do not need.
"""

from __future__ import annotations

import re
from typing import Any

from llamarcp.errors import DriftError

#: Types cffi knows without a declaration; pycparser needs them declared.
PRELUDE = """
typedef _Bool bool;
typedef unsigned long size_t; typedef long ssize_t; typedef long ptrdiff_t;
typedef long intptr_t; typedef unsigned long uintptr_t;
typedef signed char int8_t; typedef unsigned char uint8_t; typedef short int16_t; typedef unsigned short uint16_t;
typedef int int32_t; typedef unsigned int uint32_t; typedef long long int64_t; typedef unsigned long long uint64_t;
typedef struct _IO_FILE FILE;
"""
PRELUDE_TYPES = frozenset(re.findall(r"(\w+);", PRELUDE))
COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
DEFINE = re.compile(r"^\s*#\s*define\s+(\w+)\s+(.*?)\s*$", re.MULTILINE)


def _type(node: Any) -> str:
    """A C type string in the form the manifest uses (`struct llama_batch *`, `llama_token *`, `char[128]`)."""
    from pycparser import c_ast

    if isinstance(node, c_ast.TypeDecl):
        return _type(node.type)
    if isinstance(node, c_ast.IdentifierType):
        return " ".join(node.names)
    if isinstance(node, (c_ast.Struct, c_ast.Union)):
        kind = "struct" if isinstance(node, c_ast.Struct) else "union"
        return f"{kind} {node.name or '<anonymous>'}"
    if isinstance(node, c_ast.Enum):
        return f"enum {node.name or '<anonymous>'}"
    if isinstance(node, c_ast.PtrDecl):
        if isinstance(node.type, c_ast.FuncDecl):
            return f"{_type(node.type.type)} (*)(...)"
        return f"{_type(node.type)} *"
    if isinstance(node, c_ast.ArrayDecl):
        return f"{_type(node.type)}[]"
    if isinstance(node, c_ast.FuncDecl):
        return f"{_type(node.type)} (...)"
    return "<unknown>"


def _fields(record: Any) -> list[dict[str, Any]]:
    """A struct's fields, the members of anonymous unions/structs in it flattened (as cffi and the manifest do)."""
    from pycparser import c_ast

    out: list[dict[str, Any]] = []
    for decl in record.decls or ():
        inner = decl.type
        if decl.name is None and isinstance(inner, (c_ast.Struct, c_ast.Union)):
            out.extend(_fields(inner))
        elif decl.name is not None:
            out.append({"name": decl.name, "type": _type(inner)})
    return out


def _params(func: Any) -> tuple[list[dict[str, Any]], bool]:
    from pycparser import c_ast

    params: list[dict[str, Any]] = []
    variadic = False
    for param in func.args.params if func.args else ():
        if isinstance(param, c_ast.EllipsisParam):
            variadic = True
            continue
        kind = _type(param.type)
        if kind == "void" and param.name is None:
            continue  # `f(void)`
        params.append({"name": param.name or f"arg{len(params)}", "type": kind})
    return params, variadic


def manifest_from_cdef(cdef: str, commit: str) -> dict[str, Any]:
    """The manifest of a cdef (functions, structs, enums, typedefs, defines); DriftError when it does not parse."""
    try:
        from pycparser import CParser, c_ast
        from pycparser.c_parser import ParseError
    except ImportError as exc:  # cffi needs pycparser on CPython; PyPy's built-in cffi may come without it
        raise DriftError(f"reading the declarations of {commit} needs pycparser (pip install pycparser)") from exc
    cdef = COMMENT.sub(" ", cdef)  # cffi accepts comments, pycparser does not
    defines = [{"name": m.group(1), "value": _literal(m.group(2))} for m in DEFINE.finditer(cdef)]
    body = DEFINE.sub("", cdef)
    try:
        unit = CParser().parse(PRELUDE + body, f"<declarations of {commit}>")
    except ParseError as exc:
        raise DriftError(f"cannot parse the declarations of {commit}: {exc}") from exc

    functions: list[dict[str, Any]] = []
    structs: dict[str, dict[str, Any]] = {}
    enums: list[dict[str, Any]] = []
    typedefs: list[dict[str, Any]] = []

    def record(node: Any) -> None:
        """A struct/union/enum declared or defined anywhere in a top-level declaration."""
        if isinstance(node, c_ast.TypeDecl):
            record(node.type)
        elif isinstance(node, (c_ast.Struct, c_ast.Union)) and node.name:
            defined = node.decls is not None
            if defined or node.name not in structs:
                kind = "struct" if isinstance(node, c_ast.Struct) else "union"
                fields = _fields(node) if defined else []
                structs[node.name] = {"name": node.name, "kind": kind, "opaque": not defined, "fields": fields}
        elif isinstance(node, c_ast.Enum) and node.name and node.values is not None:
            constants = [{"name": e.name, "value": _literal(e.value)} for e in node.values.enumerators]
            enums.append({"name": node.name, "constants": constants})

    for node in unit.ext:
        if isinstance(node, c_ast.Typedef):
            if node.name in PRELUDE_TYPES:
                continue
            record(node.type)
            typedefs.append({"name": node.name, "type": _type(node.type)})
        elif isinstance(node, c_ast.Decl) and isinstance(node.type, c_ast.FuncDecl):
            params, variadic = _params(node.type)
            functions.append(
                {"name": node.name, "return_type": _type(node.type.type), "params": params, "variadic": variadic}
            )
        elif isinstance(node, c_ast.Decl):
            record(node.type)
    return {
        "llama_cpp_commit": commit,
        "functions": [dict(f, deprecated=None) for f in functions],
        "structs": list(structs.values()),
        "enums": enums,
        "callbacks": [],
        "typedefs": typedefs,
        "defines": defines,
    }


def _literal(node_or_text: Any) -> int | str | None:
    """An enum value or #define as an int where it is a plain literal, else its text (None: not given)."""
    text = getattr(node_or_text, "value", node_or_text)
    if text is None or not isinstance(text, str):
        return None
    try:
        return int(text.rstrip("uUlL"), 0)
    except ValueError:
        return text


def release_manifest(name: str, pinned: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a release of llamarcp's window ("b8672", "release:b8672"): `pinned` (the pin's api.json)
    for the pin, else built from the declarations the package carries."""
    from llamarcp import _release

    name = name.removeprefix("release:")
    if name == pinned.get("llama_cpp_commit") or name == _release.pin().name:
        return pinned
    if name not in _release.release_names():
        known = ", ".join(_release.release_names())
        raise DriftError(f"release:{name} is not a release of llamarcp's window (known: {known})")
    cdef = _release.release(name).cdef
    if cdef is None:
        return pinned
    return manifest_from_cdef(cdef, name)


def loaded_manifest(pinned: dict[str, Any]) -> dict[str, Any]:
    """The manifest of the release llamarcp picks for the library it would load (LLAMARCP_LIB_PATH, bundled,
    system; `pinned` when that is the pin): `drift scan --api loaded` checks code against the llama.cpp here."""
    from llamarcp import _release

    chosen = _release.selection()
    if chosen.library is None:
        from llamarcp import _lib
        from llamarcp.errors import LlamaError

        try:
            _lib.find_library()
        except LlamaError as exc:  # why none was found, in the loader's words
            raise DriftError(f"--api loaded: {exc}") from exc
        raise DriftError("--api loaded: no libllama found (build one with build_lib.py, or set LLAMARCP_LIB_PATH)")
    if chosen.error is not None:
        raise DriftError(f"--api loaded: llamarcp refuses {chosen.library}: {chosen.error}")
    bindings = chosen.bindings
    if bindings.cdef is None:
        return pinned
    return manifest_from_cdef(bindings.cdef, bindings.name)
