"""llama-cpp-python's `llama_chat_format` under llamarcp's name: chat handlers, formatters and their registry.

A thin re-export of llamarcp.compat.chat_format.
"""

from llamarcp.compat.chat_format import *  # noqa: F403
from llamarcp.compat.chat_format import __all__ as __all__
