"""`python -m codegen.drift symbols|diff|scan ...`: the drift CLI of the package, plus header and tree inputs.

The installed `python -m llamarcp.drift` reads api.json manifests only. In a checkout this entry point also
accepts what needs codegen/ and libclang:
  path/to/llama.h        a header (its llama.cpp tree's ggml headers are used when it sits in one)
  path/to/llama.cpp      a llama.cpp source tree
  carrier:0.3.16         the llama.cpp vendored by a known sdist (fetched and verified by build_lib.py)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from codegen import parse
from llamarcp.drift import inputs
from llamarcp.errors import DriftError


def tree_root_of_header(header: Path) -> Path | None:
    """The llama.cpp tree a header belongs to (`<root>/include/llama.h`), if it is in one."""
    parent = header.resolve().parent
    if parent.name == "include" and (parent.parent / "ggml" / "include").is_dir():
        return parent.parent
    return None


def parse_source_tree(root: Path, commit: str | None = None, header: Path | None = None) -> dict[str, Any]:
    from codegen.generate import source_commit

    try:
        api = parse.parse_source(root, commit or source_commit(root, None), header=header)
    except parse.ParseError as exc:
        raise DriftError(f"cannot parse {header or root}: {exc}") from exc
    manifest: dict[str, Any] = api.to_manifest()
    return manifest


def parse_single_header(header: Path) -> dict[str, Any]:
    try:
        api = parse.parse_header(header, "unknown")
    except parse.ParseError as exc:
        raise DriftError(f"cannot parse {header}: {exc}") from exc
    manifest: dict[str, Any] = api.to_manifest()
    return manifest


def carrier_source(version: str) -> tuple[Path, str]:
    """The verified tree of a known carrier sdist (downloaded once by build_lib.py) and its commit."""
    from llamarcp._pin import KNOWN_CARRIERS

    carrier = KNOWN_CARRIERS.get(version)
    if carrier is None:
        raise DriftError(f"unknown carrier {version!r}; known: {', '.join(sorted(KNOWN_CARRIERS))}")
    import build_lib  # the checkout root is on sys.path: that is where `codegen` was imported from

    try:
        return Path(build_lib.ensure_source(carrier)), carrier.commit
    except build_lib.BuildError as exc:
        raise DriftError(f"cannot fetch carrier {version}: {exc}") from exc


def parse_spec(spec: str) -> dict[str, Any]:
    """Manifest of a header, a llama.cpp tree or `carrier:VERSION` (the specs the package cannot read)."""
    if spec.startswith("carrier:"):
        root, commit = carrier_source(spec.split(":", 1)[1])
        return parse_source_tree(root, commit)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "include" / "llama.h").is_file():
            return parse_source_tree(path)
        raise DriftError(f"{path} is neither a llama.cpp tree (no include/llama.h) nor holds an api.json")
    if not path.is_file():
        raise DriftError(f"{spec}: no such file (expected pinned, carrier:VERSION, api.json, a header or a tree)")
    if path.suffix == ".h":
        tree = tree_root_of_header(path)
        return parse_source_tree(tree, header=path) if tree else parse_single_header(path)
    raise DriftError(f"{spec}: expected a .json manifest, a .h header or a directory")


def load_api(spec: str) -> dict[str, Any]:
    """Any spec form: manifests via the package, headers/trees/carriers parsed here."""
    return inputs.load_api(spec, source_parser=parse_spec)


def main(argv: list[str] | None = None) -> int:
    from llamarcp.drift.__main__ import main as drift_main

    return drift_main(argv, source_parser=parse_spec, prog="python -m codegen.drift")


if __name__ == "__main__":
    sys.exit(main())
