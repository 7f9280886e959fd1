"""Prompt caches (llamarcp.compat.cache): longest-prefix lookup, byte-bounded eviction, the on-disk store, and
the prefix reuse they exist for (fewer tokens evaluated, same output as a fresh run)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamarcp import Llama
from llamarcp.compat.cache import (
    BaseLlamaCache,
    LlamaCache,
    LlamaDiskCache,
    LlamaRAMCache,
    cache_restore,
    longest_token_prefix,
)
from llamarcp.llama import LlamaState

LONG = "Once upon a time there was a little cat that lived in a big house near the river, and every morning"
OTHER = "Quantum chromodynamics describes the strong interaction between quarks and gluons"


def state(tokens: list[int], size: int = 10, n_ctx: int = 512) -> LlamaState:
    return LlamaState(list(tokens), bytes([len(tokens) % 256]) * size, n_ctx, 7)


@pytest.fixture()
def llm(tiny_model_path: Path) -> Iterator[Llama]:
    with Llama(str(tiny_model_path), n_ctx=512, n_threads=1) as model:
        yield model


def test_longest_token_prefix() -> None:
    assert longest_token_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert longest_token_prefix([], [1]) == 0
    assert longest_token_prefix([5, 6], [5, 6, 7]) == 2


@pytest.mark.parametrize("kind", ["ram", "disk"])
def test_lookup_returns_the_longest_shared_prefix(kind: str, tmp_path: Path) -> None:
    cache: BaseLlamaCache = LlamaRAMCache() if kind == "ram" else LlamaDiskCache(tmp_path / "c")
    cache[[1, 2, 3, 4]] = state([1, 2, 3, 4])
    cache[[1, 2, 9]] = state([1, 2, 9])
    cache[[7, 8]] = state([7, 8])
    assert cache[[1, 2, 3, 4, 5, 6]].input_ids == [1, 2, 3, 4]
    assert cache[[1, 2, 9, 9]].input_ids == [1, 2, 9]
    assert cache[(7,)].input_ids == [7, 8]
    assert [1, 5] in cache and [3] not in cache and "text" not in cache  # type: ignore[operator]
    with pytest.raises(KeyError):
        cache[[3, 3]]
    with pytest.raises(TypeError, match="token sequences"):
        cache["abc"] = state([1])


def test_ram_cache_evicts_least_recently_used_beyond_capacity() -> None:
    cache = LlamaRAMCache(capacity_bytes=250)
    cache[[1]] = state([1], 100)
    cache[[2]] = state([2], 100)
    cache[[1, 1]]  # touch [1]: now [2] is the oldest
    cache[[3]] = state([3], 100)
    assert cache.cache_size == 200 and len(cache) == 2
    assert [2] not in cache and [1] in cache and [3] in cache
    cache[[4]] = state([4], 1000)  # larger than the whole cache: not kept, and nothing else survives it either
    assert cache.cache_size <= cache.capacity_bytes
    assert LlamaCache is LlamaRAMCache


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_capacity_must_be_a_positive_int(bad: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="capacity_bytes"):
        LlamaRAMCache(capacity_bytes=bad)
    with pytest.raises(ValueError, match="capacity_bytes"):
        LlamaDiskCache(tmp_path, capacity_bytes=bad)


def test_disk_cache_persists_and_stays_within_capacity(tmp_path: Path) -> None:
    with LlamaDiskCache(tmp_path, capacity_bytes=300) as cache:
        cache[[1, 2]] = state([1, 2], 100)
        cache[[3, 4]] = state([3, 4], 100)
        cache[[1, 2]] = state([1, 2], 120)  # replaced, not added
        assert len(cache) == 2 and cache.cache_size == 220
        cache[[5]] = state([5], 150)  # over 300: the least recently used ([3, 4]) goes
        assert [3, 4] not in cache and cache.cache_size == 270
        cache[[9]] = state([9], 301)  # can never fit: ignored
        assert [9] not in cache
    with LlamaDiskCache(tmp_path, capacity_bytes=300) as again:
        restored = again[[1, 2, 3]]
        assert restored.input_ids == [1, 2] and restored.llama_state == state([1, 2], 120).llama_state
        assert (restored.n_ctx, restored.seed) == (512, 7)
    # A plain SQLite file: nothing is unpickled from it.
    rows = sqlite3.connect(str(tmp_path / "llama_cache.sqlite3")).execute("SELECT COUNT(*) FROM states").fetchone()
    assert rows == (2,)


@pytest.mark.parametrize("kind", ["ram", "disk"])
def test_shared_prefix_is_restored_and_evaluates_fewer_tokens(kind: str, llm: Llama, tmp_path: Path) -> None:
    llm.set_cache(LlamaRAMCache() if kind == "ram" else LlamaDiskCache(tmp_path))
    prompt_tokens = llm.tokenize(LONG.encode())
    llm(LONG, max_tokens=4, temperature=0)
    assert llm.n_prompt_tokens_evaluated == len(prompt_tokens)
    llm(OTHER, max_tokens=4, temperature=0)  # the context now holds an unrelated prompt
    cached = llm(LONG + " she", max_tokens=8, temperature=0)
    n_full = len(llm.tokenize((LONG + " she").encode()))
    # Only the tokens after the cached prefix were decoded (at least the last prompt token is redone).
    assert 1 <= llm.n_prompt_tokens_evaluated <= n_full - len(prompt_tokens) + 1
    llm.set_cache(None)
    llm.reset()
    fresh = llm(LONG + " she", max_tokens=8, temperature=0)
    assert llm.n_prompt_tokens_evaluated == n_full
    assert cached["choices"][0]["text"] == fresh["choices"][0]["text"]


def test_without_a_cache_the_other_prompt_costs_a_full_evaluation(llm: Llama) -> None:
    llm(LONG, max_tokens=4, temperature=0)
    llm(OTHER, max_tokens=4, temperature=0)
    llm(LONG + " she", max_tokens=4, temperature=0)
    assert llm.n_prompt_tokens_evaluated >= len(llm.tokenize(LONG.encode())) - 1


def test_streamed_completion_is_stored_when_finished(llm: Llama) -> None:
    cache = LlamaRAMCache()
    llm.set_cache(cache)
    chunks = llm(LONG, max_tokens=4, temperature=0, stream=True)
    assert len(cache) == 0  # nothing generated yet
    list(chunks)
    assert len(cache) == 1
    (key,) = cache.cache_state
    assert list(key[: len(llm.tokenize(LONG.encode()))]) == llm.tokenize(LONG.encode())


def test_restore_skips_states_of_another_context_size(llm: Llama) -> None:
    cache = LlamaRAMCache()
    tokens = llm.tokenize(LONG.encode())
    cache[tokens] = state(tokens, 10, n_ctx=1024)
    llm.set_cache(cache)
    assert cache_restore(llm, tokens) is False
    assert llm(LONG, max_tokens=2, temperature=0)["choices"][0]["finish_reason"] in ("length", "stop")


def test_set_cache_rejects_other_objects(llm: Llama) -> None:
    with pytest.raises(TypeError, match="BaseLlamaCache"):
        llm.set_cache({})  # type: ignore[arg-type]
