"""A request's fields -> `Llama` keywords: unknown fields refused by name, max_tokens bounded, sampling
options (logit biases by token or by text, min_tokens as a logits processor)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from llamarcp.server.errors import ApiError
from llamarcp.server.pool import ModelEntry
from llamarcp.server.schemas import IGNORED_FIELDS, _Request

__all__ = ["max_tokens_for", "refuse_unknown_fields", "sampling"]


def refuse_unknown_fields(body: BaseModel) -> None:
    """A field this server does not implement is a 400 naming it, never silently dropped."""
    for name in body.model_extra or {}:
        if name not in IGNORED_FIELDS:
            raise ApiError(
                400,
                f"'{name}' is not supported by this server",
                param=name,
                code="unsupported_parameter",
            )


def max_tokens_for(value: int | None, param: str, cap: int | None) -> int | None:
    """None = until the context is full; a value above the context stops there too (like llama-cpp-python).
    `cap` is the server's --n-predict (None: no cap)."""
    if value is not None and value < 1:
        raise ApiError(400, f"{param} must be at least 1, got {value}", param=param, code="invalid_value")
    if cap is None:
        return value
    return cap if value is None else min(value, cap)


def min_tokens_processor(n: int, banned: list[int]) -> Callable[[Any, Any], Any]:
    """Forbid end-of-generation tokens until `n` tokens were generated (llama-cpp-python's min_tokens)."""
    start: list[int] = []

    def process(input_ids: Any, scores: Any) -> Any:
        if not start:
            start.append(len(input_ids))
        if len(input_ids) - start[0] < n:
            scores[banned] = -math.inf
        return scores

    return process


def sampling(body: _Request, entry: ModelEntry) -> dict[str, Any]:
    """The sampling keywords of a request (on a model thread: token-text logit biases need the model)."""
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
        kwargs["logits_processor"] = min_tokens_processor(body.min_tokens, banned)
    return kwargs
