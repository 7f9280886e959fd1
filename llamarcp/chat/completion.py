"""`create_chat_completion`: OpenAI-shaped chat on top of `Llama.create_completion`.

The conversation is rendered with the model's chat template (sandboxed, see templates.py), tokenized with special
tokens parsed, and completed; the reply becomes a `chat.completion` dict or `chat.completion.chunk` stream.
`response_format` (json_object / json_schema) and forced tool calls are enforced with GBNF grammars.
"""

from __future__ import annotations

import json
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from llamarcp.chat.grammars import JSON_OBJECT_GRAMMAR, json_schema_grammar, tool_call_grammar
from llamarcp.chat.handlers import FUNCTION_CALLING, registered
from llamarcp.chat.templates import ChatFormatter, formatter_for_model, normalize_messages
from llamarcp.chat.tools import parse_tool_calls, tool_names
from llamarcp.errors import ChatMessageError, ChatTemplateError
from llamarcp.multimodal import chat_tokenizer

__all__ = [
    "LEGACY_FORMAT_NAMES",
    "ThinkSplitter",
    "chat_formatter",
    "completion_to_chat",
    "create_chat_completion",
    "render_chat_prompt",
    "tools_system_prompt",
]

# One formatter per (Llama, format, template): compiling and probing a template once, not per request.
_FORMATTERS: weakref.WeakKeyDictionary[Any, dict[tuple[str | None, str | None], ChatFormatter]] = (
    weakref.WeakKeyDictionary()
)

#: llama-cpp-python's older format names, defined in legacy_formats.py (imported when one is asked for).
LEGACY_FORMAT_NAMES = frozenset(
    {
        "qwen", "oasst_llama", "baichuan-2", "baichuan", "openbuddy", "redpajama-incite", "snoozy", "phind",
        "intel", "open-orca", "mistrallite", "pygmalion", "chatglm3", "openchat", "saiga",
    }
)  # fmt: skip

# Prefixes that may open a tool call; while streaming with tools, text starting like this is held back.
_TOOL_MARKERS = ("<tool_call>", "[TOOL_CALLS]", "{", "[", "functools", "<|python_tag|>")


def _token_text(llama: Any, token: int) -> str:
    if token is None or token < 0:
        return ""
    return bytes(llama.detokenize([token], special=True)).decode("utf-8", errors="replace")


def chat_formatter(llama: Any, chat_format: str | None = None, chat_template: str | None = None) -> ChatFormatter:
    """The formatter `llama` uses: explicit template > chat_format (argument, then `Llama(chat_format=)`) >
    the GGUF's `tokenizer.chat_template` > chatml."""
    if chat_format is None and chat_template is None:
        chat_format = getattr(llama, "chat_format", None)
    per_model = _FORMATTERS.setdefault(llama, {})
    key = (chat_format, chat_template)
    formatter = per_model.get(key)
    if formatter is None:
        if chat_format in LEGACY_FORMAT_NAMES:  # registered on first use: compiling them all costs ~70 ms
            import llamarcp.chat.legacy_formats  # noqa: F401
        metadata = dict(llama.metadata)
        gguf_template = llama.chat_template() if hasattr(llama, "chat_template") else None
        if gguf_template:
            metadata["tokenizer.chat_template"] = gguf_template
        formatter = formatter_for_model(
            metadata,
            _token_text(llama, int(llama.token_bos)),
            _token_text(llama, int(llama.token_eos)),
            chat_format=chat_format,
            chat_template=chat_template,
        )
        per_model[key] = formatter
    return formatter


def _legacy_functions(
    functions: Sequence[Mapping[str, Any]] | None, function_call: Any
) -> tuple[list[dict[str, Any]] | None, Any]:
    tools = [{"type": "function", "function": dict(f)} for f in functions] if functions else None
    if isinstance(function_call, Mapping):
        choice: Any = {"type": "function", "function": {"name": function_call.get("name")}}
    else:
        choice = function_call
    return tools, choice


