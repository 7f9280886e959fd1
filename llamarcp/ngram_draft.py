"""Prompt-lookup drafts for the batching scheduler, incremental and adaptive.

`NgramIndex` proposes what `LlamaPromptLookupDecoding` proposes (the continuation of the earliest earlier
occurrence of the longest matching tail n-gram), but keeps a dict of n-gram -> first position that grows with
each token, so a proposal costs O(max_ngram_size) instead of a scan of the whole history per token.

`DraftControl` sets how many drafts a sequence tries per step from the acceptance it has seen, so drafting never
costs much where it does not pay: the length doubles after a fully accepted run and drops to one more than the
accepted count after a miss (as `llamarcp.draft_decoding`); when fewer than half of the recent drafts were
accepted, drafting pauses, then probes again with a few single drafts; each failed probe doubles the pause, so a
sequence whose drafts are always wrong drafts on a few percent of its steps.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DraftControl", "NgramIndex"]


class NgramIndex:
    def __init__(self, max_ngram_size: int, history: Sequence[int] = ()) -> None:
        self.max_ngram_size = max_ngram_size
        self.tokens: list[int] = []
        #: n-gram -> where its earliest occurrence starts, counting only occurrences with a token after them.
        self._first: dict[tuple[int, ...], int] = {}
        self.extend(history)

    def extend(self, tokens: Sequence[int]) -> None:
        ids, first = self.tokens, self._first
        for token in tokens:
            end = len(ids)  # n-grams ending at `end - 1` now have a continuation (this token)
            for size in range(1, min(self.max_ngram_size, end) + 1):
                first.setdefault(tuple(ids[end - size : end]), end - size)
            ids.append(token)

    def propose(self, n: int) -> list[int]:
        """Up to `n` tokens that followed an earlier occurrence of the history's tail."""
        ids = self.tokens
        total = len(ids)
        if n <= 0:
            return []
        for size in range(min(self.max_ngram_size, total - 1), 0, -1):
            start = self._first.get(tuple(ids[total - size :]))
            if start is not None and start + size < total:
                follow = start + size
                return ids[follow : min(follow + n, total)]
        return []


class DraftControl:
    #: Drafts judged together, and the share of them that must be accepted to go on drafting.
    WINDOW = 16
    MIN_RATE = 0.5
    #: Steps without drafts after a poor window (doubling after each poor probe, up to MAX_PAUSE), and the drafts
    #: a probe tries before it is judged.
    PAUSE = 32
    MAX_PAUSE = 1024
    PROBE = 4

    def __init__(self, n_max: int) -> None:
        self.n_max = n_max
        self.n = min(n_max, 4)
        self.window = self.WINDOW
        self.window_drafted = 0
        self.window_accepted = 0
        self.pause = self.PAUSE
        self.paused_for = 0
        #: Totals of the sequence: drafts tried, accepted, verification steps.
        self.drafted = 0
        self.accepted = 0
        self.steps = 0

    def budget(self) -> int:
        """Drafts to try in the next step (0 while paused)."""
        if self.paused_for > 0:
            self.paused_for -= 1
            if self.paused_for == 0:
                self.n, self.window = 1, self.PROBE  # probe again, briefly
            return 0
        return self.n

    def tried(self, drafted: int) -> None:
        self.drafted += drafted
        self.steps += 1

    def adapt(self, drafted: int, accepted: int) -> None:
        """After a verification step: `accepted` of `drafted` were right (the totals count them as they are
        verified, so a sequence that ends mid-step has them too)."""
        self.window_drafted += drafted
        self.window_accepted += accepted
        self.n = min(self.n_max, 2 * self.n) if accepted == drafted else max(1, accepted + 1)
        if self.window_drafted >= self.window:
            if self.window_accepted < self.MIN_RATE * self.window_drafted:
                self.paused_for = self.pause
                self.pause = min(self.MAX_PAUSE, 2 * self.pause)
            else:
                self.pause = self.PAUSE
            self.window = self.WINDOW
            self.window_drafted = self.window_accepted = 0
