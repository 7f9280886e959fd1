"""llama-cpp-python's ctypes face, built from the generated tables (`llamarcp/_generated/_ctypes_face.py`).

`llama_cpp.llama_cpp` and `llama_cpp.mtmd_cpp` resolve their names here, one at a time on first access: a
function becomes a ctypes function of the loaded libllama (or libmtmd) with llama-cpp-python's argtypes and
restype, a struct a `ctypes.Structure` whose layout is checked against the compiler's, a callback typedef a
`CFUNCTYPE`. llamarcp's own code never comes here: it calls the cffi `lib`.

What ctypes would take silently is checked: an argument ctypes refuses is a TypeError naming the parameter (a
cffi pointer, such as `Llama.ctx`, is converted first), and an array shorter than the count the function reads
or writes (`llama_token_to_piece(vocab, t, buf, 64, ...)` with a 32-byte `buf`) is refused before the call.
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, NewType

__all__ = ["BufferTooSmallError", "CtypesFace", "StructLayoutError", "cdll"]

#: llama-cpp-python's names for function types llama.h spells otherwise.
CALLBACK_ALIASES = {"llama_log_callback": "ggml_log_callback"}

_lock = threading.RLock()
_types: dict[str, Any] = {}  # spelling -> ctypes type (structs and callbacks included)
_cdlls: dict[str, ctypes.CDLL | None] = {}
_ARGUMENT = re.compile(r"argument (\d+)")


class BufferTooSmallError(TypeError):
    """An array argument holds fewer elements than the count the C function reads or writes there."""


class StructLayoutError(TypeError):
    """A ctypes Structure built from the tables does not match the compiler's layout (size or offsets)."""


