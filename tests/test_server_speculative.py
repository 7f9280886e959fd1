"""Speculative decoding in the server (`--spec-type ngram-simple`): greedy answers equal a server without it,
the drafts show in /metrics, `speculative.n_max: 0` turns it off per request, and bad flags are refused."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_server import ROOT, Server, _error, start_server
from test_server_metrics import scrape

REPETITIVE = "one two three four five six seven. one two three four five six seven. one two three"
PROMPTS = [REPETITIVE, "a b a b a b a b a b a b", "Once upon a time"]


def _args(model: Path) -> tuple[str, ...]:
    return ("--model", str(model), "-t", "1", "-c", "512", "-np", "2", "--metrics")


@pytest.fixture(scope="module")
def servers(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    tmp = tmp_path_factory.mktemp("speculative")
    plain_servers = start_server(tmp, *_args(tiny_model_path))
    plain = next(plain_servers)
    try:
        for spec in start_server(
            tmp, *_args(tiny_model_path), "--spec-type", "ngram-simple", "--spec-draft-n-max", "6"
        ):
            yield plain, spec
    finally:
        plain_servers.close()


def complete(server: Server, prompt: str, **extra: Any) -> str:
    body = {"prompt": prompt, "max_tokens": 48, "temperature": 0, "ignore_eos": True, **extra}
    response = server.post("/v1/completions", body)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["text"])


def test_same_greedy_answers_with_drafts(servers: tuple[Server, Server]) -> None:
    plain, spec = servers
    before = scrape(spec)
    for prompt in PROMPTS:
        assert complete(spec, prompt) == complete(plain, prompt)
    after = scrape(spec)
    drafted = (
        after["llamacpp:spec_decode_num_draft_tokens_total"] - before["llamacpp:spec_decode_num_draft_tokens_total"]
    )
    assert (
        drafted > 0 and after["llamacpp:spec_decode_num_drafts_total"] > before["llamacpp:spec_decode_num_drafts_total"]
    )
    assert scrape(plain)["llamacpp:spec_decode_num_draft_tokens_total"] == 0
    chat = {"messages": [{"role": "user", "content": REPETITIVE}], "max_tokens": 24, "temperature": 0}
    assert (
        spec.post("/v1/chat/completions", chat).json()["choices"]
        == plain.post("/v1/chat/completions", chat).json()["choices"]
    )


def test_off_per_request(servers: tuple[Server, Server]) -> None:
    plain, spec = servers
    before = scrape(spec)["llamacpp:spec_decode_num_draft_tokens_total"]
    assert complete(spec, REPETITIVE, **{"speculative.n_max": 0}) == complete(plain, REPETITIVE)
    assert scrape(spec)["llamacpp:spec_decode_num_draft_tokens_total"] == before
    assert (
        _error(spec.post("/v1/completions", {"prompt": "x", "speculative.n_max": -1}), 400)["param"]
        == "speculative.n_max"
    )


@pytest.mark.parametrize(
    "flags",
    [
        ["--spec-draft-n-max", "4"],
        ["--spec-type", "ngram-simple", "--spec-draft-n-max", "0"],
        ["--spec-type", "eagle"],
    ],
)
def test_bad_flags(tiny_model_path: Path, flags: list[str]) -> None:
    command = [sys.executable, "-m", "llamarcp.server", "--model", str(tiny_model_path), "--port", "0", *flags]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and "spec" in result.stderr
