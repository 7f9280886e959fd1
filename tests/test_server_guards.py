"""No request kills the server or its connection: hostile inputs get 4xx JSON errors, bodies are bounded while
they stream in, idle connections are closed, clients that leave stop their work, and with an API key only the
bare liveness answer is public (llamarcp.server.guards, llamarcp.server.auth and llamarcp.server.connections)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server import CHAT, Server, _error, start_server

from llamarcp.server import guards
from llamarcp.server.embedding_batch import EMBED_ROUND

KEY = "sk-guard"
MAX_BODY = 1024 * 1024
TIMEOUT_KEEP_ALIVE = 1.0


@pytest.fixture(scope="module")
def guarded(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("guarded")
    args = ["--model", str(tiny_model_path), "--alias", "tiny", "-t", "1", "-c", "2048", "--n-predict", "7"]
    args += ["--max-body-bytes", str(MAX_BODY), "--timeout-keep-alive", str(TIMEOUT_KEEP_ALIVE)]
    yield from start_server(tmp, *args, api_key=KEY)


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": [value]}
    return value


def _nested_json(depth: int) -> str:
    """JSON nested `depth` levels (json.dumps itself would hit the recursion limit)."""
    return '{"a": [' * depth + '"x"' + "]}" * depth


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/v1/completions", {"prompt": "x", "top_k": 2**31}, "top_k"),
        ("/v1/completions", {"prompt": "x", "top_k": 2**64}, "top_k"),
        ("/v1/chat/completions", {"messages": CHAT, "top_k": 2**31}, "top_k"),
        ("/v1/completions", {"prompt": "x", "min_tokens": 2**40}, "min_tokens"),
        ("/v1/completions", {"prompt": "x", "seed": 2**80, "max_tokens": 2}, "seed must fit in 32 bits"),
        ("/v1/completions", {"prompt": "x", "seed": 2**32 - 1, "max_tokens": 2}, None),
        ("/v1/completions", {"prompt": [2**40]}, "outside the vocab"),
        ("/v1/completions", {"prompt": "x", "logit_bias": {"99999999": 1}}, "logit_bias"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": _nested(450)}]}, "nested deeper"),
        ("/v1/chat/completions", {"messages": CHAT, "tools": [_nested(200)]}, "nested deeper"),
        ("/v1/embeddings", {"input": [[2**40]]}, "outside the vocab"),
        ("/extras/tokenize", {"input": _nested(300)}, "nested deeper"),
    ],
)
def test_hostile_values_are_4xx(guarded: Server, path: str, body: Any, fragment: str | None) -> None:
    response = guarded.post(path, body)
    if fragment is None:
        assert response.status_code == 200, response.text
    else:
        assert fragment in _error(response, 400)["message"]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_are_400(guarded: Server, literal: bytes) -> None:
    body = b'{"prompt": "x", "temperature": ' + literal + b"}"
    response = httpx.post(
        guarded.url + "/v1/completions",
        content=body,
        headers={**guarded.headers(), "content-type": "application/json"},
        timeout=30,
    )
    assert "finite" in _error(response, 400)["message"]


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/completions", b"null"),
        ("/v1/completions", b"[]"),
        ("/v1/chat/completions", b"123"),
        ("/v1/completions", b'{"prompt": "x", "top_k": 1e999}'),
        ("/v1/completions", b'{"prompt": "x", "top_k": ' + b"9" * 5000 + b"}"),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}"),
        ("/v1/completions", b"\xff\xfe{"),
        ("/v1/completions", b'{"prompt": "broken \\ud800 text", "max_tokens": 2}'),
        ("/extras/tokenize", b'{"input": "broken \\udfff"}'),
        ("/v1/embeddings", b'{"input": ["\\ud800"]}'),
        ("/v1/completions", b'{"prompt": "x", "stop": [' + b'"a",' * 5000 + b'"a"]}'),
        ("/v1/completions", b'{"prompt": "x", "stop": "' + b"a" * 5000 + b'"}'),
    ],
)
def test_malformed_bodies_are_4xx(guarded: Server, path: str, raw: bytes) -> None:
    headers = {**guarded.headers(), "content-type": "application/json"}
    response = httpx.post(guarded.url + path, content=raw, headers=headers, timeout=30)
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) == {"error"}


def test_errors_keep_the_keep_alive_connection(guarded: Server) -> None:
    host, port = guarded.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {**guarded.headers(), "content-type": "application/json"}
    bodies = [
        b"{",
        ('{"messages": [{"role": "user", "content": ' + _nested_json(900) + "}]}").encode(),
        json.dumps({"prompt": "x", "top_k": 2**31}).encode(),
        json.dumps({"messages": []}).encode(),
        json.dumps({"prompt": "x", "tfs_z": 1}).encode(),
        json.dumps({"prompt": "x", "max_tokens": 2}).encode(),
    ]
    local = None
    statuses = []
    for path, body in zip(["/v1/chat/completions", "/v1/chat/completions", "/v1/completions"] * 2, bodies):
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        statuses.append(response.status)
        assert set(json.loads(response.read())) in ({"error"}, {"id", "object", "created", "model", "choices", "usage"})
        assert response.getheader("connection", "keep-alive").lower() != "close"
        now = conn.sock.getsockname()
        assert local in (None, now), "the server closed the connection after an error"
        local = now
    assert statuses == [400, 400, 400, 400, 400, 200]
    conn.close()


def test_declared_and_streamed_bodies_over_the_limit_are_413(guarded: Server) -> None:
    headers = {**guarded.headers(), "content-type": "application/json"}
    big = json.dumps({"prompt": "x" * (MAX_BODY + 10)}).encode()
    declared = httpx.post(guarded.url + "/v1/completions", content=big, headers=headers, timeout=60)
    assert "larger than" in _error(declared, 413)["message"]

    sent = 0

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        nonlocal sent
        yield b'{"prompt": "'
        for _ in range(3 * MAX_BODY // 65536):
            sent += 65536
            yield b"x" * 65536
        yield b'"}'

    streamed = httpx.post(guarded.url + "/v1/completions", content=chunks(), headers=headers, timeout=60)
    assert "larger than" in _error(streamed, 413)["message"]
    assert guarded.health()["status"] == "ok"
    # Just under the limit, streamed, is fine.
    small = json.dumps({"prompt": "x", "max_tokens": 2}).encode()
    ok = httpx.post(guarded.url + "/v1/completions", content=iter([small[:5], small[5:]]), headers=headers, timeout=60)
    assert ok.status_code == 200


def test_idle_and_slow_connections_are_closed(guarded: Server) -> None:
    host, port = guarded.url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=30) for _ in range(20)]
    slow = socket.create_connection((host, int(port)), timeout=30)
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    used = socket.create_connection((host, int(port)), timeout=30)
    used.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while chunk := used.recv(65536):  # the response, then EOF once the connection sat idle after it
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"status":"ok"}')
    for sock in [*idle, slow]:
        assert sock.recv(1) == b"", "the server kept an idle connection open"  # EOF: closed by the server
        sock.close()
    used.close()
    assert guarded.health()["status"] == "ok"


def test_max_tokens_null_has_a_bound(guarded: Server) -> None:
    client = guarded.client()
    for max_tokens in (None, 1000):
        result = client.chat.completions.create(
            model="tiny",
            messages=CHAT,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            logit_bias={"2": -100},
        )
        assert result.usage is not None and result.usage.completion_tokens == 7  # --n-predict 7
        assert result.choices[0].finish_reason == "length"
    raw = guarded.post("/v1/completions", {"prompt": "x", "max_tokens": None, "logit_bias": {"2": -100}}).json()
    assert raw["usage"]["completion_tokens"] == 7


def test_api_key_guards_docs_and_health_details(guarded: Server) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/v1/models"):
        assert _error(httpx.get(guarded.url + path, timeout=30), 401)["code"] == "invalid_api_key"
        assert httpx.get(guarded.url + path, headers=guarded.headers(), timeout=30).status_code == 200
    public = httpx.get(guarded.url + "/health", timeout=30)
    assert public.status_code == 200 and public.json() == {"status": "ok"}  # the one public probe
    wrong = httpx.get(guarded.url + "/health", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.json() == {"status": "ok"}
    detailed = guarded.health()
    assert detailed["model"] == "tiny" and "queue" in detailed and "tiny" in detailed["models"]
    schema = httpx.get(guarded.url + "/openapi.json", headers=guarded.headers(), timeout=30).json()
    assert "/extras/tokenize" in schema["paths"]


def test_embedding_stops_when_the_client_leaves(guarded: Server) -> None:
    texts = [f"text number {i} " + "word " * 60 for i in range(2500)]  # ~16 ms each on the tiny model, < 1 MiB
    before = guarded.wait_idle()["models"]["tiny"]["queue"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(guarded.url + "/v1/embeddings", json={"input": texts}, headers=guarded.headers(), timeout=0.5)
    after = guarded.wait_idle(timeout=120)["models"]["tiny"]["queue"]
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["served"] == before["served"]
    done = after["embedded_inputs"] - before["embedded_inputs"]
    assert done < len(texts), f"all {done} inputs were embedded after the client left"
    # The model is fine afterwards (an abort that found nothing to stop was withdrawn).
    vector = guarded.client().embeddings.create(model="tiny", input="hello").data[0].embedding
    assert len(vector) == 64


def test_embedding_of_long_inputs_stops_when_the_client_leaves(guarded: Server) -> None:
    """Minutes of embedding work (many groups of 512-token inputs): the client leaves, the work stops early.

    Between groups `should_stop()` ends it, inside a group `Llama.abort()` (tests/test_embeddings.py tests that
    one alone). The work is far longer than any disconnect detection, so a busy machine cannot make it pass
    or fail by timing."""
    n_inputs = EMBED_ROUND * 16  # 768 KiB: under the 1 MiB body limit
    texts = ["word " * 600] * n_inputs
    before = guarded.wait_idle()["models"]["tiny"]["queue"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(guarded.url + "/v1/embeddings", json={"input": texts}, headers=guarded.headers(), timeout=0.3)
    after = guarded.wait_idle(timeout=300)["models"]["tiny"]["queue"]
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["embedded_inputs"] - before["embedded_inputs"] < n_inputs, "the work ran to its end"


# --- the guards as plain ASGI apps ------------------------------------------------------------------------------


def _call(app: Any, messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]] | None = None) -> list[Any]:
    sent: list[Any] = []

    async def receive() -> Any:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers or []}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    return sent


def test_catch_all_answers_json_500_and_does_not_re_raise() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise KeyError("bug")

    sent = _call(guards.CatchAll(broken), [{"type": "http.request", "body": b"", "more_body": False}])
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"])["error"]["message"] == "internal error (KeyError)"


def test_request_guard_stops_reading_a_streamed_body_at_the_limit() -> None:
    called = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    parts = [{"type": "http.request", "body": b"x" * 1000, "more_body": True} for _ in range(100)]
    guard = guards.RequestGuard(app, max_bytes=4500, timeout=30, max_depth=10)
    sent = _call(guard, parts)
    assert sent[0]["status"] == 413 and (b"connection", b"close") in sent[0]["headers"]
    assert not called and len(parts) == 95  # read 5 parts (5000 bytes > 4500), left the rest unread


def test_request_guard_times_out_a_slow_body() -> None:
    guard = guards.RequestGuard(lambda *a: None, max_bytes=10_000, timeout=0.2, max_depth=10)
    sent = _call(guard, [{"type": "http.request", "body": b"{", "more_body": True}])
    assert sent[0]["status"] == 408


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b"{}", 1),
        (b'{"a": [1, {"b": "[[[[not counted"}]}', 3),
        (b'["\\"[[[", [[]]]', 3),
        (b"[" * 50 + b"]" * 50, 50),
        (b'{"messages": [', 2),
    ],
)
def test_json_depth(body: bytes, depth: int) -> None:
    assert guards.json_depth(body) == depth
