"""Prompt-lookup drafts (llamarcp.compat.speculative): n-gram lookup in the token history."""

from __future__ import annotations

import numpy as np
import pytest

from llamarcp.compat.speculative import LlamaDraftModel, LlamaPromptLookupDecoding


def draft(ids: list[int], max_ngram_size: int = 2, num_pred_tokens: int = 10) -> list[int]:
    out = LlamaPromptLookupDecoding(max_ngram_size, num_pred_tokens)(np.array(ids, dtype=np.intc))
    assert out.dtype == np.intc
    return [int(t) for t in out]


def test_longest_ngram_wins_and_its_earliest_continuation_is_proposed() -> None:
    # The bigram (3, 4) ends the history; it occurred at position 2 followed by 5, 6, 7, ...
    assert draft([1, 2, 3, 4, 5, 6, 7, 9, 3, 4]) == [5, 6, 7, 9, 3, 4]
    assert draft([1, 2, 3, 4, 5, 6, 7, 9, 3, 4], num_pred_tokens=2) == [5, 6]
    # Only the unigram 4 matches (the bigram (8, 4) never occurred): its first continuation is 5.
    assert draft([4, 5, 1, 8, 4]) == [5, 1, 8, 4]
    # The bigram match beats an earlier unigram match.
    assert draft([2, 9, 1, 2, 7, 1, 2], max_ngram_size=2) == [7, 1, 2]


def test_nothing_to_propose() -> None:
    assert draft([]) == [] and draft([5]) == [] and draft([1, 2, 3]) == []


def test_is_a_draft_model_and_validates_its_arguments() -> None:
    assert isinstance(LlamaPromptLookupDecoding(), LlamaDraftModel)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive int"):
            LlamaPromptLookupDecoding(max_ngram_size=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="positive int"):
            LlamaPromptLookupDecoding(num_pred_tokens=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        LlamaDraftModel()  # type: ignore[abstract]
