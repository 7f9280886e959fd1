"""The C functions llamarcp's own code calls, rendered into `_generated/_used.py` for the runtime guard.

`codegen/generate.py` writes it with the other generated files and `--check` fails when it is stale, naming the
functions that are now called or no longer called. Every module of the package is scanned except `_generated/`
(wrappers for every declared function are not uses).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from llamarcp.drift.scan import called_functions

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "llamarcp"
FILE_NAME = "_used.py"
EXCLUDED = ("_generated",)
#: Modules that call llama.h through the ctypes face (`llama_cpp.llama_cpp`), not `lib`: each function is looked up
#: when called there, so the runtime guard must not require it of every library.
CTYPES_FACE_USERS = ("compat/internals.py",)


def package_sources(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    out = []
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir)
        if rel.parts[0] in EXCLUDED or "__pycache__" in rel.parts or rel.as_posix() in CTYPES_FACE_USERS:
            continue
        out.append(path)
    return out


def compute(declared: Iterable[str], package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Sorted names of declared functions the package's sources reference."""
    return called_functions(package_sources(package_dir), declared)


def parse_names(text: str) -> list[str]:
    """The names listed in a rendered `_used.py` (for naming the difference of a stale file)."""
    return [line.strip().strip('",') for line in text.splitlines() if line.startswith('    "')]


def describe_difference(old_text: str, new_names: list[str]) -> str:
    old = set(parse_names(old_text))
    added = sorted(set(new_names) - old)
    dropped = sorted(old - set(new_names))
    return (
        f"llamarcp now calls other C functions (new: {', '.join(added) or '-'}; "
        f"no longer called: {', '.join(dropped) or '-'})"
    )
