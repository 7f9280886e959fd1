"""Continuous batching on the tiny model: many sequences in one context give what each gives alone."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from llamarcp import Llama
from llamarcp.errors import ClosedError, GenerationAborted, PromptTooLongError

PROMPTS = [
    "The quick brown fox",
    "Once upon a time",
    "1, 2, 3,",
    "Hello world, my name is",
    "The capital of France",
    "In the beginning",
    "def main():",
]


def text_of(result: dict[str, Any]) -> str:
    return str(result["choices"][0]["text"])


@pytest.fixture(scope="module")
def solo(tiny_model_path: Path) -> Any:
    with Llama(str(tiny_model_path), n_ctx=256, n_threads=1) as llm:
        yield llm


@pytest.fixture()
def parallel(tiny_model_path: Path) -> Any:
    with Llama(str(tiny_model_path), n_ctx=256, n_threads=1, n_parallel=4) as llm:
        yield llm


def test_concurrent_greedy_requests_equal_solo_runs(solo: Llama, parallel: Llama) -> None:
    expected = {p: text_of(solo(p, max_tokens=24, temperature=0)) for p in PROMPTS}
    got: dict[str, str] = {}
    barrier = threading.Barrier(len(PROMPTS))

    def ask(prompt: str) -> None:
        barrier.wait()
        got[prompt] = text_of(parallel(prompt, max_tokens=24, temperature=0))

    threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS]  # 7 requests, 4 slots: some queue
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == expected


def test_seeded_sampling_and_penalties_equal_solo_runs(solo: Llama, parallel: Llama) -> None:
    knobs: dict[str, Any] = {"max_tokens": 20, "temperature": 0.9, "seed": 42, "repeat_penalty": 1.2}
    expected = [text_of(solo(p, **knobs)) for p in PROMPTS[:4]]
    assert [r["choices"][0]["text"] for r in parallel.create_completions(PROMPTS[:4], **knobs)] == expected


def test_streams_interleave_and_each_is_whole(solo: Llama, parallel: Llama) -> None:
    streams = [parallel(p, max_tokens=12, temperature=0, stream=True) for p in PROMPTS[:3]]
    texts = ["", "", ""]
    finished = [False] * 3
    while not all(finished):  # read one chunk of each in turn
        for i, stream in enumerate(streams):
            if finished[i]:
                continue
            try:
                texts[i] += next(stream)["choices"][0]["text"]
            except StopIteration:
                finished[i] = True
    assert texts == [text_of(solo(p, max_tokens=12, temperature=0)) for p in PROMPTS[:3]]


def test_asyncio_tasks_run_in_shared_steps(solo: Llama, parallel: Llama) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        calls = [
            loop.run_in_executor(None, lambda p=p: text_of(parallel(p, max_tokens=10, temperature=0)))
            for p in PROMPTS[:4]
        ]
        return list(await asyncio.gather(*calls))

    assert asyncio.run(main()) == [text_of(solo(p, max_tokens=10, temperature=0)) for p in PROMPTS[:4]]


def test_prefix_cache_decodes_fewer_tokens_and_gives_the_same_text(parallel: Llama, solo: Llama) -> None:
    base = "Once upon a time there was a little house in the woods where"
    first = text_of(parallel(base, max_tokens=8, temperature=0))
    n_prompt = len(parallel.tokenize(base.encode()))
    assert parallel.n_prompt_tokens_evaluated == n_prompt
    again = text_of(parallel(base + " a fox", max_tokens=8, temperature=0))
    assert parallel.n_prompt_tokens_evaluated < n_prompt  # the cached prefix was reused
    assert again == text_of(solo(base + " a fox", max_tokens=8, temperature=0))
    assert first == text_of(solo(base, max_tokens=8, temperature=0))


def test_a_running_sequences_prefix_is_copied(parallel: Llama, solo: Llama) -> None:
    system = "You are a helpful assistant who answers briefly and clearly. Question: "
    long_running = parallel(system + "why?", max_tokens=40, temperature=0, stream=True)
    next(long_running)  # running now, its prompt is in memory
    result = parallel(system + "how?", max_tokens=8, temperature=0)
    shared = len(parallel.tokenize((system).encode()))
    assert parallel.n_prompt_tokens_evaluated <= len(parallel.tokenize((system + "how?").encode())) - shared + 2
    assert text_of(result) == text_of(solo(system + "how?", max_tokens=8, temperature=0))
    long_running.close()


def test_n_choices_share_the_prompt(parallel: Llama, solo: Llama) -> None:
    result = parallel("The quick brown fox", max_tokens=10, temperature=0.8, seed=3, n=3)
    assert [c["index"] for c in result["choices"]] == [0, 1, 2]
    texts = [c["text"] for c in result["choices"]]
    assert texts == [text_of(solo("The quick brown fox", max_tokens=10, temperature=0.8, seed=s)) for s in (3, 4, 5)]
    usage = result["usage"]
    assert usage["prompt_tokens"] == len(solo.tokenize(b"The quick brown fox"))
    assert 3 <= usage["completion_tokens"] <= 30
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    solo_choices = solo("The quick brown fox", max_tokens=10, temperature=0.8, seed=3, n=3)
    assert [c["text"] for c in solo_choices["choices"]] == texts  # the same without n_parallel
    streamed = list(parallel("The quick brown fox", max_tokens=10, temperature=0.8, seed=3, n=2, stream=True))
    for i in (0, 1):
        assert "".join(c["choices"][0]["text"] for c in streamed if c["choices"][0]["index"] == i) == texts[i]
    with pytest.raises(ValueError, match="n must be"):
        parallel("x", n=0)


def test_a_cancelled_stream_frees_its_slot(parallel: Llama) -> None:
    streams = [parallel(p, max_tokens=200, temperature=0, stream=True) for p in PROMPTS[:4]]
    for s in streams:
        next(s)
    for s in streams:
        s.close()
    # All four slots are free again: four more requests complete.
    assert len(parallel.create_completions(PROMPTS[:4], max_tokens=4, temperature=0)) == 4
    assert parallel._scheduler is not None and parallel._scheduler.n_running == 0


def test_abort_and_close_reach_every_waiting_request(tiny_model_path: Path) -> None:
    llm = Llama(str(tiny_model_path), n_ctx=256, n_threads=1, n_parallel=2)
    stream = llm("The quick brown fox", max_tokens=200, temperature=0, stream=True)
    next(stream)
    llm.abort()
    with pytest.raises(GenerationAborted):
        list(stream)
    assert text_of(llm("Hello", max_tokens=3, temperature=0))  # usable afterwards
    stream = llm("The quick brown fox", max_tokens=200, temperature=0, stream=True)
    next(stream)
    llm.close()
    with pytest.raises(ClosedError):
        list(stream)
    with pytest.raises(ClosedError):
        llm("Hello", max_tokens=3)


def test_exclusive_calls_and_batching_take_turns(parallel: Llama, solo: Llama) -> None:
    tokens = parallel.tokenize(b"The quick brown fox")
    assert parallel.eval(tokens) == len(tokens)
    state = parallel.save_state()
    assert text_of(parallel("Hello", max_tokens=6, temperature=0)) == text_of(
        solo("Hello", max_tokens=6, temperature=0)
    )
    parallel.load_state(state)
    assert parallel.input_ids.tolist() == tokens
    assert text_of(parallel("Once upon a time", max_tokens=6, temperature=0)) == text_of(
        solo("Once upon a time", max_tokens=6, temperature=0)
    )


def test_per_sequence_context_limit(parallel: Llama) -> None:
    assert parallel.n_ctx == 256  # per sequence; the context holds 4 x 256
    with pytest.raises(PromptTooLongError):
        parallel([1] * 300, max_tokens=2)
    result = parallel("The quick brown fox", max_tokens=None, temperature=0)
    assert result["usage"]["total_tokens"] <= 256


def _boom(ids: Any, scores: Any) -> Any:
    return 1 / 0


def _raise_key_error(ids: Any, scores: Any) -> bool:
    raise KeyError("a stopping criterion failed")


#: Callbacks that fail once every slot runs: (keyword, failing callback, the exception its caller must get).
FAILING_CALLBACKS: list[tuple[str, Any, type[BaseException], str]] = [
    ("logits_processor", _boom, ZeroDivisionError, "division"),
    ("logits_processor", lambda ids, scores: scores[:10], ValueError, "logits_processor must return"),
    ("logits_processor", lambda ids, scores: 0.5, ValueError, "logits_processor must return"),
    ("logits_processor", lambda ids, scores: ["x"] * len(scores), ValueError, "could not convert"),
    ("stopping_criteria", _raise_key_error, KeyError, "stopping criterion"),
    ("stopping_criteria", lambda ids, scores: scores > 0, ValueError, "ambiguous"),
]


@pytest.mark.parametrize(("keyword", "fail", "error", "message"), FAILING_CALLBACKS)
def test_a_failing_callback_fails_only_its_own_request(
    solo: Llama, parallel: Llama, keyword: str, fail: Any, error: type[BaseException], message: str
) -> None:
    """The issue's case: every running stream got the ZeroDivisionError of one request's logits processor."""
    scheduler = parallel._scheduler
    assert scheduler is not None
    running_at_failure: list[int] = []
    calls: list[int] = []

    def callback(ids: Any, scores: Any) -> Any:
        calls.append(1)
        if len(calls) > 1:  # from the second token on, hold the shared loop until the others are submitted
            deadline = time.monotonic() + 60
            while scheduler.n_queued < 3 and scheduler.n_running < 4 and time.monotonic() < deadline:
                time.sleep(0.002)
        if scheduler.n_running < 4:  # behave until the three others run beside this one
            return scores if keyword == "logits_processor" else False
        running_at_failure.append(scheduler.n_running)
        return fail(ids, scores)

    callbacks: Any = [lambda ids, scores: scores, callback] if keyword == "logits_processor" else callback
    failing = parallel(PROMPTS[3], max_tokens=200, temperature=0, stream=True, **{keyword: callbacks})
    next(failing)  # running
    others = parallel.create_completions(PROMPTS[:3], max_tokens=24, temperature=0)  # started together
    with pytest.raises(error, match=message):
        list(failing)
    assert running_at_failure == [4]
    assert [text_of(r) for r in others] == [text_of(solo(p, max_tokens=24, temperature=0)) for p in PROMPTS[:3]]
    assert scheduler.n_running == 0
    assert text_of(parallel(PROMPTS[3], max_tokens=8, temperature=0)) == text_of(
        solo(PROMPTS[3], max_tokens=8, temperature=0)
    )  # its slot serves the next request


def test_a_wrong_shaped_logits_processor_result_is_refused_without_batching(solo: Llama) -> None:
    with pytest.raises(ValueError, match="logits_processor must return"):
        solo("Hello", max_tokens=4, logits_processor=lambda ids, scores: scores[:3])
    with pytest.raises(ZeroDivisionError):
        solo("Hello", max_tokens=4, logits_processor=_boom)
    assert text_of(solo("Hello", max_tokens=4, temperature=0))


def test_bad_n_parallel(tiny_model_path: Path) -> None:
    for bad in (0, -1, 1000, 2.5, True):
        with pytest.raises(ValueError, match="n_parallel"):
            Llama(str(tiny_model_path), n_parallel=bad)


def test_interpreter_exit_during_batched_generation_is_clean(tiny_model_path: Path) -> None:
    """The decoding thread is stopped before llamarcp frees the models at exit: no signal, exit code 0."""
    import subprocess
    import sys

    code = f"""
import threading
from llamarcp import Llama
llm = Llama({str(tiny_model_path)!r}, n_ctx=256, n_threads=1, n_parallel=2)
streams = [llm(p, max_tokens=200, temperature=0, stream=True) for p in ("a", "b")]
for s in streams:
    next(s)
threading.Thread(target=lambda: [list(s) for s in streams], daemon=True).start()
print("exiting", flush=True)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exiting" in proc.stdout
