"""Speculative decoding inside continuous batching (`Llama(n_parallel=N, draft_model=...)`, llamarcp.ngram_draft):
greedy answers are exactly plain greedy decoding's whatever the drafts, concurrent requests keep their own
drafts, right drafts are accepted several per step, and wrong ones make drafting pause."""

from __future__ import annotations

import concurrent.futures
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llamarcp import Llama
from llamarcp.compat.speculative import LlamaDraftModel, LlamaPromptLookupDecoding
from llamarcp.ngram_draft import DraftControl, NgramIndex
from llamarcp.placement import SlotRequest, slot_request

REPETITIVE = "one two three four five six seven. one two three four five six seven. one two three"
PROMPTS = [REPETITIVE, "Once upon a time", "a b a b a b a b a b a b"]


class Oracle(LlamaDraftModel):
    """Proposes what plain greedy decoding produced after each history: every draft is right."""

    def __init__(self, continuations: dict[tuple[int, ...], list[int]], n: int = 6) -> None:
        self.continuations, self.n = continuations, n

    def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
        ids = [int(t) for t in input_ids]
        for full in self.continuations.values():
            if full[: len(ids)] == ids:
                return np.asarray(full[len(ids) : len(ids) + self.n], dtype=np.intc)
        return np.empty(0, dtype=np.intc)


class Wrong(LlamaDraftModel):
    def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
        return np.zeros(5, dtype=np.intc)


class Broken(LlamaDraftModel):
    def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
        raise RuntimeError("draft model bug")


@pytest.fixture(scope="module")
def plain(tiny_model_path: Path) -> Iterator[Llama]:
    with Llama(str(tiny_model_path), n_ctx=512, n_threads=1, n_parallel=3) as llm:
        yield llm


def greedy(llm: Llama, prompt: str, n: int = 60) -> str:
    return str(llm(prompt, max_tokens=n, temperature=0)["choices"][0]["text"])


@pytest.mark.parametrize("draft", [LlamaPromptLookupDecoding(), LlamaPromptLookupDecoding(3, 2), Wrong(), Broken()])
def test_greedy_output_is_unchanged(plain: Llama, tiny_model_path: Path, draft: Any) -> None:
    expected = [greedy(plain, p) for p in PROMPTS]
    with Llama(str(tiny_model_path), n_ctx=512, n_threads=1, n_parallel=3, draft_model=draft) as spec:
        assert [greedy(spec, p) for p in PROMPTS] == expected
        # Concurrent requests (their drafts share the steps). Only prompts whose greedy answer has no near-tie
        # on the random model: with other rows in a batch, kernels may round the last bits differently (the
        # "Once upon a time" answer flips a token under plain batching too).
        stable = [PROMPTS[0], PROMPTS[2]]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda p: greedy(spec, p), stable * 2))
        assert together == [expected[0], expected[2]] * 2
        assert greedy(spec, PROMPTS[0], 1) == greedy(plain, PROMPTS[0], 1)
        # Greedy with a bias, a repeat penalty (stateful) and a grammar: each row is sampled in order as without
        # drafts, so these answers are unchanged too.
        for extra in ({"logit_bias": {2: float("-inf")}, "repeat_penalty": 1.3}, {"grammar": 'root ::= ("a" | " b")+'}):
            want = plain(REPETITIVE, max_tokens=40, temperature=0, **extra)["choices"][0]["text"]
            assert spec(REPETITIVE, max_tokens=40, temperature=0, **extra)["choices"][0]["text"] == want
        chunks = list(spec(REPETITIVE, max_tokens=30, temperature=0, stream=True))
        assert "".join(c["choices"][0]["text"] for c in chunks) == greedy(plain, REPETITIVE, 30)


def test_right_drafts_are_accepted_several_per_step(plain: Llama, tiny_model_path: Path) -> None:
    continuations = {}
    for prompt in PROMPTS:
        prompt_ids = plain.tokenize(prompt.encode())
        generated = list(itertools.islice(plain.generate(prompt_ids, temp=0), 80))
        continuations[tuple(prompt_ids)] = [*prompt_ids, *generated]
    with Llama(str(tiny_model_path), n_ctx=512, n_threads=1, n_parallel=3, draft_model=Oracle(continuations)) as spec:
        assert greedy(spec, PROMPTS[1]) == greedy(plain, PROMPTS[1])
        timings = spec.last_timings
        assert timings["draft_n"] > 0 and timings["draft_accepted_n"] >= 0.5 * timings["draft_n"]
        assert timings["draft_steps"] < timings["predicted_n"] / 2  # several tokens per step
        stats = spec.generation_stats
        assert stats.draft_accepted == timings["draft_accepted_n"] and stats.draft_steps == timings["draft_steps"]
    with Llama(str(tiny_model_path), n_ctx=512, n_threads=1, n_parallel=3, draft_model=Wrong()) as wrong:
        greedy(wrong, PROMPTS[1], 200)
        timings = wrong.last_timings
        assert timings["draft_accepted_n"] == 0
        assert timings["draft_steps"] < 60  # drafting paused after the misses instead of trying every step


