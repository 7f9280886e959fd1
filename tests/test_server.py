"""The OpenAI-compatible server, started for real on loopback and driven by the official `openai` client and httpx.

Servers run the tiny random-weight model (a few ms per token), so answers are gibberish but complete, and
timing-based checks (disconnect stops generation) have a wide margin.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parent.parent
N_CTX = 4096
LONG = 4000  # tokens: seconds even on a fast CPU, far longer than any disconnect check waits
NO_EOS = {"2": -100.0}  # logit_bias banning the tiny vocab's EOS, so long generations run their full length


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    api_key: str | None = None

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "unused", max_retries=0, **kwargs)

    def health(self) -> dict[str, Any]:
        response = httpx.get(self.url + "/health", headers=self.headers(), timeout=10)
        assert response.status_code == 200
        return response.json()

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def post(self, path: str, body: Any, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=self.headers(), timeout=60, **kwargs)

    def wait_idle(self, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            queues = [m["queue"] for m in health["models"].values()]
            if all(q["active"] == 0 and q["waiting"] == 0 for q in queues):
                return health
            if time.monotonic() > deadline:
                raise AssertionError(f"server still busy after {timeout}s: {health}")
            time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(model: Path | None, tmp: Path, *extra: str, api_key: str | None = None) -> Iterator[Server]:
    args = ["-c", str(N_CTX)]
    if model is not None:
        args += ["--model", str(model), "--alias", "tiny", "-t", "1"]
    yield from start_server(tmp, *args, *extra, api_key=api_key)


#: llama-cpp-python's environment names a test machine might happen to set; servers here start without them.
_LCP_ENVIRONMENT = {"host", "port", "model", "config_file", "api_key", "n_ctx", "verbose", "seed", "embedding"}


def start_server(
    tmp: Path, *args: str, api_key: str | None = None, startup: float = 60, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """`python -m llamarcp.server ARGS` on a free loopback port; yields once /health answers, stops it after.
    `env` adds environment variables (llama-cpp-python's settings from the caller's environment are dropped)."""
    port = _free_port()
    log = tmp / f"server-{port}.log"
    command = [sys.executable, "-m", "llamarcp.server", "--port", str(port), "--host", "127.0.0.1"]
    command += ["--log-level", "warning", *args]
    if api_key:
        command += ["--api-key", api_key]
    environ = {k: v for k, v in os.environ.items() if k.lower() not in _LCP_ENVIRONMENT}
    environ.update(env or {}, PYTHONPATH=str(ROOT))
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environ, cwd=ROOT)
    server = Server(f"http://127.0.0.1:{port}", proc, log, api_key)
    try:
        deadline = time.monotonic() + startup
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(server.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not come up:\n{log.read_text()}")
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # One slot: requests are served one after another, so each greedy answer must equal it alone bit for bit
    # (with --parallel, llama.cpp's kernels round differently at other batch shapes; tests/test_server_dispatch.py).
    yield from _start(tiny_model_path, tmp_path_factory.mktemp("server"), "--max-queue", "16", "--parallel", "1")


#: The keyed server also runs with --chat-template-file, so one startup covers both options.
CUSTOM_TEMPLATE = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"


@pytest.fixture(scope="module")
def keyed_server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("keyed")
    template = tmp / "template.jinja"
    template.write_text(CUSTOM_TEMPLATE)
    yield from _start(tiny_model_path, tmp, "--chat-template-file", str(template), api_key="sk-test-4242")


@pytest.fixture(scope="module")
def small_queue_server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # One slot: the queue-full test needs one request running and one waiting for the model.
    yield from _start(tiny_model_path, tmp_path_factory.mktemp("small"), "--max-queue", "2", "--parallel", "1")


CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]


# --- the official client ---------------------------------------------------------------------------------------


def test_health_and_models(server: Server) -> None:
    health = server.health()
    assert health["status"] == "ok" and health["model"] == "tiny"
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert server.client().models.retrieve("tiny").id == "tiny"


def test_completion(server: Server) -> None:
    result = server.client().completions.create(model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0)
    assert result.object == "text_completion"
    choice = result.choices[0]
    assert choice.text and choice.finish_reason in ("stop", "length")
    assert result.usage is not None and 0 < result.usage.completion_tokens <= 8
    again = server.client().completions.create(model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0)
    assert again.choices[0].text == choice.text


def test_completion_stream(server: Server) -> None:
    client = server.client()
    whole = client.completions.create(model="tiny", prompt="Hello", max_tokens=10, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt="Hello", max_tokens=10, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_chat(server: Server) -> None:
    client = server.client()
    result = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert result.object == "chat.completion"
    message = result.choices[0].message
    assert message.role == "assistant" and message.content
    assert result.usage is not None and result.usage.prompt_tokens > 0


def test_chat_stream_equals_non_stream(server: Server) -> None:
    client = server.client()
    whole = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model="tiny",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_chat_json_schema_and_forced_tool(server: Server) -> None:
    client = server.client()
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    result = client.chat.completions.create(
        model="tiny",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=128,
        seed=1,
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},  # type: ignore[typeddict-item]
    )
    assert isinstance(json.loads(result.choices[0].message.content or "")["ok"], bool)
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"unit": {"enum": ["C", "F"]}}, "required": ["unit"]},
        },
    }
    result = client.chat.completions.create(
        model="tiny",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=128,
        seed=1,
        tools=[tool],  # type: ignore[list-item]
        tool_choice="required",
    )
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = (choice.message.tool_calls or [])[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments)["unit"] in ("C", "F")  # type: ignore[union-attr]


def test_embeddings(server: Server) -> None:
    client = server.client()
    one = client.embeddings.create(model="tiny", input="the same text")
    again = client.embeddings.create(model="tiny", input="the same text")
    batch = client.embeddings.create(model="tiny", input=["the same text", "another text", "the same text"])
    vector = one.data[0].embedding
    assert len(vector) == 64  # the tiny model's n_embd
    assert again.data[0].embedding == vector
    assert [d.index for d in batch.data] == [0, 1, 2]
    assert batch.data[0].embedding == pytest.approx(vector, abs=1e-5)
    assert batch.data[2].embedding == pytest.approx(vector, abs=1e-5)
    assert batch.data[1].embedding != pytest.approx(vector, abs=1e-5)
    # Raw HTTP with float encoding gives the same numbers the client decoded from base64.
    raw = server.post("/v1/embeddings", {"input": "the same text", "encoding_format": "float"}).json()
    assert raw["data"][0]["embedding"] == pytest.approx(vector, rel=1e-6)
    assert raw["usage"]["prompt_tokens"] > 0


# --- errors: OpenAI's shape, 4xx, and the server keeps serving ------------------------------------------------


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def test_malformed_json_is_400(server: Server) -> None:
    response = httpx.post(
        server.url + "/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"}
    )
    assert _error(response, 400)["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 0}, 400, "max_tokens must be at least 1"),
        ("/v1/completions", {"prompt": "x", "max_tokens": -5}, 400, "max_tokens must be at least 1"),
        ("/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": 0}, 400, "max_completion_tokens"),
        ("/v1/completions", {"prompt": "word " * (N_CTX + 10), "max_tokens": 4}, 400, "context holds"),
        ("/v1/completions", {"prompt": "word " * (N_CTX + 10), "stream": True}, 400, "context holds"),
        ("/v1/chat/completions", {"messages": CHAT, "stream": True, "grammar": "root ::= ("}, 400, "grammar"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * (N_CTX + 10)}]}, 400, "context"),
        ("/v1/chat/completions", {"messages": CHAT, "n": 99}, 400, "n"),
        ("/v1/chat/completions", {"messages": CHAT, "temperature": "hot"}, 400, "temperature"),
        ("/v1/chat/completions", {"messages": CHAT, "temperature": 9}, 400, "temperature"),
        ("/v1/chat/completions", {"max_tokens": 4}, 400, "messages"),
        ("/v1/chat/completions", {"messages": []}, 400, "must not be empty"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "content must be"),
        ("/v1/chat/completions", {"messages": CHAT, "tool_choice": "required"}, 400, "needs tools"),
        ("/v1/chat/completions", {"messages": CHAT, "grammar": "root ::= ("}, 400, "grammar"),
        ("/v1/chat/completions", {"messages": CHAT, "logit_bias": {"abc": 1}}, 400, "logit_bias"),
        ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "xml"}}, 400, "response_format"),
        ("/v1/chat/completions", {"messages": CHAT, "reasoning_format": "xml"}, 400, "reasoning_format"),
        ("/v1/completions", {"prompt": ["a", "b"]}, 400, "one prompt"),
        ("/v1/completions", {"prompt": [10**9]}, 400, "token"),
        ("/v1/embeddings", {"input": ""}, 400, "empty"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
        ("/v1/nothing-here", {}, 404, "Not Found"),
    ],
)
def test_bad_requests_get_openai_errors(server: Server, path: str, body: Any, status: int, fragment: str) -> None:
    error = _error(server.post(path, body), status)
    assert fragment.lower() in error["message"].lower(), error


def test_server_keeps_serving_after_errors(server: Server) -> None:
    for _ in range(3):
        _error(server.post("/v1/chat/completions", {"messages": []}), 400)
        _error(
            httpx.post(server.url + "/v1/completions", content=b"{", headers={"content-type": "application/json"}), 400
        )
    result = server.client().chat.completions.create(model="tiny", messages=CHAT, max_tokens=4, temperature=0)  # type: ignore[arg-type]
    assert result.choices[0].message.content
    health = server.wait_idle()
    assert health["status"] == "ok"


def test_api_key(keyed_server: Server) -> None:
    url = keyed_server.url
    error = _error(httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}), 401)
    assert error["code"] == "invalid_api_key"
    wrong = {"Authorization": "Bearer sk-wrong"}
    _error(httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=wrong), 401)
    _error(httpx.get(url + "/v1/models"), 401)
    assert httpx.get(url + "/health").status_code == 200  # health checks need no key
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0).models.list()
    result = keyed_server.client().completions.create(model="tiny", prompt="x", max_tokens=2, temperature=0)
    assert result.choices[0].text


# --- queueing, concurrency, disconnects ------------------------------------------------------------------------


def _session_request(client: openai.OpenAI, worker: int, round_: int) -> tuple[str, str | None]:
    """One greedy request of a mixed kind (chat, completion, streamed chat); returns (text, finish_reason)."""
    kind = (worker + round_) % 3
    if kind == 0:
        chat = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": f"worker {worker} round {round_}"}],
            max_tokens=16,
            temperature=0,
        )
        return chat.choices[0].message.content or "", chat.choices[0].finish_reason
    if kind == 1:
        text = client.completions.create(model="tiny", prompt=f"w{worker} r{round_}", max_tokens=16, temperature=0)
        return text.choices[0].text, text.choices[0].finish_reason
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": f"stream {worker} {round_}"}],
            max_tokens=16,
            temperature=0,
            stream=True,
        )
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason


def test_concurrent_clients_all_complete(server: Server) -> None:
    before = server.wait_idle()["queue"]

    def client_session(worker: int) -> list[tuple[str, str | None]]:
        client = server.client(timeout=120)
        return [_session_request(client, worker, round_) for round_ in range(3)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(client_session, range(8)))
    assert sum(len(o) for o in outcomes) == 24
    for session in outcomes:
        for content, finish in session:
            assert content and finish in ("stop", "length")
    after = server.wait_idle()["queue"]
    assert after["served"] - before["served"] == 24
    assert after["failed"] == before["failed"] and after["rejected"] == before["rejected"]
    # No cross-talk between interleaved requests: each greedy answer equals the same request run alone.
    client = server.client(timeout=120)
    for worker, session in enumerate(outcomes):
        for round_, outcome in enumerate(session):
            assert _session_request(client, worker, round_) == outcome, (worker, round_)


def test_full_queue_answers_503(small_queue_server: Server) -> None:
    server = small_queue_server  # --max-queue 2: one running + one waiting fill it
    url = server.url + "/v1/completions"
    long_stream = {"prompt": "long", "max_tokens": LONG, "stream": True, "logit_bias": NO_EOS}
    with httpx.stream("POST", url, json=long_stream, timeout=60) as running:
        assert running.status_code == 200
        lines = running.iter_lines()  # keep the iterator: dropping it would close the connection
        next(lines)  # generating now
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(httpx.post, url, json={"prompt": "queued", "max_tokens": 8}, timeout=60)
            deadline = time.monotonic() + 10
            while server.health()["queue"]["waiting"] < 1:
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.01)
            for _ in range(3):
                response = httpx.post(url, json={"prompt": "x", "max_tokens": 2}, timeout=10)
                assert _error(response, 503)["code"] == "server_overloaded"
                assert response.headers["retry-after"] == "1"
            running.close()  # the client leaves; the queued request gets the model
            queued = waiting.result(timeout=60)
    assert queued.status_code == 200 and queued.json()["usage"]["completion_tokens"] > 0
    health = server.wait_idle()
    assert health["queue"]["rejected"] == 3
    ok = httpx.post(url, json={"prompt": "x", "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200


def test_stream_disconnect_stops_generation(server: Server) -> None:
    before = server.wait_idle()["queue"]
    body = {"model": "tiny", "messages": CHAT, "max_tokens": LONG, "stream": True, "logit_bias": NO_EOS}
    received = 0
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                received += 1
                if received == 5:
                    break
    after = server.wait_idle(timeout=120)["queue"]  # a hang guard; the chunk count below is the behaviour
    assert after["cancelled"] == before["cancelled"] + 1
    generated = after["produced_chunks"] - before["produced_chunks"]
    assert generated < LONG / 3, f"{generated} chunks were generated after the client left"
    # The abort sent when the client left was used up or withdrawn: the next request runs normally.
    again = server.client().completions.create(model="tiny", prompt="x", max_tokens=4, logit_bias=NO_EOS)
    assert again.usage is not None and again.usage.completion_tokens == 4


def test_non_stream_disconnect_stops_generation(server: Server) -> None:
    before = server.wait_idle()["queue"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            server.url + "/v1/completions",
            json={"model": "tiny", "prompt": "x", "max_tokens": LONG, "logit_bias": NO_EOS},
            timeout=0.3,
        )
    after = server.wait_idle(timeout=120)["queue"]  # a hang guard; the token count below is the behaviour
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["served"] == before["served"]  # nobody got that answer
    generated = after["completion_tokens"] - before["completion_tokens"]
    assert 0 < generated < LONG, f"{generated} tokens: generation was not cut short"


def test_oversized_body_is_413(server: Server) -> None:
    body = json.dumps({"prompt": "x" * (9 * 1024 * 1024)}).encode()
    response = httpx.post(
        server.url + "/v1/completions", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    assert "larger than" in _error(response, 413)["message"]
    assert server.health()["status"] == "ok"


def test_chat_logprobs_and_template_kwargs(server: Server) -> None:
    result = server.client().chat.completions.create(
        model="tiny",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    content = result.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == result.usage.completion_tokens  # type: ignore[union-attr]
    assert all(len(item.top_logprobs) == 2 and item.logprob <= 0 for item in content)


def test_lone_surrogate_in_message_is_400(server: Server) -> None:
    body = b'{"messages": [{"role": "user", "content": "broken \\ud800 text"}], "max_tokens": 2}'
    response = httpx.post(
        server.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"}, timeout=30
    )
    assert "not valid unicode" in _error(response, 400)["message"].lower()


@pytest.mark.slow
def test_default_model_server(default_model_path: Path, tmp_path: Path) -> None:
    # No --model: the server loads the default gemma-3-270m, like `python -m llamarcp`.
    with contextlib.contextmanager(_start)(None, tmp_path) as server:
        client = server.client(timeout=300)
        (model,) = client.models.list().data
        assert model.id == default_model_path.name
        result = client.chat.completions.create(model=model.id, messages=CHAT, max_tokens=8, temperature=0)  # type: ignore[arg-type]
        assert result.choices[0].message.content
        stream = client.chat.completions.create(
            model=model.id,
            messages=CHAT,  # type: ignore[arg-type]
            max_tokens=8,
            temperature=0,
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream)
        assert text == result.choices[0].message.content
        vector = client.embeddings.create(model=model.id, input="hello").data[0].embedding
        assert len(vector) == 640  # gemma-3-270m's n_embd


def test_forced_tool_call_streamed_through_openai_client(server: Server) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "set_mode",
            "parameters": {"type": "object", "properties": {"mode": {"enum": ["on", "off"]}}, "required": ["mode"]},
        },
    }
    stream = server.client().chat.completions.create(
        model="tiny",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=128,
        seed=3,
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "set_mode"}},
        stream=True,
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id
    assert calls[0].function.name == "set_mode"  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments or "") in ({"mode": "on"}, {"mode": "off"})  # type: ignore[union-attr]


def test_help_lists_the_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llamarcp.server", "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    for flag in ("--model", "--host", "--port", "--api-key", "--max-queue", "--ctx-size", "--chat-format"):
        assert flag in out


def test_chat_template_file(keyed_server: Server, tiny_llama: Any) -> None:
    from llamarcp.chat import ChatFormatter

    result = keyed_server.client().chat.completions.create(model="tiny", messages=CHAT, max_tokens=2, temperature=0)  # type: ignore[arg-type]
    prompt = ChatFormatter(CUSTOM_TEMPLATE).render(CHAT)
    assert prompt.startswith("[system] You are terse.\n[user] Say hello.")
    expected = tiny_llama.tokenize(prompt.encode(), add_bos=True, special=True)
    assert result.usage is not None and result.usage.prompt_tokens == len(expected)


def test_unreadable_chat_template_file_is_refused(tiny_model_path: Path, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "llamarcp.server", "--model", str(tiny_model_path)]
    missing = subprocess.run(
        [*args, "--chat-template-file", str(tmp_path / "nope.jinja")], capture_output=True, text=True, cwd=ROOT
    )
    assert missing.returncode == 2 and "cannot read --chat-template-file" in missing.stderr


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--chat-template-file", "BROKEN"], "syntax error on line 1"),
        (["--model", "/nonexistent/model.gguf"], "model file not found"),
    ],
)
def test_startup_failures_exit_with_a_clear_error(
    tiny_model_path: Path, tmp_path: Path, extra: list[str], fragment: str
) -> None:
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for %}")
    args = [sys.executable, "-m", "llamarcp.server", "--model", str(tiny_model_path), "--port", str(_free_port())]
    args += [str(broken) if a == "BROKEN" else a for a in extra]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode != 0
    assert fragment in done.stderr
