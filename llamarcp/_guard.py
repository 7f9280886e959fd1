"""Runtime guard: refuse a libllama whose ABI differs from the bindings', before the first call corrupts memory.

Called by `llamarcp._lib.load()` right after dlopen; cheap checks only, no ELF or header parsing:
1. every function llamarcp itself calls resolves via dlsym (`_generated/_used.py`);
2. the build stamp beside the library (build_lib.py) carries the ABI fingerprint of the headers it was built
   from. Equal to the bindings' (`_generated/_abi.py`): done. Different: the per-item digests beside the
   library name every struct layout, enum constant, #define or signature that changed, and a change refuses
   the library (items only one side has do not: a removed function fails clearly when called);
3. a library without a fingerprint (a system lib, `LLAMA_CPP_LIB_PATH`, an older build) is judged by its
   stamp's commit, where it has one, and by a probe: the `*_default_params()` functions are called into a
   sentinel-filled buffer and must write a struct of the bindings' size with valid bool and enum fields.
   When none of this can verify anything, a `LibraryUnverifiedWarning` says so.
"""

from __future__ import annotations

import os
import platform
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llamarcp._locate import SKIP_ENV, read_stamp, skipped  # noqa: F401 - part of the guard's interface
from llamarcp.errors import LibraryMismatchError


class LibraryUnverifiedWarning(UserWarning):
    """The loaded libllama carries no ABI stamp and the probe could check nothing: a mismatch would go unseen."""


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


def used_functions() -> tuple[str, ...]:
    """Functions llamarcp's own code calls (scanned by codegen/generate.py into `_generated/_used.py`)."""
    from llamarcp._generated._used import USED_FUNCTIONS

    return USED_FUNCTIONS


def bindings_abi() -> tuple[str, dict[str, str], tuple[dict[str, Any], ...]]:
    """(fingerprint, item digests, probe table) of the generated bindings."""
    from llamarcp._generated import _abi

    return _abi.ABI_FINGERPRINT, _abi.ABI_ITEMS, _abi.PROBES


def missing_functions(lib: Any, names: Iterable[str]) -> list[str]:
    """Names that do not resolve on the raw cffi library (each lookup is one dlsym); optional ones skipped."""
    try:
        from llamarcp._ffi import ffi

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
    data, stamp = read_stamp(library_path)
    if data is None:
        return None, None
    commit = data.get("commit")
    if commit in _UNKNOWN_COMMITS or not isinstance(commit, str):
        return None, stamp
    return commit, stamp


def _abi_problems(library_path: Path, stamp: dict[str, Any], expected_items: dict[str, str]) -> list[str]:
    """Lines naming what the stamped library's headers changed; [] when nothing the bindings use changed."""
    from llamarcp.drift import abi

    source = stamp.get("source") or "<its llama.cpp tree>"
    see = f"see `python -m codegen.drift diff pinned {source}` in a llamarcp checkout"
    document = abi.read_items_file(library_path.parent)
    if document is None:
        return [
            f"  it was built from headers with ABI fingerprint {stamp['abi_fingerprint']} (the bindings have "
            f"another) and {abi.ITEMS_FILE} is missing beside it, so the changed items cannot be named; {see}"
        ]
    diff = abi.differences(expected_items, {str(k): str(v) for k, v in document["items"].items()})
    if diff.compatible:
        return []
    return [f"  its headers differ in ABI from the bindings': {diff.summary()}", f"  ({see})"]


def _probe(lib: Any) -> Any:
    from llamarcp._ffi import ffi
    from llamarcp.drift import abi

    return abi.probe(lib, ffi, bindings_abi()[2], platform.machine())


_live_probed: dict[str, bool] = {}


