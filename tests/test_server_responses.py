"""OpenAI's Responses API (`/v1/responses`, `/v1/responses/input_tokens`) driven by the official `openai` client:
plain and streamed (typed events, the client's stream helper), function calls and their outputs, structured
text, token counting, and bad requests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from test_server import Server, _error, start_server

KEY = "responses-key"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["C", "F"]}},
        "required": ["city", "unit"],
    },
}
OK_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("responses")
    yield from start_server(
        tmp, "--model", str(tiny_model_path), "--alias", "tiny", "-t", "1", "-c", "2048", api_key=KEY
    )


@pytest.fixture()
def client(server: Server) -> openai.OpenAI:
    return server.client()


def test_plain_response_and_its_input_tokens(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="tiny",
        instructions="Answer briefly.",
        input="Say hello",
        max_output_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 12
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text
    count = client.responses.input_tokens.count(model="tiny", instructions="Answer briefly.", input="Say hello")
    assert count.input_tokens == response.usage.input_tokens > 3


def test_stream_events_and_text_match_the_plain_answer(client: openai.OpenAI) -> None:
    args: dict[str, Any] = dict(
        model="tiny", input="Count to three", max_output_tokens=16, temperature=0, extra_body={"ignore_eos": True}
    )
    plain = client.responses.create(**args)
    events = list(client.responses.create(**args, stream=True))
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert deltas == plain.output_text
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == plain.output_text and final.usage.output_tokens == 16


def test_stream_helper_with_structured_text(client: openai.OpenAI) -> None:
    text = {"format": {"type": "json_schema", "name": "ok", "schema": OK_SCHEMA}}
    with client.responses.stream(
        model="tiny", input="Is it ok?", max_output_tokens=64, text=text, extra_body={"seed": 2}
    ) as stream:  # type: ignore[arg-type]
        final = stream.get_final_response()
    assert final.status == "completed"
    assert isinstance(json.loads(final.output_text)["ok"], bool)


def test_function_call_and_its_output(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="tiny",
        input="What is the weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=128,
        extra_body={"seed": 3},
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    arguments = json.loads(call.arguments)
    assert call.name == "get_weather" and arguments["unit"] in ("C", "F") and call.call_id
    streamed = list(
        client.responses.create(
            model="tiny",
            input="What is the weather in Paris?",
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "function", "name": "get_weather"},
            max_output_tokens=128,
            extra_body={"seed": 3},
            stream=True,
        )
    )
    done = [e.item for e in streamed if e.type == "response.output_item.done"]  # type: ignore[union-attr]
    assert [item.type for item in done] == ["function_call"]
    assert json.loads(done[0].arguments) == arguments
    follow_up = client.responses.create(
        model="tiny",
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
        max_output_tokens=4,
    )
    assert follow_up.usage is not None and response.usage is not None
    assert follow_up.usage.input_tokens > response.usage.input_tokens


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content"),
        ({"input": [{"type": "web_search_call"}]}, "input[0].type"),
        ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"input": "x", "tool_choice": {"type": "mcp"}}, "tool_choice"),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "temperature": -1}, "temperature"),
        ({"input": "x", "reasoning": {"effort": "enormous"}}, "reasoning.effort"),
        ({"input": "x", "truncation": "auto"}, "truncation"),
        ({"input": "x", "logit_bias": {}}, "logit_bias"),
    ],
)
def test_bad_requests_name_the_field(server: Server, body: dict[str, Any], param: str) -> None:
    error = _error(server.post("/v1/responses", body), 400)
    assert error["param"] == param or param in error["message"], error


def test_key_and_alias_route(server: Server) -> None:
    response = httpx.post(server.url + "/v1/responses", json={"input": "x"}, timeout=30)
    assert _error(response, 401)["code"] == "invalid_api_key"
    alias = server.post("/responses", {"input": "x", "max_output_tokens": 2})
    assert alias.status_code == 200 and alias.json()["object"] == "response"
