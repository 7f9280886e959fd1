"""Render chat templates (GGUF `tokenizer.chat_template` or a named format) in a jinja2 sandbox.

A model file's template is untrusted input: it is compiled in an `ImmutableSandboxedEnvironment`, so it can
read the conversation it is given but cannot reach Python internals (`__class__`, `__globals__`, ...),
import anything, open files or mutate the caller's objects (CVE-2024-34359 came from skipping this).
Helpers that could allocate without bound (`*`, `**`, printf/format widths, `ljust`, `replace`, `join`, a few
filters) are capped, and the rendered text is limited to MAX_RENDERED_CHARS.

Every `{% for %}` iteration and every call (macros included) draws from a per-render budget with a deadline
(`render_timeout`, default 5 s), so a template cannot hang its caller with nested loops or recursion either.
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import json
import operator
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import jinja2
import jinja2.filters
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from llamarcp.errors import ChatMessageError, ChatTemplateError, ChatTemplateSecurityError

__all__ = [
    "CHAT_FORMATS",
    "ChatFormat",
    "ChatFormatter",
    "get_chat_format",
    "register_chat_format",
]

#: A rendered prompt longer than this is refused (a template looping to exhaust memory).
MAX_RENDERED_CHARS = 16 * 1024 * 1024
#: Largest string/list a template may build with `*` (e.g. `'x' * 10**12`).
MAX_REPEAT_ITEMS = 1024 * 1024
#: Largest exponent of `**` on ints (`10 ** 10**9` would hang while computing).
MAX_POWER_EXPONENT = 1024
#: Default wall-clock limit of one render; real templates take well under a millisecond.
DEFAULT_RENDER_TIMEOUT = 5.0
#: Total `{% for %}` iterations plus calls one render may run.
MAX_LOOP_ITERATIONS = 10_000_000


class _TemplateRaised(Exception):
    """Raised by the template's own `raise_exception(...)` call."""


