"""Bindings for a user's own llama.cpp tree, generated at install time (`LLAMARCP_LLAMA_CPP_SOURCE=DIR pip install .`).

setup.py calls `bundle_bindings(tree, commit, dest)` after building that tree's library: the tree's headers are
parsed (libclang: needed on this path only), and `dest/bindings.json` gets what `llamarcp._release.custom()`
reads: the cffi declarations, the ABI fingerprint and item digests (equal to the build stamp's), the probe table
and the function names. A fork's extra functions are in it, so they are on `llamarcp.lib`. The returned report
(printed by the build) is the scan of llamarcp's own code against the tree and, for a tree outside the window,
the nearest release and what llamarcp will not be able to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from codegen import parse, render
from codegen.releases import cdef_chunks
from llamarcp.drift import abi

FILE_NAME = "bindings.json"


def bindings_document(tree: Path, commit: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the bindings.json content, the tree's API manifest)."""
    api = parse.parse_source(tree, commit)
    manifest = api.to_manifest()
    items = abi.items(manifest)
    document = {
        "name": commit[:12] if commit not in ("", "unknown") else f"tree:{tree.name}",
        "source": str(tree),
        "fingerprint": abi.fingerprint(items),
        "items": items,
        "probes": abi.probes(manifest),
        "functions": sorted(f.name for f in api.functions),
        "groups": {f.name: f.group for f in api.functions},
        "cdef": "\n".join(cdef_chunks(render.render_cdef(api))) + "\n",
        "ctypes_face": render.render_ctypes_face(api),  # llama-cpp-python's ctypes face of this tree
    }
    return document, manifest


def bundle_bindings(tree: Path, commit: str, dest: Path) -> list[str]:
    """Write `dest/bindings.json` for `tree`; return the report's lines (what the build prints)."""
    document, manifest = bindings_document(tree, commit)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / FILE_NAME).write_text(json.dumps(document, sort_keys=True) + "\n")
    return report(document, manifest)


def report(document: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    from llamarcp import _release
    from llamarcp.drift.scan import scan_llamarcp

    lines = [f"llamarcp: bindings generated from {document['source']} ({len(document['functions'])} functions)"]
    window = _release.window()
    same = [r.name for r in window if r.fingerprint == document["fingerprint"]]
    if same:
        lines.append(f"llamarcp: its ABI is that of llama.cpp {same[0]}, a release of llamarcp's window")
    else:
        scored = sorted(window, key=lambda r: len(abi.differences(r.items, document["items"]).changed))
        nearest = scored[0]
        diff = abi.differences(nearest.items, document["items"])
        lines.append(
            f"llamarcp: this tree is no release of llamarcp's window ({window[0].name} ... {window[-1].name}); "
            f"nearest: {nearest.name} ({diff.summary(limit=6)}). llamarcp uses these bindings; what its code "
            "needs and the tree lacks is listed below"
        )
    result = scan_llamarcp(manifest, label=str(document["name"]))  # names, arity, fields, constants
    errors = [u for u in result.uses if u.severity == "error"]
    if errors:
        lines.append(f"llamarcp: {len(errors)} use(s) in llamarcp's own code that this tree does not serve:")
        lines += [f"  {u.render()}" for u in errors[:40]]
    else:
        lines.append(
            "llamarcp: everything llamarcp's own code uses (functions and their arity, struct fields, constants) "
            "is declared by this tree"
        )
    return lines
