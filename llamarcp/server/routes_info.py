"""Routes about the server itself: `/health` (with slots in use), `/v1/models`, and the key-gated API docs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from llamarcp.multimodal import input_modalities
from llamarcp.server.pool import ModelEntry, ModelPool

__all__ = ["add_info_routes"]


def add_info_routes(
    app: FastAPI,
    pool: ModelPool,
    created: int,
    has_key: Callable[[Request], bool],
    require_key: Callable[..., Any],
    keyed: bool,
) -> None:
    guarded: list[Any] = [Depends(require_key)]

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        """Liveness. Public; with --api-key only `{"status": "ok"}` unless the key is sent. `slots`: the default
        model's generation slots in use / total, and the sequences its batching scheduler runs and queues."""
        if not has_key(request):
            return {"status": "ok"}
        default = pool.default
        return {
            "status": "ok",
            "model": default.model_id,
            "queue": default.runner.snapshot(),
            "slots": default.sequences(),
            **pool.snapshot(),
        }

    if keyed:

        @app.get("/openapi.json", include_in_schema=False, dependencies=guarded)
        async def openapi(request: Request) -> JSONResponse:
            schema = app.openapi()
            root = str(request.scope.get("root_path", "")).rstrip("/")
            if root and not any(s.get("url") == root for s in schema.get("servers", [])):  # as FastAPI's own
                schema = {**schema, "servers": [{"url": root}, *schema.get("servers", [])]}
            return JSONResponse(schema)

        @app.get("/docs", include_in_schema=False, dependencies=guarded)
        async def docs(request: Request) -> HTMLResponse:
            root = str(request.scope.get("root_path", "")).rstrip("/")
            return get_swagger_ui_html(openapi_url=root + "/openapi.json", title="llamarcp")

        @app.get("/redoc", include_in_schema=False, dependencies=guarded)
        async def redoc(request: Request) -> HTMLResponse:
            root = str(request.scope.get("root_path", "")).rstrip("/")
            return get_redoc_html(openapi_url=root + "/openapi.json", title="llamarcp")

    def model_card(entry: ModelEntry) -> dict[str, Any]:
        card = {"id": entry.model_id, "object": "model", "created": created, "owned_by": "llamarcp"}
        return {**card, "input_modalities": input_modalities(entry.config.mmproj)}

    @app.get("/v1/models", dependencies=guarded)
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(e) for e in pool.entries]}

    @app.get("/v1/models/{model_id:path}", dependencies=guarded)
    async def get_model(model_id: str) -> dict[str, Any]:
        return model_card(pool.resolve(model_id))
