"""Embeddings: pooled and per-token, batched as sequences, cut to what the model can take, abortable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llamarcp import Llama
from llamarcp.embeddings import max_input_tokens
from llamarcp.errors import GenerationAborted, LlamaError, PromptTooLongError


def test_embeddings(fresh: Any) -> None:
    llm = fresh(embedding=True, pooling_type=1)  # mean pooling
    one = llm.embed("hello world")
    assert len(one) == 64 and all(isinstance(v, float) for v in one)
    many = llm.embed(["hello world", "a different sentence", "hello world"])
    assert many[0] == pytest.approx(one, abs=1e-5) and many[2] == pytest.approx(one, abs=1e-5)
    assert many[1] != pytest.approx(one, abs=1e-3)
    unit = llm.embed("hello world", normalize=True)
    assert sum(v * v for v in unit) == pytest.approx(1.0, abs=1e-5)
    response = llm.create_embedding(["hello world", "x"])
    assert response["object"] == "list" and [d["index"] for d in response["data"]] == [0, 1]
    assert response["data"][0]["object"] == "embedding" and len(response["data"][0]["embedding"]) == 64
    assert response["usage"]["prompt_tokens"] == len(llm.tokenize(b"hello world")) + len(llm.tokenize(b"x"))
    # Many inputs are packed into batches of several sequences; results stay per input.
    texts = [f"sentence number {i}" for i in range(20)]
    packed = llm.embed(texts)
    assert packed[13] == pytest.approx(llm.embed(texts[13]), abs=1e-5)


def test_token_embeddings_without_pooling(fresh: Any) -> None:
    llm = fresh(embedding=True, pooling_type=0)
    rows = llm.embed("hello world")
    assert len(rows) == len(llm.tokenize(b"hello world")) and len(rows[0]) == 64


def test_embedding_needs_embedding_mode(tiny_llama: Llama, fresh: Any) -> None:
    with pytest.raises(LlamaError, match="embedding=True"):
        tiny_llama.create_embedding("hello")
    llm = fresh(embedding=True, pooling_type=1, n_batch=16)
    with pytest.raises(PromptTooLongError):
        llm.embed("word " * 50, truncate=False)
    assert len(llm.embed("word " * 50)) == 64  # truncated to n_batch tokens


def test_bert_embeddings(tiny_bert_path: Path) -> None:
    """An encoder-style model without KV cache (llama_get_memory is NULL): embeddings batch and stay per input."""
    with Llama(str(tiny_bert_path), embedding=True, n_ctx=128, n_batch=128, n_threads=1) as llm:
        texts = ["hello world", "another sentence here", "hello world", "x"]
        vectors = llm.embed(texts, normalize=True)
        assert [len(v) for v in vectors] == [64] * 4
        assert vectors[0] == pytest.approx(vectors[2], abs=1e-5)
        assert vectors[0] != pytest.approx(vectors[1], abs=1e-3)
        assert all(sum(x * x for x in v) == pytest.approx(1.0, abs=1e-5) for v in vectors)
        assert llm.embed("another sentence here", normalize=True) == pytest.approx(vectors[1], abs=1e-5)
        response = llm.create_embedding("hello world")
        assert response["usage"]["prompt_tokens"] == len(llm.tokenize(b"hello world"))  # [CLS] ... [SEP]
    with Llama(str(tiny_bert_path), embedding=True, pooling_type=0, n_ctx=128, n_batch=128, n_threads=1) as llm:
        rows = llm.embed("hello world")
        assert len(rows) == len(llm.tokenize(b"hello world")) and len(rows[0]) == 64


def test_input_is_cut_to_the_trained_positions(tiny_bert_path: Path) -> None:
    """A BERT trained on 128 positions in a 512 context: a long input is cut to 128, never read past them."""
    with Llama(str(tiny_bert_path), embedding=True, n_ctx=512, n_batch=512, n_threads=1) as llm:
        engine = llm._engine_or_raise()
        assert max_input_tokens(engine) == 128
        vector, count = llm.embed("word " * 200, return_count=True)
        assert len(vector) == 64 and count == 128
        with pytest.raises(PromptTooLongError):
            llm.embed("word " * 200, truncate=False)


def test_abort_stops_an_embedding(fresh: Any) -> None:
    llm = fresh(embedding=True, pooling_type=1)
    llm.abort()  # a request made while idle stops the next decode
    with pytest.raises(GenerationAborted):
        llm.embed([f"text {i}" for i in range(40)])
    assert len(llm.embed("works again")) == 64
    with pytest.raises(TypeError):
        llm.embed([b"bytes are not text"])  # type: ignore[list-item]
    assert issubclass(GenerationAborted, LlamaError)


@pytest.mark.slow
def test_batched_equals_one_by_one_on_gemma(default_model_path: Path) -> None:
    """A decoder with KV cache and sliding-window attention: a text's vector does not depend on its batch."""
    texts = [f"word{i} " * (20 + 30 * i) for i in range(4)] + ["short one", "The cat sat on the mat."]
    with Llama(str(default_model_path), embedding=True, pooling_type=1, n_ctx=1024, n_batch=1024) as llm:
        alone = [llm.embed(t) for t in texts]
        assert llm.embed(texts) == alone  # bit for bit, in one batch of several sequences
        assert llm.embed(texts[::-1]) == alone[::-1]
        assert llm.embed([texts[5], texts[5], texts[0]]) == [alone[5], alone[5], alone[0]]
    with Llama(str(default_model_path), embedding=True, pooling_type=0, n_ctx=1024, n_batch=1024) as llm:
        rows = llm.embed(texts[4:])
        assert rows == [llm.embed(t) for t in texts[4:]]


def test_padding_keeps_texts_on_row_tiles(fresh: Any) -> None:
    from llamarcp.embeddings import ROW_ALIGN, _padded

    assert _padded(1, 512) == ROW_ALIGN and _padded(ROW_ALIGN, 512) == ROW_ALIGN and _padded(ROW_ALIGN + 1, 512) == 32
    assert _padded(500, 500) == 500  # no padding past one batch: such a text is always alone
    llm = fresh(embedding=True, pooling_type=1, n_batch=64)
    texts = [f"text number {i} " * (i + 1) for i in range(6)]
    assert llm.embed(texts) == [llm.embed(t) for t in texts]
