"""Named chat completion handlers: llama-cpp-python's extension point, looked up by `chat_format`.

A handler `(llama=..., messages=..., **openai_params) -> chat completion` registered here under a name takes
over `create_chat_completion` for that `chat_format` (llamarcp.compat.chat_format registers them, with
llama-cpp-python's decorators). This module only holds the table, so the chat path can consult it cheaply.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Container
from typing import Any

__all__ = ["FUNCTION_CALLING", "names", "register", "registered", "unregister"]

#: The handler llamarcp ships (llamarcp.chat.function_calling), usable without registering anything.
FUNCTION_CALLING = "chatml-function-calling"

_HANDLERS: dict[str, Callable[..., Any]] = {}
_LOCK = threading.Lock()


def register(name: str, handler: Callable[..., Any], *, overwrite: bool = False, taken: Container[str] = ()) -> None:
    """Add `handler` under `name`; an existing name (or one in `taken`) needs `overwrite=True`."""
    if not isinstance(name, str) or not name:
        raise ValueError("a chat handler needs a non-empty name")
    if not callable(handler):
        raise TypeError(f"chat handler {name!r} must be callable")
    with _LOCK:
        if not overwrite and (name in _HANDLERS or name in taken):
            raise ValueError(f"chat format {name!r} is already registered; pass overwrite=True to replace it")
        _HANDLERS[name] = handler


def unregister(name: str) -> None:
    with _LOCK:
        if name not in _HANDLERS:
            raise ValueError(f"no chat handler registered under {name!r}")
        del _HANDLERS[name]


def registered(name: str) -> Callable[..., Any] | None:
    return _HANDLERS.get(name)


def names() -> list[str]:
    return sorted(_HANDLERS)
