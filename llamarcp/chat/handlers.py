"""The process-wide table of llama-cpp-python-style chat handlers, by name (imports nothing of llamarcp).

`llamarcp.compat.chat_format` registers into it (llama-cpp-python's registry API); `llamarcp.chat.completion`
asks it which handler serves a `chat_format` name. Built-in handlers are named here with the module that
defines them and loaded on first use, so an ordinary chat imports none of them.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

__all__ = ["lookup", "names", "register", "unregister"]

_lock = threading.Lock()
_handlers: dict[str, Any] = {}
#: name -> (module, attribute) of a handler shipped with llamarcp, imported when first asked for.
_BUILTIN = {"chatml-function-calling": ("llamarcp.chat.function_calling", "chatml_function_calling")}


def register(name: str, handler: Any, overwrite: bool = False, taken: frozenset[str] = frozenset()) -> None:
    """Add `handler` under `name`; refuses a name already used (or in `taken`) unless `overwrite`."""
    if not isinstance(name, str) or not name:
        raise ValueError("a chat handler needs a non-empty name")
    if not callable(handler):
        raise TypeError(f"chat handler {name!r} must be callable")
    with _lock:
        if not overwrite and (name in _handlers or name in _BUILTIN or name in taken):
            raise ValueError(f"chat format {name!r} is already registered; pass overwrite=True to replace it")
        _handlers[name] = handler


def unregister(name: str) -> None:
    with _lock:
        if name not in _handlers:
            raise ValueError(f"no chat handler registered under {name!r}")
        del _handlers[name]


def lookup(name: str) -> Any:
    """The handler registered (or built in) under `name`, or None: then llamarcp's own chat formats apply."""
    with _lock:
        handler = _handlers.get(name)
    if handler is not None or name not in _BUILTIN:
        return handler
    module, attribute = _BUILTIN[name]
    return getattr(importlib.import_module(module), attribute)


def names() -> set[str]:
    with _lock:
        return {*_handlers, *_BUILTIN}
