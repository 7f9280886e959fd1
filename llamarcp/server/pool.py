"""Which model a request goes to: the served models by name, loaded on demand, at most N at once.

Each `ModelEntry` has its own `ModelRunner` (queue, slots and model threads); how a request then runs on that model is
the runner's business. Loading a model when `max_loaded` are already loaded evicts the least recently used one
that has no request in flight (admitted, waiting or running); if every loaded model is busy, the request waits
until one becomes idle. A load or unload runs on the model's own thread and finishes even if the client that
caused it leaves, so the count of loaded models is always exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from llamarcp import lib
from llamarcp.errors import LlamaError
from llamarcp.generation_stats import StatsSnapshot
from llamarcp.server.runner import ModelRunner
from llamarcp.server.settings import ModelConfig

__all__ = ["ModelEntry", "ModelPool", "UnknownModelError"]

log = logging.getLogger("llamarcp.server")

_UNLOADED, _LOADING, _LOADED, _UNLOADING = "unloaded", "loading", "loaded", "unloading"


class UnknownModelError(LlamaError, LookupError):
    """A request named a model this server does not serve (only with strict model names)."""

    def __init__(self, requested: str, served: list[str]) -> None:
        self.requested = requested
        self.served = served
        names = ", ".join(repr(s) for s in served)
        super().__init__(f"The model '{requested}' does not exist; this server serves {names}")


class ModelEntry:
    """One served model: its settings, its runner, and (while loaded) its Llama and embeddings context."""

    def __init__(self, config: ModelConfig, max_queue: int, llama: Any = None) -> None:
        self.config = config
        n_parallel = int(getattr(llama, "n_parallel", 1)) if llama is not None else config.n_parallel
        self.runner = ModelRunner(max_queue, n_parallel)
        self.llama: Any = llama
        self._owns_llama = llama is None
        self.embedder: Any = None
        #: The `EmbeddingBatcher` of this model's embedding requests (made by the embeddings route).
        self.embedding_batcher: Any = None
        self.state = _LOADED if llama is not None else _UNLOADED
        #: Requests admitted for this model and not finished (the eviction guard).
        self.users = 0
        self.last_used = 0.0
        self.loads = 0
        self._n_ctx: int | None = None
        self._eog: frozenset[int] | None = None
        #: Generation totals of this model's earlier loads (a reload starts its Llama's own totals at zero).
        self._retired_stats: list[StatsSnapshot] = []
        path = config.model or (getattr(llama, "model_path", None) if llama is not None else None)
        self.model_path = str(path) if path else None
        self.model_id = config.alias or (Path(self.model_path).name if self.model_path else "default")

    @property
    def loaded(self) -> bool:
        return self.state == _LOADED

    def names(self) -> set[str]:
        """Every name that picks this model: the alias, and the file's path (as given and absolute), name, stem."""
        known = {self.model_id}
        if self.model_path:
            path = Path(self.model_path)
            known |= {self.model_path, path.name, path.stem, str(path.expanduser().resolve())}
        return known

    # -- on the model thread -----------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model (idempotent); compiles the chat template (or checks the chat format name) so a broken
        one fails here, not in every request."""
        if self.llama is None:
            from llamarcp import Llama

            # A worker serves one open model per process, so only the served model gets the RPC workers.
            self.llama = Llama(self.config.model, rpc_servers=self.config.rpc_servers, **self.config.llama_arguments())
            self._owns_llama = True
            try:
                for path, scale in self.config.lora_adapters:
                    self.llama.add_lora(path, scale)
            except BaseException:
                self.llama.close()
                self.llama = None
                raise
            self.model_path = self.llama.model_path
            if not self.config.alias:
                self.model_id = Path(self.model_path).name
            self.loads += 1
        try:
            self._n_ctx = int(self.llama.n_ctx)
            if self.config.chat_template is not None or self.config.chat_format is not None:
                from llamarcp.chat import chat_formatter

                chat_formatter(self.llama, self.config.chat_format, self.config.chat_template)
        except BaseException:
            self.unload()
            raise
        self.state = _LOADED

    def unload(self) -> None:
        """Free the model and its embeddings context (a Llama passed in by the caller is left open)."""
        if self.embedder is not None and self.embedder is not self.llama:
            self.embedder.close()
        self.embedder = None
        if self._owns_llama and self.llama is not None:
            live = self._live_stats()
            if live is not None:
                self._retired_stats.append(live)
            self.llama.close()
            self.llama = None
        self._eog = None
        self.state = _UNLOADED

    def _live_stats(self) -> StatsSnapshot | None:
        stats = getattr(self.llama, "generation_stats", None) if self.llama is not None else None
        return stats if isinstance(stats, StatsSnapshot) else None  # test stand-ins have none

    def stats_snapshots(self) -> list[StatsSnapshot]:
        """`GenerationStats` snapshots: of each earlier load, and of the loaded Llama (for /metrics)."""
        live = self._live_stats() if self.loaded else None
        return [*self._retired_stats, *([live] if live is not None else [])]

    def embedding_model(self) -> Any:
        """A second context on the same file with embeddings on (created on first use, on the model thread).

        OpenAI's API returns one vector per input, so a model without its own pooling (most generative models)
        gets mean pooling, as llama-server does when asked for OpenAI-compatible embeddings.
        """
        if self.embedder is None:
            if getattr(self.llama, "embedding", False):
                self.embedder = self.llama
            else:
                from llamarcp import Llama

                kwargs = self.config.llama_arguments()
                # This context's own choices; it embeds many texts per call itself, so one sequence set suffices.
                for own in ("chat_format", "embedding", "pooling_type", "n_parallel"):
                    kwargs.pop(own, None)
                embedder = Llama(self.model_path, embedding=True, **kwargs)
                probe = embedder.embed("pooling probe")
                if probe and isinstance(probe[0], list):  # one vector per token: the model has no pooling
                    embedder.close()
                    embedder = Llama(
                        self.model_path, embedding=True, pooling_type=lib.LLAMA_POOLING_TYPE_MEAN, **kwargs
                    )
                self.embedder = embedder
        return self.embedder

    def embedding_input_limit(self) -> int:
        """The most tokens of one input the embedding model reads (longer inputs are cut): one batch, one
        context (the count a usage figure reports)."""
        embedder = self.embedding_model()
        return min(int(embedder.n_ctx), int(getattr(embedder, "n_batch", self.config.n_batch)))

    def sequences(self) -> dict[str, int]:
        """Generation slots in use / total, and what the model's batching scheduler holds (for /health)."""
        runner = self.runner
        counts = {"total": runner.n_parallel, "in_use": runner.snapshot()["slots_in_use"]}
        status = getattr(self.llama, "batching_status", None)
        if self.loaded and status is not None:
            counts.update(status())
        kv_cells = getattr(self.llama, "kv_cells", None)
        if self.loaded and kv_cells is not None:
            counts["kv_cells"] = kv_cells()  # all slots together (--kv-unified: shared)
            counts["kv_cache_mib"] = self.llama.kv_cache_mib()
        return counts

    def end_of_generation_tokens(self) -> frozenset[int]:
        """Token ids that end a generation (EOS, EOT, ...), for min_tokens; computed once per load."""
        if self._eog is None:
            is_eog = self.llama._model.is_eog
            self._eog = frozenset(t for t in range(int(self.llama.n_vocab)) if is_eog(t))
        return self._eog

    def n_ctx(self) -> int:
        if self._n_ctx is None:
            raise LlamaError(f"model {self.model_id!r} is not loaded")
        return self._n_ctx

    def close(self) -> None:
        self.runner.shutdown()
        self.unload()


