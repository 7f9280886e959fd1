"""Process-wide llama.cpp setup: backend init exactly once (thread-safe) and log routing to `logging`.

llama.cpp's log lines go to the `llamarcp.llama_cpp` logger. It has a NullHandler, so nothing is printed
unless the application configures logging or a `Llama(verbose=True)` asks for it (`set_verbose(True)`).
The last warning/error lines are kept so exceptions can quote why llama.cpp refused something.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import sys
import threading
from typing import Any

__all__ = ["ensure_backend", "get_lib", "last_log_errors", "logger", "set_verbose"]

logger = logging.getLogger("llamarcp.llama_cpp")
logger.addHandler(logging.NullHandler())

# ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5 (continues the previous message).
_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_CONT = 5

_lock = threading.Lock()
_state: dict[str, Any] = {}
_pending: list[str] = []  # text of a message llama.cpp has not finished with a newline yet
_pending_level = [logging.INFO]
_recent_errors: collections.deque[str] = collections.deque(maxlen=8)
_verbose_handler: list[logging.Handler] = []


def get_lib() -> Any:
    """The raw cffi lib with the backend initialised and logging routed; cheap after the first call."""
    lib = _state.get("lib")
    if lib is None:
        lib = ensure_backend()
    return lib


def ensure_backend() -> Any:
    """Initialise llama.cpp once per process (any thread may call it) and return the raw lib."""
    lib = _state.get("lib")
    if lib is not None:
        return lib
    with _lock:
        if "lib" not in _state:
            from llamarcp._generated._llama_ffi import ffi
            from llamarcp._lib import load

            raw = load()
            callback = ffi.callback("ggml_log_callback", _on_log)
            _state["log_callback"] = callback  # must outlive every call from C
            raw.llama_log_set(callback, ffi.NULL)
            raw.llama_backend_init()
            atexit.register(_shutdown, raw, ffi)
            _state["lib"] = raw
    return _state["lib"]


def _shutdown(lib: Any, ffi: Any) -> None:
    from llamarcp._managed import close_all

    close_all()  # free models/contexts now, while their log lines can still reach `logging`
    # A Python callback must not run during interpreter teardown; late lines (rare) go to llama.cpp's stderr default.
    with contextlib.suppress(Exception):
        lib.llama_log_set(ffi.NULL, ffi.NULL)


def _on_log(level: int, text: Any, _user_data: Any) -> None:
    from llamarcp._generated._llama_ffi import ffi

    try:
        message = ffi.string(text).decode("utf-8", errors="replace") if text != ffi.NULL else ""
    except Exception:
        return
    if level != _CONT:
        if _pending:
            _emit(_pending_level[0], "".join(_pending))
            _pending.clear()
        _pending_level[0] = _LEVELS.get(level, logging.INFO)
    _pending.append(message)
    if message.endswith("\n"):
        _emit(_pending_level[0], "".join(_pending))
        _pending.clear()


def _emit(level: int, message: str) -> None:
    message = message.rstrip("\n")
    if not message:
        return
    if level >= logging.WARNING:
        _recent_errors.append(message.strip())
    if logger.isEnabledFor(level):
        logger.log(level, "%s", message)


def last_log_errors(clear: bool = False) -> list[str]:
    """The most recent warning/error lines llama.cpp logged (oldest first)."""
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
