"""llama-cpp-python's `llama_grammar` under llamarcp's name: `LlamaGrammar`, JSON-schema conversion, stock grammars.

A thin re-export of llamarcp.compat.grammar.
"""

from llamarcp.compat.grammar import *  # noqa: F403
from llamarcp.compat.grammar import __all__ as __all__
