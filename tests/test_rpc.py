"""llamarcp.rpc: endpoint parsing, the Python-side server check, and real `ggml-rpc-server` workers on loopback.

The slow tests build the RPC variant of the llama.cpp tree the bindings were generated from once (the pin, or the
bumped tree: `build_lib.build(codegen.generate.bindings_build_source(), backends=["rpc"])`, cached)
and start `ggml-rpc-server` processes on free 127.0.0.1 ports. Every model load runs in a child process
(tests/rpc_child.py) because a process keeps the one libllama it loaded and llama.cpp aborts the process that
loses an RPC worker; each child runs under a timeout so a hang fails the test instead of blocking the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llamarcp import rpc
from llamarcp.errors import LlamaError, RpcProtocolError, RpcServerUnreachableError

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).with_name("rpc_child.py")
CHILD_TIMEOUT = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_child(lib_dir: Path, *args: str, timeout: float = CHILD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LLAMARCP_LIB_PATH=str(lib_dir), GGML_NO_BACKTRACE="1")
    env.pop("LLAMA_CPP_LIB_PATH", None)
    return subprocess.run(
        [sys.executable, str(CHILD), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def _child_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------------------------------------ endpoints


def test_parse_servers_accepts_llama_cli_syntax() -> None:
    assert rpc.parse_servers("127.0.0.1:50052, worker-2:50053") == ["127.0.0.1:50052", "worker-2:50053"]
    assert rpc.parse_servers(["a:1", "b:00065535"]) == ["a:1", "b:65535"]


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ("", "is not 'host:port'"),
        ([], "no RPC servers"),
        ("localhost", "is not 'host:port'"),
        (":50052", "is not 'host:port'"),
        ("host:", "is not 'host:port'"),
        ("host:port", "port must be a number"),
        ("host:0", "port must be a number"),
        ("host:70000", "port must be a number"),
        ("[::1]:50052", "IPv6"),
        ("::1:50052", "is not 'host:port'"),
        ("a:1,a:1", "listed twice"),
        ("a:1,,b:2", "is not 'host:port'"),
    ],
)
def test_parse_servers_rejects(servers: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rpc.parse_servers(servers)


def test_parse_servers_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="host:port"):
        rpc.parse_servers([("127.0.0.1", 50052)])  # type: ignore[list-item]


# ------------------------------------------------------------------------- server check against fake servers


def test_check_server_connection_refused() -> None:
    endpoint = f"127.0.0.1:{_free_port()}"
    with pytest.raises(RpcServerUnreachableError, match="cannot connect") as info:
        rpc.check_server(endpoint, timeout=2)
    assert info.value.endpoint == endpoint
    assert isinstance(info.value, LlamaError) and isinstance(info.value, ConnectionError)


def test_check_server_unknown_host() -> None:
    with pytest.raises(RpcServerUnreachableError, match="cannot resolve host"):
        rpc.check_server("no-such-host.invalid:50052", timeout=2)


def test_check_server_silent_listener_times_out() -> None:
    # The kernel accepts the connection (backlog) but nobody answers: what a busy ggml-rpc-server looks like.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        endpoint = f"127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(RpcServerUnreachableError, match="did not answer the RPC handshake within 0.5 s"):
            rpc.check_server(endpoint, timeout=0.5)


def _one_shot_server(reply: Callable[[socket.socket], None]) -> tuple[str, threading.Thread]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                reply(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"127.0.0.1:{listener.getsockname()[1]}", thread


def test_check_server_peer_closes() -> None:
    endpoint, thread = _one_shot_server(lambda conn: None)
    with pytest.raises(RpcProtocolError, match="closed the connection during the RPC handshake"):
        rpc.check_server(endpoint, timeout=5)
    thread.join(5)


def test_check_server_wrong_answer() -> None:
    def reply(conn: socket.socket) -> None:
        conn.recv(64)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    endpoint, thread = _one_shot_server(reply)
    with pytest.raises(RpcProtocolError, match="unexpected handshake answer"):
        rpc.check_server(endpoint, timeout=5)
    thread.join(5)


def test_check_server_reads_version() -> None:
    received: list[bytes] = []

    def reply(conn: socket.socket) -> None:
        received.append(conn.recv(64))
        conn.sendall(struct.pack("<Q", 28) + bytes([7, 1, 2, 0]) + bytes(24))

    endpoint, thread = _one_shot_server(reply)
    assert rpc.check_server(endpoint, timeout=5) == (7, 1, 2)
    thread.join(5)
    assert received == [bytes([14]) + struct.pack("<Q", 24) + bytes(24)]  # HELLO, 24 capability bytes


def test_handshake_constants_match_the_pinned_llama_cpp(llama_cpp_source: Path) -> None:
    # check_server speaks the HELLO (format of protocol 7 and later) itself; a bump that changes it must fail here.
    rpc_header = (llama_cpp_source / "ggml/include/ggml-rpc.h").read_text()
    transport = (llama_cpp_source / "ggml/src/ggml-rpc/transport.h").read_text()
    client = (llama_cpp_source / "ggml/src/ggml-rpc/ggml-rpc.cpp").read_text()
    from llamarcp import lib

    assert f"#define RPC_PROTO_MAJOR_VERSION    {lib.RPC_PROTO_MAJOR_VERSION}" in rpc_header  # bindings follow it
    assert lib.RPC_PROTO_MAJOR_VERSION >= rpc._HELLO_CAPS_SINCE_MAJOR
    assert f"RPC_CONN_CAPS_SIZE = {rpc._CONN_CAPS_SIZE};" in transport
    assert f"static_assert(RPC_CMD_HELLO == {rpc._CMD_HELLO}" in client
    request = client.split("struct rpc_msg_hello_req {")[1].split("};")[0]
    response = client.split("struct rpc_msg_hello_rsp {")[1].split("};")[0]
    assert [line.split()[1] for line in request.strip().splitlines()] == ["conn_caps[RPC_CONN_CAPS_SIZE];"]
    fields = [line.split()[1] for line in response.strip().splitlines()]
    assert fields == ["major;", "minor;", "patch;", "padding;", "conn_caps[RPC_CONN_CAPS_SIZE];"]  # 4 + caps bytes


# ------------------------------------------------------------------------------------------- tensor_split


@pytest.mark.parametrize(
    ("split", "message"),
    [([-1.0], "finite and >= 0"), ([float("nan")], "finite and >= 0"), ([float("inf")], "finite and >= 0")],
)
def test_tensor_split_rejects_bad_values(tiny_model_path: Path, split: list[float], message: str) -> None:
    from llamarcp import Llama

    with pytest.raises(ValueError, match=message):
        Llama(str(tiny_model_path), tensor_split=split, n_threads=1)


def test_tensor_split_longer_than_llama_max_devices(tiny_model_path: Path) -> None:
    from llamarcp import Llama, lib

    with pytest.raises(ValueError, match="at most"):
        Llama(str(tiny_model_path), tensor_split=[1.0] * (int(lib.llama_max_devices()) + 1), n_threads=1)


def test_tensor_split_on_a_cpu_only_build_changes_nothing(tiny_model_path: Path) -> None:
    from llamarcp import Llama

    outputs = []
    for split in (None, [3.0, 1.0]):
        with Llama(str(tiny_model_path), tensor_split=split, n_gpu_layers=99, n_threads=1) as llm:
            outputs.append(llm("Once upon a time", max_tokens=8, temperature=0)["choices"][0]["text"])
    assert outputs[0] == outputs[1] != ""


def test_cli_tensor_split_syntax() -> None:
    from llamarcp.__main__ import build_parser

    parser = build_parser()
    assert parser.parse_args(["-ts", "3,1"]).tensor_split == [3.0, 1.0]
    assert parser.parse_args(["--tensor-split", "1/0/2"]).tensor_split == [1.0, 0.0, 2.0]
    with pytest.raises(SystemExit):
        parser.parse_args(["-ts", "3;1"])


# ------------------------------------------------------------------------------- library without RPC support


def _bindings_build(backends: list[str] | None = None) -> Path:
    """A library of the tree the bindings describe (the pin, or the bumped tree), so the ABI guard accepts it."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import build_lib
    from codegen.generate import bindings_build_source

    return Path(build_lib.build(bindings_build_source(), backends=backends))


