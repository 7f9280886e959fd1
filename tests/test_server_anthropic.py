"""Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`) driven by the official `anthropic` client:
plain and streamed answers, forced tool use and a tool_result round trip, token counting, and bad requests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from test_server import Server, _error, start_server

KEY = "anthropic-key"
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["C", "F"]}},
        "required": ["city", "unit"],
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("anthropic")
    yield from start_server(
        tmp, "--model", str(tiny_model_path), "--alias", "tiny", "-t", "1", "-c", "2048", api_key=KEY
    )


@pytest.fixture()
def client(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)  # sends X-Api-Key


def test_message_and_its_token_count(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="tiny",
        max_tokens=16,
        system="You answer briefly.",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}],
        extra_body={"ignore_eos": True, "temperature": 0},
    )
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.stop_reason == "max_tokens"  # ignore_eos: the full budget is used
    assert message.usage.output_tokens == 16
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text  # type: ignore[union-attr]
    count = client.messages.count_tokens(
        model="tiny",
        system="You answer briefly.",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}],
    )
    assert count.input_tokens == message.usage.input_tokens > 5


def test_stream_equals_the_plain_answer(client: anthropic.Anthropic) -> None:
    args: dict[str, Any] = dict(
        model="tiny", max_tokens=20, messages=ASK, extra_body={"ignore_eos": True, "temperature": 0}
    )
    plain = client.messages.create(**args)
    with client.messages.stream(**args) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == plain.content[0].text  # type: ignore[union-attr]
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 20 and final.usage.input_tokens == plain.usage.input_tokens
    # The raw event sequence, as Anthropic documents it.
    kinds = [event.type for event in client.messages.create(**args, stream=True)]
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}


def test_forced_tool_use_and_tool_result_round_trip(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="tiny",
        max_tokens=128,
        messages=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body={"seed": 3},
    )
    assert message.stop_reason == "tool_use"
    calls = [block for block in message.content if block.type == "tool_use"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather" and call.id
    assert isinstance(call.input["city"], str) and call.input["unit"] in ("C", "F")  # type: ignore[index]
    with client.messages.stream(
        model="tiny",
        max_tokens=128,
        messages=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body={"seed": 3},
    ) as stream:
        streamed = stream.get_final_message()
    streamed_call = next(block for block in streamed.content if block.type == "tool_use")
    assert streamed.stop_reason == "tool_use"
    assert streamed_call.input == call.input and streamed_call.name == call.name
    follow_up = client.messages.create(
        model="tiny",
        max_tokens=8,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            *ASK,
            {"role": "assistant", "content": [call.model_dump()]},  # type: ignore[list-item]
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees, sunny"}],
            },
        ],
        extra_body={"chat_template_kwargs": {"unused_variable": 1}, "reasoning_format": "none"},
    )
    assert follow_up.usage.input_tokens > message.usage.input_tokens


def test_thinking_switch_is_accepted(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="tiny", max_tokens=4, messages=ASK, thinking={"type": "disabled"}, extra_body={"top_k": 1}
    )
    assert message.usage.output_tokens <= 4


def test_structured_output(client: anthropic.Anthropic) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    message = client.messages.create(
        model="tiny",
        max_tokens=64,
        messages=ASK,
        output_config={"format": {"type": "json_schema", "schema": schema}},
        extra_body={"seed": 1},
    )
    assert isinstance(json.loads(message.content[0].text)["ok"], bool)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 4, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        (
            {
                "max_tokens": 4,
                "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "x"}}]}],
            },
            "messages[0].content[0]",
        ),
        ({"max_tokens": 4, "messages": []}, "messages"),
        ({"messages": ASK}, "max_tokens"),
        ({"max_tokens": 0, "messages": ASK}, "max_tokens"),
        ({"max_tokens": 4, "messages": ASK, "temperature": 7}, "temperature"),
        ({"max_tokens": 4, "messages": ASK, "frequency_penalty": 1}, "frequency_penalty"),
        ({"max_tokens": 4, "messages": ASK, "tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({"max_tokens": 4, "messages": ASK, "tools": [{"type": "web_search_20250305"}]}, "tools[0]"),
        ({"max_tokens": 4, "messages": ASK, "id_slot": 99}, "id_slot"),
        ({"max_tokens": 4, "messages": ASK, "system": [{"type": "image"}]}, "system"),
        ({"max_tokens": 4, "messages": ASK, "output_config": {"format": {"type": "regex"}}}, "output_config.format"),
        ({"max_tokens": 4, "messages": ASK, "tools": [WEATHER] * 200}, "tools"),
    ],
)
def test_bad_requests_name_the_field(server: Server, body: dict[str, Any], param: str) -> None:
    response = httpx.post(server.url + "/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=30)
    error = _error(response, 400)
    assert error["param"] == param or param in error["message"], error


def test_key_is_required(server: Server) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = httpx.post(server.url + path, json={"max_tokens": 4, "messages": ASK}, timeout=30)
        assert _error(response, 401)["code"] == "invalid_api_key"
    wrong = anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model="tiny", max_tokens=4, messages=ASK)  # type: ignore[arg-type]
    assert server.health()["status"] == "ok"
