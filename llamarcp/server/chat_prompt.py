"""The prompt a chat request becomes, without generating: for `/apply-template`, `/v1/messages/count_tokens`
and `/v1/responses/input_tokens`. Same formatter, tool note and BOS rule as `llamarcp.chat.create_chat_completion`,
so a count here is the count the generation reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llamarcp.chat import chat_formatter, render_chat_prompt
from llamarcp.errors import ChatMessageError
from llamarcp.server.pool import ModelEntry

__all__ = ["chat_prompt", "chat_prompt_tokens", "template_kwargs_for"]


def template_kwargs_for(entry: ModelEntry, requested: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The model's configured chat template variables, overridden by the request's `chat_template_kwargs`."""
    return {**(entry.config.chat_template_kwargs or {}), **(requested or {})} or None


def chat_prompt(
    entry: ModelEntry,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """The rendered prompt text (on a worker thread: rendering runs the sandboxed template)."""
    formatter = chat_formatter(entry.llama, entry.config.chat_format, entry.config.chat_template)
    return render_chat_prompt(formatter, messages, tools, template_kwargs)


def chat_prompt_tokens(
    entry: ModelEntry,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> list[int]:
    """The prompt's tokens, as the chat completion tokenizes them."""
    formatter = chat_formatter(entry.llama, entry.config.chat_format, entry.config.chat_template)
    prompt = render_chat_prompt(formatter, messages, tools, template_kwargs)
    bos = formatter.bos_token
    try:
        data = prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ChatMessageError(f"the conversation contains text that is not valid Unicode ({exc.reason})") from exc
    return list(entry.llama.tokenize(data, add_bos=not (bos and prompt.startswith(bos)), special=True))
