"""Read the exported functions of a shared library and compare them with the API manifest.

The reader is chosen by the file's magic bytes from `READERS`; ELF is read with pyelftools
(`.dynsym`, never `nm` output). Mach-O or PE support is one more `SymbolReader` in that list.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llamarcp.errors import DriftError


@dataclass(frozen=True)
class Exports:
    """What one library file exports: defined, externally visible symbols."""

    path: str
    format: str
    functions: frozenset[str]
    objects: frozenset[str]
    #: Sonames of the libraries it links against (DT_NEEDED on ELF), in link order.
    needed: tuple[str, ...] = ()


class SymbolReader(Protocol):
    """One binary format. `sniff` looks at the first bytes; `read` returns the exports."""

    format_name: str

    def sniff(self, head: bytes) -> bool: ...

    def read(self, path: Path) -> Exports: ...


class ElfReader:
    format_name = "ELF"

    def sniff(self, head: bytes) -> bool:
        return head[:4] == b"\x7fELF"

    def read(self, path: Path) -> Exports:
        try:
            from elftools.common.exceptions import ELFError
            from elftools.elf.dynamic import DynamicSection
            from elftools.elf.elffile import ELFFile
            from elftools.elf.sections import SymbolTableSection
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise DriftError("reading ELF symbols needs pyelftools: pip install 'llamarcp[drift]'") from exc

        functions: set[str] = set()
        objects: set[str] = set()
        needed: list[str] = []
        has_dynsym = False
        try:
            with path.open("rb") as fh:
                elf = ELFFile(fh)
                for section in elf.iter_sections():
                    if isinstance(section, DynamicSection):
                        needed.extend(
                            str(getattr(tag, "needed", ""))
                            for tag in section.iter_tags()
                            if tag.entry.d_tag == "DT_NEEDED"
                        )
                    # Only the dynamic table counts: that is what dlsym can see.
                    if not isinstance(section, SymbolTableSection) or section["sh_type"] != "SHT_DYNSYM":
                        continue
                    has_dynsym = True
                    for sym in section.iter_symbols():
                        if not sym.name or sym["st_shndx"] == "SHN_UNDEF":
                            continue
                        if sym["st_info"]["bind"] not in ("STB_GLOBAL", "STB_WEAK", "STB_GNU_UNIQUE"):
                            continue
                        if sym["st_other"]["visibility"] not in ("STV_DEFAULT", "STV_PROTECTED"):
                            continue
                        kind = sym["st_info"]["type"]
                        if kind in ("STT_FUNC", "STT_GNU_IFUNC", "STT_LOOS"):
                            functions.add(sym.name)
                        elif kind in ("STT_OBJECT", "STT_TLS", "STT_COMMON"):
                            objects.add(sym.name)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError) and exc.errno != errno.EINVAL:
                raise DriftError(f"cannot read library {path}: {exc.strerror or exc}") from exc
            raise DriftError(f"{path}: not a readable ELF file (offsets point outside the file)") from exc
        except (ELFError, ValueError, struct.error, IndexError, KeyError, TypeError, AttributeError) as exc:
            # pyelftools raises any of these on a damaged file; all mean the same to the user.
            raise DriftError(f"{path}: not a readable ELF file ({type(exc).__name__}: {exc})") from exc
        if not has_dynsym:
            raise DriftError(f"{path}: ELF file without a dynamic symbol table (an object file or static binary?)")
        return Exports(str(path), self.format_name, frozenset(functions), frozenset(objects), tuple(needed))


class _UnsupportedFormat:
    """Recognised so the error names the format instead of saying 'unknown file'."""

    def __init__(self, name: str, magics: Sequence[bytes]) -> None:
        self.format_name = name
        self._magics = tuple(magics)

    def sniff(self, head: bytes) -> bool:
        return any(head.startswith(m) for m in self._magics)

    def read(self, path: Path) -> Exports:
        raise DriftError(
            f"{path}: {self.format_name} libraries are not supported yet; "
            "add a SymbolReader to llamarcp.drift.symbols.READERS"
        )


#: Tried in order; the first whose `sniff` accepts the file's first bytes reads it.
READERS: list[SymbolReader] = [
    ElfReader(),
    _UnsupportedFormat(
        "Mach-O",
        [b"\xfe\xed\xfa\xce", b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xcf", b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe"],
    ),
    _UnsupportedFormat("PE", [b"MZ"]),
]


def read_exports(path: str | os.PathLike[str]) -> Exports:
    """Exports of one library file, via the first reader that recognises it."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise DriftError(f"cannot read library {p}: {exc.strerror or exc}") from exc
    for reader in READERS:
        if reader.sniff(head):
            return reader.read(p)
    raise DriftError(f"{p}: not a shared library in a known format (ELF; Mach-O and PE are recognised but unsupported)")


