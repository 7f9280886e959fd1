"""`llama_cpp.mtmd_cpp`: llama-cpp-python's ctypes module of libmtmd (images and audio), generated like
`llama_cpp.llama_cpp` from the API model (see llamarcp/compat/ctypes_face.py).

Names resolve on first access: `mtmd_*` functions bound to the libmtmd beside the loaded libllama (a function
of a build without it raises MissingSymbolError when called), the `mtmd_*` structs, callback types and
`mtmd_*_p` handle aliases, `MTMD_*` enum values from the cffi `lib`, and `_libmtmd`, a `ctypes.CDLL`.

Beside the C functions llama-cpp-python 0.3.36 keeps a few Python-level names; they are rules over the generated
tables here, so they follow each release's declarations: a function returning a struct of UNWRAPPED_RESULTS is
`<name>_wrapper` (the C function) and `<name>` (that struct's field, its trailing options struct optional), and
DEPRECATED_ALIASES are old names that warn and call the new function.
"""

from __future__ import annotations

import warnings
from typing import Any

from llamarcp.compat.ctypes_face import CtypesFace, cdll, lazy_module_getattr, table

_FACE = CtypesFace(("mtmd",), prefixes=("mtmd_", "MTMD_"))

#: A C function returning one of these structs: llama-cpp-python's `<name>` returns this field of it.
UNWRAPPED_RESULTS = {"mtmd_helper_bitmap_wrapper": "bitmap"}
#: llama-cpp-python's old names -> the function they call (with a DeprecationWarning).
DEPRECATED_ALIASES = {"mtmd_get_audio_bitrate": "mtmd_get_audio_sample_rate"}
_WRAPPER = "_wrapper"


def _unwrapped_functions() -> list[str]:
    """The functions of this release whose result llama-cpp-python unwraps (see UNWRAPPED_RESULTS)."""
    return [
        name
        for name, (library, result, _) in table().FUNCTIONS.items()
        if library == "mtmd" and result.startswith("S:") and result[2:] in UNWRAPPED_RESULTS
    ]


def _python_level_names() -> list[str]:
    functions = table().FUNCTIONS
    unwrapped = _unwrapped_functions()
    aliases = [old for old, new in DEPRECATED_ALIASES.items() if new in functions and old not in functions]
    return [*aliases, *(name + _WRAPPER for name in unwrapped)]


def _unwrapping(name: str) -> Any:
    """llama-cpp-python's `name`: the C function's struct result reduced to its field; a trailing options struct
    (`opt`) may be left out, its `<struct>_default()` is passed then."""
    c_function = _FACE.function(name)
    _, result, params = table().FUNCTIONS[name]
    field = UNWRAPPED_RESULTS[result[2:]]
    default_name = f"{params[-1][1][2:]}_default" if params and params[-1][1].startswith("S:") else ""
    default = _FACE.function(default_name) if default_name in table().FUNCTIONS else None

    def call(*args: Any) -> Any:
        if default is not None and len(args) == len(params) - 1:
            args = (*args, default())
        return getattr(c_function(*args), field)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{c_function.__doc__}; returns its {field!r} (llama-cpp-python's {name}, opt optional)"
    call.argtypes = c_function.argtypes  # type: ignore[attr-defined]
    call.restype = c_function.restype  # type: ignore[attr-defined]
    return call


def _deprecated(old: str, new: str) -> Any:
    function = _FACE.function(new)

    def call(*args: Any) -> Any:
        warnings.warn(f"{old} is deprecated; use {new} instead", DeprecationWarning, stacklevel=2)
        return function(*args)

    call.__name__ = call.__qualname__ = old
    call.__doc__ = f"Deprecated name of {new}."
    return call


def _public_names() -> list[str]:
    """What a star import binds: every mtmd name (this loads libmtmd)."""
    from llamarcp import _backend

    constants = [n for n in dir(_backend.get_lib()) if n.startswith("MTMD_")]
    return sorted({*_FACE.names(), *_python_level_names(), *constants})


def _resolve(name: str) -> Any:
    if name == "_libmtmd":
        library = cdll("mtmd")
        if library is None:
            from llamarcp._release import generated_module

            raise AttributeError(f"_libmtmd: {generated_module('_symbols').HINTS.get('mtmd', 'no libmtmd found')}")
        return library
    functions = table().FUNCTIONS
    if name.endswith(_WRAPPER) and name[: -len(_WRAPPER)] in _unwrapped_functions():
        return _FACE.function(name[: -len(_WRAPPER)])
    if name in _unwrapped_functions():
        return _unwrapping(name)
    if name in DEPRECATED_ALIASES and name not in functions and DEPRECATED_ALIASES[name] in functions:
        return _deprecated(name, DEPRECATED_ALIASES[name])
    try:
        return _FACE.lookup(name)
    except KeyError:
        pass
    if name.startswith("MTMD_"):
        from llamarcp import _backend

        try:
            return getattr(_backend.get_lib(), name)
        except AttributeError:
            pass
    raise AttributeError(f"llamarcp's llama_cpp.mtmd_cpp has no {name!r} (mtmd.h names only)")


def __dir__() -> list[str]:
    return sorted({*globals(), *_FACE.names(), *_python_level_names(), "_libmtmd"})


__getattr__ = lazy_module_getattr(globals(), _resolve, _public_names)
