"""Which model serves a request (llamarcp.server.pool): lenient and strict model names, several models from a
config file, loading on demand, LRU eviction that never touches a model with requests in flight, and servers
started from llama-cpp-python-style command lines. Driven by the `openai` client and raw HTTP."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server import CHAT, LONG, NO_EOS, Server, _error, start_server

from llamarcp.errors import ModelLoadError
from llamarcp.server.pool import ModelEntry, ModelPool, UnknownModelError
from llamarcp.server.settings import ModelConfig

#: The second model's alias: llama-cpp-python's Copilot route serves the model with this alias.
CODEX = "copilot-codex"


def _serve(tmp: Path, *args: str, **kwargs: Any) -> contextlib.AbstractContextManager[Server]:
    return contextlib.contextmanager(start_server)(tmp, *args, **kwargs)


@pytest.fixture(scope="module")
def lenient(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start_server(
        tmp_path_factory.mktemp("lenient"), "--model", str(tiny_model_path), "--alias", "tiny", "-t", "1"
    )


@pytest.fixture(scope="module")
def strict(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start_server(
        tmp_path_factory.mktemp("strict"), "--model", str(tiny_model_path), "-t", "1", "--strict-model-names"
    )


def test_single_model_answers_any_model_name(lenient: Server, tiny_model_path: Path) -> None:
    client = lenient.client()
    assert [m.id for m in client.models.list().data] == ["tiny"]  # the alias
    for name in ("gpt-3.5-turbo", "tiny", str(tiny_model_path), tiny_model_path.name, "text-embedding-3-small"):
        chat = client.chat.completions.create(model=name, messages=CHAT, max_tokens=2, temperature=0)  # type: ignore[arg-type]
        assert chat.model == "tiny" and chat.choices[0].message.content
    assert client.completions.create(model="davinci-002", prompt="x", max_tokens=2).model == "tiny"
    assert client.embeddings.create(model="ada", input="x").model == "tiny"
    assert client.models.retrieve("gpt-4o").id == "tiny"
    raw = lenient.post("/v1/completions", {"model": "whatever", "prompt": "x", "max_tokens": 2}).json()
    assert raw["model"] == "tiny"


def test_strict_model_names(strict: Server, tiny_model_path: Path) -> None:
    client = strict.client()
    (card,) = client.models.list().data
    assert card.id == tiny_model_path.name  # no alias: the file name
    for name in (tiny_model_path.name, tiny_model_path.stem, str(tiny_model_path)):
        assert client.completions.create(model=name, prompt="x", max_tokens=2).model == card.id
    for path, body in (
        ("/v1/chat/completions", {"messages": CHAT}),
        ("/v1/completions", {"prompt": "x"}),
        ("/v1/embeddings", {"input": "x"}),
        ("/extras/tokenize", {"input": "x"}),
    ):
        error = _error(strict.post(path, {"model": "gpt-4o", **body}), 404)
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert "gpt-4o" in error["message"] and card.id in error["message"]
    _error(httpx.get(strict.url + "/v1/models/gpt-4o"), 404)


def _config(tmp: Path, models: list[dict[str, Any]], **server: Any) -> Path:
    path = tmp / "models.json"
    path.write_text(json.dumps({**server, "models": models}))
    return path


def _models(server: Server) -> dict[str, Any]:
    return server.health()["models"]


@pytest.fixture(scope="module")
def two_tiny(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two models from one file (different aliases and settings), at most one loaded at a time."""
    tmp = tmp_path_factory.mktemp("two")
    config = _config(
        tmp,
        [
            {"model": str(tiny_model_path), "model_alias": "tiny-a", "n_ctx": 4096, "n_threads": 1},
            {"model": str(tiny_model_path), "model_alias": CODEX, "n_ctx": 256, "n_threads": 1},
        ],
        max_loaded_models=1,
    )
    yield from start_server(tmp, "--config_file", str(config))


