"""Anthropic's Messages API: `POST /v1/messages` (plain or streamed, with tool use and thinking blocks) and
`POST /v1/messages/count_tokens`, as llama-server serves them.

A request is converted to an OpenAI chat request (system prompt, content blocks, tool_use / tool_result
blocks, tools, tool_choice) and runs through the same chat completion as `/v1/chat/completions`; the answer
is converted back: content blocks `thinking`, `text`, `tool_use`, and `stop_reason` end_turn / max_tokens /
tool_use. Streams follow Anthropic's event sequence (message_start, content_block_start/delta/stop,
message_delta, message_stop).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field

from llamarcp.chat import create_chat_completion
from llamarcp.server.chat_prompt import chat_prompt_tokens, template_kwargs_for
from llamarcp.server.dispatch import Dispatcher, StreamEncoder
from llamarcp.server.errors import ApiError
from llamarcp.server.params import max_tokens_for, refuse_unknown_fields
from llamarcp.server.request_options import (
    LlamaServerOptions,
    chat_kwargs,
    generate_in_slot,
    slot_options,
)
from llamarcp.server.schemas import INT32_MAX, MAX_STOP_CHARS, MAX_STOP_STRINGS

__all__ = ["add_anthropic_routes", "to_openai_messages"]

#: Bounds on what one request may carry (a body is bounded in bytes already; these bound the work per item).
MAX_MESSAGES = 4096
MAX_BLOCKS = 1024
MAX_TOOLS = 128

_Stop = Annotated[list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOP_STRINGS)]


class _MessagesBase(LlamaServerOptions):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str | None = None
    messages: Annotated[list[dict[str, Any]], Field(max_length=MAX_MESSAGES)]
    system: str | Annotated[list[dict[str, Any]], Field(max_length=MAX_BLOCKS)] | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = Field(
        None, description="{'type': 'enabled'|'disabled'}: sets the template's enable_thinking"
    )
    output_config: dict[str, Any] | None = Field(
        None, description="{'format': {'type': 'json_schema', 'schema': ...}} constrains the answer (effort: ignored)"
    )


class MessagesRequest(_MessagesBase):
    max_tokens: int = Field(ge=1, le=INT32_MAX)
    stop_sequences: _Stop | None = None
    stream: bool = False
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.95, ge=0.0, le=1.0)
    top_k: int = Field(40, ge=0, le=INT32_MAX)


class CountTokensRequest(_MessagesBase):
    pass


def _text_of(blocks: Any, where: str) -> str:
    """The text of a string or of a list of text blocks (what system prompts and tool results hold)."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise ApiError(400, f"{where} must be a string or a list of text blocks", param=where)
    parts = []
    for j, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise ApiError(400, f"{where}[{j}] must be a text block {{'type': 'text', 'text': ...}}", param=where)
        parts.append(block["text"])
    return "".join(parts)


