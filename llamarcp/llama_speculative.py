"""llama-cpp-python's `llama_speculative` under llamarcp's name: draft models (`LlamaPromptLookupDecoding`).

A thin re-export of llamarcp.compat.speculative.
"""

from llamarcp.compat.speculative import *  # noqa: F403
from llamarcp.compat.speculative import __all__ as __all__
