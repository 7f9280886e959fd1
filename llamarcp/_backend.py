"""Process-wide llama.cpp setup: backend init exactly once (thread-safe) and log routing to `logging`.

llama.cpp's log lines go to the `llamarcp.llama_cpp` logger. It has a NullHandler, so nothing is printed
unless the application configures logging or a `Llama(verbose=True)` asks for it (`set_verbose(True)`).

Why llama.cpp refused something is only in its log. `capture_log()` is the one way to quote it: the
warning/error lines logged by the calling thread while the `with` block runs, so two threads loading models
at once each quote their own reason. All log state is guarded by one lock (the callback runs on any thread).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the generated Protocol: mypy checks every lib.* call of the package against llama.h
    from llamarcp._generated.lib_types import Lib

__all__ = [
    "LogCapture",
    "capture_log",
    "check_main_gpu",
    "ensure_backend",
    "get_lib",
    "gpu_names",
    "init_numa",
    "last_log_errors",
    "local_gpus",
    "logger",
    "set_verbose",
]

logger = logging.getLogger("llamarcp.llama_cpp")
logger.addHandler(logging.NullHandler())

_lock = threading.Lock()  # backend init and verbose handler
_log_lock = threading.Lock()  # everything the log callback touches
_state: dict[str, Any] = {}
_levels: dict[int, int] = {}  # ggml_log_level -> logging level, filled from the generated constants at init
_cont_level = [-1]  # GGML_LOG_LEVEL_CONT: the line continues the previous message
_pending: dict[int, tuple[int, list[str]]] = {}  # per thread: a message llama.cpp has not ended with "\n" yet
_recent_errors: collections.deque[str] = collections.deque(maxlen=8)
_captures: dict[int, list[LogCapture]] = {}  # per thread: the active capture_log() blocks, innermost last
_verbose_handler: list[logging.Handler] = []


def get_lib() -> Lib:
    """The raw cffi lib with the backend initialised and logging routed; cheap after the first call."""
    lib = _state.get("lib")
    if lib is None:
        lib = ensure_backend()
    return lib


def ensure_backend() -> Lib:
    """Initialise llama.cpp once per process (any thread may call it) and return the raw lib."""
    lib = _state.get("lib")
    if lib is not None:
        return lib
    with _lock:
        if "lib" not in _state:
            from llamarcp._ffi import ffi
            from llamarcp._lib import load

            raw = load()
            _levels.update(
                {
                    raw.GGML_LOG_LEVEL_NONE: logging.DEBUG,
                    raw.GGML_LOG_LEVEL_DEBUG: logging.DEBUG,
                    raw.GGML_LOG_LEVEL_INFO: logging.INFO,
                    raw.GGML_LOG_LEVEL_WARN: logging.WARNING,
                    raw.GGML_LOG_LEVEL_ERROR: logging.ERROR,
                }
            )
            _cont_level[0] = raw.GGML_LOG_LEVEL_CONT
            callback = ffi.callback("ggml_log_callback", _on_log)
            _state["log_callback"] = callback  # must outlive every call from C
            raw.llama_log_set(callback, ffi.NULL)
            raw.llama_backend_init()
            atexit.register(_shutdown, raw, ffi)
            _state["lib"] = raw
    return _state["lib"]


def init_numa(strategy: int) -> None:
    """llama_numa_init once per process (llama-cpp-python's `numa=`): True means "distribute"."""
    lib = get_lib()
    with _lock:
        if "numa" in _state:
            return
        if strategy is True or strategy == 1:
            strategy = lib.GGML_NUMA_STRATEGY_DISTRIBUTE
        if not lib.GGML_NUMA_STRATEGY_DISABLED <= strategy < lib.GGML_NUMA_STRATEGY_COUNT:
            raise ValueError(f"numa must be a bool or a ggml_numa_strategy value, got {strategy!r}")
        lib.llama_numa_init(strategy)
        _state["numa"] = strategy


#: The backend registry name of ggml's RPC client: its devices are remote, never "local GPUs".
RPC_REG_NAME = b"RPC"


def local_gpus(lib: Any) -> list[Any]:
    """Local GPUs llama.cpp would offload to by default: discrete GPUs, else integrated ones (never CPU/RPC).

    The same list, in the same order, that `llama_model_load_from_file` builds: `main_gpu` indexes it."""
    from llamarcp._ffi import ffi

    gpus: list[Any] = []
    igpus: list[Any] = []
    seen_ids: set[bytes] = set()  # one physical GPU may be listed by two backends (e.g. CUDA and Vulkan)
    props = ffi.new("struct ggml_backend_dev_props *")
    for i in range(int(lib.ggml_backend_dev_count())):
        dev = lib.ggml_backend_dev_get(i)
        reg = lib.ggml_backend_dev_backend_reg(dev)
        if reg != ffi.NULL and ffi.string(lib.ggml_backend_reg_name(reg)) == RPC_REG_NAME:
            continue
        kind = int(lib.ggml_backend_dev_type(dev))
        if kind == int(lib.GGML_BACKEND_DEVICE_TYPE_GPU):
            lib.ggml_backend_dev_get_props(dev, props)
            device_id = ffi.string(props.device_id) if props.device_id != ffi.NULL else None
            if device_id is not None and device_id in seen_ids:
                continue
            if device_id is not None:
                seen_ids.add(device_id)
            gpus.append(dev)
        elif kind == int(lib.GGML_BACKEND_DEVICE_TYPE_IGPU) and (
            not igpus or lib.ggml_backend_dev_backend_reg(igpus[-1]) == reg  # as llama.cpp: one iGPU backend
        ):
            igpus.append(dev)
    return gpus or igpus


def gpu_names() -> list[str]:
    """'CUDA0 (NVIDIA H100 80GB HBM3)'-style names of the local GPUs of the loaded libllama ([] on a CPU build)."""
    from llamarcp._ffi import ffi

    lib = get_lib()
    names = []
    for dev in local_gpus(lib):
        name = ffi.string(lib.ggml_backend_dev_name(dev)).decode("utf-8", "replace")
        description = ffi.string(lib.ggml_backend_dev_description(dev)).decode("utf-8", "replace")
        names.append(f"{name} ({description})")
    return names


def check_main_gpu(main_gpu: int, has_devices: bool = False) -> None:
    """Refuse a `main_gpu` that names no local GPU (llama.cpp ignores it outside split_mode NONE, silently).

    -1 is llama.cpp's "no GPU" for split_mode NONE; 0 is the default and valid on a CPU build. With an explicit
    device list (`has_devices`, e.g. RPC servers) llama.cpp indexes that list and checks the index itself."""
    if not isinstance(main_gpu, int) or isinstance(main_gpu, bool):
        return  # the type is checked with every other params field (llamarcp.validate), in one place
    if main_gpu < -1:
        raise ValueError(f"main_gpu must be >= -1 (-1: no GPU with split_mode NONE), got {main_gpu}")
    if main_gpu <= 0 or has_devices:
        return
    names = gpu_names()
    if main_gpu >= len(names):
        seen = f"{len(names)} GPU(s): {', '.join(f'{i}={n}' for i, n in enumerate(names))}" if names else "no GPU"
        raise ValueError(f"main_gpu={main_gpu} is out of range: this libllama sees {seen}")


def _shutdown(lib: Any, ffi: Any) -> None:
    from llamarcp._managed import close_all
    from llamarcp.turns import settle_at_exit

    settle_at_exit()  # threads still generating stop first (or keep their memory): nothing is freed under them
    close_all()  # free models/contexts now, while their log lines can still reach `logging`
    # A Python callback must not run during interpreter teardown; late lines (rare) go to llama.cpp's stderr default.
    with contextlib.suppress(Exception):
        lib.llama_log_set(ffi.NULL, ffi.NULL)


#: A callable (level, raw bytes) that replaces the `logging` output (llama-cpp-python's `llama_log_set`); the
#: capture of warning/error reasons goes on regardless. Guarded by _log_lock.
_log_hook: list[Callable[[int, bytes], None] | None] = [None]


def set_log_hook(hook: Callable[[int, bytes], None] | None) -> None:
    """Send every piece llama.cpp logs to `hook(level, text)` instead of the `llamarcp.llama_cpp` logger (None:
    back to the logger). Exceptions the hook raises are dropped: nothing may propagate into C."""
    ensure_backend()
    with _log_lock:
        _log_hook[0] = hook


def _on_log(level: int, text: Any, _user_data: Any) -> None:
    from llamarcp._ffi import ffi

    try:
        raw = ffi.string(text) if text != ffi.NULL else b""
        message = raw.decode("utf-8", errors="replace")
    except Exception:
        return
    thread = threading.get_ident()
    finished: list[tuple[int, str]] = []
    with _log_lock:
        hook = _log_hook[0]
        pending = _pending.get(thread)
        if level != _cont_level[0] or pending is None:
            if pending is not None:
                finished.append((pending[0], "".join(pending[1])))
            pending = (_levels.get(level, logging.INFO), [])
            _pending[thread] = pending
        pending[1].append(message)
        if message.endswith("\n"):
            finished.append((pending[0], "".join(pending[1])))
            del _pending[thread]
        for log_level, line in finished:
            _record(thread, log_level, line)
    if hook is not None:
        with contextlib.suppress(Exception):
            hook(level, raw)
        return
    for log_level, line in finished:  # logging handlers run outside the lock (they may log themselves)
        _emit(log_level, line)


def _record(thread: int, level: int, message: str) -> None:
    """Keep a warning/error line for `last_log_errors()` and the thread's captures, and any line for captures
    that keep every level (caller holds _log_lock)."""
    line = message.strip()
    if not line:
        return
    problem = level >= logging.WARNING
    if problem:
        _recent_errors.append(line)
    for capture in _captures.get(thread, ()):
        if problem or capture.all_levels:
            capture.lines.append(line)


def _emit(level: int, message: str) -> None:
    message = message.rstrip("\n")
    if message and logger.isEnabledFor(level):
        logger.log(level, "%s", message)


class LogCapture:
    """Warning/error lines llama.cpp logged on one thread during a `capture_log()` block (oldest first)."""

    __slots__ = ("all_levels", "lines")

    def __init__(self, all_levels: bool = False) -> None:
        self.lines: list[str] = []
        self.all_levels = all_levels  # info and debug lines too

    def reason(self, last: int = 3, prefix: str = ": ") -> str:
        """The last `last` lines joined for an exception message ("" when llama.cpp said nothing)."""
        return f"{prefix}{' | '.join(self.lines[-last:])}" if self.lines else ""


@contextlib.contextmanager
def capture_log(all_levels: bool = False) -> Iterator[LogCapture]:
    """Collect what llama.cpp logs (warnings and errors; every line with `all_levels`) on this thread while the
    block runs."""
    capture = LogCapture(all_levels)
    thread = threading.get_ident()
    with _log_lock:
        _captures.setdefault(thread, []).append(capture)
    try:
        yield capture
    finally:
        with _log_lock:
            stack = _captures.get(thread, [])
            if capture in stack:
                stack.remove(capture)
            if not stack:
                _captures.pop(thread, None)


def last_log_errors(clear: bool = False) -> list[str]:
    """The most recent warning/error lines llama.cpp logged by any thread (oldest first); for diagnostics.

    Exceptions quote `capture_log()` instead, which only sees the calling thread's lines.
    """
    with _log_lock:
        lines = list(_recent_errors)
        if clear:
            _recent_errors.clear()
    return lines


def set_verbose(verbose: bool) -> None:
    """Print llama.cpp's log to stderr (like llama-cli) when True; back to quiet when False."""
    with _lock:
        if verbose and not _verbose_handler:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)
            _verbose_handler.append(handler)
        elif not verbose and _verbose_handler:
            logger.removeHandler(_verbose_handler.pop())
            logger.setLevel(logging.NOTSET)
