"""llama-cpp-python's `/extras` routes: tokenize, count tokens, detokenize (vocab work that needs the model
loaded but not a generation slot)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI

from llamarcp.server.dispatch import Dispatcher
from llamarcp.server.params import refuse_unknown_fields
from llamarcp.server.schemas import DetokenizeRequest, TokenizeRequest

__all__ = ["add_extras_routes"]


def add_extras_routes(app: FastAPI, dispatcher: Dispatcher, require_key: Callable[..., Any]) -> None:
    pool = dispatcher.pool
    guarded: list[Any] = [Depends(require_key)]

    @app.post("/extras/tokenize", dependencies=guarded)
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        refuse_unknown_fields(body)
        entry = pool.resolve(body.model)
        tokens = await dispatcher.on_model(
            entry, lambda llama: llama.tokenize(body.input.encode("utf-8"), special=True)
        )
        return {"tokens": tokens}

    @app.post("/extras/tokenize/count", dependencies=guarded)
    async def tokenize_count(body: TokenizeRequest) -> dict[str, Any]:
        refuse_unknown_fields(body)
        entry = pool.resolve(body.model)
        tokens = await dispatcher.on_model(
            entry, lambda llama: llama.tokenize(body.input.encode("utf-8"), special=True)
        )
        return {"count": len(tokens)}

    @app.post("/extras/detokenize", dependencies=guarded)
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        refuse_unknown_fields(body)
        entry = pool.resolve(body.model)

        def run(llama: Any) -> str:
            return bytes(llama.detokenize(body.tokens)).decode("utf-8", errors="replace")

        return {"text": await dispatcher.on_model(entry, run)}
