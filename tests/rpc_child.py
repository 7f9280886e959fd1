"""Child process for tests/test_rpc.py: one RPC scenario per run, in a process of its own.

A process loads one libllama for good, and llama.cpp's RPC client aborts its process when a worker dies, so
the tests run every scenario here with LLAMARCP_LIB_PATH chosen by the parent and read the JSON line printed
last on stdout (or, for the worker-loss scenario, the exit status and stderr).

    python tests/rpc_child.py generate MODEL [--rpc H:P,H:P] [--ngl N] [--n-predict N]
    python tests/rpc_child.py error MODEL --rpc H:P          # prints the exception class and message
    python tests/rpc_child.py stream-then-wait MODEL --rpc H:P  # 1st token, "READY", waits for a stdin line
    python tests/rpc_child.py share MODEL --rpc H:P          # two open models on one worker, then one after close
    python tests/rpc_child.py server-state MODEL --rpc H:P   # the OpenAI server's model state with --rpc
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "Once upon a time"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _emit(payload: dict[str, object]) -> None:
    print(json.dumps(payload), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "scenario", choices=["generate", "error", "stream-then-wait", "share", "server-state", "vanish"]
    )
    parser.add_argument("--server-binary", help="vanish: ggml-rpc-server to start inside this network namespace")
    parser.add_argument("--port", type=int, default=50052, help="vanish: the worker's port in the namespace")
    parser.add_argument("model")
    parser.add_argument("--rpc", default=None)
    parser.add_argument("--ngl", type=int, default=99)
    parser.add_argument("--n-predict", type=int, default=48)
    parser.add_argument("--tensor-split", default=None, help="comma-separated shares per device")
    opts = parser.parse_args()

    capture = _Capture()
    llama_log = logging.getLogger("llamarcp.llama_cpp")
    llama_log.addHandler(capture)
    llama_log.setLevel(logging.DEBUG)

    from llamarcp import Llama
    from llamarcp._lib import loaded_path

    if opts.scenario == "vanish":
        return _vanish(opts)

    kwargs: dict[str, Any] = {"n_ctx": 512, "n_threads": 1, "seed": 7, "n_gpu_layers": opts.ngl}
    if opts.tensor_split:
        kwargs["tensor_split"] = [float(v) for v in opts.tensor_split.split(",")]
    if opts.scenario == "error":
        try:
            Llama(opts.model, rpc_servers=opts.rpc, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reporting whatever was raised is the point
            _emit({"error": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__], "message": str(exc)})
            return 0
        _emit({"error": None})
        return 0

    if opts.scenario == "server-state":  # what `python -m llamarcp.server --rpc ... -ngl 99` loads
        from llamarcp.server.app import ServerSettings, ServerState

        state = ServerState(ServerSettings(model=opts.model, rpc_servers=opts.rpc, n_gpu_layers=opts.ngl, n_threads=1))
        state.load()
        text = state.llama("Hello", max_tokens=8, temperature=0)["choices"][0]["text"]
        served = state.llama._model._devices
        vector = state.embedding_model().embed("Hello")
        devices = [d.name for d in served.devices] if served else []
        state.close()
        with Llama(opts.model, n_ctx=512, n_threads=1) as local:
            local_text = local("Hello", max_tokens=8, temperature=0)["choices"][0]["text"]
        _emit({"text": text, "local_text": local_text, "devices": devices, "embedding": len(vector)})
        return 0
    llm = Llama(opts.model, rpc_servers=opts.rpc, **kwargs)
    if opts.scenario == "share":  # a second open model on the same worker, then one after the first is closed
        first = llm("Hello", max_tokens=8, temperature=0)["choices"][0]["text"]
        try:
            Llama(opts.model, rpc_servers=opts.rpc, **kwargs)
            second_error = None
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            second_error = [type(exc).__name__, str(exc)]
        again = llm("Hello", max_tokens=8, temperature=0)["choices"][0]["text"]
        llm.close()
        third = Llama(opts.model, rpc_servers=opts.rpc, **kwargs)
        after = third("Hello", max_tokens=8, temperature=0)["choices"][0]["text"]
        third.close()
        _emit({"first": first, "again": again, "after_close": after, "second_error": second_error})
        return 0
    if opts.scenario == "stream-then-wait":
        for i, chunk in enumerate(llm.create_completion(PROMPT, max_tokens=400, temperature=0, stream=True)):
            if i == 0:
                print("READY", flush=True)
                sys.stdin.readline()  # the parent kills a worker now
            print(f"TOKEN {json.dumps(chunk['choices'][0]['text'])}", flush=True)
        _emit({"finished": True})
        return 0

    start = time.perf_counter()
    out = llm.create_completion(PROMPT, max_tokens=opts.n_predict, temperature=0)
    seconds = time.perf_counter() - start
    devices = [d.name for d in llm._model._devices.devices] if llm._model._devices is not None else []
    socket_options = _socket_options(llm._model._devices.endpoints) if llm._model._devices is not None else []
    placement = [line.strip() for line in capture.lines if "model buffer size" in line or "assigned to device" in line]
    _emit(
        {
            "text": out["choices"][0]["text"],
            "completion_tokens": out["usage"]["completion_tokens"],
            "seconds": seconds,
            "timings": llm.last_timings,
            "devices": devices,
            "placement_log": placement,
            "socket_options": socket_options,
            "library": str(loaded_path()),
        }
    )
    llm.close()
    return 0


def _socket_options(endpoints: tuple[str, ...]) -> list[list[int]]:
    """[SO_KEEPALIVE, TCP_KEEPIDLE, TCP_USER_TIMEOUT] of llama.cpp's connections to the workers."""
    import os
    import socket

    from llamarcp import rpc

    options = []
    for fd in rpc._established_sockets(endpoints):
        with socket.socket(fileno=os.dup(fd)) as sock:
            options.append(
                [
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                ]
            )
    return options


def _vanish(opts: argparse.Namespace) -> int:
    """Run inside `unshare -n`: a worker on this namespace's loopback, which is taken down mid-generation."""
    import subprocess

    from llamarcp import Llama, rpc

    rpc.KEEPALIVE_IDLE, rpc.KEEPALIVE_INTERVAL, rpc.KEEPALIVE_COUNT, rpc.USER_TIMEOUT_MS = 2, 1, 2, 3000
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    server = subprocess.Popen(
        [opts.server_binary, "-H", "127.0.0.1", "-p", str(opts.port), "-t", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                rpc.check_server(f"127.0.0.1:{opts.port}", timeout=2)
                break
            except rpc.RpcServerUnreachableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        llm = Llama(opts.model, rpc_servers=f"127.0.0.1:{opts.port}", n_gpu_layers=99, n_ctx=512, n_threads=1)
        print("FIRST", json.dumps(llm(PROMPT, max_tokens=4, temperature=0)["choices"][0]["text"]), flush=True)
        subprocess.run(["ip", "link", "set", "lo", "down"], check=True)  # the worker's network is gone
        print("NETWORK DOWN", flush=True)
        llm(PROMPT + " again", max_tokens=4, temperature=0)
        _emit({"finished": True})
    finally:
        server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