@pytest.fixture(scope="session")
def cpu_lib_dir() -> Path:
    return _bindings_build()


def test_rpc_servers_need_rpc_build(cpu_lib_dir: Path, tiny_model_path: Path) -> None:
    report = _child_json(_run_child(cpu_lib_dir, "error", str(tiny_model_path), "--rpc", "127.0.0.1:50052"))
    assert report["error"] == "BackendUnavailableError", report
    assert "LlamaError" in report["mro"]
    assert "built without the RPC backend" in report["message"]
    assert "build_lib.py --rpc" in report["message"]


# ------------------------------------------------------------------------- real ggml-rpc-server on loopback


@pytest.fixture(scope="session")
def rpc_lib_dir() -> Path:
    """The bindings' llama.cpp built with GGML_RPC=ON plus ggml-rpc-server (one extra build per CI run, cached)."""
    return _bindings_build(["rpc"])


class RpcWorkers:
    """Starts ggml-rpc-server processes on free loopback ports; `close()` kills every one still running."""

    def __init__(self, binary: Path, log_dir: Path) -> None:
        self.binary = binary
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, count: int = 1) -> list[str]:
        started = []
        for _ in range(count):
            port = _free_port()
            endpoint = f"127.0.0.1:{port}"
            log = (self.log_dir / f"rpc-server-{port}.log").open("wb")
            cmd = [str(self.binary), "-H", "127.0.0.1", "-p", str(port), "-t", "1"]
            self.procs[endpoint] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            log.close()
            started.append(endpoint)
        for endpoint in started:
            self._wait_ready(endpoint)
        return started

    def _wait_ready(self, endpoint: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            if self.procs[endpoint].poll() is not None:
                pytest.fail(f"ggml-rpc-server {endpoint} exited: {self.log(endpoint)}")
            try:
                rpc.check_server(endpoint, timeout=2)
                return
            except (RpcServerUnreachableError, RpcProtocolError):
                if time.monotonic() > deadline:
                    pytest.fail(f"ggml-rpc-server {endpoint} not ready after 30 s: {self.log(endpoint)}")
                time.sleep(0.1)

    def log(self, endpoint: str) -> str:
        return (self.log_dir / f"rpc-server-{endpoint.rpartition(':')[2]}.log").read_text(errors="replace")

    def kill(self, endpoint: str) -> None:
        proc = self.procs[endpoint]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def rpc_workers(rpc_lib_dir: Path, tmp_path: Path) -> Iterator[RpcWorkers]:
    binary = rpc_lib_dir.parent / "bin" / "ggml-rpc-server"
    assert binary.is_file(), f"build_lib.py --rpc did not install {binary}"
    workers = RpcWorkers(binary, tmp_path)
    try:
        yield workers
    finally:
        workers.close()


@pytest.mark.slow
def test_greedy_output_over_two_rpc_servers_equals_local(
    rpc_lib_dir: Path, rpc_workers: RpcWorkers, tiny_model_path: Path
) -> None:
    servers = rpc_workers.start(2)
    local = _child_json(_run_child(rpc_lib_dir, "generate", str(tiny_model_path), "--n-predict", "48"))
    remote = _child_json(
        _run_child(rpc_lib_dir, "generate", str(tiny_model_path), "--rpc", ",".join(servers), "--n-predict", "48")
    )
    assert local["library"] == remote["library"] and Path(local["library"]).parent == rpc_lib_dir
    assert local["devices"] == []
    assert [d[:3] for d in remote["devices"]] == ["RPC", "RPC"], remote["devices"]
    # both workers hold part of the weights, and no layer was assigned to the local CPU
    for endpoint in servers:
        assert any(f"[{endpoint}] model buffer size" in line for line in remote["placement_log"]), remote
    assigned = [line for line in remote["placement_log"] if "assigned to device" in line]
    assert len(assigned) == 3 and all("device RPC" in line for line in assigned), assigned  # 2 layers + output
    local_assigned = [line for line in local["placement_log"] if "assigned to device" in line]
    assert len(local_assigned) == 3 and all("device CPU" in line for line in local_assigned), local_assigned
    # llama.cpp's own connections to both workers carry llamarcp's keepalive and user timeout
    assert sorted(remote["socket_options"]) == [[1, rpc.KEEPALIVE_IDLE, rpc.USER_TIMEOUT_MS]] * 2
    assert remote["completion_tokens"] == local["completion_tokens"] == 48
    assert remote["text"] == local["text"]
    for endpoint in servers:
        assert "Accepted client connection" in rpc_workers.log(endpoint)


@pytest.mark.slow
@pytest.mark.parametrize("split", ["1,0", "0,1"])
def test_tensor_split_chooses_the_worker(
    rpc_lib_dir: Path, rpc_workers: RpcWorkers, tiny_model_path: Path, split: str
) -> None:
    servers = rpc_workers.start(2)
    local = _child_json(_run_child(rpc_lib_dir, "generate", str(tiny_model_path), "--n-predict", "16"))
    args = ["--rpc", ",".join(servers), "--tensor-split", split, "--n-predict", "16"]
    remote = _child_json(_run_child(rpc_lib_dir, "generate", str(tiny_model_path), *args))
    chosen = remote["devices"][split.split(",").index("1")]
    assigned = [line for line in remote["placement_log"] if "assigned to device" in line]
    assert len(assigned) == 3 and all(f"device {chosen}," in line for line in assigned), (chosen, assigned)
    assert remote["text"] == local["text"]


@pytest.mark.slow
def test_unreachable_rpc_server_is_a_python_error(rpc_lib_dir: Path, tiny_model_path: Path) -> None:
    endpoint = f"127.0.0.1:{_free_port()}"
    report = _child_json(_run_child(rpc_lib_dir, "error", str(tiny_model_path), "--rpc", endpoint, timeout=60))
    assert report["error"] == "RpcServerUnreachableError", report
    assert endpoint in report["message"] and "cannot connect" in report["message"]


@pytest.mark.slow
def test_busy_rpc_server_times_out_instead_of_hanging(
    rpc_lib_dir: Path, rpc_workers: RpcWorkers, tiny_model_path: Path
) -> None:
    (endpoint,) = rpc_workers.start(1)
    host, _, port = endpoint.rpartition(":")
    # Another client holds the worker (it serves one at a time); llama.cpp alone would wait for it forever.
    with socket.create_connection((host, int(port)), timeout=5) as other_client:
        other_client.sendall(bytes([14]) + struct.pack("<Q", 24) + bytes(24))
        other_client.recv(64)
        # The child's timeout is the hang guard: a child still waiting on the busy worker fails the test.
        report = _child_json(_run_child(rpc_lib_dir, "error", str(tiny_model_path), "--rpc", endpoint, timeout=60))
    assert report["error"] == "RpcServerUnreachableError", report
    assert "did not answer the RPC handshake" in report["message"]


@pytest.mark.slow
def test_one_worker_serves_one_open_model_per_process(
    rpc_lib_dir: Path, rpc_workers: RpcWorkers, tiny_model_path: Path
) -> None:
    (endpoint,) = rpc_workers.start(1)
    report = _child_json(_run_child(rpc_lib_dir, "share", str(tiny_model_path), "--rpc", endpoint))
    assert report["second_error"] is not None, report
    assert report["second_error"][0] == "RpcServerInUseError"
    assert endpoint in report["second_error"][1] and "another open model" in report["second_error"][1]
    # the refused load left the first model working, and closing it frees the worker for the next one
    assert report["first"] == report["again"] == report["after_close"] != ""


@pytest.mark.slow
def test_worker_killed_mid_generation_ends_child_with_clear_error(
    rpc_lib_dir: Path, rpc_workers: RpcWorkers, tiny_model_path: Path
) -> None:
    servers = rpc_workers.start(2)
    env = dict(os.environ, LLAMARCP_LIB_PATH=str(rpc_lib_dir), GGML_NO_BACKTRACE="1")
    env.pop("LLAMA_CPP_LIB_PATH", None)
    cmd = [sys.executable, str(CHILD), "stream-then-wait", str(tiny_model_path), "--rpc", ",".join(servers)]
    child = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    try:
        assert child.stdout is not None and child.stdin is not None and child.stderr is not None
        ready = ""
        timer = threading.Timer(CHILD_TIMEOUT, child.kill)  # readline below must not wait forever
        timer.start()
        try:
            ready = child.stdout.readline()
        finally:
            timer.cancel()
        assert ready.strip() == "READY", f"child did not start generating: {ready!r} {child.stderr.read()[-3000:]}"
        rpc_workers.kill(servers[1])  # mid-generation: the first token is out, the rest needs the worker
        child.stdin.write("go\n")
        child.stdin.flush()
        stdout, stderr = child.communicate(timeout=60)  # TimeoutExpired here would be the hang this test forbids
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert '"finished": true' not in stdout
    assert child.returncode != 0
    assert "Remote RPC server crashed or returned malformed response" in stderr, stderr[-3000:]


@pytest.mark.slow
def test_cli_rpc_flag(rpc_lib_dir: Path, rpc_workers: RpcWorkers, tiny_model_path: Path, cpu_lib_dir: Path) -> None:
    servers = ",".join(rpc_workers.start(2))

    def cli(lib_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, LLAMARCP_LIB_PATH=str(lib_dir), GGML_NO_BACKTRACE="1")
        env.pop("LLAMA_CPP_LIB_PATH", None)
        cmd = [sys.executable, "-m", "llamarcp", "-m", str(tiny_model_path), "-p", "Once upon a time", "-n", "16"]
        return subprocess.run(
            [*cmd, "--temp", "0", "-t", "1", *args], capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env
        )

    remote = cli(rpc_lib_dir, "--rpc", servers, "-ngl", "99")
    local = cli(rpc_lib_dir)
    assert remote.returncode == 0 and local.returncode == 0, remote.stderr[-2000:] + local.stderr[-2000:]
    assert remote.stdout == local.stdout and remote.stdout.startswith("Once upon a time")
    assert "eval time" in remote.stderr  # the llama-cli style timing lines
    refused = cli(rpc_lib_dir, "--rpc", f"127.0.0.1:{_free_port()}", "-ngl", "99")
    assert (
        refused.returncode == 1
        and "error: RPC server 127.0.0.1:" in refused.stderr
        and "cannot connect" in refused.stderr
    )
    malformed = cli(rpc_lib_dir, "--rpc", "127.0.0.1", "-ngl", "99")
    assert malformed.returncode == 2 and "is not 'host:port'" in malformed.stderr
    no_backend = cli(cpu_lib_dir, "--rpc", servers, "-ngl", "99")
    assert no_backend.returncode == 1 and "built without the RPC backend" in no_backend.stderr


_SYMBOL_PROBE = """
import json
import llamarcp
from llamarcp._generated import _symbols
from llamarcp._libproxy import is_available
from llamarcp.errors import MissingSymbolError
lib = llamarcp.lib
names = _symbols.GROUPS["ggml-rpc"]
report = {"available": {n: is_available(lib, n) for n in names}, "supports_rpc": bool(lib.llama_supports_rpc())}
if not report["supports_rpc"]:  # with RPC, the raw call would connect (and abort on a refused connection)
    try:
        lib.ggml_backend_rpc_add_server(b"127.0.0.1:1")
    except MissingSymbolError as exc:
        report["missing_error"] = str(exc)
print(json.dumps(report))
"""


def _symbol_report(lib_dir: Path) -> dict[str, Any]:
    env = dict(os.environ, LLAMARCP_LIB_PATH=str(lib_dir))
    env.pop("LLAMA_CPP_LIB_PATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", _SYMBOL_PROBE], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )
    return _child_json(proc)