def test_config_file_models_are_listed_and_picked_by_name(two_tiny: Server) -> None:
    client = two_tiny.client()
    assert [m.id for m in client.models.list().data] == ["tiny-a", CODEX]
    states = _models(two_tiny)
    assert states["tiny-a"]["state"] == "loaded" and states[CODEX]["state"] == "unloaded"  # the default is first
    b = client.completions.create(model=CODEX, prompt="x", max_tokens=10**6, logit_bias=NO_EOS, temperature=0)
    assert b.model == CODEX
    # tiny-b has n_ctx 256: max_tokens above the context generates until the context is full
    # (the last token is sampled but needs no room in the context: up to n_ctx - prompt + 1 tokens)
    assert b.usage is not None and 256 <= b.usage.prompt_tokens + b.usage.completion_tokens <= 257
    assert b.choices[0].finish_reason == "length"
    states = _models(two_tiny)
    assert states[CODEX]["state"] == "loaded" and states["tiny-a"]["state"] == "unloaded"  # LRU, at most 1
    a = client.chat.completions.create(model="gpt-3.5-turbo", messages=CHAT, max_tokens=2)  # type: ignore[arg-type]
    assert a.model == "tiny-a"  # an unknown name is the default model, as llama-cpp-python does
    health = two_tiny.health()
    assert health["models"]["tiny-a"]["loads"] == 2 and health["models"][CODEX]["loads"] == 1
    assert health["evictions"] == 2
    # llama-cpp-python's Copilot route serves the model aliased copilot-codex, whatever the body says
    codex = two_tiny.post("/v1/engines/copilot-codex/completions", {"model": "tiny-a", "prompt": "def"}).json()
    assert codex["model"] == CODEX and two_tiny.health()["evictions"] == 3


def test_a_model_with_requests_in_flight_is_never_evicted(two_tiny: Server) -> None:
    two_tiny.client().completions.create(model="tiny-a", prompt="x", max_tokens=1)  # tiny-a loaded, tiny-b not
    before = two_tiny.health()["evictions"]
    long_stream = {"model": "tiny-a", "prompt": "long", "max_tokens": LONG, "stream": True, "logit_bias": NO_EOS}
    url = two_tiny.url + "/v1/completions"
    with httpx.stream("POST", url, json=long_stream, timeout=60) as running:
        lines = running.iter_lines()
        next(lines)  # tiny-a is generating
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            other = pool.submit(httpx.post, url, json={"model": CODEX, "prompt": "y", "max_tokens": 4}, timeout=60)
            for _ in range(20):  # tiny-b waits for room: tiny-a stays loaded while it streams
                states = _models(two_tiny)
                assert states["tiny-a"]["state"] == "loaded", states
                assert states[CODEX]["state"] == "unloaded" and not other.done()
                time.sleep(0.02)
            received = 0
            for line in lines:  # the stream goes on intact
                received += line.startswith("data: {")
                if received == 50:
                    break
            assert received == 50
            running.close()
            answer = other.result(timeout=60)
    assert answer.status_code == 200 and answer.json()["model"] == CODEX
    health = two_tiny.health()
    assert health["evictions"] == before + 1 and health["models"]["tiny-a"]["state"] == "unloaded"


def test_each_model_has_its_own_queue(tiny_model_path: Path, tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        [
            {"model": str(tiny_model_path), "model_alias": "one", "n_ctx": 4096, "n_threads": 1},
            {"model": str(tiny_model_path), "model_alias": "two", "n_ctx": 512, "n_threads": 1},
        ],
        max_loaded_models=2,
        max_queue=1,
    )
    with _serve(tmp_path, "--config_file", str(config)) as server:
        url = server.url + "/v1/completions"
        long_stream = {"model": "one", "prompt": "long", "max_tokens": LONG, "stream": True, "logit_bias": NO_EOS}
        with httpx.stream("POST", url, json=long_stream, timeout=60) as running:
            lines = running.iter_lines()
            next(lines)
            full = httpx.post(url, json={"model": "one", "prompt": "x", "max_tokens": 2}, timeout=30)
            assert _error(full, 503)["code"] == "server_overloaded"  # model one's queue (size 1) is full
            answer = httpx.post(url, json={"model": "two", "prompt": "x", "max_tokens": 4}, timeout=60)
            assert answer.status_code == 200 and answer.json()["model"] == "two"  # while one still generates
            assert next(line for line in lines if line).startswith("data: {")  # one goes on streaming
        models = server.wait_idle()["models"]
        assert models["one"]["queue"]["rejected"] == 1 and models["two"]["queue"]["served"] == 1


