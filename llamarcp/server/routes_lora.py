"""llama-server's LoRA routes: `GET /lora-adapters` (id, path, scale of each adapter the default model loaded
with `--lora` / `--lora-scaled`) and `POST /lora-adapters` (`[{"id", "scale"}]` sets the default scales;
adapters not listed get 0, as llama-server does). A request's own `lora: [{"id", "scale"}]` overrides the
defaults for that request only (llamarcp.lora: requests with different adapters take turns)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query

from llamarcp.lora import MAX_ADAPTERS, MAX_LORA_SCALE
from llamarcp.server.dispatch import Dispatcher
from llamarcp.server.errors import ApiError

__all__ = ["add_lora_routes", "lora_overrides"]


def lora_overrides(items: Any, n_adapters: int | None, param: str = "lora") -> tuple[tuple[int, float], ...]:
    """`[{"id": int, "scale": float}, ...]` checked (ids against `n_adapters` when known), or a 400 naming it."""
    if not isinstance(items, list) or len(items) > MAX_ADAPTERS:
        raise ApiError(400, f"{param} must be a list of at most {MAX_ADAPTERS} {{id, scale}} objects", param=param)
    result: dict[int, float] = {}
    for i, item in enumerate(items):
        where = f"{param}[{i}]"
        if not isinstance(item, dict) or set(item) - {"id", "scale"} or "id" not in item:
            raise ApiError(400, f"{where} must be an object {{id, scale}}", param=where)
        index, scale = item["id"], item.get("scale", 1.0)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ApiError(400, f"{where}.id must be an adapter id", param=f"{where}.id")
        if n_adapters is not None and index >= n_adapters:
            raise ApiError(
                400, f"{where}.id: adapter {index} does not exist ({n_adapters} loaded)", param=f"{where}.id"
            )
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not abs(scale) <= MAX_LORA_SCALE:
            raise ApiError(400, f"{where}.scale must be a number within +-{MAX_LORA_SCALE:g}", param=f"{where}.scale")
        result[index] = float(scale)
    return tuple(result.items())


def add_lora_routes(app: FastAPI, dispatcher: Dispatcher, require_key: Callable[..., Any]) -> None:
    pool = dispatcher.pool
    guarded: list[Any] = [Depends(require_key)]

    @app.get("/lora-adapters", dependencies=guarded)
    async def get_adapters(model: str | None = Query(None)) -> Any:
        entry = pool.resolve(model)
        return await dispatcher.on_model(entry, lambda llama: llama.lora_adapters())

    @app.post("/lora-adapters", dependencies=guarded)
    async def set_adapters(body: Annotated[Any, Body()], model: str | None = Query(None)) -> Any:
        entry = pool.resolve(model)

        def run(llama: Any) -> Any:
            n = len(llama.lora_adapters())
            scales = dict(lora_overrides(body, n, param="body"))
            if n:
                llama.set_lora_scales(scales, reset_others=True)
            return llama.lora_adapters()

        return await dispatcher.on_model(entry, run)
