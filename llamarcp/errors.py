"""Every exception llamarcp raises; C return codes are translated to these in one place.

High-level modules add their subclasses here too, so `except llamarcp.LlamaError` catches all.
"""

from __future__ import annotations


class LlamaError(Exception):
    """Base class of every llamarcp error."""


class LibraryNotFoundError(LlamaError, OSError):
    """No libllama could be found or loaded; the message names every place looked at."""


class LibraryMismatchError(LlamaError, ImportError):
    """The loaded libllama does not match the API llamarcp was generated from."""


class MissingSymbolError(LlamaError, AttributeError):
    """A function declared by the pinned llama.h is not exported by the loaded library."""

    def __init__(self, symbol: str, library: str, hint: str = "") -> None:
        self.symbol = symbol
        self.library = library
        message = f"{symbol} is declared by llama.h but not exported by {library}"
        super().__init__(f"{message}; {hint}" if hint else message)


class ChatTemplateError(LlamaError, ValueError):
    """A chat template failed to compile or render, or rejected the conversation (its `raise_exception`)."""


class ChatTemplateSecurityError(ChatTemplateError):
    """A chat template tried something the sandbox forbids (Python internals, huge allocations, ...)."""


class ChatMessageError(LlamaError, ValueError):
    """The chat messages (or tools) are not in the OpenAI shape the chat API accepts."""