def test_draft_max_per_request(tiny_model_path: Path) -> None:
    with Llama(str(tiny_model_path), n_ctx=512, n_threads=1, n_parallel=2, draft_model=Wrong()) as spec:
        with slot_request(SlotRequest(draft_max=0)):
            greedy(spec, REPETITIVE)
        assert "draft_n" not in spec.last_timings
        with slot_request(SlotRequest(draft_max=1)):
            greedy(spec, REPETITIVE)
        assert spec.last_timings["draft_n"] == spec.last_timings["draft_steps"]  # one draft per step at most


def _consensus_lookup(ids: list[int], size: int, n: int) -> list[int]:
    """Prompt lookup's proposal, cut where the latest earlier occurrence of the same n-gram went on differently
    (a brute-force reference for NgramIndex)."""
    proposal = LlamaPromptLookupDecoding.find_candidate_pred_tokens(np.asarray(ids), size, n).tolist()
    total = len(ids)
    for k in range(min(size, total - 1), 0, -1):
        starts = [s for s in range(total - k) if ids[s : s + k] == ids[total - k :]]
        if not starts:
            continue
        latest = starts[-1] + k
        for i, token in enumerate(proposal):
            if latest + i < total and ids[latest + i] != token:
                return proposal[:i]
        return proposal
    return proposal


