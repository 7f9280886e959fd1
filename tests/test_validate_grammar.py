"""llamarcp.validate.grammar: GBNF shapes that crash or stall llama.cpp are refused before it parses them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamarcp.errors import GrammarError
from llamarcp.grammar import JSON_GBNF, LlamaGrammar
from llamarcp.validate import grammar as vg
from llamarcp.validate.grammar import check_grammar


@pytest.fixture(scope="module")
def vocab_model(llama_cpp_source: Path) -> Iterator[Any]:
    """A vocab-only model: enough for llama.cpp to parse grammars (grammar_sampler needs a vocab)."""
    from llamarcp._core import Model

    model = Model(llama_cpp_source / "models" / "ggml-vocab-llama-spm.gguf", vocab_only=True)
    yield model
    model.close()


def _chain(n: int, alternatives: int = 1) -> str:
    body = "".join(f"r{i} ::= " + " | ".join([f"r{i + 1}"] * alternatives) + "\n" for i in range(n))
    return f'root ::= r0\n{body}r{n} ::= "a"\n'


# The concrete attacks of issue 15, each with the limit that refuses it.
ATTACKS = {
    "100k nested groups": ("root ::= " + "(" * 100_000 + '"a"' + ")" * 100_000, "MAX_GROUP_DEPTH"),
    "nesting under the size limit": ("root ::= " + "(" * 5000 + '"a"' + ")" * 5000, "MAX_GROUP_DEPTH"),
    "100k-rule chain": (_chain(100_000), "MAX_GRAMMAR_CHARS"),
    "chain under the size limit": (_chain(5000), "MAX_REFERENCE_DEPTH"),
    "max below min": ('root ::= "a"{5,2}', "maximum below its minimum"),
    "1 MB of alternatives": ("root ::= " + " | ".join(f'"w{i}"' for i in range(100_000)), "MAX_GRAMMAR_CHARS"),
    "alternatives under the size limit": (
        "root ::= " + " | ".join(f'"{i}"' for i in range(20_000)),
        "MAX_ALTERNATIVES",
    ),
    "exponential leftmost paths": (_chain(40, alternatives=2), "MAX_PARALLEL_STACKS"),
    "huge repetition count": ('root ::= "a"{0,99999999999999999999999}', "MAX_REPETITION"),
    "repetition over the limit": ('root ::= "a"{2001}', "MAX_REPETITION"),
    "nested repetitions": ('root ::= ("a"{0,100}){0,100}', "MAX_REPETITION"),
    "left recursion": ('root ::= root "a" | "b"', "left recursion"),
    "undefined rule": ("root ::= missing", "never defined"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_are_refused_with_the_limit_named(name: str) -> None:
    text, limit = ATTACKS[name]
    with pytest.raises(GrammarError, match=limit):
        check_grammar(text)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_never_reach_llama_cpp(vocab_model: Any, name: str) -> None:
    from llamarcp.sampling import grammar_sampler

    with pytest.raises(GrammarError):
        grammar_sampler(vocab_model, ATTACKS[name][0])
    with pytest.raises(GrammarError):
        LlamaGrammar.from_string(ATTACKS[name][0])


def test_real_grammars_are_accepted(llama_cpp_source: Path, vocab_model: Any) -> None:
    from llamarcp.sampling import grammar_sampler

    sources = {"JSON_GBNF": JSON_GBNF} | {p.name: p.read_text() for p in (llama_cpp_source / "grammars").glob("*.gbnf")}
    assert len(sources) > 5
    for name, text in sources.items():
        stats = check_grammar(text)
        assert stats.rules >= 1 and stats.max_parallel_stacks >= 1, name
        grammar_sampler(vocab_model, text).close()  # llama.cpp agrees


def test_limits_are_inclusive_at_the_boundary() -> None:
    assert check_grammar('root ::= "a"{0,2000}').rules == vg.MAX_REPETITION + 1
    depth = vg.MAX_GROUP_DEPTH
    assert check_grammar("root ::= " + "(" * depth + '"a"' + ")" * depth).max_group_depth == depth
    with pytest.raises(GrammarError, match="MAX_GROUP_DEPTH"):
        check_grammar("root ::= " + "(" * (depth + 1) + '"a"' + ")" * (depth + 1))
    assert check_grammar(_chain(1000)).max_reference_depth == 1002
    assert check_grammar(_chain(10, alternatives=2)).max_parallel_stacks == 2**10 == vg.MAX_PARALLEL_STACKS


def test_vocab_size_tightens_the_stack_limit() -> None:
    """One token may cost at most MAX_STACK_TOKEN_CHECKS (stack, candidate) checks: 500 stacks took ~0.26 s per
    token on a 32k vocab (it was seconds per token with 100k alternatives)."""
    text = "root ::= (" + " | ".join(f'"w{i}"' for i in range(500)) + ")+"
    assert check_grammar(text, n_vocab=32_000).max_parallel_stacks == 501
    with pytest.raises(GrammarError, match="more than 262 parallel parse stacks"):
        check_grammar(text, n_vocab=64_000)
    with pytest.raises(GrammarError, match=f"more than {vg.MIN_PARALLEL_STACKS} parallel parse stacks"):
        check_grammar(text, n_vocab=256_000)


def test_measures() -> None:
    stats = check_grammar('root ::= "x" item{2,4}\nitem ::= [a-z]+ | "<" item ">"')
    assert stats.rules > 2 and stats.elements > 10 and stats.max_group_depth == 0
    assert stats.max_reference_depth >= 2


def test_type_and_root_errors() -> None:
    with pytest.raises(TypeError):
        check_grammar(b"root ::= 'a'")  # type: ignore[arg-type]
    with pytest.raises(GrammarError, match="root rule 'start'"):
        check_grammar('root ::= "a"', root="start")
    with pytest.raises(GrammarError, match="NUL"):
        check_grammar('root ::= "a\x00"')


# -- generated grammars: llamarcp and llama.cpp agree, and llamarcp never raises anything but GrammarError --------

_NAMES = ["root", "a", "b", "c", "d"]


@st.composite
def _expressions(draw: Any, depth: int = 0) -> str:
    choices = ["literal", "class", "ref", "any"] + (["group", "repeat", "seq"] if depth < 6 else [])
    kind = draw(st.sampled_from(choices))
    if kind == "literal":
        return '"' + draw(st.text(alphabet="xyz01 ", max_size=3)) + '"'
    if kind == "class":
        return draw(st.sampled_from(["[a-z]", "[^\\n]", "[0-9x]", "[\\x41-\\x5A]"]))
    if kind == "ref":
        return draw(st.sampled_from(_NAMES[1:]))
    if kind == "any":
        return "."
    inner = draw(_expressions(depth + 1))
    if kind == "group":
        other = draw(_expressions(depth + 1))
        return f"({inner} | {other})"
    if kind == "repeat":
        low = draw(st.integers(0, 5))
        high = draw(st.one_of(st.none(), st.integers(0, 8)))
        op = draw(st.sampled_from(["*", "+", "?", "{m}", "{m,}", "{m,n}"]))
        suffix = {"{m}": f"{{{low}}}", "{m,}": f"{{{low},}}", "{m,n}": f"{{{low},{high}}}"}.get(op, op)
        return f"({inner}){suffix}"
    return f"{inner} {draw(_expressions(depth + 1))}"


@st.composite
def _grammars(draw: Any) -> str:
    rules = []
    for name in _NAMES:
        alternatives = draw(st.lists(_expressions(), min_size=1, max_size=3))
        rules.append(f"{name} ::= " + " | ".join(alternatives))
    return "\n".join(rules) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_grammars())
def test_generated_grammars_agree_with_llama_cpp(vocab_model: Any, text: str) -> None:
    from llamarcp.sampling import grammar_sampler

    try:
        check_grammar(text)
    except GrammarError as exc:
        if "left recursion" in str(exc):  # a refusal llama.cpp makes too: ask it directly, past the check
            from llamarcp._backend import get_lib
            from llamarcp._core import ffi

            lib = get_lib()
            assert lib.llama_sampler_init_grammar(vocab_model.vocab, text.encode(), b"root") == ffi.NULL
        return  # a limit or `{m,n}` with n < m: llama.cpp must not see it
    grammar_sampler(vocab_model, text).close()  # accepted by llamarcp => accepted by llama.cpp


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='root:=|()[]^"\\-*+?{},.0123456789ab \n#xu', max_size=120))
def test_arbitrary_text_raises_only_grammar_error(text: str) -> None:
    try:
        stats = check_grammar(text)
    except GrammarError:
        return
    assert stats.rules >= 1