def _select_tools(tools: list[dict[str, Any]] | None, tool_choice: Any) -> tuple[list[dict[str, Any]] | None, bool]:
    """(tools to offer, whether a call is forced) for OpenAI's tool_choice values."""
    if tools is not None and (not tool_names(tools) or len(tool_names(tools)) != len(tools)):
        raise ChatMessageError("tools must be a non-empty list of {'type': 'function', 'function': {'name': ...}}")
    if tool_choice is None or tool_choice == "auto":
        return tools, False
    if tool_choice == "none":
        return None, False
    if tools is None:
        raise ChatMessageError("tool_choice needs tools")
    if tool_choice == "required":
        return tools, True
    if isinstance(tool_choice, Mapping):
        name = (tool_choice.get("function") or {}).get("name")
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise ChatMessageError(f"tool_choice names {name!r}, which is not one of the tools")
        return chosen, True
    raise ChatMessageError(f"tool_choice must be 'auto', 'none', 'required' or a function, got {tool_choice!r}")


def _response_grammar(response_format: Any) -> str | None:
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise ChatMessageError("response_format must be an object like {'type': 'json_object'}")
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
        return json_schema_grammar(schema) if isinstance(schema, Mapping) else JSON_OBJECT_GRAMMAR
    if kind == "json_schema":
        wrapper = response_format.get("json_schema")
        schema = wrapper.get("schema") if isinstance(wrapper, Mapping) else response_format.get("schema")
        if not isinstance(schema, Mapping):
            raise ChatMessageError("response_format json_schema needs {'json_schema': {'schema': {...}}}")
        return json_schema_grammar(schema)
    raise ChatMessageError(f"response_format type must be text, json_object or json_schema, got {kind!r}")


def tools_system_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """Tool instructions for templates that ignore `tools`; the reply syntax is one parse_tool_calls reads."""
    listing = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    return (
        "You can call these tools (parameters are JSON Schema):\n"
        f"{listing}\n"
        "To call a tool, reply with only:\n"
        '<tool_call>{"name": "<tool name>", "arguments": {<arguments as JSON>}}</tool_call>\n'
        "Otherwise answer normally."
    )


