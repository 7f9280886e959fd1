"""Embedding requests that arrive together share one call (llamarcp.server.embedding_batch): the batcher's policy
on a stand-in embedding function, and on the tiny model over HTTP (batched vectors equal one-by-one)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_server import Server, start_server

from llamarcp.server.embedding_batch import EmbeddingBatcher
from llamarcp.server.errors import ClientGone
from llamarcp.server.runner import ModelRunner


class _GatedEmbedder:
    """Stand-in embedding function: row of a text = [len(text)], one token per character; the first call waits
    for `gate`, so the requests made meanwhile queue up behind it."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.started = threading.Event()

    def __call__(self, texts: list[str]) -> tuple[list[Any], list[int]]:
        self.calls.append(list(texts))
        self.started.set()
        self.gate.wait(30)
        if "bad" in texts:
            raise ValueError("cannot embed 'bad'")
        return [[float(len(t))] for t in texts], [len(t) for t in texts]


async def _never_left() -> bool:
    return False


async def _run(batcher: EmbeddingBatcher, fake: _GatedEmbedder, later: list[list[str]]) -> list[Any]:
    """One request that holds the first call, then `later` requests while it runs; the gate opens after."""
    first = asyncio.ensure_future(batcher.embed(["first"], _never_left))
    while not fake.started.is_set():
        await asyncio.sleep(0.01)
    rest = [asyncio.ensure_future(batcher.embed(texts, _never_left)) for texts in later]
    await asyncio.sleep(0)  # every later request is queued before the gate opens
    fake.gate.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_requests_arriving_together_share_one_call() -> None:
    fake = _GatedEmbedder()
    runner = ModelRunner(max_queue=8, n_parallel=2)
    try:
        results = asyncio.run(_run(EmbeddingBatcher(runner, fake), fake, [["ab"], ["cde", "f"], ["ghij"]]))
    finally:
        runner.shutdown()
    assert fake.calls == [["first"], ["ab", "cde", "f", "ghij"]]  # the three later requests: one call
    assert results == [([[5.0]], 5), ([[2.0]], 2), ([[3.0], [1.0]], 4), ([[4.0]], 4)]
    assert runner.stats.embedding_calls == 2 and runner.stats.embedded_inputs == 5


def test_rounds_are_bounded_and_round_robin() -> None:
    fake = _GatedEmbedder()
    runner = ModelRunner(max_queue=8)
    long = [f"long{i}" for i in range(5)]
    try:
        results = asyncio.run(_run(EmbeddingBatcher(runner, fake, round_size=3), fake, [long, ["s1"], ["s2"]]))
    finally:
        runner.shutdown()
    # The long request fills the first round; the short ones go before the rest of it.
    assert fake.calls == [["first"], ["long0", "long1", "long2"], ["s1", "s2", "long3"], ["long4"]]
    assert results[1] == ([[5.0]] * 5, 25)
    assert results[2:] == [([[2.0]], 2), ([[2.0]], 2)]


def test_a_bad_input_fails_only_its_own_request() -> None:
    fake = _GatedEmbedder()
    runner = ModelRunner(max_queue=8)
    try:
        results = asyncio.run(_run(EmbeddingBatcher(runner, fake), fake, [["ok"], ["bad"], ["fine"]]))
    finally:
        runner.shutdown()
    assert fake.calls == [["first"], ["ok", "bad", "fine"], ["ok"], ["bad"], ["fine"]]
    assert results[1] == ([[2.0]], 2) and results[3] == ([[4.0]], 4)
    assert isinstance(results[2], ValueError)


def test_a_client_that_left_is_dropped_and_a_lone_round_is_aborted() -> None:
    fake = _GatedEmbedder()
    runner = ModelRunner(max_queue=8)
    aborted: list[str] = []
    left = asyncio.Event()

    async def client_left() -> bool:
        return left.is_set()

    def abort() -> None:
        aborted.append("abort")

    async def scenario() -> Any:
        batcher = EmbeddingBatcher(runner, fake, abort=abort, withdraw=lambda: aborted.append("withdraw"))
        first = asyncio.ensure_future(batcher.embed(["first"], client_left))
        while not fake.started.is_set():
            await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(batcher.embed(["queued"], client_left))
        left.set()  # both clients leave: the running call is aborted, the queued one never runs
        while runner.stats.cancelled < 2:
            await asyncio.sleep(0.01)
        fake.gate.set()  # the aborted call ends
        return await asyncio.gather(first, queued, return_exceptions=True)

    try:
        results = asyncio.run(scenario())
    finally:
        runner.shutdown()
    assert [type(r) for r in results] == [ClientGone, ClientGone]
    assert aborted == ["abort", "withdraw"] and fake.calls == [["first"]]
    assert runner.stats.cancelled == 2


# --- over HTTP on the tiny model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embed_server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = ["--model", str(tiny_model_path), "--alias", "tiny", "-t", "1", "-c", "512", "--parallel", "2"]
    yield from start_server(tmp_path_factory.mktemp("embed"), *args)


def test_concurrent_embedding_requests_equal_one_by_one(embed_server: Server) -> None:
    inputs: list[Any] = [f"text number {i} about something" for i in range(10)]
    inputs[3] = ["a list", "of two texts"]

    def embed(value: Any) -> list[list[float]]:
        body = embed_server.post("/v1/embeddings", {"input": value, "encoding_format": "float"}).json()
        return [row["embedding"] for row in body["data"]]

    alone = [embed(value) for value in inputs]
    before = embed_server.wait_idle()["queue"]
    with concurrent.futures.ThreadPoolExecutor(len(inputs)) as pool:
        together = list(pool.map(embed, inputs))
    after = embed_server.wait_idle()["queue"]
    assert together == alone  # bit for bit, whichever requests shared a call
    assert after["served"] - before["served"] == len(inputs)
    assert after["embedded_inputs"] - before["embedded_inputs"] == 11
    assert 1 <= after["embedding_calls"] - before["embedding_calls"] <= len(inputs)
