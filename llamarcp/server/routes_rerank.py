"""Reranking: `POST /v1/rerank` (also `/rerank`, `/reranking`, `/v1/reranking`), llama-server's shape.

Jina/Cohere style `{"query", "documents", "top_n"}` answers `{"results": [{"index", "relevance_score"}]}` sorted
by score; TEI style `{"query", "texts", "return_text"}` answers a bare list with `score` (and `text`). The model
must be a reranker: a GGUF whose pooling is RANK, or any classifier model served with `--reranking`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel, ConfigDict, Field

from llamarcp import lib
from llamarcp.server.dispatch import Dispatcher
from llamarcp.server.errors import ApiError
from llamarcp.server.params import refuse_unknown_fields

__all__ = ["MAX_DOCUMENTS", "add_rerank_routes"]

#: Documents one request may rank (each is one pass of the model).
MAX_DOCUMENTS = 1024


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    query: str
    documents: Annotated[list[str], Field(max_length=MAX_DOCUMENTS)] | None = None
    texts: Annotated[list[str], Field(max_length=MAX_DOCUMENTS)] | None = Field(
        None, description="TEI's name for documents (answers in TEI's shape)"
    )
    top_n: int | None = Field(None, ge=0, le=MAX_DOCUMENTS)
    return_text: bool = Field(False, description="TEI: include each text in its result")
    return_documents: bool = Field(False, description="Jina/Cohere: include each document in its result")


def add_rerank_routes(app: FastAPI, dispatcher: Dispatcher, require_key: Callable[..., Any]) -> None:
    pool = dispatcher.pool

    async def rerank(body: RerankRequest) -> Any:
        refuse_unknown_fields(body)
        tei = body.texts is not None
        if tei and body.documents is not None:
            raise ApiError(400, "send documents or texts, not both", param="texts")
        documents = body.texts if tei else body.documents
        if not documents:
            raise ApiError(400, '"documents" must be a non-empty string array', param="texts" if tei else "documents")
        entry = pool.resolve(body.model)
        runner = entry.runner

        def run() -> tuple[list[float], int]:
            ranker = entry.embedding_model()
            if ranker.pooling_type() != lib.LLAMA_POOLING_TYPE_RANK:
                raise ApiError(
                    501,
                    "This server does not support reranking. Start it with `--reranking` and a reranker model",
                    "not_supported_error",
                )
            scores, count = ranker.rank(body.query, documents, return_count=True)
            return scores, count

        async with pool.unslotted(entry):
            try:
                scores, count = await runner.compute(run)
                runner.stats.served += 1
            except BaseException:
                runner.stats.failed += 1
                raise
        label = "score" if tei else "relevance_score"
        results: list[dict[str, Any]] = []
        for index, score in enumerate(scores):
            result: dict[str, Any] = {"index": index, label: score}
            if tei and body.return_text:
                result["text"] = documents[index]
            if not tei and body.return_documents:
                result["document"] = {"text": documents[index]}
            results.append(result)
        results.sort(key=lambda r: r[label], reverse=True)
        results = results[: body.top_n if body.top_n is not None else len(results)]
        if tei:
            return results
        return {
            "model": body.model or entry.model_id,
            "object": "list",
            "usage": {"prompt_tokens": count, "total_tokens": count},
            "results": results,
        }

    for path in ("/v1/rerank", "/rerank", "/reranking", "/v1/reranking"):
        app.post(path, dependencies=[Depends(require_key)], include_in_schema=path == "/v1/rerank")(rerank)
