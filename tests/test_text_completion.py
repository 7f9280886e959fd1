"""Completion requests: validation before anything runs, fill-in-the-middle, unlimited max_tokens, prompt
logprobs with echo, several choices."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from llamarcp import Llama
from llamarcp.text_completion import MAX_CHOICES, infill_tokens, prepare

PROMPT = "The quick brown fox"
FIM = {
    "tokenizer.ggml.fim_pre_token_id": 100,
    "tokenizer.ggml.fim_suf_token_id": 101,
    "tokenizer.ggml.fim_mid_token_id": 102,
}


def text_of(result: dict[str, Any]) -> str:
    return str(result["choices"][0]["text"])


def test_prepare_validates_before_decoding(tiny_llama: Llama) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        prepare(tiny_llama, PROMPT, max_tokens=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="logprobs"):
        prepare(tiny_llama, PROMPT, logprobs=-1)
    with pytest.raises(TypeError, match="stop"):
        prepare(tiny_llama, PROMPT, stop=[1])  # type: ignore[list-item]
    request = prepare(tiny_llama, PROMPT, stop="\n", max_tokens=-1)
    assert request.stop == ["\n"] and request.max_tokens == tiny_llama.n_ctx - len(request.prompt_tokens)


def test_zero_or_negative_max_tokens_mean_until_the_context_is_full(fresh: Any) -> None:
    llm = fresh(n_ctx=64)
    eos = llm.token_eos
    for value in (0, -1, None):
        result = llm(PROMPT, max_tokens=value, temperature=0, logit_bias={eos: -1e9})
        assert result["usage"]["total_tokens"] == llm.n_ctx and result["choices"][0]["finish_reason"] == "length"


def test_suffix_needs_fim_tokens(tiny_llama: Llama) -> None:
    with pytest.raises(ValueError, match="FIM tokens"):
        tiny_llama(PROMPT, suffix=" over the dog")


def test_fill_in_the_middle_layout(tiny_model_path: Path) -> None:
    with Llama(str(tiny_model_path), n_ctx=128, n_threads=1, kv_overrides=FIM) as llm:
        head, tail = llm.tokenize(b"def f(x):", add_bos=False), llm.tokenize(b"return y", add_bos=False)
        bos = [llm.token_bos]
        assert infill_tokens(llm, "def f(x):", "return y") == [*bos, 100, *head, 101, *tail, 102]
        result = llm("def f(x):", suffix="return y", max_tokens=4, temperature=0)
        assert result["usage"]["prompt_tokens"] == len(head) + len(tail) + 4
        assert text_of(result) == text_of(llm([*bos, 100, *head, 101, *tail, 102], max_tokens=4, temperature=0))
    with Llama(str(tiny_model_path), n_ctx=128, n_threads=1, kv_overrides=FIM, spm_infill=True) as llm:
        assert infill_tokens(llm, "def f(x):", "return y")[1:3] == [101, tail[0]]


def test_echo_with_logprobs_covers_the_prompt(fresh: Any) -> None:
    llm = fresh()
    prompt = llm.tokenize(PROMPT.encode())
    result = llm(PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=2)
    lp = result["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(prompt) + result["usage"]["completion_tokens"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(v <= 0 for v in lp["token_logprobs"][1:]) and all(len(t) == 2 for t in lp["top_logprobs"][1:])
    assert text_of(result).startswith(PROMPT)
    # The logprob of prompt token i is the log-softmax of the logits after tokens[:i].
    import numpy as np

    for i in (1, len(prompt) - 1):
        llm.reset()
        llm.eval(prompt[:i])
        logits = llm._engine_or_raise().logits().astype(np.float64)
        expected = float(logits[prompt[i]] - logits.max() - math.log(np.exp(logits - logits.max()).sum()))
        assert lp["token_logprobs"][i] == pytest.approx(expected, abs=1e-4)
    # Generation after it is what it is without echo.
    assert text_of(result)[len(PROMPT) :] == text_of(llm(PROMPT, max_tokens=3, temperature=0))


def test_choices_without_batching_reuse_the_prompt(fresh: Any) -> None:
    llm = fresh()
    result = llm(PROMPT, max_tokens=6, temperature=0.9, seed=11, n=3)
    assert [c["text"] for c in result["choices"]] == [
        text_of(llm(PROMPT, max_tokens=6, temperature=0.9, seed=s)) for s in (11, 12, 13)
    ]
    with pytest.raises(ValueError, match="n must be"):
        llm(PROMPT, n=MAX_CHOICES + 1)


def test_create_completions_keeps_order(fresh: Any) -> None:
    llm = fresh()
    prompts = [PROMPT, "Once upon a time", "1, 2, 3,"]
    results = llm.create_completions(prompts, max_tokens=5, temperature=0)
    assert [text_of(r) for r in results] == [text_of(llm(p, max_tokens=5, temperature=0)) for p in prompts]
    with pytest.raises(TypeError):
        llm.create_completions(PROMPT)
    with pytest.raises(ValueError, match="stream"):
        llm.create_completions(prompts, stream=True)
