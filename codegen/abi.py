"""Record the ABI of the headers a library is built from, beside the library (called by build_lib.py).

The digests themselves are `llamarcp.drift.abi` (shared with the bindings and the runtime guard).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llamarcp.drift import abi


def source_manifest(source: Path, commit: str) -> dict[str, Any]:
    """The manifest of a llama.cpp tree's headers, parsed the way generate.py parses them."""
    from codegen import parse

    manifest: dict[str, Any] = parse.parse_source(source, commit).to_manifest()
    return manifest


def stamp_library(source: Path, commit: str, lib_dir: Path) -> dict[str, Any]:
    """Write `llamarcp-abi.json` for a library built from `source` into `lib_dir`; return the stamp fields.

    Never raises: a tree that cannot be parsed (no libclang) gives `abi_fingerprint: null` and the reason,
    and the guard then probes the library as it does an unstamped one.
    """
    try:
        document = abi.document(source_manifest(source, commit))
    except Exception as exc:  # noqa: BLE001 - a missing fingerprint must not fail the build; the reason is kept
        return {"abi_fingerprint": None, "abi_error": f"{type(exc).__name__}: {exc}"[:500]}
    target = lib_dir / abi.ITEMS_FILE
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=0, sort_keys=True) + "\n")
    tmp.replace(target)
    return {"abi_fingerprint": document["fingerprint"]}
