"""Find and load libllama: env var -> the wheel's bundled copy -> build_lib.py cache -> system loader.

The one place that calls dlopen. `load()` is cached, so `from llamarcp import lib` loads once.
"""

from __future__ import annotations

import threading
from typing import Any

from llamarcp._locate import (  # noqa: F401 - re-exported: `_lib` is where code and users look them up
    BUILD_HINT,
    BUNDLED_DIR,
    ENV_VARS,
    LIB_NAMES,
    candidates,
    find_library,
    system_find_library,
)
from llamarcp.errors import LibraryLoadError

_lock = threading.Lock()
_loaded: dict[str, Any] = {}


def load() -> Any:
    """Load libllama once per process and return the raw cffi library object."""
    if "lib" in _loaded:
        return _loaded["lib"]
    with _lock:
        if "lib" not in _loaded:
            from llamarcp import _release
            from llamarcp._ffi import ffi

            path = find_library()
            try:
                raw = ffi.dlopen(str(path))
            except OSError as exc:
                error = LibraryLoadError(
                    f"libllama was found at {path} but the system loader could not load it: {exc}{_load_hint(str(exc))}"
                )
                error.library = str(path)
                raise error from exc
            from llamarcp._guard import check as guard_check
            from llamarcp._libproxy import LibProxy

            chosen = _release.selection()
            if chosen.error is not None:
                raise chosen.error
            guard_check(raw, path, selection=chosen)

            _loaded["path"] = str(path)
            _loaded["lib"] = LibProxy(raw, str(path))
    return _loaded["lib"]


def _load_hint(reason: str) -> str:
    if "GLIBC" in reason:
        return " (it was built against a newer C library than this system has: build it here with build_lib.py)"
    if "wrong ELF class" in reason or "invalid ELF header" in reason:
        return " (it is not a shared library for this machine)"
    if "cannot open shared object file" in reason:
        return " (a library it links is missing beside it or on the loader path)"
    return ""


def loaded_path() -> str | None:
    """Path of the loaded library, or None before `load()`."""
    return _loaded.get("path")
