"""The list of C functions llamarcp's own code calls, kept in `used_functions.py` for the runtime guard.

`python -m llamarcp.drift used --write` rewrites it; `--check` (run by CI and a test) fails when it is stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamarcp.drift.scan import called_functions

PACKAGE_DIR = Path(__file__).resolve().parent.parent
USED_FILE = Path(__file__).resolve().parent / "used_functions.py"
#: Not scanned: generated code (wrappers for every function are not uses) and the drift tools themselves.
EXCLUDED = ("_generated", "drift")

_TEMPLATE = '''"""Functions llamarcp's own code calls through `lib`; the runtime guard checks each is exported.

Written by `python -m llamarcp.drift used --write` from the API manifest and the package sources.
DO NOT EDIT: tests/test_guard.py fails when this list is stale.
"""

USED_FUNCTIONS: tuple[str, ...] = (
{body})
'''


def package_sources(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    out = []
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir)
        if rel.parts[0] in EXCLUDED or "__pycache__" in rel.parts:
            continue
        out.append(path)
    return out


def compute(manifest: dict[str, Any], package_dir: Path = PACKAGE_DIR) -> list[str]:
    declared = [f["name"] for f in manifest.get("functions", [])]
    return called_functions(package_sources(package_dir), declared)


def render(names: list[str]) -> str:
    return _TEMPLATE.format(body="".join(f'    "{n}",\n' for n in names))


def current_text() -> str:
    try:
        return USED_FILE.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
