"""ChatFormatter: OpenAI-style messages -> prompt text, through a template compiled in the chat sandbox.

Messages are validated and deep-copied (`normalize_messages`) so a template only ever sees private plain data;
every failure while compiling or rendering becomes a `ChatTemplateError` (`ChatTemplateSecurityError` for what
the sandbox in `llamarcp.chat.sandbox` stopped), including recursion and memory errors.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from llamarcp.chat.formats import GGUF_TEMPLATE_FORMAT, ChatFormat, get_chat_format, guess_chat_format
from llamarcp.chat.sandbox import (
    DEFAULT_RENDER_TIMEOUT,
    MAX_RENDERED_CHARS,
    RenderBudget,
    SecurityError,
    TemplateRaised,
    compile_checked,
)
from llamarcp.errors import ChatMessageError, ChatTemplateError, ChatTemplateSecurityError

__all__ = ["MAX_MESSAGE_DEPTH", "ChatFormatter", "formatter_for_model", "normalize_messages"]

#: Deepest nesting of lists/objects accepted inside messages, tools and template variables.
MAX_MESSAGE_DEPTH = 64


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """Deep copy of JSON-like data; the template only ever sees these copies."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if depth >= MAX_MESSAGE_DEPTH:
        raise ChatMessageError(f"{where}: nested deeper than MAX_MESSAGE_DEPTH={MAX_MESSAGE_DEPTH} levels")
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ChatMessageError(f"{where}: keys must be strings, got {key!r}")
            out[key] = _plain(item, f"{where}.{key}", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise ChatMessageError(f"{where}: unsupported value of type {type(value).__name__}")


def normalize_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate an OpenAI-style message list and return a private deep copy of it."""
    if isinstance(messages, (str, bytes, Mapping)):
        raise ChatMessageError("messages must be a list of {'role': ..., 'content': ...} objects")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatMessageError(f"messages[{i}] must be an object, got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ChatMessageError(f"messages[{i}].role must be a non-empty string")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list, tuple)):
            raise ChatMessageError(f"messages[{i}].content must be a string, a list of parts or null")
        if isinstance(content, (list, tuple)):
            for j, part in enumerate(content):
                if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                    raise ChatMessageError(f"messages[{i}].content[{j}] must be an object with a 'type'")
        out.append(_plain(message, f"messages[{i}]"))
    if not out:
        raise ChatMessageError("messages must not be empty")
    return out


def _text_parts_joined(content: list[dict[str, Any]], where: str) -> str:
    texts = []
    for j, part in enumerate(content):
        if part["type"] != "text" or not isinstance(part.get("text"), str):
            raise ChatMessageError(
                f"{where}[{j}]: content part of type {part['type']!r} is not supported by this chat template "
                "(only text parts can be flattened)"
            )
        texts.append(part["text"])
    return "\n".join(texts)


def _convert_arguments(messages: list[dict[str, Any]], to_object: bool) -> None:
    """OpenAI sends tool-call arguments as JSON text; most templates want the object (and apply tojson)."""
    for message in messages:
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or "arguments" not in function:
                continue
            arguments = function["arguments"]
            if to_object and isinstance(arguments, str):
                try:
                    parsed = json.loads(arguments)
                except ValueError:
                    continue
                if isinstance(parsed, dict):
                    function["arguments"] = parsed
            elif not to_object and isinstance(arguments, dict):
                function["arguments"] = json.dumps(arguments, ensure_ascii=False)


class ChatFormatter:
    """Turns a list of chat messages into the prompt text a model was trained on.

    `template` is jinja source (a GGUF's `tokenizer.chat_template` or a registered format); it is compiled
    once, in the sandbox. `render()` raises `ChatTemplateError` for anything the template cannot handle,
    including its own `raise_exception(...)` calls, and `ChatTemplateSecurityError` for sandbox violations.
    """

    def __init__(
        self,
        template: str,
        bos_token: str = "",
        eos_token: str = "",
        *,
        stop: Sequence[str] = (),
        name: str | None = None,
        now: Callable[[], datetime.datetime] | None = None,
        render_timeout: float = DEFAULT_RENDER_TIMEOUT,
    ) -> None:
        if not isinstance(template, str) or not template.strip():
            raise ChatTemplateError("chat template must be a non-empty string")
        self.template_source = template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.stop = tuple(stop)
        self.name = name or "custom"
        self._now = now
        self.render_timeout = float(render_timeout)
        self._template = compile_checked(template, self.name)
        self._typed_content: bool | None = None
        self._tools: bool | None = None
        self._object_args: bool | None = None

    @classmethod
    def from_format(cls, chat_format: str | ChatFormat, bos_token: str = "", eos_token: str = "") -> ChatFormatter:
        fmt = get_chat_format(chat_format) if isinstance(chat_format, str) else chat_format
        return cls(fmt.template, bos_token, eos_token, stop=fmt.stop, name=fmt.name)

    def __repr__(self) -> str:
        return f"ChatFormatter(name={self.name!r}, bos_token={self.bos_token!r}, eos_token={self.eos_token!r})"

    @property
    def supports_typed_content(self) -> bool:
        """Whether the template renders `content` given as a list of `{"type": "text", ...}` parts."""
        if self._typed_content is None:
            probe = "llamarcp-content-probe"
            try:
                out = self._render_plain(
                    [{"role": "user", "content": [{"type": "text", "text": probe}]}], add_generation_prompt=True
                )
                self._typed_content = probe in out and "'type'" not in out and '"type"' not in out
            except ChatTemplateError:
                self._typed_content = False
        return self._typed_content

    @property
    def wants_object_arguments(self) -> bool:
        """Whether the template takes a tool call's `arguments` as an object (most apply `tojson` or iterate its
        items) rather than OpenAI's JSON string; decided once by rendering a probe call with an object."""
        if self._object_args is None:
            arguments = {"probe_key": "probe_value"}
            # A 9-character alphanumeric id: Mistral's templates reject any other shape.
            call = {"id": "probe0001", "type": "function", "function": {"name": "probe_tool", "arguments": arguments}}
            messages: list[dict[str, Any]] = [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "probe0001", "name": "probe_tool", "content": "done"},
            ]
            try:
                out = self._render_plain(messages, add_generation_prompt=True)
                self._object_args = "probe_value" in out and "'probe_key'" not in out
            except ChatTemplateError:
                self._object_args = False
        return self._object_args

    @property
    def supports_tools(self) -> bool:
        """Whether the template shows the `tools` it is given to the model (many simple templates ignore them)."""
        if self._tools is None:
            probe = "llamarcp_tool_probe"
            params = {
                "type": "object",
                "properties": {"text": {"type": "string", "description": probe}},
                "required": [],
            }
            tool = {"type": "function", "function": {"name": probe, "description": probe, "parameters": params}}
            try:
                out = self._render_plain([{"role": "user", "content": "hi"}], add_generation_prompt=True, tools=[tool])
                self._tools = probe in out
            except ChatTemplateError:
                self._tools = False
        return self._tools

    def render(
        self,
        messages: Iterable[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """Render `messages` (OpenAI shape) to prompt text.

        Extra keyword arguments become template variables (e.g. `enable_thinking=False`, `documents=[...]`).
        Content given as a list of text parts is joined with newlines when the template only handles strings.
        """
        msgs = normalize_messages(messages)
        if any(isinstance(m.get("content"), list) for m in msgs) and not self.supports_typed_content:
            for i, m in enumerate(msgs):
                if isinstance(m.get("content"), list):
                    m["content"] = _text_parts_joined(m["content"], f"messages[{i}].content")
        if any(m.get("tool_calls") for m in msgs):
            _convert_arguments(msgs, to_object=self.wants_object_arguments)
        extra = {k: _plain(v, k) for k, v in kwargs.items()}
        if tools is not None:
            extra["tools"] = _plain(list(tools), "tools")
        return self._render_plain(msgs, add_generation_prompt=add_generation_prompt, **extra)

    def _render_plain(self, messages: list[dict[str, Any]], **variables: Any) -> str:
        context: dict[str, Any] = {"bos_token": self.bos_token, "eos_token": self.eos_token, "messages": messages}
        context.update(variables)
        if self._now is not None:
            now = self._now
            context.setdefault("strftime_now", lambda fmt: now().strftime(fmt))
        try:
            with RenderBudget(self.render_timeout):
                pieces = []
                total = 0
                for piece in self._template.generate(context):
                    total += len(piece)
                    if total > MAX_RENDERED_CHARS:
                        raise ChatTemplateError(
                            f"chat template {self.name!r} produced more than {MAX_RENDERED_CHARS} characters"
                        )
                    pieces.append(piece)
                return "".join(pieces)
        except ChatTemplateError:
            raise
        except TemplateRaised as exc:
            raise ChatTemplateError(f"chat template {self.name!r} rejected the conversation: {exc}") from exc
        except SecurityError as exc:
            raise ChatTemplateSecurityError(f"chat template {self.name!r} was stopped by the sandbox: {exc}") from exc
        except RecursionError as exc:
            raise ChatTemplateError(f"chat template {self.name!r} recursed too deeply") from exc
        except MemoryError as exc:
            raise ChatTemplateSecurityError(f"chat template {self.name!r} ran out of memory: {exc}") from exc
        except Exception as exc:  # anything else the template's own code raised (TypeError, KeyError, ...)
            raise ChatTemplateError(f"chat template {self.name!r} failed: {type(exc).__name__}: {exc}") from exc


def formatter_for_model(
    metadata: Mapping[str, Any],
    bos_token: str = "",
    eos_token: str = "",
    *,
    chat_format: str | None = None,
    chat_template: str | None = None,
) -> ChatFormatter:
    """Pick the formatter for a model: explicit template > named format > GGUF template > a format guessed from
    the architecture (chatml when unknown)."""
    if chat_template is not None:
        return ChatFormatter(chat_template, bos_token, eos_token, name="chat_template")
    if chat_format is not None and chat_format != GGUF_TEMPLATE_FORMAT:  # that one names the GGUF's template
        return ChatFormatter.from_format(chat_format, bos_token, eos_token)
    source = metadata.get("tokenizer.chat_template")
    if isinstance(source, str) and source.strip():
        return ChatFormatter(source, bos_token, eos_token, name="tokenizer.chat_template")
    return ChatFormatter.from_format(guess_chat_format(metadata), bos_token, eos_token)
