"""`llamarcp.lib`: the raw cffi library, tolerant of functions the loaded build does not export.

cffi's ABI-mode library resolves each symbol on first attribute access, so a missing function never
breaks import. This wrapper turns the access of a declared-but-missing function into a callable that
raises `MissingSymbolError` naming the symbol, the library and what to do, and caches every resolved
attribute in the instance `__dict__` so later accesses are plain attribute hits.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from llamarcp.errors import MissingSymbolError

_REGENERATE = "regenerate the bindings (python codegen/generate.py) or rebuild the library (python build_lib.py)"


class LibProxy:
    """Wraps the object returned by `ffi.dlopen`; attribute names are the C names of llama.h."""

    def __init__(self, raw: Any, path: str) -> None:
        object.__setattr__(self, "_raw", raw)
        object.__setattr__(self, "_path", path)

    def __getattr__(self, name: str) -> Any:
        # Only reached on the first access of `name`: afterwards it sits in __dict__.
        if name.startswith("__"):
            raise AttributeError(name)
        from llamarcp._ffi import ffi
        from llamarcp.drift.abi import COMPANION_LIBRARIES

        raw, path, hint = self._raw, self._path, None
        library = library_of(name)
        if library in COMPANION_LIBRARIES:  # libllama does not link it: its own handle, from beside libllama
            raw, path = load_companion(library, self._path)
            if raw is not None:  # there, but without this function: the group's "build it" hint would mislead
                hint = f"lib{library} beside libllama lacks it (built from another llama.cpp?); {_REGENERATE}"
        try:
            if raw is None:
                raise AttributeError(name)
            value = getattr(raw, name)
        except (AttributeError, ffi.error):  # ffi.error: declared, but dlsym found no such symbol
            value = _missing(name, path, hint)
        except NotImplementedError as exc:  # cffi: a declaration it cannot call in ABI mode
            raise AttributeError(f"{name}: {exc}") from exc
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"llamarcp.lib is read-only (tried to set {name!r})")

    def __dir__(self) -> list[str]:
        from llamarcp._generated import _symbols

        return sorted(set(dir(self._raw)) | set(_symbols.FUNCTIONS) | set(_symbols.EXTRA_CONSTANTS))

    def __repr__(self) -> str:
        return f"<llamarcp.lib {self._path}>"


def _missing(name: str, path: str, hint: str | None = None) -> Any:
    """A stand-in for a declared function the library lacks, or AttributeError for an unknown name."""
    from llamarcp import _release
    from llamarcp._generated import _symbols

    if name in _symbols.EXTRA_CONSTANTS:
        return _symbols.EXTRA_CONSTANTS[name]
    chosen = _release.bindings()
    if name not in chosen.functions:
        first = _release.first_release_with(name) if name.startswith(("llama_", "ggml_", "mtmd_")) else None
        if first is None:
            raise AttributeError(f"llama.h (llama.cpp {chosen.name}) declares no {name!r}")
        return _raiser(
            name,
            path,
            f"the loaded library is llama.cpp {chosen.name}, which does not have it; {first} is the first release "
            "of llamarcp's window that does",
            _header_of(name),
        )
    return _raiser(name, path, hint or hint_for(name), _header_of(name))


def library_of(name: str) -> str | None:
    """The shared library (`_symbols.LIBRARIES`) that exports function `name`; None for non-functions."""
    from llamarcp._generated import _symbols

    for group, names in _symbols.GROUPS.items():
        if name in names:
            return _symbols.LIBRARIES.get(group)
    return None


def hint_for(name: str) -> str:
    """What to tell a user whose library lacks `name`."""
    from llamarcp._generated import _symbols

    if name in _symbols.DEPRECATED:
        return f"it is deprecated upstream: {_symbols.DEPRECATED[name]}"
    for group, names in _symbols.GROUPS.items():
        if name in names and group in _symbols.HINTS:
            return _symbols.HINTS[group]
    return _REGENERATE


def _header_of(name: str) -> str:
    from llamarcp._generated import _symbols

    for group, names in _symbols.GROUPS.items():
        if name in names:
            return _symbols.HEADERS.get(group, "llama.h")
    return "llama.h"


def _raiser(name: str, path: str, hint: str, header: str = "llama.h") -> Callable[..., NoReturn]:
    def missing_symbol(*args: Any, **kwargs: Any) -> NoReturn:
        raise MissingSymbolError(name, path, hint, header)

    missing_symbol.__name__ = missing_symbol.__qualname__ = name
    missing_symbol.__doc__ = f"{name} is not exported by {path}: calling it raises MissingSymbolError."
    missing_symbol.llamarcp_missing = True  # type: ignore[attr-defined]
    return missing_symbol


def is_available(lib: Any, name: str) -> bool:
    """True when `lib.<name>` resolves to something the loaded library really provides."""
    try:
        value = getattr(lib, name)
    except AttributeError:
        return False
    return not getattr(value, "llamarcp_missing", False)


# ------------------------------------------------------------------------------------ companion libraries


def companion_file_names(library: str) -> tuple[str, ...]:
    """File names a companion library (e.g. "mtmd") may have on this platform."""
    if sys.platform == "darwin":
        return (f"lib{library}.dylib",)
    if sys.platform == "win32":
        return (f"{library}.dll", f"lib{library}.dll")
    return (f"lib{library}.so",)


def companion_path(library: str, main_path: str) -> Path | str | None:
    """Where companion `library` (`llamarcp.drift.abi.COMPANION_LIBRARIES`) is for libllama at `main_path`, or None.

    It must come from the same build as libllama, so only the directory libllama was loaded from is searched
    (the system loader only when libllama itself came from there, as a bare soname).
    """
    main = Path(main_path)
    if main.parent == Path(".") and not main.is_absolute():
        import ctypes.util  # lazy, as in _lib: the system loader query is slow

        return ctypes.util.find_library(library)
    for name in companion_file_names(library):
        if (main.parent / name).is_file():
            return main.parent / name
    return None


_companion_lock = threading.Lock()
_companions: dict[str, tuple[Any, str]] = {}


def load_companion(library: str, main_path: str) -> tuple[Any, str]:
    """(raw cffi library or None, where it was looked for) for a companion of the libllama at `main_path`.

    Loaded once per process with the same ffi (one set of declarations, a second dlopen'd library).
    """
    key = f"{library}\0{main_path}"
    if key in _companions:
        return _companions[key]
    with _companion_lock:
        if key not in _companions:
            from llamarcp._ffi import ffi

            path = companion_path(library, main_path)
            where = str(path) if path is not None else str(Path(main_path).parent / companion_file_names(library)[0])
            raw = None
            if path is not None:
                try:
                    raw = ffi.dlopen(str(path))
                except OSError as exc:
                    where = f"{path} (could not be loaded: {exc})"
            _companions[key] = (raw, where)
    return _companions[key]
