"""Every failure as an HTTP answer in OpenAI's shape: `ApiError`, the one mapping from library exceptions, and
the FastAPI exception handlers that use it."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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
from llamarcp.server.pool import UnknownModelError
from llamarcp.server.runner import ServerOverloaded

__all__ = ["ApiError", "ClientGone", "api_error_from", "install_error_handlers"]

log = logging.getLogger("llamarcp.server")


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


class ClientGone(Exception):
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


def install_error_handlers(app: FastAPI) -> None:
    """FastAPI's own errors (validation, 404, ...) and expected library failures, answered in OpenAI's shape."""

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

    # Expected failures get their handlers here; anything else reaches guards.CatchAll (a handler for
    # `Exception` would go to Starlette's ServerErrorMiddleware, which re-raises and drops the connection).
    for kind in (LlamaError, ValueError, TypeError, RecursionError, OverflowError):
        app.add_exception_handler(kind, _library_error)
