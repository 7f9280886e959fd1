"""llama-cpp-python's `llama_tokenizer` under llamarcp's name: tokenizers (`LlamaTokenizer`, `LlamaHFTokenizer`).

A thin re-export of llamarcp.compat.tokenizer.
"""

from llamarcp.compat.tokenizer import *  # noqa: F403
from llamarcp.compat.tokenizer import __all__ as __all__
