"""OpenAI-compatible HTTP server for one model: `python -m llamarcp.server --model PATH` (extra `[server]`)."""

from __future__ import annotations

from llamarcp.server.app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
