"""State: snapshots, session files (checksum inside, written atomically, only onto regular files), and what
loading checks before trusting them."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from pathlib import Path
from typing import Any

import pytest

from llamarcp.errors import LlamaError, StateError, StateFileNotFoundError
from llamarcp.state import FILE_FORMAT, FILE_MAGIC, SIDECAR_SUFFIX, LlamaState, StateFileWarning

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


def test_state_files(fresh: Any, tmp_path: Path, tiny_model_path: Path) -> None:
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
    with pytest.raises(StateFileNotFoundError, match="missing.bin") as missing:
        other.load_state_file(tmp_path / "missing.bin")
    assert isinstance(missing.value, FileNotFoundError) and isinstance(missing.value, StateError)
    (tmp_path / "junk.bin").write_bytes(b"not a session" * 10)
    with pytest.raises(StateError, match="junk.bin is not a session file"):
        other.load_state_file(tmp_path / "junk.bin")
    with pytest.raises(StateError, match=r"gguf is not a session file \(it starts with b'GGUF"):
        other.load_state_file(tiny_model_path)  # refused from its first bytes, not read whole
    assert other.n_tokens == 0
    with pytest.raises(StateError, match="could not save the session to .*no-such-dir.*not a directory"):
        llm.save_state_file(tmp_path / "no-such-dir" / "s.bin")


def _saved(fresh: Any, tmp_path: Path) -> tuple[Any, Path]:
    llm = fresh()
    llm.eval(llm.tokenize(PROMPT.encode()))
    session = tmp_path / "session.bin"
    llm.save_state_file(session)
    return llm, session


def _parts(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(metadata, payload) of a state file (the layout llamarcp.state documents)."""
    assert data.startswith(FILE_MAGIC)
    file_format, meta_size = struct.unpack_from("<II", data, len(FILE_MAGIC))
    assert file_format == FILE_FORMAT
    start = len(FILE_MAGIC) + 8 + 32
    return json.loads(data[start : start + meta_size]), data[start + meta_size :]


def _assemble(meta: dict[str, Any], payload: bytes) -> bytes:
    """A state file with a valid checksum around any metadata and payload (what a careful forger would write)."""
    meta_bytes = json.dumps(meta).encode()
    head = FILE_MAGIC + struct.pack("<II", FILE_FORMAT, len(meta_bytes))
    return head + hashlib.sha256(head + meta_bytes + payload).digest() + meta_bytes + payload


