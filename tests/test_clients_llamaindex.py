"""LlamaIndex's `LlamaCPP` (llama-index-llms-llama-cpp, unchanged from PyPI) on llamarcp via install_as_llama_cpp()."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llamarcp

pytestmark = pytest.mark.slow

llamarcp.install_as_llama_cpp()  # before LlamaIndex imports llama_cpp

from llama_index.core.llms import ChatMessage  # noqa: E402
from llama_index.llms.llama_cpp import LlamaCPP  # noqa: E402

PROMPT = "The three primary colors are"


@pytest.fixture(scope="module")
def llm(default_model_path: Path) -> Iterator[Any]:
    model = LlamaCPP(
        model_path=str(default_model_path),
        temperature=0.0,
        max_new_tokens=16,
        context_window=512,
        completion_to_prompt=lambda text: text,
        messages_to_prompt=lambda messages: (
            "\n".join(f"{m.role.value}: {m.content}" for m in messages) + "\nassistant:"
        ),
        verbose=False,
    )
    yield model
    model._model.close()


def test_metadata_reads_the_context_params(llm: Any) -> None:
    assert llm.metadata.context_window == llm._model.n_ctx == 512
    assert llm.metadata.num_output == 16


def test_complete_and_stream_agree(llm: Any) -> None:
    response = llm.complete(PROMPT)
    assert "red" in response.text.lower() and response.raw["object"] == "text_completion"
    pieces = list(llm.stream_complete(PROMPT))
    assert pieces[-1].text == response.text and "".join(p.delta for p in pieces) == response.text


def test_chat_and_stream_chat(llm: Any) -> None:
    messages = [ChatMessage(role="user", content="What color is the sky?")]
    reply = llm.chat(messages)
    assert reply.message.role.value == "assistant" and reply.message.content
    streamed = list(llm.stream_chat(messages))
    assert streamed[-1].message.content == reply.message.content


def test_structured_output_through_a_grammar(llm: Any) -> None:
    """LlamaCPP is not a function-calling LLM; llama-cpp-python users constrain it with a grammar instead."""
    from llama_cpp import LlamaGrammar
    from pydantic import BaseModel, Field

    class Color(BaseModel):
        name: str = Field(max_length=12)

    llm.generate_kwargs["grammar"] = LlamaGrammar.from_json_schema(Color.model_json_schema())
    llm.generate_kwargs["max_tokens"] = 40
    try:
        response = llm.complete("Name one primary color as JSON: ")
    finally:
        del llm.generate_kwargs["grammar"]
        llm.generate_kwargs["max_tokens"] = 16
    assert response.raw["choices"][0]["finish_reason"] == "stop"
    assert isinstance(Color.model_validate_json(response.text), Color)
