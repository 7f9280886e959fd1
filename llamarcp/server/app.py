"""The OpenAI-compatible HTTP API: FastAPI routes, OpenAI-shaped errors, SSE streaming, API key, request guards.

Which model serves a request is `pool`'s job, how it runs there is `runner`'s; this module turns HTTP into
those calls and every failure into a 4xx/5xx JSON error in OpenAI's shape (never a dropped connection).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import math
import re
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from itertools import accumulate
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llamarcp.chat import create_chat_completion
from llamarcp.errors import (
    ChatMessageError,
    ChatTemplateError,
    ChatTemplateSecurityError,
    GrammarError,
    LlamaError,
    ModelNotFoundError,
    PromptTooLongError,
    TokenizeError,
)
from llamarcp.server.pool import ModelEntry, ModelPool, UnknownModelError
from llamarcp.server.runner import ServerOverloaded
from llamarcp.server.schemas import (
    IGNORED_FIELDS,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
)
from llamarcp.server.settings import ModelConfig, ServerSettings

__all__ = ["ApiError", "ModelConfig", "ServerSettings", "ServerState", "create_app"]

log = logging.getLogger("llamarcp.server")

#: Deepest JSON nesting a request body may have (a chat message or JSON schema needs far less; deeper bodies
#: would hit Python's recursion limit in validation or template rendering).
MAX_JSON_DEPTH = 100
#: Embedding inputs handled per model call: the client-left check runs between groups.
EMBED_GROUP = 8


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


class _ClientGone(Exception):
    """The client disconnected; the job stopped early and nobody reads its answer."""


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
    if isinstance(exc, UnknownModelError):
        return ApiError(404, str(exc), param="model", code="model_not_found")
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
    if isinstance(exc, RecursionError):
        return ApiError(400, "the request is nested too deeply to process", code="too_deep")
    if isinstance(exc, OverflowError):
        return ApiError(400, f"a number in the request is out of range: {exc}", code="invalid_value")
    if isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, LlamaError):
        return ApiError(400, str(exc))
    if isinstance(exc, ModelNotFoundError):
        return ApiError(500, f"the configured model file is missing: {exc}", "server_error", code="model_missing")
    if isinstance(exc, LlamaError):
        if isinstance(exc, ValueError):  # e.g. a sampling parameter llamarcp refuses
            return ApiError(400, str(exc))
        return ApiError(500, f"{type(exc).__name__}: {exc}", "server_error")
    return ApiError(500, f"internal error ({type(exc).__name__})", "server_error")


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


def _refuse_unknown_fields(body: BaseModel) -> None:
    """A field this server does not implement is a 400 naming it, never silently dropped."""
    for name in body.model_extra or {}:
        if name not in IGNORED_FIELDS:
            raise ApiError(
                400,
                f"'{name}' is not supported by this server",
                param=name,
                code="unsupported_parameter",
            )


def _min_tokens_processor(n: int, banned: list[int]) -> Callable[[Any, Any], Any]:
    """Forbid end-of-generation tokens until `n` tokens were generated (llama-cpp-python's min_tokens)."""
    start: list[int] = []

    def process(input_ids: Any, scores: Any) -> Any:
        if not start:
            start.append(len(input_ids))
        if len(input_ids) - start[0] < n:
            scores[banned] = -math.inf
        return scores

    return process


def create_app(settings: ServerSettings, llama: Any = None) -> FastAPI:
    """The FastAPI app. Pass `llama` to serve an already loaded `Llama` as the default model (the caller keeps
    ownership)."""
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
            "default %r loaded (n_ctx=%d, queue=%d per model, at most %d loaded)",
            default.model_id,
            default.n_ctx(),
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
        # With an API key the docs need it too (routes below); without one they are FastAPI's usual ones.
        docs_url=None if keyed else "/docs",
        redoc_url=None if keyed else "/redoc",
        openapi_url=None if keyed else "/openapi.json",
    )
    app.state.llamarcp = state
    app.add_middleware(
        _RequestGuard,
        max_bytes=settings.max_body_bytes,
        timeout=settings.body_timeout,
        max_depth=MAX_JSON_DEPTH,
    )
    app.add_middleware(_CatchAll)  # added last = outermost of ours: sees whatever the handlers did not answer

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

    # Expected failures get their handlers here; anything else reaches _CatchAll (a handler for `Exception`
    # would go to Starlette's ServerErrorMiddleware, which re-raises and so drops the keep-alive connection).
    for kind in (LlamaError, ValueError, TypeError, RecursionError, OverflowError):
        app.add_exception_handler(kind, _library_error)

    def has_key(request: Request) -> bool:
        if settings.api_key is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), settings.api_key.encode())

    async def require_key(request: Request) -> None:
        if not has_key(request):
            raise ApiError(
                401, "invalid or missing API key (send 'Authorization: Bearer <key>')", code="invalid_api_key"
            )

    # -- running requests on a model --------------------------------------------------------------------------

    async def enter(entry: ModelEntry) -> None:
        """Admit a request for `entry` (503 when its queue is full), load the model, then wait for its slot."""
        runner = entry.runner
        runner.admit()
        try:
            await pool.enter(entry)
        except BaseException:
            runner.leave()
            raise
        try:
            await runner.acquire()  # gives the queue place back itself when cancelled
        except BaseException:
            pool.leave(entry)
            raise

    def leave(entry: ModelEntry) -> None:
        entry.runner.release()
        pool.leave(entry)

    async def run_blocking(request: Request, entry: ModelEntry, job: Callable[[Callable[..., bool]], Any]) -> Any:
        """Run `job(should_stop)` on the model's thread while holding its slot; stop early if the client leaves.

        When the client leaves, `should_stop()` turns true (generations check it per token, embeddings between
        groups); if the job still runs a poll later, `Llama.abort()` interrupts the decode in progress. An abort
        that arrives after the job ended is withdrawn before the slot is released, so it never hits the next job.
        """
        runner = entry.runner
        await enter(entry)
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
                        _withdraw_abort(target)

        def abort_running() -> None:
            with guard:
                if finished:
                    return
                for target in {id(x): x for x in (entry.llama, entry.embedder) if x is not None}.values():
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
                    # should_stop() ends a generation at its next token (keeping its partial answer for the
                    # stats); a job still running a poll later is inside a long decode: abort that.
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
                    raise _ClientGone() from None
                raise
            usage = result.get("usage") if isinstance(result, dict) else None
            if isinstance(usage, dict):
                runner.stats.completion_tokens += int(usage.get("completion_tokens", 0))
            if gone:
                raise _ClientGone()
            runner.stats.served += 1
            return result
        except _ClientGone:
            raise
        except BaseException:
            runner.stats.failed += 1
            raise
        finally:
            leave(entry)

    async def run_stream(entry: ModelEntry, make: Callable[[], Iterator[dict[str, Any]]]) -> EventSourceResponse:
        runner = entry.runner
        await enter(entry)
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
                leave(entry)
            raise

        async def events() -> AsyncIterator[dict[str, str]]:
            finished = False
            client_left = False
            try:
                if first is not None:
                    runner.stats.streamed_chunks += 1
                    yield {"data": json.dumps(first, ensure_ascii=False)}
                async for chunk in chunks:
                    runner.stats.streamed_chunks += 1
                    yield {"data": json.dumps(chunk, ensure_ascii=False)}
                    if settings.interrupt_requests and runner.waiting > 0:
                        log.info("stream interrupted: another request waits for %r", entry.model_id)
                        break
                finished = True
                runner.stats.served += 1
                yield {"data": "[DONE]"}
            except (asyncio.CancelledError, GeneratorExit):
                if not finished:
                    runner.stats.cancelled += 1
                    client_left = True
                raise
            except Exception as exc:  # the stream has started: report in-band, like OpenAI does
                runner.stats.failed += 1
                error = api_error_from(exc)
                log.warning("stream failed: %s", error.message)
                yield {
                    "data": json.dumps({"error": {"message": error.message, "type": error.type, "code": error.code}})
                }
            finally:
                llama = entry.llama
                try:
                    if client_left:  # the producer stops before its next chunk; abort() also ends a long decode
                        llama.abort()
                    await chunks.aclose()  # waits for the producer to end
                finally:
                    if client_left:  # nothing runs any more: an abort that found nothing must not hit the next job
                        _withdraw_abort(llama)
                    leave(entry)

        ping = 10**9 if settings.disable_ping_events else 15
        return EventSourceResponse(events(), ping=ping, send_timeout=30)

    def max_tokens_for(value: int | None, param: str) -> int | None:
        """None = until the context is full; a value above the context stops there too (like llama-cpp-python)."""
        if value is not None and value < 1:
            raise ApiError(400, f"{param} must be at least 1, got {value}", param=param, code="invalid_value")
        cap = settings.n_predict
        if cap is None:
            return value
        return cap if value is None else min(value, cap)

    def sampling(body: CompletionRequest | ChatCompletionRequest, entry: ModelEntry) -> dict[str, Any]:
        """The sampling keywords of a request (on the model thread: token-text logit biases need the model)."""
        bias = None
        if body.logit_bias:
            if body.logit_bias_type == "tokens":  # keys are text; every token of the text gets the bias
                bias = {}
                for text, value in body.logit_bias.items():
                    for token in entry.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True):
                        bias[token] = value
            else:
                try:
                    bias = {int(k): v for k, v in body.logit_bias.items()}
                except ValueError as exc:
                    raise ApiError(
                        400, "logit_bias keys must be token ids (or set logit_bias_type: tokens)", param="logit_bias"
                    ) from exc
        kwargs: dict[str, Any] = {
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
            "mirostat_mode": body.mirostat_mode,
            "mirostat_tau": body.mirostat_tau,
            "mirostat_eta": body.mirostat_eta,
        }
        if body.min_tokens > 0:
            banned = sorted(entry.end_of_generation_tokens())
            kwargs["logits_processor"] = _min_tokens_processor(body.min_tokens, banned)
        return kwargs

    # -- routes ---------------------------------------------------------------------------------------------

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        """Liveness. Public; with --api-key only `{"status": "ok"}` unless the key is sent."""
        if not has_key(request):
            return {"status": "ok"}
        default = pool.default
        return {"status": "ok", "model": default.model_id, "queue": default.runner.snapshot(), **pool.snapshot()}

    if keyed:

        @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_key)])
        async def openapi(request: Request) -> JSONResponse:
            schema = app.openapi()
            root = str(request.scope.get("root_path", "")).rstrip("/")
            if root and not any(s.get("url") == root for s in schema.get("servers", [])):  # as FastAPI's own
                schema = {**schema, "servers": [{"url": root}, *schema.get("servers", [])]}
            return JSONResponse(schema)

        @app.get("/docs", include_in_schema=False, dependencies=[Depends(require_key)])
        async def docs(request: Request) -> HTMLResponse:
            root = str(request.scope.get("root_path", "")).rstrip("/")
            return get_swagger_ui_html(openapi_url=root + "/openapi.json", title="llamarcp")

        @app.get("/redoc", include_in_schema=False, dependencies=[Depends(require_key)])
        async def redoc(request: Request) -> HTMLResponse:
            root = str(request.scope.get("root_path", "")).rstrip("/")
            return get_redoc_html(openapi_url=root + "/openapi.json", title="llamarcp")

    def model_card(entry: ModelEntry) -> dict[str, Any]:
        return {"id": entry.model_id, "object": "model", "created": state.created, "owned_by": "llamarcp"}

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(e) for e in pool.entries]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(require_key)])
    async def get_model(model_id: str) -> dict[str, Any]:
        return model_card(pool.resolve(model_id))

    @app.post("/v1/completions", dependencies=[Depends(require_key)])
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await complete(body, request, body.model)

    # llama-cpp-python's route for GitHub Copilot-style clients: the model aliased "copilot-codex".
    @app.post("/v1/engines/copilot-codex/completions", dependencies=[Depends(require_key)], include_in_schema=False)
    async def copilot_completions(body: CompletionRequest, request: Request) -> Any:
        return await complete(body, request, "copilot-codex")

    async def complete(body: CompletionRequest, request: Request, model: str | None) -> Any:
        _refuse_unknown_fields(body)
        entry = pool.resolve(model)
        max_tokens = max_tokens_for(body.max_tokens, "max_tokens")
        prompt: Any = body.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise ApiError(400, "only one prompt per request is supported", param="prompt")
            prompt = prompt[0]

        def kwargs() -> dict[str, Any]:
            return dict(
                sampling(body, entry),
                max_tokens=max_tokens,
                logprobs=body.logprobs,
                echo=body.echo,
                suffix=body.suffix,
                model=entry.model_id,
            )

        if body.stream:
            return await run_stream(entry, lambda: entry.llama.create_completion(prompt, stream=True, **kwargs()))
        result = await run_blocking(
            request, entry, lambda stop: entry.llama.create_completion(prompt, stopping_criteria=stop, **kwargs())
        )
        return JSONResponse(result)

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)])
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        _refuse_unknown_fields(body)
        entry = pool.resolve(body.model)
        if body.max_completion_tokens is not None:
            max_tokens = max_tokens_for(body.max_completion_tokens, "max_completion_tokens")
        else:
            max_tokens = max_tokens_for(body.max_tokens, "max_tokens")
        response_format = (
            body.response_format.model_dump(by_alias=True, exclude_none=True) if body.response_format else None
        )
        config = entry.config
        template_kwargs = {**(config.chat_template_kwargs or {}), **(body.chat_template_kwargs or {})} or None

        def kwargs() -> dict[str, Any]:
            return dict(
                sampling(body, entry),
                max_tokens=max_tokens,
                tools=body.tools,
                tool_choice=body.tool_choice,
                functions=body.functions,
                function_call=body.function_call,
                response_format=response_format,
                logprobs=body.logprobs,
                top_logprobs=body.top_logprobs,
                template_kwargs=template_kwargs,
                reasoning_format=body.reasoning_format,
                chat_format=config.chat_format,
                chat_template=config.chat_template,
                model=entry.model_id,
            )

        messages = body.messages
        if body.stream:
            return await run_stream(
                entry, lambda: create_chat_completion(entry.llama, messages, stream=True, **kwargs())
            )
        result = await run_blocking(
            request,
            entry,
            lambda stop: create_chat_completion(entry.llama, messages, stopping_criteria=stop, **kwargs()),
        )
        return JSONResponse(result)

    @app.post("/v1/embeddings", dependencies=[Depends(require_key)])
    async def embeddings(body: EmbeddingRequest, request: Request) -> Any:
        _refuse_unknown_fields(body)
        entry = pool.resolve(body.model)
        if not entry.config.embeddings:
            raise ApiError(400, "embeddings are disabled on this server (started with --no-embeddings)")
        if body.dimensions is not None:
            raise ApiError(400, "dimensions is not supported (the model's size is fixed)", param="dimensions")
        texts = body.input
        stats = entry.runner.stats

        def job(stop: Callable[..., bool]) -> Any:
            embedder = entry.embedding_model()
            inputs: Any = texts
            if isinstance(texts, list) and texts and not isinstance(texts[0], str):
                rows = texts if isinstance(texts[0], list) else [texts]
                inputs = [bytes(embedder.detokenize(row)).decode("utf-8", errors="replace") for row in rows]
            if inputs == [] or inputs == "":
                raise ApiError(400, "input must not be empty", param="input")
            if isinstance(inputs, str):
                result = embedder.create_embedding(inputs, model=entry.model_id)
                stats.embedded_inputs += 1
            else:  # in groups, so a client that left stops the work between groups
                data: list[dict[str, Any]] = []
                tokens = 0
                for start in range(0, len(inputs), EMBED_GROUP):
                    if stop():
                        raise _ClientGone()
                    part = embedder.create_embedding(inputs[start : start + EMBED_GROUP], model=entry.model_id)
                    stats.embedded_inputs += len(part["data"])
                    for row in part["data"]:
                        row["index"] = len(data)
                        data.append(row)
                    tokens += part["usage"]["prompt_tokens"]
                result = dict(part, data=data, usage={"prompt_tokens": tokens, "total_tokens": tokens})
            if body.encoding_format == "base64":  # what the openai client asks for by default
                for row in result["data"]:
                    vector = row["embedding"]
                    row["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
            return result

        return JSONResponse(await run_blocking(request, entry, job))

    # -- llama-cpp-python's /extras ---------------------------------------------------------------------------

    async def on_model(entry: ModelEntry, fn: Callable[[Any], Any]) -> Any:
        """Quick vocab work (tokenize/detokenize): needs the model loaded but not its slot, so it does not wait
        behind a generation; runs in a worker thread (the tokenizer is safe beside a running generation)."""
        await pool.enter(entry)
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn, entry.llama)
        finally:
            pool.leave(entry)

    @app.post("/extras/tokenize", dependencies=[Depends(require_key)])
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        _refuse_unknown_fields(body)
        entry = pool.resolve(body.model)
        tokens = await on_model(entry, lambda llama: llama.tokenize(body.input.encode("utf-8"), special=True))
        return {"tokens": tokens}

    @app.post("/extras/tokenize/count", dependencies=[Depends(require_key)])
    async def tokenize_count(body: TokenizeRequest) -> dict[str, Any]:
        _refuse_unknown_fields(body)
        entry = pool.resolve(body.model)
        tokens = await on_model(entry, lambda llama: llama.tokenize(body.input.encode("utf-8"), special=True))
        return {"count": len(tokens)}

    @app.post("/extras/detokenize", dependencies=[Depends(require_key)])
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        _refuse_unknown_fields(body)
        entry = pool.resolve(body.model)

        def run(llama: Any) -> str:
            return bytes(llama.detokenize(body.tokens)).decode("utf-8", errors="replace")

        return {"text": await on_model(entry, run)}

    return app


