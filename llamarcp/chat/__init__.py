"""Chat: prompt formatting from chat templates (sandboxed) and OpenAI-shaped chat completions."""

from __future__ import annotations

from llamarcp.chat.templates import (
    CHAT_FORMATS,
    DEFAULT_CHAT_FORMAT,
    ChatFormat,
    ChatFormatter,
    formatter_for_model,
    get_chat_format,
    guess_chat_format,
    normalize_messages,
    register_chat_format,
)

__all__ = [
    "CHAT_FORMATS",
    "DEFAULT_CHAT_FORMAT",
    "ChatFormat",
    "ChatFormatter",
    "formatter_for_model",
    "get_chat_format",
    "guess_chat_format",
    "normalize_messages",
    "register_chat_format",
]

from llamarcp.chat.completion import chat_formatter, create_chat_completion  # noqa: E402

__all__ += ["chat_formatter", "create_chat_completion"]
