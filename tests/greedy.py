"""Comparing greedy outputs decoded at different batch shapes (continuous batching vs one at a time).

llama.cpp's kernels round a row differently at another batch shape, so when the two best tokens are nearly
tied a batched greedy request may pick the other one. "Equal up to a near tie" is the property that still
catches any mix-up of sequences, positions or logits rows: both outputs agree token for token until a step
where the solo run's two best tokens were within NEAR_TIE of each other.
"""

from __future__ import annotations

from typing import Any

#: Log-probability gap under which a different pick is rounding, not a bug (rounding moves logits ~1e-4).
NEAR_TIE = 0.05


def tokens_and_tops(choice: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """The token strings and top logprobs of a completion choice requested with `logprobs`."""
    logprobs = choice["logprobs"]
    return list(logprobs["tokens"]), list(logprobs["top_logprobs"])


def disagreement(got: dict[str, Any], solo: dict[str, Any]) -> str | None:
    """None when `got` equals `solo` up to a near tie; else what differs. Both are completion choices."""
    if got.get("text") == solo.get("text"):
        return None
    got_tokens, _ = tokens_and_tops(got)
    solo_tokens, solo_tops = tokens_and_tops(solo)
    for i, (a, b) in enumerate(zip(got_tokens, solo_tokens)):
        if a != b:
            top = sorted((solo_tops[i] or {}).values(), reverse=True)
            if len(top) >= 2 and top[0] - top[1] < NEAR_TIE:
                return None
            return f"token {i}: {a!r} != {b!r} (solo's best two logprobs {top[:2]})"
    # Equal as far as both go: one stopped at an end-of-generation token the other did not pick, a decision
    # whose logprob is not reported; a mix-up of sequences would not give an exact common prefix.
    return None
