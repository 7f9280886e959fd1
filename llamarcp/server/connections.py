"""Idle connections are closed: uvicorn's h11 protocol with a deadline for every request's headers.

uvicorn starts its keep-alive timer only after a response, and stops it at the first byte received, so a
connection that never sends a request, or sends its headers a byte at a time, stays open forever. Here a
connection must deliver complete request headers within `timeout_keep_alive` seconds of being opened or of its
previous response; otherwise it is closed. (The request body has its own deadline, see app._RequestGuard.)
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["IdleTimeoutH11Protocol"]


class IdleTimeoutH11Protocol(H11Protocol):
    _header_deadline: float | None = None

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._header_deadline is None or self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        delay = max(self._header_deadline - self.loop.time(), 0.0)
        self.timeout_keep_alive_task = self.loop.call_later(delay, self.timeout_keep_alive_handler)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline = self.loop.time() + self.timeout_keep_alive
        self._arm()

    def on_response_complete(self) -> None:
        self._header_deadline = self.loop.time() + self.timeout_keep_alive
        super().on_response_complete()  # arms uvicorn's own keep-alive timer (same delay)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # stops the timer, and starts a request once its headers are complete
        if self._waiting_for_headers():
            self._arm()  # still no complete request: the same deadline keeps running

    def timeout_keep_alive_handler(self) -> None:
        if self._waiting_for_headers():
            super().timeout_keep_alive_handler()
