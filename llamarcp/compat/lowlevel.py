"""`llama_cpp.llama_cpp`: llama-cpp-python's ctypes module, generated from the same API model as llamarcp's cffi.

Every name resolves on first access (module `__getattr__`), so importing this module loads no library and
builds no ctypes type. Functions are ctypes functions of the loaded libllama with llama-cpp-python's argtypes
and restypes (opaque pointers as ints, `float *` as ctypes pointers, by-value structs as `ctypes.Structure`);
structs, callback types, typedefs and the `*_p` aliases come from the generated tables
(llamarcp/compat/ctypes_face.py); enum values and #defines from the cffi `lib`. `_lib` is a `ctypes.CDLL` of
the library llamarcp loaded.
"""

from __future__ import annotations

import ctypes
from typing import Any

from llamarcp.compat.ctypes_face import CtypesFace, cdll, lazy_module_getattr

#: Every ctypes function type derives from this (the class of `ctypes.CFUNCTYPE(...)` instances).
_FUNCTION_POINTER: Any = ctypes.CFUNCTYPE(None).__mro__[1]


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
    pointer: Any = value  # isinstance() below would narrow it to object for mypy
    return isinstance(value, _FUNCTION_POINTER) and not ctypes.cast(pointer, ctypes.c_void_p).value


def llama_backend_init() -> None:
    """Initialise llama.cpp's backends (once per process; llamarcp also does it on first use)."""
    from llamarcp import _backend

    _backend.ensure_backend()


def llama_backend_free() -> None:
    """A no-op: llamarcp frees the backends at interpreter exit, after the last model is gone."""


_FACE = CtypesFace(("llama", "ggml", "ggml-rpc"))


def _names() -> list[str]:
    from llamarcp._release import generated_module

    return sorted({*_FACE.names(), *generated_module("_symbols").EXTRA_CONSTANTS, "_lib", "LLAMA_MAX_DEVICES"})


def _public_names() -> list[str]:
    """What `from llama_cpp.llama_cpp import *` binds, as llama-cpp-python's star import does: every function,
    type and constant (this loads the library, as importing llama-cpp-python does)."""
    from llamarcp import _backend

    constants = [n for n in dir(_backend.get_lib()) if n.startswith(("LLAMA_", "GGML_", "GGUF_"))]
    return sorted({*(n for n in _names() if not n.startswith("_")), *constants})


def _resolve(name: str) -> Any:
    if name == "_lib":
        return cdll("llama")
    if name == "LLAMA_MAX_DEVICES":  # llama-cpp-python computes it at import
        return __getattr__("llama_max_devices")()
    try:
        return _FACE.lookup(name)
    except KeyError:
        pass
    if name.isupper() or name.startswith(("LLAMA_", "GGML_", "GGUF_")):  # enum values and #defines
        from llamarcp import _backend

        try:
            return getattr(_backend.get_lib(), name)
        except AttributeError:
            pass
    from llamarcp._release import generated_module

    commit = generated_module("_symbols").LLAMA_CPP_COMMIT[:12]
    raise AttributeError(f"llama.h (llama.cpp {commit}) declares no {name!r}: llama_cpp.llama_cpp has no such name")


def __dir__() -> list[str]:
    return sorted({*globals(), *_names()})


__getattr__ = lazy_module_getattr(globals(), _resolve, _public_names)
