"""llama-server's slot routes: `GET /slots`, `POST /slots/{id}?action=save|restore|erase` with `--slot-save-path`.

A saved slot restored (in the same server after an erase, and in a fresh server process) continues bit-exactly:
the same greedy tokens with the same log-probabilities as the request that ran on the original cache. Slot files
are `llamarcp.state`'s checked container: a flipped bit, a cut file or a file of another model is a 400 naming
the problem and the server keeps serving; llama.cpp's bare sequence files (llama-server's) are written on request
and read too. File names are confined to the slot directory (`../`, absolute paths, symlinks, directories).
"""

from __future__ import annotations

import concurrent.futures
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server import LONG, Server, _error, start_server
from test_server_metrics import scrape

from llamarcp.state import FILE_MAGIC

KEY = "slots-key"
PROMPT = "Once upon a time, in a land of slots and caches, a request arrived and asked for its prefix."


@pytest.fixture(scope="module")
def slot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slot-files")


def _args(model: Path, slot_dir: Path) -> tuple[str, ...]:
    return (
        "--model",
        str(model),
        "--alias",
        "tiny",
        "-t",
        "1",
        "-c",
        "1024",
        "-np",
        "2",
        "--slot-save-path",
        str(slot_dir),
    )


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, slot_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("slots")
    yield from start_server(tmp, *_args(tiny_model_path, slot_dir), "--metrics", api_key=KEY)


