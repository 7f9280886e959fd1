"""The `chatml-function-calling` handler (llamarcp.chat.function_calling): grammar-steered tool calls.

On the tiny random model the words are noise, but the structure is the grammar's: a forced call always gives
arguments that parse and match the schema, and an automatic choice gives either a message or valid calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamarcp import Llama
from llamarcp.chat.function_calling import MAX_TOOL_CALLS, chatml_function_calling
from llamarcp.errors import ChatMessageError

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 8}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def llm(tiny_model_path: Path) -> Iterator[Llama]:
    with Llama(str(tiny_model_path), n_ctx=1024, n_threads=1, chat_format="chatml-function-calling") as model:
        yield model


def check_weather_args(arguments: str) -> None:
    args = json.loads(arguments)
    assert set(args) == {"city", "days"} and isinstance(args["days"], int) and len(args["city"]) <= 8


def test_forced_tool_gives_schema_valid_arguments(llm: Llama) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    result = llm.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice=choice, max_tokens=80, seed=1)
    (only,) = result["choices"]
    assert only["finish_reason"] == "tool_calls" and only["message"]["content"] is None
    (call,) = only["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    check_weather_args(call["function"]["arguments"])
    assert only["message"]["function_call"] == call["function"]


def test_forced_tool_streamed(llm: Llama) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    chunks = list(llm.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice=choice, max_tokens=80, stream=True))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    calls = [c for c in chunks if c["choices"][0]["delta"].get("tool_calls")]
    check_weather_args(calls[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"])
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_auto_gives_a_message_or_valid_calls(llm: Llama, seed: int) -> None:
    result = llm.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice="auto", max_tokens=60, seed=seed)
    message = result["choices"][0]["message"]
    if result["choices"][0]["finish_reason"] == "tool_calls":
        assert 1 <= len(message["tool_calls"]) <= MAX_TOOL_CALLS
        for call in message["tool_calls"]:
            assert call["function"]["name"] in ("get_weather", "get_time")
            if call["function"]["name"] == "get_weather":
                check_weather_args(call["function"]["arguments"])
            else:
                assert isinstance(json.loads(call["function"]["arguments"]), dict)
    else:
        assert isinstance(message["content"], str) and "tool_calls" not in message


def test_required_always_calls(llm: Llama) -> None:
    result = llm.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice="required", max_tokens=60, seed=4)
    assert result["choices"][0]["finish_reason"] == "tool_calls"
    assert result["choices"][0]["message"]["tool_calls"]


def test_no_tools_is_a_plain_chatml_answer(llm: Llama) -> None:
    direct: dict[str, Any] = chatml_function_calling(llama=llm, messages=MESSAGES, max_tokens=4, temperature=0)
    assert direct["object"] == "chat.completion" and isinstance(direct["choices"][0]["message"]["content"], str)
    none = llm.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice="none", max_tokens=4, temperature=0)
    assert none["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]


def test_legacy_functions_and_history_with_tool_results(llm: Llama) -> None:
    history = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
    ]
    functions = [t["function"] for t in TOOLS]
    result = llm.create_chat_completion(history, functions=functions, function_call={"name": "get_time"}, max_tokens=20)
    assert result["choices"][0]["message"]["function_call"]["name"] == "get_time"


def test_bad_requests(llm: Llama) -> None:
    with pytest.raises(ChatMessageError, match="not one of the tools"):
        llm.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "x"}})
    with pytest.raises(ChatMessageError, match="tool_choice must be"):
        llm.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice="sometimes")
    with pytest.raises(ChatMessageError, match=r"tools\[0\]"):
        llm.create_chat_completion(MESSAGES, tools=[{"type": "function"}], tool_choice="auto")
