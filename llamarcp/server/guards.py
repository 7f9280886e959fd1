"""Plain ASGI guards around the app (plain ASGI, so request-disconnect detection downstream keeps working):
`RequestGuard` bounds the request body (size, time, JSON depth), `CatchAll` answers whatever no handler did."""

from __future__ import annotations

import asyncio
import logging
import re
from itertools import accumulate
from typing import Any

from llamarcp.server.errors import ApiError, ClientGone, api_error_from

__all__ = ["MAX_JSON_DEPTH", "CatchAll", "RequestGuard", "json_depth"]

log = logging.getLogger("llamarcp.server")

#: Deepest JSON nesting a request body may have (a chat message or JSON schema needs far less; deeper bodies
#: would hit Python's recursion limit in validation or template rendering).
MAX_JSON_DEPTH = 100

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


class RequestGuard:
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


class CatchAll:
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
        except ClientGone:
            return  # nobody to answer
        except Exception as exc:
            error = api_error_from(exc)
            if error.status >= 500:
                log.error("request failed: %s", error.message, exc_info=exc)
            if not started:
                await error.response()(scope, receive, send)
