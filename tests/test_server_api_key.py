"""`--api-key` guards every route llama-server's surfaces added (Responses, Anthropic messages, rerank and its
aliases, metrics, slots, props, apply-template, infill, tokenize, detokenize, LoRA adapters): without the key,
or with a wrong one, each answers 401 and does nothing; with it, the same request is served. The route table
of the running app (its OpenAPI schema) is checked too, so a route added later without the key fails here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server import Server, _error, start_server

KEY = "every-route-key"
CHAT = [{"role": "user", "content": "Hi"}]
#: (method, path, body) of each route; the body is one the server serves with the key.
ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/v1/responses", {"model": "tiny", "input": "Hi", "max_output_tokens": 2}),
    ("POST", "/responses", {"model": "tiny", "input": "Hi", "max_output_tokens": 2}),
    ("POST", "/v1/messages", {"model": "tiny", "max_tokens": 2, "messages": CHAT}),
    ("POST", "/v1/messages/count_tokens", {"model": "tiny", "messages": CHAT}),
    ("GET", "/metrics", None),
    ("GET", "/slots", None),
    ("POST", "/slots/0?action=erase", {}),
    ("GET", "/props", None),
    ("POST", "/apply-template", {"messages": CHAT}),
    ("POST", "/tokenize", {"content": "Hi", "with_pieces": True}),
    ("POST", "/detokenize", {"tokens": [1, 2]}),
    ("GET", "/lora-adapters", None),
    ("POST", "/lora-adapters", [{"id": 0, "scale": 0.5}]),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 2, "lora": [{"id": 0, "scale": 1}]}),
]
#: Served with the key only by a reranker / FIM model: here they must still refuse a request without the key.
RERANK_PATHS = ("/v1/rerank", "/rerank", "/reranking", "/v1/reranking")
KEYED_ELSEWHERE: list[tuple[str, str, Any]] = [
    ("POST", path, {"query": "q", "documents": ["d"]}) for path in RERANK_PATHS
] + [("POST", "/infill", {"input_prefix": "def f(", "input_suffix": ")"})]
PUBLIC = {"/health"}


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tiny_model_writer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("api-key")
    lora = tiny_model_writer.write_tiny_lora(tmp / "lora.gguf")
    args = ("--model", str(tiny_model_path), "--alias", "tiny", "-t", "1", "-c", "256", "-np", "2", "--metrics")
    args += ("--slot-save-path", str(tmp), "--lora", str(lora))
    yield from start_server(tmp, *args, api_key=KEY)


def _send(server: Server, method: str, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    return httpx.request(method, server.url + path, json=body, headers=headers, timeout=60)


@pytest.mark.parametrize(("method", "path", "body"), ROUTES + KEYED_ELSEWHERE)
def test_route_refuses_a_missing_or_wrong_key(server: Server, method: str, path: str, body: Any) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
        response = _send(server, method, path, body, headers)
        assert _error(response, 401)["code"] == "invalid_api_key", (path, headers, response.text)


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_route_serves_the_key(server: Server, method: str, path: str, body: Any) -> None:
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
        response = _send(server, method, path, body, headers)
        assert response.status_code == 200, (path, response.text)


def test_no_route_of_the_app_is_open(server: Server) -> None:
    schema = httpx.get(server.url + "/openapi.json", headers=server.headers(), timeout=10).json()
    assert httpx.get(server.url + "/openapi.json", timeout=10).status_code == 401
    checked = {path.split("?")[0] for _, path, _ in ROUTES + KEYED_ELSEWHERE}
    for path, methods in schema["paths"].items():
        if path in PUBLIC:
            continue
        concrete = path.replace("{id_slot}", "0")
        for method in methods:
            response = httpx.request(method.upper(), server.url + concrete, json={}, timeout=30)
            assert response.status_code == 401, (method, path, response.status_code, response.text[:200])
        checked.add(concrete)
    assert {"/v1/responses", "/v1/messages", "/v1/rerank", "/metrics", "/slots", "/props"} <= checked
