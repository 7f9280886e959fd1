"""The window of llama.cpp releases: every release's declarations in one compact generated module.

`python codegen/generate.py --releases` fetches the tree of each carrier in `_pin.WINDOW` (build_lib's verified
cache), parses it like the pin and writes `llamarcp/_generated/_releases.py`: the cffi declarations split into
chunks shared by every release that declares them identically, and per release its ABI fingerprint, the item
digests and functions that differ from the pin's, and its probe table. The runtime (`llamarcp._release`) picks a
release for the library it loads and builds that release's ffi from the chunks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codegen import parse, render
from codegen.model import Api
from llamarcp.drift import abi

FILE_NAME = "_releases.py"

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)


def cdef_chunks(cdef: str) -> list[str]:
    """Top-level declarations of a rendered cdef, in order: each `#define` line, each `...;` at brace depth 0."""
    text = _COMMENT.sub("", cdef)
    chunks: list[str] = []
    current: list[str] = []
    depth = 0
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if depth == 0 and not current and stripped.startswith("#"):
            chunks.append(stripped)
            continue
        current.append(line.rstrip())
        depth += stripped.count("{") - stripped.count("}")
        if depth == 0 and stripped.endswith(";"):
            chunks.append("\n".join(current))
            current = []
    if current or depth:
        raise parse.ParseError(f"unbalanced cdef: {' '.join(current)[:200]}")
    return chunks


@dataclass
class Release:
    """One release of the window as the generator saw it."""

    name: str  # the carrier's commit: a release tag (b8672) or a commit SHA (shortened to 12 characters)
    carrier: str  # "xllamacpp==2026.4.8672"
    api: Api
    chunks: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_api(cls, name: str, carrier: str, api: Api) -> Release:
        manifest = api.to_manifest()
        return cls(name, carrier, api, cdef_chunks(render.render_cdef(api)), manifest)

    @property
    def functions(self) -> dict[str, str]:
        """Function name -> its group."""
        return {f.name: f.group for f in self.api.functions}


#: The tables of `_generated/_ctypes_face.py` (llama-cpp-python's ctypes face), per release as deltas from the pin's.
CTYPES_TABLES = ("FUNCTIONS", "BOUNDS", "TOKEN_CHECKS", "STRUCTS", "CALLBACKS", "HANDLES", "TYPEDEFS")


def ctypes_tables(api: Api) -> dict[str, Any]:
    """The ctypes face's tables of one release (the rendered module is data only)."""
    namespace: dict[str, Any] = {}
    exec(compile(render.render_ctypes_face(api), "<ctypes face>", "exec"), namespace)  # noqa: S102 - our own text
    return {name: namespace[name] for name in CTYPES_TABLES}


def ctypes_delta(tables: dict[str, Any], pin: dict[str, Any]) -> dict[str, Any]:
    """What differs from the pin's tables: per dict table the changed/added entries (None: removed); a tuple
    table whole, when it differs."""
    out: dict[str, Any] = {}
    for name in CTYPES_TABLES:
        mine, theirs = tables[name], pin[name]
        if isinstance(mine, dict):
            changed: dict[str, Any] = {k: v for k, v in mine.items() if theirs.get(k) != v}
            changed.update({k: None for k in theirs if k not in mine})
            if changed:
                out[name] = dict(sorted(changed.items()))
        elif mine != theirs:
            out[name] = mine
    return out


def release_name(commit: str) -> str:
    return commit if re.fullmatch(r"b\d+", commit) else commit[:12]


def _ranges(indexes: list[int]) -> str:
    """[0,1,2,5,7,8] -> "0-2,5,7-8" (chunk indexes of a release, mostly runs)."""
    out: list[str] = []
    start = prev = None
    for i in indexes:
        if start is None:
            start = prev = i
        elif prev is not None and i == prev + 1:
            prev = i
        else:
            out.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ",".join(out)


