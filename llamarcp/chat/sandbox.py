"""The jinja2 sandbox chat templates are compiled in, with resource bounds on everything that can allocate.

A model file's template is untrusted input: it is compiled in an `ImmutableSandboxedEnvironment`, so it can
read the conversation it is given but cannot reach Python internals (`__class__`, `__globals__`, ...), import
anything, open files or mutate the caller's objects (CVE-2024-34359 came from skipping this).

Attribute rules are not enough: arithmetic and formatting allocate too. Every operation that can build a large
value checks the size of its result *before* computing it:

- ints: `*` and `**` refuse results over MAX_INT_BITS (`10**1000` chains would hold the GIL for hours);
- strings and lists: `*`, `+`, `~`, `list.extend`, `str.join`/`replace`/`ljust`/..., and the `join`,
  `replace`, `indent`, `center`, `wordwrap`, `batch`, `slice`, `sum` filters refuse strings over
  MAX_BUILT_CHARS and lists over MAX_BUILT_ITEMS; collection filters (`sort`, `unique`, `list`, ...) refuse
  inputs over MAX_BUILT_ITEMS, so no single operation holds the GIL for long;
- formatting: printf (`%`, the `format` filter) and `str.format` refuse field widths and precisions over
  MAX_FORMAT_WIDTH, after nested fields are substituted (`'{:{}}'.format`) and including `*` widths;
- `tojson(indent=...)` is limited to MAX_JSON_INDENT.

With every single operation bounded, a render is bounded by its step budget: each `{% for %}` iteration and
each call spends one step of MAX_RENDER_STEPS and checks the render deadline (and, every MEMORY_CHECK_STEPS
steps, that the process grew by less than MAX_RENDER_MEMORY), so no render holds the GIL longer than one
bounded operation past its timeout. The rendered text itself is capped at MAX_RENDERED_CHARS.

Why in-process and not a worker process with hard limits: measured on this project's CI machine, a render
costs 0.03 ms in-process, 0.12 ms through a persistent worker and 3.9 ms with a fork per render; the worker
would also need spawn (not fork) beside llama.cpp's threads, message pickling and crash recovery. Its one
advantage, killing an operation the sandbox did not anticipate, is covered by bounding every operation
(the longest allowed, sorting MAX_BUILT_ITEMS items, takes ~0.2 s).
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import json
import operator
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jinja2
import jinja2.filters
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter, SecurityError
from markupsafe import Markup

from llamarcp.errors import ChatTemplateError, ChatTemplateSecurityError

__all__ = [
    "DEFAULT_RENDER_TIMEOUT",
    "MAX_BUILT_CHARS",
    "MAX_BUILT_ITEMS",
    "MAX_FORMAT_WIDTH",
    "MAX_INT_BITS",
    "MAX_JSON_INDENT",
    "MAX_RENDERED_CHARS",
    "MAX_RENDER_MEMORY",
    "MAX_RENDER_STEPS",
    "MAX_SLICES",
    "RenderBudget",
    "SecurityError",
    "TemplateRaised",
    "compile_template",
]

#: A rendered prompt longer than this is refused (a template looping to exhaust memory).
MAX_RENDERED_CHARS = 16 * 1024 * 1024
#: Longest string one template operation may build (string operations are linear: ~10 ms at this size).
MAX_BUILT_CHARS = 4 * 1024 * 1024
#: Longest list one template operation may build, or a collection filter (`sort`, `unique`, `list`, ...) may
#: take: sorting this many items takes ~0.2 s, the longest a single operation holds the GIL.
MAX_BUILT_ITEMS = 256 * 1024
#: Largest width or precision of a printf / str.format field (`'%1000000000s'`).
MAX_FORMAT_WIDTH = 64 * 1024
#: Largest integer (in bits) `*` and `**` may produce; 8192 bits is ~2466 digits, under Python's 4300-digit
#: int-to-str limit.
MAX_INT_BITS = 8192
#: Largest `indent` of the `tojson` filter.
MAX_JSON_INDENT = 64
#: Largest number of groups of the `slice` filter (it builds one list per group even when they are empty).
MAX_SLICES = 4096
#: Default wall-clock limit of one render; real templates take well under a millisecond.
DEFAULT_RENDER_TIMEOUT = 5.0
#: Total `{% for %}` iterations plus calls one render may run.
MAX_RENDER_STEPS = 10_000_000
#: How much the process's resident memory may grow during one render (checked every MEMORY_CHECK_STEPS steps,
#: so values kept in lists or namespaces cannot pile up: each operation is bounded, their sum is not).
MAX_RENDER_MEMORY = 512 * 1024 * 1024
#: Steps between two memory checks (a check reads /proc/self/statm: ~4 us, ~0.15 us per step).
MEMORY_CHECK_STEPS = 32

# Kept for code that imported the old names from llamarcp.chat.templates.
MAX_REPEAT_ITEMS = MAX_BUILT_CHARS
MAX_LOOP_ITERATIONS = MAX_RENDER_STEPS


class TemplateRaised(Exception):
    """Raised by the template's own `raise_exception(...)` call."""


