"""Prompt caches (llama-cpp-python's `llama_cache`): `Llama.save_state()` snapshots keyed by token sequences.

A completion whose prompt shares a prefix with a cached snapshot restores that snapshot first (when it shares
more than the context already holds), so only the rest of the prompt is evaluated. `Llama.set_cache(cache)`
turns it on; the completion path calls `cache_restore` before evaluating and `cache_store` after generating.

- `LlamaRAMCache`: in memory, least recently used first out when over `capacity_bytes`.
- `LlamaDiskCache`: an SQLite file in `cache_dir` (stdlib `sqlite3`; no pickle, so a cache file cannot run
  code), same eviction. Survives the process, and is shared by processes using the same directory.

Lookups return the entry with the longest common token prefix (at least one token), like llama-cpp-python.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BaseLlamaCache",
    "LlamaCache",
    "LlamaDiskCache",
    "LlamaRAMCache",
    "cache_restore",
    "cache_store",
    "longest_token_prefix",
    "storing_after",
]

DEFAULT_CAPACITY_BYTES = 2 << 30  # llama-cpp-python's default: 2 GiB


def longest_token_prefix(a: Iterable[int], b: Iterable[int]) -> int:
    """Number of leading tokens `a` and `b` have in common."""
    n = 0
    for x, y in zip(a, b):
        if int(x) != int(y):
            break
        n += 1
    return n


def _check_capacity(capacity_bytes: Any) -> int:
    if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int) or capacity_bytes <= 0:
        raise ValueError(f"capacity_bytes must be a positive int, got {capacity_bytes!r}")
    return capacity_bytes


def _key(key: Sequence[int]) -> tuple[int, ...]:
    if isinstance(key, (str, bytes)):
        raise TypeError("cache keys are token sequences (lists of ints), not text")
    return tuple(int(t) for t in key)


class BaseLlamaCache(ABC):
    """Interface of a prompt cache: `cache[tokens]` gives the state with the longest shared prefix."""

    def __init__(self, capacity_bytes: int = DEFAULT_CAPACITY_BYTES) -> None:
        self.capacity_bytes = _check_capacity(capacity_bytes)

    @property
    @abstractmethod
    def cache_size(self) -> int:
        """Bytes of llama.cpp state held."""

    @abstractmethod
    def _keys(self) -> Iterable[tuple[int, ...]]:
        """Every key held."""

    def _find_longest_prefix_key(self, key: tuple[int, ...]) -> tuple[int, ...] | None:
        best, best_len = None, 0
        for candidate in self._keys():
            n = longest_token_prefix(candidate, key)
            if n > best_len:
                best, best_len = candidate, n
        return best

    @abstractmethod
    def __getitem__(self, key: Sequence[int]) -> Any: ...

    @abstractmethod
    def __setitem__(self, key: Sequence[int], value: Any) -> None: ...

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, Sequence) or isinstance(key, (str, bytes)):
            return False
        return self._find_longest_prefix_key(_key(key)) is not None


class LlamaRAMCache(BaseLlamaCache):
    """Snapshots in memory; the least recently used are dropped while the total exceeds `capacity_bytes`."""

    def __init__(self, capacity_bytes: int = DEFAULT_CAPACITY_BYTES) -> None:
        super().__init__(capacity_bytes)
        self.cache_state: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def cache_size(self) -> int:
        return sum(state.llama_state_size for state in self.cache_state.values())

    def _keys(self) -> Iterable[tuple[int, ...]]:
        return list(self.cache_state)

    def __getitem__(self, key: Sequence[int]) -> Any:
        with self._lock:
            found = self._find_longest_prefix_key(_key(key))
            if found is None:
                raise KeyError("no cached state shares a prefix with these tokens")
            self.cache_state.move_to_end(found)
            return self.cache_state[found]

    def __setitem__(self, key: Sequence[int], value: Any) -> None:
        k = _key(key)
        with self._lock:
            self.cache_state.pop(k, None)
            self.cache_state[k] = value
            while len(self.cache_state) > 1 and self.cache_size > self.capacity_bytes:
                self.cache_state.popitem(last=False)
            if self.cache_size > self.capacity_bytes:  # a single state larger than the whole cache
                self.cache_state.clear()

    def __len__(self) -> int:
        return len(self.cache_state)


#: llama-cpp-python's older name for the RAM cache.
LlamaCache = LlamaRAMCache


_SCHEMA = """
CREATE TABLE IF NOT EXISTS states (
    key BLOB PRIMARY KEY,       -- the tokens, int32 little-endian
    n_ctx INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    size INTEGER NOT NULL,      -- len(state)
    used REAL NOT NULL,         -- last use, for least-recently-used eviction
    state BLOB NOT NULL
)
"""


def _pack(tokens: tuple[int, ...]) -> bytes:
    packed = array("i", tokens)
    if packed.itemsize != 4:  # pragma: no cover - every platform llama.cpp supports has a 32-bit C int
        raise RuntimeError("this platform's C int is not 32 bits")
    if sys.byteorder != "little":  # pragma: no cover
        packed.byteswap()
    return packed.tobytes()


def _unpack(blob: bytes) -> tuple[int, ...]:
    tokens = array("i")
    tokens.frombytes(blob)
    if sys.byteorder != "little":  # pragma: no cover
        tokens.byteswap()
    return tuple(tokens)


class LlamaDiskCache(BaseLlamaCache):
    """Snapshots in an SQLite database `cache_dir/llama_cache.sqlite3`, bounded by `capacity_bytes`."""

    def __init__(
        self, cache_dir: str | os.PathLike[str] = ".cache/llama_cache", capacity_bytes: int = DEFAULT_CAPACITY_BYTES
    ) -> None:
        import sqlite3

        super().__init__(capacity_bytes)
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.cache_dir / "llama_cache.sqlite3"
        self._lock = threading.Lock()
        # One connection shared by this object's users, serialized by the lock; other processes use their own.
        self._db = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> LlamaDiskCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def cache_size(self) -> int:
        with self._lock:
            (total,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM states").fetchone()
        return int(total)

    def _keys(self) -> Iterator[tuple[int, ...]]:
        rows = self._db.execute("SELECT key FROM states").fetchall()
        return (_unpack(blob) for (blob,) in rows)

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM states").fetchone()
        return int(count)

    def __getitem__(self, key: Sequence[int]) -> Any:
        from llamarcp.state import LlamaState

        with self._lock:
            found = self._find_longest_prefix_key(_key(key))
            if found is None:
                raise KeyError("no cached state shares a prefix with these tokens")
            blob = _pack(found)
            row = self._db.execute("SELECT n_ctx, seed, state FROM states WHERE key = ?", (blob,)).fetchone()
            if row is None:  # removed by another process between the two queries
                raise KeyError("the cached state was evicted meanwhile")
            self._db.execute("UPDATE states SET used = ? WHERE key = ?", (time.time(), blob))
        n_ctx, seed, state = row
        return LlamaState(list(found), bytes(state), int(n_ctx), int(seed))

    def __setitem__(self, key: Sequence[int], value: Any) -> None:
        k = _key(key)
        state = bytes(value.llama_state)
        if len(state) > self.capacity_bytes:
            return  # could never fit; storing it would only evict everything else
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT OR REPLACE INTO states (key, n_ctx, seed, size, used, state) VALUES (?, ?, ?, ?, ?, ?)",
                    (_pack(k), int(value.n_ctx), int(value.seed), len(state), time.time(), state),
                )
                (total,) = db.execute("SELECT SUM(size) FROM states").fetchone()
                while total > self.capacity_bytes:
                    oldest = db.execute("SELECT key, size FROM states ORDER BY used LIMIT 1").fetchone()
                    db.execute("DELETE FROM states WHERE key = ?", (oldest[0],))
                    total -= oldest[1]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise


# -- the two calls the completion path makes ---------------------------------------------------------------------


def cache_restore(llm: Any, prompt_tokens: Sequence[int]) -> bool:
    """Before evaluating `prompt_tokens`: load the cached snapshot sharing the longest prefix with them, when it
    shares more than the context already does. Returns whether a snapshot was loaded."""
    cache = getattr(llm, "cache", None)
    if cache is None:
        return False
    try:
        state = cache[prompt_tokens]
    except KeyError:
        return False
    if state.n_ctx != int(llm.n_ctx):
        return False  # from a context of another size: llama.cpp would refuse it
    cached = longest_token_prefix(state.input_ids, prompt_tokens)
    current = longest_token_prefix(llm.input_ids, prompt_tokens)
    if cached <= current:
        return False
    llm.load_state(state)
    return True


def cache_store(llm: Any) -> None:
    """After a completion: snapshot the context under the tokens it holds."""
    cache = getattr(llm, "cache", None)
    if cache is None or not llm.n_tokens:
        return
    state = llm.save_state()
    cache[state.input_ids] = state


def storing_after(llm: Any, chunks: Iterator[Any]) -> Iterator[Any]:
    """`chunks` unchanged; once they are exhausted, `cache_store(llm)` (a stream saves when it has finished)."""
    try:
        yield from chunks
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # the generation releases the context before the snapshot is taken
    cache_store(llm)
