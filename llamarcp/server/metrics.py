"""`GET /metrics`: Prometheus text with llama-server's metric names (`llamacpp:prompt_tokens_total`, ...).

Enabled by `--metrics` (like llama-server; without it the route answers 501). The counters add up every served
model's `Llama.generation_stats` (and what models evicted earlier had done); the gauges are the averages since
startup and the requests running / waiting now. llamarcp's own request counters follow as `llamarcp:*`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse

from llamarcp.generation_stats import StatsSnapshot
from llamarcp.server.errors import ApiError
from llamarcp.server.pool import ModelPool

__all__ = ["add_metrics_route", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _totals(pool: ModelPool) -> StatsSnapshot:
    total = StatsSnapshot()
    for entry in pool.entries:
        for snap in entry.stats_snapshots():
            for name, value in snap.as_dict().items():
                if name == "n_tokens_max":
                    total.n_tokens_max = max(total.n_tokens_max, int(value))
                else:
                    setattr(total, name, getattr(total, name) + value)
    return total


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 2**53):
        return str(int(value))
    return repr(float(value))


def render_metrics(pool: ModelPool) -> str:
    """The exposition text (Prometheus text format 0.0.4)."""
    t = _totals(pool)
    processing = sum(e.runner.snapshot()["slots_in_use"] for e in pool.entries)
    deferred = sum(e.runner.waiting for e in pool.entries)
    counters: list[tuple[str, str, float]] = [
        ("prompt_tokens_total", "Number of prompt tokens processed, excluding cached tokens", t.prompt_tokens),
        ("prompt_tokens_cached_total", "Number of prompt tokens reused from the cache", t.prompt_tokens_cached),
        ("prompt_seconds_total", "Total time spent processing prompts", t.prompt_seconds),
        ("tokens_predicted_total", "Number of generation tokens processed", t.predicted_tokens),
        ("tokens_predicted_seconds_total", "Total time spent generating tokens", t.predicted_seconds),
        ("n_decode_total", "Total number of llama_decode() calls", t.decode_calls),
        ("n_tokens_max", "Largest observed sequence length (prompt + generation)", t.n_tokens_max),
        ("spec_decode_num_draft_tokens_total", "Speculative: Total draft tokens generated", t.draft_tokens),
        (
            "spec_decode_num_accepted_tokens_total",
            "Speculative: Total draft tokens accepted by the target model",
            t.draft_accepted,
        ),
        ("spec_decode_num_drafts_total", "Speculative: Total speculative decoding verification steps", t.draft_steps),
    ]
    gauges: list[tuple[str, str, float]] = [
        (
            "prompt_tokens_seconds",
            "Average prompt throughput in tokens/s",
            t.prompt_tokens / t.prompt_seconds if t.prompt_seconds > 0 else 0.0,
        ),
        (
            "predicted_tokens_seconds",
            "Average generation throughput in tokens/s",
            t.predicted_tokens / t.predicted_seconds if t.predicted_seconds > 0 else 0.0,
        ),
        ("requests_processing", "Number of requests processing", processing),
        ("requests_deferred", "Number of requests deferred", deferred),
        (
            "n_busy_slots_per_decode",
            "Average number of busy slots per llama_decode() call",
            t.busy_slots / max(t.decode_calls, 1),
        ),
    ]
    lines: list[str] = []

    def add(prefix: str, kind: str, items: list[tuple[str, str, float]]) -> None:
        for name, help_text, value in items:
            lines.append(f"# HELP {prefix}:{name} {help_text}")
            lines.append(f"# TYPE {prefix}:{name} {kind}")
            lines.append(f"{prefix}:{name} {_number(value)}")

    add("llamacpp", "counter", counters)
    add("llamacpp", "gauge", gauges)
    served = failed = rejected = cancelled = 0
    for entry in pool.entries:
        stats = entry.runner.stats
        served += stats.served
        failed += stats.failed
        rejected += stats.rejected
        cancelled += stats.cancelled
    add(
        "llamarcp",
        "counter",
        [
            ("requests_served_total", "Requests answered in full", served),
            ("requests_failed_total", "Requests that ended with an error", failed),
            ("requests_rejected_total", "Requests refused because the queue was full (503)", rejected),
            ("requests_cancelled_total", "Requests whose client left before the end", cancelled),
            ("model_evictions_total", "Models unloaded to make room for another", pool.evictions),
        ],
    )
    add("llamarcp", "gauge", [("models_loaded", "Models loaded now", sum(1 for e in pool.entries if e.loaded))])
    return "\n".join(lines) + "\n"


def add_metrics_route(app: FastAPI, pool: ModelPool, enabled: bool, require_key: Callable[..., Any]) -> None:
    @app.get("/metrics", dependencies=[Depends(require_key)], response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        if not enabled:
            raise ApiError(
                501,
                "This server does not support metrics endpoint. Start it with `--metrics`",
                "not_supported_error",
            )
        return PlainTextResponse(render_metrics(pool), media_type=CONTENT_TYPE)