def _raise_exception(message: object) -> None:
    raise TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _check_size(n: int, what: str) -> None:
    """A string of `n` characters."""
    if n > MAX_BUILT_CHARS:
        raise SecurityError(
            f"template tried to build {what} of {n} characters (limit MAX_BUILT_CHARS={MAX_BUILT_CHARS})"
        )


def _check_items(n: int, what: str) -> None:
    """A list of `n` items."""
    if n > MAX_BUILT_ITEMS:
        raise SecurityError(f"template tried to build {what} of {n} items (limit MAX_BUILT_ITEMS={MAX_BUILT_ITEMS})")


def _check_sequence(seq: Any, n: int, what: str) -> None:
    (_check_size if isinstance(seq, str) else _check_items)(n, what)


def _check_width(n: int, what: str) -> None:
    if n > MAX_FORMAT_WIDTH:
        raise SecurityError(f"template asked for {what} of width {n} (limit MAX_FORMAT_WIDTH={MAX_FORMAT_WIDTH})")


def _size_of(value: Any) -> int:
    """Length of a str/list/tuple, or of its str() for anything else that gets joined into text."""
    if isinstance(value, (str, list, tuple)):
        return len(value)
    return len(str(value))


# -- formatting ------------------------------------------------------------------------------------------------

# One printf conversion: %[(key)][flags][width|*][.precision|*][length]type
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?([a-zA-Z%])")


def _check_printf(fmt: str) -> None:
    for width, precision, _conversion in _PRINTF_SPEC.findall(fmt):
        for number in (width, precision):
            if number == "*":
                raise SecurityError("template used a '*' width in a printf format (not allowed)")
            if number:
                _check_width(int(number), "a printf field")


_SPEC_NUMBERS = re.compile(r"\d+")


class _BoundedFormatter(SandboxedFormatter):
    """str.format for templates: each field's final spec (nested `{}` already substituted) is bounded."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        for number in _SPEC_NUMBERS.findall(format_spec):
            _check_width(int(number), "a str.format field")
        return super().format_field(value, format_spec)


def _format_filter(value: Any, *args: Any, **kwargs: Any) -> str:
    _check_printf(str(value))
    return jinja2.filters.do_format(value, *args, **kwargs)  # type: ignore[no-any-return]


# -- filters that can multiply their input -----------------------------------------------------------------------


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: Sequence[str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Same signature and defaults as Hugging Face transformers' override: no HTML escaping, unicode kept.
    if isinstance(indent, int) and not isinstance(indent, bool) and indent > MAX_JSON_INDENT:
        raise SecurityError(f"tojson indent {indent} exceeds MAX_JSON_INDENT={MAX_JSON_INDENT}")
    if isinstance(indent, str) and len(indent) > MAX_JSON_INDENT:
        raise SecurityError(f"tojson indent string exceeds MAX_JSON_INDENT={MAX_JSON_INDENT} characters")
    seps = tuple(separators) if separators is not None else None
    if seps is not None and sum(len(str(s)) for s in seps) > MAX_JSON_INDENT:
        raise SecurityError(f"tojson separators exceed MAX_JSON_INDENT={MAX_JSON_INDENT} characters")
    text = json.dumps(
        value,
        ensure_ascii=ensure_ascii,
        indent=indent,  # type: ignore[arg-type]
        separators=seps,  # type: ignore[arg-type]
        sort_keys=sort_keys,
        default=_json_fallback,
    )
    _check_size(len(text), "a tojson result")
    return text


def _from_json(text: str) -> Any:
    if not isinstance(text, str) or len(text) > MAX_RENDERED_CHARS:
        raise ValueError("from_json expects a JSON string")
    return json.loads(text)


def _json_fallback(value: Any) -> Any:
    # `xs | map(...) | tojson` hands json a generator (llama.cpp's own jinja engine gives a list there).
    if isinstance(value, (Iterator, range)):
        items = list(value)
        _check_items(len(items), "a tojson list")
        return items
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _replaced_size(text: str, old: str, new: str, count: int | None) -> int:
    hits = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * max(0, len(new) - len(old))


@jinja2.pass_eval_context
def _replace_filter(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> Any:
    text = str(s)
    _check_size(_replaced_size(text, str(old), str(new), count), "a replace result")
    return jinja2.filters.do_replace(eval_ctx, s, old, new, count)


@jinja2.pass_eval_context
def _join_filter(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
    items = list(value)
    _check_items(len(items), "a joined list")
    if attribute is None:
        parts = sum(_size_of(item) for item in items)
        _check_size(parts + len(str(d)) * max(0, len(items) - 1), "a joined string")
    result: str = jinja2.filters.sync_do_join(eval_ctx, items, d, attribute)
    _check_size(len(result), "a joined string")
    return result


def _indent_filter(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    text = str(s)
    pad = width if isinstance(width, int) else len(str(width))
    _check_width(pad, "an indent")
    _check_size(len(text) + pad * (text.count("\n") + 1), "an indented string")
    return jinja2.filters.do_indent(s, width, first, blank)


def _center_filter(value: Any, width: int = 80) -> str:
    _check_width(int(width), "a centered string")
    return jinja2.filters.do_center(value, width)


@jinja2.pass_environment
def _wordwrap_filter(environment: Any, s: Any, width: int = 79, *args: Any, **kwargs: Any) -> str:
    _check_width(int(width), "a word-wrapped line")
    _check_size(2 * len(str(s)), "a word-wrapped string")
    return jinja2.filters.do_wordwrap(environment, s, width, *args, **kwargs)


def _slice_filter(value: Any, slices: int, fill_with: Any = None) -> Any:
    if int(slices) > MAX_SLICES:
        raise SecurityError(f"slice into {slices} groups exceeds MAX_SLICES={MAX_SLICES}")
    return jinja2.filters.sync_do_slice(value, slices, fill_with)


def _batch_filter(value: Any, linecount: int, fill_with: Any = None) -> Any:
    _check_items(int(linecount), "a batch")
    return jinja2.filters.do_batch(value, linecount, fill_with)


@jinja2.pass_environment
def _sum_filter(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    # Numbers only: sum() over lists or strings is quadratic and runs in C without a chance to stop.
    if not isinstance(start, (int, float)):
        raise SecurityError("the sum filter adds numbers only (start must be a number)")
    return jinja2.filters.sync_do_sum(environment, iterable, attribute, start)


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` (transformers marks assistant spans with it); renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        body: list[nodes.Node] = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return body


# -- the per-render budget ---------------------------------------------------------------------------------------


def _resident_bytes() -> int:
    """This process's resident memory (Linux: current, from /proc; elsewhere: the peak, from getrusage)."""
    global _statm_fd
    try:
        if _statm_fd is None:
            _statm_fd = os.open("/proc/self/statm", os.O_RDONLY)
        return int(os.pread(_statm_fd, 128, 0).split()[1]) * _PAGE_SIZE  # pread: ~4 us, no open per check
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


