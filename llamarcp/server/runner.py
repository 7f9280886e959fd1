"""One model, many HTTP requests: a bounded admission queue and a single worker thread.

Every call into llama.cpp runs on one dedicated thread, so model work is serialized by construction. A request
holds the model slot (a FIFO asyncio lock) for its whole generation, streamed or not, so two generations never
interleave on the same context. Requests beyond `max_queue` (running + waiting) are refused at once (503).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncGenerator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_ITEM, _ERROR, _DONE = range(3)


class ServerOverloaded(Exception):
    """The admission queue is full."""


@dataclass
class RunnerStats:
    served: int = 0
    failed: int = 0
    rejected: int = 0
    cancelled: int = 0
    #: Chunks the model thread generated / chunks sent to clients (they differ when a client leaves).
    produced_chunks: int = 0
    streamed_chunks: int = 0


class ModelRunner:
    """Serializes work on one model; see the module docstring."""

    def __init__(self, max_queue: int = 16) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamarcp-model")
        self._lock: asyncio.Lock | None = None
        self._admitted = 0
        self._active = 0
        self.stats = RunnerStats()

    # -- admission ---------------------------------------------------------------------------------------------

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def admit(self) -> None:
        """Reserve a place in the queue or raise ServerOverloaded (synchronous: no await between check and add)."""
        if self._admitted >= self.max_queue:
            self.stats.rejected += 1
            raise ServerOverloaded(f"{self._admitted} requests are already running or queued (limit {self.max_queue})")
        self._admitted += 1

    def leave(self) -> None:
        self._admitted -= 1

    async def acquire(self) -> None:
        """Wait for the model after `admit()`; on cancellation the queue place is given back."""
        try:
            await self._get_lock().acquire()
        except BaseException:
            self.leave()
            raise
        self._active += 1

    def release(self) -> None:
        self._active -= 1
        self._get_lock().release()
        self.leave()

    def snapshot(self) -> dict[str, Any]:
        return {
            "active": self._active,
            "waiting": self._admitted - self._active,
            "capacity": self.max_queue,
            **asdict(self.stats),
        }

    # -- work on the model thread ------------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def iterate(self, make: Callable[[], Iterator[T]]) -> AsyncGenerator[T, None]:
        """Run a blocking generator on the model thread and hand its items to this task as they come.

        The model thread produces at full speed (no round trip per token); when this async generator is closed
        early (client gone), the producer stops before its next item and closes the generator itself. The caller
        holds the slot; anything it runs next on the model thread queues behind the producer.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        stop = threading.Event()
        stats = self.stats

        def deliver(kind: int, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the event loop is gone (server shutting down)
                stop.set()

        def produce() -> None:
            try:
                gen = make()
                try:
                    for item in gen:
                        stats.produced_chunks += 1
                        deliver(_ITEM, item)
                        if stop.is_set():
                            break
                finally:
                    gen.close()  # type: ignore[attr-defined]
            except BaseException as exc:  # handed to the consumer, which re-raises it
                deliver(_ERROR, exc)
            else:
                deliver(_DONE, None)

        producer = loop.run_in_executor(self._executor, produce)
        try:
            while True:
                kind, value = await queue.get()
                if kind == _DONE:
                    return
                if kind == _ERROR:
                    raise value
                yield value
        finally:
            stop.set()
            await asyncio.shield(producer)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
