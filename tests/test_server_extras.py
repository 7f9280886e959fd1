"""llama-cpp-python's /extras endpoints and request fields on llamarcp's server: tokenize, count, detokenize,
min_tokens, mirostat, logit_bias_type, and a 400 naming every field the server does not implement."""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from test_server import CHAT, LONG, NO_EOS, Server, _error, start_server

from llamarcp.errors import LlamaError
from llamarcp.server.runner import ServerOverloaded

EOS_LIKELY = {"2": 100.0}  # the tiny vocab's EOS, pushed so it would end generation at once


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("extras")
    yield from start_server(tmp, "--model", str(tiny_model_path), "--alias", "tiny", "-t", "1", "-c", "1024")


def test_tokenize_count_detokenize(server: Server, tiny_llama: Any) -> None:
    text = "Hello world, <s> once more"
    expected = tiny_llama.tokenize(text.encode(), add_bos=True, special=True)
    tokens = server.post("/extras/tokenize", {"input": text}).json()
    assert tokens == {"tokens": expected}
    assert server.post("/extras/tokenize/count", {"input": text, "model": "any"}).json() == {"count": len(expected)}
    back = server.post("/extras/detokenize", {"tokens": expected}).json()
    assert back == {"text": tiny_llama.detokenize(expected).decode()}
    assert back["text"].startswith("Hello world")
    assert server.post("/extras/detokenize", {"tokens": []}).json() == {"text": ""}


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/extras/tokenize", {}, "input"),
        ("/extras/tokenize", {"input": 5}, "input"),
        ("/extras/tokenize/count", {"input": "x", "add_bos": False}, "'add_bos' is not supported"),
        ("/extras/detokenize", {"tokens": [10**9]}, "outside the vocab"),
        ("/extras/detokenize", {"tokens": [2**70]}, "outside the vocab"),
        ("/extras/detokenize", {"tokens": [-1]}, "outside the vocab"),
        ("/extras/detokenize", {"tokens": "abc"}, "tokens"),
    ],
)
def test_extras_bad_requests(server: Server, path: str, body: dict[str, Any], fragment: str) -> None:
    assert fragment in _error(server.post(path, body), 400)["message"]


def test_min_tokens(server: Server) -> None:
    client = server.client()
    plain = client.completions.create(model="x", prompt="Hi", max_tokens=20, logit_bias=EOS_LIKELY, seed=1)
    assert plain.usage is not None and plain.usage.completion_tokens == 0 and plain.choices[0].finish_reason == "stop"
    held = client.completions.create(
        model="x", prompt="Hi", max_tokens=20, logit_bias=EOS_LIKELY, seed=1, extra_body={"min_tokens": 5}
    )
    assert held.usage is not None and held.usage.completion_tokens == 5  # then EOS is allowed and wins
    assert held.choices[0].finish_reason == "stop"
    chat = server.post(
        "/v1/chat/completions",
        {"messages": CHAT, "max_tokens": 20, "logit_bias": EOS_LIKELY, "min_tokens": 3, "seed": 1},
    ).json()
    assert chat["usage"]["completion_tokens"] >= 3


def test_mirostat_is_honoured(server: Server) -> None:
    client = server.client()
    greedy = client.completions.create(model="x", prompt="Once upon", max_tokens=12, temperature=0).choices[0].text
    # Mirostat v2 with target surprise 0 keeps only the most likely token each step: the greedy answer.
    miro = client.completions.create(
        model="x",
        prompt="Once upon",
        max_tokens=12,
        temperature=1.0,
        seed=3,
        extra_body={"mirostat_mode": 2, "mirostat_tau": 0.0, "mirostat_eta": 0.1},
    )
    assert miro.choices[0].text == greedy
    sampled = client.completions.create(model="x", prompt="Once upon", max_tokens=12, temperature=1.5, seed=3)
    assert sampled.choices[0].text != greedy  # the same settings without mirostat do sample
    v1 = server.post("/v1/completions", {"prompt": "Once upon", "max_tokens": 6, "seed": 3, "mirostat_mode": 1}).json()
    assert v1["usage"]["completion_tokens"] > 0


def test_logit_bias_type_tokens(server: Server, tiny_llama: Any) -> None:
    body = {"prompt": "x", "max_tokens": 6, "temperature": 0, "logit_bias": {" cat": 100}, "logit_bias_type": "tokens"}
    text = server.post("/v1/completions", body).json()["choices"][0]["text"]
    pieces = tiny_llama.tokenize(b" cat", add_bos=False, special=True)
    allowed = {tiny_llama.detokenize([t]).decode() for t in pieces}
    assert text and set(text.split()) <= {p.strip() for p in allowed}
    ids = server.post("/v1/completions", dict(body, logit_bias={str(pieces[-1]): 100}, logit_bias_type=None)).json()
    assert ids["choices"][0]["text"].split()[0] == tiny_llama.detokenize([pieces[-1]]).decode().strip()


