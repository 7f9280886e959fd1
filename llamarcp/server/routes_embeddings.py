"""`/v1/embeddings`: texts or token lists in, OpenAI-shaped vectors out (float or base64); concurrent requests
share calls into the embedding model (`embedding_batch`)."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from llamarcp.embeddings import embedding_response
from llamarcp.server.dispatch import Dispatcher, withdraw_abort
from llamarcp.server.embedding_batch import EmbeddingBatcher
from llamarcp.server.errors import ApiError, ClientGone
from llamarcp.server.params import refuse_unknown_fields
from llamarcp.server.pool import ModelEntry
from llamarcp.server.schemas import EmbeddingRequest

__all__ = ["add_embedding_routes", "batcher_for"]


def _embed_texts(entry: ModelEntry) -> Callable[[list[str]], tuple[list[Any], list[int]]]:
    def embed(texts: list[str]) -> tuple[list[Any], list[int]]:
        embedder = entry.embedding_model()
        rows = embedder.embed(texts)
        limit = entry.embedding_input_limit()
        counts = [min(len(embedder.tokenize(text.encode("utf-8"))), limit) for text in texts]
        return rows, counts

    return embed


def batcher_for(entry: ModelEntry) -> EmbeddingBatcher:
    """The entry's batcher (made on first use, on the event loop)."""
    if entry.embedding_batcher is None:

        def embedder_alone() -> Any:  # an abort may only hit a context no generation shares
            embedder = entry.embedder
            if embedder is None or (embedder is entry.llama and entry.runner.parallel):
                return None
            return embedder

        def abort() -> None:
            target = embedder_alone()
            if target is not None:
                target.abort()

        def withdraw() -> None:
            target = embedder_alone()
            if target is not None:
                withdraw_abort(target)

        entry.embedding_batcher = EmbeddingBatcher(entry.runner, _embed_texts(entry), abort, withdraw)
    return entry.embedding_batcher


def add_embedding_routes(app: FastAPI, dispatcher: Dispatcher, require_key: Callable[..., Any]) -> None:
    pool = dispatcher.pool

    @app.post("/v1/embeddings", dependencies=[Depends(require_key)])
    async def embeddings(body: EmbeddingRequest, request: Request) -> Any:
        refuse_unknown_fields(body)
        entry = pool.resolve(body.model)
        if not entry.config.embeddings:
            raise ApiError(400, "embeddings are disabled on this server (started with --no-embeddings)")
        if body.dimensions is not None:
            raise ApiError(400, "dimensions is not supported (the model's size is fixed)", param="dimensions")
        runner = entry.runner
        async with pool.unslotted(entry):
            try:
                texts = await _texts(entry, body.input)
                rows, tokens = await batcher_for(entry).embed(texts, request.is_disconnected)
                result = embedding_response(rows, tokens, entry.model_id)
                if body.encoding_format == "base64":  # what the openai client asks for by default
                    for row in result["data"]:
                        vector = row["embedding"]
                        packed = struct.pack(f"<{len(vector)}f", *vector)
                        row["embedding"] = base64.b64encode(packed).decode("ascii")
                runner.stats.served += 1
                return JSONResponse(result)
            except ClientGone:
                raise
            except BaseException:
                runner.stats.failed += 1
                raise


async def _texts(entry: ModelEntry, given: Any) -> list[str]:
    """The request's input as a list of texts (token lists are detokenized; out-of-vocab ids are a 400)."""
    if given == [] or given == "":
        raise ApiError(400, "input must not be empty", param="input")
    if isinstance(given, str):
        return [given]
    if isinstance(given[0], str):
        return list(given)
    rows = given if isinstance(given[0], list) else [given]
    llama = entry.llama

    def detokenize() -> list[str]:
        return [bytes(llama.detokenize(row)).decode("utf-8", errors="replace") for row in rows]

    return await asyncio.get_running_loop().run_in_executor(None, detokenize)
