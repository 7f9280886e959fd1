"""Read-only facts of a loaded model and its context, as `Llama` properties (a mixin of the facade).

Each reads through `llamarcp.turns` (a short use), so a concurrent `close()` cannot free the model under it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llamarcp.generation_stats import StatsSnapshot

if TYPE_CHECKING:
    from llamarcp._core import Model
    from llamarcp.batching import Scheduler
    from llamarcp.engine import Engine
    from llamarcp.turns import Turns

__all__ = ["ModelFacts"]


class _Count(int):
    """An int that can also be called, so both `llm.n_ctx` (property style) and `llm.n_ctx()` work."""

    def __call__(self) -> int:
        return int(self)


class ModelFacts:
    """Sizes, special tokens, metadata and counters of the last generation."""

    _model: Model
    _turns: Turns
    _engine: Engine | None
    _scheduler: Scheduler | None

    def _engine_or_raise(self) -> Engine:
        raise NotImplementedError  # provided by Llama

    @property
    def n_ctx(self) -> _Count:
        """Context size in tokens of one sequence (also callable, like llama-cpp-python's `n_ctx()`); with
        `n_parallel` the context holds that many sequences of this size."""
        with self._turns.using():
            return _Count(self._engine_or_raise().n_ctx)

    @property
    def n_vocab(self) -> _Count:
        self._turns.check_open()
        return _Count(self._model.n_vocab)

    @property
    def n_embd(self) -> _Count:
        with self._turns.using():
            return _Count(self._model.n_embd())

    @property
    def n_tokens(self) -> int:
        """Tokens currently held in the context (the reusable prefix)."""
        return len(self._engine.input_ids) if self._engine is not None else 0

    @property
    def last_timings(self) -> dict[str, float]:
        """Counts and milliseconds of the last generation (prompt_n, prompt_eval_n, prompt_ms, predicted_*)."""
        return self._engine.last_timings if self._engine is not None else {}

    @property
    def n_prompt_tokens_evaluated(self) -> int:
        """Tokens the last prompt evaluation actually decoded (the rest was a reused prefix)."""
        if self._scheduler is not None:
            return self._scheduler.n_prompt_tokens_evaluated
        return self._engine.n_prompt_tokens_evaluated if self._engine is not None else 0

    @property
    def token_bos(self) -> _Count:
        with self._turns.using():
            return _Count(self._model.token_bos())

    @property
    def token_eos(self) -> _Count:
        with self._turns.using():
            return _Count(self._model.token_eos())

    @property
    def token_nl(self) -> _Count:
        with self._turns.using():
            return _Count(self._model.token_nl())

    @property
    def metadata(self) -> dict[str, str]:
        """GGUF metadata key/values (scalars, as strings)."""
        cached: dict[str, str] | None = getattr(self, "_metadata", None)
        if cached is None:
            with self._turns.using():
                cached = self._model.metadata()
            self._metadata = cached
        self._turns.check_open()
        return dict(cached)

    def kv_cells(self) -> int:
        """Token cells of the context's KV cache, all sequences together: `n_parallel * n_ctx`, or `n_ctx`
        with `kv_unified=True` (the sequences share them, each up to `n_ctx`)."""
        with self._turns.using():
            return int(self._engine_or_raise().ctx.n_ctx())

    def kv_cache_mib(self) -> float:
        """Size of the context's KV cache in MiB, as llama.cpp logs it when it creates the context (the
        sliding-window and full-attention caches together): the figure to compare with llama-server's."""
        with self._turns.using():
            return float(self._engine_or_raise().ctx.kv_cache_mib)

    @property
    def generation_stats(self) -> StatsSnapshot:
        """Totals over every generation of this Llama: prompt tokens decoded / reused from the cache, generated
        tokens, their seconds, llama_decode calls (the server's /metrics)."""
        return self._engine.stats.snapshot() if self._engine is not None else StatsSnapshot()

    def chat_template(self, name: str | None = None) -> str | None:
        """The model's `tokenizer.chat_template` (or a named one), None when it has none."""
        with self._turns.using():
            return self._model.chat_template(name)

    def batching_status(self) -> dict[str, int]:
        """Sequences the continuous-batching scheduler is decoding and has queued (zeros with one sequence)."""
        scheduler = self._scheduler
        if scheduler is None:
            return {"running": 0, "queued": 0}
        return {"running": scheduler.n_running, "queued": scheduler.n_queued}
