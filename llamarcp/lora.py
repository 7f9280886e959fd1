"""LoRA hot swap: adapters loaded once per Llama, applied to its context with per-generation scales.

`LoraAdapters` keeps the loaded adapters (ids 0, 1, ... in load order), their default scales, and which scales the
context has now. A generation resolves its configuration (the defaults, overridden per request) when it is
submitted; before it decodes, the context is switched to it (`llama_set_adapters_lora` with the adapters whose
scale is not 0). llama.cpp applies one adapter set to the whole context, so sequences with different
configurations never share a decode step: the batching scheduler runs them one configuration at a time (queued
in order), and a cached prefix is only reused under the configuration it was computed with.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from llamarcp._backend import capture_log, get_lib
from llamarcp._core import LoraAdapter
from llamarcp._ffi import ffi
from llamarcp.errors import LoraAdapterError

if TYPE_CHECKING:
    from llamarcp._core import Context, Model
    from llamarcp.engine import Engine
    from llamarcp.turns import Turns

__all__ = ["MAX_ADAPTERS", "MAX_LORA_SCALE", "LoraAdapters", "LoraConfig", "LoraMethods"]

#: One configuration: a scale per loaded adapter (index = adapter id).
LoraConfig = tuple[float, ...]

#: Adapters one Llama may hold, and the largest |scale| (llama.cpp takes any float; far outside this range the
#: output is noise, and a bound keeps requests from asking for inf).
MAX_ADAPTERS = 64
MAX_LORA_SCALE = 100.0


def check_scale(scale: Any, what: str = "scale") -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"LoRA {what} must be a number, got {scale!r}")
    value = float(scale)
    if not math.isfinite(value) or abs(value) > MAX_LORA_SCALE:
        raise ValueError(f"LoRA {what} must be finite and within +-{MAX_LORA_SCALE:g}, got {scale!r}")
    return value


class LoraAdapters:
    """See the module docstring. Thread-safe: requests resolve configurations from any thread; `apply` runs
    where the context is used (the generation's turn, or the scheduler thread)."""

    def __init__(self, model: Model, ctx: Context) -> None:
        self._model = model
        self._ctx = ctx
        self._adapters: list[LoraAdapter] = []
        self._paths: list[str] = []
        self._defaults: list[float] = []
        self._lock = threading.Lock()
        #: The configuration the context has now (what its cached KV was computed with).
        self.applied: LoraConfig = ()

    def __len__(self) -> int:
        return len(self._adapters)

    def add(self, path: str | os.PathLike[str], scale: float = 1.0) -> int:
        """Load an adapter (LoraAdapterError if it does not fit the model); returns its id."""
        value = check_scale(scale)
        with self._lock:
            if len(self._adapters) >= MAX_ADAPTERS:
                raise LoraAdapterError(f"at most {MAX_ADAPTERS} LoRA adapters per model")
        adapter = LoraAdapter(self._model, path)
        return self.register(adapter, value, applied=False)

    def register(self, adapter: LoraAdapter, scale: float, applied: bool) -> int:
        """Take over an adapter loaded elsewhere (`Llama(lora_path=...)`); `applied`: the context has it."""
        with self._lock:
            self._adapters.append(adapter)
            self._paths.append(str(adapter.path))
            self._defaults.append(scale)
            self.applied = (*self.applied, scale if applied else 0.0)
            return len(self._adapters) - 1

    def describe(self) -> list[dict[str, Any]]:
        """[{id, path, scale}] with the default scales (llama-server's GET /lora-adapters)."""
        with self._lock:
            return [{"id": i, "path": p, "scale": s} for i, (p, s) in enumerate(zip(self._paths, self._defaults))]

    def set_defaults(self, scales: Mapping[int, float], reset_others: bool = False) -> None:
        """Change default scales (`reset_others`: adapters not named get 0, as llama-server's POST does)."""
        checked = self._checked(scales)
        with self._lock:
            if reset_others:
                self._defaults = [0.0] * len(self._defaults)
            for index, value in checked.items():
                self._defaults[index] = value

    def resolve(self, overrides: Mapping[int, float] | Iterable[tuple[int, float]] | None = None) -> LoraConfig:
        """The configuration of one generation: the defaults, with `overrides` {id: scale} applied."""
        checked = self._checked(dict(overrides) if overrides is not None else {})
        with self._lock:
            config = list(self._defaults)
        for index, value in checked.items():
            config[index] = value
        return tuple(config)

    def _checked(self, scales: Mapping[int, float]) -> dict[int, float]:
        n = len(self._adapters)
        result = {}
        for index, scale in scales.items():
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
                raise ValueError(
                    f"LoRA adapter id {index!r} does not exist (ids 0..{n - 1})" if n else "no LoRA adapters are loaded"
                )
            result[index] = check_scale(scale, f"scale of adapter {index}")
        return result

    def apply(self, config: LoraConfig) -> bool:
        """Switch the context to `config`; True if it changed (then cached KV of other configurations is stale)."""
        if config == self.applied:
            return False
        chosen = [(a, s) for a, s in zip(self._adapters, config) if s != 0.0]
        adapters = ffi.new("struct llama_adapter_lora *[]", [a.ptr for a, _ in chosen] or [ffi.NULL])
        scales = ffi.new("float[]", [s for _, s in chosen] or [0.0])
        with capture_log() as log:
            rc = int(get_lib().llama_set_adapters_lora(self._ctx.ptr, adapters, len(chosen), scales))
        if rc != 0:
            raise LoraAdapterError(f"llama_set_adapters_lora failed ({rc}){log.reason()}")
        self.applied = config
        return True


class LoraMethods:
    """`Llama`'s LoRA hot-swap methods (a mixin of the facade; the adapters live on its engine)."""

    if TYPE_CHECKING:
        _model: Model
        _engine: Engine | None
        _turns: Turns

        def _engine_or_raise(self) -> Engine: ...

    def _lora_adapters(self) -> LoraAdapters:
        engine = self._engine_or_raise()
        if engine.loras is None:
            engine.loras = LoraAdapters(self._model, engine.ctx)
        loras: LoraAdapters = engine.loras
        return loras

    def add_lora(self, path: str | os.PathLike[str], scale: float = 1.0) -> int:
        """Load a LoRA adapter for hot swapping and return its id (0, 1, ...). `scale` is its default scale
        (0: loaded but not applied); a generation may override scales by id (the server's per-request `lora`).
        With several sequences (`n_parallel`), generations with different scales take turns."""
        with self._turns.using():
            return self._lora_adapters().add(path, scale)

    def lora_adapters(self) -> list[dict[str, Any]]:
        """The loaded adapters: [{"id", "path", "scale"}] with their default scales."""
        engine = self._engine
        return engine.loras.describe() if engine is not None and engine.loras is not None else []

    def set_lora_scales(self, scales: Mapping[int, float], reset_others: bool = False) -> None:
        """Change the default scales by adapter id (`reset_others`: adapters not named get 0); generations
        already running keep the scales they started with."""
        self._lora_adapters().set_defaults(scales, reset_others)