def test_ngram_index_matches_prompt_lookup() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        ids = rng.integers(0, 6, size=int(rng.integers(1, 40))).tolist()
        size, n = int(rng.integers(1, 4)), int(rng.integers(1, 8))
        index = NgramIndex(size, ids[: len(ids) // 2])
        index.extend(ids[len(ids) // 2 :])
        assert index.propose(n) == _consensus_lookup(ids, size, n)
    # Rows that differ by a counter: the counter is not drafted, the text around it is.
    row = [7, 8, 9]  # `{"id": ` ... `, "name"` in a JSON array
    history = [*row, 1, 5, *row, 2, 5, *row]
    assert NgramIndex(2, history).propose(4) == []  # 1 then 2 after `8 9`: no agreement on the next token
    assert NgramIndex(2, [*history, 1]).propose(4) == [5, 7, 8, 9]  # `9 1` seen once: its continuation
    assert NgramIndex(2, [*history, 3]).propose(4) == []  # a new counter value: nothing to look up
    index = NgramIndex(2, [1, 2, 3, 4, 1, 2, 3, 4, 1, 2])
    assert index.propose(5) == [3, 4, 1, 2, 3]  # repeated text: every occurrence agrees


def test_draft_control_adapts() -> None:
    control = DraftControl(8)
    assert control.budget() == 2
    control.tried(2)
    control.adapt(2, 2, 0.01)
    assert control.budget() == 4
    control.tried(4)
    control.adapt(4, 1, 0.01)
    assert control.budget() == 2
    control.tried(2)  # the first window (3 steps) ends with 3 of 8 accepted, no timing yet: pause
    control.adapt(2, 0, 0.01)
    assert [control.budget() for _ in range(DraftControl.PAUSE)] == [0] * DraftControl.PAUSE
    assert control.budget() == 1  # the probe starts small

    # With plain steps measured, a window is judged by tokens per second, whatever the acceptance.
    control.observe_plain(0.1)  # 10 tokens/s without drafts
    for _ in range(DraftControl.PROBE):
        control.tried(control.n)
        control.adapt(control.n, 0, 0.05)  # 20 tokens/s with them: it pays, drafting goes on
    assert control.budget() == 1
    for _ in range(20):
        control.observe_plain(0.01)  # now 100 tokens/s without drafts
    for steps, pause in ((DraftControl.WINDOW, DraftControl.PAUSE), (DraftControl.PROBE, 2 * DraftControl.PAUSE)):
        for _ in range(steps):  # drafting at 50 tokens/s does not pay: the pauses double
            control.tried(control.n)
            control.adapt(control.n, control.n, 0.02 * (control.n + 1))
        assert [control.budget() for _ in range(pause)] == [0] * pause
        assert control.budget() == 1


def test_draft_control_measures_plain_steps_first() -> None:
    control = DraftControl(8)
    for _ in range(DraftControl.WINDOW):  # all accepted, nothing measured yet: judged by acceptance, then measure
        control.tried(control.n)
        control.adapt(control.n, control.n, 0.01)
    assert [control.budget() for _ in range(DraftControl.MEASURE)] == [0] * DraftControl.MEASURE
    assert control.budget() == 8


def test_draft_control_starts_from_the_engines_plain_rate() -> None:
    """With the plain rate known from earlier requests, the first window is judged by time; drafts that are all
    right but slower than plain steps (a draft model as slow as the target) do not grow, and a window far below
    the plain rate is judged at once."""
    control = DraftControl(8, plain_rate=100.0)  # 10 ms per plain token
    for _ in range(DraftControl.WINDOW):
        assert control.budget() == 2
        control.tried(2)
        control.adapt(2, 2, 0.04)  # 3 tokens in 40 ms: 75 tokens/s, all accepted, but slower: no growth
    assert [control.budget() for _ in range(DraftControl.PAUSE)] == [0] * DraftControl.PAUSE
    assert control.budget() == 1

    control = DraftControl(8, plain_rate=100.0)
    control.tried(2)
    control.adapt(2, 0, 0.05)  # 1 token in 50 ms: under half the plain rate, judged now
    assert control.budget() == 0

    control = DraftControl(8, plain_rate=100.0)
    control.tried(2)
    control.adapt(2, 2, 0.015)  # 3 tokens in 15 ms: faster than plain, the length doubles
    assert control.budget() == 4
    control.tried(4)
    control.adapt(4, 4, 0.02)
    control.tried(8)
    control.adapt(8, 8, 0.03)
    # A paid window; this sequence's own plain steps are measured before drafting on.
    assert [control.budget() for _ in range(DraftControl.MEASURE)] == [0] * DraftControl.MEASURE
    assert control.budget() == 8


def test_draft_control_minimum() -> None:
    control = DraftControl(8, n_min=3)
    assert control.budget() == 3
    control.tried(3)
    control.adapt(3, 0, 0.01)
    assert control.budget() == 3  # not below the minimum after a miss


def test_one_sequence_drafts_are_counted(tiny_model_path: Path) -> None:
    """The one-sequence engine (n_parallel=1) reports drafts, accepted drafts and verification steps too."""
    with Llama(str(tiny_model_path), n_ctx=512, n_threads=1, draft_model=LlamaPromptLookupDecoding()) as spec:
        greedy(spec, REPETITIVE, 80)
        timings, stats = spec.last_timings, spec.generation_stats
    assert timings["draft_n"] > 0 and 0 < timings["draft_steps"] <= timings["draft_n"]
    assert (stats.draft_tokens, stats.draft_accepted, stats.draft_steps) == (
        timings["draft_n"],
        timings["draft_accepted_n"],
        timings["draft_steps"],
    )


def test_draft_control_carries_a_pause_to_the_next_request() -> None:
    """A draft model whose drafts did not pay starts its next request paused (with the pause it last served);
    a paid window clears it."""
    control = DraftControl(8, plain_rate=100.0)
    assert control.carried_pause() == 0  # nothing judged yet
    control.tried(2)
    control.adapt(2, 0, 0.05)  # far below the plain rate: judged at once, paused
    assert control.carried_pause() == DraftControl.PAUSE
    nxt = DraftControl(8, plain_rate=100.0, paused=control.carried_pause())
    assert [nxt.budget() for _ in range(DraftControl.PAUSE)] == [0] * DraftControl.PAUSE
    assert nxt.budget() == 1  # then a small probe
    nxt.tried(1)
    nxt.adapt(1, 0, 0.05)
    assert nxt.carried_pause() == 2 * DraftControl.PAUSE  # the failed probe doubles it
    nxt.paused_for = 0
    for _ in range(DraftControl.PROBE):
        nxt.tried(1)
        nxt.adapt(1, 1, 0.005)  # 2 tokens in 5 ms: it pays now
    assert nxt.carried_pause() == 0
