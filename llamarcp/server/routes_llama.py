"""llama-server's own routes, with its request and response shapes: `/tokenize` (with pieces), `/detokenize`,
`/apply-template`, `GET /props`, `/infill` (fill-in-the-middle for models with FIM tokens).

Vocab work needs the model loaded but not a generation slot (`Dispatcher.on_model`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from llamarcp._backend import get_lib
from llamarcp.server.chat_prompt import chat_prompt, template_kwargs_for
from llamarcp.server.dispatch import Dispatcher, StreamEncoder
from llamarcp.server.errors import ApiError
from llamarcp.server.params import max_tokens_for, refuse_unknown_fields, sampling
from llamarcp.server.pool import ModelEntry
from llamarcp.server.request_options import generate_in_slot, ignore_eos_bias, slot_options
from llamarcp.server.schemas import INT32_MAX, _Request
from llamarcp.server.settings import ServerSettings

__all__ = ["add_llama_routes"]

#: The most pieces of a mixed `content` list, and tokens of one /detokenize (a body is bounded anyway; these
#: keep the per-item Python work bounded too).
MAX_CONTENT_PARTS = 65536
MAX_DETOKENIZE = 1 << 20
MAX_INFILL_EXTRA = 256
#: Tokens one /tokenize may answer with pieces (each piece is a small object: bound the answer's memory).
MAX_PIECES = 1 << 18


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str | None = None


class TokenizeBody(_Body):
    content: str | Annotated[list[str | int], Field(max_length=MAX_CONTENT_PARTS)] = Field(
        description="text, or a list of texts and token ids (ids are kept as they are)"
    )
    add_special: bool = Field(False, description="add the vocab's BOS/EOS")
    parse_special: bool = Field(True, description="special-token text like <s> becomes that token")
    with_pieces: bool = Field(False, description="each token as {id, piece}; a piece that is not UTF-8 is its bytes")


class DetokenizeBody(_Body):
    tokens: Annotated[list[int], Field(max_length=MAX_DETOKENIZE)]


class InfillExtra(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    filename: str = "tmp"


class InfillBody(_Request):
    """llama-server's /infill: the code before and after the cursor, optional extra files, then the completion
    fields of /v1/completions (`n_predict` is llama-server's name for max_tokens)."""

    input_prefix: str
    input_suffix: str
    input_extra: Annotated[list[InfillExtra], Field(max_length=MAX_INFILL_EXTRA)] = []
    prompt: str = ""
    n_predict: int | None = Field(None, ge=-1, le=INT32_MAX)
    max_tokens: int | None = None


class ApplyTemplateBody(_Body):
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    chat_template_kwargs: dict[str, Any] | None = None


def _tokenize_content(llama: Any, body: TokenizeBody) -> list[int]:
    content = body.content
    if isinstance(content, str):
        return list(llama.tokenize(content.encode("utf-8"), add_bos=body.add_special, special=body.parse_special))
    tokens: list[int] = []
    for i, part in enumerate(content):
        if isinstance(part, int):
            tokens.append(part)
        else:  # like llama-server: BOS only before the first piece when it is text
            add = body.add_special and i == 0
            tokens.extend(llama.tokenize(part.encode("utf-8"), add_bos=add, special=body.parse_special))
    llama._model.check_tokens(tokens)
    return tokens


def _piece(llama: Any, token: int) -> str | list[int]:
    raw = bytes(llama._model.token_to_piece(token, special=True))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


def fim_tokens(llama: Any, body: InfillBody, n_batch: int, n_predict: int) -> list[int]:
    """llama-server's infill prompt (repo-level FIM pattern, prefix:suffix kept 3:1 within one batch):
    [FIM_REP]myproject\n [FIM_SEP]file\n text ... [FIM_SEP]filename\n [FIM_PRE]prefix+prompt [FIM_SUF]suffix
    [FIM_MID]; a 400 when the model has no FIM tokens."""
    lib, vocab = get_lib(), llama._model.vocab
    pre, suf, mid = (int(f(vocab)) for f in (lib.llama_vocab_fim_pre, lib.llama_vocab_fim_suf, lib.llama_vocab_fim_mid))
    rep, sep = int(lib.llama_vocab_fim_rep(vocab)), int(lib.llama_vocab_fim_sep(vocab))
    missing = [name for name, token in (("prefix", pre), ("suffix", suf), ("middle", mid)) if token < 0]
    if missing:
        raise ApiError(
            400, f"Infill is not supported by this model: {', '.join(missing)} token is missing", "not_supported_error"
        )

    def tok(text: str) -> list[int]:
        return list(llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    extra: list[int] = []
    if rep >= 0:
        extra += [rep, *tok("myproject\n")]
    for chunk in body.input_extra:
        extra += [sep, *tok(chunk.filename + "\n")] if sep >= 0 else tok("\n\n--- snippet ---\n\n")
        extra += tok(chunk.text)
    if sep >= 0:
        extra += [sep, *tok("filename\n")]
    prefix, suffix, prompt = tok(body.input_prefix), tok(body.input_suffix), tok(body.prompt)
    n_ctx = int(llama.n_ctx)
    n_prefix = min(len(prefix), 3 * (n_batch // 4))
    n_suffix = min(len(suffix), max(0, n_batch // 4 - (2 + len(prompt))))
    n_extra = min(max(0, n_ctx - n_batch - 2 * n_predict), len(extra))
    head = [pre, *prefix[len(prefix) - n_prefix :], *prompt]
    tail = [suf, *suffix[:n_suffix]]
    if llama.spm_infill:
        head, tail = tail, head
    bos = [int(llama.token_bos)] if llama._model.add_bos() else []
    return [*extra[len(extra) - n_extra :], *bos, *head, *tail, mid]


class _InfillEncoder(StreamEncoder):
    """llama-server's native stream: `data: {"content", "stop"}` per piece, the last with stop true, no [DONE]."""

    def __init__(self, n_prompt: int) -> None:
        self.n_prompt = n_prompt

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, str]]:
        choice = chunk["choices"][0]
        body: dict[str, Any] = {"index": 0, "content": choice["text"], "stop": choice["finish_reason"] is not None}
        if body["stop"]:
            body.update(_stop_fields(choice["finish_reason"], chunk.get("usage"), self.n_prompt, chunk["model"]))
        return [{"data": json.dumps(body, ensure_ascii=False)}]

    def done(self) -> list[dict[str, str]]:
        return []


def _stop_fields(finish_reason: str | None, usage: dict[str, Any] | None, n_prompt: int, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "stop_type": "limit" if finish_reason == "length" else "eos",
        "tokens_predicted": int((usage or {}).get("completion_tokens", 0)),
        "tokens_evaluated": n_prompt,
        "truncated": False,
    }


def add_llama_routes(
    app: FastAPI, dispatcher: Dispatcher, settings: ServerSettings, require_key: Callable[..., Any]
) -> None:
    pool = dispatcher.pool
    guarded: list[Any] = [Depends(require_key)]

    @app.post("/tokenize", dependencies=guarded)
    async def tokenize(body: TokenizeBody) -> dict[str, Any]:
        refuse_unknown_fields(body)
        entry = pool.resolve(body.model)

        def run(llama: Any) -> list[Any]:
            tokens = _tokenize_content(llama, body)
            if body.with_pieces:
                if len(tokens) > MAX_PIECES:
                    raise ApiError(
                        400,
                        f"with_pieces answers at most {MAX_PIECES} tokens; this text has {len(tokens)}",
                        param="with_pieces",
                    )
                return [{"id": t, "piece": _piece(llama, t)} for t in tokens]
            return tokens

        return {"tokens": await dispatcher.on_model(entry, run)}

    @app.post("/detokenize", dependencies=guarded)
    async def detokenize(body: DetokenizeBody) -> dict[str, Any]:
        refuse_unknown_fields(body)
        entry = pool.resolve(body.model)

        def run(llama: Any) -> str:
            return bytes(llama.detokenize(body.tokens, special=True)).decode("utf-8", errors="replace")

        return {"content": await dispatcher.on_model(entry, run)}

    @app.post("/apply-template", dependencies=guarded)
    async def apply_template(body: ApplyTemplateBody) -> dict[str, Any]:
        refuse_unknown_fields(body)
        entry = pool.resolve(body.model)
        if not body.messages:
            raise ApiError(400, "messages must not be empty", param="messages")
        kwargs = template_kwargs_for(entry, body.chat_template_kwargs)
        prompt = await dispatcher.on_model(entry, lambda _llama: chat_prompt(entry, body.messages, body.tools, kwargs))
        return {"prompt": prompt}

    @app.post("/infill", dependencies=guarded)
    async def infill(body: InfillBody, request: Request) -> Any:
        refuse_unknown_fields(body)
        entry = pool.resolve(body.model)
        requested = body.n_predict if body.n_predict is not None and body.n_predict >= 0 else body.max_tokens
        max_tokens = max_tokens_for(requested, "n_predict", settings.n_predict)
        slot = slot_options(body, entry)
        prompt = await dispatcher.on_model(
            entry, lambda llama: fim_tokens(llama, body, int(llama.n_batch), max_tokens or 0)
        )

        def kwargs() -> dict[str, Any]:
            options = sampling(body, entry)
            if body.ignore_eos:
                options["logit_bias"] = {**(options.get("logit_bias") or {}), **ignore_eos_bias(entry)}
            return dict(options, max_tokens=max_tokens, model=entry.model_id)

        result = await generate_in_slot(
            dispatcher,
            request,
            entry,
            slot,
            lambda **extra: entry.llama.create_completion(prompt, **extra, **kwargs()),
            stream=bool(body.stream),
            encoder=_InfillEncoder(len(prompt)),
        )
        if body.stream:
            return result
        choice = result["choices"][0]
        return {
            "index": 0,
            "content": choice["text"],
            "stop": True,
            **_stop_fields(choice["finish_reason"], result.get("usage"), len(prompt), entry.model_id),
        }

    @app.get("/props", dependencies=guarded)
    async def props() -> dict[str, Any]:
        entry = pool.default
        return await dispatcher.on_model(entry, lambda llama: _props(entry, llama, settings))

    @app.post("/props", dependencies=guarded)
    async def change_props() -> dict[str, Any]:
        raise ApiError(
            501, "This server does not support changing global properties (no --props)", "not_supported_error"
        )


def _props(entry: ModelEntry, llama: Any, settings: ServerSettings) -> dict[str, Any]:
    """llama-server's GET /props for the default model."""
    from llamarcp import __version__

    def token_text(token: int) -> str:
        if token < 0:
            return ""
        return bytes(llama._model.token_to_piece(token, special=True)).decode("utf-8", errors="replace")

    template = entry.config.chat_template or llama.chat_template() or ""
    return {
        "default_generation_settings": {
            "n_ctx": int(llama.n_ctx),
            "params": {
                "n_predict": settings.n_predict if settings.n_predict is not None else -1,
                "temperature": 0.8,
                "top_k": 40,
                "top_p": 0.95,
                "min_p": 0.05,
                "seed": int(llama._seed),
            },
        },
        "total_slots": entry.runner.n_parallel,
        "kv_unified": bool(getattr(llama, "kv_unified", False)),
        "kv_cells": llama.kv_cells(),
        "kv_cache_mib": llama.kv_cache_mib(),
        "model_alias": entry.model_id,
        "model_path": entry.model_path or "",
        "modalities": {"vision": False, "video": False, "audio": False},
        "endpoint_slots": settings.endpoint_slots,
        "endpoint_props": False,
        "endpoint_metrics": settings.metrics,
        "chat_template": template,
        "bos_token": token_text(int(llama.token_bos)),
        "eos_token": token_text(int(llama.token_eos)),
        "build_info": f"llamarcp {__version__}",
        "is_sleeping": False,
    }
