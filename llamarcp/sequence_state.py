"""One sequence's (one server slot's) KV state: snapshot, restore, erase, and llama.cpp's sequence files.

A `SequenceSnapshot` holds the tokens a sequence's memory holds and llama.cpp's serialized state of that
sequence (`llama_state_seq_get_data`). With `n_parallel > 1` the work runs on the batching scheduler's thread
between two decode steps, on an idle slot only (`SlotBusyError` otherwise); with one sequence it takes the
context's turn.

Files are llama.cpp's own per-sequence format, byte for byte what `llama_state_seq_save_file` (and so
llama-server's `/slots?action=save`) writes: u32 magic 'ggsq', u32 version, u32 token count, the int32 tokens,
then the state. They are written atomically (a new temporary file beside the target, fsynced, renamed over it)
and never through a symlink or onto anything but a regular file; reading opens without following symlinks,
checks the header, the token ids and the size before llama.cpp sees the state, and llama.cpp's own checks
(architecture, layer count, types) refuse a state of another model shape.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamarcp._backend import capture_log, get_lib
from llamarcp._ffi import ffi
from llamarcp.errors import LlamaError, StateError

if TYPE_CHECKING:
    from llamarcp.llama import Llama

__all__ = [
    "SequenceSnapshot",
    "SlotBusyError",
    "erase_sequence",
    "read_sequence_file",
    "restore_sequence",
    "sequence_file_limit",
    "sequence_states",
    "snapshot_sequence",
    "write_sequence_file",
]

_MAGIC: int = ffi.integer_const("LLAMA_STATE_SEQ_MAGIC")
_VERSION: int = ffi.integer_const("LLAMA_STATE_SEQ_VERSION")
_HEADER = struct.Struct("<III")


class SlotBusyError(LlamaError):
    """The slot runs a request; save, restore and erase wait for an idle slot."""


@dataclass
class SequenceSnapshot:
    tokens: list[int]
    #: llama.cpp's serialized state of the sequence (as `llama_state_seq_get_data` writes it).
    data: bytes

    @property
    def n_bytes(self) -> int:
        """Size of its file."""
        return _HEADER.size + 4 * len(self.tokens) + len(self.data)


def sequence_file_limit(llama: Llama) -> int:
    """A generous bound on a sequence file of this context: a full slot of tokens, each with K and V of every
    layer in f32 at four times the embedding width (wide attention heads), plus 1 MiB of headers. It only
    keeps an absurd file from being read into memory; llama.cpp checks the real layout."""
    model = llama._model
    n_ctx = int(llama.n_ctx)
    n_layer = int(get_lib().llama_model_n_layer(model.ptr))
    per_token = 2 * 4 * model.n_embd() * n_layer * 4
    return _HEADER.size + 4 * n_ctx + n_ctx * per_token + (1 << 20)


def _on_sequence(llama: Llama, seq_id: int, fn: Any) -> Any:
    """`fn(engine, slot)` with the memory arranged for `seq_id` (slot None with one sequence)."""
    n_seq = llama.n_parallel
    if isinstance(seq_id, bool) or not isinstance(seq_id, int) or not 0 <= seq_id < n_seq:
        raise ValueError(f"slot {seq_id!r} does not exist (slots 0..{n_seq - 1})")
    engine = llama._engine_or_raise()
    scheduler = llama._scheduler
    if scheduler is not None:

        def between_steps() -> Any:
            slot = scheduler.slot(seq_id)
            if slot.job is not None:
                raise SlotBusyError(f"slot {seq_id} is processing a request")
            return fn(engine, slot)

        return scheduler.call_between_steps(between_steps)
    with llama._turns.exclusive():
        engine.claim("single")
        return fn(engine, None)


def snapshot_sequence(llama: Llama, seq_id: int) -> SequenceSnapshot:
    """The tokens and KV state of sequence `seq_id`."""

    def take(engine: Any, slot: Any) -> SequenceSnapshot:
        lib = get_lib()
        tokens = list(slot.tokens if slot is not None else engine.input_ids)
        size = int(lib.llama_state_seq_get_size(engine.ctx.ptr, seq_id))
        buf = ffi.new("uint8_t[]", max(size, 1))
        written = int(lib.llama_state_seq_get_data(engine.ctx.ptr, buf, size, seq_id))
        if written <= 0 and tokens:
            raise StateError(f"llama_state_seq_get_data wrote nothing for slot {seq_id}")
        return SequenceSnapshot(tokens, ffi.buffer(buf, written)[:])

    result: SequenceSnapshot = _on_sequence(llama, seq_id, take)
    return result


def restore_sequence(llama: Llama, seq_id: int, snapshot: SequenceSnapshot) -> None:
    """Put `snapshot` into sequence `seq_id` (any slot: the state is not tied to the slot it came from).
    On failure the sequence is left empty and StateError says why."""
    tokens = list(snapshot.tokens)
    n_ctx = int(llama.n_ctx)
    if len(tokens) > n_ctx:
        raise StateError(f"the state holds {len(tokens)} tokens; a slot of this server holds at most {n_ctx}")
    llama._model.check_tokens(tokens)
    data = snapshot.data

    def put(engine: Any, slot: Any) -> None:
        lib = get_lib()
        memory = engine.memory
        lib.llama_memory_seq_rm(memory, seq_id, -1, -1)
        if slot is not None:
            slot.tokens = []
        else:
            engine.input_ids = []
            if engine.kept_logits is not None:
                engine.kept_logits.keep_only(0)
        if not tokens:
            return
        with capture_log() as log:
            read = int(
                lib.llama_state_seq_set_data(engine.ctx.ptr, ffi.from_buffer("uint8_t[]", data), len(data), seq_id)
            )
        n_mem = int(lib.llama_memory_seq_pos_max(memory, seq_id)) + 1
        if read == 0 or n_mem != len(tokens):
            lib.llama_memory_seq_rm(memory, seq_id, -1, -1)
            reason = log.reason(2) if read == 0 else f": it holds {n_mem} positions for {len(tokens)} tokens"
            raise StateError(f"llama.cpp could not restore the state into slot {seq_id}{reason}")
        if slot is not None:
            slot.tokens = tokens
            # The file does not say which LoRA scales the state was computed with: take the current defaults.
            slot.lora = engine.loras.resolve() if engine.loras is not None else ()
        else:
            engine.input_ids = tokens

    _on_sequence(llama, seq_id, put)


def erase_sequence(llama: Llama, seq_id: int) -> int:
    """Empty sequence `seq_id`'s memory; returns how many tokens it held."""

    def erase(engine: Any, slot: Any) -> int:
        get_lib().llama_memory_seq_rm(engine.memory, seq_id, -1, -1)
        if slot is not None:
            n, slot.tokens = len(slot.tokens), []
        else:
            n, engine.input_ids = len(engine.input_ids), []
        return n

    result: int = _on_sequence(llama, seq_id, erase)
    return result


