"""`n` choices on /v1/completions and /v1/chat/completions (llamarcp.server.routes_generation and the `n`
pass-through of llamarcp.chat.completion): choice i samples with seed + i, so it equals a single request with
that seed; streamed chunks carry each choice's index."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server import CHAT, NO_EOS, Server, start_server


@pytest.fixture(scope="module", params=["1", "4"], ids=["one-slot", "parallel"])
def server(
    request: pytest.FixtureRequest, tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    args = ["--model", str(tiny_model_path), "--alias", "tiny", "-t", "1", "-c", "1024", "--parallel", request.param]
    yield from start_server(tmp_path_factory.mktemp("choices"), *args)


#: Sampled among the 3 likeliest tokens: seeds give different choices, while the last-bit differences llama.cpp's
#: kernels make between batch shapes (a prefix reused from the cache) cannot tip a draw over the whole vocabulary.
SAMPLED = {"temperature": 1.0, "top_k": 3, "top_p": 1.0, "min_p": 0.0, "seed": 11, "logit_bias": NO_EOS}


def _streamed(server: Server, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", server.url + path, json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_completion_choices_equal_single_requests_with_seed_plus_i(server: Server) -> None:
    body = {"model": "tiny", "prompt": "Once upon", "max_tokens": 10, **SAMPLED}
    many = server.post("/v1/completions", {**body, "n": 3}).json()
    assert [c["index"] for c in many["choices"]] == [0, 1, 2]
    assert many["usage"]["completion_tokens"] == 30
    singles = [server.post("/v1/completions", {**body, "seed": 11 + i}).json() for i in range(3)]
    assert [c["text"] for c in many["choices"]] == [s["choices"][0]["text"] for s in singles]
    assert len({c["text"] for c in many["choices"]}) > 1  # different seeds: different samples

    chunks = _streamed(server, "/v1/completions", {**body, "n": 3})
    texts = ["", "", ""]
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["text"]
    assert texts == [c["text"] for c in many["choices"]]


def test_chat_choices_plain_and_streamed(server: Server) -> None:
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 8, **SAMPLED}
    many = server.post("/v1/chat/completions", {**body, "n": 2}).json()
    assert [c["index"] for c in many["choices"]] == [0, 1]
    assert all(c["finish_reason"] == "length" for c in many["choices"])
    singles = [server.post("/v1/chat/completions", {**body, "seed": 11 + i}).json() for i in range(2)]
    contents = [c["message"]["content"] for c in many["choices"]]
    assert contents == [s["choices"][0]["message"]["content"] for s in singles]

    chunks = _streamed(server, "/v1/chat/completions", {**body, "n": 2})
    assert len({c["id"] for c in chunks}) == 1  # one completion, several choices
    streamed = ["", ""]
    finishes: list[Any] = [None, None]
    for chunk in chunks:
        choice = chunk["choices"][0]
        streamed[choice["index"]] += choice["delta"].get("content") or ""
        finishes[choice["index"]] = choice["finish_reason"] or finishes[choice["index"]]
    assert streamed == contents and finishes == ["length", "length"]


def test_greedy_choices_are_equal(server: Server) -> None:
    body = {"model": "tiny", "prompt": "same", "max_tokens": 6, "temperature": 0, "n": 4, "logit_bias": NO_EOS}
    choices = server.post("/v1/completions", body).json()["choices"]
    assert len(choices) == 4 and len({c["text"] for c in choices}) == 1
