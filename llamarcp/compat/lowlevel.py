"""`llama_cpp.llama_cpp`: llama.h's functions and constants under their C names, from `llamarcp.lib`.

Resolved on first access (module `__getattr__`), so importing this module loads no library. The values are
cffi's: functions take cffi cdata (`llamarcp.ffi.new(...)`, `ffi.NULL`) where llama-cpp-python's take ctypes
objects, and structs come back as cdata with the same field names.
"""

from __future__ import annotations

import ctypes
from typing import Any

__all__: list[str] = []  # `from llama_cpp.llama_cpp import *` exports nothing: the names are resolved lazily

#: llama-cpp-python's ctypes names for llama.h's integer typedefs (code builds arrays with them).
llama_token = ctypes.c_int32
llama_pos = ctypes.c_int32
llama_seq_id = ctypes.c_int32
#: `ggml_log_callback` as a ctypes function type, llama-cpp-python's name: `llama_log_set` below takes one.
llama_log_callback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


def llama_log_set(log_callback: Any, user_data: Any = None) -> None:
    """Send llama.cpp's log to `log_callback(level, text, user_data)`: a ctypes `llama_log_callback` (the usual
    way to silence llama.cpp from llama-cpp-python code), a cffi callback or any Python callable; None (or a
    NULL pointer) goes back to llamarcp's default, the `llamarcp.llama_cpp` logger. llamarcp keeps quoting
    llama.cpp's error lines in its exceptions either way."""
    from llamarcp import _backend
    from llamarcp._ffi import ffi

    if log_callback is None or log_callback is ffi.NULL or _is_null_function(log_callback):
        _backend.set_log_hook(None)
        return
    if isinstance(log_callback, ffi.CData):
        data = ffi.NULL if user_data is None else user_data
        c_function: Any = log_callback

        def via_cffi(level: int, text: bytes) -> None:
            c_function(level, ffi.new("char[]", text), data)

        _backend.set_log_hook(via_cffi)
        return
    if not callable(log_callback):
        raise TypeError(f"llama_log_set expects a log callback or None, got {type(log_callback).__name__}")
    _backend.set_log_hook(lambda level, text: log_callback(level, text, user_data))


def _is_null_function(value: Any) -> bool:
    """A ctypes function pointer to address 0 (`llama_log_callback()` or `llama_log_callback(0)`)."""
    is_function_pointer = isinstance(value, llama_log_callback.__mro__[1])  # ctypes' base of every CFUNCTYPE
    return is_function_pointer and not ctypes.cast(value, ctypes.c_void_p).value


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
    from llamarcp._ffi import ffi

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
