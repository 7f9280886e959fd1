"""llama-server's own routes, with its request and response shapes: `/tokenize` (with pieces), `/detokenize`,
`/apply-template`, `GET /props`.

Vocab work needs the model loaded but not a generation slot (`Dispatcher.on_model`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel, ConfigDict, Field

from llamarcp.server.chat_prompt import chat_prompt, template_kwargs_for
from llamarcp.server.dispatch import Dispatcher
from llamarcp.server.errors import ApiError
from llamarcp.server.params import refuse_unknown_fields
from llamarcp.server.pool import ModelEntry
from llamarcp.server.settings import ServerSettings

__all__ = ["add_llama_routes"]

#: The most pieces of a mixed `content` list, and tokens of one /detokenize (a body is bounded anyway; these
#: keep the per-item Python work bounded too).
MAX_CONTENT_PARTS = 65536
MAX_DETOKENIZE = 1 << 20


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
