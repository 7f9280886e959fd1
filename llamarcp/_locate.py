"""Where libllama is: env var -> the wheel's bundled copy -> build_lib.py cache -> system loader; its build stamp.

Pure lookups, no dlopen: `llamarcp._release` reads them to pick the bindings before `llamarcp._lib` loads.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llamarcp import _cache
from llamarcp.errors import LibraryNotFoundError

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


def read_stamp(library_path: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, Path | None]:
    """(stamp, its path) beside the library; (None, path or None) when absent or unreadable."""
    path = Path(library_path)
    if not path.is_absolute() and path.parent == Path("."):
        return None, None  # a bare soname from the system loader: no directory to look in
    stamp = path.parent / _cache.STAMP_NAME
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None, None
    return (data, stamp) if isinstance(data, dict) else (None, stamp)


#: Set to 1 to skip the guard (you vouch that header and library agree).
SKIP_ENV = "LLAMARCP_SKIP_GUARD"


def skipped() -> bool:
    return os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes", "on")
