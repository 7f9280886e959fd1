"""The sampler chain llamarcp builds for a request's knobs: order, what is left out, validation."""

from __future__ import annotations

from typing import Any

import pytest

from llamarcp.errors import GrammarError
from llamarcp.sampling import (
    LLAMA_DEFAULT_SEED,
    LogitsProcessorList,
    SamplingParams,
    StoppingCriteriaList,
    as_logits_processor,
    as_stopping_criteria,
    build_sampler_chain,
    grammar_sampler,
)


def names(llm: Any, **knobs: Any) -> list[str]:
    chain = build_sampler_chain(llm._model, SamplingParams(**knobs), history=[1, 2, 3])
    try:
        assert len(chain) == len(chain.names)  # what llama.cpp holds is what we recorded
        return chain.names
    finally:
        chain.close()


def test_default_chain_is_llama_cpps_order(tiny_llama: Any) -> None:
    assert names(tiny_llama) == ["top_k", "top_p", "min_p", "temp", "dist"]


def test_every_stage_in_order(tiny_llama: Any) -> None:
    full = names(tiny_llama, logit_bias={5: 1.0}, repeat_penalty=1.1, grammar='root ::= "a"', typical_p=0.9, top_p=0.9)
    assert full == ["logit_bias", "penalties", "grammar", "top_k", "typical", "top_p", "min_p", "temp", "dist"]


def test_stages_that_do_nothing_are_left_out(tiny_llama: Any) -> None:
    assert names(tiny_llama, top_k=0, top_p=1.0, min_p=0.0) == ["temp", "dist"]


def test_greedy_and_mirostat_chains(tiny_llama: Any) -> None:
    assert names(tiny_llama, temperature=0) == ["greedy"]
    assert names(tiny_llama, temperature=0, repeat_penalty=1.2) == ["penalties", "greedy"]
    assert names(tiny_llama, mirostat_mode=1) == ["temp", "mirostat"]
    assert names(tiny_llama, mirostat_mode=2) == ["temp", "mirostat_v2"]


def test_grammar_can_stay_out_of_the_chain(tiny_llama: Any) -> None:
    chain = build_sampler_chain(tiny_llama._model, SamplingParams(grammar='root ::= "a"'), grammar_in_chain=False)
    assert "grammar" not in chain.names
    chain.close()


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"repeat_penalty": 0.0}, "repeat_penalty"),
        ({"mirostat_mode": 3}, "mirostat_mode"),
        ({"seed": 2**32}, "seed"),
        ({"logit_bias": {10**9: 1.0}}, "logit_bias"),
    ],
)
def test_bad_knobs_are_refused_before_c(tiny_llama: Any, knobs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**knobs).validate(tiny_llama.n_vocab)


def test_default_seed_comes_from_llama_h() -> None:
    from llamarcp import lib

    assert LLAMA_DEFAULT_SEED == lib.LLAMA_DEFAULT_SEED == 0xFFFFFFFF


def test_grammar_sampler_takes_text_or_a_grammar_object(tiny_llama: Any) -> None:
    from llamarcp.grammar import LlamaGrammar

    grammar_sampler(tiny_llama._model, 'root ::= "a"').close()
    grammar_sampler(tiny_llama._model, LlamaGrammar('start ::= "b"', root="start")).close()
    with pytest.raises(TypeError):
        grammar_sampler(tiny_llama._model, 42)
    with pytest.raises(GrammarError, match="empty"):
        grammar_sampler(tiny_llama._model, "   ")
    with pytest.raises(GrammarError, match="invalid GBNF"):
        grammar_sampler(tiny_llama._model, "root ::= (")


def test_processor_and_criteria_wrapping() -> None:
    double = LogitsProcessorList([lambda ids, s: s * 2, lambda ids, s: s + 1])
    assert double([], 3) == 7
    assert StoppingCriteriaList([lambda ids, s: False, lambda ids, s: True])([], None) is True
    assert isinstance(as_logits_processor([abs]), LogitsProcessorList)
    assert isinstance(as_stopping_criteria((abs,)), StoppingCriteriaList)
    assert as_logits_processor(None) is None and as_stopping_criteria(abs) is abs
    with pytest.raises(TypeError):
        as_logits_processor(3)
    with pytest.raises(TypeError):
        as_stopping_criteria("stop")
