"""`llama_cpp.llama`: the `Llama` class and the names llama-cpp-python's llama.py exports beside it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llamarcp.compat.cache import BaseLlamaCache, LlamaCache, LlamaDiskCache, LlamaRAMCache
from llamarcp.compat.grammar import LlamaGrammar
from llamarcp.compat.llama_api import MinTokensLogitsProcessor
from llamarcp.compat.speculative import LlamaDraftModel
from llamarcp.compat.tokenizer import BaseLlamaTokenizer, LlamaTokenizer
from llamarcp.compat.types import *  # noqa: F403 - llama-cpp-python's llama.py re-exports every type
from llamarcp.compat.types import __all__ as _type_names
from llamarcp.llama import Llama, LlamaState
from llamarcp.sampling import LogitsProcessorList, StoppingCriteriaList

#: `(input_ids, scores) -> scores` (numpy arrays).
LogitsProcessor = Callable[[Any, Any], Any]
#: `(input_ids, scores) -> bool`.
StoppingCriteria = Callable[[Any, Any], bool]

__all__ = [
    "BaseLlamaCache",
    "BaseLlamaTokenizer",
    "Llama",
    "LlamaCache",
    "LlamaDiskCache",
    "LlamaDraftModel",
    "LlamaGrammar",
    "LlamaRAMCache",
    "LlamaState",
    "LlamaTokenizer",
    "LogitsProcessor",
    "LogitsProcessorList",
    "MinTokensLogitsProcessor",
    "StoppingCriteria",
    "StoppingCriteriaList",
    *_type_names,
]
