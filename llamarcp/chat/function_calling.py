"""`chatml-function-calling`: tool use for any ChatML-style model, driven by grammars (llama-cpp-python's handler).

The system message lists the tools; the model answers either `message:` followed by text, or one or more
`functions.<name>:` lines each followed by the JSON arguments. llamarcp steers every step with a grammar:
which of the two (or which tool), then the arguments (constrained by that tool's JSON Schema), then whether
another call follows. A named `tool_choice` skips straight to that tool's arguments.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from llamarcp.chat.grammars import JSON_OBJECT_GRAMMAR, json_schema_grammar
from llamarcp.chat.templates import ChatFormatter
from llamarcp.errors import ChatMessageError

__all__ = ["MAX_TOOL_CALLS", "chatml_function_calling", "completion_to_tool_call", "legacy_to_tools"]

#: Most calls one reply may make (each needs a further decode round; a model could otherwise loop forever).
MAX_TOOL_CALLS = 16

_TEMPLATE = """\
{%- for message in messages -%}
{%- if message.role == 'system' -%}
<|im_start|>system
{{ message.content or '' }}
{%- if tools %}

Tools you can call (arguments are JSON matching each schema):
{% for tool in tools %}
functions.{{ tool.function.name }}:
{{ (tool.function.parameters or {}) | tojson }}
{% endfor %}
Reply in one of two ways.
To answer in words, start with 'message:' on its own line, then the answer:

message:
<the answer>

To call tools, write one block per call, each a 'functions.<name>:' line followed by the JSON arguments:

functions.<name>:
{"argument": "value"}
{%- endif %}<|im_end|>
{% elif message.role == 'user' -%}
<|im_start|>user
{{ message.content or '' }}<|im_end|>
{% elif message.role == 'assistant' -%}
<|im_start|>assistant
{% if message.content %}{% if tools %}message:
{% endif %}{{ message.content }}{% endif %}
{%- for call in message.tool_calls or [] -%}
functions.{{ call.function.name }}:
{{ call.function.arguments }}
{% endfor %}<|im_end|>
{% elif message.role == 'tool' or message.role == 'function' -%}
<|im_start|>user
Result of the call{{ ' ' ~ message.name if message.name else '' }}: {{ message.content or '' }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}
"""

_END = "<|im_end|>"


def _lit(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def legacy_to_tools(functions: Any, function_call: Any, tools: Any, tool_choice: Any) -> tuple[Any, Any]:
    """OpenAI's older `functions`/`function_call` as `tools`/`tool_choice`."""
    if functions is not None:
        tools = [{"type": "function", "function": f} for f in functions]
    if isinstance(function_call, str) and function_call in ("none", "auto"):
        tool_choice = function_call
    elif isinstance(function_call, Mapping) and "name" in function_call:
        tool_choice = {"type": "function", "function": {"name": function_call["name"]}}
    return tools, tool_choice


def _schema_grammar(tool: Mapping[str, Any]) -> str:
    schema = tool["function"].get("parameters")
    return json_schema_grammar(schema) if isinstance(schema, Mapping) and schema else JSON_OBJECT_GRAMMAR


def _format_grammar(response_format: Mapping[str, Any]) -> str:
    """The grammar of a json_object / json_schema `response_format`."""
    wrapper = response_format.get("json_schema")
    schema = wrapper.get("schema") if isinstance(wrapper, Mapping) else response_format.get("schema")
    return json_schema_grammar(schema) if isinstance(schema, Mapping) else JSON_OBJECT_GRAMMAR


def _call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _tool_call_response(calls: Sequence[tuple[str, str]], model: str, usage: dict[str, int]) -> dict[str, Any]:
    tool_calls: list[dict[str, Any]] = [
        {"id": _call_id(), "type": "function", "function": {"name": name, "arguments": args}} for name, args in calls
    ]
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": tool_calls,
                    "function_call": dict(tool_calls[0]["function"]),
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": usage,
    }


