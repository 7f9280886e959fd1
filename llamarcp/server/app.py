"""The OpenAI-compatible HTTP API: FastAPI routes, OpenAI-shaped errors, SSE streaming, API key, bounded queue."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llamarcp.chat import create_chat_completion
from llamarcp.errors import (
    ChatMessageError,
    ChatTemplateError,
    ChatTemplateSecurityError,
    GrammarError,
    LlamaError,
    PromptTooLongError,
    TokenizeError,
)
from llamarcp.server.runner import ModelRunner, ServerOverloaded
from llamarcp.server.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

__all__ = ["ServerSettings", "create_app"]

log = logging.getLogger("llamarcp.server")

#: llama.h's LLAMA_POOLING_TYPE_MEAN.
POOLING_MEAN = 1


@dataclass
class ServerSettings:
    """Everything `python -m llamarcp.server` can set."""

    model: str | None = None
    model_alias: str | None = None
    api_key: str | None = None
    n_ctx: int = 2048
    n_batch: int = 512
    n_threads: int | None = None
    n_gpu_layers: int = 0
    #: "host:port,..." of ggml-rpc-server workers for the served model (the embeddings model stays local).
    rpc_servers: str | None = None
    seed: int | None = None
    chat_format: str | None = None
    #: Jinja chat template source used instead of the model's own (like llama-server's --chat-template-file).
    chat_template: str | None = None
    max_queue: int = 16
    embeddings: bool = True
    max_body_bytes: int = 8 * 1024 * 1024
    verbose: bool = False


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def api_error_from(exc: BaseException) -> ApiError:
    """The one place library exceptions become HTTP errors."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ServerOverloaded):
        return ApiError(
            503,
            f"server is busy: {exc}; retry later",
            "server_error",
            code="server_overloaded",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, PromptTooLongError):
        return ApiError(400, str(exc), code="context_length_exceeded")
    if isinstance(exc, ChatTemplateSecurityError):
        return ApiError(
            500,
            f"the model's chat template is unsafe and was refused: {exc}",
            "server_error",
            code="unsafe_chat_template",
        )
    if isinstance(exc, (ChatTemplateError, ChatMessageError, GrammarError, TokenizeError)):
        return ApiError(400, str(exc))
    if isinstance(exc, (ValueError, TypeError)):
        return ApiError(400, str(exc))
    if isinstance(exc, LlamaError):
        return ApiError(500, f"{type(exc).__name__}: {exc}", "server_error")
    return ApiError(500, f"internal error ({type(exc).__name__})", "server_error")


class ServerState:
    """The model(s) and the queue; created by the app's lifespan."""

    def __init__(self, settings: ServerSettings, llama: Any = None) -> None:
        self.settings = settings
        self.runner = ModelRunner(settings.max_queue)
        self.llama = llama
        self._owns_llama = llama is None
        self.embedder: Any = None
        self._n_ctx: int | None = None
        self.created = int(time.time())
        path = settings.model or (getattr(llama, "model_path", None) if llama is not None else None)
        self.model_path = str(path) if path else None
        self.model_id = settings.model_alias or (Path(self.model_path).name if self.model_path else "default")

    def _llama_kwargs(self) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {
            "n_ctx": s.n_ctx,
            "n_batch": s.n_batch,
            "n_threads": s.n_threads,
            "n_gpu_layers": s.n_gpu_layers,
            "chat_format": s.chat_format,
            "verbose": s.verbose,
        }
        if s.seed is not None:
            kwargs["seed"] = s.seed
        return kwargs

    def load(self) -> None:
        if self.llama is None:
            from llamarcp import Llama

            # A worker serves one open model per process, so only the served model gets the RPC workers.
            self.llama = Llama(self.settings.model, rpc_servers=self.settings.rpc_servers, **self._llama_kwargs())
            self.model_path = self.llama.model_path
            if not self.settings.model_alias:
                self.model_id = Path(self.model_path).name
        self.n_ctx()
        if self.settings.chat_template is not None:  # compile (and reject a broken template) before serving
            from llamarcp.chat import chat_formatter

            chat_formatter(self.llama, chat_template=self.settings.chat_template)

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

                kwargs = self._llama_kwargs()
                kwargs.pop("chat_format")
                embedder = Llama(self.model_path, embedding=True, **kwargs)
                probe = embedder.embed("pooling probe")
                if probe and isinstance(probe[0], list):  # one vector per token: the model has no pooling
                    embedder.close()
                    embedder = Llama(self.model_path, embedding=True, pooling_type=POOLING_MEAN, **kwargs)
                self.embedder = embedder
        return self.embedder

    def close(self) -> None:
        self.runner.shutdown()
        if self.embedder is not None and self.embedder is not self.llama:
            self.embedder.close()
        if self._owns_llama and self.llama is not None:
            self.llama.close()

    def n_ctx(self) -> int:
        # Read once on the model thread at load; handlers on the event loop never touch the context.
        if self._n_ctx is None:
            self._n_ctx = int(self.llama.n_ctx)
        return self._n_ctx

    def check_model(self, requested: str | None) -> None:
        if requested is None:
            return
        known = {self.model_id}
        if self.model_path:
            known |= {self.model_path, Path(self.model_path).name, Path(self.model_path).stem}
        if requested not in known:
            raise ApiError(
                404,
                f"The model '{requested}' does not exist; this server serves '{self.model_id}'",
                "invalid_request_error",
                param="model",
                code="model_not_found",
            )

    def check_max_tokens(self, value: int | None, param: str = "max_tokens") -> None:
        if value is None:
            return
        n_ctx = self.n_ctx()
        if value < 1 or value > n_ctx:
            raise ApiError(
                400,
                f"{param} must be between 1 and the context size {n_ctx}, got {value}",
                param=param,
                code="invalid_value",
            )


