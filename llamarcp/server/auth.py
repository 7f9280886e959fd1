"""The API key: `Authorization: Bearer KEY` (or Anthropic's `X-Api-Key: KEY`) checked in constant time, as a
plain test and as a FastAPI dependency."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import Request

from llamarcp.server.errors import ApiError

__all__ = ["key_checks"]


def key_checks(api_key: str | None) -> tuple[Callable[[Request], bool], Callable[[Request], Awaitable[None]]]:
    """`has_key(request)` (always true without a key) and `require_key`, a dependency answering 401."""

    def has_key(request: Request) -> bool:
        if api_key is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode()):
            return True
        # Anthropic's clients send the key as X-Api-Key (llama-server accepts it too).
        other = request.headers.get("x-api-key")
        return other is not None and hmac.compare_digest(other.strip().encode(), api_key.encode())

    async def require_key(request: Request) -> None:
        if not has_key(request):
            raise ApiError(
                401, "invalid or missing API key (send 'Authorization: Bearer <key>')", code="invalid_api_key"
            )

    return has_key, require_key
