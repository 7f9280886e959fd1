"""`llama_cpp.mtmd_cpp`: llama-cpp-python's ctypes module of libmtmd (images and audio), generated like
`llama_cpp.llama_cpp` from the API model (see llamarcp/compat/ctypes_face.py).

Names resolve on first access: `mtmd_*` functions bound to the libmtmd beside the loaded libllama (a function
of a build without it raises MissingSymbolError when called), the `mtmd_*` structs, callback types and
`mtmd_*_p` handle aliases, `MTMD_*` enum values from the cffi `lib`, and `_libmtmd`, a `ctypes.CDLL`.
"""

from __future__ import annotations

from typing import Any

from llamarcp.compat.ctypes_face import CtypesFace, cdll, lazy_module_getattr

_FACE = CtypesFace(("mtmd",), prefixes=("mtmd_", "MTMD_"))


def _public_names() -> list[str]:
    """What a star import binds: every mtmd name (this loads libmtmd)."""
    from llamarcp import _backend

    constants = [n for n in dir(_backend.get_lib()) if n.startswith("MTMD_")]
    return sorted({*_FACE.names(), *constants})


def _resolve(name: str) -> Any:
    if name == "_libmtmd":
        library = cdll("mtmd")
        if library is None:
            from llamarcp._release import generated_module

            raise AttributeError(f"_libmtmd: {generated_module('_symbols').HINTS.get('mtmd', 'no libmtmd found')}")
        return library
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
    return sorted({*globals(), *_FACE.names(), "_libmtmd"})


__getattr__ = lazy_module_getattr(globals(), _resolve, _public_names)
