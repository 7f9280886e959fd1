"""`llama_cpp.mtmd_cpp`: libmtmd's C names (mtmd.h, mtmd-helper.h), resolved lazily from `llamarcp.lib`.

The functions are the generated cffi ones (libmtmd is loaded from beside libllama on first use); like
`llama_cpp.llama_cpp`, a `const char *` result comes back as bytes (`mtmd_default_marker().decode()` works).
llama-cpp-python's ctypes structure classes are not here: high-level code uses the chat handlers
(`llama_cpp.llama_chat_format.Llava15ChatHandler`, ...) or `Llama(mmproj=...)`.
"""

from __future__ import annotations

from typing import Any


def _names() -> list[str]:
    from llamarcp._generated import _symbols

    return sorted(n for group in ("mtmd", "mtmd-helper") for n in _symbols.GROUPS.get(group, ()))


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    if not name.startswith(("mtmd_", "MTMD_")):
        raise AttributeError(f"llamarcp's llama_cpp.mtmd_cpp has no {name!r} (mtmd.h names only)")
    from llamarcp import _backend
    from llamarcp.compat.lowlevel import _bytes_result

    value = _bytes_result(getattr(_backend.get_lib(), name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_names()})
