"""`llama_cpp`: llama-cpp-python's top-level namespace (`from .llama_cpp import *` + `from .llama import *`).

High-level names resolve to llamarcp's classes; every other `llama_*` / `LLAMA_*` name is llama.h's, from
`llamarcp.lib`, resolved on first access. Submodules (`llama_cpp.llama_grammar`, ...) resolve through the
finder `install_as_llama_cpp()` installs.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__llamarcp__ = True  # marks this module as llamarcp's stand-in (install_as_llama_cpp checks it)
#: The llama-cpp-python API level this layer follows (llamarcp's own version is `llamarcp.__version__`).
__version__ = "0.3.36"
__path__: list[str] = []  # a package: its submodules come from llamarcp.compat's finder

# name -> module it lives in (resolved lazily: `import llama_cpp` loads neither the model code nor libllama).
_HIGH_LEVEL = {
    "llamarcp.compat.llama_module": (
        "Llama",
        "LlamaState",
        "LogitsProcessor",
        "LogitsProcessorList",
        "StoppingCriteria",
        "StoppingCriteriaList",
        "MinTokensLogitsProcessor",
    ),
    "llamarcp.compat.grammar": ("LlamaGrammar",),
    "llamarcp.compat.cache": ("BaseLlamaCache", "LlamaCache", "LlamaRAMCache", "LlamaDiskCache"),
    "llamarcp.compat.tokenizer": ("BaseLlamaTokenizer", "LlamaTokenizer"),
    "llamarcp.compat.speculative": ("LlamaDraftModel",),
}
_WHERE = {name: module for module, names in _HIGH_LEVEL.items() for name in names}
_SUBMODULES = (
    "llama",
    "llama_cpp",
    "llama_types",
    "llama_grammar",
    "llama_cache",
    "llama_speculative",
    "llama_tokenizer",
    "llama_chat_format",
    "mtmd_cpp",
    "server",
)


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    from llamarcp.compat import LLAMA_CPP_MODULES, lowlevel, types

    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif name in _SUBMODULES:
        installed = sys.modules.get("llama_cpp") is sys.modules[__name__]
        value = importlib.import_module("llama_cpp." + name if installed else LLAMA_CPP_MODULES["llama_cpp." + name])
    elif name in types.__all__:
        value = getattr(types, name)
    else:
        try:
            value = getattr(lowlevel, name)
        except AttributeError:
            raise AttributeError(f"module 'llama_cpp' (llamarcp) has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    from llamarcp.compat import lowlevel, types

    return sorted({*globals(), *_WHERE, *_SUBMODULES, *types.__all__, *lowlevel.__dir__()})
