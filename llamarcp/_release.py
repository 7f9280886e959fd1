"""Which llama.cpp release's bindings describe the library this process loads (placeholder: the pin only)."""

from __future__ import annotations

from typing import Any


def selected_ffi() -> Any:
    from llamarcp._generated._llama_ffi import ffi

    return ffi