def _raise_exception(message: object) -> None:
    raise _TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: Sequence[str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Same signature and defaults as Hugging Face transformers' override: no HTML escaping, unicode kept.
    seps = tuple(separators) if separators is not None else None
    return json.dumps(
        value,
        ensure_ascii=ensure_ascii,
        indent=indent,  # type: ignore[arg-type]
        separators=seps,  # type: ignore[arg-type]
        sort_keys=sort_keys,
        default=_json_fallback,
    )


def _from_json(text: str) -> Any:
    if not isinstance(text, str) or len(text) > MAX_RENDERED_CHARS:
        raise ValueError("from_json expects a JSON string")
    return json.loads(text)


def _json_fallback(value: Any) -> Any:
    # `xs | map(...) | tojson` hands json a generator (llama.cpp's own jinja engine gives a list there).
    if isinstance(value, (Iterator, range)):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` (transformers marks assistant spans with it); renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        body: list[nodes.Node] = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return body


# Lists the template builds for its own bookkeeping (Kimi-K2 keeps a queue of tool-call ids) may grow and
# shrink; the caller's data is deep-copied before every render, so this cannot touch anything outside.
_ALLOWED_LIST_MUTATIONS = frozenset({"append", "pop", "extend", "insert"})


def _check_size(n: int, what: str) -> None:
    if n > MAX_REPEAT_ITEMS:
        raise SecurityError(f"template tried to build {what} of {n} items (limit {MAX_REPEAT_ITEMS})")


_PRINTF_SPEC = re.compile(r"%[-+ #0]*(\d*)(?:\.(\d+))?[a-zA-Z%]")
_BRACE_FIELD = re.compile(r"\{[^{}]*\}")


def _check_format_widths(fmt: str, braces: bool) -> None:
    """Refuse printf-style or str.format() fields whose width/precision would allocate huge strings."""
    if braces:
        numbers = [
            n for field in _BRACE_FIELD.findall(fmt) if ":" in field for n in re.findall(r"\d+", field.split(":", 1)[1])
        ]
    else:
        numbers = [n for spec in _PRINTF_SPEC.findall(fmt) for n in spec if n]
    for number in numbers:
        _check_size(int(number), "a formatted field")


class _RenderBudget:
    __slots__ = ("deadline", "left", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.left = MAX_LOOP_ITERATIONS


_budget: contextvars.ContextVar[_RenderBudget | None] = contextvars.ContextVar("llamarcp_render_budget", default=None)


def _spend_budget() -> None:
    """One step of template work (a loop iteration or a call); raises once the render is over its budget."""
    budget = _budget.get()
    if budget is None:
        return
    budget.left -= 1
    if budget.left <= 0:
        raise SecurityError(f"template ran more than {MAX_LOOP_ITERATIONS} loop iterations and calls")
    if time.monotonic() > budget.deadline:
        raise SecurityError(f"template ran longer than {budget.timeout:g} s")


def _loop_guard(iterable: Any) -> Iterator[Any]:
    for item in iterable:
        _spend_budget()
        yield item


# str methods whose integer arguments are output widths.
_WIDTH_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})


class _ChatSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})
    loop_guard = staticmethod(_loop_guard)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, list) and attr in _ALLOWED_LIST_MUTATIONS:
            return super(ImmutableSandboxedEnvironment, self).is_safe_attribute(obj, attr, value)
        return super().is_safe_attribute(obj, attr, value)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        # Route every for-loop's iterable through the render budget (checked per iteration).
        tree = super()._parse(source, name, filename)
        # `environment.loop_guard`, which a template cannot rebind (a global name could be shadowed by `set`).
        for loop in tree.find_all(nodes.For):
            guard = nodes.EnvironmentAttribute("loop_guard", lineno=loop.lineno)
            loop.iter = nodes.Call(guard, [loop.iter], [], None, None, lineno=loop.lineno)
        return tree

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # Fail at the first forbidden access instead of yielding an Undefined that prints as "".
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int):
                    _check_size(len(seq) * count, "a repeated sequence")
            return operator.mul(left, right)
        if op == "**":
            if isinstance(right, int) and abs(right) > MAX_POWER_EXPONENT:
                raise SecurityError(f"template tried to compute a power with exponent {right}")
            return operator.pow(left, right)
        if op == "%" and isinstance(left, str):
            _check_format_widths(left, braces=False)
        return super().call_binop(context, op, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format_widths(str(value.__self__), braces=True)
        return wrapped

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        _spend_budget()  # macros can recurse (and fan out) without any loop
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str):
            name = getattr(obj, "__name__", "")
            if name in _WIDTH_METHODS:
                for arg in (*args, *kwargs.values()):
                    if isinstance(arg, int):
                        _check_size(arg, f"a str.{name} result")
            elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
                hits = owner.count(args[0]) if args[0] else len(owner) + 1
                _check_size(len(owner) + hits * max(0, len(args[1]) - len(args[0])), "a str.replace result")
            elif name == "join" and args and isinstance(args[0], (list, tuple)):
                parts = args[0]
                _check_size(len(owner) * max(0, len(parts) - 1) + sum(len(str(p)) for p in parts), "a joined string")
        return super().call(context, obj, *args, **kwargs)


def _width_checked(fn: Callable[..., str], *positions: int) -> Callable[..., str]:
    """Wrap a builtin filter so its width arguments (by position after the value, or any int kwarg) are bounded."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        for i in positions:
            if len(args) > i and isinstance(args[i], int):
                _check_size(args[i], f"a {fn.__name__} result")
        for value in kwargs.values():
            if isinstance(value, int) and not isinstance(value, bool):
                _check_size(value, f"a {fn.__name__} result")
        return fn(*args, **kwargs)

    return wrapper


def _format_filter(value: Any, *args: Any, **kwargs: Any) -> str:
    _check_format_widths(str(value), braces=False)
    return jinja2.filters.do_format(value, *args, **kwargs)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=1)
def _environment() -> _ChatSandbox:
    env = _ChatSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        extensions=[loopcontrols, _GenerationBlock],
        autoescape=False,
    )
    env.filters["tojson"] = _tojson
    env.filters["from_json"] = _from_json  # llama.cpp's jinja engine has it; DeepSeek V3.2/V4 templates use it
    env.filters["format"] = _format_filter
    env.filters["center"] = _width_checked(jinja2.filters.do_center, 1)
    env.filters["indent"] = _width_checked(jinja2.filters.do_indent, 1)
    env.filters["wordwrap"] = _width_checked(jinja2.filters.do_wordwrap, 2)
    # Lorem ipsum generator: no chat template needs it, and lipsum(n=10**8) would run for ages.
    env.globals.pop("lipsum", None)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> jinja2.Template:
    # Cached by source text: a server renders the same model template for every request.
    return _environment().from_string(source)


def _plain(value: Any, where: str) -> Any:
    """Deep copy of JSON-like data; the template only ever sees these copies."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ChatMessageError(f"{where}: keys must be strings, got {key!r}")
            out[key] = _plain(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
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


@dataclass(frozen=True)
class ChatFormat:
    """A named prompt format: a jinja template plus the stop strings that end an assistant turn."""

    name: str
    template: str
    stop: tuple[str, ...] = ()
    description: str = ""
    aliases: tuple[str, ...] = field(default=())


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
        try:
            self._template = _compile(template)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(
                f"chat template {self.name!r} has a syntax error on line {exc.lineno}: {exc}"
            ) from exc
        except SecurityError as exc:
            raise ChatTemplateSecurityError(f"chat template {self.name!r} was refused by the sandbox: {exc}") from exc
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
        token = _budget.set(_RenderBudget(self.render_timeout))
        try:
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
        except _TemplateRaised as exc:
            raise ChatTemplateError(f"chat template {self.name!r} rejected the conversation: {exc}") from exc
        except SecurityError as exc:
            raise ChatTemplateSecurityError(f"chat template {self.name!r} was stopped by the sandbox: {exc}") from exc
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat template {self.name!r} failed: {type(exc).__name__}: {exc}") from exc
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError) as exc:
            raise ChatTemplateError(f"chat template {self.name!r} failed: {type(exc).__name__}: {exc}") from exc
        except RecursionError as exc:
            raise ChatTemplateError(f"chat template {self.name!r} recursed too deeply") from exc
        finally:
            _budget.reset(token)


# ---------------------------------------------------------------------------------------------------------
# Named formats: llamarcp's own templates, for models without `tokenizer.chat_template` or to override it.
# Each follows the model family's published prompt format; `bos_token`/`eos_token` come from the model.

_CHATML = """\
{%- for message in messages -%}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}
"""

_LLAMA_2 = """\
{%- set ns = namespace(system='') -%}
{%- if messages and messages[0].role == 'system' -%}
{%- set ns.system = '<<SYS>>\\n' ~ messages[0].content | trim ~ '\\n<</SYS>>\\n\\n' -%}
{%- set messages = messages[1:] -%}
{%- endif -%}
{%- for message in messages -%}
{%- if message.role == 'user' -%}
{{ bos_token }}[INST] {{ ns.system if loop.first else '' }}{{ message.content | trim }} [/INST]
{%- elif message.role == 'assistant' -%}
{{ ' ' ~ message.content | trim ~ ' ' ~ eos_token }}
{%- else -%}
{{ raise_exception('llama-2 format supports only system, user and assistant roles, got ' ~ message.role) }}
{%- endif -%}
{%- endfor -%}
"""

_LLAMA_3 = """\
{{- bos_token -}}
{%- for message in messages -%}
<|start_header_id|>{{ message.role }}<|end_header_id|>

{{ message.content | trim }}<|eot_id|>
{%- endfor -%}
{%- if add_generation_prompt -%}
<|start_header_id|>assistant<|end_header_id|>

{% endif -%}
"""

_GEMMA = """\
{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
{%- if message.role == 'system' -%}
{%- set ns.system = ns.system ~ message.content | trim -%}
{%- else -%}
{%- set role = 'model' if message.role == 'assistant' else message.role -%}
<start_of_turn>{{ role }}
{% if ns.system and role != 'model' %}{{ ns.system }}

{% set ns.system = '' %}{% endif %}{{ message.content | trim }}<end_of_turn>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<start_of_turn>model
{% endif -%}
"""

# Mistral v3 ("[INST] ...[/INST]" without a space before [/INST]); a system message opens the first turn.
_MISTRAL_INSTRUCT = """\
{{- bos_token -}}
{%- set ns = namespace(open=false) -%}
{%- for message in messages -%}
{%- if not ns.open -%}[INST] {% set ns.open = true %}{%- endif -%}
{%- if message.role == 'system' -%}
{{ message.content }}

{% elif message.role == 'user' -%}
{{ message.content }}[/INST]
{%- elif message.role == 'assistant' -%}
{{ ' ' ~ message.content | trim ~ eos_token }}{% set ns.open = false %}
{%- else -%}
{{ raise_exception('mistral-instruct format supports only system, user and assistant roles, got ' ~ message.role) }}
{%- endif -%}
{%- endfor -%}
"""

_MISTRAL_V7 = """\
{{- bos_token -}}
{%- for message in messages -%}
{%- if message.role == 'system' -%}
[SYSTEM_PROMPT] {{ message.content }}[/SYSTEM_PROMPT]
{%- elif message.role == 'user' -%}
[INST] {{ message.content }}[/INST]
{%- elif message.role == 'assistant' -%}
{{ ' ' ~ message.content ~ eos_token }}
{%- else -%}
{{ raise_exception('mistral-v7 format supports only system, user and assistant roles, got ' ~ message.role) }}
{%- endif -%}
{%- endfor -%}
"""

_PHI_3 = """\
{%- for message in messages -%}
<|{{ message.role }}|>
{{ message.content }}<|end|>
{% endfor -%}
{%- if add_generation_prompt -%}
<|assistant|>
{% endif -%}
"""

_ZEPHYR = """\
{%- for message in messages -%}
<|{{ message.role }}|>
{{ message.content }}{{ eos_token }}
{% endfor -%}
{%- if add_generation_prompt -%}
<|assistant|>
{% endif -%}
"""

_VICUNA = """\
{%- for message in messages -%}
{%- if message.role == 'system' -%}
{{ message.content }}

{% elif message.role == 'user' -%}
USER: {{ message.content }}
{% elif message.role == 'assistant' -%}
ASSISTANT: {{ message.content }}{{ eos_token }}
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
ASSISTANT:
{%- endif -%}
"""

_ALPACA = """\
{%- for message in messages -%}
{%- if message.role == 'system' -%}
{{ message.content }}

{% elif message.role == 'user' -%}
### Instruction:
{{ message.content }}

{% elif message.role == 'assistant' -%}
### Response:
{{ message.content }}{{ eos_token }}

{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
### Response:
{% endif -%}
"""

CHAT_FORMATS: dict[str, ChatFormat] = {}
_ALIASES: dict[str, str] = {}


def register_chat_format(chat_format: ChatFormat, *, replace: bool = False) -> ChatFormat:
    """Add a named format (its template is compiled now, so a broken one fails at registration)."""
    for name in (chat_format.name, *chat_format.aliases):
        if not replace and (name in CHAT_FORMATS or name in _ALIASES):
            raise ValueError(f"chat format {name!r} is already registered")
    ChatFormatter(chat_format.template, name=chat_format.name)
    CHAT_FORMATS[chat_format.name] = chat_format
    for alias in chat_format.aliases:
        _ALIASES[alias] = chat_format.name
    return chat_format


def get_chat_format(name: str) -> ChatFormat:
    """Look up a registered format by name or alias; unknown names list the known ones."""
    key = _ALIASES.get(name, name)
    try:
        return CHAT_FORMATS[key]
    except KeyError:
        known = ", ".join(sorted(CHAT_FORMATS))
        raise ChatTemplateError(f"unknown chat_format {name!r}; known formats: {known}") from None


for _fmt in (
    ChatFormat("chatml", _CHATML, ("<|im_end|>",), "ChatML (Qwen, Yi, OpenHermes, SmolLM, ...)"),
    ChatFormat("llama-2", _LLAMA_2, (), "Llama 2 chat: [INST] <<SYS>> ... [/INST]", ("llama2",)),
    ChatFormat("llama-3", _LLAMA_3, ("<|eot_id|>",), "Llama 3 / 3.1 / 3.2 / 3.3 instruct", ("llama3",)),
    ChatFormat("gemma", _GEMMA, ("<end_of_turn>",), "Gemma 1/2/3 (system merged into the first user turn)"),
    ChatFormat("mistral-instruct", _MISTRAL_INSTRUCT, (), "Mistral instruct v3 [INST] ...[/INST]", ("mistral",)),
    ChatFormat("mistral-v7", _MISTRAL_V7, (), "Mistral v7 with [SYSTEM_PROMPT]"),
    ChatFormat("phi-3", _PHI_3, ("<|end|>",), "Phi-3 / Phi-3.5", ("phi3",)),
    ChatFormat("zephyr", _ZEPHYR, (), "Zephyr <|user|> ... </s>"),
    ChatFormat("vicuna", _VICUNA, (), "Vicuna 1.1 USER:/ASSISTANT:"),
    ChatFormat("alpaca", _ALPACA, (), "Alpaca ### Instruction:/### Response:"),
):
    register_chat_format(_fmt)

#: Used when a model has no `tokenizer.chat_template` and no chat_format was given (llama.cpp does the same).
DEFAULT_CHAT_FORMAT = "chatml"


#: general.architecture prefix -> format, for GGUFs that carry no template (the default gemma-3-270m has none).
#: Only families whose chat layout is unambiguous from the architecture are listed.
_ARCHITECTURE_FORMATS = (("gemma", "gemma"), ("phi3", "phi-3"), ("qwen", "chatml"))


def guess_chat_format(metadata: Mapping[str, Any]) -> str:
    """Named format for a model without `tokenizer.chat_template`, from its architecture; else chatml."""
    arch = str(metadata.get("general.architecture", ""))
    for prefix, name in _ARCHITECTURE_FORMATS:
        if arch.startswith(prefix):
            return name
    if arch == "llama" and metadata.get("tokenizer.ggml.pre") in ("llama-bpe", "llama3"):
        return "llama-3"
    return DEFAULT_CHAT_FORMAT


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
    if chat_format is not None:
        return ChatFormatter.from_format(chat_format, bos_token, eos_token)
    source = metadata.get("tokenizer.chat_template")
    if isinstance(source, str) and source.strip():
        return ChatFormatter(source, bos_token, eos_token, name="tokenizer.chat_template")
    return ChatFormatter.from_format(guess_chat_format(metadata), bos_token, eos_token)
