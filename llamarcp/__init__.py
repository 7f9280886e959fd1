"""llamarcp: generated, drift-checked Python bindings for llama.cpp.

`from llamarcp import lib, ffi` gives the raw C API under its C names; both load lazily on first use.
`llamarcp.install_as_llama_cpp()` lets code written for llama-cpp-python (`import llama_cpp`) run on llamarcp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llamarcp._pin import LLAMA_CPP_COMMIT
from llamarcp.errors import LlamaError

__version__ = "0.3.0"
if TYPE_CHECKING:  # the typed view of lib/ffi comes from the generated stubs
    from llamarcp._ffi import ffi as ffi
    from llamarcp._generated import lib as lib
    from llamarcp.compat import install_as_llama_cpp as install_as_llama_cpp
    from llamarcp.llama import Llama as Llama

__all__ = ["LLAMA_CPP_COMMIT", "Llama", "LlamaError", "__version__", "ffi", "install_as_llama_cpp", "lib"]


def __getattr__(name: str) -> Any:
    # Lazy so `import llamarcp` stays cheap and survives a missing library until it is used.
    if name == "ffi":
        from llamarcp._ffi import ffi

        return ffi
    if name == "lib":
        from llamarcp._lib import load

        return load()
    if name == "Llama":
        from llamarcp.llama import Llama

        return Llama
    if name == "install_as_llama_cpp":
        from llamarcp.compat import install_as_llama_cpp

        return install_as_llama_cpp
    raise AttributeError(f"module 'llamarcp' has no attribute {name!r}")
