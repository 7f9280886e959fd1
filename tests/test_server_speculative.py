"""Speculative decoding in the server (`--spec-type ngram-simple`, `--model-draft`): greedy answers equal a server
without it, the drafts show in /metrics, `speculative.n_max: 0` turns it off per request, and bad flags are
refused."""

from __future__ import annotations

import concurrent.futures
import functools
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


def test_llama_cpp_python_draft_model_setting(
    servers: tuple[Server, Server], tiny_model_path: Path, tmp_path: Path
) -> None:
    """llama-cpp-python's `--draft_model prompt-lookup-decoding` serves prompt lookup: same answers, drafts counted."""
    plain, _ = servers
    argv = (*_args(tiny_model_path), "--draft_model", "prompt-lookup-decoding", "--draft_model_num_pred_tokens", "4")
    for lookup in start_server(tmp_path, *argv):
        assert complete(lookup, REPETITIVE) == complete(plain, REPETITIVE)
        assert scrape(lookup)["llamacpp:spec_decode_num_draft_tokens_total"] > 0


def test_draft_model_server(servers: tuple[Server, Server], tiny_model_path: Path, tmp_path: Path) -> None:
    """`--model-draft` with the target itself as the draft model (full acceptance) and two slots: the same
    greedy answers, concurrent requests included, and its drafts in /metrics."""
    plain, _ = servers
    flags = ("--model-draft", str(tiny_model_path), "--spec-draft-n-max", "4", "--spec-draft-n-min", "1")
    for spec in start_server(tmp_path, *_args(tiny_model_path), *flags):
        before = scrape(spec)
        for prompt in PROMPTS:
            assert complete(spec, prompt) == complete(plain, prompt)
        after = scrape(spec)
        drafted = (
            after["llamacpp:spec_decode_num_draft_tokens_total"] - before["llamacpp:spec_decode_num_draft_tokens_total"]
        )
        accepted = (
            after["llamacpp:spec_decode_num_accepted_tokens_total"]
            - before["llamacpp:spec_decode_num_accepted_tokens_total"]
        )
        assert drafted > 0 and accepted >= 0.8 * drafted
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            together = list(pool.map(functools.partial(complete, spec), [REPETITIVE, PROMPTS[1]]))
        assert together == [complete(plain, REPETITIVE), complete(plain, PROMPTS[1])]
        before_off = scrape(spec)["llamacpp:spec_decode_num_draft_tokens_total"]
        assert complete(spec, REPETITIVE, **{"speculative.n_max": 0}) == complete(plain, REPETITIVE)
        assert scrape(spec)["llamacpp:spec_decode_num_draft_tokens_total"] == before_off
        # The server's embedding context of the same model does not take the draft model (it does not generate).
        embedded = spec.post("/v1/embeddings", {"input": "hello"})
        assert embedded.status_code == 200 and embedded.json()["data"][0]["embedding"]


@pytest.mark.parametrize(
    "flags",
    [
        ["--spec-draft-n-max", "4"],
        ["--spec-type", "ngram-simple", "--spec-draft-n-max", "0"],
        ["--spec-type", "ngram-simple", "--spec-draft-n-max", "257"],
        ["--spec-type", "ngram-simple", "--spec-draft-n-max", "2", "--spec-draft-n-min", "3"],
        ["--spec-type", "eagle"],
        ["--spec-type", "draft-simple"],
        ["--spec-type", "ngram-simple", "--model-draft", "{model}"],
        ["--model-draft", "{missing}"],
        ["--model-draft", "{model}", "--spec-draft-n-max", "0"],
        ["--model-draft", "{model}", "--spec-draft-threads", "0"],
        ["--draft-max", "4"],
    ],
)
def test_bad_flags(tiny_model_path: Path, tmp_path: Path, flags: list[str]) -> None:
    flags = [f.format(model=tiny_model_path, missing=tmp_path / "missing.gguf") for f in flags]
    command = [sys.executable, "-m", "llamarcp.server", "--model", str(tiny_model_path), "--port", "0", *flags]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and ("spec" in result.stderr or "draft" in result.stderr), result.stderr


def test_missing_draft_model_is_named(tiny_model_path: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nothere.gguf"
    command = [sys.executable, "-m", "llamarcp.server", "--model", str(tiny_model_path), "-md", str(missing)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and "not found" in result.stderr and str(missing) in result.stderr


def test_incompatible_draft_model_stops_the_server(tiny_model_path: Path, tiny_bert_path: Path) -> None:
    command = [
        sys.executable, "-m", "llamarcp.server", "--model", str(tiny_model_path), "--port", "0",
        "--model-draft", str(tiny_bert_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and "vocab types" in result.stderr, result.stderr
