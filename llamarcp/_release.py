"""Which llama.cpp release's bindings describe the library this process loads (once per process).

llamarcp carries the declarations of every release of its window (`_generated/_releases.py`, written by
`python codegen/generate.py --releases`) and, in a wheel built from a user's own tree, that tree's bindings
(`_native/bindings/`). The library is matched to one of them before the first ffi use:
1. its build stamp's ABI fingerprint names a set of bindings exactly;
2. a stamp with another fingerprint: the items file beside it is compared with every set; the nearest with no
   changed item is used (a newer build or a fork that only adds), else the library is refused naming the
   nearest release and the items that differ;
3. no fingerprint: the exported llama.h functions pick the releases the library can be, newest first, and the
   probe of every struct passed or returned by value decides; a library newer than the newest release is
   accepted only when all of that release's probes pass.
A refusal is kept and raised by `llamarcp._lib.load()`; until then the pin's bindings stand in.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

#: Where a wheel built from a user's own tree keeps that tree's bindings (setup.py / build_lib.bundle_bindings).
CUSTOM_BINDINGS_DIR = Path(__file__).resolve().parent / "_native" / "bindings"
CUSTOM_BINDINGS_FILE = "bindings.json"


@dataclass(frozen=True)
class Bindings:
    """One set of declarations: the pin, another release of the window, or a user's tree."""

    name: str  #: "b11549", "b8672", "0c1e57098bba", or the commit of a user's tree
    fingerprint: str
    items: dict[str, str]
    probes: tuple[dict[str, Any], ...]
    functions: frozenset[str]
    groups: dict[str, str]  #: function -> group, for the functions the pin lacks
    cdef: str | None = None  #: None: the pin's precompiled module
    ctypes_source: str | None = None  #: a user's tree: its `_ctypes_face.py` text (the window's are deltas)

    @property
    def is_pin(self) -> bool:
        return self.cdef is None

    def llama_functions(self) -> frozenset[str]:
        """The functions libllama itself exports (llama.h), which tell releases apart."""
        return frozenset(n for n in self.functions if n.startswith("llama_"))


@dataclass
class Selection:
    bindings: Bindings
    library: str | None
    how: str
    error: Exception | None = None
    notes: list[str] = field(default_factory=list)
    #: Matched without a stamp and the probe could check nothing: why (the guard warns).
    unverified: str | None = None


# ------------------------------------------------------------------------------------------ the sets


def pin() -> Bindings:
    from llamarcp._generated import _abi, _symbols

    return Bindings(
        name=_abi.LLAMA_CPP_COMMIT,
        fingerprint=_abi.ABI_FINGERPRINT,
        items=dict(_abi.ABI_ITEMS),
        probes=tuple(_abi.PROBES),
        functions=frozenset(_symbols.FUNCTIONS),
        groups={},
    )


def window() -> list[Bindings]:
    """Every release of the window, oldest first (the pin among them, as `pin()`)."""
    from llamarcp._generated import _releases as r

    return [release(name) for name in r.RELEASES]


_built: dict[str, Bindings] = {}


def release(name: str) -> Bindings:
    """One release of the window by name (KeyError: not in the window)."""
    if name in _built:
        return _built[name]
    from llamarcp._generated import _releases as r

    base = pin()
    if name == base.name:
        _built[name] = base
        return base
    items = dict(base.items)
    for key, digest in r.ITEMS_DELTA[name].items():
        if digest is None:
            items.pop(key, None)
        else:
            items[key] = digest
    added, removed = r.FUNCTIONS_DELTA[name]
    functions = (base.functions | set(added)) - set(removed)
    _built[name] = Bindings(
        name=name,
        fingerprint=r.FINGERPRINTS[name],
        items=items,
        probes=tuple(r.PROBES[name]),
        functions=frozenset(functions),
        groups={n: r.EXTRA_GROUPS[n] for n in added},
        cdef=_join_chunks(r.CHUNKS, r.CDEF[name]),
    )
    return _built[name]


def _join_chunks(chunks: tuple[str, ...], ranges: str) -> str:
    parts: list[str] = []
    for span in ranges.split(","):
        first, _, last = span.partition("-")
        parts.extend(chunks[int(first) : int(last or first) + 1])
    return "\n".join(parts) + "\n"


@functools.lru_cache(maxsize=1)
def custom() -> Bindings | None:
    """The bindings generated at install from the user's own tree (a wheel built with LLAMARCP_LLAMA_CPP_SOURCE)."""
    path = CUSTOM_BINDINGS_DIR / CUSTOM_BINDINGS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return Bindings(
        name=str(data["name"]),
        fingerprint=str(data["fingerprint"]),
        items=dict(data["items"]),
        probes=tuple(data["probes"]),
        functions=frozenset(data["functions"]),
        groups=dict(data["groups"]),
        cdef=str(data["cdef"]),
        ctypes_source=data.get("ctypes_face"),
    )