_statm_fd: int | None = None
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class RenderBudget:
    """Steps, deadline and memory growth of one render; `with RenderBudget(timeout):` makes it current."""

    __slots__ = ("deadline", "left", "memory_limit", "timeout", "_token")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.left = MAX_RENDER_STEPS
        self.memory_limit = _resident_bytes() + MAX_RENDER_MEMORY
        self._token: contextvars.Token[RenderBudget | None] | None = None

    def __enter__(self) -> RenderBudget:
        self._token = _budget.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _budget.reset(self._token)


_budget: contextvars.ContextVar[RenderBudget | None] = contextvars.ContextVar("llamarcp_render_budget", default=None)


def _spend_budget() -> None:
    """One step of template work (a loop iteration or a call); raises once the render is over its budget."""
    budget = _budget.get()
    if budget is None:
        return
    budget.left -= 1
    if budget.left <= 0:
        raise SecurityError(f"template ran more than MAX_RENDER_STEPS={MAX_RENDER_STEPS} loop iterations and calls")
    if time.monotonic() > budget.deadline:
        raise SecurityError(f"template ran longer than {budget.timeout:g} s")
    if budget.left % MEMORY_CHECK_STEPS == 0 and _resident_bytes() > budget.memory_limit:
        raise MemoryError(f"template grew the process by more than MAX_RENDER_MEMORY={MAX_RENDER_MEMORY} bytes")


def _loop_guard(iterable: Any) -> Iterator[Any]:
    for item in iterable:
        _spend_budget()
        yield item


def _checked_concat(values: Sequence[Any]) -> str:
    """`a ~ b ~ ...`: the joined length is checked before the string is built."""
    parts = [v if isinstance(v, str) else str(v) for v in values]
    _check_size(sum(len(p) for p in parts), "a concatenated string")
    if any(isinstance(v, Markup) for v in values):
        return Markup("").join(values)
    return "".join(parts)


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles `~` to the size-checked `environment.checked_concat` instead of a plain str join."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


# str methods whose integer arguments are output widths.
_WIDTH_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
# Lists the template builds for its own bookkeeping (Kimi-K2 keeps a queue of tool-call ids) may grow and
# shrink; the caller's data is deep-copied before every render, so this cannot touch anything outside.
_ALLOWED_LIST_MUTATIONS = frozenset({"append", "pop", "extend", "insert"})


def _int_bits(value: Any) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 0


