"""llama-cpp-python's `llama_types` (llamarcp.compat.types): the TypedDicts describe what llamarcp returns."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamarcp import Llama
from llamarcp.compat import types as lt


@pytest.fixture(scope="module")
def llm(tiny_model_path: Path) -> Iterator[Llama]:
    with Llama(str(tiny_model_path), n_ctx=512, n_threads=1) as model:
        yield model


def conforms(value: Any, td: Any) -> None:
    """`value` has every required key of TypedDict `td` and only keys `td` declares."""
    assert isinstance(value, dict)
    assert td.__required_keys__ <= set(value), (td.__name__, td.__required_keys__ - set(value))
    assert set(value) <= set(td.__annotations__) | set(typing.get_type_hints(td)), (td.__name__, set(value))


def test_completion_shapes(llm: Llama) -> None:
    result = llm("Hello", max_tokens=3, logprobs=2)
    conforms(result, lt.CreateCompletionResponse)
    conforms(result["choices"][0], lt.CompletionChoice)
    conforms(result["usage"], lt.CompletionUsage)
    conforms(result["choices"][0]["logprobs"], lt.CompletionLogprobs)
    for chunk in llm("Hello", max_tokens=3, stream=True):
        conforms(chunk, lt.CreateCompletionStreamResponse)


def test_chat_shapes(llm: Llama) -> None:
    messages: list[lt.ChatCompletionRequestMessage] = [{"role": "user", "content": "Hi"}]
    result = llm.create_chat_completion(messages, max_tokens=3)
    conforms(result, lt.CreateChatCompletionResponse)
    conforms(result["choices"][0], lt.ChatCompletionResponseChoice)
    conforms(result["choices"][0]["message"], lt.ChatCompletionResponseMessage)
    for chunk in llm.create_chat_completion(messages, max_tokens=3, stream=True):
        conforms(chunk, lt.CreateChatCompletionStreamResponse)
        conforms(chunk["choices"][0], lt.ChatCompletionStreamResponseChoice)


def test_embedding_shape(tiny_bert_path: Path) -> None:
    with Llama(str(tiny_bert_path), embedding=True, n_threads=1) as emb:
        result = emb.create_embedding(["a", "b"])
    conforms(result, lt.CreateEmbeddingResponse)
    conforms(result["data"][0], lt.Embedding)
    conforms(result["usage"], lt.EmbeddingUsage)


def test_llama_cpp_python_aliases() -> None:
    assert lt.ChatCompletion is lt.CreateChatCompletionResponse and lt.Completion is lt.CreateCompletionResponse
    assert lt.ChatCompletionChunk is lt.CreateChatCompletionStreamResponse and lt.EmbeddingData is lt.Embedding
    assert "ChatCompletionRequestMessage" in lt.__all__ and "JsonType" in lt.__all__