@pytest.mark.parametrize(
    ("path", "extra", "field"),
    [
        ("/v1/completions", {"tfs_z": 0.5}, "tfs_z"),
        ("/v1/completions", {"n_keep": 4}, "n_keep"),
        ("/v1/chat/completions", {"top_a": 0.1}, "top_a"),
        ("/v1/chat/completions", {"dry_multiplier": 0.8}, "dry_multiplier"),
        ("/v1/chat/completions", {"repeat_last_n": 64}, "repeat_last_n"),
        ("/v1/embeddings", {"truncate": False}, "truncate"),
    ],
)
def test_unsupported_fields_are_refused_by_name(server: Server, path: str, extra: dict[str, Any], field: str) -> None:
    body: dict[str, Any] = {"prompt": "x"} if path == "/v1/completions" else {"messages": CHAT}
    if path == "/v1/embeddings":
        body = {"input": "x"}
    error = _error(server.post(path, {**body, **extra}), 400)
    assert error["param"] == field and error["code"] == "unsupported_parameter"
    assert f"'{field}' is not supported" in error["message"]


def test_unsupported_field_through_the_openai_client(server: Server) -> None:
    with pytest.raises(openai.BadRequestError, match="'tfs_z' is not supported"):
        server.client().chat.completions.create(
            model="x",
            messages=CHAT,  # type: ignore[arg-type]
            max_tokens=2,
            extra_body={"tfs_z": 0.9},
        )
    # Metadata fields change nothing and are accepted (OpenAI clients send them).
    result = server.client().chat.completions.create(
        model="x",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=2,
        user="someone",
        metadata={"k": "v"},
        extra_body={"parallel_tool_calls": False},
    )
    assert result.choices[0].message.content is not None


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"mirostat_mode": 3}, "mirostat_mode"),
        ({"mirostat_tau": 11}, "mirostat_tau"),
        ({"mirostat_eta": 0}, "mirostat_eta"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"logit_bias_type": "words"}, "logit_bias_type"),
        ({"best_of": 2}, "best_of"),
    ],
)
def test_llama_cpp_python_fields_are_validated(server: Server, body: dict[str, Any], fragment: str) -> None:
    assert fragment in _error(server.post("/v1/completions", {"prompt": "x", **body}), 400)["message"]


def test_interrupt_requests(tiny_model_path: Path, tmp_path: Path) -> None:
    # llama-cpp-python's --interrupt_requests: a stream ends (with [DONE]) once another request waits.
    # One slot, so the second request waits (with --parallel it would run beside the stream).
    args = ["--model", str(tiny_model_path), "-t", "1", "-c", "4096", "--interrupt_requests", "true", "-np", "1"]
    with contextlib.contextmanager(start_server)(tmp_path, *args) as server:
        url = server.url + "/v1/completions"
        body = {"prompt": "long", "max_tokens": LONG, "stream": True, "logit_bias": NO_EOS}
        events: list[str] = []
        with httpx.stream("POST", url, json=body, timeout=60) as running:
            lines = (line for line in running.iter_lines() if line.startswith("data: "))
            events.append(next(lines))
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                other = pool.submit(httpx.post, url, json={"prompt": "y", "max_tokens": 3}, timeout=60)
                events.extend(lines)  # ends early: the waiting request interrupts it
                answer = other.result(timeout=60)
        assert events[-1] == "data: [DONE]" and len(events) < LONG / 2
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] > 0


def test_overload_error_is_a_llama_error() -> None:
    assert issubclass(ServerOverloaded, LlamaError)


def test_null_fields_mean_their_default(server: Server) -> None:
    body = {"prompt": "Once", "max_tokens": 5, "temperature": 0}
    nulls = {k: None for k in ("top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repeat_penalty")}
    nulls.update(mirostat_mode=None, min_tokens=None, n=None, stream=None, echo=None, best_of=None, seed=None)
    plain = server.post("/v1/completions", body).json()
    with_nulls = server.post("/v1/completions", {**body, **nulls}).json()
    assert with_nulls["choices"][0]["text"] == plain["choices"][0]["text"]
    chat = {"messages": CHAT, "max_tokens": 2, "temperature": None, "logprobs": None, "reasoning_format": None}
    assert server.post("/v1/chat/completions", chat).status_code == 200


def test_in_process_app_serves_a_callers_llama(tiny_llama: Any) -> None:
    # create_app(settings, llama): the caller's Llama is the default model and stays open afterwards.
    from fastapi.testclient import TestClient

    from llamarcp.server import ServerSettings, create_app

    settings = ServerSettings(model_alias="mine", disable_ping_events=True, api_key="k")
    with TestClient(create_app(settings, llama=tiny_llama), root_path="/proxy") as client:
        headers = {"Authorization": "Bearer k"}
        assert client.get("/v1/models", headers=headers).json()["data"][0]["id"] == "mine"
        assert client.get("/openapi.json", headers=headers).json()["servers"] == [{"url": "/proxy"}]
        body = {"prompt": "Hi", "max_tokens": 3, "temperature": 0, "stream": True}
        with client.stream("POST", "/v1/completions", json=body, headers=headers) as response:
            lines = [line for line in response.iter_lines() if line]
        assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert not tiny_llama.closed and tiny_llama("Hi", max_tokens=2)["choices"][0]["text"] is not None