LIB_FILE_NAMES = ("libllama.so", "libllama.dylib", "llama.dll", "libllama.dll")


def resolve_library(path: str | os.PathLike[str]) -> Path:
    """A library file, or the libllama inside a directory (e.g. the last line of `python build_lib.py`)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in LIB_FILE_NAMES:
            if (p / name).is_file():
                return p / name
        raise DriftError(f"{p} is a directory without libllama ({', '.join(LIB_FILE_NAMES)})")
    if not p.exists():
        raise DriftError(f"library {p} does not exist")
    return p


def read_companions(library: Path) -> dict[str, Exports]:
    """Exports of the companion libraries (libmtmd, ...) found beside libllama, by library name.

    libllama does not link them, so they are no DT_NEEDED siblings; the runtime dlopens them from there too.
    """
    from llamarcp._libproxy import companion_file_names
    from llamarcp.drift.abi import COMPANION_LIBRARIES

    found: dict[str, Exports] = {}
    for name in COMPANION_LIBRARIES:
        for file_name in companion_file_names(name):
            candidate = library.parent / file_name
            if candidate.is_file():
                found[name] = read_exports(candidate)
                break
    return found


def read_with_siblings(library: Path) -> tuple[Exports, list[Exports]]:
    """The library's exports plus those of its DT_NEEDED libraries found beside it (libggml*).

    Functions from ggml headers that llama.h re-exposes live in those siblings.
    """
    main = read_exports(library)
    siblings: list[Exports] = []
    seen = {library.resolve()}
    queue = list(main.needed)
    while queue:
        soname = queue.pop(0)
        candidate = library.parent / soname
        if not candidate.is_file() or candidate.resolve() in seen:
            continue
        seen.add(candidate.resolve())
        ex = read_exports(candidate)
        siblings.append(ex)
        queue.extend(ex.needed)
    return main, siblings


# ------------------------------------------------------------------------------------------ comparison


@dataclass
class Finding:
    severity: str  # "error" | "warning" | "note"
    kind: str  # "missing" | "undeclared" | "deprecated" | "optional-missing"
    name: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "kind": self.kind, "name": self.name, "message": self.message}


@dataclass
class SymbolReport:
    library: str
    libraries: list[str]
    declared: int
    exported: int
    findings: list[Finding] = field(default_factory=list)

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    def failed(self, strict: bool = False) -> bool:
        return self.count("error") > 0 or (strict and self.count("warning") > 0)

    def summary(self) -> str:
        return (
            f"symbols: {self.declared} functions declared, {self.exported} exported by {self.library}; "
            f"{self.count('error')} error(s), {self.count('warning')} warning(s), {self.count('note')} note(s)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "library": self.library,
            "libraries": self.libraries,
            "declared": self.declared,
            "exported": self.exported,
            "errors": self.count("error"),
            "warnings": self.count("warning"),
            "findings": [f.as_dict() for f in self.findings],
        }

    def render_text(self) -> str:
        others = [Path(p).name for p in self.libraries[1:]]
        lines = [f"library: {self.library}" + (f" (+ {', '.join(others)})" if others else "")]
        order = {"error": 0, "warning": 1, "note": 2}
        for f in sorted(self.findings, key=lambda f: (order[f.severity], f.kind, f.name)):
            lines.append(f"{f.severity}: {f.message}")
        lines.append(self.summary())
        return "\n".join(lines)


def _removed_note(name: str) -> str:
    """For a header older than the library: what llama.cpp replaced the function with."""
    from llamarcp.drift.replacements import REMOVED_FUNCTIONS

    hint = REMOVED_FUNCTIONS.get(name)
    return f" (removed upstream -> {hint})" if hint else ""


def compare(
    manifest: dict[str, Any],
    library: str | os.PathLike[str],
    *,
    optional: dict[str, str] | None = None,
    undeclared_prefixes: Iterable[str] = ("llama_",),
    abi_check: bool = True,
) -> SymbolReport:
    """Declared-but-not-exported (error), exported-but-undeclared (warning), deprecated (warning), and the ABI.

    `optional` maps function groups (the manifest's "group") a build may lack to a hint; their
    missing functions are notes, not errors. Default: the generated optional-group table.
    `abi_check`: compare the library's ABI stamp with the manifest, or probe it (see `abi_findings`).
    """
    if optional is None:
        from llamarcp._guard import optional_groups

        optional = optional_groups()
    lib_path = resolve_library(library)
    main, siblings = read_with_siblings(lib_path)
    companions = read_companions(lib_path)
    siblings += [ex for ex in companions.values() if all(ex.path != s.path for s in siblings)]
    exported = set(main.functions)
    for ex in siblings:
        exported |= ex.functions
    functions = manifest.get("functions", [])
    declared = {f["name"]: f for f in functions}
    report = SymbolReport(
        library=str(lib_path),
        libraries=[main.path] + [s.path for s in siblings],
        declared=len(declared),
        exported=len(main.functions),
    )
    for name in sorted(declared):
        fn = declared[name]
        header = fn.get("header") or "the header"
        if name not in exported:
            reason = optional.get(fn.get("group") or "")
            companion = companions.get(fn.get("library") or "")
            if reason and companion is not None:  # an optional library that is there must export all of it
                report.findings.append(
                    Finding(
                        "error",
                        "missing",
                        name,
                        f"{name} is declared in {header} but not exported by {Path(companion.path).name}; "
                        f"a call would fail{_removed_note(name)}",
                    )
                )
            elif reason:
                report.findings.append(
                    Finding("note", "optional-missing", name, f"{name} not exported (optional: {reason})")
                )
            else:
                report.findings.append(
                    Finding(
                        "error",
                        "missing",
                        name,
                        f"{name} is declared in {header} but not exported; a call would fail{_removed_note(name)}",
                    )
                )
        if fn.get("deprecated") is not None:
            hint = fn["deprecated"] or "no replacement named"
            report.findings.append(Finding("warning", "deprecated", name, f"{name} is deprecated in {header}: {hint}"))
    prefixes = tuple(undeclared_prefixes)
    # Only libllama's own exports (and a companion's under its own prefix, mtmd_*): libggml exports hundreds
    # of functions llama.h never mentions.
    own = [(name, prefixes) for name in main.functions]
    own += [(name, (f"{lib}_",)) for lib, ex in companions.items() for name in ex.functions]
    for name, wanted in sorted(own):
        if name.startswith(wanted) and name not in declared:
            report.findings.append(
                Finding(
                    "warning",
                    "undeclared",
                    name,
                    f"{name} is exported but not declared in the API manifest "
                    "(header and library from different commits?)",
                )
            )
    if abi_check:
        report.findings.extend(abi_findings(manifest, lib_path))
    return report


def abi_findings(manifest: dict[str, Any], library: Path) -> list[Finding]:
    """What the runtime guard would say about the ABI: the stamp's item digests vs the manifest's, or the probe.

    Errors for every struct, constant, define or signature laid out differently; a note when nothing could
    be verified (no stamp, and no probe possible).
    """
    import platform

    from llamarcp import _guard
    from llamarcp.drift import abi

    expected = abi.items(manifest)
    stamp, stamp_path = _guard.read_stamp(library)
    found_fp = stamp.get("abi_fingerprint") if stamp else None
    source = (stamp or {}).get("source") or "<the library's llama.cpp tree>"
    see = f"see `python -m codegen.drift diff <this API> {source}`"
    if isinstance(found_fp, str):
        if found_fp == abi.fingerprint(expected):
            return [Finding("note", "abi", "abi", f"ABI fingerprint {found_fp} matches the API manifest")]
        document = abi.read_items_file(library.parent)
        if document is None:
            message = f"ABI fingerprint {found_fp} (stamp {stamp_path}) differs and {abi.ITEMS_FILE} is missing; {see}"
            return [Finding("error", "abi-changed", "abi", message)]
        diff = abi.differences(expected, {str(k): str(v) for k, v in document["items"].items()})
        out = [
            Finding("error", "abi-changed", item, f"{item} has another ABI in the library's headers; {see}")
            for item in diff.changed
        ]
        if diff.added or diff.removed:
            out.append(
                Finding(
                    "note",
                    "abi-other",
                    "abi",
                    f"the library's headers add {len(diff.added)} and lack {len(diff.removed)} item(s) of the API",
                )
            )
        return out
    table = abi.probes(manifest)
    result = abi.ProbeResult(skipped="the API declares no argument-less function returning a params struct")
    if table:
        from llamarcp._ffi import ffi

        try:
            raw = ffi.dlopen(str(library))
        except OSError as exc:  # its exports were read from the file, but nothing can run it here
            return [
                Finding(
                    "error",
                    "unloadable",
                    "library",
                    f"the system loader cannot load {library}: {exc}; it has no ABI stamp, so its layouts cannot "
                    "be checked, and llamarcp could not use it on this machine either",
                )
            ]
        result = abi.probe(raw, ffi, table, platform.machine())
    out = [Finding("error", "abi-probe", problem.split(":", 1)[0], problem) for problem in result.problems]
    if result.verified and not result.problems:
        out.append(Finding("note", "abi-probe", "abi", f"no ABI stamp; probe verified {', '.join(result.verified)}"))
    elif not result.problems:
        out.append(Finding("note", "abi-unverified", "abi", f"no ABI stamp and nothing probed ({result.skipped})"))
    return out
