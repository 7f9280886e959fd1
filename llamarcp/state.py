"""Context state: in-memory snapshots (`LlamaState`) and session files on disk.

A session file carries its own integrity check, so a copy cannot lose it:

    b"LLAMARCP", u32 format (1), u32 metadata size, sha256 of everything else in the file (32 bytes),
    metadata (JSON: the model's identity, the token count, the payload size, and `kind` unless a session),
    payload: a llama.cpp session, byte for byte what `llama_state_save_file` writes (magic, version, tokens, state)

The server's slot files (`llamarcp.sequence_state`) are the same container around one sequence's state (`kind`
"sequence", payload byte for byte what `llama_state_seq_save_file` writes); `checked_file_parts`,
`verified_payload`, `read_regular_file` and `write_replacing` serve both.

Loading refuses a file whose checksum, model or llama.cpp session version differs, then checks that every
restored token id is in the vocab and that the memory holds exactly the restored tokens; a refused file leaves the
context empty (a path that cannot be read leaves it as it was) and raises `StateError` naming the path and the
reason. A plain llama.cpp session (its tools, or
llamarcp before format 1, whose checksum sat in a `<file>.llamarcp.json` sidecar, still checked when present)
loads with a `StateFileWarning`.

Saving writes only to a regular file or a new name: a directory, device node, FIFO or socket at the path is
refused untouched, and a symlink is followed to the file it leads to (the link stays a link). The file is written
beside that target, fsynced and renamed onto it, so a full disk or a crash mid-write leaves the previous file
whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamarcp._backend import capture_log, get_lib
from llamarcp._ffi import ffi
from llamarcp.errors import StateError, StateFileNotFoundError

if TYPE_CHECKING:
    from llamarcp._core import Model
    from llamarcp.engine import Engine

__all__ = [
    "FILE_FORMAT",
    "FILE_MAGIC",
    "KIND_SEQUENCE",
    "KIND_SESSION",
    "SIDECAR_SUFFIX",
    "LlamaState",
    "StateFileWarning",
    "checked_file_parts",
    "load",
    "load_file",
    "read_regular_file",
    "save",
    "save_file",
    "verified_payload",
    "write_replacing",
]

#: The first bytes of a state file written by `save_file`, then its format version (u32).
FILE_MAGIC = b"LLAMARCP"
FILE_FORMAT = 1
#: Beside a session file, where llamarcp before format 1 kept its checksum (still checked when present).
SIDECAR_SUFFIX = ".llamarcp.json"
_DIGEST_SIZE = 32
_MAX_META_SIZE = 1 << 16
#: What a state file holds (its metadata's `kind`; files without one are sessions).
KIND_SESSION = "session"
KIND_SEQUENCE = "sequence"


class StateFileWarning(UserWarning):
    """A session file was loaded without the checksum llamarcp embeds (llama.cpp's tools, older llamarcp)."""


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
    """Write the context state and its tokens to `path` (see the module docstring for the format and the rules)."""
    target = _save_target(path)
    engine.claim("single")
    lib = get_lib()
    tokens = list(engine.input_ids)
    size = int(lib.llama_state_get_size(engine.ctx.ptr))
    buf = ffi.new("uint8_t[]", max(size, 1))
    written = int(lib.llama_state_get_data(engine.ctx.ptr, buf, size))
    if written <= 0:
        raise StateError(f"could not save the session to {path}: llama_state_get_data wrote nothing")
    session_head = struct.pack("<III", int(lib.LLAMA_SESSION_MAGIC), int(lib.LLAMA_SESSION_VERSION), len(tokens))
    parts = [session_head, struct.pack(f"<{len(tokens)}i", *tokens), ffi.buffer(buf, written)]
    write_replacing(target, path, checked_file_parts(engine.model, KIND_SESSION, len(tokens), parts))


def checked_file_parts(model: Model, kind: str, n_tokens: int, payload: list[Any]) -> list[Any]:
    """The parts of a state file (module docstring) holding `payload` (bytes-like parts), in writing order."""
    meta: dict[str, Any] = {"n_tokens": n_tokens, "payload_size": sum(len(part) for part in payload)}
    if kind != KIND_SESSION:
        meta["kind"] = kind
    meta.update(identity_of(model))
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    head = FILE_MAGIC + struct.pack("<II", FILE_FORMAT, len(meta_bytes))
    digest = hashlib.sha256(head)
    for part in (meta_bytes, *payload):
        digest.update(part)
    return [head, digest.digest(), meta_bytes, *payload]


def load_file(engine: Engine, path: str | os.PathLike[str]) -> None:
    """Restore a session file written by `save_file` (or, with a warning, by llama.cpp's tools or an older
    llamarcp: files without the embedded checksum) into this context."""
    session_magic = struct.pack("<I", int(get_lib().LLAMA_SESSION_MAGIC))
    data = read_regular_file(path, (FILE_MAGIC, session_magic))  # unreadable: the context stays as it is
    try:
        if data.startswith(FILE_MAGIC):
            payload = verified_payload(engine.model, data, path)
        elif data.startswith(session_magic):
            payload = memoryview(data)
            _check_legacy(engine, data, path)
        else:
            raise StateError(f"{path} is not a session file (it starts with {bytes(data[:8])!r})")
        tokens, state_data = _split_session(engine, payload, path)
        _check_tokens(engine, tokens, f"the session {path}")
    except StateError:
        engine.clear()  # as after a failed restore: a refused file never leaves half of something behind
        raise
    engine.claim("single")
    with capture_log() as log:
        source = ffi.from_buffer("uint8_t[]", state_data)
        read = int(get_lib().llama_state_set_data(engine.ctx.ptr, source, len(state_data)))
    if read != len(state_data):
        engine.clear()
        why = f"read {read} of its {len(state_data)} state bytes" if read else "llama.cpp refused the state"
        raise StateError(f"could not load the session {path}: {why}{log.reason(2)}")
    _adopt(engine, tokens, f"the session {path}")


def model_identity(engine: Engine) -> dict[str, Any]:
    """What a session file records of its model, so it is not loaded into another model."""
    return identity_of(engine.model)


def identity_of(model: Model) -> dict[str, Any]:
    """`model_identity` of a model."""
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


def _save_target(path: str | os.PathLike[str]) -> Path:
    """Where `save_file` may write for `path`: a regular file (through any symlinks) or a new name in an
    existing directory. Anything else (a directory, a device node, a FIFO, a socket) is refused untouched."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    if os.fspath(path) in ("", b""):
        raise StateError("could not save the session to '': the path is empty")
    resolved = Path(os.path.realpath(path))  # symlinks are followed: the file they lead to is written
    try:
        info = os.lstat(resolved)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise StateError(f"could not save the session to {path}: {exc.strerror or exc}") from exc
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise StateError(
            f"could not save the session to {path}: {_kind_of(info.st_mode, resolved)}; refusing to replace it"
        )
    if not resolved.parent.is_dir():
        raise StateError(f"could not save the session to {path}: {resolved.parent} is not a directory")
    return resolved


def _kind_of(mode: int, where: Path) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symlink that does not resolve (a loop?)"),
    )
    what = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"{where} is {what}"


def write_replacing(target: Path, path: str | os.PathLike[str], parts: list[Any], noun: str = "session") -> None:
    """Write `parts` to a new file beside `target`, fsync it and rename it onto `target` (a regular file or a
    new name): a full disk or a crash mid-write leaves the previous file whole. The temporary file's name
    starts with a dot."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)  # umask applies
    except OSError as exc:
        raise StateError(
            f"could not save the {noun} to {path}: cannot create a file in {target.parent}: {exc.strerror or exc}"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            for part in parts:
                handle.write(part)
            handle.flush()
            os.fsync(handle.fileno())
        _keep_owner_and_mode(target, tmp)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        raise StateError(f"could not save the {noun} to {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _keep_owner_and_mode(target: Path, tmp: Path) -> None:
    """An overwritten file keeps its permissions (and, for root, its owner) instead of the temp file's."""
    try:
        info = os.stat(target)
    except FileNotFoundError:
        return
    with contextlib.suppress(OSError):
        os.chmod(tmp, stat.S_IMODE(info.st_mode))
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            os.chown(tmp, info.st_uid, info.st_gid)


def read_regular_file(
    path: str | os.PathLike[str],
    magics: tuple[bytes, ...],
    *,
    noun: str = "session",
    follow_symlinks: bool = True,
    max_bytes: int | None = None,
) -> bytes:
    """The bytes of a regular file starting with one of `magics` (else only its first bytes, so a wrong file is
    refused without reading it all); a FIFO, device or directory is refused without reading (or blocking), so
    is a symlink unless `follow_symlinks`, and a file larger than `max_bytes`."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    if os.fspath(path) in ("", b""):
        raise StateError(f"could not load the {noun} '': the path is empty")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise StateFileNotFoundError(f"{noun} file not found: {path}") from exc
    except OSError as exc:
        hint = " (symlinks are not followed)" if not follow_symlinks else ""
        raise StateError(f"could not load the {noun} {path}: {exc.strerror or exc}{hint}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateError(f"could not load the {noun} {path}: {_kind_of(info.st_mode, Path(path))}")
        if max_bytes is not None and info.st_size > max_bytes:
            raise StateError(f"could not load the {noun} {path}: {info.st_size} bytes, more than {max_bytes}")
        with os.fdopen(os.dup(fd), "rb") as handle:
            head = handle.read(max(len(magic) for magic in magics))
            if not head.startswith(magics):
                return head
            return head + (handle.read() if max_bytes is None else handle.read(max_bytes + 1 - len(head)))
    except OSError as exc:
        raise StateError(f"could not load the {noun} {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def verified_payload(
    model: Model, data: bytes, path: str | os.PathLike[str], kind: str = KIND_SESSION, noun: str = "session"
) -> memoryview:
    """The payload of a llamarcp state file of `kind`, once its checksum and model identity match."""
    fixed = len(FILE_MAGIC) + 8
    if len(data) < fixed + _DIGEST_SIZE:
        raise StateError(f"the {noun} {path} is corrupt: truncated header")
    file_format, meta_size = struct.unpack_from("<II", data, len(FILE_MAGIC))
    if file_format != FILE_FORMAT:
        raise StateError(
            f"the {noun} {path} has format {file_format}; this llamarcp reads format {FILE_FORMAT} (or is it corrupt?)"
        )
    meta_start = fixed + _DIGEST_SIZE
    if meta_size > _MAX_META_SIZE or meta_start + meta_size > len(data):
        raise StateError(f"the {noun} {path} is corrupt: its header claims {meta_size} bytes of metadata")
    view = memoryview(data)
    digest = hashlib.sha256(view[:fixed])
    digest.update(view[meta_start:])
    if digest.digest() != data[fixed:meta_start]:
        raise StateError(f"the {noun} {path} is corrupt: its sha256 does not match the checksum it carries")
    try:
        meta = json.loads(bytes(view[meta_start : meta_start + meta_size]))
        payload_size = int(meta["payload_size"])
        found = meta.get("kind", KIND_SESSION)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StateError(f"the {noun} {path} has unreadable metadata: {exc}") from exc
    if found != kind:
        raise StateError(f"{path} holds a {found} state, not a {kind} state (is it the other kind of file?)")
    payload = view[meta_start + meta_size :]
    if payload_size != len(payload):
        raise StateError(f"the {noun} {path} is corrupt: {len(payload)} bytes of state, {payload_size} expected")
    _check_identity(model, meta, path, noun)
    return payload


def _check_identity(model: Model, meta: dict[str, Any], path: str | os.PathLike[str], noun: str = "session") -> None:
    for key, value in identity_of(model).items():
        if key in meta and meta[key] != value:
            raise StateError(f"the {noun} {path} belongs to another model ({key} {meta[key]!r} != {value!r})")


def _check_legacy(engine: Engine, data: bytes, path: str | os.PathLike[str]) -> None:
    """A plain llama.cpp session (llama.cpp's tools, llamarcp before the embedded checksum): checked against
    its sidecar when one is beside it, loaded with a warning either way."""
    sidecar = _sidecar_path(Path(path))
    if not sidecar.is_file():
        warnings.warn(
            f"{path} is a plain llama.cpp session without a checksum: loading it unverified "
            "(save_state_file writes files that carry one)",
            StateFileWarning,
            stacklevel=4,
        )
        return
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        expected = str(meta["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(f"the session's sidecar {sidecar} is unreadable: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != expected:
        raise StateError(f"the session {path} is corrupt: its sha256 differs from its sidecar {sidecar.name}")
    _check_identity(engine.model, meta, path)
    warnings.warn(
        f"{path} is in the older format checked by a sidecar file; save it again to embed the checksum",
        StateFileWarning,
        stacklevel=4,
    )


def _split_session(engine: Engine, payload: Any, path: str | os.PathLike[str]) -> tuple[list[int], Any]:
    """llama.cpp's session layout: magic, version, token count (u32 each), the int32 tokens, then the state."""
    lib = get_lib()
    view = memoryview(payload)
    if len(view) < 12:
        raise StateError(f"could not load the session {path}: truncated")
    magic, version, n_tokens = struct.unpack_from("<III", view, 0)
    expected = (int(lib.LLAMA_SESSION_MAGIC), int(lib.LLAMA_SESSION_VERSION))
    if (magic, version) != expected:
        raise StateError(
            f"could not load the session {path}: llama.cpp session version {version}, this library reads {expected[1]}"
        )
    if n_tokens > engine.n_ctx:
        raise StateError(f"the session {path} holds {n_tokens} tokens; this context has room for {engine.n_ctx}")
    end = 12 + 4 * n_tokens
    if end > len(view):
        raise StateError(f"could not load the session {path}: truncated in its token list")
    tokens = list(struct.unpack_from(f"<{n_tokens}i", view, 12))
    return tokens, view[end:]


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
