"""Context state: in-memory snapshots (`LlamaState`) and llama.cpp session files on disk.

Session files are llama.cpp's own format (`llama_state_save_file`), so its tools can read them, written
atomically: into a temporary file beside the target, fsynced, then renamed over it, so a full disk or a crash
mid-write never destroys the previous good file. Beside each file goes a small JSON sidecar
(`<file>.llamarcp.json`) with its sha256 and the model it belongs to; loading checks it when present (a file
from llama.cpp's tools has none), and always checks that every restored token id is in the vocab and that
the memory holds exactly the restored tokens. Any failure leaves the context empty and raises `StateError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamarcp._backend import capture_log, get_lib
from llamarcp._ffi import ffi
from llamarcp.errors import StateError

if TYPE_CHECKING:
    from llamarcp.engine import Engine

__all__ = ["SIDECAR_SUFFIX", "LlamaState", "load", "load_file", "save", "save_file"]

SIDECAR_SUFFIX = ".llamarcp.json"
_SIDECAR_FORMAT = 1


@dataclass
class LlamaState:
    """A snapshot from `Llama.save_state()`: the token history and llama.cpp's serialized context state."""

    input_ids: list[int]
    llama_state: bytes
    n_ctx: int
    seed: int
    #: With `Llama(logits_all=True)`: the (n_tokens, n_vocab) logits of every position (llama-cpp-python's too).
    scores: Any = None

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def llama_state_size(self) -> int:
        return len(self.llama_state)


def save(engine: Engine, seed: int) -> LlamaState:
    """Snapshot of the context (memory, logits) and its token history."""
    lib = get_lib()
    engine.claim("single")
    ptr = engine.ctx.ptr
    size = int(lib.llama_state_get_size(ptr))
    buf = ffi.new("uint8_t[]", size)
    written = int(lib.llama_state_get_data(ptr, buf, size))
    if written <= 0:
        raise StateError("llama_state_get_data wrote nothing")
    kept = engine.kept_logits
    scores = kept.rows(len(engine.input_ids)) if kept is not None else None
    return LlamaState(list(engine.input_ids), ffi.buffer(buf, written)[:], engine.n_ctx, seed, scores)


def load(engine: Engine, state: LlamaState) -> None:
    """Restore a snapshot taken from a context of the same model and size."""
    if not isinstance(state, LlamaState):
        raise TypeError("load_state expects a LlamaState from save_state()")
    if state.n_ctx != engine.n_ctx:
        raise StateError(f"state is from a context of {state.n_ctx} tokens, this one has {engine.n_ctx}")
    tokens = list(state.input_ids)
    _check_tokens(engine, tokens, "the state")
    engine.claim("single")
    data = state.llama_state
    with capture_log() as log:
        read = int(get_lib().llama_state_set_data(engine.ctx.ptr, ffi.from_buffer("uint8_t[]", data), len(data)))
    if read == 0:
        engine.clear()
        raise StateError(f"llama.cpp could not restore the state{log.reason(2)}")
    _adopt(engine, tokens, "the state", state.scores)


def save_file(engine: Engine, path: str | os.PathLike[str]) -> None:
    """Write the context state and its tokens to a llama.cpp session file, atomically, plus its sidecar."""
    target = Path(path)
    if not target.parent.is_dir():
        raise StateError(f"could not save the session to {path}: {target.parent} is not a directory")
    engine.claim("single")
    tokens = ffi.new("int32_t[]", engine.input_ids or [0])
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with capture_log() as log:
            ok = get_lib().llama_state_save_file(engine.ctx.ptr, os.fsencode(tmp), tokens, len(engine.input_ids))
        if not ok:
            raise StateError(f"could not save the session to {path}{log.reason(2)}")
        digest = _fsync_and_hash(tmp)
        sidecar = {"format": _SIDECAR_FORMAT, "sha256": digest, "n_tokens": len(engine.input_ids)}
        sidecar.update(model_identity(engine))
        _write_atomic(_sidecar_path(target), json.dumps(sidecar, indent=1).encode())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        raise StateError(f"could not save the session to {path}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def load_file(engine: Engine, path: str | os.PathLike[str]) -> None:
    """Restore a session file written by `save_file` (or by llama.cpp's tools) into this context."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"session file not found: {path}")
    _check_sidecar(engine, source)
    engine.claim("single")
    n_ctx = engine.n_ctx
    tokens = ffi.new("int32_t[]", n_ctx)
    count = ffi.new("size_t *")
    with capture_log() as log:
        ok = get_lib().llama_state_load_file(engine.ctx.ptr, os.fsencode(source), tokens, n_ctx, count)
    if not ok:
        engine.clear()
        raise StateError(f"could not load the session {path}{log.reason(2)}")
    restored = list(ffi.unpack(tokens, int(count[0])))
    try:
        _check_tokens(engine, restored, f"the session {path}")
    except StateError:
        engine.clear()
        raise
    _adopt(engine, restored, f"the session {path}")


def model_identity(engine: Engine) -> dict[str, Any]:
    """What the sidecar records of the model, so a session is not loaded into another model."""
    model = engine.model
    return {
        "model_description": model.description(),
        "n_vocab": model.n_vocab,
        "n_embd": model.n_embd(),
        "n_params": model.n_params(),
    }


def _check_tokens(engine: Engine, tokens: list[int], what: str) -> None:
    n_vocab = engine.model.n_vocab
    bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise StateError(f"{what} holds token id {bad}, outside this model's vocab (0..{n_vocab - 1})")
    if len(tokens) > engine.n_ctx:
        raise StateError(f"{what} holds {len(tokens)} tokens; this context has room for {engine.n_ctx}")


def _adopt(engine: Engine, tokens: list[int], what: str, scores: Any = None) -> None:
    """Take over the restored history once the memory is seen to hold exactly those tokens (and, with
    logits_all, the per-position logits saved with them; without, those positions are decoded again when
    logits are asked for)."""
    if engine.memory != ffi.NULL:  # an encoder without KV memory: nothing to compare
        n_mem = int(get_lib().llama_memory_seq_pos_max(engine.memory, 0)) + 1
        if tokens and n_mem != len(tokens):
            engine.clear()
            raise StateError(f"{what} is inconsistent: {len(tokens)} tokens, but the memory holds {n_mem} positions")
    engine.input_ids = tokens
    kept = engine.kept_logits
    if kept is None:
        return
    kept.keep_only(0)
    if scores is not None:
        try:
            if len(scores) != len(tokens):
                raise ValueError(f"{len(scores)} rows of logits for {len(tokens)} tokens")
            kept.put(scores)
        except (TypeError, ValueError) as exc:
            engine.clear()
            raise StateError(f"{what} has unusable logits: {exc}") from exc


def _check_sidecar(engine: Engine, source: Path) -> None:
    sidecar = _sidecar_path(source)
    if not sidecar.is_file():
        return  # a file from llama.cpp's own tools: the token and memory checks still run
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        expected = str(meta["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(f"the session's sidecar {sidecar} is unreadable: {exc}") from exc
    actual = _sha256(source)
    if actual != expected:
        raise StateError(f"the session {source} is corrupt: sha256 {actual[:16]}... differs from its sidecar")
    for key, value in model_identity(engine).items():
        if key in meta and meta[key] != value:
            raise StateError(f"the session {source} belongs to another model ({key} {meta[key]!r} != {value!r})")


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_and_hash(path: Path) -> str:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())
    return _sha256(path)


def _write_atomic(target: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
