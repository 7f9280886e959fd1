"""Continuous batching: many sequences in one context, one `llama_decode` per step for all of them.

`Scheduler` runs in a background thread of its Llama (started on the first request). Each step builds one
`llama_batch` holding the next token of every running sequence plus prompt chunks of newly admitted ones
(chunked prefill within `n_batch`), decodes it once, and samples every sequence whose logits row came out
with its own sampler chain (its own seed, grammar, penalties). Tokens reach each caller through its own queue,
so streams run independently; a finished or cancelled sequence leaves its slot at once, and so does one whose
own callback (logits processor, stopping criteria) raised: that error goes to its caller only.

Slots are sequence ids 0..n_parallel-1 of a unified KV cache of `n_parallel * n_ctx` cells; each sequence
may hold at most `n_ctx` tokens, so the running and cached sequences always fit together. A finished
sequence's KV stays in its idle slot as a prefix cache: a new request sharing a prefix with an idle or a
running sequence starts from that KV (reusing the slot in place, or `llama_memory_seq_cp` from the running one)
instead of decoding the prefix again, like llama-server's `cache_prompt`.

The scheduler takes the context as one turn (`llamarcp.turns`) while it has work, so exclusive calls
(`eval`, `save_state`, `embed`, `generate`) wait for it and it waits for them; whoever takes the memory after
the other clears it first (`Engine.owner`).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from llamarcp._backend import get_lib
from llamarcp._core import Batch
from llamarcp.errors import (
    DECODE_ABORTED,
    DECODE_NO_KV_SLOT,
    ClosedError,
    GenerationAborted,
    LlamaError,
    PromptTooLongError,
    check_decode,
)
from llamarcp.multimodal import MediaPrompt
from llamarcp.ngram_draft import JobDrafts
from llamarcp.placement import SlotRequest, current_slot_request
from llamarcp.sampling import SamplerChain, SamplingParams, build_sampler_chain
from llamarcp.slot_controls import SlotControls
from llamarcp.token_picker import apply_logits_processor, logits_view, logprob_info

if TYPE_CHECKING:
    from llamarcp.engine import Engine, Outcome, Step
    from llamarcp.turns import Turns

__all__ = ["Scheduler"]

T = TypeVar("T")

#: How long an idle scheduler thread waits for work before it ends (a new request starts a new one).
IDLE_EXIT_S = 30.0
_OWNER = "batch"
#: A prefix at least this long (or the whole prompt) is worth waiting one prefill for instead of decoding it again.
MIN_SHARED_PREFIX = 16


@dataclass(eq=False)
class _Job:
    """One request on its way through the scheduler; the caller reads `results`."""

    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    logprobs: int | None
    logits_processor: Any
    stopping_criteria: Any
    results: queue.SimpleQueue[tuple[str, Any]] = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False
    chain: SamplerChain | None = None
    todo: list[int] = field(default_factory=list)  # prompt tokens still to decode
    next_token: int | None = None  # sampled, not decoded yet
    history: list[int] = field(default_factory=list)  # prompt + generated, for processors and criteria
    n_generated: int = 0
    n_prompt_eval: int = 0
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float = 0.0
    media: MediaPrompt | None = None  # images/audio among the prompt ids (llamarcp.multimodal)
    placement: SlotRequest = field(default_factory=SlotRequest)
    drafting: JobDrafts | None = None  # speculative decoding of this greedy request
    lora: tuple[float, ...] = ()  # the LoRA configuration it runs with


@dataclass(eq=False)
class _Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what the memory holds for this sequence
    job: _Job | None = None
    last_used: int = 0
    lora: tuple[float, ...] = ()  # the LoRA configuration its tokens were computed with


class Scheduler(SlotControls):
    """Continuous batching over an Engine whose context has `n_parallel` sequences."""

    def __init__(
        self, engine: Engine, turns: Turns, n_parallel: int, max_queued: int | None = None, draft_model: Any = None
    ) -> None:
        self.engine = engine
        #: Speculative decoding of greedy requests (llamarcp.ngram_draft): a `LlamaPromptLookupDecoding` uses an
        #: incremental n-gram index, a `DraftModel` (llamarcp.draft_model) one draft sequence per slot, all slots
        #: drafted together; any other draft model is called with the history.
        self.draft_model = draft_model
        self.turns = turns
        self.n_parallel = n_parallel
        self.max_queued = max_queued
        self._slots = [_Slot(i) for i in range(n_parallel)]
        self._pending: deque[_Job] = deque()
        #: Sequences whose entries in the current step are their next token (not a prompt chunk).
        self._planned_next: set[int] = set()
        #: Work to run on the scheduler thread between two steps (slot save/restore/erase).
        self._controls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._clock = itertools.count(1)
        self._batch = Batch(engine.n_batch, 1, parent=engine.ctx)
        self._np: Any = None
        try:
            import numpy

            self._np = numpy
        except ImportError:  # pragma: no cover - numpy is a test dependency
            pass
        self.n_prompt_tokens_evaluated = 0  # of the last request admitted (prefix reuse shows here)

    # -- the caller's side ------------------------------------------------------------------------------------

    @property
    def n_running(self) -> int:
        return sum(1 for slot in self._slots if slot.job is not None)

    @property
    def n_queued(self) -> int:
        return len(self._pending)

    def steps(self, job: _Job, outcome: Outcome | None = None) -> Generator[Step, None, None]:
        """A submitted request's steps as the shared decode loop produces them; closing it cancels the job."""
        try:
            while True:
                try:
                    kind, value = job.results.get(timeout=0.25)
                except queue.Empty:
                    continue  # a timeout keeps Ctrl-C deliverable to a caller blocked here
                if kind == "step":
                    yield value
                elif kind == "end":
                    if outcome is not None:
                        outcome.update(value)
                    return
                else:
                    raise value
        finally:
            job.cancelled = True  # a no-op when it has finished; otherwise its slot is freed at the next step
            with self._cond:
                self._cond.notify_all()

    def submit(
        self,
        prompt: list[int],
        params: SamplingParams,
        max_tokens: int | None,
        logprobs: int | None,
        logits_processor: Any,
        stopping_criteria: Any,
    ) -> _Job:
        engine = self.engine
        if not prompt:
            raise ValueError("nothing to evaluate: the token list is empty")
        media = prompt if isinstance(prompt, MediaPrompt) else None
        engine.model.check_tokens(media.text_tokens() if media is not None else prompt)
        if len(prompt) >= engine.n_ctx:
            raise PromptTooLongError(len(prompt), engine.n_ctx)
        limit = engine.n_ctx - len(prompt) if max_tokens is None else max_tokens
        job = _Job(list(prompt), params, limit, logprobs, logits_processor, stopping_criteria, media=media)
        job.placement = current_slot_request()
        if engine.loras is not None:
            job.lora = engine.loras.resolve(job.placement.lora)
        if job.placement.slot is not None and not 0 <= job.placement.slot < self.n_parallel:
            raise ValueError(f"slot {job.placement.slot} does not exist (slots 0..{self.n_parallel - 1})")
        with self._cond:
            self.turns.check_open()
            if self.max_queued is not None and len(self._pending) >= self.max_queued:
                raise LlamaError(f"too many queued requests ({len(self._pending)}); try again later")
            self._pending.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="llamarcp-batching", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return job

    # -- the scheduler thread ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        has_turn = False
        try:
            while True:
                with self._cond:
                    idle_since = time.monotonic()
                    while not has_turn and not self._pending and self.n_running == 0 and not self._controls:
                        if self.turns.closing or time.monotonic() - idle_since > IDLE_EXIT_S:
                            self._thread = None
                            return
                        self._cond.wait(1.0)
                    work = bool(self._pending) or self.n_running > 0 or bool(self._controls)
                if not work:  # idle: let exclusive calls have the context, then wait for work
                    self.turns.leave()
                    has_turn = False
                    continue
                if not has_turn:
                    try:
                        self.turns.enter()
                    except ClosedError as exc:
                        self._fail_all(exc)
                        with self._cond:
                            self._thread = None
                        return
                    has_turn = True
                    self._take_memory()
                self._step()
        except BaseException as exc:  # never leave a caller waiting forever
            self._fail_all(exc if isinstance(exc, Exception) else LlamaError(f"batching stopped: {exc!r}"))
            with self._cond:
                self._thread = None
        finally:
            if has_turn:
                self.turns.leave()

    def _take_memory(self) -> None:
        """After someone else used the memory: forget every cached prefix (the memory is cleared)."""
        if self.engine.claim(_OWNER):
            for slot in self._slots:
                slot.tokens = []

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            jobs = list(self._pending)
            self._pending.clear()
            controls = list(self._controls)
            self._controls.clear()
        for _fn, future in controls:
            future.set_exception(exc)
        for slot in self._slots:
            if slot.job is not None:
                jobs.append(slot.job)
                self._release(slot, keep_cache=False)
        for job in jobs:
            job.results.put(("error", exc))

    def _step(self) -> None:
        engine = self.engine
        if self.turns.closing:
            self._fail_all(ClosedError("this Llama was closed during generation"))
            return
        self._run_controls()
        if engine.abort.requested:
            engine.abort.requested = False
            self._fail_all(GenerationAborted("generation aborted by Llama.abort()"))
            return
        for slot in self._slots:
            if slot.job is not None and slot.job.cancelled:
                self._release(slot, keep_cache=True)
        self._admit()
        entries = self._plan()
        if not entries:
            return
        lib = get_lib()
        batch = self._batch.fill_entries(entries)
        started = time.perf_counter()
        rc = int(lib.llama_decode(engine.ctx.ptr, batch))
        if rc == DECODE_NO_KV_SLOT and self._make_room(entries):
            return  # the same tokens go into the next step
        if rc != 0:
            self._recover(rc, entries)
            return
        engine.stats.add_decode(len({e[2] for e in entries}))
        planned = {seq_id: self._slots[seq_id].job for seq_id in self._planned_next}
        drafting = {i: j for i, j in planned.items() if j is not None and j.drafting is not None and j.drafting.current}
        seen: set[int] = set()
        rejected: set[int] = set()
        for index, (token, _pos, seq_id, wants_logits) in enumerate(entries):
            slot = self._slots[seq_id]
            job = drafting.get(seq_id)
            if job is not None:
                assert job.drafting is not None
                if seq_id not in seen:  # the sampled token that the drafts follow
                    job.drafting.begin_step()
                elif seq_id in rejected or slot.job is not job or job.next_token != token:
                    rejected.add(seq_id)  # greedy picked another token here (or the request ended)
                    continue
                else:  # the draft is the token greedy decoding picked: it is decoded already
                    job.next_token = None
                    job.drafting.accept()
            seen.add(seq_id)
            slot.tokens.append(token)
            if wants_logits and slot.job is not None:
                self._sample_or_fail(slot, index)
        seconds = time.perf_counter() - started
        for seq_id, job in drafting.items():
            if job.drafting is not None and job.drafting.end_step(seconds):  # drop the rejected drafts' KV
                lib.llama_memory_seq_rm(engine.memory, seq_id, len(self._slots[seq_id].tokens), -1)
        for seq_id in self._planned_next - drafting.keys():  # a plain step of a drafting request: its yardstick
            plain = self._slots[seq_id].job
            if plain is not None and plain.drafting is not None:
                engine.plain_rate_hint = plain.drafting.plain_step(seconds)

    def _recover(self, rc: int, entries: list[tuple[int, int, int, bool]]) -> None:
        """A failed decode: drop what it may have stored, fail the sequences it carried (never the process)."""
        lib = get_lib()
        for seq_id in {e[2] for e in entries}:
            slot = self._slots[seq_id]
            lib.llama_memory_seq_rm(self.engine.memory, seq_id, len(slot.tokens), -1)
        try:
            if rc == DECODE_ABORTED:
                raise GenerationAborted("llama_decode was aborted")
            check_decode(rc)
        except LlamaError as exc:
            for seq_id in {e[2] for e in entries}:
                slot = self._slots[seq_id]
                if slot.job is not None:
                    slot.job.results.put(("error", exc))
                    self._release(slot, keep_cache=False)

    # -- admission and prefix reuse ---------------------------------------------------------------------------

    def _admit(self) -> None:
        deferred: list[_Job] = []
        while True:
            with self._cond:
                free = [s for s in self._slots if s.job is None]
                if not self._pending or not free:
                    self._pending.extendleft(reversed(deferred))
                    return
                job = self._pending.popleft()
            if job.cancelled:
                continue
            if not self._lora_ready(job):  # it and the jobs behind it wait for the running ones to finish
                deferred.append(job)
                with self._cond:
                    self._pending.extendleft(reversed(deferred))
                return
            wanted = job.placement.slot
            if (wanted is not None and self._slots[wanted].job is not None) or self._should_wait_for_prefill(job):
                deferred.append(job)
                continue
            try:
                self._start(job, free)
            except Exception as exc:
                job.results.put(("error", exc))

    def _lora_ready(self, job: _Job) -> bool:
        """The context has the job's LoRA configuration, or can switch to it now (no other sequence runs)."""
        loras = self.engine.loras
        if loras is None or job.lora == loras.applied:
            return True
        if self.n_running > 0:
            return False
        loras.apply(job.lora)
        return True

    def _should_wait_for_prefill(self, job: _Job) -> bool:
        """A prompt sharing a long prefix with one still being prefilled starts once that prefix is in memory
        (then it is copied, not decoded twice): n > 1 choices and common system prompts."""
        for slot in self._slots:
            running = slot.job
            if running is None or not running.todo:
                continue
            shared = min(_common_prefix(running.prompt, job.prompt), len(job.prompt) - 1)
            if shared > len(slot.tokens) and shared >= min(MIN_SHARED_PREFIX, len(job.prompt) - 1):
                return True
        return False

    def _start(self, job: _Job, free: list[_Slot]) -> None:
        engine = self.engine
        lib = get_lib()
        prompt = job.prompt
        best_slot, best_n = None, 0
        for slot in self._slots if job.placement.cache_prompt else ():
            if slot.lora != job.lora:
                continue  # computed with other adapters
            n = _common_prefix(slot.tokens, prompt)
            if slot.job is not None:
                n = min(n, len(slot.tokens))  # only what the running one has decoded already
            if n > best_n and self._prefix_usable(slot, n):
                best_slot, best_n = slot, n
        best_n = min(best_n, len(prompt) - 1)  # the last prompt token is decoded again for fresh logits
        if job.media is not None:
            best_n = job.media.safe_prefix(best_n)  # never reuse half an image
        wanted = job.placement.slot
        if wanted is not None:
            target = self._slots[wanted]  # the caller's choice (free: _admit waited for it)
        elif best_slot is not None and best_slot.job is None and best_n > 0 and 2 * best_n >= len(best_slot.tokens):
            target = best_slot  # continue an idle slot's cache in place (most of it is reused)
        else:
            # Empty slots first, then the least recently used cache; the source of a copy is kept if possible.
            others = [s for s in free if s is not best_slot] or free
            target = min(others, key=lambda s: (len(s.tokens) > 0, s.last_used))
        memory = engine.memory
        if target is best_slot:
            lib.llama_memory_seq_rm(memory, target.seq_id, best_n, -1)
            target.tokens = target.tokens[:best_n]
        else:
            lib.llama_memory_seq_rm(memory, target.seq_id, -1, -1)
            target.tokens = []
            if best_slot is not None and best_n > 0:
                lib.llama_memory_seq_cp(memory, best_slot.seq_id, target.seq_id, 0, best_n)
                target.tokens = list(prompt[:best_n])
        if job.media is not None:
            self._decode_media(job.media, target)
        history = job.media.text_tokens() if job.media is not None else prompt
        job.chain = build_sampler_chain(engine.model, job.params, history=history)
        job.todo = list(prompt[len(target.tokens) :])
        job.history = list(history)
        job.drafting = JobDrafts.create(
            self.draft_model,
            job.chain.names,
            job.placement.draft_max,
            job.history,
            engine.model.check_tokens,
            seq_id=target.seq_id,
            has_media=job.media is not None,
            plain_rate=engine.plain_rate_hint,
        )
        job.n_prompt_eval = len(job.todo)
        target.job = job
        target.lora = job.lora
        target.last_used = next(self._clock)
        self.n_prompt_tokens_evaluated = job.n_prompt_eval

    def _decode_media(self, media: MediaPrompt, target: _Slot) -> None:
        """Decode the prompt up to the text after its last medium into the slot now (the images go in as
        embeddings, one sequence at a time); that text then joins the shared batches like any prompt."""
        start, end = len(target.tokens), media.tail_start
        if start >= end:
            return
        try:
            media.decode_from(self.engine, start, target.seq_id, end)
        except BaseException:
            get_lib().llama_memory_seq_rm(self.engine.memory, target.seq_id, start, -1)
            raise
        target.tokens = list(media[:end])

    def _prefix_usable(self, slot: _Slot, n: int) -> bool:
        """A sliding-window cache may have dropped positions a reused prefix needs."""
        n_swa = self.engine.model.n_swa()
        if n <= 0 or n_swa <= 0:
            return n > 0
        pos_min = int(get_lib().llama_memory_seq_pos_min(self.engine.memory, slot.seq_id))
        return pos_min <= max(0, n - n_swa)

    # -- one step ---------------------------------------------------------------------------------------------

    def _plan(self) -> list[tuple[int, int, int, bool]]:
        """(token, position, seq_id, wants logits) for this step: next tokens first, then prompt chunks."""
        budget = self.engine.n_batch
        entries: list[tuple[int, int, int, bool]] = []
        self._planned_next.clear()
        together: list[tuple[JobDrafts, Sequence[int], int, int]] = []  # slots drafting with one draft model
        for slot in self._slots:
            job = slot.job
            if job is not None and job.next_token is not None and budget > 0:
                entries.append((job.next_token, len(slot.tokens), slot.seq_id, True))
                self._planned_next.add(slot.seq_id)
                job.next_token = None
                budget -= 1
                drafting = job.drafting
                if drafting is not None:
                    drafting.current = []
                    room = min(budget, self.engine.n_ctx - len(slot.tokens) - 2, job.max_tokens - job.n_generated - 1)
                    n = min(drafting.control.budget(), room)
                    if n > 0 and drafting.drafts_together:
                        together.append((drafting, job.history, n, len(slot.tokens)))
                        budget -= n  # reserved; what is not drafted is given back below
                        continue
                    drafts = drafting.propose(job.history, n) if n > 0 else []
                    pos = len(slot.tokens) + 1
                    entries.extend((d, pos + i, slot.seq_id, True) for i, d in enumerate(drafts))
                    budget -= len(drafts)
        drafted, unused = JobDrafts.propose_together(together)
        entries, budget = entries + drafted, budget + unused
        for slot in sorted((s for s in self._slots if s.job is not None and s.job.todo), key=lambda s: s.last_used):
            if budget <= 0:
                break
            job = slot.job
            assert job is not None
            chunk, job.todo = job.todo[:budget], job.todo[budget:]
            pos0 = len(slot.tokens)
            last = len(chunk) - 1
            entries.extend((t, pos0 + i, slot.seq_id, i == last and not job.todo) for i, t in enumerate(chunk))
            budget -= len(chunk)
        return entries

    def _sample_or_fail(self, slot: _Slot, index: int) -> None:
        """Sample one sequence. Its request's own callbacks (logits processor, stopping criteria) run here, in
        the scheduler thread: what they raise, or a result of the wrong shape, fails that request alone (its
        caller gets the exception) while the other sequences go on as if it had never been there."""
        job = slot.job
        try:
            self._sample(slot, index)
        except BaseException as exc:  # only this job's code runs here: signals reach the main thread, not this one
            if slot.job is not job or job is None:
                raise
            job.results.put(("error", exc))
            self._release(slot, keep_cache=True)  # the memory holds exactly slot.tokens: still a valid prefix

    def _sample(self, slot: _Slot, index: int) -> None:
        job = slot.job
        assert job is not None and job.chain is not None
        engine = self.engine
        lib = get_lib()
        np = self._np
        if not job.first_token:
            job.first_token = time.perf_counter()
        scores = None
        if job.logits_processor is not None or job.stopping_criteria is not None or job.logprobs is not None:
            scores = logits_view(engine.ctx.ptr, engine.model.n_vocab, index)
            if job.logits_processor is not None:
                apply_logits_processor(np, job.logits_processor, np.asarray(job.history, dtype=np.intc), scores)
        if job.chain.names == ["greedy"] and np is not None and job.logits_processor is None:
            row = scores if scores is not None else logits_view(engine.ctx.ptr, engine.model.n_vocab, index)
            token = int(np.argmax(row))
        else:
            token = int(lib.llama_sampler_sample(job.chain.ptr, engine.ctx.ptr, index))
        if lib.llama_vocab_is_eog(engine.model.vocab, token):
            self._finish(slot, "stop")
            return
        info = logprob_info(scores, token, job.logprobs) if job.logprobs is not None else None
        model = engine.model
        piece = model._pieces.get(token)
        if piece is None:
            piece = model.token_to_piece(token)
        job.n_generated += 1
        job.results.put(("step", (token, piece, info)))
        criteria = job.stopping_criteria
        if criteria is not None and criteria(np.asarray([*job.history, token], dtype=np.intc), scores):
            self._finish(slot, "stop")
            return
        job.history.append(token)
        if job.drafting is not None:
            job.drafting.extend(token)
        if job.n_generated >= job.max_tokens or len(slot.tokens) >= engine.n_ctx:
            self._finish(slot, "length")
            return
        job.next_token = token

    def _finish(self, slot: _Slot, reason: str) -> None:
        job = slot.job
        assert job is not None
        timings = _timings(job)
        self.engine.last_timings = timings
        job.results.put(("end", {"finish_reason": reason, "timings": timings}))
        self._release(slot, keep_cache=True)

    def _release(self, slot: _Slot, keep_cache: bool) -> None:
        """Free the slot for the next request; its KV stays as a prefix cache unless `keep_cache` is False."""
        job = slot.job
        slot.job = None
        if job is not None:
            if job.chain is not None:
                job.chain.close()
                self.engine.stats.add_generation(_timings(job))  # finished, failed or cancelled alike
            job.cancelled = True
        if not keep_cache and not self.engine.ctx.closed:
            get_lib().llama_memory_seq_rm(self.engine.memory, slot.seq_id, -1, -1)
            slot.tokens = []
        with self._cond:
            self._cond.notify_all()


def _timings(job: _Job) -> dict[str, float]:
    done = time.perf_counter()
    first = job.first_token or done
    timings = {
        "prompt_n": float(len(job.prompt)),
        "prompt_eval_n": float(job.n_prompt_eval),
        "prompt_ms": (first - job.submitted) * 1e3,
        "predicted_n": float(job.n_generated),
        "predicted_ms": (done - first) * 1e3,
    }
    if job.drafting is not None:
        timings.update(job.drafting.timings())
    return timings


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
