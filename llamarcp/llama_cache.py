"""llama-cpp-python's `llama_cache` under llamarcp's name: prompt caches (`LlamaRAMCache`, `LlamaDiskCache`).

A thin re-export of llamarcp.compat.cache.
"""

from llamarcp.compat.cache import *  # noqa: F403
from llamarcp.compat.cache import __all__ as __all__
