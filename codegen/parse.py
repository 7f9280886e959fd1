"""Parse llama.h (and the ggml headers its API needs) with libclang into the plain `codegen.model` dataclasses.

Only libclang is needed here (PyPI `libclang`); no jinja, no cffi. The drift checker imports
`parse_source()` / `parse_header()` to compare two llama.cpp trees.

What is taken from which header is decided by `GROUPS` (one row per function group): every declaration
of a `primary` header, the functions a group selects from the others, and every type those need.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from codegen.model import (
    Api,
    Callback,
    Define,
    Enum,
    EnumConstant,
    Field,
    Function,
    Param,
    Struct,
    Typedef,
)


class ParseError(Exception):
    """The headers could not be parsed; the message says why and what to do."""


@dataclass(frozen=True)
class Group:
    """One row of the function table: which functions of which header, exported by which library."""

    name: str
    #: Header path relative to the llama.cpp source root.
    header: str
    #: Shared library exporting the functions ("llama", "ggml", "ggml-rpc").
    library: str
    #: Function-name prefixes to take; empty = every function declared in the header.
    prefixes: tuple[str, ...] = ()
    #: Primary headers contribute every type and every #define they declare, used or not.
    primary: bool = False
    #: Optional groups may be absent from a given build; the runtime hint says how to get them.
    optional: bool = False
    hint: str = ""
    #: Extra include directories (relative to the source root) the header needs, e.g. its own directory.
    include: tuple[str, ...] = ()


_MTMD_HINT = (
    "no libmtmd (llama.cpp's multimodal library) was found beside the loaded libllama; "
    "build it with `python build_lib.py --mtmd`"
)

#: The table to extend when more of ggml is wanted (one row per header/function set).
GROUPS: tuple[Group, ...] = (
    Group("llama", "include/llama.h", "llama", primary=True),
    Group(
        "ggml-backend",
        "ggml/include/ggml-backend.h",
        "ggml",
        prefixes=(
            "ggml_backend_dev_",
            "ggml_backend_reg_",
            "ggml_backend_device_register",
            "ggml_backend_register",
            "ggml_backend_load",
            "ggml_backend_unload",
            "ggml_backend_init_",
            "ggml_backend_free",
            "ggml_backend_name",
            "ggml_backend_get_device",
            "ggml_backend_buft_name",
            "ggml_backend_buft_is_host",
        ),
        optional=True,
        hint="the loaded build does not export this libggml function; rebuild with `python build_lib.py`",
    ),
    Group(
        "ggml-rpc",
        "ggml/include/ggml-rpc.h",
        "ggml-rpc",
        prefixes=("ggml_backend_rpc_", "ggml_backend_is_rpc"),
        optional=True,
        hint="the loaded llama.cpp was built without RPC; rebuild with `python build_lib.py --rpc`",
    ),
    # libmtmd (multimodal: images, audio) is a separate library beside libllama, dlopen'd on first use.
    Group(
        "mtmd",
        "tools/mtmd/mtmd.h",
        "mtmd",
        prefixes=("mtmd_",),
        optional=True,
        hint=_MTMD_HINT,
        include=("tools/mtmd",),
    ),
    Group(
        "mtmd-helper",
        "tools/mtmd/mtmd-helper.h",
        "mtmd",
        prefixes=("mtmd_helper_",),
        optional=True,
        hint=_MTMD_HINT,
        include=("tools/mtmd",),
    ),
)

#: Headers whose integer/string #defines are emitted besides the primary ones (they size llama.h's types).
DEFINE_HEADERS = ("ggml.h", "ggml-rpc.h")

#: Include directories of a llama.cpp source tree, relative to its root.
SOURCE_INCLUDE_DIRS = ("include", "ggml/include")

_PROBE = "__llamarcp_probe_"
#: stdbool.h's `bool` is a macro for `_Bool`; print it the way the header spells it.
_BOOL = re.compile(r"\b_Bool\b")
_MAIN = "__llamarcp_main.c"


# ------------------------------------------------------------------------------------------------ libclang


def compiler_include_dir() -> str:
    """Directory with stddef.h/stdbool.h: the libclang wheel ships none, so borrow the C compiler's."""
    explicit = os.environ.get("LLAMARCP_CLANG_RESOURCE_INCLUDE")
    candidates = [explicit] if explicit else []
    for cc in ("gcc", "cc", "clang"):
        if shutil.which(cc):
            try:
                out = subprocess.run(
                    [cc, "-print-file-name=include"], capture_output=True, text=True, timeout=10, check=False
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                continue
            candidates.append(out)
    for cand in candidates:
        if cand and (Path(cand) / "stddef.h").is_file() and (Path(cand) / "stdbool.h").is_file():
            return cand
    raise ParseError(
        "no compiler include directory with stddef.h/stdbool.h found (the libclang wheel carries none); "
        "install gcc (or clang) or set LLAMARCP_CLANG_RESOURCE_INCLUDE to such a directory"
    )


@lru_cache(maxsize=1)
def _cindex():  # type: ignore[no-untyped-def]
    try:
        from clang import cindex
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ParseError("libclang is required for codegen: pip install 'llamarcp[codegen]' (libclang)") from exc
    lib = cindex.conf.lib
    lib.clang_getCursorPlatformAvailability.argtypes = [
        cindex.Cursor,
        ctypes.POINTER(ctypes.c_int),
        ctypes.POINTER(cindex._CXString),
        ctypes.POINTER(ctypes.c_int),
        ctypes.POINTER(cindex._CXString),
        ctypes.c_void_p,
        ctypes.c_int,
    ]
    lib.clang_getCursorPlatformAvailability.restype = ctypes.c_int
    lib.clang_Cursor_isMacroFunctionLike.argtypes = [cindex.Cursor]
    lib.clang_Cursor_isMacroFunctionLike.restype = ctypes.c_uint
    return cindex


def _deprecation(cursor) -> str | None:  # type: ignore[no-untyped-def]
    ci = _cindex()
    always_dep = ctypes.c_int(0)
    always_unavail = ctypes.c_int(0)
    dep_msg = ci._CXString()
    unavail_msg = ci._CXString()
    ci.conf.lib.clang_getCursorPlatformAvailability(
        cursor, ctypes.byref(always_dep), ctypes.byref(dep_msg), ctypes.byref(always_unavail),
        ctypes.byref(unavail_msg), None, 0,
    )  # fmt: skip
    if not always_dep.value:
        return None
    raw = ci.conf.lib.clang_getCString(dep_msg)
    text = raw.decode() if isinstance(raw, bytes) else (raw or "")
    return text or "deprecated"


def _clean_comment(raw: str | None) -> str | None:
    if not raw:
        return None
    lines = []
    for line in raw.splitlines():
        line = line.strip()
        line = re.sub(r"^(///?<?|/\*\*?<?|\*/|\*(?!/))", "", line)
        line = re.sub(r"\*/$", "", line).rstrip()
        lines.append(line[1:] if line.startswith(" ") else line)
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    text = "\n".join(lines)
    return text or None


# ------------------------------------------------------------------------------------------------ types


def declarator(ctype, inner: str = "") -> str:  # type: ignore[no-untyped-def]
    """C declaration text of `inner` having type `ctype` (handles pointers to functions and arrays)."""
    ck = _cindex().TypeKind
    kind = ctype.kind
    if kind == ck.ELABORATED:
        named = ctype.get_named_type()
        decl = named.get_declaration()
        if decl.spelling == "" or decl.is_anonymous():
            return f"{ctype.spelling} {inner}".strip()
    if kind == ck.POINTER:
        pointee = ctype.get_pointee()
        const = " const" if ctype.is_const_qualified() else ""
        if pointee.kind in (ck.FUNCTIONPROTO, ck.FUNCTIONNOPROTO, ck.CONSTANTARRAY, ck.INCOMPLETEARRAY):
            text = f"(*{const}{' ' if const and inner else ''}{inner})"  # (*name), (*const name)
        elif not inner:
            text = "*" + const
        elif inner.startswith("*") and not const:
            text = "*" + inner
        else:
            text = f"*{const} {inner}"  # the header's own style: `const char * text`
        return declarator(pointee, text)
    if kind == ck.CONSTANTARRAY:
        return declarator(ctype.element_type, f"{inner}[{ctype.element_count}]")
    if kind == ck.INCOMPLETEARRAY:
        return declarator(ctype.element_type, f"{inner}[]")
    if kind == ck.FUNCTIONPROTO:
        args = [declarator(a) for a in ctype.argument_types()]
        if ctype.is_function_variadic():
            args.append("...")
        return declarator(ctype.get_result(), f"{inner}({', '.join(args) or 'void'})")
    if kind == ck.FUNCTIONNOPROTO:
        return declarator(ctype.get_result(), f"{inner}()")
    base = _BOOL.sub("bool", ctype.spelling)
    if not inner:
        return base
    return f"{base}{inner}" if inner.startswith("[") else f"{base} {inner}"  # libclang prints `char[16]`


def type_text(ctype) -> str:  # type: ignore[no-untyped-def]
    """Type spelling as libclang prints it, e.g. 'const char *', 'struct llama_model *', 'int32_t'."""
    return declarator(ctype)


# ------------------------------------------------------------------------------------------------ parsing


@dataclass
class _Collector:
    groups: tuple[Group, ...]
    header_paths: dict[str, Group]  # absolute header path -> group
    primary_files: set[str]
    define_files: set[str]
    api: Api
    seen_types: set[str]
    records: dict[str, object]
    enums_by_name: dict[str, object]
    typedefs_by_name: dict[str, object]


def _location_file(cursor) -> str | None:  # type: ignore[no-untyped-def]
    loc = cursor.location
    return os.path.realpath(loc.file.name) if loc.file is not None else None


def _build_args(include_dirs: Iterable[Path]) -> list[str]:
    args = ["-x", "c", "-std=c11", "-fparse-all-comments", "-D__STDC_NO_THREADS__"]
    args += [f"-I{d}" for d in include_dirs]
    args += ["-isystem", compiler_include_dir()]
    return args


def _translation_unit(main_text: str, include_dirs: Iterable[Path], detailed: bool):  # type: ignore[no-untyped-def]
    ci = _cindex()
    index = ci.Index.create()
    options = ci.TranslationUnit.PARSE_SKIP_FUNCTION_BODIES
    if detailed:
        options |= ci.TranslationUnit.PARSE_DETAILED_PROCESSING_RECORD
    name = _MAIN
    try:
        tu = index.parse(name, args=_build_args(include_dirs), unsaved_files=[(name, main_text)], options=options)
    except ci.TranslationUnitLoadError as exc:
        raise ParseError(f"libclang could not parse the headers: {exc}") from exc
    errors = [d for d in tu.diagnostics if d.severity >= ci.Diagnostic.Error]
    return tu, errors


def parse_source(
    source_dir: Path | str,
    commit: str,
    groups: tuple[Group, ...] = GROUPS,
    header: Path | str | None = None,
) -> Api:
    """Parse a llama.cpp source tree (or, with `header`, that llama.h with the tree's ggml headers)."""
    root = Path(source_dir)
    include_dirs = [root / d for d in SOURCE_INCLUDE_DIRS if (root / d).is_dir()]
    headers: list[tuple[Group, Path]] = []
    for group in groups:
        path = Path(header) if (header is not None and group.primary) else root / group.header
        if not path.is_file():
            if group.optional:
                continue
            raise ParseError(f"header {path} not found (is {root} a llama.cpp source tree?)")
        headers.append((group, path))
        extra = [root / d for d in group.include if (root / d).is_dir()]
        include_dirs += [d for d in extra if d not in include_dirs]
    if header is not None:
        include_dirs.insert(0, Path(header).resolve().parent)
    return parse_headers(headers, include_dirs, commit)


def parse_header(path: Path | str, commit: str, library: str = "llama", include_dirs: Iterable[Path] = ()) -> Api:
    """Parse one self-contained header, taking everything it declares (golden tests, other APIs)."""
    header = Path(path)
    group = Group(header.stem, header.name, library, primary=True)
    return parse_headers([(group, header)], [header.resolve().parent, *include_dirs], commit)


def parse_headers(headers: list[tuple[Group, Path]], include_dirs: list[Path], commit: str) -> Api:
    ci = _cindex()
    main_text = "".join(f'#include "{path.resolve()}"\n' for _, path in headers)
    tu, errors = _translation_unit(main_text, include_dirs, detailed=True)
    if errors:
        details = "\n  ".join(str(d) for d in errors[:10])
        raise ParseError(f"libclang reported {len(errors)} error(s) parsing the headers:\n  {details}")

    header_paths = {os.path.realpath(path): group for group, path in headers}
    primary = {os.path.realpath(path) for group, path in headers if group.primary}
    define_files = set(primary)
    for cursor in tu.cursor.get_children():
        file = _location_file(cursor)
        if file and os.path.basename(file) in DEFINE_HEADERS:
            define_files.add(file)

    api = Api(llama_cpp_commit=commit)
    col = _Collector(tuple(g for g, _ in headers), header_paths, primary, define_files, api, set(), {}, {}, {})
    used_files: set[str] = set()

    top = list(tu.cursor.get_children())
    for cursor in top:
        if cursor.kind == ci.CursorKind.TYPEDEF_DECL:
            col.typedefs_by_name.setdefault(cursor.spelling, cursor)
        elif cursor.kind in (ci.CursorKind.STRUCT_DECL, ci.CursorKind.UNION_DECL):
            key = _record_key(cursor)
            prev = col.records.get(key)
            if prev is None or (cursor.is_definition() and not prev.is_definition()):  # type: ignore[attr-defined]
                col.records[key] = cursor
        elif cursor.kind == ci.CursorKind.ENUM_DECL and cursor.spelling:
            col.enums_by_name.setdefault(cursor.spelling, cursor)

    functions: dict[str, Function] = {}
    for cursor in top:
        file = _location_file(cursor)
        if file is None:
            continue
        group = header_paths.get(file)
        if cursor.kind == ci.CursorKind.FUNCTION_DECL:
            if group is None or cursor.spelling in functions:
                continue
            if group.prefixes and not cursor.spelling.startswith(group.prefixes):
                continue
            functions[cursor.spelling] = _function(col, cursor, group)
            used_files.add(file)
        elif file in primary:
            if cursor.kind == ci.CursorKind.TYPEDEF_DECL:
                _need_typedef(col, cursor)
            elif cursor.kind in (ci.CursorKind.STRUCT_DECL, ci.CursorKind.UNION_DECL):
                if _typedef_named(cursor):
                    continue  # taken with its typedef
                if _is_unnamed_record(cursor):
                    api.diagnostics.append(f"WARN: untagged {_record_key(cursor).split()[0]} without a typedef "
                                           f"in {_header_name(cursor)} skipped")  # fmt: skip
                    continue
                _need_record(col, col.records.get(_record_key(cursor), cursor))
            elif cursor.kind == ci.CursorKind.ENUM_DECL:
                if _typedef_named(cursor):
                    continue  # taken with its typedef
                _need_enum(col, cursor)
            elif cursor.kind == ci.CursorKind.VAR_DECL:
                api.diagnostics.append(f"WARN: global variable {cursor.spelling} skipped (not supported)")
    api.functions = list(functions.values())

    for kind in (api.structs, api.enums, api.typedefs, api.callbacks):
        for item in kind:
            used_files.add(item.header)  # type: ignore[attr-defined]
    api.defines = _defines(col, tu, include_dirs, main_text)
    header_names = {os.path.basename(f) for f in used_files} | {path.name for _, path in headers}
    api.headers = sorted(header_names)
    api.sort()
    return api


def _header_name(cursor) -> str:  # type: ignore[no-untyped-def]
    file = _location_file(cursor)
    return os.path.basename(file) if file else ""


def _record_key(cursor) -> str:  # type: ignore[no-untyped-def]
    ci = _cindex()
    kind = "union" if cursor.kind == ci.CursorKind.UNION_DECL else "struct"
    return f"{kind} {cursor.spelling}"


def _params(col: _Collector, cursor) -> tuple[Param, ...]:  # type: ignore[no-untyped-def]
    out = []
    for arg in cursor.get_arguments():
        _need_type(col, arg.type)
        out.append(Param(arg.spelling, type_text(arg.type), declarator(arg.type, arg.spelling)))
    return tuple(out)


def _function(col: _Collector, cursor, group: Group) -> Function:  # type: ignore[no-untyped-def]
    ftype = cursor.type
    params = _params(col, cursor)
    _need_type(col, ftype.get_result())
    variadic = ftype.kind == _cindex().TypeKind.FUNCTIONPROTO and ftype.is_function_variadic()
    args = [p.decl for p in params]
    if variadic:
        args.append("...")
    decl = declarator(ftype.get_result(), f"{cursor.spelling}({', '.join(args) or 'void'})")
    return Function(
        name=cursor.spelling,
        return_type=type_text(ftype.get_result()),
        params=params,
        variadic=variadic,
        deprecated=_deprecation(cursor),
        doc=_clean_comment(cursor.raw_comment),
        header=_header_name(cursor),
        library=group.library,
        group=group.name,
        decl=decl,
    )


def _need_type(col: _Collector, ctype) -> None:  # type: ignore[no-untyped-def]
    ck = _cindex().TypeKind
    kind = ctype.kind
    if kind == ck.POINTER:
        _need_type(col, ctype.get_pointee())
    elif kind in (ck.CONSTANTARRAY, ck.INCOMPLETEARRAY):
        _need_type(col, ctype.element_type)
    elif kind == ck.FUNCTIONPROTO:
        _need_type(col, ctype.get_result())
        for arg in ctype.argument_types():
            _need_type(col, arg)
    elif kind == ck.ELABORATED:
        _need_type(col, ctype.get_named_type())
    elif kind == ck.TYPEDEF:
        decl = ctype.get_declaration()
        _need_typedef(col, col.typedefs_by_name.get(decl.spelling, decl))
    elif kind == ck.RECORD:
        decl = ctype.get_declaration()
        if decl.spelling and not decl.is_anonymous() and not _typedef_named(decl):
            _need_record(col, col.records.get(_record_key(decl), decl))
    elif kind == ck.ENUM and not _typedef_named(ctype.get_declaration()):  # untagged: taken with its typedef
        _need_enum(col, ctype.get_declaration())


_BUILTIN_TYPEDEFS = {
    "size_t", "ssize_t", "ptrdiff_t", "intptr_t", "uintptr_t", "wchar_t", "FILE", "va_list", "bool",
    "int8_t", "int16_t", "int32_t", "int64_t", "uint8_t", "uint16_t", "uint32_t", "uint64_t",
}  # fmt: skip


def _need_typedef(col: _Collector, cursor) -> None:  # type: ignore[no-untyped-def]
    name = cursor.spelling
    key = f"typedef {name}"
    if key in col.seen_types or name in _BUILTIN_TYPEDEFS or name.startswith("__"):
        return
    col.seen_types.add(key)
    ck = _cindex().TypeKind
    underlying = cursor.underlying_typedef_type
    _need_type(col, underlying)
    target = underlying.get_named_type() if underlying.kind == ck.ELABORATED else underlying
    if target.kind == ck.RECORD and _typedef_named(target.get_declaration()):
        # `typedef struct { ... } name;`: the struct is known by the typedef name only.
        record = _record(col, target.get_declaration(), named=False)
        col.api.structs.append(replace(record, name=name, typedef=True, doc=_clean_comment(cursor.raw_comment)))
        col.api.typedefs.append(Typedef(name, f"{record.kind} {{...}}", _header_name(cursor)))
        return
    if target.kind == ck.ENUM and _typedef_named(target.get_declaration()):
        _need_enum(col, target.get_declaration(), typedef_name=name)
        col.api.typedefs.append(Typedef(name, "enum {...}", _header_name(cursor)))
        return
    pointee = underlying.get_pointee() if underlying.kind == ck.POINTER else None
    if pointee is not None and pointee.kind == ck.FUNCTIONPROTO:
        params = []
        arg_cursors = [c for c in cursor.get_children() if c.kind == _cindex().CursorKind.PARM_DECL]
        for i, arg_type in enumerate(pointee.argument_types()):
            arg_name = arg_cursors[i].spelling if i < len(arg_cursors) else ""
            params.append(Param(arg_name, type_text(arg_type), declarator(arg_type, arg_name)))
        variadic = pointee.is_function_variadic()
        args = [p.decl for p in params] + (["..."] if variadic else [])
        decl = declarator(pointee.get_result(), f"(*{name})({', '.join(args) or 'void'})")
        col.api.callbacks.append(
            Callback(
                name=name,
                return_type=type_text(pointee.get_result()),
                params=tuple(params),
                header=_header_name(cursor),
                variadic=variadic,
                decl=decl,
                doc=_clean_comment(cursor.raw_comment),
            )
        )
        return
    col.api.typedefs.append(
        Typedef(
            name=name,
            type=type_text(underlying),
            header=_header_name(cursor),
            decl=declarator(underlying, name),
            doc=_clean_comment(cursor.raw_comment),
        )
    )


def _need_record(col: _Collector, cursor) -> None:  # type: ignore[no-untyped-def]
    key = _record_key(cursor)
    if key in col.seen_types:
        return
    col.seen_types.add(key)
    col.api.structs.append(_record(col, cursor, named=True))


def _is_unnamed_record(decl) -> bool:  # type: ignore[no-untyped-def]
    return bool(decl.is_anonymous() or not decl.spelling or "(" in decl.spelling)


def _typedef_named(decl) -> bool:  # type: ignore[no-untyped-def]
    """`typedef struct { ... } name;`: libclang spells the untagged record by the typedef's name."""
    return bool(
        decl.spelling and "(" not in decl.spelling and not decl.type.spelling.startswith(("struct ", "union ", "enum "))
    )


def _record(col: _Collector, cursor, named: bool, outer=None) -> Struct:  # type: ignore[no-untyped-def]
    """A struct/union; members of unnamed inner records get offsets from `outer` (the named record's type)."""
    ci = _cindex()
    kind = "union" if cursor.kind == ci.CursorKind.UNION_DECL else "struct"
    definition = cursor.get_definition()
    if definition is None:
        return Struct(cursor.spelling if named else "", kind, opaque=True, header=_header_name(cursor))
    layout = outer if outer is not None else cursor.type
    fields: list[Field] = []
    children = list(definition.get_children())
    # An unnamed record no field is declared with is an anonymous member (`union { ... };`); libclang 18's
    # is_anonymous() cannot tell it from `struct { ... } name;`, so look for the field instead.
    typed_fields = {_field_record(c).hash for c in children if c.kind == ci.CursorKind.FIELD_DECL and _field_record(c)}
    for child in children:
        if child.kind in (ci.CursorKind.STRUCT_DECL, ci.CursorKind.UNION_DECL) and _is_unnamed_record(child):
            if child.hash not in typed_fields:
                inner = _record(col, child, named=False, outer=layout)
                fields.append(Field("", inner.kind, _first_offset(inner), None, "", anonymous=inner))
            continue
        if child.kind != ci.CursorKind.FIELD_DECL:
            continue
        ftype = child.type
        bitwidth = child.get_bitfield_width() if child.is_bitfield() else None
        if outer is None:
            bits = child.get_field_offsetof()
            offset_bytes = bits // 8 if bits >= 0 else None
        else:
            bits = layout.get_offset(child.spelling)
            offset_bytes = bits // 8 if bits >= 0 else None
        target = ftype.get_named_type() if ftype.kind == ci.TypeKind.ELABORATED else ftype
        inner_decl = target.get_declaration() if target.kind == ci.TypeKind.RECORD else None
        if inner_decl is not None and _is_unnamed_record(inner_decl):
            # `struct { ... } name;`: inner offsets stay relative to the member, as offsetof sees them.
            inner = _record(col, inner_decl, named=False)
            fields.append(Field(child.spelling, f"{inner.kind} {{...}}", offset_bytes, bitwidth, "", anonymous=inner))
            continue
        _need_type(col, ftype)
        decl = declarator(ftype, child.spelling)
        if bitwidth is not None:
            decl += f" : {bitwidth}"
            offset_bytes = None  # bit-fields have no byte offset (offsetof is invalid for them)
        fields.append(Field(child.spelling, type_text(ftype), offset_bytes, bitwidth, decl))
    size = cursor.type.get_size()
    align = cursor.type.get_align()
    return Struct(
        name=cursor.spelling if named else "",
        kind=kind,
        opaque=False,
        size=size if size >= 0 else None,
        align=align if align >= 0 else None,
        fields=tuple(fields),
        header=_header_name(cursor),
        doc=_clean_comment(cursor.raw_comment),
    )


def _field_record(field):  # type: ignore[no-untyped-def]
    """The record declaration a field's type names, or None."""
    ck = _cindex().TypeKind
    ftype = field.type
    target = ftype.get_named_type() if ftype.kind == ck.ELABORATED else ftype
    return target.get_declaration() if target.kind == ck.RECORD else None


def _first_offset(inner: Struct) -> int | None:
    flat = inner.flat_fields()
    return flat[0].offset if flat else None


def _need_enum(col: _Collector, cursor, typedef_name: str = "") -> None:  # type: ignore[no-untyped-def]
    name = cursor.spelling
    if cursor.is_anonymous() or "(unnamed" in name or "(anonymous" in name:
        name = typedef_name
    key = f"enum {name or cursor.hash}"
    if key in col.seen_types:
        return
    col.seen_types.add(key)
    definition = cursor.get_definition() or cursor
    constants = tuple(
        EnumConstant(c.spelling, int(c.enum_value))
        for c in definition.get_children()
        if c.kind == _cindex().CursorKind.ENUM_CONSTANT_DECL
    )
    if not name:
        col.api.diagnostics.append(
            f"INFO: untagged enum in {_header_name(cursor)} emitted as constants only "
            f"({', '.join(c.name for c in constants)})"
        )
    col.api.enums.append(
        Enum(
            name=name,
            constants=constants,
            header=_header_name(cursor),
            underlying=definition.enum_type.spelling,
            doc=_clean_comment(cursor.raw_comment),
            typedef=bool(typedef_name),
        )
    )


# ------------------------------------------------------------------------------------------------ defines

_INT_SUFFIX = re.compile(r"^(0[xX][0-9a-fA-F]+|\d+)[uUlL]*$")
_FLOAT = re.compile(r"^(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?[fFlL]?$")


def _macro_tokens(cursor) -> list:  # type: ignore[no-untyped-def]
    return list(cursor.get_tokens())[1:]


def _defines(col: _Collector, tu, include_dirs: list[Path], main_text: str) -> list[Define]:  # type: ignore[no-untyped-def]
    ci = _cindex()
    macros: dict[str, tuple[str, str, list]] = {}  # name -> (header, expr, tokens)
    skipped: list[str] = []
    function_like: list[str] = []
    sources: dict[str, bytes] = {}
    empty: list[str] = []
    for cursor in tu.cursor.get_children():
        if cursor.kind != ci.CursorKind.MACRO_DEFINITION:
            continue
        file = _location_file(cursor)
        if file is None or file not in col.define_files:
            continue
        name = cursor.spelling
        if ci.conf.lib.clang_Cursor_isMacroFunctionLike(cursor):
            function_like.append(name)  # code, not a constant
            continue
        tokens = _macro_tokens(cursor)
        if not tokens:
            empty.append(name)  # include guards and flags such as `#define LLAMA_H`
            continue
        expr = _source_text(sources, file, tokens[0].extent.start.offset, tokens[-1].extent.end.offset)
        macros[name] = (os.path.basename(file), expr, tokens)

    known_types = {"int", "unsigned", "long", "short", "char", "signed", *_BUILTIN_TYPEDEFS}
    int_candidates: list[str] = []
    out: list[Define] = []
    for name, (header, expr, tokens) in sorted(macros.items()):
        kinds = {t.kind for t in tokens}
        if kinds == {ci.TokenKind.LITERAL} and all(t.spelling.startswith('"') for t in tokens):
            value = "".join(_c_string(t.spelling) for t in tokens)
            out.append(Define(name, value, expr, header))
            continue
        literal_texts = [t.spelling for t in tokens if t.kind == ci.TokenKind.LITERAL]
        idents = [t.spelling for t in tokens if t.kind in (ci.TokenKind.IDENTIFIER, ci.TokenKind.KEYWORD)]
        if any(i not in macros and i not in known_types for i in idents) or any(
            lit.startswith('"') for lit in literal_texts
        ):
            skipped.append(f"{name} ({header}): {expr if len(expr) <= 60 else expr[:57] + '...'}")
            continue
        if any(not _INT_SUFFIX.match(lit) and _FLOAT.match(lit) for lit in literal_texts):
            if len(tokens) == 1 or (len(tokens) == 2 and tokens[0].spelling == "-"):
                text = "".join(t.spelling for t in tokens).rstrip("fFlL")
                out.append(Define(name, float(text), expr, header))
            else:
                col.api.diagnostics.append(f"WARN: define {name} = {expr}: float expression not evaluated, skipped")
            continue
        int_candidates.append(name)

    values = _probe_int_macros(int_candidates, include_dirs, main_text) if int_candidates else {}
    for name in int_candidates:
        header, expr, _ = macros[name]
        if name in values:
            out.append(Define(name, values[name], expr, header))
        else:
            col.api.diagnostics.append(f"WARN: define {name} = {expr} is not an integer constant expression, skipped")
    col.api.diagnostics.extend(f"INFO: macro {item} is not a constant, not emitted" for item in skipped)
    for what, names in (("function-like", function_like), ("empty", empty)):
        if names:
            col.api.diagnostics.append(f"INFO: {len(names)} {what} macros not emitted: {', '.join(sorted(set(names)))}")
    return out


def _source_text(files: dict[str, bytes], path: str, start: int, end: int) -> str:
    """The macro body exactly as written (comments and line continuations collapsed)."""
    if path not in files:
        files[path] = Path(path).read_bytes()  # per parse: the same path may hold another header next time
    text = files[path][start:end].decode("utf-8", "replace")
    return " ".join(text.replace("\\\n", " ").split())


def _c_string(literal: str) -> str:
    body = literal[1:-1]
    return body.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _probe_int_macros(names: list[str], include_dirs: list[Path], main_text: str) -> dict[str, int]:
    """Let the compiler evaluate each macro as an enumerator value (one enum each, so errors stay local)."""
    ci = _cindex()
    probe = main_text + "".join(f"enum {_PROBE}{n} {{ {_PROBE}{n} = ({n}) }};\n" for n in names)
    tu, _errors = _translation_unit(probe, include_dirs, detailed=False)
    bad_lines = {
        d.location.line
        for d in tu.diagnostics
        if d.severity >= ci.Diagnostic.Error and d.location.file is not None and d.location.file.name == _MAIN
    }
    values: dict[str, int] = {}
    for cursor in tu.cursor.get_children():
        if cursor.kind != ci.CursorKind.ENUM_DECL or not cursor.spelling.startswith(_PROBE):
            continue
        if cursor.location.file is None or cursor.location.file.name != _MAIN or cursor.location.line in bad_lines:
            continue
        for const in cursor.get_children():
            if const.kind == ci.CursorKind.ENUM_CONSTANT_DECL:
                values[const.spelling[len(_PROBE) :]] = int(const.enum_value)
    return values


def iter_functions(api: Api, group: str | None = None) -> Iterator[Function]:
    """Functions of one group (or all), in name order."""
    return (f for f in api.functions if group is None or f.group == group)