def test_llama_cpp_python_command_line_starts_the_server(tiny_model_path: Path, tmp_path: Path) -> None:
    argv = ["--model", str(tiny_model_path), "--n_ctx", "1024", "--chat_format", "chatml"]
    argv += ["--model_alias", "gpt-3.5-turbo", "--embedding", "false", "--interrupt_requests", "false"]
    argv += ["--n_threads", "1", "--n_batch", "256", "--verbose", "false", "--cache", "false"]
    with _serve(tmp_path, *argv, api_key="sk-lcp") as server:
        client = server.client()
        assert [m.id for m in client.models.list().data] == ["gpt-3.5-turbo"]
        chat = client.chat.completions.create(model="gpt-3.5-turbo", messages=CHAT, max_tokens=4, temperature=0)  # type: ignore[arg-type]
        assert chat.choices[0].message.content
        # chatml was used: the prompt the model saw is the chatml rendering of the conversation
        tokens = server.post("/extras/tokenize/count", {"input": _chatml(CHAT)}).json()["count"]
        assert chat.usage is not None and chat.usage.prompt_tokens == tokens
        vector = client.embeddings.create(model="gpt-3.5-turbo", input="hello").data[0].embedding
        assert len(vector) == 64


def test_environment_settings_start_the_server(tiny_model_path: Path, tmp_path: Path) -> None:
    env = {"MODEL": str(tiny_model_path), "MODEL_ALIAS": "from-env", "N_CTX": "512", "N_THREADS": "1"}
    with _serve(tmp_path, env=env) as server:
        assert [m.id for m in server.client().models.list().data] == ["from-env"]
        full = server.post("/v1/completions", {"prompt": "x", "max_tokens": 10**6, "logit_bias": NO_EOS}).json()
        assert full["usage"]["prompt_tokens"] + full["usage"]["completion_tokens"] in (512, 513)  # N_CTX


def _chatml(messages: list[dict[str, str]]) -> str:
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


@pytest.mark.slow
def test_config_file_with_the_tiny_model_and_gemma(
    tiny_model_path: Path, default_model_path: Path, tmp_path: Path
) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(
        "interrupt_requests: false\n"
        "max_loaded_models: 1\n"
        "models:\n"
        f"  - model: {tiny_model_path}\n"
        "    model_alias: tiny\n"
        "    n_ctx: 512\n"
        "    n_threads: 1\n"
        f"  - model: {default_model_path}\n"
        "    model_alias: gemma\n"
        "    n_ctx: 1024\n"
        "    chat_template_kwargs: {}\n"
    )
    with _serve(tmp_path, "--config_file", str(config), "--api_key", "sk-two", startup=300) as server:
        server.api_key = "sk-two"
        client = server.client(timeout=300)
        assert [m.id for m in client.models.list().data] == ["tiny", "gemma"]
        gemma = client.chat.completions.create(model="gemma", messages=CHAT, max_tokens=8, temperature=0)  # type: ignore[arg-type]
        assert gemma.model == "gemma" and gemma.choices[0].message.content
        assert len(client.embeddings.create(model="gemma", input="hello").data[0].embedding) == 640
        tiny = client.completions.create(model="tiny", prompt="Once", max_tokens=4, temperature=0)
        assert tiny.model == "tiny" and tiny.choices[0].text
        again = client.chat.completions.create(model="gemma", messages=CHAT, max_tokens=8, temperature=0)  # type: ignore[arg-type]
        assert again.choices[0].message.content == gemma.choices[0].message.content  # reloaded, same answer
        health = server.health()
        assert health["models"]["gemma"]["loads"] == 2 and health["evictions"] == 3


