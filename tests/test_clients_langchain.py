"""LangChain's llama.cpp classes (langchain_community, unchanged from PyPI) on llamarcp via install_as_llama_cpp().

`LlamaCpp` (text), `ChatLlamaCpp` (chat, tools, structured output) and `LlamaCppEmbeddings`, on gemma-3-270m.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llamarcp

pytestmark = pytest.mark.slow

llamarcp.install_as_llama_cpp()  # before LangChain imports llama_cpp

from langchain_community.chat_models import ChatLlamaCpp  # noqa: E402
from langchain_community.embeddings import LlamaCppEmbeddings  # noqa: E402
from langchain_community.llms import LlamaCpp  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

PROMPT = "The three primary colors are"


@pytest.fixture(scope="module")
def llm(default_model_path: Path) -> Iterator[Any]:
    model = LlamaCpp(model_path=str(default_model_path), n_ctx=512, temperature=0, max_tokens=16, verbose=False)
    yield model
    model.client.close()


@pytest.fixture(scope="module")
def chat(default_model_path: Path) -> Iterator[Any]:
    model = ChatLlamaCpp(model_path=str(default_model_path), n_ctx=1024, temperature=0, max_tokens=48, verbose=False)
    yield model
    model.client.close()


def test_llm_invoke_and_stream_agree(llm: Any) -> None:
    text = llm.invoke(PROMPT)
    assert isinstance(text, str) and "red" in text.lower()
    assert "".join(llm.stream(PROMPT)) == text
    assert llm.get_num_tokens(PROMPT) == len(llm.client.tokenize(PROMPT.encode()))


def test_llm_stop_and_grammar(default_model_path: Path) -> None:
    model = LlamaCpp(
        model_path=str(default_model_path),
        n_ctx=512,
        temperature=0,
        max_tokens=40,
        verbose=False,
        grammar='root ::= "yes" | "no"',
    )
    try:
        assert model.invoke("Is the sky blue? Answer:") in ("yes", "no")
    finally:
        model.client.close()


def test_chat_invoke_and_stream(chat: Any) -> None:
    messages = [SystemMessage("Answer in one short sentence."), HumanMessage("What color is the sky?")]
    reply = chat.invoke(messages)
    assert isinstance(reply, AIMessage) and isinstance(reply.content, str) and reply.content.strip()
    chunks = list(chat.stream(messages))
    assert "".join(str(c.content) for c in chunks) == reply.content


def test_chat_tool_call(chat: Any) -> None:
    @tool
    def get_weather(city: str) -> str:
        """Weather report for a city."""
        return "sunny"

    bound = chat.bind_tools([get_weather], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    reply = bound.invoke("What is the weather in Paris?")
    (call,) = reply.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)


def test_chat_structured_output(chat: Any) -> None:
    class Person(BaseModel):
        name: str = Field(description="the person's first name")
        age: int

    person = chat.with_structured_output(Person).invoke("Alice is 30 years old. Extract the person.")
    assert isinstance(person, Person) and isinstance(person.age, int)


def test_embeddings(default_model_path: Path) -> None:
    embedder = LlamaCppEmbeddings(model_path=str(default_model_path), n_ctx=512, verbose=False)
    try:
        docs = embedder.embed_documents(["red apple", "green pear"])
        query = embedder.embed_query("red apple")
        n_embd = embedder.client.n_embd
    finally:
        embedder.client.close()
    assert docs and all(isinstance(v, float) for v in query)
    assert len(query) == len(docs[0]) == n_embd
    json.dumps(docs)  # plain floats all the way down
