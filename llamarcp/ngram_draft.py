"""Prompt-lookup drafts for the batching scheduler, incremental and adaptive.

`NgramIndex` proposes what `LlamaPromptLookupDecoding` proposes (the continuation of the earliest earlier
occurrence of the longest matching tail n-gram), but keeps dicts of n-gram -> first and latest position that
grow with each token, so a proposal costs O(max_ngram_size + n) instead of a scan of the whole history per
token. Where the n-gram occurred more than once, the proposal stops where the earliest and the latest
occurrence's continuations disagree: text that varies there (a counter in repeated rows) is not drafted, which
keeps drafts that would be rejected out of the batch.

`DraftControl` sets how many drafts a sequence tries per step from what drafting has paid so far (tokens per
second against its own plain steps), so drafting never costs much where it does not pay.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Sequence
from typing import Any

__all__ = ["DraftControl", "JobDrafts", "NgramIndex", "carried_pause", "prompt_lookup_index", "remember_pause"]

#: Draft model -> the pause its next request starts with. A model's drafts that did not pay in one request seldom
#: pay in the next (unlike prompt lookup, whose worth depends on the prompt): without this every request would pay
#: the draft model's prompt pass and a first window again.
_PAUSES: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def carried_pause(draft_model: Any) -> int:
    """Plain steps a new request of `draft_model` starts with (0 while its drafts paid or were never judged)."""
    try:
        return _PAUSES.get(draft_model, 0)
    except TypeError:  # not weakly referenceable / not hashable: nothing is carried
        return 0


def remember_pause(draft_model: Any, control: DraftControl) -> None:
    with contextlib.suppress(TypeError):  # not weakly referenceable / not hashable: nothing is carried
        _PAUSES[draft_model] = control.carried_pause()


def prompt_lookup_index(draft_model: Any, history: Sequence[int]) -> NgramIndex | None:
    """An incremental index standing in for a `LlamaPromptLookupDecoding` (not for a subclass that proposes
    something else), or None."""
    from llamarcp.compat.speculative import LlamaPromptLookupDecoding

    if isinstance(draft_model, LlamaPromptLookupDecoding) and (
        type(draft_model).__call__ is LlamaPromptLookupDecoding.__call__
    ):
        return NgramIndex(draft_model.max_ngram_size, history)
    return None


class NgramIndex:
    def __init__(self, max_ngram_size: int, history: Sequence[int] = ()) -> None:
        self.max_ngram_size = max_ngram_size
        self.tokens: list[int] = []
        #: n-gram -> where its earliest / latest occurrence starts, counting only occurrences with a token after them.
        self._first: dict[tuple[int, ...], int] = {}
        self._last: dict[tuple[int, ...], int] = {}
        self.extend(history)

    def extend(self, tokens: Sequence[int]) -> None:
        ids, first, last = self.tokens, self._first, self._last
        for token in tokens:
            end = len(ids)  # n-grams ending at `end - 1` now have a continuation (this token)
            for size in range(1, min(self.max_ngram_size, end) + 1):
                key = tuple(ids[end - size : end])
                first.setdefault(key, end - size)
                last[key] = end - size
            ids.append(token)

    def propose(self, n: int) -> list[int]:
        """Up to `n` tokens that followed an earlier occurrence of the history's tail (as prompt lookup), cut
        where the latest earlier occurrence went on differently."""
        ids = self.tokens
        total = len(ids)
        if n <= 0:
            return []
        for size in range(min(self.max_ngram_size, total - 1), 0, -1):
            key = tuple(ids[total - size :])
            start = self._first.get(key)
            if start is not None and start + size < total:
                follow = start + size
                proposal = ids[follow : min(follow + n, total)]
                other = self._last[key] + size
                if other == follow:
                    return proposal
                for i, token in enumerate(proposal):
                    if other + i >= total:
                        break  # the latest occurrence's continuation ends here: nothing left to compare
                    if ids[other + i] != token:
                        return proposal[:i]
                return proposal
        return []


class DraftControl:
    """How many drafts one sequence tries per step, from what drafting has paid so far.

    The length doubles (from the drafts tried) after a fully accepted run that beat the plain rate, and drops to
    one more than the accepted count after a miss.
    Every `WINDOW` drafting steps are judged: by time once the rate of plain steps is known (tokens per second
    with drafts, a draft model's own decodes included, against without: on a CPU, verifying k drafts costs far
    more than 1/k of a step), before that by acceptance (at least half). The plain rate starts from the engine's
    last one (`plain_rate`, so a new request is judged by time from its first window), is measured with
    `MEASURE` plain steps after the first paid window and again every `REFRESH` windows. A window running below
    `EARLY` of the plain rate is judged at once. A window that did not pay pauses drafting (the pause doubles
    after each failed probe, so drafts that never pay cost a few probe steps in a long answer).
    """

    WINDOW = 3
    #: Drafting steps of a probe after a pause (short: most probes of drafts that do not pay fail again).
    PROBE = 2
    MEASURE = 2
    REFRESH = 8
    MIN_RATE = 0.5
    EARLY = 0.5
    PAUSE = 32
    MAX_PAUSE = 1024
    #: Weight of the newest step in the moving average of plain tokens per second.
    EMA = 0.3

    def __init__(self, n_max: int, n_min: int = 0, plain_rate: float | None = None, paused: int = 0) -> None:
        self.n_max = n_max
        #: Never fewer drafts per drafting step (a shorter proposal is not tried: the server's --spec-draft-n-min).
        self.n_min = min(n_min, n_max)
        self.n = max(self.n_min, min(n_max, 2))
        self.window = self.WINDOW
        self.pause = self.PAUSE
        self.paused_for = 0
        self.plain_rate = plain_rate
        self.measured = False  # plain steps of this sequence seen (not only the engine's earlier rate)
        self.windows = 0
        self.window_steps = 0
        self.window_drafted = 0
        self.window_accepted = 0
        self.window_tokens = 0
        self.window_seconds = 0.0
        #: Totals of the sequence: drafts tried, accepted, verification steps.
        self.drafted = 0
        self.accepted = 0
        self.steps = 0
        self._carry = 0
        if paused > 0:  # a draft model whose drafts did not pay in the last request: start with its pause
            self.paused_for = paused
            self.pause = min(self.MAX_PAUSE, 2 * paused)
            self.n, self.window = max(1, self.n_min), self.PROBE

    def carried_pause(self) -> int:
        """The pause a next request with the same draft model starts with: the last one served after a window
        that did not pay because its drafts were mostly wrong (a trait of the two models; drafts that were right
        but slow may pay under another load, so they carry nothing), 0 once a window paid or none was judged."""
        return self._carry

    def budget(self) -> int:
        """Drafts to try in the next step (0: a plain step, while paused or measuring)."""
        if self.paused_for > 0:
            self.paused_for -= 1
            return 0
        return self.n

    def tried(self, drafted: int) -> None:
        self.drafted += drafted
        self.steps += 1

    def observe_plain(self, seconds: float) -> None:
        """A step of this sequence without drafts took `seconds` (one token)."""
        if seconds > 0:
            self.measured = True
            rate = 1.0 / seconds
            self.plain_rate = rate if self.plain_rate is None else self.plain_rate + self.EMA * (rate - self.plain_rate)

    def adapt(self, drafted: int, accepted: int, seconds: float = 0.0) -> None:
        """After a verification step: `accepted` of `drafted` were right, in `seconds` (the totals count them as
        they are verified, so a sequence that ends mid-step has them too)."""
        # Grow from what was tried (a short proposal that was right says little about a long one), and only while
        # drafting beats plain steps: each draft costs about the same, so a step that was right but slower says
        # longer ones would be slower still (a draft model as slow as the target).
        faster = self.plain_rate is None or seconds <= 0 or (accepted + 1) / seconds >= self.plain_rate
        if accepted < drafted:
            self.n = max(1, accepted + 1)
        else:
            self.n = min(self.n_max, max(2, 2 * drafted) if faster else max(1, drafted))
        self.n = max(self.n, self.n_min)
        self.window_steps += 1
        self.window_drafted += drafted
        self.window_accepted += accepted
        self.window_tokens += accepted + 1
        self.window_seconds += seconds
        early = self.plain_rate is not None and self.window_tokens < self.EARLY * self.plain_rate * self.window_seconds
        if self.window_steps < self.window and not early:
            return
        self.window = self.WINDOW
        self.windows += 1
        if self.plain_rate is not None and self.window_seconds > 0:
            paid = self.window_tokens / self.window_seconds >= self.plain_rate
        else:
            paid = self.window_accepted >= self.MIN_RATE * self.window_drafted
        self._carry = 0 if paid or self.window_accepted >= self.MIN_RATE * self.window_drafted else self.pause
        if paid:
            self.pause = self.PAUSE
            if not self.measured or self.windows % self.REFRESH == 0:
                self.paused_for = self.MEASURE
        else:
            self.paused_for = self.pause
            self.pause = min(self.MAX_PAUSE, 2 * self.pause)
            self.n, self.window = max(1, self.n_min), self.PROBE  # the probe after the pause is small and short
        self.window_steps = self.window_drafted = self.window_accepted = self.window_tokens = 0
        self.window_seconds = 0.0


class JobDrafts:
    """One request's speculative decoding in the batching scheduler: its `DraftControl`, its `NgramIndex`
    (prompt lookup), its slot's sequence of a `DraftModel` (llamarcp.draft_model) or another draft model called
    with the history, and the drafts of the current step."""

    def __init__(
        self, control: DraftControl, draft_model: Any, ngrams: NgramIndex | None, check: Any, seq_id: int = 0
    ) -> None:
        self.control = control
        self.draft_model = draft_model
        self.ngrams = ngrams
        self.check = check
        self.seq_id = seq_id
        #: A shorter proposal is not tried (the server's --spec-draft-n-min).
        self.min_n = int(getattr(draft_model, "min_pred_tokens", 0))
        self.current: list[int] = []
        self.step_accepted = 0
        self.failed = False
        #: Time spent proposing this step's drafts (a draft model decodes): charged to the step that verifies them.
        self.seconds = 0.0

    @classmethod
    def create(
        cls,
        draft_model: Any,
        chain_names: list[str],
        draft_max: int | None,
        history: Sequence[int],
        check: Any,
        seq_id: int = 0,
        has_media: bool = False,
        plain_rate: float | None = None,
    ) -> JobDrafts | None:
        """Drafting for a request whose chain ends in greedy (temperature 0; biases, penalties, grammar are fine:
        every row is sampled in order as without drafts), when a draft model is set and `draft_max` allows.
        A draft model that reads the history (not prompt lookup) skips prompts with images: their ids are not
        the whole context."""
        if draft_model is None or chain_names[-1:] != ["greedy"]:
            return None
        n_max = int(getattr(draft_model, "num_pred_tokens", 8))
        if draft_max is not None:
            n_max = min(n_max, draft_max)
        if n_max <= 0:
            return None
        ngrams = prompt_lookup_index(draft_model, history)
        if ngrams is None and has_media:
            return None
        n_min = int(getattr(draft_model, "min_pred_tokens", 0))
        paused = carried_pause(draft_model) if ngrams is None else 0
        return cls(DraftControl(n_max, n_min, plain_rate, paused), draft_model, ngrams, check, seq_id)

    def propose(self, history: Sequence[int], n: int) -> list[int]:
        """Set and return this step's drafts (at most `n`)."""
        self.current = []
        started = time.perf_counter()
        if self.ngrams is not None:
            self.current = self.ngrams.propose(n)
        elif not self.failed:
            try:
                import numpy as np

                proposed = self.draft_model(np.asarray(history, dtype=np.intc))
                drafts = [int(t) for t in np.asarray(proposed).reshape(-1)[:n]]
                self.check(drafts)
                self.current = drafts
            except Exception:  # a draft model's failure costs its request the speed-up, not the answer
                self.failed = True
        if len(self.current) < self.min_n:
            self.current = []
        self.seconds = max(0.0, time.perf_counter() - started - getattr(self.draft_model, "catch_up_seconds", 0.0))
        return self.current

    @property
    def drafts_together(self) -> bool:
        """Its drafts come from a model that drafts for several sequences in one decode per position
        (llamarcp.draft_model.DraftModel.draft_many): the scheduler asks for all of them at once."""
        return self.ngrams is None and not self.failed and hasattr(self.draft_model, "draft_many")

    @staticmethod
    def propose_together(
        requests: Sequence[tuple[JobDrafts, Sequence[int], int, int]],
    ) -> tuple[list[tuple[int, int, int, bool]], int]:
        """Set this step's drafts of several requests sharing one draft model, `(drafting, history, n, cached)`
        each, whose sequence holds `cached` tokens (the next one is in the step already); each is charged an
        equal share of the time. Returns the batch entries of the drafts and how many of the `n`s went unused."""
        if not requests:
            return [], 0
        started = time.perf_counter()
        model = requests[0][0].draft_model
        try:
            proposals = model.draft_many([(d.seq_id, history, n) for d, history, n, _cached in requests])
        except Exception:  # a draft model's failure costs its requests the speed-up, not the answers
            proposals = [[] for _ in requests]
            for d, *_ in requests:
                d.failed = True
        share = max(0.0, time.perf_counter() - started - getattr(model, "catch_up_seconds", 0.0)) / len(requests)
        for (d, _history, n, _cached), drafts in zip(requests, proposals):
            d.current = []
            try:
                d.check(drafts)
            except Exception:
                d.failed = True
                drafts = []
            d.current = list(drafts[:n]) if len(drafts) >= d.min_n else []
            d.seconds = share
        entries = [
            (token, cached + 1 + i, d.seq_id, True)
            for d, _history, _n, cached in requests
            for i, token in enumerate(d.current)
        ]
        return entries, sum(n for _d, _history, n, _cached in requests) - len(entries)

    def begin_step(self) -> None:
        """The step verifying `current` is decoded (its totals count the drafts now)."""
        self.control.tried(len(self.current))
        self.step_accepted = 0

    def accept(self) -> None:
        self.control.accepted += 1
        self.step_accepted += 1

    def end_step(self, seconds: float) -> bool:
        """The verification step took `seconds` (drafting added): adapt; True when drafts were rejected."""
        self.control.adapt(len(self.current), self.step_accepted, seconds + self.seconds)
        if self.ngrams is None:
            remember_pause(self.draft_model, self.control)
        return self.step_accepted < len(self.current)

    def plain_step(self, seconds: float) -> float | None:
        """A step of this request without drafts took `seconds`; returns the plain rate (the engine's hint)."""
        self.control.observe_plain(seconds)
        return self.control.plain_rate

    def extend(self, token: int) -> None:
        if self.ngrams is not None:
            self.ngrams.extend((token,))

    def timings(self) -> dict[str, float]:
        control = self.control
        return {
            "draft_n": float(control.drafted),
            "draft_accepted_n": float(control.accepted),
            "draft_steps": float(control.steps),
        }