# --- the pool's policy on its own (fake models: no llama.cpp, no HTTP) ---------------------------------------------


class _FakeEntry(ModelEntry):
    """A ModelEntry whose load/unload only record what happened (and can be made to fail)."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__(ModelConfig(model=f"/models/{name}.gguf", alias=name), max_queue=4)
        self.log = log
        self.fail = False

    def load(self) -> None:
        self.log.append(f"load {self.model_id}")
        if self.fail:
            raise ModelLoadError(f"{self.model_id} is broken")
        self.state = "loaded"

    def unload(self) -> None:
        self.log.append(f"unload {self.model_id}")
        self.state = "unloaded"


def _pool(names: list[str], max_loaded: int) -> tuple[ModelPool, list[str]]:
    log: list[str] = []
    return ModelPool([_FakeEntry(n, log) for n in names], max_loaded=max_loaded), log


def test_pool_evicts_the_least_recently_used_idle_model() -> None:
    pool, log = _pool(["a", "b", "c"], max_loaded=2)
    a, b, c = pool.entries

    async def use(entry: ModelEntry) -> None:
        await pool.enter(entry)
        pool.leave(entry)

    async def scenario() -> None:
        for entry in (a, b, a, c, b):  # c evicts b (a was used after b); then b evicts a
            await use(entry)

    asyncio.run(scenario())
    assert log == ["load a", "load b", "unload b", "load c", "unload a", "load b"]
    assert [e.state for e in pool.entries] == ["unloaded", "loaded", "loaded"] and pool.evictions == 2
    for entry in pool.entries:
        entry.runner.shutdown()


def test_pool_never_evicts_a_model_in_use_and_waits_for_room() -> None:
    pool, log = _pool(["a", "b"], max_loaded=1)
    a, b = pool.entries

    async def scenario() -> None:
        await pool.enter(a)  # a request on a is in flight
        waiting = asyncio.ensure_future(pool.enter(b))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiting.done() and a.state == "loaded" and b.state == "unloaded"
        pool.leave(a)  # a goes idle: b may now take its place
        await asyncio.wait_for(waiting, 30)
        pool.leave(b)

    asyncio.run(scenario())
    assert log == ["load a", "unload a", "load b"]
    for entry in pool.entries:
        entry.runner.shutdown()


def test_pool_load_failure_and_cancellation_keep_the_books_straight() -> None:
    pool, log = _pool(["a", "b"], max_loaded=1)
    a, b = pool.entries
    b.fail = True

    async def scenario() -> None:
        with pytest.raises(ModelLoadError, match="b is broken"):
            await pool.enter(b)
        assert b.state == "unloaded" and b.users == 0 and pool._resident() == 0  # nothing counts as loaded
        b.fail = False
        task = asyncio.ensure_future(pool.enter(b))
        await asyncio.sleep(0)
        task.cancel()  # the client left during the load: the load still completes and is counted
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(20):
            await asyncio.sleep(0.01)
            if b.state == "loaded":
                break
        assert b.state == "loaded" and b.users == 0
        await pool.enter(a)  # b is idle: evicted for a
        pool.leave(a)

    asyncio.run(scenario())
    assert log == ["load b", "load b", "unload b", "load a"]
    for entry in pool.entries:
        entry.runner.shutdown()


def test_pool_names() -> None:
    pool, _ = _pool(["a", "b"], max_loaded=1)
    a, b = pool.entries
    assert pool.resolve("b") is b and pool.resolve("/models/b.gguf") is b and pool.resolve("b.gguf") is b
    assert pool.resolve(None) is a and pool.resolve("") is a and pool.resolve("gpt-4o") is a
    pool.strict = True
    with pytest.raises(UnknownModelError, match="'gpt-4o' does not exist; this server serves 'a', 'b'"):
        pool.resolve("gpt-4o")
    for entry in pool.entries:
        entry.runner.shutdown()
