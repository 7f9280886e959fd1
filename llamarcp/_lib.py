"""Find and load libllama: env var -> the wheel's bundled copy -> build_lib.py cache -> system loader.

The one place that calls dlopen. `load()` is cached, so `from llamarcp import lib` loads once.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llamarcp import _cache
from llamarcp.errors import LibraryLoadError, LibraryNotFoundError

#: Checked in this order; both names are accepted so llama-cpp-python users keep their setting.
ENV_VARS = ("LLAMARCP_LIB_PATH", "LLAMA_CPP_LIB_PATH")

BUILD_HINT = (
    "install a wheel that bundles it (`pip install .` in a llamarcp checkout or sdist), "
    "build it with `python build_lib.py` (from a llamarcp checkout) or set LLAMARCP_LIB_PATH"
)

#: Where a wheel built by setup.py puts libllama, its ggml libraries and their build stamp.
BUNDLED_DIR = Path(__file__).resolve().parent / "_native"

if sys.platform == "darwin":
    LIB_NAMES = ("libllama.dylib",)
elif sys.platform == "win32":
    LIB_NAMES = ("llama.dll", "libllama.dll")
else:
    LIB_NAMES = ("libllama.so",)


def system_find_library(name: str) -> str | None:
    import ctypes.util  # lazy: only needed when nothing earlier hit, and costs ~5 ms of import time

    return ctypes.util.find_library(name)


def _in_dir(directory: Path) -> Path | None:
    for name in LIB_NAMES:
        if (directory / name).is_file():
            return directory / name
    return None


def _iter_candidates() -> Iterator[tuple[str, Path | str | None]]:
    # Lazy: the system loader query spawns ldconfig (tens of ms), so it runs only when nothing earlier hit.
    for var in ENV_VARS:
        value = os.environ.get(var)
        if not value:
            continue
        path = Path(value).expanduser()
        hit = path if path.is_file() else _in_dir(path) if path.is_dir() else None
        yield (f"${var}={value}", hit)
    bundled_ok = (BUNDLED_DIR / _cache.STAMP_NAME).is_file()
    yield (f"bundled with the package {BUNDLED_DIR}", _in_dir(BUNDLED_DIR) if bundled_ok else None)
    cache_dir = _cache.pinned_default_lib_dir()
    stamp_ok = (cache_dir / _cache.STAMP_NAME).is_file()
    yield (f"build cache {cache_dir}", _in_dir(cache_dir) if stamp_ok else None)
    yield ("system loader (find_library('llama'))", system_find_library("llama"))


def candidates() -> list[tuple[str, Path | str | None]]:
    """(where, what was found there) in lookup order; None where nothing usable was found."""
    return list(_iter_candidates())


def find_library() -> Path | str:
    """The library to load; raises LibraryNotFoundError naming every place looked at."""
    looked = []
    for where, hit in _iter_candidates():
        looked.append((where, hit))
        if hit is not None:
            return hit
        if where.startswith("$"):
            # An explicit setting that points nowhere is an error, not a reason to fall through.
            raise LibraryNotFoundError(f"{where} does not name libllama ({', '.join(LIB_NAMES)}); {BUILD_HINT}")
    places = "\n  ".join(where for where, _ in looked)
    raise LibraryNotFoundError(f"libllama not found; looked in:\n  {places}\n{BUILD_HINT}")


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