def complete(server: Server, slot: int) -> dict[str, Any]:
    body = {
        "prompt": PROMPT,
        "max_tokens": 16,
        "temperature": 0,
        "logprobs": 3,
        "ignore_eos": True,
        "id_slot": slot,
    }
    response = server.post("/v1/completions", body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return {"text": choice["text"], "logprobs": choice["logprobs"]}


def slot_action(server: Server, slot: Any, action: str, filename: Any = None, **extra: Any) -> httpx.Response:
    body = {} if filename is None else {"filename": filename}
    body.update(extra)
    return httpx.post(f"{server.url}/slots/{slot}?action={action}", json=body, headers=server.headers(), timeout=60)


def slots(server: Server) -> list[dict[str, Any]]:
    response = httpx.get(server.url + "/slots", headers=server.headers(), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_slots_state(server: Server) -> None:
    states = slots(server)
    assert [s["id"] for s in states] == [0, 1]
    assert all(s["n_ctx"] == 1024 and s["is_processing"] is False for s in states)
    complete(server, 1)
    assert slots(server)[1]["n_tokens"] > 16  # id_slot placed the request in slot 1


def test_save_erase_restore_continues_bit_exactly(
    server: Server, slot_dir: Path, tiny_model_path: Path, tmp_path: Path
) -> None:
    complete(server, 0)
    n_cached = slots(server)[0]["n_tokens"]
    saved = slot_action(server, 0, "save", "story.bin")
    assert saved.status_code == 200, saved.text
    assert saved.json()["n_saved"] == n_cached and saved.json()["id_slot"] == 0
    raw = (slot_dir / "story.bin").read_bytes()
    assert saved.json()["n_written"] == len(raw) and saved.json()["format"] == "llamarcp"
    assert raw.startswith(FILE_MAGIC)  # llamarcp.state's checked container...
    bare = slot_action(server, 0, "save", "story-llama-cpp.bin", format="llama.cpp")
    assert bare.status_code == 200 and bare.json()["format"] == "llama.cpp", bare.text
    bare_raw = (slot_dir / "story-llama-cpp.bin").read_bytes()
    assert struct.unpack_from("<III", bare_raw) == (0x67677371, 4, n_cached)  # llama.cpp's sequence file header
    assert raw.endswith(bare_raw)  # ...around exactly the file llama.cpp (and llama-server) writes
    expected = complete(server, 0)  # runs on the cache that was saved

    erased = slot_action(server, 0, "erase")
    assert erased.json() == {"id_slot": 0, "n_erased": slots(server)[0]["n_tokens"] or erased.json()["n_erased"]}
    assert slots(server)[0]["n_tokens"] == 0
    restored = slot_action(server, 0, "restore", "story.bin")
    assert restored.status_code == 200, restored.text
    assert restored.json()["n_restored"] == n_cached and restored.json()["n_read"] == len(raw)
    assert restored.json()["format"] == "llamarcp"
    assert slots(server)[0]["n_tokens"] == n_cached
    before = scrape(server)
    assert complete(server, 0) == expected
    after = scrape(server)
    reused = after["llamacpp:prompt_tokens_cached_total"] - before["llamacpp:prompt_tokens_cached_total"]
    assert reused >= len(PROMPT.split())  # the prompt came from the restored cache, not a new prefill

    # A fresh server process restores the file into its slot 1 and continues the same way; so does the bare
    # llama.cpp file (the format llama-server writes), into the other slot.
    for fresh in start_server(tmp_path, *_args(tiny_model_path, slot_dir), api_key=KEY):
        fresh_restore = slot_action(fresh, 1, "restore", "story.bin")
        assert fresh_restore.status_code == 200, fresh_restore.text
        assert fresh_restore.json()["n_restored"] == n_cached
        assert complete(fresh, 1) == expected
        from_bare = slot_action(fresh, 0, "restore", "story-llama-cpp.bin")
        assert from_bare.status_code == 200 and from_bare.json()["format"] == "llama.cpp", from_bare.text
        assert from_bare.json()["n_read"] == len(bare_raw)
        assert complete(fresh, 0) == expected


def _rewrap(raw: bytes, **meta_changes: Any) -> bytes:
    """A checked slot file with its metadata changed and its checksum made to match again (a file another
    model wrote, or one of another kind)."""
    import hashlib
    import json

    fixed = len(FILE_MAGIC) + 8
    meta_size = struct.unpack_from("<I", raw, len(FILE_MAGIC) + 4)[0]
    meta_start = fixed + 32
    meta = json.loads(raw[meta_start : meta_start + meta_size])
    meta.update(meta_changes)
    meta = {k: v for k, v in meta.items() if v is not None}
    meta_bytes = json.dumps(meta).encode()
    head = FILE_MAGIC + struct.pack("<II", 1, len(meta_bytes))
    body = meta_bytes + raw[meta_start + meta_size :]
    return head + hashlib.sha256(head + body).digest() + body


def test_damaged_slot_files_are_refused(server: Server, slot_dir: Path) -> None:
    complete(server, 0)
    assert slot_action(server, 0, "save", "good.bin").status_code == 200
    raw = (slot_dir / "good.bin").read_bytes()
    n_cached = slots(server)[0]["n_tokens"]
    meta_end = len(FILE_MAGIC) + 8 + 32 + struct.unpack_from("<I", raw, len(FILE_MAGIC) + 4)[0]
    damaged: dict[str, tuple[bytes, str]] = {}
    # One flipped bit anywhere: in the header, the checksum, the metadata, the token ids, the KV state.
    for where in (len(FILE_MAGIC) + 9, len(FILE_MAGIC) + 20, meta_end - 3, meta_end + 14, len(raw) // 2, len(raw) - 1):
        flipped = bytearray(raw)
        flipped[where] ^= 0x10
        damaged[f"flip-{where}.bin"] = (bytes(flipped), "corrupt")
    for cut in (len(raw) - 1, len(raw) // 2, meta_end, 30, 9):
        damaged[f"cut-{cut}.bin"] = (raw[:cut], "corrupt" if cut > 16 else "truncated")
    damaged["other-model.bin"] = (_rewrap(raw, n_params=123), "belongs to another model")
    damaged["other-vocab.bin"] = (_rewrap(raw, n_vocab=7), "belongs to another model")
    damaged["session.bin"] = (_rewrap(raw, kind=None), "not a sequence state")
    for name, (data, why) in damaged.items():
        (slot_dir / name).write_bytes(data)
        error = _error(slot_action(server, 1, "restore", name), 400)
        assert error["code"] == "invalid_slot_file" and error["param"] == "filename", (name, error)
        assert why in error["message"] and name in error["message"], (name, error)
    assert slots(server)[0]["n_tokens"] == n_cached  # refused files touch no slot
    restored = slot_action(server, 1, "restore", "good.bin")  # the undamaged file still restores
    assert restored.status_code == 200 and restored.json()["n_restored"] == n_cached, restored.text
    assert _error(slot_action(server, 0, "restore", "good.bin", format="llama.cpp"), 400)["param"] == "format"
    assert _error(slot_action(server, 0, "save", "x.bin", format="gguf"), 400)["param"] == "format"
    complete(server, 0)  # and the server keeps serving


@pytest.mark.parametrize(
    "filename", ["../escape.bin", "/tmp/abs.bin", "a/b.bin", "..", ".hidden", "", "x\x00y", "n" * 300, 5, "a\\b"]
)
def test_file_names_are_confined(server: Server, filename: Any) -> None:
    error = _error(slot_action(server, 0, "save", filename), 400)
    assert error["param"] == "filename"


def test_symlinks_directories_and_bad_files_are_refused(server: Server, slot_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    (slot_dir / "link.bin").symlink_to(outside)
    assert "symlink" in _error(slot_action(server, 0, "save", "link.bin"), 400)["message"]
    assert outside.read_bytes() == b"precious" and (slot_dir / "link.bin").is_symlink()
    assert _error(slot_action(server, 0, "restore", "link.bin"), 400)["code"] == "invalid_slot_file"
    (slot_dir / "folder").mkdir()
    assert _error(slot_action(server, 0, "save", "folder"), 400)["param"] == "filename"
    assert _error(slot_action(server, 0, "restore", "folder"), 400)["param"] == "filename"
    assert _error(slot_action(server, 0, "restore", "missing.bin"), 404)["param"] == "filename"
    n_cached = slots(server)[0]["n_tokens"]
    (slot_dir / "garbage.bin").write_bytes(os.urandom(4096))
    assert _error(slot_action(server, 0, "restore", "garbage.bin"), 400)["code"] == "invalid_slot_file"
    header = struct.pack("<III", 0x67677371, 4, 3) + struct.pack("<3i", 1, 2, 10**9)
    (slot_dir / "bad-token.bin").write_bytes(header + b"\0" * 64)
    assert "outside the vocab" in _error(slot_action(server, 0, "restore", "bad-token.bin"), 400)["message"]
    (slot_dir / "truncated.bin").write_bytes(struct.pack("<III", 0x67677371, 4, 2) + struct.pack("<2i", 1, 2))
    assert _error(slot_action(server, 0, "restore", "truncated.bin"), 400)["code"] == "invalid_slot_file"
    assert slots(server)[0]["n_tokens"] == n_cached  # files refused before llama.cpp reads them touch no slot
    complete(server, 0)  # and the server keeps serving


def test_busy_slot_and_bad_actions(server: Server) -> None:
    body = {"prompt": "busy", "max_tokens": LONG, "ignore_eos": True, "id_slot": 1, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=server.headers(), timeout=60) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        assert slots(server)[1]["is_processing"] is True
        assert _error(slot_action(server, 1, "save", "busy.bin"), 409)["code"] == "slot_busy"
        assert _error(slot_action(server, 1, "erase"), 409)["code"] == "slot_busy"
    server.wait_idle()
    assert _error(slot_action(server, 0, "explode", "x.bin"), 400)["param"] == "action"
    assert _error(slot_action(server, 2, "erase"), 400)["param"] == "id_slot"
    assert _error(slot_action(server, -1, "erase"), 400)["param"] == "id_slot"
    assert slot_action(server, "abc", "erase").status_code == 400
    assert _error(server.post("/v1/completions", {"prompt": "x", "id_slot": 7}), 400)["param"] == "id_slot"
    no_key = httpx.post(server.url + "/slots/0?action=erase", timeout=10)
    assert _error(no_key, 401)["code"] == "invalid_api_key"
    assert _error(httpx.get(server.url + "/slots", timeout=10), 401)["code"] == "invalid_api_key"


def test_kv_unified_server(tiny_model_path: Path, tmp_path: Path) -> None:
    args = ("--model", str(tiny_model_path), "-t", "1", "-c", "256", "-np", "3", "--kv-unified")
    servers = start_server(tmp_path, *args)
    unified = next(servers)
    try:
        health = unified.health()["slots"]
        assert health["kv_cells"] == 256 and health["kv_cache_mib"] > 0
        props = httpx.get(unified.url + "/props", timeout=10).json()
        assert props["kv_unified"] is True and props["kv_cells"] == 256 and props["total_slots"] == 3
        assert props["kv_cache_mib"] == health["kv_cache_mib"]
        body = {"prompt": PROMPT, "max_tokens": 120, "temperature": 0, "ignore_eos": True}
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: unified.post("/v1/completions", body).json(), range(3)))
        counts = [a["usage"]["completion_tokens"] for a in answers]
        assert all(a["choices"][0]["finish_reason"] == "length" for a in answers)
        assert max(counts) == 120 and min(counts) < 120  # 3 x ~140 cells do not fit in 256: one ended early
    finally:
        servers.close()
