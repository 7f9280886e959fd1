"""Which llama.cpp release's bindings describe the library this process loads.

(Being extended for issue 27: for now every function returns the pin's generated bindings.)
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


def selected_ffi() -> Any:
    from llamarcp._generated._llama_ffi import ffi

    return ffi


def generated_module(name: str) -> ModuleType:
    """The generated module `name` (e.g. "_symbols", "_abi") of the release selected for the loaded library."""
    return importlib.import_module(f"llamarcp._generated.{name}")