def candidates() -> list[Bindings]:
    """Every set a library may be matched to: the user's own (first), then the window newest first."""
    own = custom()
    return ([own] if own is not None else []) + window()[::-1]


def first_release_with(function: str) -> str | None:
    """The oldest release of the window that declares `function` (None: none does)."""
    for release in window():
        if function in release.functions:
            return release.name
    return None


def release_name_of(commit: str) -> str | None:
    """The window's name for a carrier commit ("b8672", or a SHA's first 12 characters); None: not in the window."""
    names = release_names()
    for name in (commit, commit[:12]):
        if name in names:
            return name
    return None


def release_names() -> tuple[str, ...]:
    from llamarcp._generated import _releases

    return tuple(_releases.RELEASES)


# ------------------------------------------------------------------------------------------ choosing


def _stamp(library: Path | str) -> dict[str, Any] | None:
    from llamarcp._locate import read_stamp

    data, _ = read_stamp(library)
    return data


def _by_fingerprint(fingerprint: str) -> Bindings | None:
    """The set whose headers have exactly this ABI fingerprint (the pin's is checked first: the common case)."""
    own = custom()
    if own is not None and own.fingerprint == fingerprint:
        return own
    base = pin()
    if base.fingerprint == fingerprint:
        return base
    from llamarcp._generated import _releases

    for name, known in _releases.FINGERPRINTS.items():
        if known == fingerprint:
            return release(name)
    return None


def _by_items(library: Path, sets: list[Bindings]) -> Selection | None:
    """Match a stamped library of an unknown fingerprint by its items file; None when it has none."""
    from llamarcp.drift import abi
    from llamarcp.errors import LibraryMismatchError

    document = abi.read_items_file(library.parent)
    if document is None:
        return None
    found = {str(k): str(v) for k, v in document["items"].items()}
    scored = []
    for rank, bindings in enumerate(sets):
        diff = abi.differences(bindings.items, found)
        scored.append((len(diff.changed), len(diff.removed) + len(diff.added), rank, bindings, diff))
    scored.sort(key=lambda s: s[:3])
    changed, _, _, nearest, diff = scored[0]
    if changed == 0:
        how = f"build stamp: its headers match {nearest.name}'s ABI plus {len(diff.added)} item(s) of its own"
        return Selection(nearest, str(library), how)
    error = LibraryMismatchError(
        f"libllama at {library} was built from headers whose ABI matches no llama.cpp release llamarcp knows "
        f"({', '.join(release_names())}); nearest: {nearest.name}, which differs in {diff.summary()}.\n"
        "A struct or signature that changed would corrupt memory: rebuild llamarcp against that tree "
        "(LLAMARCP_LLAMA_CPP_SOURCE=DIR pip install .) or use a release of the window"
    )
    error.library = str(library)
    return Selection(nearest, str(library), "refused: ABI items differ", error)


def exported(library: Path | str, names: frozenset[str]) -> frozenset[str]:
    """The `names` the library exports (one dlsym each, through ctypes: no declarations needed)."""
    import ctypes

    handle = ctypes.CDLL(str(library))
    return frozenset(n for n in names if hasattr(handle, n))


def _by_symbols(library: Path | str, sets: list[Bindings]) -> Selection:
    """An unstamped library: its exported functions pick candidates, the probes decide."""
    from llamarcp.drift import abi
    from llamarcp.errors import LibraryMismatchError

    union = frozenset().union(*(b.llama_functions() for b in sets))
    have = exported(library, union)
    ffi = _pin_ffi()
    raw = ffi.dlopen(str(library))
    tried: list[str] = []
    # Releases whose every function it exports, the closest first (fewest exports the release lacks: a library
    # between two releases has the older one's functions and some of the newer's), then newest first.
    ranked = sorted(enumerate(sets), key=lambda item: (len(have - item[1].llama_functions()), item[0]))
    for _, bindings in ranked:
        lacking = bindings.llama_functions() - have
        if lacking:
            tried.append(f"{bindings.name}: lacks {len(lacking)} of its functions ({', '.join(sorted(lacking)[:3])})")
            continue
        result = abi.probe(raw, ffi, bindings.probes, platform.machine())
        if result.problems:
            tried.append(f"{bindings.name}: {'; '.join(result.problems)}")
            continue
        extra = sorted(have - bindings.llama_functions())
        how = f"exported functions and probes ({', '.join(result.verified) or result.skipped})"
        sel = Selection(bindings, str(library), how)
        if extra:
            sel.notes.append(f"it exports {len(extra)} function(s) {bindings.name} lacks: {', '.join(extra[:5])}")
        if not result.verified:
            sel.unverified = f"the probe verified nothing ({result.skipped})"
            sel.notes.append(sel.unverified)
        return sel
    nearest = min(sets, key=lambda b: len(b.llama_functions() ^ have))
    error = LibraryMismatchError(
        f"libllama at {library} (no ABI stamp) matches no llama.cpp release llamarcp knows "
        f"({release_names()[0]} ... {release_names()[-1]}); nearest by exported functions: {nearest.name}.\n  "
        + "\n  ".join(tried)
        + "\nRebuild it with `python build_lib.py --source DIR` (stamped), or build llamarcp against that tree "
        "(LLAMARCP_LLAMA_CPP_SOURCE=DIR pip install .)"
    )
    error.library = str(library)
    return Selection(nearest, str(library), "refused: no release matches", error)