def render_releases(releases: list[Release], pin: Release, notice: str) -> str:
    """The text of `_releases.py` (releases oldest first; `pin` is one of them)."""
    pool: dict[str, int] = {}
    for rel in releases:
        for chunk in rel.chunks:
            pool.setdefault(chunk, len(pool))
    pin_items = abi.items(pin.manifest)
    pin_functions = pin.functions
    pin_tables = ctypes_tables(pin.api)
    lines = [
        notice,
        '"""Every release of the window: chunks of cffi declarations shared between releases, and per release what',
        "differs from the pin. Read by llamarcp._release; written by codegen/releases.py.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Any",
        "",
        f"PIN = {pin.name!r}",
        "#: Oldest first; the pin is one of them.",
        f"RELEASES: tuple[str, ...] = {tuple(r.name for r in releases)!r}",
        "#: The PyPI sdist that vendors each release's tree (`build_lib.py --release NAME` builds it).",
        "CARRIERS: dict[str, str] = {",
        *(f"    {r.name!r}: {r.carrier!r}," for r in releases),
        "}",
        "#: The ABI fingerprint of each release's headers (llamarcp.drift.abi), as build stamps carry it.",
        "FINGERPRINTS: dict[str, str] = {",
        *(f"    {r.name!r}: {abi.fingerprint(abi.items(r.manifest))!r}," for r in releases),
        "}",
        "#: Declarations (cdef text), each once; a release's cdef is its chunks joined in CDEF's order.",
        "CHUNKS: tuple[str, ...] = (",
        *(f"    {chunk!r}," for chunk in pool),
        ")",
        '#: Release -> its chunk indexes as ranges ("0-41,43").',
        "CDEF: dict[str, str] = {",
        *(f"    {r.name!r}: {_ranges([pool[c] for c in r.chunks])!r}," for r in releases),
        "}",
        "#: Release -> ABI item digests that differ from the pin's (None: the release lacks the item).",
        "ITEMS_DELTA: dict[str, dict[str, str | None]] = {",
    ]
    for rel in releases:
        items = abi.items(rel.manifest)
        delta: dict[str, str | None] = {k: v for k, v in items.items() if pin_items.get(k) != v}
        delta.update({k: None for k in pin_items if k not in items})
        lines.append(f"    {rel.name!r}: {dict(sorted(delta.items()))!r},")
    lines += [
        "}",
        "#: Release -> (functions the pin lacks, functions of the pin the release lacks).",
        "FUNCTIONS_DELTA: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {",
    ]
    groups: dict[str, str] = {}
    for rel in releases:
        funcs = rel.functions
        added = tuple(sorted(set(funcs) - set(pin_functions)))
        removed = tuple(sorted(set(pin_functions) - set(funcs)))
        groups.update({name: funcs[name] for name in added})
        lines.append(f"    {rel.name!r}: ({added!r}, {removed!r}),")
    lines += [
        "}",
        "#: Group (codegen.parse.GROUPS) of each function some release has and the pin lacks.",
        f"EXTRA_GROUPS: dict[str, str] = {dict(sorted(groups.items()))!r}",
        "#: Release -> how its ctypes face (`_ctypes_face.py`'s tables) differs from the pin's (None: entry absent).",
        "CTYPES_DELTA: dict[str, dict[str, Any]] = {",
        *(f"    {r.name!r}: {ctypes_delta(ctypes_tables(r.api), pin_tables)!r}," for r in releases),
        "}",
        "#: Release -> its probe table (llamarcp.drift.abi.probes).",
        "PROBES: dict[str, tuple[dict[str, Any], ...]] = {",
        *(f"    {r.name!r}: {tuple(abi.probes(r.manifest))!r}," for r in releases),
        "}",
        "",
    ]
    return "\n".join(lines)


def window_releases() -> list[Release]:
    """Parse every carrier of `_pin.WINDOW` (fetching the trees build_lib has not cached yet)."""
    import build_lib
    from llamarcp import _pin

    out = []
    for version in _pin.WINDOW:
        carrier = _pin.KNOWN_CARRIERS[version]
        tree: Path = build_lib.ensure_source(carrier)
        api = parse.parse_source(tree, carrier.commit)
        out.append(Release.from_api(release_name(carrier.commit), f"{carrier.package}=={carrier.version}", api))
    return out


def window_releases_if_cached() -> list[Release] | None:
    """`window_releases()` when every tree of the window is already fetched, else None (nothing downloaded)."""
    from llamarcp import _cache, _pin

    for version in _pin.WINDOW:
        if not (_cache.cache_root() / "src" / _pin.KNOWN_CARRIERS[version].commit / ".llamarcp-verified").is_file():
            return None
    return window_releases()


def render_window(releases: list[Release]) -> str:
    from llamarcp import _pin

    pin = next(r for r in releases if r.name == release_name(_pin.LLAMA_CPP_COMMIT))
    notice = render._comment(
        render.do_not_edit(pin.api).replace(
            "from llama.cpp", f"from the llama.cpp releases {releases[0].name} ... {releases[-1].name}; pin"
        ),
        "# ",
    )
    return render_releases(releases, pin, notice)
