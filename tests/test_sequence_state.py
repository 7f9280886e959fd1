"""`llamarcp.sequence_state` files against llama.cpp's own: the bare format is byte for byte what
`llama_state_seq_save_file` writes and `llama_state_seq_load_file` reads back (whatever header the loaded
library puts on its in-memory state), llama-server's packed token list restores, and the checked container
refuses damaged files before llama.cpp sees them."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from llamarcp import Llama
from llamarcp._backend import get_lib
from llamarcp._ffi import ffi
from llamarcp.errors import StateError
from llamarcp.sequence_state import (
    FORMAT_LLAMA_CPP,
    FORMAT_LLAMARCP,
    read_sequence_file,
    restore_sequence,
    sequence_file_limit,
    snapshot_sequence,
    write_sequence_file,
)

PROMPT = "The lighthouse keeper wrote down every ship that passed"


def _greedy(llm: Llama) -> list[float]:
    out = llm.create_completion(PROMPT, max_tokens=6, temperature=0, logprobs=1)
    return list(out["choices"][0]["logprobs"]["token_logprobs"])


def test_bare_file_is_llama_cpp_own(tiny_model_path: Path, tmp_path: Path) -> None:
    lib = get_lib()
    with Llama(str(tiny_model_path), n_ctx=256, n_threads=1) as llm:
        llm.eval(llm.tokenize(PROMPT.encode()))
        snapshot = snapshot_sequence(llm, 0)
        ours = tmp_path / "ours.bin"
        write_sequence_file(ours, snapshot, llm._model, FORMAT_LLAMA_CPP)
        theirs = tmp_path / "theirs.bin"
        tokens = ffi.new("llama_token[]", snapshot.tokens)
        ctx = llm._engine_or_raise().ctx.ptr
        assert lib.llama_state_seq_save_file(ctx, str(theirs).encode(), 0, tokens, len(snapshot.tokens)) > 0
        assert ours.read_bytes() == theirs.read_bytes()

        # llama.cpp's loader reads our file back into the sequence.
        lib.llama_memory_seq_rm(llm._engine_or_raise().memory, 0, -1, -1)
        out = ffi.new("llama_token[]", 256)
        count = ffi.new("size_t *")
        assert lib.llama_state_seq_load_file(ctx, str(ours).encode(), 0, out, 256, count) > 0
        assert list(out[0 : count[0]]) == snapshot.tokens


def test_checked_and_llama_server_files_restore(tiny_model_path: Path, tmp_path: Path) -> None:
    with Llama(str(tiny_model_path), n_ctx=256, n_threads=1) as llm:
        llm.eval(llm.tokenize(PROMPT.encode()))
        snapshot = snapshot_sequence(llm, 0)
        limit = sequence_file_limit(llm)
        checked, bare = tmp_path / "checked.bin", tmp_path / "bare.bin"
        n_checked = write_sequence_file(checked, snapshot, llm._model)
        write_sequence_file(bare, snapshot, llm._model, FORMAT_LLAMA_CPP)
        assert n_checked == checked.stat().st_size and checked.read_bytes().endswith(bare.read_bytes())
        read = read_sequence_file(checked, llm._model, 256, limit)
        assert read.file_format == FORMAT_LLAMARCP and read.snapshot == snapshot

        # llama-server b11549 packs its slot's tokens: -1, version 1, count, tokens, 0 media chunks.
        raw = bare.read_bytes()
        n = len(snapshot.tokens)
        packed = [-1, 1, n, *snapshot.tokens, 0]
        server_file = tmp_path / "llama-server.bin"
        server_file.write_bytes(raw[:8] + struct.pack(f"<I{len(packed)}i", len(packed), *packed) + raw[12 + 4 * n :])
        from_server = read_sequence_file(server_file, llm._model, 256, limit)
        assert from_server.file_format == FORMAT_LLAMA_CPP and from_server.snapshot == snapshot
        with_media = [-1, 1, n, *snapshot.tokens, 1, 0]
        server_file.write_bytes(
            raw[:8] + struct.pack(f"<I{len(with_media)}i", len(with_media), *with_media) + raw[12 + 4 * n :]
        )
        with pytest.raises(StateError, match="image/audio"):
            read_sequence_file(server_file, llm._model, 256, limit)

        expected = _greedy(llm)  # continues from the cached prompt
        llm.reset()
        restore_sequence(llm, 0, from_server.snapshot)
        assert llm.n_tokens == n
        assert _greedy(llm) == expected


def test_checked_file_damage_is_refused(tiny_model_path: Path, tmp_path: Path) -> None:
    with Llama(str(tiny_model_path), n_ctx=256, n_threads=1) as llm:
        llm.eval(llm.tokenize(PROMPT.encode()))
        path = tmp_path / "slot.bin"
        write_sequence_file(path, snapshot_sequence(llm, 0), llm._model)
        raw = path.read_bytes()
        limit = sequence_file_limit(llm)
        for where in range(8, len(raw), max(1, len(raw) // 40)):
            flipped = bytearray(raw)
            flipped[where] ^= 0x01
            path.write_bytes(bytes(flipped))
            with pytest.raises(StateError, match="corrupt|format|metadata"):
                read_sequence_file(path, llm._model, 256, limit)
        path.write_bytes(raw[:-1])
        with pytest.raises(StateError, match="corrupt"):
            read_sequence_file(path, llm._model, 256, limit)
        path.write_bytes(raw)
        with pytest.raises(StateError, match="holds .* tokens"):
            read_sequence_file(path, llm._model, 3, limit)
        with pytest.raises(ValueError, match="file_format"):
            write_sequence_file(path, snapshot_sequence(llm, 0), llm._model, "gguf")
