"""Running one HTTP request's work on its model: admission (503 beyond the queue), the model's slot, and the
client's disconnect, for a plain answer (`run_blocking`) or an SSE stream (`run_stream`).

With one slot a client that leaves stops its generation at the next token and `Llama.abort()` ends a decode in
progress. With `n_parallel` slots an abort would stop every sequence, so a client that leaves only ends its own
generation (its stopping criterion, or closing its stream): the scheduler frees that sequence at its next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import Request
from sse_starlette import EventSourceResponse

from llamarcp.server.errors import ClientGone, api_error_from
from llamarcp.server.pool import ModelEntry, ModelPool
from llamarcp.server.settings import ServerSettings

__all__ = ["Dispatcher", "StreamEncoder", "withdraw_abort"]

log = logging.getLogger("llamarcp.server")


def withdraw_abort(llama: Any) -> None:
    """Forget an abort request that found nothing left to stop (else it would stop the next decode)."""
    clear = getattr(llama, "clear_abort", None)  # test stand-ins may lack it
    if clear is not None:
        clear()


class StreamEncoder:
    """How a stream's chunks become server-sent events: OpenAI's `data: {json}` lines ending with `[DONE]`.
    Other APIs (Anthropic's messages, OpenAI's responses) subclass it; one instance per stream (it may keep
    state between chunks)."""

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, str]]:
        return [{"data": json.dumps(chunk, ensure_ascii=False)}]

    def done(self) -> list[dict[str, str]]:
        return [{"data": "[DONE]"}]

    def error(self, message: str, type_: str, code: str | None) -> list[dict[str, str]]:
        return [{"data": json.dumps({"error": {"message": message, "type": type_, "code": code}})}]


class Dispatcher:
    """Admits requests for the pool's models and runs their work; see the module docstring."""

    def __init__(self, settings: ServerSettings, pool: ModelPool) -> None:
        self.settings = settings
        self.pool = pool

    async def enter(self, entry: ModelEntry) -> None:
        """Admit a request for `entry` (503 when its queue is full), load the model, then wait for a slot."""
        runner = entry.runner
        runner.admit()
        try:
            await self.pool.enter(entry)
        except BaseException:
            runner.leave()
            raise
        try:
            await runner.acquire()  # gives the queue place back itself when cancelled
        except BaseException:
            self.pool.leave(entry)
            raise

    def leave(self, entry: ModelEntry) -> None:
        entry.runner.release()
        self.pool.leave(entry)

    async def on_model(self, entry: ModelEntry, fn: Callable[[Any], Any]) -> Any:
        """Quick vocab work (tokenize/detokenize): needs the model loaded but not a slot, so it does not wait
        behind a generation; runs in a worker thread (the tokenizer is safe beside a running generation)."""
        await self.pool.enter(entry)
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn, entry.llama)
        finally:
            self.pool.leave(entry)

    async def run_blocking(self, request: Request, entry: ModelEntry, job: Callable[[Callable[..., bool]], Any]) -> Any:
        """Run `job(should_stop)` on a model thread while holding a slot; stop early if the client leaves.

        When the client leaves, `should_stop()` turns true (generations check it per token). With one slot, a
        job still running a poll later gets `Llama.abort()` (it is inside a long decode); an abort that arrives
        after the job ended is withdrawn before the slot is released, so it never hits the next job.
        """
        runner = entry.runner
        await self.enter(entry)
        gone = False
        guard = threading.Lock()
        finished = False
        aborted: list[Any] = []

        def should_stop(*_args: Any) -> bool:
            return gone

        def guarded_job() -> Any:
            nonlocal finished
            try:
                return job(should_stop)
            finally:
                with guard:
                    finished = True
                    for target in aborted:
                        withdraw_abort(target)

        def abort_running() -> None:
            with guard:
                if finished or runner.parallel:  # other sequences share the decode: never abort them
                    return
                target = entry.llama
                if target is not None:
                    target.abort()
                    aborted.append(target)

        try:
            task = asyncio.ensure_future(runner.call(guarded_job))
            polls_since_gone = 0
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.25)
                if done:
                    break
                if gone:
                    polls_since_gone += 1
                    if polls_since_gone == 1:
                        abort_running()
                elif await request.is_disconnected():
                    gone = True
                    runner.stats.cancelled += 1
            try:
                result = task.result()
            except Exception:
                if gone:  # whatever the abort made the job raise; nobody is listening
                    raise ClientGone() from None
                raise
            usage = result.get("usage") if isinstance(result, dict) else None
            if isinstance(usage, dict):
                runner.stats.completion_tokens += int(usage.get("completion_tokens", 0))
            if gone:
                raise ClientGone()
            runner.stats.served += 1
            return result
        except ClientGone:
            raise
        except BaseException:
            runner.stats.failed += 1
            raise
        finally:
            self.leave(entry)

    async def run_stream(
        self,
        entry: ModelEntry,
        make: Callable[[], Iterator[dict[str, Any]]],
        encoder: StreamEncoder | None = None,
    ) -> EventSourceResponse:
        """Stream `make()`'s chunks as server-sent events (shaped by `encoder`, OpenAI's by default), holding a
        slot until the stream ends or the client leaves (then the generator is closed, which ends that
        generation only)."""
        encoder = encoder if encoder is not None else StreamEncoder()
        runner = entry.runner
        settings = self.settings
        await self.enter(entry)
        chunks = runner.iterate(make)
        try:
            first = await chunks.__anext__()  # errors before the first chunk are still plain HTTP errors
        except StopAsyncIteration:
            first = None
        except BaseException:
            runner.stats.failed += 1
            try:
                await chunks.aclose()
            finally:
                self.leave(entry)
            raise

        async def events() -> AsyncIterator[dict[str, str]]:
            finished = False
            client_left = False
            try:
                if first is not None:
                    runner.stats.streamed_chunks += 1
                    for event in encoder.chunk(first):
                        yield event
                async for chunk in chunks:
                    runner.stats.streamed_chunks += 1
                    for event in encoder.chunk(chunk):
                        yield event
                    if settings.interrupt_requests and runner.waiting > 0:
                        log.info("stream interrupted: another request waits for %r", entry.model_id)
                        break
                finished = True
                runner.stats.served += 1
                for event in encoder.done():
                    yield event
            except (asyncio.CancelledError, GeneratorExit):
                if not finished:
                    runner.stats.cancelled += 1
                    client_left = True
                raise
            except Exception as exc:  # the stream has started: report in-band, like OpenAI does
                runner.stats.failed += 1
                error = api_error_from(exc)
                log.warning("stream failed: %s", error.message)
                for event in encoder.error(error.message, error.type, error.code):
                    yield event
            finally:
                llama = entry.llama
                abort = client_left and not runner.parallel and llama is not None
                try:
                    if abort:  # the producer stops before its next chunk; abort() also ends a long decode
                        llama.abort()
                    await chunks.aclose()  # waits for the producer to end (and close the generator)
                finally:
                    if abort:  # nothing runs any more: an abort that found nothing must not hit the next job
                        withdraw_abort(llama)
                    self.leave(entry)

        ping = 10**9 if settings.disable_ping_events else 15
        return EventSourceResponse(events(), ping=ping, send_timeout=30)