def render_chat_prompt(
    formatter: ChatFormatter,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """The prompt text for `messages`. When the template ignores `tools`, they are described in the system
    message instead (or, if the template refuses system messages, at the start of the first user message)."""
    kwargs = dict(template_kwargs or {})
    if not tools or formatter.supports_tools:
        return formatter.render(messages, add_generation_prompt=True, tools=tools, **kwargs)
    msgs = normalize_messages(messages)
    note = tools_system_prompt(tools)
    if msgs[0]["role"] == "system" and isinstance(msgs[0].get("content"), str):
        with_system = [{**msgs[0], "content": msgs[0]["content"] + "\n\n" + note}, *msgs[1:]]
    else:
        with_system = [{"role": "system", "content": note}, *msgs]
    try:
        return formatter.render(with_system, add_generation_prompt=True, tools=tools, **kwargs)
    except ChatTemplateError:
        for i, m in enumerate(msgs):  # e.g. Gemma 2's template rejects the system role
            if m["role"] == "user" and isinstance(m.get("content"), str):
                msgs[i] = {**m, "content": note + "\n\n" + m["content"]}
                break
        return formatter.render(msgs, add_generation_prompt=True, tools=tools, **kwargs)


def _chat_logprobs(lp: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Completion-style logprobs -> chat-style {'content': [{token, logprob, bytes, top_logprobs}]}."""
    if not lp:
        return None
    content = []
    tops = lp.get("top_logprobs") or [{} for _ in lp.get("tokens", [])]
    for token, logprob, top in zip(lp.get("tokens", []), lp.get("token_logprobs", []), tops):
        content.append(
            {
                "token": token,
                "logprob": logprob,
                "bytes": list(token.encode("utf-8")),
                "top_logprobs": [
                    {"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))} for t, v in (top or {}).items()
                ],
            }
        )
    return {"content": content}


def create_chat_completion(
    llama: Any,
    messages: Sequence[Mapping[str, Any]],
    functions: Sequence[Mapping[str, Any]] | None = None,
    function_call: Any = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: Any = None,
    temperature: float = 0.2,
    top_p: float = 0.95,
    top_k: int = 40,
    min_p: float = 0.05,
    typical_p: float = 1.0,
    stream: bool = False,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
    response_format: Mapping[str, Any] | None = None,
    max_tokens: int | None = None,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    repeat_penalty: float = 1.0,
    model: str | None = None,
    logit_bias: Mapping[Any, float] | None = None,
    logprobs: bool | None = None,
    top_logprobs: int | None = None,
    grammar: Any = None,
    chat_format: str | None = None,
    chat_template: str | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
    reasoning_format: str | None = "auto",
    n: int = 1,
    **completion_kwargs: Any,
) -> Any:
    """Chat completion in OpenAI's shape (a dict, or an iterator of chunks when `stream=True`).

    - The prompt comes from the model's chat template, or `chat_format=` (a registered name) or `chat_template=`
      (jinja source); `template_kwargs` become extra template variables (e.g. `{"enable_thinking": False}`).
    - `response_format={"type": "json_object"}` constrains the reply to one JSON object;
      `{"type": "json_schema", "json_schema": {"schema": ...}}` to a schema (common subset).
    - `tools` are rendered by the template; calls in the reply are returned as `tool_calls`.
      `tool_choice="required"` or a named function forces a call with a grammar.
    - `reasoning_format="auto"`: for templates with `<think>` blocks, the reasoning goes to
      `message.reasoning_content` (streamed as `delta.reasoning_content`), the answer to `content`;
      "deepseek" always splits, "none" leaves the text as generated.
    - `n > 1` gives that many choices (each samples with seed + i; streamed chunks carry the choice's `index`).
    - Remaining keyword arguments go to `create_completion` (e.g. `mirostat_mode`, `logits_processor`).
    - A llama-cpp-python chat handler takes over the whole request when one applies: `Llama(chat_handler=...)`,
      or a `chat_format` registered with `llama_cpp.llama_chat_format.register_chat_format` /
      `register_chat_completion_handler` (e.g. "chatml-function-calling"); see llamarcp.compat.chat_format.
    """
    handler = _chat_handler(llama, chat_format)
    if handler is not None:
        if n != 1:
            raise ChatMessageError("n > 1 is not supported with a llama-cpp-python chat handler")
        return handler(
            llama=llama,
            messages=messages,
            functions=functions,
            function_call=function_call,
            tools=tools,
            tool_choice=tool_choice,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            typical_p=typical_p,
            stream=stream,
            stop=stop,
            seed=seed,
            response_format=response_format,
            max_tokens=max_tokens,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            repeat_penalty=repeat_penalty,
            model=model,
            logit_bias=logit_bias,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            grammar=grammar,
            **completion_kwargs,
        )
    if functions is not None:
        if tools:  # `tools=[]` is no tools, as in llama-cpp-python (haystack sends it on every call)
            raise ChatMessageError("pass either tools or the legacy functions, not both")
        tools, tool_choice = _legacy_functions(functions, function_call)
    offered, forced = _select_tools(
        [dict(t) if isinstance(t, Mapping) else t for t in tools] if tools else None, tool_choice
    )

    constraint = _response_grammar(response_format)
    if forced:
        assert offered is not None
        if constraint is not None:
            raise ChatMessageError("a forced tool call cannot be combined with response_format")
        constraint = tool_call_grammar(offered)
    if constraint is not None and grammar is not None:
        raise ChatMessageError("pass either grammar or response_format / a forced tool call, not both")
    if constraint is not None:
        grammar = constraint

    messages, tokenize = chat_tokenizer(llama, messages, completion_kwargs.pop("allow_local_media", True))
    formatter = chat_formatter(llama, chat_format, chat_template)
    prompt = render_chat_prompt(formatter, messages, offered, template_kwargs)
    splitter = _reasoning_splitter(formatter, prompt, reasoning_format)
    bos = formatter.bos_token
    try:
        prompt_bytes = prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ChatMessageError(f"the conversation contains text that is not valid Unicode ({exc.reason})") from exc
    prompt_tokens = tokenize(prompt_bytes, add_bos=not (bos and prompt.startswith(bos)), special=True)

    stops = [stop] if isinstance(stop, str) else list(stop or [])
    stops += [s for s in formatter.stop if s not in stops]
    if logprobs and top_logprobs is None:
        top_logprobs = 0
    completion = llama.create_completion(
        prompt_tokens,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        typical_p=typical_p,
        stream=stream,
        stop=stops,
        seed=seed,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        repeat_penalty=repeat_penalty,
        model=model,
        logit_bias=logit_bias,
        logprobs=top_logprobs if logprobs else None,
        grammar=grammar,
        **({"n": n} if n != 1 else {}),  # stand-ins for Llama may not take n
        **completion_kwargs,
    )
    legacy = functions is not None
    parse_tools = offered if offered else None

    def new_splitter() -> ThinkSplitter | None:  # one per choice: a splitter keeps state
        return _reasoning_splitter(formatter, prompt, reasoning_format)

    if stream:
        if n == 1:
            return _stream(completion, parse_tools, legacy, splitter)
        return _stream_choices(completion, n, parse_tools, legacy, new_splitter)
    return _finish(completion, parse_tools, legacy, [splitter] + [new_splitter() for _ in range(n - 1)])


def _chat_handler(llama: Any, chat_format: str | None) -> Any:
    """The llama-cpp-python-style handler for this request, or None for llamarcp's own chat path."""
    handler = getattr(llama, "chat_handler", None)
    if handler is not None:
        return handler
    name = chat_format if chat_format is not None else getattr(llama, "chat_format", None)
    if not isinstance(name, str):
        return None
    found = registered(name)
    if found is None and name == FUNCTION_CALLING:
        from llamarcp.chat.function_calling import chatml_function_calling

        found = chatml_function_calling
    return found


def completion_to_chat(completion: Any, stream: bool = False) -> Any:
    """A `create_completion` result (dict, or its chunks when `stream`) as a chat completion (or its chunks)."""
    if stream:
        return _stream(completion, None, False, None)
    return _finish(completion, None, False, [None] * len(completion["choices"]))


class ThinkSplitter:
    """Separates `<think>...</think>` reasoning from the answer as text arrives (streaming-safe: a tag split
    across chunks is held until it is complete)."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self, in_reasoning: bool = False) -> None:
        self._mode = "reasoning" if in_reasoning else "start"
        self._buf = ""

    def push(self, text: str) -> list[tuple[str, str]]:
        """Feed text; returns ("reasoning" | "content", text) pieces that are settled."""
        self._buf += text
        out: list[tuple[str, str]] = []
        while True:
            if self._mode == "start":
                head = self._buf.lstrip()
                if head.startswith(self.OPEN):
                    self._buf, self._mode = head[len(self.OPEN) :], "reasoning"
                elif self.OPEN.startswith(head):
                    return out  # still could be the opening tag
                else:
                    self._mode = "content"
            elif self._mode == "reasoning":
                end = self._buf.find(self.CLOSE)
                if end >= 0:
                    if end:
                        out.append(("reasoning", self._buf[:end]))
                    self._buf, self._mode = self._buf[end + len(self.CLOSE) :], "after"
                    continue
                keep = _partial_suffix(self._buf, self.CLOSE)
                if len(self._buf) > keep:
                    out.append(("reasoning", self._buf[: len(self._buf) - keep]))
                    self._buf = self._buf[len(self._buf) - keep :]
                return out
            elif self._mode == "after":  # the answer starts after the blank lines that follow </think>
                head = self._buf.lstrip()
                if not head:
                    self._buf = ""
                    return out
                self._buf, self._mode = head, "content"
            else:
                if self._buf:
                    out.append(("content", self._buf))
                    self._buf = ""
                return out

    def finish(self) -> list[tuple[str, str]]:
        rest, self._buf = self._buf, ""
        if not rest or self._mode == "after":
            return []
        return [("reasoning" if self._mode == "reasoning" else "content", rest)]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _reasoning_splitter(formatter: ChatFormatter, prompt: str, reasoning_format: str | None) -> ThinkSplitter | None:
    if reasoning_format in (None, "none"):
        return None
    if reasoning_format not in ("auto", "deepseek"):
        raise ChatMessageError(f"reasoning_format must be 'auto', 'deepseek' or 'none', got {reasoning_format!r}")
    if reasoning_format == "auto" and ThinkSplitter.OPEN not in formatter.template_source:
        return None
    # Templates that open the block in the generation prompt leave the model inside it from the first token.
    opened = prompt.rstrip().endswith(ThinkSplitter.OPEN)
    return ThinkSplitter(in_reasoning=opened)


def _split_reasoning(text: str, splitter: ThinkSplitter | None) -> tuple[str, str]:
    if splitter is None:
        return "", text
    parts = splitter.push(text) + splitter.finish()
    reasoning = "".join(t for kind, t in parts if kind == "reasoning")
    return reasoning.strip(), "".join(t for kind, t in parts if kind == "content")


def _message(
    text: str, tools: list[dict[str, Any]] | None, legacy: bool, reasoning: str = ""
) -> tuple[dict[str, Any], bool]:
    content, calls = parse_tool_calls(text, tools) if tools else (text, [])
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["content"] = content or None
        if legacy:
            message["function_call"] = calls[0]["function"]
        else:
            message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = reasoning
    return message, bool(calls)


def _finish(
    completion: Mapping[str, Any],
    tools: list[dict[str, Any]] | None,
    legacy: bool,
    splitters: Sequence[ThinkSplitter | None],
) -> dict[str, Any]:
    choices = []
    for index, (choice, splitter) in enumerate(zip(completion["choices"], splitters)):
        reasoning, text = _split_reasoning(choice["text"], splitter)
        message, called = _message(text, tools, legacy, reasoning)
        finish = choice["finish_reason"]
        if called:
            finish = "function_call" if legacy else "tool_calls"
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": _chat_logprobs(choice.get("logprobs")),
                "finish_reason": finish,
            }
        )
    return {
        "id": "chat" + completion["id"],
        "object": "chat.completion",
        "created": completion["created"],
        "model": completion["model"],
        "choices": choices,
        "usage": completion["usage"],
    }


def _stream_choices(
    chunks: Iterator[Mapping[str, Any]],
    n: int,
    tools: list[dict[str, Any]] | None,
    legacy: bool,
    new_splitter: Callable[[], ThinkSplitter | None],
) -> Iterator[dict[str, Any]]:
    """The chunks of `n` choices (they arrive choice after choice), each turned into chat chunks with its index."""
    completion_id = f"chatcmpl-{uuid.uuid4()}"

    def one_choice() -> Iterator[Mapping[str, Any]]:
        for part in chunks:
            yield part
            if part["choices"][0]["finish_reason"] is not None:
                return

    try:
        for index in range(n):
            yield from _stream(one_choice(), tools, legacy, new_splitter(), index, completion_id)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _stream(
    chunks: Iterator[Mapping[str, Any]],
    tools: list[dict[str, Any]] | None,
    legacy: bool,
    splitter: ThinkSplitter | None,
    index: int = 0,
    completion_id: str | None = None,
) -> Iterator[dict[str, Any]]:
    completion_id = completion_id or f"chatcmpl-{uuid.uuid4()}"
    created = int(time.time())
    model = ""
    held: list[str] = []  # answer text held back while it might be a tool call
    holding = tools is not None

    def chunk(delta: dict[str, Any], finish: str | None = None, lp: Any = None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": _chat_logprobs(lp), "finish_reason": finish}],
        }

    def split(text: str, final: bool) -> list[tuple[str, str]]:
        if splitter is None:
            return [("content", text)] if text else []
        return splitter.push(text) + (splitter.finish() if final else [])

    sent_role = False
    try:
        for part in chunks:
            model = part["model"]
            choice = part["choices"][0]
            if not sent_role:
                yield chunk({"role": "assistant", "content": ""})
                sent_role = True
            final_part = choice["finish_reason"] is not None
            pieces = split(choice["text"], final_part)
            answer = []
            for kind, piece in pieces:
                if kind == "reasoning":
                    yield chunk({"reasoning_content": piece})
                else:
                    answer.append(piece)
            text = "".join(answer)
            if final_part:
                finish = choice["finish_reason"]
                delta: dict[str, Any] = {}
                if held:
                    message, called = _message("".join(held) + text, tools, legacy)
                    if called:
                        finish = "function_call" if legacy else "tool_calls"
                        if legacy:
                            delta = {"function_call": message["function_call"]}
                        else:
                            delta = {"tool_calls": [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]}
                        if message["content"]:
                            yield chunk({"content": message["content"]})
                    else:
                        delta = {"content": message["content"]}
                elif text:
                    delta = {"content": text}
                final = chunk(delta, finish)
                if "usage" in part:
                    final["usage"] = part["usage"]
                yield final
                return
            if holding and text:
                held.append(text)
                so_far = "".join(held).lstrip()
                if not so_far:
                    continue
                if any(m.startswith(so_far) or so_far.startswith(m) for m in _TOOL_MARKERS):
                    continue  # could still become a tool call: keep holding
                holding = False
                text, held = "".join(held), []
            if text:
                yield chunk({"content": text}, lp=choice.get("logprobs"))
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