class _ChatSandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    loop_guard = staticmethod(_loop_guard)
    checked_concat = staticmethod(_checked_concat)

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
                    _check_sequence(seq, len(seq) * count, "a repeated sequence")
            if isinstance(left, int) and isinstance(right, int) and _int_bits(left) + _int_bits(right) > MAX_INT_BITS:
                raise SecurityError(f"template tried to build an integer over MAX_INT_BITS={MAX_INT_BITS} bits")
            return operator.mul(left, right)
        if op == "**":
            growing = isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1
            if growing and (right > MAX_INT_BITS or right * _int_bits(left) > MAX_INT_BITS):
                raise SecurityError(f"template tried to build an integer over MAX_INT_BITS={MAX_INT_BITS} bits")
            return operator.pow(left, right)
        if op == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                _check_sequence(left, len(left) + len(right), "a concatenated sequence")
            return operator.add(left, right)
        if op == "%" and isinstance(left, str):
            _check_printf(left)
        return super().call_binop(context, op, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        owner = getattr(value, "__self__", None)
        if wrapped is None or not isinstance(owner, str) or isinstance(owner, Markup):
            return wrapped
        formatter = _BoundedFormatter(self)
        is_format_map = value.__name__ == "format_map"

        def bounded(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one mapping argument")
                return check(formatter.vformat(owner, (), args[0]))
            return check(formatter.vformat(owner, args, kwargs))

        def check(text: str) -> str:
            _check_size(len(text), "a formatted string")
            return text

        return functools.update_wrapper(bounded, value)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        _spend_budget()  # macros can recurse (and fan out) without any loop
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "")
        if isinstance(owner, str):
            if name in _WIDTH_METHODS:
                for arg in (*args, *kwargs.values()):
                    if isinstance(arg, int):
                        _check_width(arg, f"a str.{name} result")
            elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
                count = args[2] if len(args) > 2 and isinstance(args[2], int) else None
                _check_size(_replaced_size(owner, args[0], args[1], count), "a str.replace result")
            elif name == "join" and args:
                parts = list(args[0])
                _check_items(len(parts), "a joined list")
                _check_size(len(owner) * max(0, len(parts) - 1) + sum(_size_of(p) for p in parts), "a joined string")
                args = (parts, *args[1:])
        elif isinstance(owner, list) and name in ("extend", "insert", "append"):
            added = len(args[0]) if name == "extend" and args and hasattr(args[0], "__len__") else 1
            _check_items(len(owner) + added, "a list")
        return super().call(context, obj, *args, **kwargs)


# Filters whose cost grows faster than their input (sorting) or that turn a string into a list of characters.
_COLLECTION_FILTERS = (
    "sort",
    "unique",
    "list",
    "dictsort",
    "groupby",
    "reverse",
    "min",
    "max",
    "map",
    "select",
    "reject",
    "selectattr",
    "rejectattr",
    "items",
)


def _input_checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a collection filter so its input holds at most MAX_BUILT_ITEMS items (or characters)."""
    value_index = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if len(args) > value_index and hasattr(args[value_index], "__len__"):
            _check_items(len(args[value_index]), f"the input of the {fn.__name__} filter")
        return fn(*args, **kwargs)

    return wrapper


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
    env.filters["replace"] = _replace_filter
    env.filters["join"] = _join_filter
    env.filters["indent"] = _indent_filter
    env.filters["center"] = _center_filter
    env.filters["wordwrap"] = _wordwrap_filter
    env.filters["slice"] = _slice_filter
    env.filters["batch"] = _batch_filter
    env.filters["sum"] = _sum_filter
    for name in _COLLECTION_FILTERS:
        if name in env.filters:
            env.filters[name] = _input_checked(env.filters[name])
    # Lorem ipsum generator: no chat template needs it, and lipsum(n=10**8) would run for ages.
    env.globals.pop("lipsum", None)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    """Compile jinja source in the chat sandbox (cached by source: a server renders one template per request)."""
    return _environment().from_string(source)


def compile_checked(template: str, name: str) -> jinja2.Template:
    """Compile a chat template in the sandbox; every failure becomes a ChatTemplateError naming the template."""
    try:
        return compile_template(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template {name!r} has a syntax error on line {exc.lineno}: {exc}") from exc
    except SecurityError as exc:
        raise ChatTemplateSecurityError(f"chat template {name!r} was refused by the sandbox: {exc}") from exc
    except RecursionError as exc:
        raise ChatTemplateError(f"chat template {name!r} nests too deeply to compile") from exc
    except MemoryError as exc:
        raise ChatTemplateError(f"chat template {name!r} is too large to compile") from exc
    except Exception as exc:  # e.g. an int literal over Python's digit limit: still the template's fault
        raise ChatTemplateError(f"chat template {name!r} failed to compile: {type(exc).__name__}: {exc}") from exc
