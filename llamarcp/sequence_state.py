"""One sequence's (one server slot's) KV state: snapshot, restore, erase, and llama.cpp's sequence files.

A `SequenceSnapshot` holds the tokens a sequence's memory holds and llama.cpp's serialized state of that
sequence (`llama_state_seq_get_data`). With `n_parallel > 1` the work runs on the batching scheduler's thread
between two decode steps, on an idle slot only (`SlotBusyError` otherwise); with one sequence it takes the
context's turn.

Files (`write_sequence_file`, `read_sequence_file`) hold llama.cpp's own per-sequence format, byte for byte
what `llama_state_seq_save_file` (and so llama-server's `/slots?action=save`) writes: u32 magic 'ggsq', u32
version, u32 token count, the int32 tokens, then the state. By default that is wrapped in `llamarcp.state`'s
checked container (sha256 over the file, the model's identity, kind "sequence"), so a flipped bit, a truncated
copy or a file of another model is refused before llama.cpp reads it; a bare sequence file (llama-server's, or
saved with FORMAT_LLAMA_CPP for llama-server) is still read, checked as far as its format allows. Files are
written atomically (state.write_replacing: a temporary file beside the target, fsynced, renamed over it) and
never through a symlink or onto anything but a regular file; reading opens without following symlinks, checks
the header, the token ids and the size before llama.cpp sees the state, and llama.cpp's own checks
(architecture, layer count, types) refuse a bare state of another model shape.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from llamarcp._backend import capture_log, get_lib
from llamarcp._ffi import ffi
from llamarcp.errors import LlamaError, StateError, TokenizeError
from llamarcp.state import (
    FILE_MAGIC,
    KIND_SEQUENCE,
    checked_file_parts,
    read_regular_file,
    verified_payload,
    write_replacing,
)

if TYPE_CHECKING:
    from llamarcp._core import Model
    from llamarcp.llama import Llama

__all__ = [
    "FORMATS",
    "FORMAT_LLAMARCP",
    "FORMAT_LLAMA_CPP",
    "SequenceSnapshot",
    "SlotBusyError",
    "SlotFile",
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


#: llama.cpp (b11549 among others) starts the in-memory state of a sequence (`llama_state_seq_get_data`) with
#: this u32 and the sequence id, and checks them in `llama_state_seq_set_data`; its sequence files do not carry
#: them. Whether the loaded library does is seen in the state it hands out, not assumed from its release.
_SEQ_DATA_MAGIC = 0xAF143CD8
_SEQ_DATA_HEAD = struct.Struct("<Ii")


@dataclass
class SequenceSnapshot:
    tokens: list[int]
    #: llama.cpp's serialized state of the sequence as its sequence files hold it (what follows the tokens).
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
        tokens = list(slot.tokens if slot is not None else engine.input_ids)
        blob = _get_seq_data(engine, seq_id)
        if not blob and tokens:
            raise StateError(f"llama_state_seq_get_data wrote nothing for slot {seq_id}")
        head = _SEQ_DATA_HEAD.pack(_SEQ_DATA_MAGIC, seq_id)
        return SequenceSnapshot(tokens, blob[len(head) :] if blob.startswith(head) else blob)

    result: SequenceSnapshot = _on_sequence(llama, seq_id, take)
    return result


def restore_sequence(llama: Llama, seq_id: int, snapshot: SequenceSnapshot) -> None:
    """Put `snapshot` into sequence `seq_id` (any slot: the state is not tied to the slot it came from).
    On failure the sequence is left empty and StateError says why."""
    tokens = list(snapshot.tokens)
    n_ctx = int(llama.n_ctx)
    if len(tokens) > n_ctx:
        raise StateError(f"the state holds {len(tokens)} tokens; a slot of this server holds at most {n_ctx}")
    try:
        llama._model.check_tokens(tokens)
    except TokenizeError as exc:
        raise StateError(f"the state holds {exc}") from None
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
        head = _SEQ_DATA_HEAD.pack(_SEQ_DATA_MAGIC, seq_id)
        blob = head + data if _get_seq_data(engine, seq_id).startswith(head) else data  # as the library hands out
        with capture_log() as log:
            read = int(
                lib.llama_state_seq_set_data(engine.ctx.ptr, ffi.from_buffer("uint8_t[]", blob), len(blob), seq_id)
            )
        n_mem = int(lib.llama_memory_seq_pos_max(memory, seq_id)) + 1
        if read == 0 or n_mem != len(tokens):
            lib.llama_memory_seq_rm(memory, seq_id, -1, -1)
            reason = log.reason(2) if read == 0 else f": it holds {n_mem} positions for {len(tokens)} tokens"
            if "n_stream mismatch" in reason:  # llamarcp's slots share one KV stream, as llama-server's with -kvu
                reason += " (saved where each slot had its own KV stream: llama-server -np N>1 without -kvu)"
            raise StateError(f"llama.cpp could not restore the state into slot {seq_id}{reason}")
        if slot is not None:
            slot.tokens = tokens
            # The file does not say which LoRA scales the state was computed with: take the current defaults.
            slot.lora = engine.loras.resolve() if engine.loras is not None else ()
        else:
            engine.input_ids = tokens

    _on_sequence(llama, seq_id, put)


def _get_seq_data(engine: Any, seq_id: int) -> bytes:
    """`llama_state_seq_get_data` of one sequence, as the library writes it."""
    lib = get_lib()
    size = int(lib.llama_state_seq_get_size(engine.ctx.ptr, seq_id))
    buf = ffi.new("uint8_t[]", max(size, 1))
    written = int(lib.llama_state_seq_get_data(engine.ctx.ptr, buf, size, seq_id))
    return ffi.buffer(buf, max(written, 0))[:]


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

#: The formats a slot file may have: llamarcp's checked container (state.py), or llama.cpp's bare sequence file.
FORMAT_LLAMARCP = "llamarcp"
FORMAT_LLAMA_CPP = "llama.cpp"
FORMATS = (FORMAT_LLAMARCP, FORMAT_LLAMA_CPP)
#: What the checked container adds around the sequence file, at most (header, digest, metadata).
_CONTAINER_OVERHEAD = 1 << 17


def _sequence_parts(snapshot: SequenceSnapshot) -> list[bytes]:
    header = _HEADER.pack(_MAGIC, _VERSION, len(snapshot.tokens))
    return [header, struct.pack(f"<{len(snapshot.tokens)}i", *snapshot.tokens), snapshot.data]


def write_sequence_file(
    path: str | os.PathLike[str], snapshot: SequenceSnapshot, model: Model, file_format: str = FORMAT_LLAMARCP
) -> int:
    """Write `snapshot` atomically (state.write_replacing); returns the bytes written. FORMAT_LLAMARCP wraps the
    sequence file in llamarcp's state container (sha256, model identity); FORMAT_LLAMA_CPP writes the bare
    sequence file llama-server reads.

    The target must be a regular file or not exist; a symlink, directory, device or FIFO there is refused
    (StateError), so a save never writes through a link or replaces something that is not a slot file."""
    if file_format not in FORMATS:
        raise ValueError(f"file_format must be one of {', '.join(FORMATS)}, got {file_format!r}")
    target = Path(path)
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        info = None
    if info is not None and not stat.S_ISREG(info.st_mode):
        kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a regular file"
        raise StateError(f"will not save to {path}: it is {kind}")
    parts: list[Any] = _sequence_parts(snapshot)
    if file_format == FORMAT_LLAMARCP:
        parts = checked_file_parts(model, KIND_SEQUENCE, len(snapshot.tokens), parts)
    write_replacing(target, path, parts, noun="slot")
    return sum(len(part) for part in parts)


class SlotFile(NamedTuple):
    snapshot: SequenceSnapshot
    file_format: str  # FORMAT_LLAMARCP or FORMAT_LLAMA_CPP
    n_bytes: int  # the file's size


def read_sequence_file(path: str | os.PathLike[str], model: Model, max_tokens: int, max_bytes: int) -> SlotFile:
    """Read a slot file without following symlinks.

    A llamarcp file is refused unless its sha256 and model identity match (a flipped bit, a truncated copy, a
    file of another model: StateError naming the problem). A bare llama.cpp sequence file (llama-server's) has
    no checksum: its header, size, token count and token ids are checked here, its state by llama.cpp."""
    data = read_regular_file(
        path,
        (FILE_MAGIC, _HEADER.pack(_MAGIC, _VERSION, 0)[:4]),
        noun="slot file",
        follow_symlinks=False,
        max_bytes=max_bytes + _CONTAINER_OVERHEAD,
    )
    if data.startswith(FILE_MAGIC):
        payload = bytes(verified_payload(model, data, path, KIND_SEQUENCE, noun="slot file"))
        file_format = FORMAT_LLAMARCP
    else:
        payload, file_format = data, FORMAT_LLAMA_CPP
    if len(payload) < _HEADER.size:
        raise StateError(f"{path} is not a slot file (it starts with {bytes(data[:8])!r})")
    magic, version, n_tokens = _HEADER.unpack_from(payload)
    if magic != _MAGIC:
        raise StateError(f"{path} is not a slot file (it starts with {bytes(data[:8])!r})")
    if version != _VERSION:
        raise StateError(f"{path} is sequence file version {version}; this llama.cpp reads version {_VERSION}")
    if len(payload) > max_bytes:
        raise StateError(f"{path} holds {len(payload)} bytes of state; a slot of this model holds at most {max_bytes}")
    if n_tokens > max_tokens:
        raise StateError(f"{path} holds {n_tokens} tokens; a slot of this server holds at most {max_tokens}")
    end = _HEADER.size + 4 * n_tokens
    if len(payload) < end:
        raise StateError(f"{path} is truncated: {n_tokens} tokens announced")
    if n_tokens and len(payload) == end:
        raise StateError(f"{path} is truncated: it holds {n_tokens} tokens but no state")
    tokens = list(struct.unpack_from(f"<{n_tokens}i", payload, _HEADER.size))
    if file_format == FORMAT_LLAMA_CPP and tokens[:1] == [_LLAMA_SERVER_TOKENS]:
        tokens = _llama_server_tokens(tokens, path)
    return SlotFile(SequenceSnapshot(tokens, payload[end:]), file_format, len(data))


#: llama-server (b11549) stores its slot's tokens packed where llama.cpp keeps the token list: -1 (its marker),
#: u32 version 1, u32 count, the tokens, u32 count of media chunks, the chunks (tools/server/server-common.cpp).
_LLAMA_SERVER_TOKENS = -1
_LLAMA_SERVER_TOKENS_VERSION = 1


def _llama_server_tokens(packed: list[int], path: str | os.PathLike[str]) -> list[int]:
    """The token ids of llama-server's packed slot tokens; StateError for what llamarcp cannot restore."""
    if len(packed) < 4 or packed[1] != _LLAMA_SERVER_TOKENS_VERSION:
        raise StateError(f"{path} is a llama-server slot file of an unknown layout (version {packed[1:2]})")
    count = packed[2]
    if not 0 <= count <= len(packed) - 4:
        raise StateError(f"{path} is a damaged llama-server slot file: {count} tokens announced")
    n_media = packed[3 + count]
    if n_media != 0:
        raise StateError(f"{path} holds {n_media} image/audio chunks of llama-server; llamarcp restores text slots")
    if len(packed) != 4 + count:
        raise StateError(f"{path} is a damaged llama-server slot file: data after its tokens")
    return packed[3 : 3 + count]
