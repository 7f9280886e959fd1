"""Reranking: `Llama.rank` on a tiny random BERT cross-encoder (rank pooling, `cls` head per llama.cpp's
src/models/bert.cpp) and the server's `/v1/rerank` (and aliases) in Jina and TEI shapes, driven over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server import Server, _error, start_server

from llamarcp import Llama, lib
from llamarcp.errors import LlamaError, PromptTooLongError

KEY = "rerank-key"
QUERY = "what is a panda?"
DOCS = ["a panda is a bear", "hi", "the giant panda is a bear native to china", "pandas", "hello world"]


@pytest.fixture(scope="module")
def reranker_path(tiny_model_writer: Any, llama_cpp_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reranker") / "tiny-reranker.gguf"
    vocab = llama_cpp_source / "models" / tiny_model_writer.BERT_VOCAB_FILE
    return Path(tiny_model_writer.write_tiny_bert(out, vocab, classifier=True))


@pytest.fixture(scope="module")
def reranker(reranker_path: Path) -> Iterator[Llama]:
    with Llama(
        str(reranker_path),
        embedding=True,
        pooling_type=lib.LLAMA_POOLING_TYPE_RANK,
        n_ctx=128,
        n_batch=128,
        n_threads=1,
    ) as llm:
        yield llm


def test_rank_scores_each_document(reranker: Llama) -> None:
    scores = reranker.rank(QUERY, DOCS)
    assert len(scores) == len(DOCS) and len(set(scores)) == len(DOCS)
    alone = [reranker.rank(QUERY, [doc])[0] for doc in DOCS]
    assert scores == pytest.approx(alone, rel=1e-5, abs=1e-5)  # batched with others or alone: the same score
    assert reranker.rank(QUERY, DOCS) == scores
    assert reranker.rank("another question", DOCS) != scores  # the query is read too
    swapped, count = reranker.rank(QUERY, DOCS[::-1], return_count=True)
    assert swapped == pytest.approx(scores[::-1], rel=1e-5, abs=1e-5) and count > len(DOCS) * 3
    assert reranker.rank(QUERY, []) == []


def test_rank_needs_a_reranker_context(reranker_path: Path, tiny_bert_path: Path) -> None:
    plain = Llama(str(tiny_bert_path), embedding=True, n_ctx=128, n_batch=128, n_threads=1)
    with plain, pytest.raises(LlamaError, match="reranker context"):
        plain.rank(QUERY, DOCS)
    no_embedding = Llama(str(reranker_path), n_ctx=128, n_batch=128, n_threads=1)
    with no_embedding, pytest.raises(LlamaError, match="embedding=True"):
        no_embedding.rank(QUERY, DOCS)


def test_rank_bad_inputs(reranker: Llama) -> None:
    with pytest.raises(PromptTooLongError):
        reranker.rank(QUERY, ["word " * 400], truncate=False)
    assert len(reranker.rank(QUERY, ["word " * 400])) == 1  # cut to one pass by default
    with pytest.raises(TypeError):
        reranker.rank(QUERY, [b"bytes"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        reranker.rank(None, DOCS)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(reranker_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("rerank-server")
    args = ("--model", str(reranker_path), "--alias", "ranker", "-t", "1", "-c", "128", "-b", "128", "--reranking")
    yield from start_server(tmp, *args, api_key=KEY)


def test_rerank_route(server: Server, reranker: Llama) -> None:
    expected = reranker.rank(QUERY, DOCS)
    result = server.post("/v1/rerank", {"model": "ranker", "query": QUERY, "documents": DOCS, "top_n": 3}).json()
    assert result["object"] == "list" and result["model"] == "ranker"
    ranked = result["results"]
    assert len(ranked) == 3
    order = sorted(range(len(DOCS)), key=lambda i: expected[i], reverse=True)[:3]
    assert [r["index"] for r in ranked] == order
    assert [r["relevance_score"] for r in ranked] == pytest.approx([expected[i] for i in order], rel=1e-5, abs=1e-5)
    assert result["usage"]["prompt_tokens"] == reranker.rank(QUERY, DOCS, return_count=True)[1]
    for alias in ("/rerank", "/reranking", "/v1/reranking"):
        again = server.post(alias, {"query": QUERY, "documents": DOCS, "top_n": 3}).json()
        assert [r["index"] for r in again["results"]] == order
    with_docs = server.post("/v1/rerank", {"query": QUERY, "documents": DOCS, "return_documents": True}).json()
    assert all(r["document"]["text"] == DOCS[r["index"]] for r in with_docs["results"])
    tei = server.post("/rerank", {"query": QUERY, "texts": DOCS, "return_text": True}).json()
    assert isinstance(tei, list) and len(tei) == len(DOCS)
    assert all(r["text"] == DOCS[r["index"]] and "score" in r for r in tei)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"query": QUERY, "documents": []}, "documents"),
        ({"query": QUERY}, "documents"),
        ({"documents": DOCS}, "query"),
        ({"query": QUERY, "documents": ["x"] * 1025}, "documents"),
        ({"query": QUERY, "documents": DOCS, "top_n": -1}, "top_n"),
        ({"query": QUERY, "documents": [1, 2]}, "documents"),
        ({"query": QUERY, "documents": DOCS, "texts": DOCS}, "texts"),
        ({"query": QUERY, "documents": DOCS, "rank_fields": ["x"]}, "rank_fields"),
    ],
)
def test_bad_rerank_requests(server: Server, body: dict[str, Any], param: str) -> None:
    error = _error(server.post("/v1/rerank", body), 400)
    assert error["param"] == param or param in error["message"], error


def test_rerank_needs_the_key(server: Server) -> None:
    response = httpx.post(server.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS}, timeout=30)
    assert _error(response, 401)["code"] == "invalid_api_key"
