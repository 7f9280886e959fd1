"""llamarcp.chat.sandbox: templates cannot allocate, compute or loop without bound; every failure is clean."""

from __future__ import annotations

import threading
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamarcp.chat import ChatFormatter, normalize_messages
from llamarcp.chat import sandbox as sb
from llamarcp.errors import ChatMessageError, ChatTemplateError, ChatTemplateSecurityError

MESSAGES = [{"role": "user", "content": "hi"}]
#: What any refused attack may allocate at its peak (the largest allowed intermediate string is 4 Mi chars).
PEAK_BYTES = 96 * 1024 * 1024


def _doubling(expression: str) -> str:
    return (
        "{% set ns = namespace(v=" + expression + ") %}{% for i in range(40) %}"
        "{% set ns.v = ns.v OP ns.v %}{% endfor %}{{ ns.v|length }}"
    )


# The concrete cases of issue 15 (each allocated 0.9-4.2 GB, ran past 30 s or froze the process before).
ATTACKS = {
    "power chain": "{% set x = 10**1000 %}{% set y = x**1000 %}{% set z = y**1000 %}{{ z > 0 }}",
    "printf star width": "{{ '%*s' % (3000000000, 'x') }}",
    "printf keyed width": "{{ '%(a)1000000000s' % {'a': 'x'} }}",
    "printf precision": "{{ '%.1000000000f' % 1.5 }}",
    "nested str.format": "{{ '{:{}}'.format('x', 1000000000) }}",
    "format_map width": "{{ '{a:>1000000000}'.format_map({'a': 1}) }}",
    "format filter": "{{ '%1000000000s'|format('x') }}",
    "replace filter": "{{ ('x' * 1000000)|replace('x', 'y' * 1000) }}",
    "str.replace": "{{ ('x' * 1000000).replace('x', 'y' * 1000) }}",
    "join filter": "{{ (['a'] * 100000)|join('b' * 100000) }}",
    "huge separator": "{{ ['a', 'b']|join('x' * (2**40)) }}",
    "str.join": "{{ ('x' * 1000000).join(['a'] * 1000) }}",
    "tojson indent": "{{ [1, 2, 3]|tojson(indent=10**8) }}",
    "slice": "{{ [1]|slice(10**9)|list }}",
    "batch": "{{ [1]|batch(10**9, 0)|list|length }}",
    "sum of lists": "{{ ([[1] * 1000] * 3000)|sum(start=[])|length }}",
    "list.extend doubling": (
        "{% set xs = [1] %}{% for i in range(40) %}{% set _ = xs.extend(xs) %}{% endfor %}{{ xs|length }}"
    ),
    "~ doubling": _doubling("'x'").replace("OP", "~"),
    "+ doubling": _doubling("'x'").replace("OP", "+"),
    "list + doubling": _doubling("[1]").replace("OP", "+"),
    "int * doubling": _doubling("3").replace("OP", "*").replace("|length", " > 0"),
    "zfill": "{{ 'x'.zfill(10**9) }}",
    "center filter": "{{ 'x'|center(10**9) }}",
    "indent filter": "{{ ('\\n' * 100000)|indent(10000) }}",
    "wordwrap filter": "{{ 'x'|wordwrap(10**9) }}",
    "sort a huge string": "{{ ('ab' * 2000000)|sort|length }}",
    "deep nesting": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "huge int literal": "{{ " + "9" * 5000 + " }}",
    "macro recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_fail_cleanly_with_bounded_memory(name: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ChatTemplateError):
            ChatFormatter(ATTACKS[name]).render(MESSAGES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"{name} peaked at {peak / 1e6:.0f} MB"


def test_resource_refusals_are_security_errors() -> None:
    for name in ("power chain", "printf star width", "nested str.format", "tojson indent", "~ doubling"):
        with pytest.raises(ChatTemplateSecurityError, match="MAX_|not allowed"):
            ChatFormatter(ATTACKS[name]).render(MESSAGES)


def test_nested_loops_stop_at_the_render_timeout() -> None:
    template = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(ChatTemplateSecurityError, match="longer than 0.2 s"):
        ChatFormatter(template, render_timeout=0.2).render(MESSAGES)


def test_a_stopped_render_leaves_other_threads_running() -> None:
    """The power chain froze the whole process (GIL held in one bigint op); now it fails in its own thread."""
    results: list[str] = []

    def render() -> None:
        try:
            ChatFormatter(ATTACKS["power chain"]).render(MESSAGES)
        except ChatTemplateError as exc:
            results.append(type(exc).__name__)

    worker = threading.Thread(target=render)
    worker.start()
    ticks = sum(1 for _ in range(1000))  # the main thread keeps running Python code meanwhile
    worker.join(timeout=60)
    assert not worker.is_alive() and results == ["ChatTemplateSecurityError"] and ticks == 1000


def test_values_piled_up_in_a_list_hit_the_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `s ~ i` is within MAX_BUILT_CHARS, but keeping 100k of them would take 400 GB."""
    monkeypatch.setattr(sb, "MAX_RENDER_MEMORY", 64 * 1024 * 1024)
    template = (
        "{% set s = 'x' * 4000000 %}{% set xs = [] %}"
        "{% for i in range(100000) %}{% set _ = xs.append(s ~ i) %}{% endfor %}{{ xs|length }}"
    )
    with pytest.raises(ChatTemplateSecurityError, match="MAX_RENDER_MEMORY"):
        ChatFormatter(template).render(MESSAGES)


def test_allowed_sizes_still_render() -> None:
    assert ChatFormatter("{{ 'x' * 1000 }}").render(MESSAGES) == "x" * 1000
    assert ChatFormatter("{{ 2 ** 100 }}").render(MESSAGES) == str(2**100)
    assert ChatFormatter("{{ '%5s|%-3d' % ('a', 7) }}").render(MESSAGES) == "    a|7  "
    assert ChatFormatter("{{ '{:>{}}'.format('a', 4) }}").render(MESSAGES) == "   a"
    assert ChatFormatter("{{ [1, 2]|tojson(indent=2) }}").render(MESSAGES) == "[\n  1,\n  2\n]"
    assert ChatFormatter("{{ [1, 2, 3]|sum }}").render(MESSAGES) == "6"
    assert ChatFormatter("{{ ['b', 'a']|sort|join(',') }}").render(MESSAGES) == "a,b"
    assert ChatFormatter("{{ 'a' ~ 1 ~ 'b' }}").render(MESSAGES) == "a1b"
    big = "{% set s = 'x' * " + str(sb.MAX_BUILT_CHARS) + " %}{{ s|length }}"
    assert ChatFormatter(big).render(MESSAGES) == str(sb.MAX_BUILT_CHARS)


def test_deeply_nested_messages_are_refused() -> None:
    content: Any = "x"
    for _ in range(900):
        content = [{"type": "text", "text": "x", "nested": content}]
    with pytest.raises(ChatMessageError, match="MAX_MESSAGE_DEPTH"):
        normalize_messages([{"role": "user", "content": content}])


# -- generated templates: any combination of the risky primitives renders or fails with ChatTemplateError -----

_ATOMS = ["'x'", "'ab' * 3", "[1, 2]", "10", "10 ** 3", "messages", "'%s'", "range(5)|list", "2 ** 60", "'{}'"]
_BINARY = ["*", "**", "~", "+", "%"]
_FILTERS = [
    "length",
    "string",
    "list",
    "sort",
    "join('x')",
    "join('yy' * 1000)",
    "replace('x', 'xx')",
    "tojson",
    "tojson(indent=4)",
    "indent(8)",
    "center(100)",
    "slice(3)|list",
    "batch(2)|list",
    "unique|list",
    "sum",
    "first",
    "int",
    "format(1, 2)",
    "wordwrap(5)",
]


@st.composite
def _expressions(draw: Any, depth: int = 0) -> str:
    if depth > 3 or draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from([*_ATOMS, str(draw(st.integers(-5, 10**6)))]))
    kind = draw(st.sampled_from(["binary", "filter", "format"]))
    left = draw(_expressions(depth + 1))
    if kind == "binary":
        return f"({left} {draw(st.sampled_from(_BINARY))} {draw(_expressions(depth + 1))})"
    if kind == "filter":
        return f"({left})|{draw(st.sampled_from(_FILTERS))}"
    return f"('{{:{draw(st.integers(0, 10**9))}}}'.format({left}))"


@st.composite
def _templates(draw: Any) -> str:
    body = "".join("{{ " + draw(_expressions()) + " }}" for _ in range(draw(st.integers(1, 3))))
    if draw(st.booleans()):
        body = "{% set ns = namespace(v=" + draw(_expressions()) + ") %}"
        body += "{% for i in range(30) %}{% set ns.v = ns.v ~ ns.v %}{% endfor %}{{ ns.v|length }}"
    return body


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_templates())
def test_generated_templates_render_or_fail_cleanly(template: str) -> None:
    try:
        out = ChatFormatter(template, render_timeout=5).render(MESSAGES)
    except ChatTemplateError:
        return
    assert isinstance(out, str) and len(out) <= sb.MAX_RENDERED_CHARS
