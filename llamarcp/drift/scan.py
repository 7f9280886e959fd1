"""`drift scan`: what Python code uses of a llama.cpp API, checked against one API (pinned, an api.json, a tree).

The names it calls (`llamarcp.drift.names`: removed, deprecated, undeclared functions) and, for an API read from a
manifest, what it does with them (`llamarcp.drift.usage`: call arity, struct fields, constants, C types).
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamarcp.drift.names import SEVERITY, STATUSES, ApiIndex, NameVisitor, Use, call_name, gh_escape
from llamarcp.drift.usage import UsageVisitor
from llamarcp.drift.values import Returns, project_returns
from llamarcp.errors import DriftError

__all__ = [
    "SEVERITY", "STATUSES", "ApiIndex", "ScanResult", "Use", "called_functions", "iter_python_files", "scan_llamarcp",
    "scan_paths", "scan_source",
]  # fmt: skip

SKIP_DIRS = frozenset({".git", ".hg", ".venv", "venv", "__pycache__", "node_modules", "build", "dist", ".tox"})


def _parse(source: str, path: str) -> ast.Module:
    try:
        return ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise DriftError(f"{path}:{exc.lineno}: cannot parse Python: {exc.msg}") from exc
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurdly deep nesting
        raise DriftError(f"{path}: cannot parse Python: {exc}") from exc


def _visit(tree: ast.Module, source: str, path: str, api: ApiIndex, returns: Returns | None = None) -> NameVisitor:
    """Run the visitor over a parsed module: names only, or (an API with facts) the usage checks too."""
    visitor = NameVisitor(api, path) if api.facts is None else UsageVisitor(api, path, source, returns)
    try:
        visitor.visit(tree)
    except RecursionError as exc:
        raise DriftError(f"{path}: code nested too deeply to scan") from exc
    return visitor


def scan_source(source: str, path: str, api: ApiIndex) -> list[Use]:
    """Findings in one module (struct types that other modules' functions return are not known here)."""
    tree = _parse(source, path)
    returns = project_returns([(path, source, tree)], api) if api.facts is not None else None
    return sorted(_visit(tree, source, path, api, returns).uses, key=lambda u: (u.line, u.col, u.name, u.status))


def _skipped_dir(path: Path) -> bool:
    """Hidden, build and cache directories, and virtual environments (a venv is not the project's code)."""
    name = path.name
    return (
        name in SKIP_DIRS
        or name.startswith(".")
        or name.endswith(".egg-info")
        or name == "site-packages"
        or (path / "pyvenv.cfg").is_file()
    )


def iter_python_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            yield p
        elif p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not _skipped_dir(Path(root) / d))
                for name in sorted(files):
                    if name.endswith(".py"):
                        yield Path(root) / name
        else:
            raise DriftError(f"scan: {p} does not exist")


#: How the summary line names the usage findings (shown only when there are some).
USAGE_LABELS = {
    "arity": "call(s) with another arity",
    "field": "missing struct field(s)",
    "constant": "undeclared constant(s)",
    "type": "undeclared C type(s)",
    "field-gone": "field(s) no struct has",
}


@dataclass
class ScanResult:
    files: int
    uses: list[Use]
    errors: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for u in self.uses if u.status == status)

    def failed(self, strict: bool = False) -> bool:
        bad = sum(1 for u in self.uses if u.severity == "error") + len(self.errors)
        return bad > 0 or (strict and any(u.severity == "warning" for u in self.uses))

    def summary(self) -> str:
        usage = [f"{self.count(s)} {USAGE_LABELS[s]}" for s in USAGE_LABELS if self.count(s)]
        return (
            f"scan: {self.files} file(s); {self.count('removed')} removed, {self.count('undeclared')} undeclared, "
            f"{self.count('deprecated')} deprecated use(s)"
            + (f"; {', '.join(usage)}" if usage else "")
            + (f"; {len(self.errors)} unparsable" if self.errors else "")
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "summary": {s: self.count(s) for s in STATUSES},
            "errors": self.errors,
            "uses": [asdict(u) | {"severity": u.severity} for u in self.uses],
        }

    def render(self, fmt: str) -> str:
        if fmt == "json":
            return json.dumps(self.as_dict(), indent=2)
        lines = [u.render_github() if fmt == "github" else u.render() for u in self.uses]
        lines += [f"::error::{gh_escape(e)}" if fmt == "github" else f"error: {e}" for e in self.errors]
        lines.append(self.summary())
        return "\n".join(lines)


def scan_paths(paths: Iterable[str | os.PathLike[str]], api: ApiIndex) -> ScanResult:
    """Scan every .py file under `paths`; unparsable files are reported, not fatal.

    Two passes: the first learns which struct each function of the scanned code returns (`make_params()`),
    the second checks every module with that knowledge.
    """
    errors: list[str] = []
    modules: list[tuple[str, str, ast.Module]] = []
    count = 0
    for path in iter_python_files(paths):
        count += 1
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"{path}: cannot read: {exc}")
            continue
        try:
            modules.append((str(path), source, _parse(source, str(path))))
        except DriftError as exc:
            errors.append(str(exc))
    returns = project_returns(modules, api) if api.facts is not None else None
    uses: list[Use] = []
    for name, source, tree in modules:
        try:
            found = _visit(tree, source, name, api, returns).uses
        except DriftError as exc:
            errors.append(str(exc))
            continue
        uses.extend(sorted(found, key=lambda u: (u.line, u.col, u.name, u.status)))
    return ScanResult(count, uses, errors)


# ------------------------------------------------------------------------- functions llamarcp calls


def called_functions(paths: Iterable[str | os.PathLike[str]], declared: Iterable[str]) -> list[str]:
    """Declared C functions referenced as `<anything>.name` or `getattr(x, "name")` under `paths`.

    Inside llamarcp every attribute spelled like a llama.h function is a call through `lib`.
    """
    names = frozenset(declared)
    found: set[str] = set()
    for path in iter_python_files(paths):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in names:
                found.add(node.attr)
            elif (
                isinstance(node, ast.Call)
                and call_name(node) in ("getattr", "hasattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in names
            ):
                found.add(str(node.args[1].value))
    return sorted(found)


def scan_llamarcp(manifest: dict[str, Any], label: str | None = None) -> ScanResult:
    """llamarcp's own package against one tree's API (what `build_lib.py --source` and `codegen.bump` report),
    the pinned bindings naming what moved. `label` names a tree whose manifest has no commit."""
    from llamarcp.drift.inputs import PACKAGE_DIR, pinned_manifest

    index = ApiIndex.from_manifest(manifest, reference=pinned_manifest(), label=label)
    return scan_paths([PACKAGE_DIR], index)