def sequence_states(llama: Llama) -> list[dict[str, Any]]:
    """Each sequence (slot): id, cached tokens, and the request it runs (counts only)."""
    scheduler = llama._scheduler
    if scheduler is not None:
        return scheduler.slot_states()
    return [{"id": 0, "n_tokens": llama.n_tokens, "is_processing": False}]


# -- files ----------------------------------------------------------------------------------------------------


def write_sequence_file(path: str | os.PathLike[str], snapshot: SequenceSnapshot) -> int:
    """Write `snapshot` in llama.cpp's sequence file format, atomically; returns the bytes written.

    The target must be a regular file or not exist; a symlink, directory, device or FIFO there is refused
    (StateError), so a save never writes through a link or replaces something that is not a slot file."""
    target = Path(path)
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        info = None
    if info is not None and not stat.S_ISREG(info.st_mode):
        kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a regular file"
        raise StateError(f"will not save to {path}: it is {kind}")
    header = _HEADER.pack(_MAGIC, _VERSION, len(snapshot.tokens))
    body = struct.pack(f"<{len(snapshot.tokens)}i", *snapshot.tokens)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(header)
            handle.write(body)
            handle.write(snapshot.data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except OSError as exc:
        raise StateError(f"could not save the slot to {path}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    with contextlib.suppress(OSError):
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return snapshot.n_bytes


def read_sequence_file(path: str | os.PathLike[str], max_tokens: int, max_bytes: int) -> SequenceSnapshot:
    """Read a sequence file (llama.cpp's format) without following symlinks; StateError for a file that is
    not one, holds more than `max_tokens` tokens or is larger than `max_bytes`."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StateError(
            f"cannot open the slot file {path}: {exc.strerror or exc} (symlinks are not followed)"
        ) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateError(f"{path} is not a regular file")
        if info.st_size > max_bytes:
            raise StateError(f"{path} is {info.st_size} bytes; a slot file of this model is at most {max_bytes}")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise StateError(f"cannot read the slot file {path}: {exc}") from exc
    finally:
        os.close(fd)
    if len(raw) < _HEADER.size:
        raise StateError(f"{path} is not a llama.cpp sequence file (too short)")
    magic, version, n_tokens = _HEADER.unpack_from(raw)
    if magic != _MAGIC:
        raise StateError(f"{path} is not a llama.cpp sequence file (magic {magic:#x})")
    if version != _VERSION:
        raise StateError(f"{path} is sequence file version {version}; this llama.cpp reads version {_VERSION}")
    if n_tokens > max_tokens:
        raise StateError(f"{path} holds {n_tokens} tokens; a slot of this server holds at most {max_tokens}")
    end = _HEADER.size + 4 * n_tokens
    if len(raw) < end:
        raise StateError(f"{path} is truncated: {n_tokens} tokens announced")
    tokens = list(struct.unpack_from(f"<{n_tokens}i", raw, _HEADER.size))
    return SequenceSnapshot(tokens, raw[end:])