def to_openai_messages(system: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic's system + messages as OpenAI chat messages (llama-server's conversion); ApiError names the
    field of anything that cannot be converted."""
    out: list[dict[str, Any]] = []
    if system is not None:
        out.append({"role": "system", "content": _text_of(system, "system")})
    if not messages:
        raise ApiError(400, "messages must not be empty", param="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise ApiError(400, f"{where}.role must be 'user' or 'assistant', got {role!r}", param=f"{where}.role")
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list) or len(content) > MAX_BLOCKS:
            raise ApiError(
                400, f"{where}.content must be a string or a list of at most {MAX_BLOCKS} blocks", param=where
            )
        texts: list[str] = []
        reasoning: list[str] = []
        calls: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "thinking" and isinstance(block.get("thinking"), str):
                reasoning.append(block["thinking"])
            elif kind == "redacted_thinking":
                continue  # opaque to anything but Anthropic's own models
            elif kind == "tool_use" and role == "assistant":
                name, arguments = block.get("name"), block.get("input", {})
                if not isinstance(name, str) or not isinstance(arguments, dict):
                    raise ApiError(400, f"{at}: a tool_use block needs a name and an input object", param=at)
                calls.append(
                    {
                        "id": str(block.get("id") or f"toolu_{uuid.uuid4().hex[:24]}"),
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
                    }
                )
            elif kind == "tool_result" and role == "user":
                result = block.get("content", "")
                text = _text_of(result, f"{at}.content") if result is not None else ""
                if block.get("is_error"):
                    text = f"Error: {text}"
                results.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": text})
            elif kind in ("image", "document"):
                raise ApiError(400, f"{at}: {kind} blocks need a multimodal model; this one reads text", param=at)
            else:
                raise ApiError(400, f"{at}: unsupported content block type {kind!r} for role {role}", param=at)
        if texts or calls or reasoning:
            converted: dict[str, Any] = {"role": role, "content": "".join(texts)}
            if calls:
                converted["tool_calls"] = calls
            if reasoning:
                converted["reasoning_content"] = "".join(reasoning)
            out.append(converted)
        out.extend(results)
    return out


def to_openai_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    converted = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        name = tool.get("name")
        kind = tool.get("type", "custom")
        if kind not in ("custom", None) or not isinstance(name, str) or not name:
            raise ApiError(
                400, f"{where}: only client tools with a name and an input_schema are supported", param=where
            )
        schema = tool.get("input_schema", {"type": "object"})
        if not isinstance(schema, dict):
            raise ApiError(400, f"{where}.input_schema must be a JSON schema object", param=f"{where}.input_schema")
        function: dict[str, Any] = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        converted.append({"type": "function", "function": function})
    return converted


def to_openai_tool_choice(choice: dict[str, Any] | None) -> Any:
    if choice is None:
        return None
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise ApiError(
        400, "tool_choice must be {'type': 'auto'|'any'|'none'} or {'type': 'tool', 'name': ...}", param="tool_choice"
    )


def thinking_kwargs(thinking: dict[str, Any] | None) -> dict[str, Any]:
    if thinking is None:
        return {}
    kind = thinking.get("type")
    if kind not in ("enabled", "disabled", "adaptive"):
        raise ApiError(400, "thinking.type must be 'enabled', 'disabled' or 'adaptive'", param="thinking.type")
    return {"enable_thinking": kind != "disabled"}


def response_format_of(output_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """Anthropic's structured output (`output_config.format`) as an OpenAI response_format."""
    fmt = (output_config or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise ApiError(
            400, "output_config.format must be {'type': 'json_schema', 'schema': {...}}", param="output_config.format"
        )
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


def _stop_reason(finish_reason: str | None) -> str:
    if finish_reason in ("tool_calls", "function_call"):
        return "tool_use"
    if finish_reason == "length":
        return "max_tokens"
    return "end_turn"


def _tool_input(arguments: str) -> Any:
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def to_anthropic_message(result: dict[str, Any], message_id: str) -> dict[str, Any]:
    """An OpenAI chat completion as an Anthropic message."""
    choice = result["choices"][0]
    message = choice["message"]
    blocks: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        blocks.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if message.get("content"):
        blocks.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call["function"]
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": function["name"],
                "input": _tool_input(function["arguments"]),
            }
        )
    usage = result.get("usage") or {}
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "content": blocks,
        "model": result.get("model"),
        "stop_reason": _stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": {
            "input_tokens": int(usage.get("prompt_tokens", 0)),
            "output_tokens": int(usage.get("completion_tokens", 0)),
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    }


def _event(kind: str, data: dict[str, Any]) -> dict[str, str]:
    return {"event": kind, "data": json.dumps({"type": kind, **data}, ensure_ascii=False)}