def choose(library: Path | str) -> Selection:
    """The bindings for the library at `library` (its refusal in `.error`)."""
    stamp = _stamp(library)
    found = stamp.get("abi_fingerprint") if stamp else None
    if isinstance(found, str):
        exact = _by_fingerprint(found)
        if exact is not None:
            return Selection(exact, str(library), f"build stamp: ABI fingerprint of {exact.name}")
    sets = candidates()
    if isinstance(found, str):
        by_items = _by_items(Path(library), sets)
        if by_items is not None:
            return by_items
    return _by_symbols(library, sets)


# ------------------------------------------------------------------------------------------ the ffi

_lock = threading.RLock()
_state: dict[str, Any] = {}


def _pin_ffi() -> Any:
    from llamarcp._generated._llama_ffi import ffi

    return ffi


def ffi_for(bindings: Bindings) -> Any:
    """The cffi FFI of a set: the pin's precompiled module, else one built from its cdef (cached on disk)."""
    if bindings.cdef is None:
        return _pin_ffi()
    digest = hashlib.sha256(bindings.cdef.encode()).hexdigest()[:16]
    module_name = f"llamarcp_ffi_{digest}"
    from llamarcp import _cache

    folder = _cache.cache_root() / "ffi"
    path = folder / f"{module_name}.py"
    if not path.is_file():
        import cffi

        builder = cffi.FFI()
        builder.cdef(bindings.cdef)
        builder.set_source(module_name, None)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{module_name}.{os.getpid()}.tmp"
            builder.emit_python_code(str(tmp))
            tmp.replace(path)
        except OSError:  # an unwritable cache: the in-line FFI works as well, it only costs the parse each time
            return builder
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the declarations cached at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ffi


def selection() -> Selection:
    """The set chosen for the library `_lib` will load (decided once; the pin when no library is found)."""
    if "selection" in _state:
        return _state["selection"]  # type: ignore[no-any-return]
    with _lock:
        if "selection" not in _state:
            _state["selection"] = _select()
    return _state["selection"]  # type: ignore[no-any-return]


def _select() -> Selection:
    from llamarcp import _locate
    from llamarcp.errors import LibraryNotFoundError

    try:
        library = _locate.find_library()
    except LibraryNotFoundError:
        return Selection(pin(), None, "no library found: the pin's bindings")
    if _locate.skipped():
        return Selection(pin(), str(library), f"{_locate.SKIP_ENV} is set: the pin's bindings, unchecked")
    try:
        return choose(library)
    except OSError as exc:  # found but not loadable: _lib.load() reports it with the loader's reason
        return Selection(pin(), str(library), f"not loadable ({exc})")


def selected_ffi() -> Any:
    if "ffi" not in _state:
        with _lock:
            if "ffi" not in _state:
                _state["ffi"] = ffi_for(selection().bindings)
    return _state["ffi"]


_modules: dict[str, ModuleType] = {}


def generated_module(name: str) -> ModuleType:
    """The generated module `name` ("_ctypes_face", "_symbols", ...) as it describes the selected release.

    The pin's module for the pin; for another release of the window, `_ctypes_face` is the pin's tables with
    that release's delta applied (`_releases.CTYPES_DELTA`), for a user's tree the tables generated from it.
    """
    pinned = importlib.import_module(f"llamarcp._generated.{name}")
    chosen = bindings()
    if name != "_ctypes_face" or chosen.is_pin:
        return pinned
    key = f"{name}:{chosen.name}:{chosen.fingerprint}"
    if key not in _modules:
        with _lock:
            if key not in _modules:
                _modules[key] = _ctypes_face_of(chosen, pinned)
    return _modules[key]


def _ctypes_face_of(chosen: Bindings, pinned: ModuleType) -> ModuleType:
    module = ModuleType(f"llamarcp._generated._ctypes_face[{chosen.name}]", pinned.__doc__)
    module.__dict__.update({k: v for k, v in vars(pinned).items() if not k.startswith("__")})
    module.LLAMA_CPP_COMMIT = chosen.name  # type: ignore[attr-defined]
    if chosen.ctypes_source is not None:  # a user's tree: its own tables, generated at install
        exec(compile(chosen.ctypes_source, module.__name__, "exec"), module.__dict__)  # noqa: S102 - ours
        return module
    from llamarcp._generated import _releases

    for table, delta in _releases.CTYPES_DELTA.get(chosen.name, {}).items():
        if isinstance(delta, dict):
            merged = dict(getattr(pinned, table))
            for key, value in delta.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            setattr(module, table, merged)
        else:
            setattr(module, table, delta)
    return module


def bindings() -> Bindings:
    return selection().bindings
