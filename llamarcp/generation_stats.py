"""Running totals of one context's work: prompt and generated tokens, their time, decode calls.

The engine (one sequence) and the batching scheduler (many) add to the `GenerationStats` of their context as
generations end; the server's `/metrics` reads a `snapshot()`. Updates and snapshots take a lock, so a snapshot
never shows half of one generation.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

__all__ = ["GenerationStats", "StatsSnapshot"]


@dataclass
class StatsSnapshot:
    #: Prompt tokens decoded (a reused cached prefix is not decoded and counts in `prompt_tokens_cached`).
    prompt_tokens: int = 0
    prompt_tokens_cached: int = 0
    prompt_seconds: float = 0.0
    predicted_tokens: int = 0
    predicted_seconds: float = 0.0
    #: llama_decode calls, and the sum over them of the sequences each carried (their ratio: busy slots/decode).
    decode_calls: int = 0
    busy_slots: int = 0
    #: Longest sequence seen (prompt + generated).
    n_tokens_max: int = 0
    #: Speculative decoding: tokens drafted, drafted tokens accepted, verification steps.
    draft_tokens: int = 0
    draft_accepted: int = 0
    draft_steps: int = 0
    generations: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class GenerationStats:
    totals: StatsSnapshot = field(default_factory=StatsSnapshot)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_generation(self, timings: Mapping[str, float], decode_calls: int = 0) -> None:
        """One generation ended (finished, stopped or cancelled); `timings` as `Llama.last_timings` has them.
        `decode_calls`: the decodes it made alone (the single-sequence path; the scheduler counts its own)."""
        prompt_n = int(timings.get("prompt_n", 0))
        evaluated = int(timings.get("prompt_eval_n", 0))
        predicted = int(timings.get("predicted_n", 0))
        with self._lock:
            t = self.totals
            t.generations += 1
            t.prompt_tokens += evaluated
            t.prompt_tokens_cached += max(0, prompt_n - evaluated)
            t.prompt_seconds += float(timings.get("prompt_ms", 0.0)) / 1e3
            t.predicted_tokens += predicted
            t.predicted_seconds += float(timings.get("predicted_ms", 0.0)) / 1e3
            t.n_tokens_max = max(t.n_tokens_max, prompt_n + predicted)
            t.draft_tokens += int(timings.get("draft_n", 0))
            t.draft_accepted += int(timings.get("draft_accepted_n", 0))
            t.draft_steps += int(timings.get("draft_steps", 0))
            if decode_calls:
                t.decode_calls += decode_calls
                t.busy_slots += decode_calls

    def add_decode(self, n_sequences: int) -> None:
        """One llama_decode carrying `n_sequences` sequences (the batching scheduler's step)."""
        with self._lock:
            self.totals.decode_calls += 1
            self.totals.busy_slots += n_sequences

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(**asdict(self.totals))
