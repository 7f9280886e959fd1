"""OpenAI's Responses API: `POST /v1/responses` (plain or streamed as typed events) and
`POST /v1/responses/input_tokens`, also at `/responses` like llama-server.

The request's `instructions` and `input` items (messages, function_call, function_call_output) become chat
messages for the same chat completion `/v1/chat/completions` runs; the answer comes back as output items
(`reasoning`, `message` with `output_text`, `function_call`). Nothing is stored: `previous_response_id` is
refused (send the conversation as input items instead).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal

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
from llamarcp.server.schemas import INT32_MAX

__all__ = ["add_responses_routes", "input_to_messages"]

MAX_ITEMS = 4096
MAX_PARTS = 1024
MAX_TOOLS = 128

_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


class _ResponsesBase(LlamaServerOptions):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str | None = None
    input: str | Annotated[list[dict[str, Any]], Field(max_length=MAX_ITEMS)]
    instructions: str | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: str | dict[str, Any] | None = None
    text: dict[str, Any] | None = Field(None, description="{'format': {'type': 'text'|'json_object'|'json_schema'}}")
    reasoning: dict[str, Any] | None = Field(None, description="{'effort': 'none'} turns thinking off")
    truncation: Literal["disabled"] = "disabled"


class ResponsesRequest(_ResponsesBase):
    max_output_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.95, ge=0.0, le=1.0)
    top_k: int = Field(40, ge=0, le=INT32_MAX)
    stream: bool = False
    previous_response_id: str | None = None


class InputTokensRequest(_ResponsesBase):
    pass


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or len(content) > MAX_PARTS:
        raise ApiError(400, f"{where} must be a string or a list of at most {MAX_PARTS} parts", param=where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("input_image", "input_file", "input_audio"):
            raise ApiError(400, f"{where}[{j}]: {kind} needs a multimodal model; this one reads text", param=where)
        else:
            raise ApiError(400, f"{where}[{j}]: unsupported content part type {kind!r}", param=f"{where}[{j}]")
    return "".join(texts)


def input_to_messages(instructions: str | None, items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`instructions` + `input` as chat messages; ApiError names the item that cannot be converted."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    if not items:
        raise ApiError(400, "input must not be empty", param="input")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise ApiError(400, f"{where}.role must be user, assistant, system or developer", param=f"{where}.role")
            text = _text(item.get("content"), f"{where}.content")
            messages.append({"role": "system" if role == "developer" else role, "content": text})
        elif kind == "function_call":
            name, arguments = item.get("name"), item.get("arguments", "")
            if not isinstance(name, str) or not isinstance(arguments, str):
                raise ApiError(400, f"{where}: a function_call needs a name and arguments (a JSON string)", param=where)
            call = {
                "id": str(item.get("call_id") or f"call_{uuid.uuid4().hex[:24]}"),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": str(item.get("call_id", "")),
                    "content": _text(output, f"{where}.output"),
                }
            )
        elif kind == "reasoning":
            continue  # the model's own earlier reasoning: not fed back (templates drop it too)
        else:
            raise ApiError(400, f"{where}.type {kind!r} is not supported", param=f"{where}.type")
    return messages


def to_chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    converted = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise ApiError(
                400, f"{where}: only function tools ({{'type': 'function', 'name': ...}}) are supported", param=where
            )
        parameters = tool.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise ApiError(400, f"{where}.parameters must be a JSON schema object", param=f"{where}.parameters")
        function: dict[str, Any] = {"name": tool["name"], "parameters": parameters}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        converted.append({"type": "function", "function": function})
    return converted


def to_chat_tool_choice(choice: str | dict[str, Any] | None) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise ApiError(
        400, "tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'name': ...}", param="tool_choice"
    )


def to_response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        return {"type": "json_schema", "json_schema": {"name": fmt.get("name", "output"), "schema": fmt["schema"]}}
    raise ApiError(400, "text.format must be text, json_object or json_schema with a schema", param="text.format")


def thinking_kwargs(reasoning: dict[str, Any] | None) -> dict[str, Any]:
    if not reasoning or reasoning.get("effort") is None:
        return {}
    effort = reasoning["effort"]
    if effort not in ("none", "minimal", "low", "medium", "high", "xhigh"):
        raise ApiError(
            400, "reasoning.effort must be none, minimal, low, medium, high or xhigh", param="reasoning.effort"
        )
    return {"enable_thinking": effort != "none"}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    n_in, n_out = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {
        "input_tokens": n_in,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": n_out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": n_in + n_out,
    }


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [part]}


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": text}]}


def _call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    call_id = str(call.get("id") or _new_id("call"))
    return {
        "id": f"fc_{call_id}",
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": function.get("name", ""),
        "arguments": function.get("arguments", ""),
    }


class _Shape:
    """The fields every response object of one request repeats (echoing the request, as OpenAI does)."""

    def __init__(self, body: ResponsesRequest, model: str, max_tokens: int | None) -> None:
        self.id = _new_id("resp")
        self.created = int(time.time())
        self.fields: dict[str, Any] = {
            "model": model,
            "instructions": body.instructions,
            "max_output_tokens": max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "tools": body.tools or [],
            "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
            "parallel_tool_calls": True,
            "text": body.text or {"format": {"type": "text"}},
            "truncation": body.truncation,
            "metadata": {},
            "error": None,
        }

    def response(
        self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None, finish_reason: str | None
    ) -> dict[str, Any]:
        incomplete = {"reason": "max_output_tokens"} if finish_reason == "length" else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": "incomplete" if incomplete and status == "completed" else status,
            "incomplete_details": incomplete,
            "output": output,
            "usage": _usage(usage) if usage is not None else None,
            **self.fields,
        }


def to_response(result: dict[str, Any], shape: _Shape) -> dict[str, Any]:
    choice = result["choices"][0]
    message = choice["message"]
    output: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        output.append(_reasoning_item(_new_id("rs"), message["reasoning_content"]))
    if message.get("content"):
        output.append(_message_item(_new_id("msg"), message["content"]))
    output.extend(_call_item(call) for call in message.get("tool_calls") or [])
    return shape.response("completed", output, result.get("usage"), choice.get("finish_reason"))


class ResponsesEncoder(StreamEncoder):
    """OpenAI chat chunks -> Responses API stream events (each item added, filled, then done, in order)."""

    def __init__(self, shape: _Shape) -> None:
        self.shape = shape
        self.sequence = 0
        self.started = False
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.open_text = ""
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None

    def _event(self, kind: str, **data: Any) -> dict[str, str]:
        body = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return {"event": kind, "data": json.dumps(body, ensure_ascii=False)}

    def _start(self) -> list[dict[str, str]]:
        self.started = True
        snapshot = self.shape.response("in_progress", [], None, None)
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def _close(self) -> list[dict[str, str]]:
        item = self.open
        if item is None:
            return []
        self.open = None
        index = len(self.output)
        text = self.open_text
        if item["type"] == "message":
            done = _message_item(item["id"], text)
            part = done["content"][0]
            events = [
                self._event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=text,
                    logprobs=[],
                ),
                self._event(
                    "response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part
                ),
            ]
        else:
            done = _reasoning_item(item["id"], text)
            events = [
                self._event(
                    "response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0, text=text
                )
            ]
        self.output.append(done)
        events.append(self._event("response.output_item.done", output_index=index, item=done))
        return events

    def _open(self, kind: str) -> list[dict[str, str]]:
        events = self._close()
        index = len(self.output)
        self.open_text = ""
        if kind == "message":
            self.open = {
                "id": _new_id("msg"),
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            events.append(self._event("response.output_item.added", output_index=index, item=self.open))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=self.open["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            )
        else:
            self.open = {"id": _new_id("rs"), "type": "reasoning", "summary": [], "content": []}
            events.append(self._event("response.output_item.added", output_index=index, item=self.open))
        return events

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, str]]:
        events = [] if self.started else self._start()
        choice = chunk["choices"][0] if chunk.get("choices") else {}
        delta = choice.get("delta") or {}
        for kind, key, event in (
            ("reasoning", "reasoning_content", "response.reasoning_text.delta"),
            ("message", "content", "response.output_text.delta"),
        ):
            piece = delta.get(key)
            if not piece:
                continue
            if self.open is None or self.open["type"] != kind:
                events += self._open(kind)
            assert self.open is not None
            self.open_text += piece
            extra: dict[str, Any] = {"logprobs": []} if kind == "message" else {}
            events.append(
                self._event(
                    event, item_id=self.open["id"], output_index=len(self.output), content_index=0, delta=piece, **extra
                )
            )
        calls = delta.get("tool_calls") or []
        if calls:
            events += self._close()
        for call in calls:
            index = len(self.output)
            added = _call_item(call, status="in_progress")
            done = dict(added, status="completed")
            added["arguments"] = ""
            events.append(self._event("response.output_item.added", output_index=index, item=added))
            if done["arguments"]:
                events.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=done["id"],
                        output_index=index,
                        delta=done["arguments"],
                    )
                )
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=done["id"],
                    output_index=index,
                    name=done["name"],
                    arguments=done["arguments"],
                )
            )
            self.output.append(done)
            events.append(self._event("response.output_item.done", output_index=index, item=done))
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        return events

    def done(self) -> list[dict[str, str]]:
        events = ([] if self.started else self._start()) + self._close()
        final = self.shape.response("completed", self.output, self.usage, self.finish_reason)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        events.append(self._event(kind, response=final))
        return events

    def error(self, message: str, type_: str, code: str | None) -> list[dict[str, str]]:
        return [self._event("error", code=code or type_, message=message, param=None)]


def add_responses_routes(app: FastAPI, dispatcher: Dispatcher, require_key: Callable[..., Any]) -> None:
    pool = dispatcher.pool
    cap = dispatcher.settings.n_predict
    guarded: list[Any] = [Depends(require_key)]

    async def create(body: ResponsesRequest, request: Request) -> Any:
        refuse_unknown_fields(body)
        if body.previous_response_id is not None:
            raise ApiError(
                400,
                "previous_response_id is not supported: no responses are stored; send the conversation as input",
                param="previous_response_id",
            )
        entry = pool.resolve(body.model)
        messages = input_to_messages(body.instructions, body.input)
        tools = to_chat_tools(body.tools)
        tool_choice = to_chat_tool_choice(body.tool_choice)
        response_format = to_response_format(body.text)
        max_tokens = max_tokens_for(body.max_output_tokens, "max_output_tokens", cap)
        template_kwargs = template_kwargs_for(
            entry, {**thinking_kwargs(body.reasoning), **(body.chat_template_kwargs or {})}
        )
        shape = _Shape(body, entry.model_id, body.max_output_tokens)
        slot = slot_options(body, entry)

        def kwargs() -> dict[str, Any]:
            return chat_kwargs(
                body,
                entry,
                max_tokens=max_tokens,
                tools=tools,
                tool_choice=tool_choice,
                response_format=response_format,
                template_kwargs=template_kwargs,
            )

        result = await generate_in_slot(
            dispatcher,
            request,
            entry,
            slot,
            lambda **extra: create_chat_completion(entry.llama, messages, **extra, **kwargs()),
            stream=bool(body.stream),
            encoder=ResponsesEncoder(shape),
        )
        return result if body.stream else JSONResponse(to_response(result, shape))

    async def input_tokens(body: InputTokensRequest) -> dict[str, Any]:
        refuse_unknown_fields(body)
        entry = pool.resolve(body.model)
        messages = input_to_messages(body.instructions, body.input)
        tools = to_chat_tools(body.tools)
        to_chat_tool_choice(body.tool_choice)
        template_kwargs = template_kwargs_for(
            entry, {**thinking_kwargs(body.reasoning), **(body.chat_template_kwargs or {})}
        )
        tokens = await dispatcher.on_model(
            entry, lambda _llama: chat_prompt_tokens(entry, messages, tools, template_kwargs)
        )
        return {"object": "response.input_tokens", "input_tokens": len(tokens)}

    for path in ("/v1/responses", "/responses"):
        app.post(path, dependencies=guarded, include_in_schema=path.startswith("/v1"))(create)
    for path in ("/v1/responses/input_tokens", "/responses/input_tokens"):
        app.post(path, dependencies=guarded, include_in_schema=path.startswith("/v1"))(input_tokens)