def test_rpc_functions_absent_from_cpu_build_raise_missing_symbol(cpu_lib_dir: Path) -> None:
    report = _symbol_report(cpu_lib_dir)
    assert report["supports_rpc"] is False
    assert report["available"] and not any(report["available"].values()), report
    assert "ggml_backend_rpc_add_server" in report["missing_error"]
    assert "build_lib.py --rpc" in report["missing_error"]


@pytest.mark.slow
def test_rpc_build_exports_every_generated_rpc_function(rpc_lib_dir: Path) -> None:
    report = _symbol_report(rpc_lib_dir)
    assert report["supports_rpc"] is True
    assert all(report["available"].values()), report
    assert "missing_error" not in report
    drift = subprocess.run(
        [sys.executable, "-m", "llamarcp.drift", "symbols", str(rpc_lib_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert drift.returncode == 0, drift.stdout + drift.stderr
    assert "0 error(s)" in drift.stdout + drift.stderr
    assert "ggml_backend_rpc" not in drift.stdout + drift.stderr  # no "not exported" note for the RPC group


@pytest.mark.slow
def test_server_settings_rpc_servers(rpc_lib_dir: Path, rpc_workers: RpcWorkers, tiny_model_path: Path) -> None:
    (endpoint,) = rpc_workers.start(1)
    report = _child_json(_run_child(rpc_lib_dir, "server-state", str(tiny_model_path), "--rpc", endpoint))
    assert [d[:3] for d in report["devices"]] == ["RPC"]
    assert report["text"] == report["local_text"] != ""  # generated through the worker, same as on the CPU
    assert report["embedding"] > 0  # the embeddings model loads locally beside it (one model per worker)
    from llamarcp.server.__main__ import build_parser

    assert build_parser().parse_args(["--rpc", endpoint, "-ngl", "99"]).rpc_servers == endpoint


#: A private network namespace, and a PID namespace whose end (the child aborting) kills the worker started in it.
UNSHARE = ["unshare", "--net", "--pid", "--fork", "--kill-child"]


def _can_unshare_network() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(UNSHARE + ["ip", "link", "set", "lo", "up"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.slow
def test_worker_network_vanishing_mid_generation_is_bounded(rpc_lib_dir: Path, tiny_model_path: Path) -> None:
    # The worker stays alive but its network goes away (loopback down in a private network namespace): without
    # llamarcp's TCP timeouts on llama.cpp's connection the client would wait forever.
    if not _can_unshare_network():
        pytest.skip("needs `unshare --net --pid` (root or user namespaces) to take a private loopback down")
    binary = rpc_lib_dir.parent / "bin" / "ggml-rpc-server"
    env = dict(os.environ, LLAMARCP_LIB_PATH=str(rpc_lib_dir), GGML_NO_BACKTRACE="1")
    env.pop("LLAMA_CPP_LIB_PATH", None)
    port = 20000 + os.getpid() % 40000  # names this run's worker among any other run's on the machine
    cmd = [*UNSHARE, sys.executable, str(CHILD), "vanish", str(tiny_model_path), "--server-binary", str(binary)]
    cmd += ["--port", str(port)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)  # the hang guard
    assert "FIRST" in proc.stdout and "NETWORK DOWN" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert '"finished": true' not in proc.stdout
    assert proc.returncode != 0
    assert "Remote RPC server crashed or returned malformed response" in proc.stderr, proc.stderr[-3000:]
    deadline = time.monotonic() + 10  # the kernel kills the namespace's processes when its first one ends
    while True:
        leftover = subprocess.run(["pgrep", "-f", f"{binary} -H 127.0.0.1 -p {port} "], capture_output=True, text=True)
        if not leftover.stdout.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert leftover.stdout.strip() == "", f"worker outlived its namespace: {leftover.stdout}"


@pytest.mark.slow
def test_rpc_module_cli_lists_worker_devices(rpc_lib_dir: Path, rpc_workers: RpcWorkers, cpu_lib_dir: Path) -> None:
    servers = rpc_workers.start(2)

    def check(lib_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, LLAMARCP_LIB_PATH=str(lib_dir))
        env.pop("LLAMA_CPP_LIB_PATH", None)
        cmd = [sys.executable, "-m", "llamarcp.rpc", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)

    listed = check(rpc_lib_dir, ",".join(servers))
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [row[1] for row in rows] == servers  # one CPU device per worker, in the given order
    assert all(row[0].startswith("RPC") and row[3].endswith("MiB") for row in rows), rows
    refused = check(rpc_lib_dir, f"127.0.0.1:{_free_port()}", "--timeout", "2")
    assert refused.returncode == 1 and "cannot connect" in refused.stderr
    no_backend = check(cpu_lib_dir, servers[0])
    assert no_backend.returncode == 1 and "built without the RPC backend" in no_backend.stderr
