"""llama.cpp's own (non-jinja) chat formatting: `llama_chat_apply_template` and its list of built-in formats.

llama.cpp recognises a fixed set of template families by substrings of the template (or by name, e.g.
"chatml", "llama3") and renders its own approximation of them. llamarcp renders real templates with jinja;
this module exists to compare against llama.cpp and for users who want llama.cpp's exact behaviour.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from llamarcp.chat.templates import normalize_messages
from llamarcp.errors import ChatMessageError, ChatTemplateError

__all__ = ["llama_cpp_apply_template", "llama_cpp_builtin_templates"]


def llama_cpp_builtin_templates() -> list[str]:
    """Names llama.cpp accepts as `tmpl` (its `llama_chat_builtin_templates`)."""
    from llamarcp import ffi, lib

    count = lib.llama_chat_builtin_templates(ffi.NULL, 0)
    names = ffi.new("const char *[]", max(count, 1))
    count = lib.llama_chat_builtin_templates(names, count)
    return [ffi.string(names[i]).decode("utf-8") for i in range(count)]


def llama_cpp_apply_template(
    template: str, messages: Iterable[Mapping[str, Any]], add_generation_prompt: bool = True
) -> str:
    """Format `messages` with llama.cpp's built-in renderer for `template` (jinja source or a built-in name).

    Raises ChatTemplateError when llama.cpp does not recognise the template (it returns a negative code).
    """
    from llamarcp import ffi, lib

    if not isinstance(template, str) or not template:
        raise ChatTemplateError("llama_chat_apply_template needs a template (jinja source or a built-in name)")
    msgs = normalize_messages(messages)
    keep_alive = []
    chat = ffi.new("struct llama_chat_message[]", len(msgs))
    total = 0
    for i, message in enumerate(msgs):
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise ChatMessageError(f"messages[{i}].content must be a string for llama_chat_apply_template")
        role_c = ffi.new("char[]", message["role"].encode("utf-8"))
        content_c = ffi.new("char[]", content.encode("utf-8"))
        keep_alive += [role_c, content_c]
        chat[i].role = role_c
        chat[i].content = content_c
        total += len(content) + len(message["role"])
    tmpl = ffi.new("char[]", template.encode("utf-8"))
    size = 2 * total + 1024
    for _ in range(2):
        buf = ffi.new("char[]", size)
        n = lib.llama_chat_apply_template(tmpl, chat, len(msgs), add_generation_prompt, buf, size)
        if n < 0:
            raise ChatTemplateError(f"llama_chat_apply_template does not support this template (returned {n})")
        if n <= size:
            return bytes(ffi.buffer(buf, n)).decode("utf-8")
        size = n + 1
    raise ChatTemplateError("llama_chat_apply_template kept asking for a larger buffer")
