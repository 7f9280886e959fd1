"""LoRA on the server: adapters loaded at startup (`--lora`, `--lora-scaled`), `GET/POST /lora-adapters`,
per-request `lora: [{id, scale}]`, concurrent requests with different adapters (they take turns, each equal
to its answer alone), and bad requests."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server import ROOT, Server, _error, start_server

KEY = "lora-key"
PROMPT = "The adapters change what comes next:"


@pytest.fixture(scope="module")
def lora_path(tiny_model_writer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tiny_model_writer.write_tiny_lora(tmp_path_factory.mktemp("lora") / "tiny-lora.gguf"))


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, lora_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("lora-server")
    args = ("--model", str(tiny_model_path), "-t", "1", "-c", "512", "-np", "3", "--lora", str(lora_path))
    yield from start_server(tmp, *args, "--lora-scaled", str(lora_path), "0.5", api_key=KEY)


def complete(server: Server, lora: list[dict[str, Any]] | None = None) -> str:
    body: dict[str, Any] = {"prompt": PROMPT, "max_tokens": 10, "temperature": 0, "ignore_eos": True}
    if lora is not None:
        body["lora"] = lora
    response = server.post("/v1/completions", body)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["text"])


def adapters(server: Server) -> list[dict[str, Any]]:
    return httpx.get(server.url + "/lora-adapters", headers=server.headers(), timeout=10).json()


def test_adapters_and_scales(server: Server, lora_path: Path) -> None:
    assert adapters(server) == [
        {"id": 0, "path": str(lora_path), "scale": 1.0},
        {"id": 1, "path": str(lora_path), "scale": 0.5},
    ]
    both = complete(server)
    off = [{"id": 0, "scale": 0}, {"id": 1, "scale": 0}]
    base = complete(server, off)
    assert base != both
    only_first = complete(server, [{"id": 1, "scale": 0}])
    assert only_first not in (base, both)
    response = server.post("/lora-adapters", [{"id": 0, "scale": 0}])
    assert response.status_code == 200 and [a["scale"] for a in response.json()] == [0.0, 0.0]
    assert complete(server) == base  # new defaults; the cached prompt of other adapters is not reused
    assert complete(server, [{"id": 0, "scale": 1}]) == only_first
    assert complete(server, [{"id": 0, "scale": 1}, {"id": 1, "scale": 0.5}]) == both
    chat = server.post(
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "lora": [{"id": 1, "scale": 2}]},
    )
    assert chat.status_code == 200
    server.post("/lora-adapters", [{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.5}])
    assert complete(server) == both

    jobs = [None, off, [{"id": 1, "scale": 0}], None, off, off]
    expected = {0: both, 1: base, 2: only_first, 3: both, 4: base, 5: base}
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda lora: complete(server, lora), jobs))
    assert results == [expected[i] for i in range(len(jobs))]


@pytest.mark.parametrize(
    ("lora", "param"),
    [
        ([{"id": 5, "scale": 1}], "lora[0].id"),
        ([{"id": -1}], "lora[0].id"),
        ([{"id": 0, "scale": "big"}], "lora[0].scale"),
        ([{"id": 0, "scale": 1e9}], "lora[0].scale"),
        ([{"id": 0, "weight": 1}], "lora[0]"),
        ([[0, 1]], "lora[0]"),
        ([{"id": 0}] * 65, "lora"),
    ],
)
def test_bad_lora_requests(server: Server, lora: Any, param: str) -> None:
    error = _error(server.post("/v1/completions", {"prompt": "x", "max_tokens": 1, "lora": lora}), 400)
    assert error["param"] == param, error


def test_bad_adapter_updates(server: Server) -> None:
    assert _error(server.post("/lora-adapters", {"id": 0}), 400)["param"] == "body"
    assert _error(server.post("/lora-adapters", [{"id": 9, "scale": 1}]), 400)["param"] == "body[0].id"
    assert _error(httpx.get(server.url + "/lora-adapters", timeout=10), 401)["code"] == "invalid_api_key"
    assert _error(httpx.post(server.url + "/lora-adapters", json=[], timeout=10), 401)["code"] == "invalid_api_key"


def test_bad_lora_flags(tiny_model_path: Path, tmp_path: Path, tiny_model_writer: Any) -> None:
    command = [sys.executable, "-m", "llamarcp.server", "--model", str(tiny_model_path), "--port", "0"]
    bad_scale = subprocess.run(
        [*command, "--lora-scaled", "x.gguf", "inf"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert bad_scale.returncode == 2 and "--lora-scaled x.gguf inf" in bad_scale.stderr
    wrong = tiny_model_writer.write_tiny_lora(tmp_path / "wrong.gguf", n_in=32)
    with pytest.raises(AssertionError, match="LoRA"):
        for _ in start_server(tmp_path, "--model", str(tiny_model_path), "-t", "1", "--lora", str(wrong)):
            pass