def _as_chunks(response: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A finished tool-call response as the chunks a stream of it would have had."""
    base: dict[str, Any] = {k: response[k] for k in ("id", "created", "model")}
    base["object"] = "chat.completion.chunk"
    message: dict[str, Any] = response["choices"][0]["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    yield chunk({"role": "assistant", "content": None})
    yield chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]})
    yield chunk({"function_call": message["function_call"]})
    final = chunk({}, "tool_calls")
    final["usage"] = response["usage"]
    yield final


def completion_to_tool_call(tool_name: str, completion: Any, stream: bool) -> Any:
    """A completion of a tool's arguments (dict or chunks) as a chat completion calling that tool."""
    if stream:
        parts = list(completion)
        text = "".join(p["choices"][0]["text"] for p in parts)
        usage: dict[str, int] = next((p["usage"] for p in reversed(parts) if "usage" in p), {})
        model = parts[-1]["model"] if parts else ""
        return _as_chunks(_tool_call_response([(tool_name, text)], model, usage))
    return _tool_call_response(
        [(tool_name, completion["choices"][0]["text"])], completion["model"], completion["usage"]
    )


def _logprobs_to_chat(lp: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Completion-style logprobs -> chat-style `{"content": [{token, logprob, bytes, top_logprobs}]}`."""
    if not lp:
        return None
    tops = lp.get("top_logprobs") or [{} for _ in lp.get("tokens", [])]
    content = [
        {
            "token": token,
            "logprob": logprob,
            "bytes": list(token.encode("utf-8")),
            "top_logprobs": [
                {"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))} for t, v in (top or {}).items()
            ],
        }
        for token, logprob, top in zip(lp.get("tokens", []), lp.get("token_logprobs", []), tops)
    ]
    return {"content": content}


def _message_response(completion: Any, stream: bool) -> Any:
    """A plain completion (dict, or its chunks) as a chat completion with an assistant message."""
    if not stream:
        choice = completion["choices"][0]
        return {
            "id": "chat" + completion["id"],
            "object": "chat.completion",
            "created": completion["created"],
            "model": completion["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": choice["text"]},
                    "logprobs": _logprobs_to_chat(choice.get("logprobs")),
                    "finish_reason": choice["finish_reason"],
                }
            ],
            "usage": completion["usage"],
        }
    return _message_chunks(completion)


def _message_chunks(chunks: Iterator[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    first = True
    try:
        for part in chunks:
            base = {"id": "chat" + part["id"], "object": "chat.completion.chunk", "created": part["created"]}
            base["model"] = part["model"]
            if first:
                yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None}]}  # fmt: skip
                first = False
            choice = part["choices"][0]
            delta = {"content": choice["text"]} if choice["text"] else {}
            out = {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": _logprobs_to_chat(choice.get("logprobs")),
                        "finish_reason": choice["finish_reason"],
                    }
                ],
            }
            if "usage" in part:
                out["usage"] = part["usage"]
            if delta or choice["finish_reason"] is not None:
                yield out
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _add_usage(total: dict[str, int], completion: Mapping[str, Any]) -> None:
    usage = completion.get("usage") or {}
    total["prompt_tokens"] = max(total.get("prompt_tokens", 0), int(usage.get("prompt_tokens", 0)))
    total["completion_tokens"] = total.get("completion_tokens", 0) + int(usage.get("completion_tokens", 0))
    total["total_tokens"] = total["prompt_tokens"] + total["completion_tokens"]


def chatml_function_calling(
    llama: Any,
    messages: Sequence[Mapping[str, Any]],
    functions: Any = None,
    function_call: Any = None,
    tools: Any = None,
    tool_choice: Any = None,
    temperature: float = 0.2,
    top_p: float = 0.95,
    top_k: int = 40,
    min_p: float = 0.05,
    typical_p: float = 1.0,
    stream: bool = False,
    stop: str | list[str] | None = None,
    response_format: Any = None,
    max_tokens: int | None = None,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    repeat_penalty: float = 1.1,
    tfs_z: float = 1.0,
    mirostat_mode: int = 0,
    mirostat_tau: float = 5.0,
    mirostat_eta: float = 0.1,
    model: str | None = None,
    logits_processor: Any = None,
    grammar: Any = None,
    logprobs: bool | None = None,
    top_logprobs: int | None = None,
    **kwargs: Any,
) -> Any:
    """Chat completion with tools for ChatML models (llama-cpp-python's `chatml-function-calling` handler).

    `tool_choice`: "none" (plain answer), "auto" (the default when tools are given: answer or call),
    "required" (must call), or `{"type": "function", "function": {"name": ...}}` (call that tool).
    """
    tools, tool_choice = legacy_to_tools(functions, function_call, tools, tool_choice)
    tools = list(tools or [])
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or not isinstance((tool.get("function") or {}).get("name"), str):
            raise ChatMessageError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    stops.append(_END)
    common: dict[str, Any] = {
        "top_p": top_p,
        "top_k": top_k,
        "min_p": min_p,
        "typical_p": typical_p,
        "presence_penalty": presence_penalty,
        "frequency_penalty": frequency_penalty,
        "repeat_penalty": repeat_penalty,
        "mirostat_mode": mirostat_mode,
        "mirostat_tau": mirostat_tau,
        "mirostat_eta": mirostat_eta,
        "model": model,
        "logits_processor": logits_processor,
    }
    if kwargs.get("seed") is not None:
        common["seed"] = kwargs["seed"]
    msgs = [dict(m) for m in messages]
    if tools and tool_choice != "none" and not any(m.get("role") == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": "You are a helpful assistant."})
    formatter = ChatFormatter(_TEMPLATE, name="chatml-function-calling", stop=(_END,))

    if not tools or tool_choice == "none":
        prompt = formatter.render(msgs, add_generation_prompt=True, tools=[])
        if isinstance(response_format, Mapping) and response_format.get("type") in ("json_object", "json_schema"):
            grammar = _format_grammar(response_format)
        completion = llama.create_completion(
            prompt, temperature=temperature, stream=stream, stop=stops, max_tokens=max_tokens, grammar=grammar,
            logprobs=top_logprobs if logprobs else None, **common,
        )  # fmt: skip
        return _message_response(completion, stream)

    prompt = formatter.render(msgs, add_generation_prompt=True, tools=tools)
    by_name = {t["function"]["name"]: t for t in tools}
    if isinstance(tool_choice, Mapping):
        name = (tool_choice.get("function") or {}).get("name")
        if not isinstance(name, str) or name not in by_name:
            raise ChatMessageError(f"tool_choice names {name!r}, which is not one of the tools")
        completion = llama.create_completion(
            prompt + f"functions.{name}:\n", temperature=temperature, stream=stream, stop=stops,
            max_tokens=max_tokens, grammar=_schema_grammar(by_name[name]), **common,
        )  # fmt: skip
        return completion_to_tool_call(name, completion, stream)
    if tool_choice not in (None, "auto", "required"):
        raise ChatMessageError(f"tool_choice must be 'auto', 'none', 'required' or a function, got {tool_choice!r}")

    names = " | ".join(_lit(f"functions.{n}:") for n in by_name)
    first = f"root ::= {names}" if tool_choice == "required" else f'root ::= "message:" | {names}'
    decision = llama.create_completion(prompt, temperature=0.0, max_tokens=64, grammar=first, **common)
    choice = decision["choices"][0]["text"]
    if not choice.startswith("functions."):
        completion = llama.create_completion(
            prompt + "message:\n", temperature=temperature, stream=stream, stop=stops, max_tokens=max_tokens,
            logprobs=top_logprobs if logprobs else None, **common,
        )  # fmt: skip
        return _message_response(completion, stream)

    usage: dict[str, int] = {}
    _add_usage(usage, decision)
    calls: list[tuple[str, str]] = []
    name = choice[len("functions.") :].rstrip(":")
    following = f'root ::= {names} | "{_END[0]}"'  # another call, or anything else (= done)
    while name in by_name and len(calls) < MAX_TOOL_CALLS:
        prompt += f"functions.{name}:\n"
        args = llama.create_completion(
            prompt, temperature=temperature, stop=stops, max_tokens=max_tokens, grammar=_schema_grammar(by_name[name]),
            **common,
        )  # fmt: skip
        _add_usage(usage, args)
        text = args["choices"][0]["text"].strip()
        calls.append((name, text))
        prompt += text + "\n"
        if args["choices"][0]["finish_reason"] == "length":
            break
        nxt = llama.create_completion(prompt, temperature=0.0, max_tokens=64, grammar=following, **common)
        _add_usage(usage, nxt)
        following_text = nxt["choices"][0]["text"]
        if not following_text.startswith("functions."):
            break
        name = following_text[len("functions.") :].rstrip(":")
    response = _tool_call_response(calls, decision["model"], usage)
    return _as_chunks(response) if stream else response
