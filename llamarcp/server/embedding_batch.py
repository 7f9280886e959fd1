"""Embedding requests that arrive together share calls into the embedding model.

Each model has one `EmbeddingBatcher`. Requests queue their texts; one drain task at a time takes up to
`EMBED_ROUND` texts from the queued requests (round robin, so a long request does not hold back short ones),
embeds them in one call on the model's thread and hands each request its rows. `Llama.embed` is bit-exact
batched versus alone, so a request gets the same vectors whichever others shared its call. A round that fails
is retried request by request, so one bad input fails only its own request. A client that leaves is dropped
before the next round; if every request of the running round has left, the embedding model is aborted.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from llamarcp.server.errors import ClientGone
from llamarcp.server.runner import ModelRunner

__all__ = ["EMBED_ROUND", "EmbeddingBatcher"]

#: The most texts one call embeds (llama.cpp's embedding batches are laid out in 16-row tiles); a client that
#: leaves stops its work between rounds.
EMBED_ROUND = 16

#: texts -> (one row per text, the tokens of each text); runs on the model's thread.
EmbedFn = Callable[[list[str]], tuple[list[Any], list[int]]]


@dataclass(eq=False)
class _Waiting:
    texts: list[str]
    future: asyncio.Future[tuple[list[Any], int]]
    rows: list[Any] = field(default_factory=list)
    tokens: int = 0
    gone: bool = False
    alone: bool = False  # after a failed shared round: embedded in rounds of its own

    @property
    def left(self) -> int:
        return len(self.texts) - len(self.rows)


class EmbeddingBatcher:
    """Batches one model's embedding requests; see the module docstring."""

    def __init__(
        self,
        runner: ModelRunner,
        embed: EmbedFn,
        abort: Callable[[], None] | None = None,
        withdraw: Callable[[], None] | None = None,
        round_size: int = EMBED_ROUND,
    ) -> None:
        self.runner = runner
        self._embed = embed
        self._abort = abort
        self._withdraw = withdraw
        self.round_size = round_size
        self._queue: deque[_Waiting] = deque()
        self._in_flight: list[_Waiting] = []
        self._aborted = False
        self._drainer: asyncio.Task[None] | None = None

    async def embed(self, texts: list[str], client_left: Callable[[], Awaitable[bool]]) -> tuple[list[Any], int]:
        """The rows of `texts` and their token count; ClientGone once `client_left()` says so (after the work
        for this request has stopped)."""
        waiting = _Waiting(list(texts), asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        while True:
            done, _ = await asyncio.wait({waiting.future}, timeout=0.25)
            if done:
                return waiting.future.result()
            if not waiting.gone and await client_left():
                waiting.gone = True
                self.runner.stats.cancelled += 1
                self._abort_if_nobody_listens()

    def _abort_if_nobody_listens(self) -> None:
        if self._aborted or self._abort is None:
            return
        if self._in_flight and all(w.gone for w in self._in_flight):
            self._abort()
            self._aborted = True

    def _next_round(self) -> list[tuple[_Waiting, int]]:
        """(request, how many of its texts) for the next call, taking requests in queue order."""
        chosen: list[tuple[_Waiting, int]] = []
        room = self.round_size
        for waiting in self._queue:
            if room == 0:
                break
            if waiting.alone:
                if not chosen:
                    chosen.append((waiting, min(room, waiting.left)))
                break
            take = min(room, waiting.left)
            chosen.append((waiting, take))
            room -= take
        return chosen

    def _settle(self, waiting: _Waiting, error: BaseException | None = None) -> None:
        self._queue.remove(waiting)
        if waiting.future.done():
            return
        if waiting.gone:
            waiting.future.set_exception(ClientGone())
        elif error is not None:
            waiting.future.set_exception(error)
        else:
            waiting.future.set_result((waiting.rows, waiting.tokens))

    async def _drain(self) -> None:
        try:
            await self._rounds()
        except BaseException as exc:  # never leave a request waiting for a drain that has stopped
            for waiting in list(self._queue):
                self._settle(waiting, exc if isinstance(exc, Exception) else RuntimeError("embedding stopped"))
            raise

    async def _rounds(self) -> None:
        stats = self.runner.stats
        while self._queue:
            for waiting in [w for w in self._queue if w.gone]:
                self._settle(waiting)
            chosen = self._next_round()
            if not chosen:
                continue
            texts = [t for w, n in chosen for t in w.texts[len(w.rows) : len(w.rows) + n]]
            self._in_flight = [w for w, _ in chosen]
            self._abort_if_nobody_listens()
            try:
                rows, counts = await self.runner.compute(self._embed, texts)
            except Exception as exc:
                if len(chosen) > 1:  # find the request it belongs to: retry each on its own
                    for waiting, _ in chosen:
                        waiting.alone = True
                else:
                    self._settle(chosen[0][0], exc)
                continue
            finally:
                self._in_flight = []
                if self._aborted:
                    self._aborted = False
                    if self._withdraw is not None:
                        self._withdraw()
            stats.embedding_calls += 1
            stats.embedded_inputs += len(texts)
            start = 0
            for waiting, n in chosen:
                waiting.rows.extend(rows[start : start + n])
                waiting.tokens += sum(counts[start : start + n])
                start += n
                if waiting.left == 0:
                    self._settle(waiting)
                else:  # round robin: the rest of a long request waits behind the others
                    self._queue.remove(waiting)
                    self._queue.append(waiting)
