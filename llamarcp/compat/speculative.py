"""Draft models for speculative decoding (llama-cpp-python's `llama_speculative`).

A draft model proposes the tokens that probably come next; the engine verifies all of them with one batched
decode and keeps the longest run the target model agrees with, so greedy output is unchanged and repetitive
text (code edits, quoting the prompt) comes out several tokens per decode.
"""

from __future__ import annotations

import abc
from typing import Any

__all__ = ["LlamaDraftModel", "LlamaPromptLookupDecoding"]


class LlamaDraftModel(abc.ABC):
    """`draft(input_ids) -> proposed next tokens` (numpy int arrays in and out)."""

    @abc.abstractmethod
    def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
        raise NotImplementedError


class LlamaPromptLookupDecoding(LlamaDraftModel):
    """Prompt lookup: find the latest n-gram of the history earlier in it and propose what followed there.

    The longest n-gram (up to `max_ngram_size`) that occurs earlier wins; its earliest occurrence with a
    continuation is used and up to `num_pred_tokens` tokens of that continuation are proposed.
    """

    def __init__(self, max_ngram_size: int = 2, num_pred_tokens: int = 10) -> None:
        for name, value in (("max_ngram_size", max_ngram_size), ("num_pred_tokens", num_pred_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.max_ngram_size = max_ngram_size
        self.num_pred_tokens = num_pred_tokens

    @staticmethod
    def find_candidate_pred_tokens(input_ids: Any, max_ngram_size: int, num_pred_tokens: int) -> Any:
        import numpy as np

        ids = np.asarray(input_ids, dtype=np.intc).reshape(-1)
        n = int(ids.shape[0])
        for size in range(min(max_ngram_size, n - 1), 0, -1):
            tail = ids[n - size :]
            # Every window that starts early enough to have at least one token after it.
            windows = np.lib.stride_tricks.sliding_window_view(ids[: n - 1], size)
            hits = np.flatnonzero((windows == tail).all(axis=1))
            for start in hits.tolist():
                follow = start + size
                if follow < n:
                    return ids[follow : min(follow + num_pred_tokens, n)].copy()
        return np.empty(0, dtype=np.intc)

    def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
        return self.find_candidate_pred_tokens(input_ids, self.max_ngram_size, self.num_pred_tokens)