class ModelPool:
    """The served models by name; see the module docstring for loading and eviction."""

    def __init__(self, entries: list[ModelEntry], max_loaded: int = 1, strict: bool = False) -> None:
        if not entries:
            raise ValueError("a server needs at least one model")
        if max_loaded < 1:
            raise ValueError("max_loaded must be at least 1")
        self.entries = entries
        self.max_loaded = max_loaded
        self.strict = strict
        self._change: asyncio.Event | None = None
        self.evictions = 0

    @property
    def default(self) -> ModelEntry:
        return self.entries[0]

    def resolve(self, requested: str | None) -> ModelEntry:
        """The entry a request's `model` names: an alias or file name first; anything else is the default model
        (as llama-cpp-python and llama-server do), or UnknownModelError with strict names."""
        if requested is None or requested == "":
            return self.default
        for entry in self.entries:  # aliases win over file names, so two aliases of one file stay distinct
            if requested == entry.model_id:
                return entry
        for entry in self.entries:
            if requested in entry.names():
                return entry
        if self.strict:
            raise UnknownModelError(requested, [e.model_id for e in self.entries])
        return self.default

    def _resident(self) -> int:
        return sum(1 for e in self.entries if e.state != _UNLOADED)

    async def _changed(self) -> None:
        """Wait until some entry's state or users change (all bookkeeping runs on the event loop, so a check
        followed by this wait cannot miss a change)."""
        if self._change is None:
            self._change = asyncio.Event()
        await self._change.wait()

    def _notify(self) -> None:
        if self._change is not None:
            self._change.set()
            self._change = None

    async def enter(self, entry: ModelEntry) -> None:
        """Count a request in for `entry` and make sure it is loaded (waiting for room if need be)."""
        entry.users += 1
        try:
            while not entry.loaded:
                await self._make_room_and_load(entry)
        except BaseException:
            self.leave(entry)
            raise
        entry.last_used = time.monotonic()

    def leave(self, entry: ModelEntry) -> None:
        entry.users -= 1
        entry.last_used = time.monotonic()
        self._notify()

    @contextlib.asynccontextmanager
    async def unslotted(self, entry: ModelEntry) -> AsyncIterator[None]:
        """A request that runs without a generation slot (embeddings, rerank): admitted to `entry`'s queue (503
        when full), the model loaded, counted as running until the block ends."""
        runner = entry.runner
        runner.admit()
        try:
            await self.enter(entry)
        except BaseException:
            runner.leave()
            raise
        runner.start_unslotted()
        try:
            yield
        finally:
            runner.finish_unslotted()
            self.leave(entry)

    async def _make_room_and_load(self, entry: ModelEntry) -> None:
        if entry.state != _UNLOADED:  # being loaded for another request, or being evicted: wait
            await self._changed()
            return
        victim = None
        if self._resident() >= self.max_loaded:
            idle = [e for e in self.entries if e.state == _LOADED and e.users == 0]
            if not idle:
                await self._changed()  # every loaded model is busy: wait until one finishes
                return
            victim = min(idle, key=lambda e: e.last_used)
            victim.state = _UNLOADING
        entry.state = _LOADING
        # The swap runs to its end even if this request is cancelled, so states always match reality.
        await asyncio.shield(asyncio.ensure_future(self._swap(victim, entry)))

    async def _swap(self, victim: ModelEntry | None, entry: ModelEntry) -> None:
        try:
            if victim is not None:
                log.info("unloading %r to make room for %r", victim.model_id, entry.model_id)
                try:
                    await victim.runner.call(victim.unload)
                finally:
                    victim.state = _UNLOADED
                    self.evictions += 1
            log.info("loading %r from %s", entry.model_id, entry.model_path or "the default model")
            await entry.runner.call(entry.load)
        except BaseException:
            entry.state = _UNLOADED
            raise
        finally:
            self._notify()

    def load_default_now(self) -> None:
        """Load the default model synchronously (startup, tests); counts toward `max_loaded`."""
        self.default.load()

    def snapshot(self) -> dict[str, Any]:
        return {
            "max_loaded": self.max_loaded,
            "evictions": self.evictions,
            "models": {
                e.model_id: {"state": e.state, "loads": e.loads, "queue": e.runner.snapshot()} for e in self.entries
            },
        }

    def close(self) -> None:
        for entry in self.entries:
            entry.close()
