"""State: snapshots, llama.cpp session files written atomically, and what loading checks before trusting them."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from llamarcp.errors import LlamaError, StateError
from llamarcp.state import SIDECAR_SUFFIX, LlamaState

PROMPT = "The quick brown fox"


def text_of(result: dict[str, Any]) -> str:
    return str(result["choices"][0]["text"])


def test_save_and_load_state(fresh: Any) -> None:
    llm = fresh()
    llm.eval(llm.tokenize(PROMPT.encode()))
    state = llm.save_state()
    assert state.n_tokens == llm.n_tokens and state.llama_state_size > 0
    first = text_of(llm(PROMPT, max_tokens=16, seed=9))
    llm("Something else entirely", max_tokens=8)
    llm.load_state(state)
    assert llm.input_ids.tolist() == state.input_ids
    assert text_of(llm(PROMPT, max_tokens=16, seed=9)) == first
    assert llm.n_prompt_tokens_evaluated == 1  # the restored prefix was reused
    other = fresh(n_ctx=256)
    with pytest.raises(LlamaError, match="256"):
        other.load_state(state)


def test_corrupt_state_is_refused(fresh: Any) -> None:
    from llamarcp.errors import StateError
    from llamarcp.llama import LlamaState

    llm = fresh()
    expected = text_of(llm(PROMPT, max_tokens=6, temperature=0))
    good = llm.save_state()
    for junk in (b"", b"garbage" * 100, good.llama_state[: len(good.llama_state) // 2], bytes(len(good.llama_state))):
        with pytest.raises(StateError, match="could not restore"):
            llm.load_state(LlamaState([1, 2], junk, good.n_ctx, 0))
        assert llm.n_tokens == 0
    assert text_of(llm(PROMPT, max_tokens=6, temperature=0)) == expected


def test_state_files(fresh: Any, tmp_path: Path) -> None:
    from llamarcp.errors import StateError

    llm = fresh()
    llm.eval(llm.tokenize(PROMPT.encode()))
    session = tmp_path / "session.bin"
    llm.save_state_file(session)
    expected = text_of(llm(PROMPT, max_tokens=12, seed=4))
    other = fresh()
    other.load_state_file(session)
    assert other.input_ids.tolist() == llm.tokenize(PROMPT.encode())
    assert text_of(other(PROMPT, max_tokens=12, seed=4)) == expected
    assert other.n_prompt_tokens_evaluated == 1  # the restored prefix was reused
    with pytest.raises(FileNotFoundError):
        other.load_state_file(tmp_path / "missing.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a session" * 10)
    with pytest.raises(StateError, match="could not load"):
        other.load_state_file(tmp_path / "junk.bin")
    assert other.n_tokens == 0
    with pytest.raises(StateError, match="could not save"):
        llm.save_state_file(tmp_path / "no-such-dir" / "s.bin")


def _saved(fresh: Any, tmp_path: Path) -> tuple[Any, Path]:
    llm = fresh()
    llm.eval(llm.tokenize(PROMPT.encode()))
    session = tmp_path / "session.bin"
    llm.save_state_file(session)
    return llm, session


def test_session_file_has_a_sidecar_and_no_temp_files_are_left(fresh: Any, tmp_path: Path) -> None:
    llm, session = _saved(fresh, tmp_path)
    meta = json.loads((tmp_path / ("session.bin" + SIDECAR_SUFFIX)).read_text())
    assert meta["n_tokens"] == llm.n_tokens and meta["n_vocab"] == llm.n_vocab and len(meta["sha256"]) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["session.bin", "session.bin" + SIDECAR_SUFFIX]


def test_a_failed_overwrite_keeps_the_previous_file(
    fresh: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm, session = _saved(fresh, tmp_path)
    good = session.read_bytes()
    llm(PROMPT + " jumps over", max_tokens=4)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(StateError, match="No space left"):
        llm.save_state_file(session)
    monkeypatch.undo()
    assert session.read_bytes() == good  # the old session is intact...
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # ...and no temp file is left
    other = fresh()
    other.load_state_file(session)
    assert other.input_ids.tolist() == llm.tokenize(PROMPT.encode())


def test_bit_flips_are_caught_by_the_checksum(fresh: Any, tmp_path: Path) -> None:
    _, session = _saved(fresh, tmp_path)
    data = bytearray(session.read_bytes())
    other = fresh()
    for offset in (3, 20, len(data) // 2, len(data) - 5):
        flipped = bytearray(data)
        flipped[offset] ^= 0x10
        session.write_bytes(bytes(flipped))
        with pytest.raises(StateError, match="corrupt"):
            other.load_state_file(session)
        assert other.n_tokens == 0


def test_a_session_of_another_model_is_refused(fresh: Any, tmp_path: Path) -> None:
    _, session = _saved(fresh, tmp_path)
    sidecar = tmp_path / ("session.bin" + SIDECAR_SUFFIX)
    meta = json.loads(sidecar.read_text())
    meta["n_params"] += 1
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(StateError, match="another model"):
        fresh().load_state_file(session)


def test_token_ids_outside_the_vocab_are_refused_without_a_sidecar(fresh: Any, tmp_path: Path) -> None:
    """A session from llama.cpp's own tools has no sidecar: the restored tokens are still checked."""
    llm, session = _saved(fresh, tmp_path)
    (tmp_path / ("session.bin" + SIDECAR_SUFFIX)).unlink()
    data = bytearray(session.read_bytes())
    # llama.cpp session layout: magic u32, version u32, token count u32, then the int32 token ids.
    (n_tokens,) = struct.unpack_from("<I", data, 8)
    assert n_tokens == llm.n_tokens
    struct.pack_into("<i", data, 12 + 4, 10**8)
    session.write_bytes(bytes(data))
    other = fresh()
    with pytest.raises(StateError, match="outside this model's vocab"):
        other.load_state_file(session)
    assert other.n_tokens == 0
    assert text_of(other(PROMPT, max_tokens=3, temperature=0))  # the context is usable afterwards


def test_snapshot_with_bad_token_ids_is_refused(fresh: Any) -> None:
    llm = fresh()
    llm.eval(llm.tokenize(PROMPT.encode()))
    good = llm.save_state()
    with pytest.raises(StateError, match="outside"):
        llm.load_state(LlamaState([1, -5], good.llama_state, good.n_ctx, 0))
    with pytest.raises(TypeError):
        llm.load_state(b"not a state")  # type: ignore[arg-type]
    assert isinstance(StateError("x"), LlamaError)
