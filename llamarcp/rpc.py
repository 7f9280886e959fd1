"""Distributed inference through llama.cpp's own RPC backend: remote `ggml-rpc-server` workers as offload devices.

Each worker runs `ggml-rpc-server -H <bind address> -p <port>` (built by `python build_lib.py --rpc`). The client
side here resolves the RPC backend registry of the loaded library, adds every server with
`ggml_backend_rpc_add_server` (reached through `ggml_backend_reg_get_proc_address`, so backends loaded at run
time work too) and hands the servers' devices to `llama_model_params.devices`. Nothing is registered globally:
a `Llama` without `rpc_servers` in the same process keeps using the local devices only.

llama.cpp's RPC client aborts the whole process when a worker disappears or answers garbage, so every server is
checked from Python first (TCP connect + the protocol's HELLO handshake, both with a timeout): an unreachable,
busy or incompatible server becomes a Python exception instead of an abort or an endless wait. A worker lost
once a model uses it still ends the process (llama.cpp cannot recover from it); llama.cpp's connections get TCP
keepalive and a user timeout (`harden_connections`), so a worker whose host vanishes does too, instead of
leaving the client waiting forever. See the README.

One worker serves one open model of a process: the pinned llama.cpp's client re-runs a worker's cached graph by
id, and the worker drops that cache whenever any of its buffers is freed, so closing one of two models sharing a
worker would abort the process at the other's next decode. `rpc_devices` refuses the second model instead.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
import warnings
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from llamarcp._backend import RPC_REG_NAME as _RPC_REG_NAME
from llamarcp._backend import local_gpus
from llamarcp.errors import BackendUnavailableError, RpcProtocolError, RpcServerInUseError, RpcServerUnreachableError

__all__ = [
    "DEFAULT_TIMEOUT",
    "RpcDevice",
    "RpcDevices",
    "check_server",
    "harden_connections",
    "parse_servers",
    "rpc_devices",
    "supports_rpc",
]

#: Seconds allowed for connecting to a worker and for its handshake answer.
DEFAULT_TIMEOUT = 5.0

#: Wire constants of the RPC HELLO handshake (ggml-rpc.cpp and transport.h, in no header; tests/test_rpc.py re-reads
#: them from the tree the bindings were generated from): HELLO is command 14 in every version; since protocol 7 the
#: request carries 24 bytes of transport capabilities and the answer is major, minor, patch, a pad byte and 24
#: capability bytes. The protocol version itself is `lib.RPC_PROTO_MAJOR_VERSION` of the generated bindings.
_CMD_HELLO = 14
_HELLO_CAPS_SINCE_MAJOR = 7
_CONN_CAPS_SIZE = 24
_HELLO_RESPONSE_SIZE = 4 + _CONN_CAPS_SIZE

#: TCP settings put on llama.cpp's own connections to the workers (Linux), whose RPC client has no timeouts: a
#: worker whose host or network vanished is noticed after KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT
#: seconds of silence, or USER_TIMEOUT_MS after a request went unacknowledged, instead of never. A long graph
#: computation is unaffected (the worker's kernel keeps acknowledging). A frozen worker process is not detected.
KEEPALIVE_IDLE = 10
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
USER_TIMEOUT_MS = 30_000

_ADD_SERVER = b"ggml_backend_rpc_add_server"
_ADD_SERVER_TYPE = "ggml_backend_reg_t (*)(const char *)"

_live_lock = threading.Lock()
#: Device lists of loaded, not yet freed models (claimed by `_core.Model`): their servers serve this process.
_live: weakref.WeakSet[RpcDevices] = weakref.WeakSet()


# ------------------------------------------------------------------------------------------------- endpoints


def parse_servers(servers: str | Iterable[str]) -> list[str]:
    """`"h1:p1,h2:p2"` or `["h1:p1", ...]` -> validated endpoints, in order (llama-cli's `--rpc` syntax).

    llama.cpp splits an endpoint at its first colon, so IPv6 literals cannot be used (give a host name).
    """
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    endpoints: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"RPC server must be a 'host:port' string, got {type(item).__name__}")
        endpoint = item.strip()
        host, sep, port_text = endpoint.partition(":")
        if not sep or not host or not port_text:
            raise ValueError(f"RPC server {endpoint!r} is not 'host:port' (e.g. 192.168.1.10:50052)")
        if ":" in port_text or host.startswith("["):
            raise ValueError(f"RPC server {endpoint!r}: IPv6 literals are not supported by llama.cpp; use a host name")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"RPC server {endpoint!r}: port must be a number in 1..65535")
        endpoint = f"{host}:{int(port_text)}"
        if endpoint in endpoints:
            raise ValueError(f"RPC server {endpoint} is listed twice")
        endpoints.append(endpoint)
    if not endpoints:
        raise ValueError("no RPC servers given (expected 'host:port[,host:port...]')")
    return endpoints


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def check_server(endpoint: str, timeout: float = DEFAULT_TIMEOUT, *, handshake: bool = True) -> tuple[int, int, int]:
    """Connect to a worker and run the RPC HELLO handshake; return its protocol version (major, minor, patch).

    Raises RpcServerUnreachableError (no answer within `timeout`) or RpcProtocolError (not a compatible
    ggml-rpc-server). A worker serves one client at a time, so a worker busy with another client times out here
    instead of blocking llama.cpp forever. `handshake=False` only connects (returns (0, 0, 0)).
    """
    host, _, port = endpoint.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except socket.gaierror as exc:
        raise RpcServerUnreachableError(endpoint, f"cannot resolve host {host!r} ({exc.strerror})") from None
    except TimeoutError:  # TimeoutError on 3.10+, its own OSError subclass on 3.9
        raise RpcServerUnreachableError(endpoint, f"no connection within {timeout:g} s") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RpcServerUnreachableError(
            endpoint, f"cannot connect ({reason}); is `ggml-rpc-server -H <address> -p {port}` running there?"
        ) from None
    with sock:
        if not handshake:
            return (0, 0, 0)
        sock.sendall(bytes([_CMD_HELLO]) + struct.pack("<Q", _CONN_CAPS_SIZE) + bytes(_CONN_CAPS_SIZE))
        try:
            (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
            answer = _recv_exact(sock, size) if size == _HELLO_RESPONSE_SIZE else b""
        except TimeoutError:
            raise RpcServerUnreachableError(
                endpoint,
                f"accepted the connection but did not answer the RPC handshake within {timeout:g} s "
                "(a ggml-rpc-server serves one client at a time: is another client using it?)",
            ) from None
        except (EOFError, ConnectionError):
            raise RpcProtocolError(
                endpoint,
                "closed the connection during the RPC handshake "
                "(not a ggml-rpc-server of this llama.cpp's RPC protocol? see the server's log)",
            ) from None
    if not answer:
        raise RpcProtocolError(endpoint, f"unexpected handshake answer ({size} bytes); not a ggml-rpc-server?")
    major, minor, patch = answer[:3]
    return major, minor, patch


# --------------------------------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class RpcDevice:
    """One offload device: an RPC worker's device, or a local GPU used alongside them."""

    name: str
    description: str
    endpoint: str | None
    memory_free: int
    memory_total: int


class RpcDevices:
    """The NULL-terminated `ggml_backend_dev_t` array for `llama_model_params.devices`, plus what it holds.

    Keep this object alive as long as the model (it owns the array memory).
    """

    def __init__(self, endpoints: Sequence[str], handles: Sequence[Any], devices: Sequence[RpcDevice]) -> None:
        from llamarcp._ffi import ffi

        self.endpoints = tuple(endpoints)
        self.devices = tuple(devices)
        self.array = ffi.new("ggml_backend_dev_t[]", [*handles, ffi.NULL])

    def claim(self) -> None:
        """Mark the servers as serving a loaded model (called by the model owner once the load succeeded).

        The model's buffers now hold llama.cpp's connections to the workers open: they get their timeouts here.
        """
        with _live_lock:
            _live.add(self)
        harden_connections(self)

    def release(self) -> None:
        """The model using these devices was freed: its servers may serve another model of this process."""
        with _live_lock:
            _live.discard(self)

    def __len__(self) -> int:
        return len(self.devices)

    def __repr__(self) -> str:
        return f"<RpcDevices {', '.join(d.name for d in self.devices)} via {', '.join(self.endpoints)}>"


def supports_rpc(lib: Any = None) -> bool:
    """True when the loaded llama.cpp has the RPC backend (built with `python build_lib.py --rpc`)."""
    if lib is None:
        from llamarcp._backend import get_lib

        lib = get_lib()
    return bool(lib.llama_supports_rpc())


def _text(ptr: Any) -> str:
    from llamarcp._ffi import ffi

    return "" if ptr == ffi.NULL else ffi.string(ptr).decode("utf-8", errors="replace")


def _describe(lib: Any, dev: Any, endpoint: str | None) -> RpcDevice:
    from llamarcp._ffi import ffi

    free, total = ffi.new("size_t *"), ffi.new("size_t *")
    lib.ggml_backend_dev_memory(dev, free, total)
    return RpcDevice(
        _text(lib.ggml_backend_dev_name(dev)),
        _text(lib.ggml_backend_dev_description(dev)),
        endpoint,
        int(free[0]),
        int(total[0]),
    )


def _add_server_function(lib: Any) -> Any:
    from llamarcp._ffi import ffi
    from llamarcp._lib import loaded_path

    where = loaded_path() or "the loaded libllama"
    if not supports_rpc(lib):
        raise BackendUnavailableError(
            f"{where} was built without the RPC backend; build one with `python build_lib.py --rpc` "
            "and point LLAMARCP_LIB_PATH at the directory it prints"
        )
    reg = lib.ggml_backend_reg_by_name(_RPC_REG_NAME)
    address = ffi.NULL if reg == ffi.NULL else lib.ggml_backend_reg_get_proc_address(reg, _ADD_SERVER)
    if address == ffi.NULL:
        raise BackendUnavailableError(f"the RPC backend of {where} does not offer {_ADD_SERVER.decode()}")
    return ffi.cast(_ADD_SERVER_TYPE, address)


def _busy_endpoints() -> set[str]:
    with _live_lock:
        return {endpoint for devices in _live for endpoint in devices.endpoints}


def rpc_devices(
    servers: str | Iterable[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    include_local_gpus: bool = True,
) -> RpcDevices:
    """Check and add every RPC server; return the device list for `llama_model_params.devices`.

    The servers' devices come first (as llama.cpp orders them: fewer network transfers), then the local GPUs
    llama.cpp would have used anyway. `n_gpu_layers` decides how many layers leave the local CPU.
    """
    from llamarcp._backend import get_lib
    from llamarcp._ffi import ffi

    endpoints = parse_servers(servers)
    lib = get_lib()
    if len(endpoints) > int(lib.GGML_RPC_MAX_SERVERS):
        raise ValueError(f"{len(endpoints)} RPC servers given; llama.cpp supports at most {lib.GGML_RPC_MAX_SERVERS}")
    add_server = _add_server_function(lib)
    busy = _busy_endpoints()
    for endpoint in endpoints:
        if endpoint in busy:
            # llama.cpp would share its one connection, but freeing either model makes the server drop the graph
            # the other one re-runs by id, and the next decode aborts the process: one worker per open model.
            raise RpcServerInUseError(
                endpoint,
                "already serves another open model of this process (llama.cpp cannot share one worker between "
                "models safely); close that model first or start another ggml-rpc-server",
            )
        if int(lib.RPC_PROTO_MAJOR_VERSION) < _HELLO_CAPS_SINCE_MAJOR:  # an older HELLO format: connect only
            check_server(endpoint, timeout, handshake=False)
            continue
        major, minor, _ = check_server(endpoint, timeout)
        if major != int(lib.RPC_PROTO_MAJOR_VERSION) or minor > lib.RPC_PROTO_MINOR_VERSION:
            raise RpcProtocolError(
                endpoint,
                f"speaks RPC protocol {major}.{minor}, this llama.cpp speaks {lib.RPC_PROTO_MAJOR_VERSION}."
                f"{lib.RPC_PROTO_MINOR_VERSION}; run a ggml-rpc-server built from the same llama.cpp commit",
            )
    handles: list[Any] = []
    described: list[RpcDevice] = []
    for endpoint in endpoints:
        reg = add_server(endpoint.encode())
        if reg == ffi.NULL:
            raise RpcProtocolError(endpoint, "reports no devices")
        for i in range(int(lib.ggml_backend_reg_dev_count(reg))):
            dev = lib.ggml_backend_reg_dev_get(reg, i)
            handles.append(dev)
            described.append(_describe(lib, dev, endpoint))
    if include_local_gpus:
        for dev in local_gpus(lib):
            handles.append(dev)
            described.append(_describe(lib, dev, None))
    return RpcDevices(endpoints, handles, described)


def _established_sockets(endpoints: Iterable[str]) -> list[int]:
    """File descriptors of this process's established IPv4 TCP connections to `endpoints` (Linux /proc)."""
    wanted: set[tuple[str, int]] = set()
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        try:
            infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            continue
        wanted.update((str(info[4][0]), int(port)) for info in infos)
    by_inode: dict[str, int] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            by_inode[target[8:-1]] = int(name)
    fds = []
    with open("/proc/self/net/tcp") as table:
        for row in table.read().splitlines()[1:]:
            fields = row.split()
            remote_ip, remote_port = fields[2].split(":")
            raw = bytes.fromhex(remote_ip)  # the kernel prints the address as a host-order u32
            ip = socket.inet_ntoa(raw[::-1] if sys.byteorder == "little" else raw)
            if fields[3] == "01" and (ip, int(remote_port, 16)) in wanted and fields[9] in by_inode:  # 01 = ESTABLISHED
                fds.append(by_inode[fields[9]])
    return fds


def harden_connections(devices: RpcDevices) -> int:
    """Put keepalive and a user timeout on llama.cpp's connections to `devices`' workers; return how many.

    llama.cpp opens and owns these sockets; the options are set through a duplicate of each descriptor (the
    duplicate is closed, the connection is not). Linux only (elsewhere nothing is changed and 0 is returned).
    """
    if not sys.platform.startswith("linux") or not hasattr(socket, "TCP_USER_TIMEOUT"):
        return 0
    try:
        fds = _established_sockets(devices.endpoints)
    except OSError:  # /proc unreadable (some sandboxes): keep llama.cpp's defaults
        return 0
    count = 0
    for fd in fds:
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
        except OSError:
            continue  # the descriptor went away between listing and duplicating it
        count += 1
    return count


def warn_if_unused(n_gpu_layers: int) -> None:
    """RPC servers only receive offloaded layers: say so when none are offloaded."""
    if n_gpu_layers == 0:
        warnings.warn(
            "rpc_servers given with n_gpu_layers=0: every layer stays on the local CPU "
            "(pass n_gpu_layers=-1, or -ngl 99 on the command line, to offload all layers to the servers)",
            stacklevel=3,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m llamarcp.rpc HOST:PORT[,HOST:PORT...]`: check the workers and list the devices a model would get."""
    import argparse

    from llamarcp.errors import LlamaError

    parser = argparse.ArgumentParser(
        prog="python -m llamarcp.rpc",
        description="Check RPC workers (ggml-rpc-server) and list the devices Llama(rpc_servers=...) would use.",
    )
    parser.add_argument("servers", help="comma-separated host:port list, as for --rpc")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per connection and handshake")
    args = parser.parse_args(argv)
    try:
        devices = rpc_devices(args.servers, timeout=args.timeout)
    except (LlamaError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for device in devices.devices:
        where = device.endpoint or "local"
        print(
            f"{device.name}\t{where}\t{device.description}\t"
            f"{device.memory_free // 2**20} MiB free of {device.memory_total // 2**20} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