def test_the_file_carries_its_checksum_and_a_llama_cpp_session(fresh: Any, tmp_path: Path) -> None:
    from llamarcp._backend import get_lib
    from llamarcp._ffi import ffi

    llm, session = _saved(fresh, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["session.bin"]  # no sidecar, no temp file
    meta, payload = _parts(session.read_bytes())
    assert meta["n_tokens"] == llm.n_tokens and meta["n_vocab"] == llm.n_vocab
    assert meta["payload_size"] == len(payload)
    # The payload is exactly a llama.cpp session: llama.cpp's own loader takes it.
    plain = tmp_path / "plain.session"
    plain.write_bytes(payload)
    other = fresh()
    tokens = ffi.new("int32_t[]", 512)
    count = ffi.new("size_t *")
    ctx = other._context().ptr
    assert get_lib().llama_state_load_file(ctx, str(plain).encode(), tokens, 512, count)
    assert list(ffi.unpack(tokens, int(count[0]))) == llm.input_ids.tolist()


def test_plain_llama_cpp_sessions_load_with_a_warning(fresh: Any, tmp_path: Path) -> None:
    llm, session = _saved(fresh, tmp_path)
    _, payload = _parts(session.read_bytes())
    plain = tmp_path / "plain.session"
    plain.write_bytes(payload)  # as llama.cpp's tools (and llamarcp before the embedded checksum) write it
    other = fresh()
    with pytest.warns(StateFileWarning, match="without a checksum"):
        other.load_state_file(plain)
    assert other.input_ids.tolist() == llm.input_ids.tolist()
    # An older llamarcp's sidecar is still checked.
    sidecar = tmp_path / ("plain.session" + SIDECAR_SUFFIX)
    sidecar.write_text(json.dumps({"format": 1, "sha256": hashlib.sha256(payload).hexdigest(), "n_vocab": llm.n_vocab}))
    with pytest.warns(StateFileWarning, match="sidecar"):
        other.load_state_file(plain)
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 1
    plain.write_bytes(bytes(flipped))
    with pytest.raises(StateError, match="corrupt"):
        other.load_state_file(plain)
    assert other.n_tokens == 0


def test_a_failed_overwrite_keeps_the_previous_file(
    fresh: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm, session = _saved(fresh, tmp_path)
    good = session.read_bytes()
    llm(PROMPT + " jumps over", max_tokens=4)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(StateError, match="session.bin: No space left"):
        llm.save_state_file(session)
    monkeypatch.undo()
    assert session.read_bytes() == good  # the old session is intact...
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # ...and no temp file is left
    other = fresh()
    other.load_state_file(session)
    assert other.input_ids.tolist() == llm.tokenize(PROMPT.encode())


def bit_flip_positions(size: int, header: int) -> list[int]:
    """Every byte of the header and metadata, then 400 positions spread over the payload."""
    step = max(1, (size - header) // 400)
    return [*range(header), *range(header, size, step), size - 1]


def test_bit_flips_anywhere_are_refused_without_a_sidecar(fresh: Any, tmp_path: Path) -> None:
    """The issue's case: 40 of 60 bit-flipped files loaded silently once the sidecar was gone."""
    _, session = _saved(fresh, tmp_path)
    data = session.read_bytes()
    meta, payload = _parts(data)
    other = fresh()
    refused = 0
    positions = bit_flip_positions(len(data), len(data) - len(payload))
    for n, offset in enumerate(positions):
        flipped = bytearray(data)
        flipped[offset] ^= 1 << (n % 8)
        session.write_bytes(bytes(flipped))
        with pytest.raises(StateError, match="session.bin"):
            other.load_state_file(session)
        assert other.n_tokens == 0
        refused += 1
    for cut in (0, 7, 12, 48, len(data) // 2, len(data) - 1):
        session.write_bytes(data[:cut])
        with pytest.raises(StateError):
            other.load_state_file(session)
    assert refused == len(positions) >= 500
    session.write_bytes(data)
    other.load_state_file(session)
    assert other.n_tokens == meta["n_tokens"]


def test_a_session_of_another_model_is_refused(fresh: Any, tmp_path: Path) -> None:
    _, session = _saved(fresh, tmp_path)
    meta, payload = _parts(session.read_bytes())
    meta["n_params"] += 1
    session.write_bytes(_assemble(meta, payload))
    with pytest.raises(StateError, match="another model"):
        fresh().load_state_file(session)


def test_token_ids_outside_the_vocab_are_refused(fresh: Any, tmp_path: Path) -> None:
    """Even with a valid checksum (or none: a llama.cpp session), the restored tokens are checked."""
    llm, session = _saved(fresh, tmp_path)
    meta, payload = _parts(session.read_bytes())
    data = bytearray(payload)
    # llama.cpp session layout: magic u32, version u32, token count u32, then the int32 token ids.
    (n_tokens,) = struct.unpack_from("<I", data, 8)
    assert n_tokens == llm.n_tokens
    struct.pack_into("<i", data, 12 + 4, 10**8)
    other = fresh()
    session.write_bytes(_assemble(meta, bytes(data)))
    with pytest.raises(StateError, match="outside this model's vocab"):
        other.load_state_file(session)
    assert other.n_tokens == 0
    plain = tmp_path / "plain.session"
    plain.write_bytes(bytes(data))
    with pytest.warns(StateFileWarning), pytest.raises(StateError, match="outside this model's vocab"):
        other.load_state_file(plain)
    assert text_of(other(PROMPT, max_tokens=3, temperature=0))  # the context is usable afterwards


def test_saving_refuses_what_is_not_a_regular_file(fresh: Any, tmp_path: Path) -> None:
    """The issue's case: as root, saving to /dev/full turned the device node into a regular file."""
    llm = fresh()
    llm.eval(llm.tokenize(PROMPT.encode()))
    with pytest.raises(StateError, match="the path is empty"):
        llm.save_state_file("")
    with pytest.raises(TypeError, match="path"):
        llm.save_state_file(None)  # type: ignore[arg-type]
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(StateError, match="folder is a directory"):
        llm.save_state_file(folder)
    if os.geteuid() == 0:  # a node of our own, so a regression cannot replace the machine's /dev/full
        device = tmp_path / "full"
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    else:
        device = Path("/dev/full")
    with pytest.raises(StateError, match=f"{device}.*character device"):
        llm.save_state_file(device)
    assert stat.S_ISCHR(os.lstat(device).st_mode)
    with pytest.raises(StateError, match="/proc/version.*cannot create a file in /proc"):
        llm.save_state_file("/proc/version")
    assert Path("/proc/version").read_text().startswith("Linux")
    # Root ignores mode bits; sysfs refuses new files even to root.
    read_only = Path("/sys") if os.geteuid() == 0 else tmp_path / "read-only"
    if read_only != Path("/sys"):
        read_only.mkdir()
        read_only.chmod(0o555)
    with pytest.raises(StateError, match=f"{read_only}/s.bin: cannot create a file in {read_only}"):
        llm.save_state_file(read_only / "s.bin")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_a_symlink_is_followed_to_its_file_and_stays_a_link(fresh: Any, tmp_path: Path) -> None:
    llm = fresh()
    llm.eval(llm.tokenize(PROMPT.encode()))
    real = tmp_path / "real.bin"
    real.write_bytes(b"old content")
    real.chmod(0o640)
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    llm.save_state_file(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_bytes().startswith(FILE_MAGIC)
    assert stat.S_IMODE(real.stat().st_mode) == 0o640  # the overwritten file keeps its permissions
    other = fresh()
    other.load_state_file(link)
    assert other.input_ids.tolist() == llm.input_ids.tolist()
    dangling = tmp_path / "dangling.bin"
    dangling.symlink_to(tmp_path / "new.bin")
    llm.save_state_file(dangling)
    assert dangling.is_symlink() and (tmp_path / "new.bin").read_bytes().startswith(FILE_MAGIC)
    to_folder = tmp_path / "to-folder"
    to_folder.symlink_to(tmp_path)
    with pytest.raises(StateError, match="is a directory"):
        llm.save_state_file(to_folder)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(StateError, match="loop"):
        llm.save_state_file(loop)
    assert loop.is_symlink()


FIFO_CHILD = """
import os, sys, warnings
from llamarcp import Llama
from llamarcp.errors import StateError
folder = sys.argv[2]
fifo = os.path.join(folder, "fifo")
os.mkfifo(fifo)
llm = Llama(sys.argv[1], n_ctx=128, n_threads=1)
llm.eval(llm.tokenize(b"The quick brown fox"))
for call in (llm.save_state_file, llm.load_state_file):
    try:
        call(fifo)
    except StateError as exc:
        print(call.__name__, "refused:", exc)
for call, target in ((llm.load_state_file, folder), (llm.load_state_file, "/dev/null")):
    try:
        call(target)
    except StateError as exc:
        print(call.__name__, "refused:", exc)
import stat
print("still a fifo:", stat.S_ISFIFO(os.lstat(fifo).st_mode))
"""


def test_fifos_and_devices_are_refused_without_blocking(tiny_model_path: Path, tmp_path: Path) -> None:
    """In a child process: opening a FIFO the wrong way blocks forever, which must not hang the runner."""
    import sys

    from procs import run

    proc = run([sys.executable, "-c", FIFO_CHILD, tiny_model_path, tmp_path], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("save_state_file refused:") and "is a FIFO" in line for line in lines), lines
    assert any(line.startswith("load_state_file refused:") and "is a FIFO" in line for line in lines), lines
    assert any("is a directory" in line for line in lines), lines
    assert any("/dev/null is a character device" in line for line in lines), lines
    assert "still a fifo: True" in lines


def test_snapshot_with_bad_token_ids_is_refused(fresh: Any) -> None:
    llm = fresh()
    llm.eval(llm.tokenize(PROMPT.encode()))
    good = llm.save_state()
    with pytest.raises(StateError, match="outside"):
        llm.load_state(LlamaState([1, -5], good.llama_state, good.n_ctx, 0))
    with pytest.raises(TypeError):
        llm.load_state(b"not a state")  # type: ignore[arg-type]
    assert isinstance(StateError("x"), LlamaError)