def _withdraw_abort(llama: Any) -> None:
    """Forget an abort request that found nothing left to stop (else it would stop the next decode)."""
    clear = getattr(llama, "clear_abort", None)  # test stand-ins may lack it
    if clear is not None:
        clear()


# --- request guards (plain ASGI, so request-disconnect detection downstream keeps working) ----------------------

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = [0] * 256
for _b in b"[{":
    _DEPTH_STEP[_b] = 1
for _b in b"]}":
    _DEPTH_STEP[_b] = -1


def json_depth(body: bytes) -> int:
    """Deepest bracket nesting of a JSON text, outside strings (what a recursive parser would descend)."""
    skeleton = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, skeleton)), default=0)


class _RequestGuard:
    """Reads the whole body before the app sees it: at most `max_bytes` (413 for a declared or streamed bigger
    body), within `timeout` seconds (408), and JSON at most `max_depth` deep (400); then replays it."""

    def __init__(self, app: Any, max_bytes: int, timeout: float, max_depth: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_depth = max_depth

    async def _refuse(self, scope: Any, receive: Any, send: Any, error: ApiError) -> None:
        error.headers = {**(error.headers or {}), "Connection": "close"}  # the unread rest of the body is dropped
        await error.response()(scope, receive, send)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(scope, receive, send, self._too_large())
                return
        parts: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                error = ApiError(408, f"the request body did not arrive within {self.timeout:g} s", code="timeout")
                await self._refuse(scope, receive, send, error)
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, self._too_large())
                return
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        if body.count(b"[") + body.count(b"{") > self.max_depth and json_depth(body) > self.max_depth:
            error = ApiError(400, f"the JSON body is nested deeper than {self.max_depth} levels", code="too_deep")
            await error.response()(scope, receive, send)
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> ApiError:
        return ApiError(413, f"request body is larger than {self.max_bytes} bytes", code="body_too_large")


class _CatchAll:
    """The last word on errors: an exception no handler answered becomes a JSON 500 and is not re-raised, so
    the server keeps the connection (Starlette's own last resort re-raises, and uvicorn then drops it)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except _ClientGone:
            return  # nobody to answer
        except Exception as exc:
            error = api_error_from(exc)
            if error.status >= 500:
                log.error("request failed: %s", error.message, exc_info=exc)
            if not started:
                await error.response()(scope, receive, send)


def _version() -> str:
    from llamarcp import __version__

    return __version__