def _sampling(body: CompletionRequest | ChatCompletionRequest) -> dict[str, Any]:
    bias = None
    if body.logit_bias:
        try:
            bias = {int(k): v for k, v in body.logit_bias.items()}
        except ValueError as exc:
            raise ApiError(400, "logit_bias keys must be token ids", param="logit_bias") from exc
    return {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "min_p": body.min_p,
        "typical_p": body.typical_p,
        "repeat_penalty": body.repeat_penalty,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "seed": body.seed,
        "stop": body.stop,
        "logit_bias": bias,
        "grammar": body.grammar,
    }


def create_app(settings: ServerSettings, llama: Any = None) -> FastAPI:
    """The FastAPI app. Pass `llama` to serve an already loaded `Llama` (the caller keeps ownership)."""
    state = ServerState(settings, llama)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await state.runner.call(state.load)
        log.info(
            "serving %s as %r (n_ctx=%d, queue=%d)", state.model_path, state.model_id, state.n_ctx(), settings.max_queue
        )
        try:
            yield
        finally:
            state.close()

    app = FastAPI(title="llamarcp", version=_version(), lifespan=lifespan)
    app.state.llamarcp = state
    app.add_middleware(_BodyLimit, max_bytes=settings.max_body_bytes)

    # -- errors in OpenAI's shape -----------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return ApiError(400, f"malformed JSON body: {first.get('msg', '')}", code="invalid_json").response()
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        return ApiError(400, f"{where}: {first.get('msg', 'invalid value')}", param=where or None).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), kind).response()

    async def _library_error(_request: Request, exc: Exception) -> JSONResponse:
        error = api_error_from(exc)
        if error.status >= 500:
            log.error("request failed: %s", error.message, exc_info=exc)
        return error.response()

    # Expected failures get their own handlers; a bare `Exception` handler would also be re-raised by Starlette.
    for kind in (LlamaError, ServerOverloaded, ValueError, TypeError):
        app.add_exception_handler(kind, _library_error)
    app.add_exception_handler(Exception, _library_error)

    async def require_key(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise ApiError(
                401, "invalid or missing API key (send 'Authorization: Bearer <key>')", code="invalid_api_key"
            )

    # -- running requests on the model ------------------------------------------------------------------------

    async def run_blocking(request: Request, job: Callable[[Callable[..., bool]], Any]) -> Any:
        """Run `job(should_stop)` on the model thread while holding the slot; stop early if the client leaves."""
        runner = state.runner
        runner.admit()
        await runner.acquire()
        gone = False

        def should_stop(*_args: Any) -> bool:
            return gone

        try:
            task = asyncio.ensure_future(runner.call(job, should_stop))
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.25)
                if done:
                    break
                if not gone and await request.is_disconnected():
                    gone = True
                    runner.stats.cancelled += 1
            result = task.result()
            usage = result.get("usage") if isinstance(result, dict) else None
            if isinstance(usage, dict):
                runner.stats.completion_tokens += int(usage.get("completion_tokens", 0))
            if not gone:
                runner.stats.served += 1
            return result
        except BaseException:
            runner.stats.failed += 1
            raise
        finally:
            runner.release()

    async def run_stream(make: Callable[[], Iterator[dict[str, Any]]]) -> EventSourceResponse:
        runner = state.runner
        runner.admit()
        await runner.acquire()
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
                runner.release()
            raise

        async def events() -> AsyncIterator[dict[str, str]]:
            finished = False
            try:
                if first is not None:
                    runner.stats.streamed_chunks += 1
                    yield {"data": json.dumps(first, ensure_ascii=False)}
                async for chunk in chunks:
                    runner.stats.streamed_chunks += 1
                    yield {"data": json.dumps(chunk, ensure_ascii=False)}
                finished = True
                runner.stats.served += 1
                yield {"data": "[DONE]"}
            except (asyncio.CancelledError, GeneratorExit):
                if not finished:
                    runner.stats.cancelled += 1
                raise
            except Exception as exc:  # the stream has started: report in-band, like OpenAI does
                runner.stats.failed += 1
                error = api_error_from(exc)
                log.warning("stream failed: %s", error.message)
                yield {
                    "data": json.dumps({"error": {"message": error.message, "type": error.type, "code": error.code}})
                }
            finally:
                try:
                    await chunks.aclose()
                finally:
                    runner.release()

        return EventSourceResponse(events(), ping=15, send_timeout=30)

    # -- routes ---------------------------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": state.model_id, "queue": state.runner.snapshot()}

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(state)]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(require_key)])
    async def get_model(model_id: str) -> dict[str, Any]:
        state.check_model(model_id)
        return _model_card(state)

    @app.post("/v1/completions", dependencies=[Depends(require_key)])
    async def completions(body: CompletionRequest, request: Request) -> Any:
        state.check_model(body.model)
        state.check_max_tokens(body.max_tokens)
        prompt: Any = body.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise ApiError(400, "only one prompt per request is supported", param="prompt")
            prompt = prompt[0]
        kwargs = dict(
            _sampling(body),
            max_tokens=body.max_tokens,
            logprobs=body.logprobs,
            echo=body.echo,
            suffix=body.suffix,
            model=state.model_id,
        )
        llama = state.llama
        if body.stream:
            return await run_stream(lambda: llama.create_completion(prompt, stream=True, **kwargs))
        result = await run_blocking(
            request, lambda stop: llama.create_completion(prompt, stopping_criteria=stop, **kwargs)
        )
        return JSONResponse(result)

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)])
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        state.check_model(body.model)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        state.check_max_tokens(max_tokens, "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
        response_format = (
            body.response_format.model_dump(by_alias=True, exclude_none=True) if body.response_format else None
        )
        kwargs = dict(
            _sampling(body),
            max_tokens=max_tokens,
            tools=body.tools,
            tool_choice=body.tool_choice,
            response_format=response_format,
            logprobs=body.logprobs,
            top_logprobs=body.top_logprobs,
            template_kwargs=body.chat_template_kwargs,
            reasoning_format=body.reasoning_format,
            chat_template=settings.chat_template,
            model=state.model_id,
        )
        llama = state.llama
        if body.stream:
            return await run_stream(lambda: create_chat_completion(llama, body.messages, stream=True, **kwargs))
        result = await run_blocking(
            request, lambda stop: create_chat_completion(llama, body.messages, stopping_criteria=stop, **kwargs)
        )
        return JSONResponse(result)

    @app.post("/v1/embeddings", dependencies=[Depends(require_key)])
    async def embeddings(body: EmbeddingRequest, request: Request) -> Any:
        state.check_model(body.model)
        if not settings.embeddings:
            raise ApiError(400, "embeddings are disabled on this server (started with --no-embeddings)")
        if body.dimensions is not None:
            raise ApiError(400, "dimensions is not supported (the model's size is fixed)", param="dimensions")
        texts = body.input

        def job(_stop: Callable[..., bool]) -> Any:
            embedder = state.embedding_model()
            inputs: Any = texts
            if isinstance(texts, list) and texts and not isinstance(texts[0], str):
                rows = texts if isinstance(texts[0], list) else [texts]
                inputs = [bytes(embedder.detokenize(row)).decode("utf-8", errors="replace") for row in rows]
            if inputs == [] or inputs == "":
                raise ApiError(400, "input must not be empty", param="input")
            result = embedder.create_embedding(inputs, model=state.model_id)
            if body.encoding_format == "base64":  # what the openai client asks for by default
                for row in result["data"]:
                    vector = row["embedding"]
                    row["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
            return result

        return JSONResponse(await run_blocking(request, job))

    return app


class _BodyLimit:
    """Refuse bodies declared larger than `max_bytes` (413) before reading them (plain ASGI, so request
    disconnect detection downstream keeps working, which BaseHTTPMiddleware would break)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                    response = ApiError(413, f"request body is larger than {self.max_bytes} bytes").response()
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _model_card(state: ServerState) -> dict[str, Any]:
    return {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "llamarcp"}


def _version() -> str:
    from llamarcp import __version__

    return __version__
