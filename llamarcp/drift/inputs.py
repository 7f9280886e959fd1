"""Turn a command-line API spec into a manifest dict (the `api.json` schema).

A spec is one of:
  pinned                 the manifest shipped in llamarcp/_generated/api.json
  path/to/api.json       any manifest file
  path/to/llama.h        a header (its llama.cpp tree's ggml headers are used when it sits in one)
  path/to/llama.cpp      a llama.cpp source tree
  carrier:0.3.16         the llama.cpp vendored by a known sdist (fetched and verified by build_lib.py)
Headers are parsed with codegen/ (a checkout-only tool, not part of the installed package).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from llamarcp.errors import DriftError

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PINNED_MANIFEST = PACKAGE_DIR / "_generated" / "api.json"
REPO_ROOT = PACKAGE_DIR.parent


def load_manifest_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        hint = " (run `python codegen/generate.py`)" if p == PINNED_MANIFEST else ""
        raise DriftError(f"cannot read API manifest {p}: {exc.strerror or exc}{hint}") from exc
    except ValueError as exc:
        raise DriftError(f"{p} is not valid JSON: {exc}") from exc
    validate_manifest(data, str(p))
    return data


#: Keys every entry of a manifest section needs (the api.json schema; extra keys are allowed).
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "functions": ("name", "return_type", "params"),
    "structs": ("name", "fields"),
    "enums": ("name", "constants"),
    "callbacks": ("name", "return_type", "params"),
    "typedefs": ("name", "type"),
    "defines": ("name", "value"),
}


def validate_manifest(data: Any, source: str) -> None:
    """Raise DriftError naming the first entry that does not follow the api.json schema."""
    if not isinstance(data, dict) or not isinstance(data.get("functions"), list):
        raise DriftError(f"{source} is not an API manifest (no 'functions' list)")
    for section, keys in REQUIRED_KEYS.items():
        entries = data.get(section, [])
        if not isinstance(entries, list):
            raise DriftError(f"{source}: '{section}' must be a list")
        for i, entry in enumerate(entries):
            missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if missing:
                label = entry.get("name", f"#{i}") if isinstance(entry, dict) else f"#{i}"
                raise DriftError(f"{source}: {section} entry {label} lacks {', '.join(missing)}")
            if section in ("functions", "callbacks"):
                for param in entry["params"]:
                    if not isinstance(param, dict) or "type" not in param or "name" not in param:
                        raise DriftError(f"{source}: {section} entry {entry['name']} has a parameter without name/type")


def pinned_manifest() -> dict[str, Any]:
    return load_manifest_file(PINNED_MANIFEST)


def _codegen_parse() -> Any:
    """Import codegen.parse from the checkout; a clear error where only the wheel is installed."""
    if str(REPO_ROOT) not in sys.path and (REPO_ROOT / "codegen" / "parse.py").is_file():
        sys.path.insert(0, str(REPO_ROOT))
    try:
        from codegen import parse
    except ImportError as exc:
        raise DriftError(
            "parsing headers needs codegen/ from a llamarcp checkout and libclang "
            f"(pip install 'llamarcp[codegen]'): {exc}; or compare two api.json manifests instead"
        ) from exc
    return parse


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _tree_root_of_header(header: Path) -> Path | None:
    """The llama.cpp tree a header belongs to (`<root>/include/llama.h`), if it is in one."""
    parent = header.resolve().parent
    if parent.name == "include" and (parent.parent / "ggml" / "include").is_dir():
        return parent.parent
    return None


def parse_source_tree(root: Path, commit: str | None = None, header: Path | None = None) -> dict[str, Any]:
    parse = _codegen_parse()
    try:
        api = parse.parse_source(root, commit or _git_commit(root), header=header)
    except parse.ParseError as exc:
        raise DriftError(f"cannot parse {header or root}: {exc}") from exc
    manifest: dict[str, Any] = api.to_manifest()
    return manifest


def parse_single_header(header: Path) -> dict[str, Any]:
    parse = _codegen_parse()
    try:
        api = parse.parse_header(header, "unknown")
    except parse.ParseError as exc:
        raise DriftError(f"cannot parse {header}: {exc}") from exc
    manifest: dict[str, Any] = api.to_manifest()
    return manifest


def carrier_source(version: str) -> tuple[Path, str]:
    from llamarcp._pin import KNOWN_CARRIERS

    carrier = KNOWN_CARRIERS.get(version)
    if carrier is None:
        raise DriftError(f"unknown carrier {version!r}; known: {', '.join(sorted(KNOWN_CARRIERS))}")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        import build_lib
    except ImportError as exc:
        raise DriftError(f"carrier:{version} needs build_lib.py from a llamarcp checkout: {exc}") from exc
    try:
        return Path(build_lib.ensure_source(carrier)), carrier.commit
    except build_lib.BuildError as exc:
        raise DriftError(f"cannot fetch carrier {version}: {exc}") from exc


def load_api(spec: str) -> dict[str, Any]:
    """Manifest for any spec form listed in the module docstring."""
    if spec == "pinned":
        return pinned_manifest()
    if spec.startswith("carrier:"):
        root, commit = carrier_source(spec.split(":", 1)[1])
        return parse_source_tree(root, commit)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "include" / "llama.h").is_file():
            return parse_source_tree(path)
        if (path / "api.json").is_file():
            return load_manifest_file(path / "api.json")
        raise DriftError(f"{path} is neither a llama.cpp tree (no include/llama.h) nor holds an api.json")
    if not path.is_file():
        raise DriftError(f"{spec}: no such file (expected pinned, carrier:VERSION, api.json, a header or a tree)")
    if path.suffix == ".json":
        return load_manifest_file(path)
    if path.suffix == ".h":
        tree = _tree_root_of_header(path)
        return parse_source_tree(tree, header=path) if tree else parse_single_header(path)
    raise DriftError(f"{spec}: expected a .json manifest, a .h header or a directory")
