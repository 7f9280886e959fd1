"""Runtime guard: refuse a libllama that cannot serve this package, before the first call crashes.

Called by `llamarcp._lib.load()` right after dlopen. Two cheap checks, no ELF parsing:
every function llamarcp itself calls resolves via dlsym (cffi attribute lookup), and the
build stamp beside the library (written by build_lib.py) names the pinned commit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llamarcp import _cache
from llamarcp.errors import LibraryMismatchError

#: Set to 1 to skip the guard (you vouch that header and library agree).
SKIP_ENV = "LLAMARCP_SKIP_GUARD"


def optional_groups() -> dict[str, str]:
    """Function group -> how to get it, for groups a correct build may lack (backend-specific).

    The one table is `codegen.parse.GROUPS` (rows with `optional=True`), rendered into
    `_generated/_symbols.HINTS`; the guard and `drift symbols` both read it from there.
    """
    from llamarcp._generated import _symbols

    return dict(_symbols.HINTS)


def optional_functions() -> dict[str, str]:
    """Function name -> why it may be missing, for every function of an optional group."""
    from llamarcp._generated import _symbols

    groups = optional_groups()
    return {name: groups[g] for g, names in _symbols.GROUPS.items() if g in groups for name in names}


FIX_HINT = (
    "fix: rebuild the pinned library with `python build_lib.py` and unset LLAMARCP_LIB_PATH/LLAMA_CPP_LIB_PATH, "
    "or regenerate the bindings for your llama.cpp with `python codegen/generate.py --source DIR`; "
    f"set {SKIP_ENV}=1 to skip this check at your own risk"
)

_UNKNOWN_COMMITS = ("", "unknown", None)


def bindings_commit() -> str:
    """The llama.cpp commit the generated bindings describe (the pin, unless regenerated with --source)."""
    try:
        from llamarcp._generated._symbols import LLAMA_CPP_COMMIT
    except ImportError:
        from llamarcp._pin import LLAMA_CPP_COMMIT
    return LLAMA_CPP_COMMIT


def skipped() -> bool:
    return os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def used_functions() -> tuple[str, ...]:
    """Functions llamarcp's own code calls (written by `python -m llamarcp.drift used --write`)."""
    from llamarcp.drift.used_functions import USED_FUNCTIONS

    return USED_FUNCTIONS


def missing_functions(lib: Any, names: Iterable[str]) -> list[str]:
    """Names that do not resolve on the raw cffi library (each lookup is one dlsym); optional ones skipped."""
    try:
        from llamarcp._generated._llama_ffi import ffi

        lookup_errors: tuple[type[BaseException], ...] = (AttributeError, ffi.error)
    except ImportError:  # bindings not generated: plain attribute semantics (tests use stand-ins)
        lookup_errors = (AttributeError,)
    optional = optional_functions()
    missing = []
    for name in names:
        if name in optional:
            continue
        try:
            getattr(lib, name)
        except lookup_errors:
            missing.append(name)
        except NotImplementedError:
            continue  # cffi cannot call this declaration in ABI mode; the symbol itself is not the issue
    return sorted(missing)


def stamp_commit(library_path: str | os.PathLike[str]) -> tuple[str | None, Path | None]:
    """(commit, stamp path) from the build stamp next to the library; (None, None) when unknown."""
    path = Path(library_path)
    if not path.is_absolute() and path.parent == Path("."):
        return None, None  # a bare soname from the system loader: no directory to look in
    stamp = path.parent / _cache.STAMP_NAME
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None, None
    commit = data.get("commit") if isinstance(data, dict) else None
    if commit in _UNKNOWN_COMMITS or not isinstance(commit, str):
        return None, stamp
    return commit, stamp


def check(
    lib: Any,
    library_path: str | os.PathLike[str],
    *,
    used: Iterable[str] | None = None,
    expected_commit: str | None = None,
) -> None:
    """Raise LibraryMismatchError naming every problem at once; return quietly when the library fits."""
    if skipped():
        return
    if expected_commit is None:
        expected_commit = bindings_commit()
    missing = missing_functions(lib, used_functions() if used is None else used)
    commit, stamp = stamp_commit(library_path)
    wrong_commit = commit is not None and commit != expected_commit
    if not missing and not wrong_commit:
        return
    lines = [f"libllama at {library_path} does not match the API llamarcp was generated from:"]
    if wrong_commit:
        lines.append(
            f"  it was built from llama.cpp commit {commit} (stamp {stamp}), "
            f"but llamarcp's bindings were generated from {expected_commit}"
        )
    if missing:
        lines.append(f"  {len(missing)} function(s) llamarcp calls are not exported: {', '.join(missing)}")
        if commit is None:
            lines.append(f"  (expected llama.cpp commit {expected_commit}; the library's commit is unknown)")
    lines.append(FIX_HINT)
    error = LibraryMismatchError("\n".join(lines))
    error.library = str(library_path)
    error.missing = tuple(missing)
    error.expected_commit = expected_commit
    error.found_commit = commit
    raise error
