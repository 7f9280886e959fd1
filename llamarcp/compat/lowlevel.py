"""`llama_cpp.llama_cpp`: llama.h's functions and constants under their C names, from `llamarcp.lib`.

Resolved on first access (module `__getattr__`), so importing this module loads no library. The values are
cffi's: functions take cffi cdata (`llamarcp.ffi.new(...)`, `ffi.NULL`) where llama-cpp-python's take ctypes
objects, and structs come back as cdata with the same field names.
"""

from __future__ import annotations

from typing import Any

__all__: list[str] = []  # `from llama_cpp.llama_cpp import *` exports nothing: the names are resolved lazily


def llama_backend_init() -> None:
    """Initialise llama.cpp's backends (once per process; llamarcp also does it on first use)."""
    from llamarcp import _backend

    _backend.ensure_backend()


def llama_backend_free() -> None:
    """A no-op: llamarcp frees the backends at interpreter exit, after the last model is gone."""


def _names() -> list[str]:
    from llamarcp._generated import _symbols

    return sorted(set(_symbols.FUNCTIONS) | set(_symbols.EXTRA_CONSTANTS))


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    if not (name.startswith(("llama_", "LLAMA_", "ggml_", "GGML_", "GGUF_")) or name in ("gguf_type",)):
        raise AttributeError(f"llamarcp's llama_cpp.llama_cpp has no {name!r} (llama.h names only)")
    from llamarcp import _backend

    value = getattr(_backend.get_lib(), name)  # AttributeError names the pinned llama.h when it is not there
    value = _bytes_result(value)
    globals()[name] = value
    return value


def _bytes_result(func: Any) -> Any:
    """ctypes gives `const char *` results as bytes (llama-cpp-python code calls `.decode()` on them)."""
    from llamarcp._generated._llama_ffi import ffi

    try:
        ctype = ffi.typeof(func)
    except TypeError:  # a constant, or a stand-in for a symbol the library lacks
        return func
    if ctype.kind != "function" or ctype.result.cname not in ("char *", "const char *"):
        return func

    def returns_bytes(*args: Any) -> bytes | None:
        result = func(*args)
        return None if result == ffi.NULL else ffi.string(result)

    returns_bytes.__name__ = returns_bytes.__qualname__ = getattr(func, "__name__", "function")
    returns_bytes.__doc__ = f"{returns_bytes.__name__}(...): the C string result as bytes (None for NULL)."
    return returns_bytes


def __dir__() -> list[str]:
    return sorted({*globals(), *_names()})
