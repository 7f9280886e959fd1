"""The OpenAI-compatible HTTP API: `create_app` assembles the FastAPI app from single-job modules.

`errors` (OpenAI-shaped errors), `guards` (ASGI body and last-resort guards), `auth` (API key), `dispatch`
(admission, slots, disconnects, streaming), `params` (request fields -> Llama keywords), and the routes:
`routes_generation`, `routes_embeddings` (with `embedding_batch`), `routes_extras`, `routes_info`. Which model
serves a request is `pool`'s job, how it runs there is `runner`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from llamarcp.errors import ModelNotFoundError
from llamarcp.server.auth import key_checks
from llamarcp.server.dispatch import Dispatcher
from llamarcp.server.errors import ApiError, install_error_handlers
from llamarcp.server.guards import MAX_JSON_DEPTH, CatchAll, RequestGuard
from llamarcp.server.metrics import add_metrics_route
from llamarcp.server.pool import ModelEntry, ModelPool
from llamarcp.server.routes_anthropic import add_anthropic_routes
from llamarcp.server.routes_embeddings import add_embedding_routes
from llamarcp.server.routes_extras import add_extras_routes
from llamarcp.server.routes_generation import add_generation_routes
from llamarcp.server.routes_info import add_info_routes
from llamarcp.server.routes_llama import add_llama_routes
from llamarcp.server.routes_lora import add_lora_routes
from llamarcp.server.routes_rerank import add_rerank_routes
from llamarcp.server.routes_responses import add_responses_routes
from llamarcp.server.settings import ModelConfig, ServerSettings
from llamarcp.server.slots import add_slot_routes

__all__ = ["ApiError", "ModelConfig", "ServerSettings", "ServerState", "create_app"]

log = logging.getLogger("llamarcp.server")


class ServerState:
    """The served models (a `ModelPool`) and the settings; created by `create_app`.

    `load()`, `llama`, `embedding_model()` and `close()` act on the default model, synchronously, for callers
    that drive a model without the HTTP layer (tests, tools).
    """

    def __init__(self, settings: ServerSettings, llama: Any = None) -> None:
        settings.validate()
        self.settings = settings
        configs = settings.model_configs()
        entries = [ModelEntry(c, settings.max_queue, llama if i == 0 else None) for i, c in enumerate(configs)]
        self.pool = ModelPool(entries, settings.max_loaded_models, settings.strict_model_names)
        self.created = int(time.time())

    @property
    def default(self) -> ModelEntry:
        return self.pool.default

    @property
    def llama(self) -> Any:
        return self.default.llama

    @property
    def model_id(self) -> str:
        return self.default.model_id

    def load(self) -> None:
        self.default.load()

    def embedding_model(self) -> Any:
        return self.default.embedding_model()

    def check_files(self) -> None:
        """Fail at startup, not at the first request, when a configured model file is missing."""
        for entry in self.pool.entries[1:]:
            if entry.model_path and not Path(entry.model_path).expanduser().is_file():
                raise ModelNotFoundError(f"model file not found: {entry.model_path} (model {entry.model_id!r})")

    def close(self) -> None:
        self.pool.close()


def create_app(
    settings: Any = None, llama: Any = None, *, server_settings: Any = None, model_settings: Any = None
) -> FastAPI:
    """The FastAPI app. Pass `llama` to serve an already loaded `Llama` as the default model (the caller keeps
    ownership; its `n_parallel` sets how many requests run at once).

    `settings` is llamarcp's `ServerSettings`, or llama-cpp-python's call is taken as it is: `create_app(settings=
    Settings(...))` or `create_app(server_settings=ServerSettings(...), model_settings=[ModelSettings(...)])`
    with the classes of `llama_cpp.server.settings` (llamarcp.server.compat_settings)."""
    if not isinstance(settings, ServerSettings):
        from llamarcp.server.compat_settings import to_server_settings

        if settings is None and server_settings is None and model_settings is None:
            raise TypeError("create_app needs settings (a ServerSettings) or llama-cpp-python's model_settings")
        settings = to_server_settings(settings, server_settings, model_settings)
    elif server_settings is not None or model_settings is not None:
        raise TypeError("create_app: server_settings/model_settings are llama-cpp-python's; not with settings")
    state = ServerState(settings, llama)
    pool = state.pool

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.check_files()
        default = pool.default
        await default.runner.call(default.load)
        for entry in pool.entries:
            log.info("serving %s as %r", entry.model_path or "the default model", entry.model_id)
        log.info(
            "default %r loaded (n_ctx=%d per sequence, %d parallel, queue=%d per model, at most %d loaded)",
            default.model_id,
            default.n_ctx(),
            default.runner.n_parallel,
            settings.max_queue,
            pool.max_loaded,
        )
        try:
            yield
        finally:
            state.close()

    keyed = settings.api_key is not None
    app = FastAPI(
        title="llamarcp",
        version=_version(),
        lifespan=lifespan,
        # With an API key the docs need it too (routes_info); without one they are FastAPI's usual ones.
        docs_url=None if keyed else "/docs",
        redoc_url=None if keyed else "/redoc",
        openapi_url=None if keyed else "/openapi.json",
    )
    app.state.llamarcp = state
    app.add_middleware(
        RequestGuard,
        max_bytes=settings.max_body_bytes,
        timeout=settings.body_timeout,
        max_depth=MAX_JSON_DEPTH,
    )
    app.add_middleware(CatchAll)  # added last = outermost of ours: sees whatever the handlers did not answer
    install_error_handlers(app)

    has_key, require_key = key_checks(settings.api_key)
    dispatcher = Dispatcher(settings, pool)
    add_info_routes(app, pool, state.created, has_key, require_key, keyed)
    add_generation_routes(app, dispatcher, require_key)
    add_embedding_routes(app, dispatcher, require_key)
    add_extras_routes(app, dispatcher, require_key)
    add_metrics_route(app, pool, settings.metrics, require_key)
    add_llama_routes(app, dispatcher, settings, require_key)
    add_anthropic_routes(app, dispatcher, require_key)
    add_responses_routes(app, dispatcher, require_key)
    add_slot_routes(app, dispatcher, settings, require_key)
    add_rerank_routes(app, dispatcher, require_key)
    add_lora_routes(app, dispatcher, require_key)
    return app


def _version() -> str:
    from llamarcp import __version__

    return __version__