def lazy_module_getattr(
    namespace: dict[str, Any], resolve: Callable[[str], Any], public_names: Callable[[], list[str]]
) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) for the ctypes modules: each name is resolved once and kept in
    `namespace` (the module's globals); `__all__` is computed on a star import only, so a plain import builds
    nothing."""

    def __getattr__(name: str) -> Any:
        if name == "__all__":
            value: Any = public_names()
        elif name.startswith("__"):
            raise AttributeError(name)
        else:
            value = resolve(name)
        namespace[name] = value
        return value

    return __getattr__


def table() -> ModuleType:
    """The generated tables of the llama.cpp release the loaded library was built from."""
    from llamarcp._release import generated_module

    return generated_module("_ctypes_face")


# ------------------------------------------------------------------------------------------------ libraries


def cdll(library: str = "llama") -> ctypes.CDLL | None:
    """`ctypes.CDLL` of the library llamarcp loaded (`llama`; libggml's functions resolve through it) or of a
    companion beside it (`mtmd`); None when the companion is not there."""
    if library in _cdlls:
        return _cdlls[library]
    with _lock:
        if library not in _cdlls:
            from llamarcp import _backend, _lib
            from llamarcp._libproxy import companion_path
            from llamarcp.drift.abi import COMPANION_LIBRARIES

            _backend.get_lib()  # loaded, checked against the bindings and initialised by llamarcp first
            main = _lib.loaded_path()
            assert main is not None
            path: Any = main
            if library in COMPANION_LIBRARIES:
                path = companion_path(library, main)
            _cdlls[library] = ctypes.CDLL(str(path)) if path is not None else None
    return _cdlls[library]


# ------------------------------------------------------------------------------------------------ types


def ctype(spelling: str) -> Any:
    """The ctypes type of a spelling of the tables (see `_generated/_ctypes_face.py`); None for void."""
    known = _types.get(spelling)
    if known is not None:
        return known
    with _lock:
        if spelling not in _types:
            _types[spelling] = _build_type(spelling)
    return _types[spelling]


def _build_type(spelling: str) -> Any:
    if spelling == "None":
        return None
    if spelling.startswith("*"):
        return ctypes.POINTER(ctype(spelling[1:]))
    if spelling.startswith("["):
        count, _, item = spelling[1:].partition("]")
        return ctype(item) * int(count)
    if spelling.startswith("S:"):
        return _build_struct(spelling[2:])
    if spelling.startswith("F:"):
        result, params = table().CALLBACKS[spelling[2:]]
        return ctypes.CFUNCTYPE(ctype(result), *(ctype(p) for p in params))
    value = getattr(ctypes, spelling, None)
    if value is None or not isinstance(value, type):
        raise KeyError(f"the ctypes tables name an unknown type {spelling!r}")
    return value


def _build_struct(name: str) -> Any:
    kind, size, fields = table().STRUCTS[name]
    base = ctypes.Union if kind == "union" else ctypes.Structure
    cls: Any = type(name, (base,), {"__module__": "llama_cpp.llama_cpp", "__doc__": f"C {kind} {name}."})
    _types["S:" + name] = cls  # registered before its fields: pointers back to it (llama_sampler_i) resolve
    anonymous = [f[0] for f in fields if len(f) == 4 and f[3] is True]
    if anonymous:
        cls._anonymous_ = anonymous
    members = []
    for f in fields:
        bits = f[3] if len(f) == 4 and f[3] is not True else None
        members.append((f[0], ctype(f[1])) if bits is None else (f[0], ctype(f[1]), bits))
    cls._fields_ = members
    _check_layout(cls, name, size, fields)
    return cls


def _check_layout(cls: Any, name: str, size: int | None, fields: tuple[tuple[Any, ...], ...]) -> None:
    if size is not None and ctypes.sizeof(cls) != size:
        raise StructLayoutError(f"ctypes struct {name} is {ctypes.sizeof(cls)} bytes, the compiler's is {size}")
    for f in fields:
        offset = f[2]
        if offset is not None and getattr(cls, f[0]).offset != offset:
            raise StructLayoutError(
                f"ctypes struct {name}.{f[0]} is at byte {getattr(cls, f[0]).offset}, the compiler's at {offset}"
            )


def element_size(argtype: Any) -> int:
    """Bytes per element a pointer parameter of this type addresses (1 for `char *` and `void *`)."""
    pointee = getattr(argtype, "_type_", None)
    if argtype in (ctypes.c_char_p, ctypes.c_void_p) or not isinstance(pointee, type):
        return 1
    return ctypes.sizeof(pointee)


# ------------------------------------------------------------------------------------------------ functions


def _capacity(value: Any) -> int | None:
    """Bytes an argument provides, where that is known (ctypes arrays, bytes); None otherwise."""
    if isinstance(value, ctypes.Array):
        return ctypes.sizeof(value)
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    return None


class _Bound:
    __slots__ = ("buffer", "count", "element", "names", "written")

    def __init__(self, buffer: int, count: int, element: int, names: tuple[str, str], written: bool) -> None:
        self.buffer, self.count, self.element, self.names, self.written = buffer, count, element, names, written


def _check_bounds(function: str, bounds: tuple[_Bound, ...], args: tuple[Any, ...]) -> None:
    for bound in bounds:
        if len(args) <= max(bound.buffer, bound.count):
            return  # ctypes reports the missing arguments
        value = args[bound.buffer]
        if bound.written and isinstance(value, (bytes, str)):
            raise TypeError(
                f"{function}(): {bound.names[0]!r} is written to and bytes are immutable: "
                "pass a ctypes array (ctypes.create_string_buffer(n))"
            )
        capacity = _capacity(value)
        if capacity is None:
            continue
        count = args[bound.count]
        count = getattr(count, "value", count)
        if not isinstance(count, int) or count < 0:
            continue
        if capacity < count * bound.element:
            buffer_name, count_name = bound.names
            raise BufferTooSmallError(
                f"{function}(): {buffer_name!r} holds {capacity // bound.element} element(s) "
                f"({capacity} bytes) but {count_name}={count}: the call would run past its end"
            )


def _from_cffi(value: Any, argtype: Any) -> Any:
    """A cffi pointer or struct (e.g. `Llama.ctx`, `Llama.model`) as the ctypes value `argtype` takes."""
    from llamarcp._ffi import ffi

    if not isinstance(value, ffi.CData):
        return value
    kind = ffi.typeof(value).kind
    if kind in ("pointer", "array", "function"):
        address = int(ffi.cast("uintptr_t", value))
        if argtype is ctypes.c_void_p:
            return address or None
        return ctypes.cast(ctypes.c_void_p(address), argtype)
    if kind == "struct" and isinstance(argtype, type) and issubclass(argtype, (ctypes.Structure, ctypes.Union)):
        data = bytes(ffi.buffer(value))
        if len(data) == ctypes.sizeof(argtype):
            return argtype.from_buffer_copy(data)
    return value


def _text(value: Any) -> str | None:
    value = getattr(value, "value", value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else None


def _check_model_file(args: tuple[Any, ...]) -> None:
    from llamarcp.validate import check_gguf_hparams

    path = _text(args[0]) if args else None
    if path is not None and len(args) > 1:  # what llama.cpp would abort on is refused here (ModelLoadError)
        check_gguf_hparams(path, vocab_only=bool(getattr(args[1], "vocab_only", False)))


def _check_context(args: tuple[Any, ...]) -> None:
    from llamarcp.validate import check_context_params

    if len(args) > 1 and isinstance(args[1], ctypes.Structure):
        check_context_params(args[1])


def _check_grammar(args: tuple[Any, ...]) -> None:
    from llamarcp.validate import check_grammar

    text, root = (_text(a) for a in args[1:3]) if len(args) > 2 else (None, None)
    if text is not None and root is not None:
        check_grammar(text, root)


_BYREF = type(ctypes.byref(ctypes.c_int()))


def _address(value: Any) -> int | None:
    """The address a pointer argument carries (an int, a ctypes pointer, c_void_p, `byref(...)`, a ctypes array or
    struct, a cffi pointer); None: NULL."""
    if isinstance(value, _BYREF):
        return ctypes.addressof(value._obj)  # type: ignore[attr-defined]  # CArgObject keeps what it points to
    if isinstance(value, (ctypes.Array, ctypes.Structure, ctypes.Union)):
        return ctypes.addressof(value)
    if isinstance(value, ctypes._Pointer):
        return ctypes.cast(value, ctypes.c_void_p).value
    address = getattr(value, "value", value)
    if not isinstance(address, int):
        address = _from_cffi(value, ctypes.c_void_p)
    return address if isinstance(address, int) and address else None


def _check_mmproj_file(args: tuple[Any, ...]) -> None:
    """`mtmd_init_from_file(path, model, params)`: the projector is parsed first, as llamarcp's own loader does
    (libmtmd crashes on a broken one); its output width must match the text model's."""
    from llamarcp import _backend
    from llamarcp._ffi import ffi
    from llamarcp.validate.mmproj import check_mmproj

    path = _text(args[0]) if args else None
    if path is None or len(args) < 2:
        return  # ctypes reports what is missing or of the wrong type
    model = _address(args[1])
    if model is None:
        raise ValueError("mtmd_init_from_file(): 'text_model' is NULL")
    check_mmproj(path, int(_backend.get_lib().llama_model_n_embd_inp(ffi.cast("struct llama_model *", model))))


def _mtmd_eval_guard(function: str, n_batch_at: int) -> Callable[[tuple[Any, ...]], None]:
    """`mtmd_helper_eval_chunks` and its kin: contexts and chunks not NULL, and n_batch within the llama
    context's (libmtmd aborts the process on a larger one)."""

    def check(args: tuple[Any, ...]) -> None:
        from llamarcp import _backend
        from llamarcp._ffi import ffi

        if len(args) <= n_batch_at:
            return  # ctypes reports the missing arguments
        _check_not_null(function, args, ("ctx", "lctx", "chunk"))
        n_batch = getattr(args[n_batch_at], "value", args[n_batch_at])
        if not isinstance(n_batch, int):
            return
        lib = _backend.get_lib()
        lctx = ffi.cast("struct llama_context *", _address(args[1]))
        limit = int(lib.llama_n_batch(lctx))
        if not 1 <= n_batch <= limit:
            raise ValueError(
                f"{function}(): n_batch={n_batch} is outside 1..{limit} (the llama context's n_batch): "
                "libmtmd would abort the process"
            )
        _check_non_causal_images(function, lib, args, lctx)

    return check


def _check_non_causal_images(function: str, lib: Any, args: tuple[Any, ...], lctx: Any) -> None:
    """An image decoded with non-causal attention (gemma3) must fit one ubatch, or llama.cpp aborts."""
    from llamarcp import _adapt
    from llamarcp._ffi import ffi

    mctx = ffi.cast("mtmd_context *", _address(args[0]))
    given = ffi.cast("void *", _address(args[2]))
    if function == "mtmd_helper_eval_chunks":
        chunks = ffi.cast("mtmd_input_chunks *", given)
        items = [lib.mtmd_input_chunks_get(chunks, i) for i in range(lib.mtmd_input_chunks_size(chunks))]
    else:
        items = [ffi.cast("mtmd_input_chunk *", given)]
    n_ubatch = int(lib.llama_n_ubatch(lctx))
    for chunk in items:
        if lib.mtmd_input_chunk_get_type(chunk) == lib.MTMD_INPUT_CHUNK_TYPE_TEXT:
            continue
        n_tokens = int(lib.mtmd_input_chunk_get_n_tokens(chunk))
        if n_tokens > n_ubatch and _adapt.mtmd_non_causal(lib, mctx, chunk):
            raise ValueError(
                f"{function}(): an image of {n_tokens} tokens is decoded with non-causal attention and needs "
                f"n_ubatch >= {n_tokens} (the llama context has {n_ubatch}): llama.cpp would abort the process"
            )


def _check_not_null(function: str, args: tuple[Any, ...], names: tuple[str, ...]) -> None:
    for index, name in enumerate(names):
        if name and index < len(args) and _address(args[index]) is None:
            raise ValueError(f"{function}(): {name!r} is NULL")


def _check_tokenize(args: tuple[Any, ...]) -> None:
    """`mtmd_tokenize(ctx, output, text, bitmaps, n_bitmaps)`: libmtmd dereferences each of them."""
    _check_not_null("mtmd_tokenize", args, ("ctx", "output", "text"))
    if len(args) > 4 and isinstance(args[3], ctypes.Array):
        count = getattr(args[4], "value", args[4])
        for i in range(min(count, len(args[3])) if isinstance(count, int) else 0):
            if _address(args[3][i]) is None:
                raise ValueError(f"mtmd_tokenize(): bitmaps[{i}] is NULL")


def _check_bitmap_init(args: tuple[Any, ...]) -> None:
    """`mtmd_bitmap_init(nx, ny, data)` copies nx * ny * 3 bytes (RGB) from `data`."""
    if len(args) < 3:
        return
    nx, ny = (getattr(a, "value", a) for a in args[:2])
    if not isinstance(nx, int) or not isinstance(ny, int):
        return
    from llamarcp.validate.media import MAX_IMAGE_PIXELS

    if nx < 1 or ny < 1 or nx * ny > MAX_IMAGE_PIXELS:
        raise ValueError(f"mtmd_bitmap_init(): a {nx}x{ny} bitmap is empty or above MAX_IMAGE_PIXELS")
    capacity = _capacity(args[2])
    if capacity is None and _address(args[2]) is None:
        raise ValueError("mtmd_bitmap_init(): 'data' is NULL")
    if capacity is not None and capacity < nx * ny * 3:
        raise BufferTooSmallError(
            f"mtmd_bitmap_init(): 'data' holds {capacity} bytes but a {nx}x{ny} RGB bitmap reads {nx * ny * 3}"
        )


def _check_token(function: str, names: tuple[str, str], vocab: Any, token: Any) -> None:
    """A token id llama.cpp would index its vocab with: in range, or a ValueError naming it (never an abort)."""
    address = _address(vocab)
    if not address:
        raise ValueError(f"{function}(): {names[0]!r} is NULL")
    token = getattr(token, "value", token)
    if not isinstance(token, int):
        return  # ctypes refuses it, naming the parameter
    if token == -1 and function.endswith("_is_eog"):
        return  # llama.cpp checks LLAMA_TOKEN_NULL there itself
    n_tokens = _n_tokens()(address)
    if not 0 <= token < n_tokens:
        raise ValueError(f"{function}(): {names[1]}={token} is not a token of this vocab (0..{n_tokens - 1})")


_vocab_size: list[Any] = []  # the raw ctypes llama_vocab_n_tokens, once built


def _n_tokens() -> Any:
    if not _vocab_size:
        lib = cdll("llama")
        assert lib is not None
        raw = lib["llama_vocab_n_tokens"]
        raw.restype, raw.argtypes = ctypes.c_int32, [ctypes.c_void_p]
        _vocab_size.append(raw)
    return _vocab_size[0]


#: Inputs llama.cpp asserts or crashes on, checked in Python before these calls (the same checks llamarcp's own
#: Model, Context and grammar sampler make).
GUARDS = {
    "llama_model_load_from_file": _check_model_file,
    "llama_load_model_from_file": _check_model_file,
    "llama_init_from_model": _check_context,
    "llama_new_context_with_model": _check_context,
    "llama_sampler_init_grammar": _check_grammar,
    "mtmd_init_from_file": _check_mmproj_file,
    "mtmd_tokenize": _check_tokenize,
    "mtmd_bitmap_init": _check_bitmap_init,
    "mtmd_helper_eval_chunks": _mtmd_eval_guard("mtmd_helper_eval_chunks", 5),
    "mtmd_helper_eval_chunk_single": _mtmd_eval_guard("mtmd_helper_eval_chunk_single", 5),
    "mtmd_helper_decode_image_chunk": _mtmd_eval_guard("mtmd_helper_decode_image_chunk", 6),
}


def make_function(
    name: str,
    raw: Any,
    params: tuple[tuple[str, str], ...],
    bounds: tuple[_Bound, ...],
    token_check: tuple[int, int] | None = None,
) -> Any:
    """`raw` (a ctypes function with argtypes/restype set) with llama-cpp-python's calling convention kept and
    ctypes' ArgumentError turned into a TypeError naming the parameter."""
    argtypes = raw.argtypes or ()

    def retry(args: tuple[Any, ...], error: ctypes.ArgumentError) -> Any:
        converted = tuple(_from_cffi(a, t) for a, t in zip(args, argtypes)) + args[len(argtypes) :]
        if any(c is not a for c, a in zip(converted, args)):
            try:
                return raw(*converted)
            except ctypes.ArgumentError as again:
                error = again
        match = _ARGUMENT.search(str(error))
        index = int(match.group(1)) - 1 if match else -1
        if not 0 <= index < len(params):
            raise TypeError(f"{name}(): {error}") from None
        pname, spelling = params[index]
        got = args[index]
        raise TypeError(
            f"{name}(): parameter {index + 1} {pname!r} takes {_describe(argtypes[index], spelling)}, "
            f"got {type(got).__name__} ({str(error).split(': ', 1)[-1]})"
        ) from None

    guard = GUARDS.get(name)
    if bounds or guard is not None or token_check is not None:
        vocab_at, token_at = token_check or (0, 0)
        token_names = (params[vocab_at][0], params[token_at][0]) if token_check else ("", "")

        def call(*args: Any) -> Any:
            _check_bounds(name, bounds, args)
            if guard is not None:
                guard(args)
            if token_check is not None and len(args) > max(vocab_at, token_at):
                _check_token(name, token_names, args[vocab_at], args[token_at])
            try:
                return raw(*args)
            except ctypes.ArgumentError as error:
                return retry(args, error)

    else:

        def call(*args: Any) -> Any:
            try:
                return raw(*args)
            except ctypes.ArgumentError as error:
                return retry(args, error)

    signature = ", ".join(f"{p}: {_describe(t, s)}" for (p, s), t in zip(params, argtypes))
    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{name}({signature}) -> {_describe(raw.restype, '')} (llama.h, through ctypes)"
    call.argtypes = argtypes  # type: ignore[attr-defined]  # what llama-cpp-python code may inspect
    call.restype = raw.restype  # type: ignore[attr-defined]
    call.ctypes_function = raw  # type: ignore[attr-defined]
    return call


def _describe(argtype: Any, spelling: str) -> str:
    if argtype is None:
        return "None"
    name = getattr(argtype, "__name__", repr(argtype))
    return f"{name} ({spelling})" if spelling.startswith("F:") else name


# ------------------------------------------------------------------------------------------------ faces


class CtypesFace:
    """The names of one ctypes module of llama-cpp-python, resolved from the tables on demand.

    `libraries`: which shared libraries' functions this face serves (`llama_cpp.llama_cpp`: libllama and the
    libggml it links; `llama_cpp.mtmd_cpp`: libmtmd). Types (structs, callbacks, typedefs, handles) are shared.
    """

    def __init__(self, libraries: tuple[str, ...], prefixes: tuple[str, ...] = ()) -> None:
        self.libraries = libraries
        self.prefixes = prefixes

    def serves(self, name: str) -> bool:
        return not self.prefixes or name.startswith(self.prefixes)

    def names(self) -> list[str]:
        t = table()
        out = [n for n, (library, _, _) in t.FUNCTIONS.items() if library in self.libraries]
        types = [*t.STRUCTS, *t.CALLBACKS, *t.TYPEDEFS]
        types += [f"{h}_p" for h in t.HANDLES] + [f"{h}_p_ctypes" for h in t.HANDLES]
        types += [f"{s}_p" for s in t.STRUCTS] + [f"{s}_p" for s in t.TYPEDEFS] + [f"{s}_ctypes" for s in t.TYPEDEFS]
        if not self.prefixes:
            types += list(CALLBACK_ALIASES)
        return sorted(set(out) | {n for n in types if self.serves(n)})

    def lookup(self, name: str) -> Any:
        """The value of `name`, or KeyError when the tables do not know it."""
        t = table()
        entry = t.FUNCTIONS.get(name)
        if entry is not None and entry[0] in self.libraries:
            return self.function(name)
        if not self.serves(name):
            raise KeyError(name)
        if name in t.STRUCTS:
            return ctype("S:" + name)
        if name in t.CALLBACKS:
            return ctype("F:" + name)
        if name in CALLBACK_ALIASES:
            return ctype("F:" + CALLBACK_ALIASES[name])
        if name in t.TYPEDEFS:
            return ctype(t.TYPEDEFS[name])
        if name.endswith("_ctypes") and name[: -len("_ctypes")] in t.TYPEDEFS:  # `llama_memory_t_ctypes`
            return ctype(t.TYPEDEFS[name[: -len("_ctypes")]])
        for suffix in ("_p_ctypes", "_p"):
            if name.endswith(suffix):
                return self._pointer_alias(name[: -len(suffix)], suffix)
        raise KeyError(name)

    def _pointer_alias(self, base: str, suffix: str) -> Any:
        t = table()
        if base in t.HANDLES:  # llama-cpp-python: `llama_model_p` an int NewType, `llama_model_p_ctypes` void *
            return ctypes.c_void_p if suffix == "_p_ctypes" else NewType(base + "_p", int)
        if base in t.STRUCTS:
            return ctypes.POINTER(ctype("S:" + base))
        if base in t.TYPEDEFS and suffix == "_p":
            return ctypes.POINTER(ctype(t.TYPEDEFS[base]))
        raise KeyError(base + suffix)

    def function(self, name: str) -> Any:
        library, result, params = table().FUNCTIONS[name]
        lib = cdll(library)
        try:
            if lib is None:
                raise AttributeError(name)
            raw = lib[name]  # a new function object: the CDLL's own attribute stays untouched
        except AttributeError:
            from llamarcp import _lib
            from llamarcp._libproxy import _missing

            return _missing(name, _lib.loaded_path() or "libllama")
        raw.restype = ctype(result)
        raw.argtypes = [ctype(spelling) for _, spelling in params]
        bounds = tuple(
            _Bound(b, c, element_size(raw.argtypes[b]), (params[b][0], params[c][0]), written)
            for b, c, written in table().BOUNDS.get(name, ())
        )
        return make_function(name, raw, params, bounds, table().TOKEN_CHECKS.get(name))
