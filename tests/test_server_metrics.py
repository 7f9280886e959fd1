"""`/metrics`: llama-server's Prometheus metrics (`--metrics`), read with prometheus_client's own text parser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_server import NO_EOS, Server, _error, start_server

KEY = "metrics-key"


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("metrics")
    args = ("--model", str(tiny_model_path), "--alias", "tiny", "-t", "1", "-c", "1024", "--metrics")
    yield from start_server(tmp, *args, api_key=KEY)


def scrape(server: Server) -> dict[str, float]:
    response = httpx.get(server.url + "/metrics", headers=server.headers(), timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, float] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[sample.name] = sample.value
        # llama-server's n_tokens_max is a counter without the _total suffix; the parser appends one.
        samples.setdefault(family.name, family.samples[0].value)
    assert types["llamacpp:prompt_tokens"] == "counter"  # the parser drops a counter's _total from the family
    assert types["llamacpp:requests_processing"] == "gauge"
    return samples


def test_metrics_count_what_was_served(server: Server) -> None:
    before = scrape(server)
    for name in (
        "llamacpp:prompt_tokens_total",
        "llamacpp:prompt_tokens_cached_total",
        "llamacpp:prompt_seconds_total",
        "llamacpp:tokens_predicted_total",
        "llamacpp:tokens_predicted_seconds_total",
        "llamacpp:n_decode_total",
        "llamacpp:n_tokens_max",
        "llamacpp:prompt_tokens_seconds",
        "llamacpp:predicted_tokens_seconds",
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
        "llamacpp:n_busy_slots_per_decode",
        "llamarcp:requests_served_total",
    ):
        assert name in before, name
    client = server.client()
    prompt = "Metrics count every prompt token once, and a repeated prompt comes from the cache."
    first = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, logit_bias=NO_EOS)
    second = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, logit_bias=NO_EOS)
    stream = client.completions.create(
        model="tiny", prompt="another", max_tokens=5, temperature=0, logit_bias=NO_EOS, stream=True
    )
    streamed = sum(1 for chunk in stream if chunk.choices and chunk.choices[0].text)
    server.wait_idle()
    after = scrape(server)
    assert first.usage is not None and second.usage is not None
    generated = after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"]
    assert generated == first.usage.completion_tokens + second.usage.completion_tokens + 5
    assert streamed >= 1
    prompt_seen = (
        after["llamacpp:prompt_tokens_total"]
        + after["llamacpp:prompt_tokens_cached_total"]
        - before["llamacpp:prompt_tokens_total"]
        - before["llamacpp:prompt_tokens_cached_total"]
    )
    another = len(server.post("/tokenize", {"content": "another", "add_special": True}).json()["tokens"])
    assert prompt_seen == first.usage.prompt_tokens + second.usage.prompt_tokens + another
    # The second request reused the first one's prompt (all but the last token, decoded again for its logits).
    cached = after["llamacpp:prompt_tokens_cached_total"] - before["llamacpp:prompt_tokens_cached_total"]
    assert cached >= first.usage.prompt_tokens - 1
    assert after["llamacpp:n_decode_total"] > before["llamacpp:n_decode_total"]
    assert after["llamacpp:n_tokens_max"] >= first.usage.prompt_tokens + 12
    assert after["llamacpp:requests_processing"] == 0
    assert after["llamacpp:requests_deferred"] == 0
    assert after["llamacpp:predicted_tokens_seconds"] > 0
    assert after["llamacpp:n_busy_slots_per_decode"] >= 1
    assert after["llamarcp:requests_served_total"] - before["llamarcp:requests_served_total"] == 3


def test_metrics_need_the_key(server: Server) -> None:
    response = httpx.get(server.url + "/metrics", timeout=10)
    assert _error(response, 401)["code"] == "invalid_api_key"


def test_metrics_off_without_the_flag(tiny_model_path: Path, tmp_path: Path) -> None:
    for plain in start_server(tmp_path, "--model", str(tiny_model_path), "-t", "1", "-c", "512"):
        error = _error(httpx.get(plain.url + "/metrics", timeout=10), 501)
        assert "--metrics" in error["message"]
        error = _error(httpx.post(plain.url + "/slots/0?action=erase", timeout=10), 501)
        assert "--slot-save-path" in error["message"]
