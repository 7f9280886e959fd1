"""Checks that run in Python before an input reaches llama.cpp, one module per input kind (STYLE.md point 18).

llama.cpp asserts (aborting the process), recurses without a depth limit, or allocates without bound on some
inputs it does not validate. Each module here refuses those inputs first, with the limit named:

- `grammar`: GBNF text (nesting depth, rule and element counts, repetition bounds, parallel parse stacks).
- `gguf`: a model file's header and the hyperparameters llama.cpp asserts on while loading or decoding.
- `params`: context parameters (ggml types, threads, sizes) and sampling parameters (ranges and types).
"""

from __future__ import annotations

from llamarcp.validate.gguf import GGUFHeader, check_gguf_hparams, read_gguf_header
from llamarcp.validate.grammar import GrammarStats, check_grammar
from llamarcp.validate.params import check_context_params, check_sampling_params

__all__ = [
    "GGUFHeader",
    "GrammarStats",
    "check_context_params",
    "check_gguf_hparams",
    "check_grammar",
    "check_sampling_params",
    "read_gguf_header",
]