def probe_live(kind: str, pointer: Any, lib: Any) -> None:
    """Probe the by-value results that need a live object (`llama_perf_context(ctx)`), once per process and kind.

    Called by the one owner of each such object right after creating the first one, before anything else calls
    into it; raises LibraryMismatchError naming the struct when the library writes another layout.
    """
    if kind in _live_probed or skipped():
        return
    from llamarcp import _release
    from llamarcp._ffi import ffi
    from llamarcp.drift import abi

    raw = getattr(lib, "_raw", lib)
    path = getattr(lib, "_path", "libllama")
    chosen = _release.bindings()
    result = abi.probe(raw, ffi, chosen.probes, platform.machine(), live=(kind, pointer))
    _live_probed[kind] = True
    if result.problems:
        error = LibraryMismatchError(
            f"libllama at {path} does not match the API llamarcp uses (llama.cpp {chosen.name}):\n"
            + "\n".join(f"  {p}" for p in result.problems)
            + f"\n{FIX_HINT}"
        )
        error.library = str(path)
        error.expected_commit = chosen.name
        _live_probed.pop(kind)
        raise error


def check(
    lib: Any,
    library_path: str | os.PathLike[str],
    *,
    used: Iterable[str] | None = None,
    expected_commit: str | None = None,
    selection: Any = None,
) -> None:
    """Raise LibraryMismatchError naming every problem at once; return quietly when the library fits.

    `selection` (llamarcp._release.Selection): the release the library was matched to; its declarations are the
    expectation, and only the functions llamarcp calls that this release declares must be exported (the others
    raise MissingSymbolError naming the first release that has them, when called).
    """
    if skipped():
        return
    chosen = selection.bindings if selection is not None else None
    if expected_commit is None:
        expected_commit = chosen.name if chosen is not None else bindings_commit()
    names = list(used_functions() if used is None else used)
    if chosen is not None:
        names = [n for n in names if n in chosen.functions]
    missing = missing_functions(lib, names)
    stamp, stamp_path = read_stamp(library_path)
    commit, _ = stamp_commit(library_path)
    lines: list[str] = []
    changed: list[str] = []
    found_fp = stamp.get("abi_fingerprint") if stamp else None
    if chosen is not None and not isinstance(found_fp, str):
        # matched by its exported functions and the probe (llamarcp._release); warn when the probe checked nothing
        if selection.unverified is not None and not missing:
            warnings.warn(
                f"libllama at {library_path} has no build stamp with an ABI fingerprint and "
                f"{selection.unverified}: llamarcp matched it to llama.cpp {chosen.name} by its exported functions "
                "only; a mismatch would corrupt memory silently. Build it with `python build_lib.py --source DIR` "
                "to get a stamp",
                LibraryUnverifiedWarning,
                stacklevel=3,
            )
    elif isinstance(found_fp, str) and stamp is not None:
        expected_fp, expected_items, _ = (
            (chosen.fingerprint, chosen.items, chosen.probes) if chosen is not None else bindings_abi()
        )
        if found_fp != expected_fp:
            changed = _abi_problems(Path(library_path), stamp, expected_items)
            if changed:
                built = f"llama.cpp {commit}" if commit else "a llama.cpp of unknown commit"
                lines.append(f"  it was built from {built} (stamp {stamp_path}); bindings: {expected_commit}")
                lines.extend(changed)
    else:
        if commit is not None and commit != expected_commit:
            lines.append(
                f"  it was built from llama.cpp commit {commit} (stamp {stamp_path}), "
                f"but llamarcp's bindings were generated from {expected_commit}"
            )
        result = _probe(lib)
        if result.problems:
            lines.append("  the probe of its default parameters found another struct layout:")
            lines.extend(f"    {p}" for p in result.problems)
        elif not result.verified and commit is None and not missing:
            warnings.warn(
                f"libllama at {library_path} has no build stamp with an ABI fingerprint and the probe verified "
                f"nothing ({result.skipped}): llamarcp cannot tell whether it matches the bindings (llama.cpp "
                f"{expected_commit[:12]}); a mismatch would corrupt memory silently. Build it with "
                "`python build_lib.py --source DIR` to get a stamp",
                LibraryUnverifiedWarning,
                stacklevel=3,
            )
    if not missing and not lines:
        return
    lines.insert(0, f"libllama at {library_path} does not match the API llamarcp was generated from:")
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
