"""A second model drafting for the target (llamarcp.draft_model.DraftModel): greedy output is exactly the target's
plain greedy output with one sequence and in the batching scheduler, a draft model identical to the target has
its drafts accepted, drafts are counted, and a draft model that cannot serve the target is refused clearly."""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llamarcp import Llama
from llamarcp.draft_model import DraftModel
from llamarcp.errors import DraftModelError, ModelLoadError, ModelNotFoundError
from llamarcp.placement import SlotRequest, slot_request

REPETITIVE = "one two three four five six seven. one two three four five six seven. one two three"
PROMPTS = [REPETITIVE, "Once upon a time", "a b a b a b a b a b a b"]


@pytest.fixture(scope="module")
def other_weights(tiny_model_writer: Any, llama_cpp_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's vocab with other random weights: a draft model whose drafts are mostly wrong."""
    out = tmp_path_factory.mktemp("draft") / "tiny-other.gguf"
    return Path(
        tiny_model_writer.write_tiny_model(out, llama_cpp_source / "models" / tiny_model_writer.VOCAB_FILE, seed=99)
    )


@pytest.fixture(scope="module")
def plain(tiny_model_path: Path) -> Iterator[Llama]:
    with Llama(str(tiny_model_path), n_ctx=512, n_threads=1) as llm:
        yield llm


def greedy(llm: Llama, prompt: str, n: int = 48) -> str:
    return str(llm(prompt, max_tokens=n, temperature=0)["choices"][0]["text"])


@pytest.mark.parametrize("n_parallel", [1, 3])
def test_same_model_drafts_are_accepted(plain: Llama, tiny_model_path: Path, n_parallel: int) -> None:
    expected = [greedy(plain, p) for p in PROMPTS]
    draft = DraftModel(tiny_model_path, num_pred_tokens=6)
    with draft, Llama(str(tiny_model_path), n_ctx=512, n_threads=1, n_parallel=n_parallel, draft_model=draft) as spec:
        for prompt, want in zip(PROMPTS, expected):
            assert greedy(spec, prompt) == want
            timings = spec.last_timings
            # The same weights agree with the target except where batch rounding flips a near-tie.
            assert timings["draft_n"] > 0 and timings["draft_accepted_n"] >= 0.8 * timings["draft_n"]
            assert timings["draft_steps"] < timings["predicted_n"] / 2  # several tokens per target decode
        stats = spec.generation_stats
        assert stats.draft_tokens > 0 and stats.draft_accepted > 0 and stats.draft_steps > 0
        # The history the draft sequence holds follows the accepted tokens: a second request reuses it.
        assert greedy(spec, REPETITIVE, 20) == greedy(plain, REPETITIVE, 20)


@pytest.mark.parametrize("n_parallel", [1, 3])
def test_other_draft_model_keeps_greedy_output(
    plain: Llama, tiny_model_path: Path, other_weights: Path, n_parallel: int
) -> None:
    expected = [greedy(plain, p, 80) for p in PROMPTS]
    draft = DraftModel(other_weights)
    with draft, Llama(str(tiny_model_path), n_ctx=512, n_threads=1, n_parallel=n_parallel, draft_model=draft) as spec:
        assert [greedy(spec, p, 80) for p in PROMPTS] == expected
        assert spec.generation_stats.draft_tokens > 0
        chunks = list(spec(REPETITIVE, max_tokens=30, temperature=0, stream=True))
        assert "".join(c["choices"][0]["text"] for c in chunks) == greedy(plain, REPETITIVE, 30)
        sampled = spec(REPETITIVE, max_tokens=12, temperature=0.8, seed=5)["choices"][0]["text"]
        if n_parallel == 1:  # sampled requests ignore the draft model
            assert sampled == plain(REPETITIVE, max_tokens=12, temperature=0.8, seed=5)["choices"][0]["text"]
        if n_parallel > 1:
            # Concurrent requests, one draft sequence per slot. Prompts without a near-tie in their answer
            # (see test_batching_drafts: batch rounding may flip one on the random model).
            stable = [PROMPTS[0], PROMPTS[2]]
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                together = list(pool.map(lambda p: greedy(spec, p, 80), stable * 2))
            assert together == [expected[0], expected[2]] * 2
            with slot_request(SlotRequest(draft_max=0)):
                greedy(spec, REPETITIVE)
            assert "draft_n" not in spec.last_timings


@pytest.mark.parametrize("n_parallel", [1, 2])
def test_a_draft_model_that_did_not_pay_starts_the_next_request_paused(
    plain: Llama, tiny_model_path: Path, other_weights: Path, n_parallel: int
) -> None:
    """Both engines read the pause carried by the draft model (llamarcp.ngram_draft.carried_pause): within it a
    request drafts nothing, so a draft model that does not pay costs no prompt pass and no first window again."""
    from llamarcp.ngram_draft import DraftControl, carried_pause, remember_pause

    draft = DraftModel(other_weights)
    with draft, Llama(str(tiny_model_path), n_ctx=512, n_threads=1, n_parallel=n_parallel, draft_model=draft) as spec:
        failed = DraftControl(8, plain_rate=1e6)
        failed.tried(2)
        failed.adapt(2, 0, 1.0)  # as a request whose drafts did not pay would leave it
        remember_pause(draft, failed)
        assert carried_pause(draft) == DraftControl.PAUSE
        assert greedy(spec, REPETITIVE, DraftControl.PAUSE - 4) == greedy(plain, REPETITIVE, DraftControl.PAUSE - 4)
        assert spec.last_timings.get("draft_n", 0) == 0
        remember_pause(draft, DraftControl(8))  # a control that was never judged carries nothing
        assert greedy(spec, REPETITIVE, 24) == greedy(plain, REPETITIVE, 24)
        assert spec.last_timings["draft_n"] > 0


def test_llama_cpp_python_call_and_draft(plain: Llama, tiny_model_path: Path) -> None:
    """`draft_model(input_ids)` (llama-cpp-python's LlamaDraftModel) proposes the draft model's greedy tokens."""
    prompt = plain.tokenize(REPETITIVE.encode())
    tokens = plain.generate(prompt, temp=0)
    expected = [next(tokens) for _ in range(5)]
    tokens.close()
    with DraftModel(tiny_model_path, num_pred_tokens=5) as draft:
        with pytest.raises(DraftModelError, match="not attached"):
            draft(np.asarray(prompt))
        with Llama(str(tiny_model_path), n_ctx=512, n_threads=1, draft_model=draft):
            proposed = draft(np.asarray(prompt, dtype=np.intc))
            assert proposed.dtype == np.intc and proposed.tolist() == expected
            assert draft.draft(prompt, 2) == expected[:2]
            assert draft.draft([*prompt, *expected[:3]], 2) == expected[3:5]  # continues from its cache
            assert draft.draft(prompt, 0) == []


def test_draft_sequences_follow_any_history(plain: Llama, tiny_model_path: Path) -> None:
    """Each draft sequence keeps the common prefix of what it holds and the new history and decodes the rest:
    after histories that grow, shrink and branch, in two sequences at once, its drafts are what the same model
    proposes from scratch."""
    rng = np.random.default_rng(3)
    base = plain.tokenize(REPETITIVE.encode())
    with DraftModel(tiny_model_path, num_pred_tokens=4) as draft, DraftModel(tiny_model_path) as fresh:
        llm = Llama(str(tiny_model_path), n_ctx=256, n_threads=1, n_parallel=2, draft_model=draft)
        reference = Llama(str(tiny_model_path), n_ctx=256, n_threads=1, draft_model=fresh)
        with llm, reference:
            histories = [list(base), list(base[:5])]
            for _ in range(12):
                for seq_id, history in enumerate(histories):
                    cut = int(rng.integers(1, len(history) + 1))
                    extra = rng.integers(3, 1000, size=int(rng.integers(0, 6))).tolist()
                    history[:] = [*history[:cut], *extra][:200]
                    fresh.sequence(0)._reset()
                    drafts = draft.draft(history, 4, seq_id)
                    assert drafts == fresh.draft(history, 4)
                    decoded = drafts[:-1] if len(drafts) == 4 else drafts  # the last draft is not decoded yet
                    assert draft.sequence(seq_id).tokens == history + decoded
                # Both sequences drafted together (the scheduler's slots): one decode per draft position.
                together = draft.draft_many([(0, histories[0], 4), (1, histories[1], 3)])
                fresh.sequence(0)._reset()
                alone = [fresh.draft(histories[0], 4)]
                fresh.sequence(0)._reset()
                alone.append(fresh.draft(histories[1], 3))
                assert together == alone


def test_draft_context_is_bounded_by_the_targets(plain: Llama, tiny_model_path: Path) -> None:
    """As many KV cells as the target's context: n_parallel x n_ctx, or n_ctx when the slots share one cache."""
    for kv_unified, cells in ((False, 2 * 256), (True, 256)):
        draft = DraftModel(tiny_model_path)
        llm = Llama(
            str(tiny_model_path), n_ctx=256, n_threads=1, n_parallel=2, kv_unified=kv_unified, draft_model=draft
        )
        with draft, llm:
            assert draft._ctx is not None and draft._ctx.n_ctx() == cells
            assert len(draft._sequences) == 2
            assert greedy(llm, REPETITIVE) == greedy(plain, REPETITIVE)
            with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two long answers: the shared cache fills up
                answers = list(
                    pool.map(functools.partial(llm, max_tokens=200, temperature=0), [REPETITIVE, PROMPTS[2]])
                )
            assert all(a["choices"][0]["finish_reason"] in ("length", "stop") for a in answers)


def test_catch_up_larger_than_the_context_batch_is_no_abort(tiny_model_path: Path) -> None:
    """Two slots catching up 280 tokens at once in a 256-cell draft context: llama.cpp lowers n_batch to 256 and
    asserts a decode fits it (SIGABRT before the fix); now the catch-up is cut to the context's batch and the
    step that finds no room drafts nothing."""
    draft = DraftModel(tiny_model_path)
    llm = Llama(str(tiny_model_path), n_ctx=256, n_threads=1, n_parallel=2, kv_unified=True, draft_model=draft)
    with draft, llm:
        assert draft._batch is not None and draft._batch.capacity <= 256
        histories = [[(i * 7 + k) % 50 + 10 for i in range(140)] for k in (1, 2)]
        assert draft.draft_many([(0, histories[0], 4), (1, histories[1], 4)]) == [[], []]
        assert len(draft.draft(histories[0][:20], 3, 0)) <= 3  # the context still drafts afterwards


def test_incompatible_vocab_is_refused(tiny_model_path: Path, tiny_bert_path: Path) -> None:
    with DraftModel(tiny_bert_path) as draft, pytest.raises(DraftModelError, match="vocab"):
        Llama(str(tiny_model_path), n_ctx=256, n_threads=1, draft_model=draft)


def test_one_open_llama_at_a_time(tiny_model_path: Path) -> None:
    with DraftModel(tiny_model_path) as draft:
        first = Llama(str(tiny_model_path), n_ctx=256, n_threads=1, draft_model=draft)
        with pytest.raises(DraftModelError, match="another open Llama"):
            Llama(str(tiny_model_path), n_ctx=256, n_threads=1, draft_model=draft)
        first.close()
        with Llama(str(tiny_model_path), n_ctx=256, n_threads=1, draft_model=draft) as second:
            assert greedy(second, REPETITIVE, 8)


def test_bad_arguments(tiny_model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        DraftModel(tmp_path / "missing.gguf")
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"nope")
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        DraftModel(not_gguf)
    for bad in ({"num_pred_tokens": 0}, {"num_pred_tokens": 257}, {"num_pred_tokens": True}):
        with pytest.raises(ValueError, match="num_pred_tokens"):
            DraftModel(tiny_model_path, **bad)
    with pytest.raises(ValueError, match="min_pred_tokens"):
        DraftModel(tiny_model_path, num_pred_tokens=2, min_pred_tokens=3)
    with pytest.raises(ValueError, match="n_threads"):
        DraftModel(tiny_model_path, n_threads=0)


def test_min_pred_tokens(plain: Llama, tiny_model_path: Path) -> None:
    """A proposal shorter than min_pred_tokens is not tried: with the minimum at the maximum, every drafting step
    tries all of them (the adaptive length never goes below it)."""
    draft = DraftModel(tiny_model_path, num_pred_tokens=4, min_pred_tokens=4)
    with draft, Llama(str(tiny_model_path), n_ctx=512, n_threads=1, draft_model=draft) as spec:
        assert greedy(spec, REPETITIVE) == greedy(plain, REPETITIVE)
        timings = spec.last_timings
        assert timings["draft_steps"] > 0 and timings["draft_n"] == 4 * timings["draft_steps"]


@pytest.mark.slow
def test_gemma_drafting_for_itself(default_model_path: Path) -> None:
    # A prompt whose greedy answer has no near-tie: verifying drafts in one batch rounds differently from one
    # token per decode, which flips a near-tie (plain llama.cpp batching does the same; see test_batching_drafts).
    code = "def scale(values, factor):\n    return [value * factor for value in values]\n\n"
    prompt = "Repeat this code exactly, three times.\n\n" + code * 3 + "Here it is again:\n\n"
    with Llama(str(default_model_path), n_ctx=1024, n_threads=2) as plain_gemma:
        want = greedy(plain_gemma, prompt, 64)
    with DraftModel(default_model_path) as draft:
        for n_parallel in (1, 2):
            with Llama(
                str(default_model_path), n_ctx=1024, n_threads=2, n_parallel=n_parallel, draft_model=draft
            ) as spec:
                assert greedy(spec, prompt, 64) == want
                timings = spec.last_timings
                assert timings["draft_accepted_n"] >= 0.8 * timings["draft_n"] > 0
