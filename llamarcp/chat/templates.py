"""Compatibility module: chat templates used to live here in one file.

The code is now split by concern: `llamarcp.chat.sandbox` (the bounded jinja2 sandbox),
`llamarcp.chat.formatter` (`ChatFormatter`, message normalisation) and `llamarcp.chat.formats` (the named
formats and their registry). Everything importable from here before still is.
"""

from __future__ import annotations

from llamarcp.chat.formats import (
    CHAT_FORMATS,
    DEFAULT_CHAT_FORMAT,
    ChatFormat,
    get_chat_format,
    guess_chat_format,
    register_chat_format,
)
from llamarcp.chat.formatter import ChatFormatter, formatter_for_model, normalize_messages
from llamarcp.chat.sandbox import (
    DEFAULT_RENDER_TIMEOUT,
    MAX_LOOP_ITERATIONS,
    MAX_RENDERED_CHARS,
    MAX_REPEAT_ITEMS,
)

__all__ = [
    "CHAT_FORMATS",
    "DEFAULT_CHAT_FORMAT",
    "DEFAULT_RENDER_TIMEOUT",
    "MAX_LOOP_ITERATIONS",
    "MAX_RENDERED_CHARS",
    "MAX_REPEAT_ITEMS",
    "ChatFormat",
    "ChatFormatter",
    "formatter_for_model",
    "get_chat_format",
    "guess_chat_format",
    "normalize_messages",
    "register_chat_format",
]
