"""llama-cpp-python's `llama_types` under llamarcp's name: the OpenAI-shaped TypedDicts.

A thin re-export of llamarcp.compat.types.
"""

from llamarcp.compat.types import *  # noqa: F403
from llamarcp.compat.types import __all__ as __all__