class AnthropicEncoder(StreamEncoder):
    """OpenAI chat chunks -> Anthropic stream events; blocks are opened in order and closed before the next."""

    def __init__(self, message_id: str, model: str) -> None:
        self.message_id = message_id
        self.model = model
        self.started = False
        self.index = -1
        self.open_kind: str | None = None
        self.stop_reason = "end_turn"
        self.usage: dict[str, int] = {"input_tokens": 0, "output_tokens": 0}

    def _start(self) -> list[dict[str, str]]:
        self.started = True
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [_event("message_start", {"message": message})]

    def _close(self) -> list[dict[str, str]]:
        if self.open_kind is None:
            return []
        self.open_kind = None
        return [_event("content_block_stop", {"index": self.index})]

    def _open(self, kind: str, block: dict[str, Any]) -> list[dict[str, str]]:
        events = self._close()
        self.index += 1
        self.open_kind = kind
        events.append(_event("content_block_start", {"index": self.index, "content_block": block}))
        return events

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, str]]:
        events = [] if self.started else self._start()
        choice = chunk["choices"][0] if chunk.get("choices") else {}
        delta = choice.get("delta") or {}
        if delta.get("reasoning_content"):
            if self.open_kind != "thinking":
                events += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            delta_body = {"type": "thinking_delta", "thinking": delta["reasoning_content"]}
            events.append(_event("content_block_delta", {"index": self.index, "delta": delta_body}))
        if delta.get("content"):
            if self.open_kind != "text":
                events += self._open("text", {"type": "text", "text": ""})
            delta_body = {"type": "text_delta", "text": delta["content"]}
            events.append(_event("content_block_delta", {"index": self.index, "delta": delta_body}))
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            block = {"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", ""), "input": {}}
            events += self._open("tool_use", block)
            arguments = function.get("arguments") or ""
            if arguments:
                delta_body = {"type": "input_json_delta", "partial_json": arguments}
                events.append(_event("content_block_delta", {"index": self.index, "delta": delta_body}))
        if choice.get("finish_reason") is not None:
            self.stop_reason = _stop_reason(choice["finish_reason"])
        usage = chunk.get("usage")
        if usage:
            self.usage = {
                "input_tokens": int(usage.get("prompt_tokens", 0)),
                "output_tokens": int(usage.get("completion_tokens", 0)),
            }
        return events

    def done(self) -> list[dict[str, str]]:
        events = ([] if self.started else self._start()) + self._close()
        events.append(
            _event(
                "message_delta",
                {"delta": {"stop_reason": self.stop_reason, "stop_sequence": None}, "usage": self.usage},
            )
        )
        events.append(_event("message_stop", {}))
        return events

    def error(self, message: str, type_: str, code: str | None) -> list[dict[str, str]]:
        kind = "api_error" if type_ == "server_error" else type_
        return [{"event": "error", "data": json.dumps({"type": "error", "error": {"type": kind, "message": message}})}]


def add_anthropic_routes(app: FastAPI, dispatcher: Dispatcher, require_key: Callable[..., Any]) -> None:
    pool = dispatcher.pool
    cap = dispatcher.settings.n_predict
    guarded: list[Any] = [Depends(require_key)]

    @app.post("/v1/messages", dependencies=guarded)
    async def messages(body: MessagesRequest, request: Request) -> Any:
        refuse_unknown_fields(body)
        entry = pool.resolve(body.model)
        openai_messages = to_openai_messages(body.system, body.messages)
        tools = to_openai_tools(body.tools)
        tool_choice = to_openai_tool_choice(body.tool_choice)
        max_tokens = max_tokens_for(body.max_tokens, "max_tokens", cap)
        template_kwargs = template_kwargs_for(
            entry, {**thinking_kwargs(body.thinking), **(body.chat_template_kwargs or {})}
        )
        response_format = response_format_of(body.output_config)
        message_id = f"msg_{uuid.uuid4().hex[:24]}"

        def kwargs() -> dict[str, Any]:
            return chat_kwargs(
                body,
                entry,
                max_tokens=max_tokens,
                tools=tools,
                tool_choice=tool_choice,
                response_format=response_format,
                template_kwargs=template_kwargs,
                stop=body.stop_sequences,
            )

        slot = slot_options(body, entry)
        result = await generate_in_slot(
            dispatcher,
            request,
            entry,
            slot,
            lambda **extra: create_chat_completion(entry.llama, openai_messages, **extra, **kwargs()),
            stream=bool(body.stream),
            encoder=AnthropicEncoder(message_id, entry.model_id),
        )
        return result if body.stream else JSONResponse(to_anthropic_message(result, message_id))

    @app.post("/v1/messages/count_tokens", dependencies=guarded)
    async def count_tokens(body: CountTokensRequest) -> dict[str, Any]:
        refuse_unknown_fields(body)
        entry = pool.resolve(body.model)
        openai_messages = to_openai_messages(body.system, body.messages)
        tools = to_openai_tools(body.tools)
        to_openai_tool_choice(body.tool_choice)
        template_kwargs = template_kwargs_for(
            entry, {**thinking_kwargs(body.thinking), **(body.chat_template_kwargs or {})}
        )
        tokens = await dispatcher.on_model(
            entry, lambda _llama: chat_prompt_tokens(entry, openai_messages, tools, template_kwargs)
        )
        return {"input_tokens": len(tokens)}
