"""Chat: prompt formatting from chat templates (sandboxed) and OpenAI-shaped chat completions.

- `ChatFormatter(template, bos_token, eos_token).render(messages, tools=...)`: one template, sandboxed.
- `CHAT_FORMATS` / `register_chat_format`: named formats (chatml, llama-2, llama-3, gemma, ...).
- `create_chat_completion(llama, messages, ...)`: what `Llama.create_chat_completion` runs.
- `llamarcp.chat.native.llama_cpp_apply_template`: llama.cpp's own (non-jinja) renderer, for comparison.
"""

from __future__ import annotations

from llamarcp.chat.completion import (
    ThinkSplitter,
    chat_formatter,
    create_chat_completion,
    render_chat_prompt,
    tools_system_prompt,
)
from llamarcp.chat.formats import (
    CHAT_FORMATS,
    DEFAULT_CHAT_FORMAT,
    ChatFormat,
    get_chat_format,
    guess_chat_format,
    register_chat_format,
)
from llamarcp.chat.formatter import ChatFormatter, formatter_for_model, normalize_messages

__all__ = [
    "CHAT_FORMATS",
    "DEFAULT_CHAT_FORMAT",
    "ChatFormat",
    "ChatFormatter",
    "ThinkSplitter",
    "chat_formatter",
    "create_chat_completion",
    "formatter_for_model",
    "get_chat_format",
    "guess_chat_format",
    "normalize_messages",
    "register_chat_format",
    "render_chat_prompt",
    "tools_system_prompt",
]
