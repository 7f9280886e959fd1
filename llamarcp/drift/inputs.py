"""Turn a command-line API spec into a manifest dict (the `api.json` schema), from the installed package alone.

A spec is one of:
  pinned                 the manifest shipped in llamarcp/_generated/api.json
  release:b8672          a release of llamarcp's window, from the declarations the package carries
  loaded                 the release llamarcp picks for the library it would load (scan only)
  path/to/api.json       any manifest file (or a directory holding one)
Headers, llama.cpp trees and `carrier:VERSION` are parsed with codegen/ and libclang, which live only in a
llamarcp checkout: `python -m codegen.drift` (the same commands) passes a `source_parser` that reads them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llamarcp.errors import DriftError

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PINNED_MANIFEST = PACKAGE_DIR / "_generated" / "api.json"

#: Reads a header / tree / carrier spec into a manifest (codegen.drift.parse_spec in a checkout).
SourceParser = Callable[[str], dict[str, Any]]


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


def checkout_only(spec: str) -> DriftError:
    """The error for a header/tree/carrier spec given to the installed package's drift CLI."""
    return DriftError(
        f"{spec}: parsing headers and llama.cpp trees needs a llamarcp checkout (codegen/ and libclang are not "
        "part of the installed package): run `python -m codegen.drift ...` with the same arguments there, "
        "or compare two api.json manifests here (`python -m llamarcp.drift diff OLD.json NEW.json`)"
    )


def load_api(spec: str, source_parser: SourceParser | None = None) -> dict[str, Any]:
    """Manifest for `spec`: pinned, an api.json (or a directory with one); anything else via `source_parser`."""
    if spec == "pinned":
        return pinned_manifest()
    if spec.startswith("release:") or spec == "loaded":  # from the declarations the package carries
        from llamarcp.drift.cdef import loaded_manifest, release_manifest

        return loaded_manifest(pinned_manifest()) if spec == "loaded" else release_manifest(spec, pinned_manifest())
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "api.json").is_file() and not (path / "include" / "llama.h").is_file():
        return load_manifest_file(path / "api.json")
    if path.suffix == ".json" and not spec.startswith("carrier:"):
        if not path.is_file():
            raise DriftError(f"{spec}: no such file (expected pinned, an api.json, a header or a tree)")
        return load_manifest_file(path)
    if source_parser is None:
        if not spec.startswith("carrier:") and not path.exists():
            raise DriftError(f"{spec}: no such file (expected pinned or an api.json manifest)")
        raise checkout_only(spec)
    return source_parser(spec)
