"""llama-cpp-haystack (unchanged from PyPI, installed without its llama-cpp-python requirement) on llamarcp via
install_as_llama_cpp(): `LlamaCppChatGenerator` as its docs use it (run, streaming, generation kwargs, tools),
on gemma-3-270m. Version 3.x has only the chat generator (LlamaCppGenerator was removed).
The component imports `Llava15ChatHandler` from `llama_cpp.llama_chat_format` at import time (issue 23's
handlers).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llamarcp

llamarcp.install_as_llama_cpp()

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def generator(default_model_path: Path) -> Iterator[Any]:
    from haystack_integrations.components.generators.llama_cpp import LlamaCppChatGenerator

    component = LlamaCppChatGenerator(
        model=str(default_model_path),
        n_ctx=1024,
        n_batch=128,
        model_kwargs={"chat_format": "gemma", "verbose": False},
        generation_kwargs={"max_tokens": 16, "temperature": 0.0},
    )
    component.warm_up()
    yield component
    component.close()


def test_run_returns_a_reply(generator: Any) -> None:
    from haystack.dataclasses import ChatMessage

    result = generator.run([ChatMessage.from_system("Be brief."), ChatMessage.from_user("Name a primary color.")])
    reply = result["replies"][0]
    assert reply.role.value == "assistant" and reply.text
    assert reply.meta["finish_reason"] in ("stop", "length") and reply.meta["usage"]["prompt_tokens"] > 0


def test_streaming_callback_sees_every_chunk(generator: Any) -> None:
    from haystack.dataclasses import ChatMessage

    chunks: list[Any] = []
    result = generator.run([ChatMessage.from_user("Count to three.")], streaming_callback=chunks.append)
    assert chunks and "".join(c.content for c in chunks) == result["replies"][0].text


def test_tools_offered_and_generation_kwargs(generator: Any) -> None:
    from haystack.dataclasses import ChatMessage
    from haystack.tools import Tool

    weather = Tool(
        name="get_weather",
        description="Weather of a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        function=lambda city: f"sunny in {city}",
    )
    result = generator.run(
        [ChatMessage.from_user("What is the weather in Paris?")],
        tools=[weather],
        generation_kwargs={"max_tokens": 40},
    )
    reply = result["replies"][0]
    assert reply.text or reply.tool_calls
    for call in reply.tool_calls:
        assert call.tool_name == "get_weather" and isinstance(call.arguments, dict)
