"""Speculative decoding with a draft model (llamarcp.draft_decoding): greedy output is exactly plain greedy
decoding's, whatever the drafts are, and good drafts are accepted several per decode."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llamarcp import Llama
from llamarcp.compat.speculative import LlamaDraftModel, LlamaPromptLookupDecoding
from llamarcp.errors import TokenizeError

REPETITIVE = "one two three four five six seven. one two three four five six seven. one two three"
PROMPTS = [REPETITIVE, "Once upon a time", "a b a b a b a b a b a b"]


class Oracle(LlamaDraftModel):
    """Proposes the continuation a plain greedy run produced: every draft should be accepted."""

    def __init__(self, full: list[int], n: int = 6) -> None:
        self.full, self.n = full, n

    def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
        k = len(input_ids)
        return np.asarray(self.full[k : k + self.n], dtype=np.intc)


class Wrong(LlamaDraftModel):
    """Always proposes a token that is never the argmax it is checked against (token 0 repeated)."""

    def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
        return np.zeros(5, dtype=np.intc)


@pytest.fixture(scope="module")
def plain(tiny_model_path: Path) -> Iterator[Llama]:
    with Llama(str(tiny_model_path), n_ctx=512, n_threads=1) as llm:
        yield llm


def make(path: Path, draft: Any, **kwargs: Any) -> Llama:
    return Llama(str(path), n_ctx=kwargs.pop("n_ctx", 512), n_threads=1, draft_model=draft, **kwargs)


def greedy(llm: Llama, prompt: str, n: int = 40) -> str:
    return str(llm(prompt, max_tokens=n, temperature=0)["choices"][0]["text"])


@pytest.mark.parametrize("draft", [LlamaPromptLookupDecoding(), LlamaPromptLookupDecoding(3, 2), Wrong()])
def test_greedy_output_is_unchanged(plain: Llama, tiny_model_path: Path, draft: Any) -> None:
    with make(tiny_model_path, draft) as spec:
        for prompt in PROMPTS:
            assert greedy(spec, prompt) == greedy(plain, prompt)
            assert spec.last_timings["predicted_n"] == plain.last_timings["predicted_n"]
            # The history (and so the next request's prefix reuse) is exactly what plain decoding leaves.
            assert spec.input_ids == plain.input_ids


def test_right_drafts_are_accepted_several_per_decode(plain: Llama, tiny_model_path: Path) -> None:
    text = greedy(plain, REPETITIVE, 40)
    full = list(plain.input_ids)  # prompt + generated tokens (all but the last, which is never decoded)
    with make(tiny_model_path, Oracle(full)) as spec:
        assert greedy(spec, REPETITIVE, 40) == text
        timings = spec.last_timings
    assert timings["draft_n"] > 0 and timings["draft_accepted_n"] >= 0.8 * timings["draft_n"]
    with make(tiny_model_path, Wrong()) as wrong:
        greedy(wrong, REPETITIVE, 40)
        assert wrong.last_timings["draft_accepted_n"] == 0 and wrong.last_timings["draft_n"] > 0


def test_streaming_and_max_tokens(plain: Llama, tiny_model_path: Path) -> None:
    with make(tiny_model_path, LlamaPromptLookupDecoding()) as spec:
        for n in (1, 2, 7):
            assert greedy(spec, REPETITIVE, n) == greedy(plain, REPETITIVE, n)
            assert spec.last_timings["predicted_n"] <= n
        chunks = list(spec(REPETITIVE, max_tokens=30, temperature=0, stream=True))
        assert "".join(c["choices"][0]["text"] for c in chunks) == greedy(plain, REPETITIVE, 30)


def test_full_context_stops_like_plain_decoding(plain: Llama, tiny_model_path: Path) -> None:
    with Llama(str(tiny_model_path), n_ctx=256, n_threads=1) as small:
        prompt_tokens = small.tokenize(REPETITIVE.encode())
        expected = small(REPETITIVE, max_tokens=None, temperature=0)
        with make(tiny_model_path, LlamaPromptLookupDecoding(), n_ctx=256) as spec:
            got = spec(REPETITIVE, max_tokens=None, temperature=0)
            assert got["choices"][0]["text"] == expected["choices"][0]["text"]
            assert got["choices"][0]["finish_reason"] == expected["choices"][0]["finish_reason"]
            assert spec.n_tokens <= spec.n_ctx and len(prompt_tokens) < spec.n_tokens


def test_sampled_requests_ignore_the_draft_model(plain: Llama, tiny_model_path: Path) -> None:
    calls: list[int] = []

    class Counting(LlamaPromptLookupDecoding):
        def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
            calls.append(len(input_ids))
            return super().__call__(input_ids)

    with make(tiny_model_path, Counting()) as spec:
        sampled = spec(REPETITIVE, max_tokens=10, temperature=0.8, seed=3)["choices"][0]["text"]
        assert sampled == plain(REPETITIVE, max_tokens=10, temperature=0.8, seed=3)["choices"][0]["text"]
        assert calls == []
        greedy(spec, REPETITIVE, 10)
        assert calls


def test_a_draft_model_returning_bad_ids_raises_a_clear_error(plain: Llama, tiny_model_path: Path) -> None:
    class Broken(LlamaDraftModel):
        def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
            return np.asarray([10**7], dtype=np.intc)

    with make(tiny_model_path, Broken()) as spec:
        with pytest.raises(TokenizeError, match="outside the vocab"):
            greedy(spec, REPETITIVE, 10)
        spec.draft_model = None  # still usable, its history consistent with its memory
        assert greedy(spec, REPETITIVE, 10) == greedy(plain, REPETITIVE, 10)
