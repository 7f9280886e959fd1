"""Backend init once per process (any thread) and llama.cpp's log routed to Python logging."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from llamarcp import _backend
from llamarcp.errors import ModelLoadError

ROOT = Path(__file__).resolve().parent.parent


def test_init_once_from_many_threads() -> None:
    results: list[object] = []
    barrier = threading.Barrier(8)

    def init() -> None:
        barrier.wait()
        results.append(_backend.ensure_backend())

    threads = [threading.Thread(target=init) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r is results[0] for r in results)
    assert _backend.get_lib() is results[0]


def test_log_lines_reach_logging(tiny_model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from llamarcp import Llama

    with caplog.at_level(logging.DEBUG, logger="llamarcp.llama_cpp"):
        Llama(str(tiny_model_path), n_ctx=64, n_threads=1).close()
    messages = [r.getMessage() for r in caplog.records if r.name == "llamarcp.llama_cpp"]
    assert any("llama" in m for m in messages)
    assert all(not m.endswith("\n") and m for m in messages)  # whole lines, no empty records


def test_load_error_quotes_llama_cpp(tiny_model_path: Path, tmp_path: Path) -> None:
    from llamarcp import Llama

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_model_path.read_bytes()[:4096])
    with pytest.raises(ModelLoadError, match="could not load .*: .+"):
        Llama(str(broken))


def test_quiet_by_default_and_verbose_prints(tiny_model_path: Path) -> None:
    code = (
        "import sys; from llamarcp import Llama; "
        f"Llama({str(tiny_model_path)!r}, n_ctx=64, n_threads=1, verbose=len(sys.argv) > 1).close()"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    loud = subprocess.run([sys.executable, "-c", code, "v"], capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 0 and loud.returncode == 0
    assert quiet.stderr == "" and quiet.stdout == ""
    assert "llama_model_loader" in loud.stderr or "load" in loud.stderr


def test_capture_log_sees_only_its_own_threads_lines() -> None:
    """Two threads logging at once (through the real callback) each capture only their own lines."""
    _backend.ensure_backend()
    lib = _backend.get_lib()
    barrier = threading.Barrier(2)
    seen: dict[str, list[str]] = {}

    def worker(name: str) -> None:
        with _backend.capture_log() as log:
            barrier.wait()
            for i in range(50):
                _backend._on_log(lib.GGML_LOG_LEVEL_ERROR, _c_text(f"{name} failed {i}\n"), None)
                # A message in two parts: the continuation belongs to this thread's message.
                _backend._on_log(lib.GGML_LOG_LEVEL_WARN, _c_text(f"{name} part "), None)
                _backend._on_log(lib.GGML_LOG_LEVEL_CONT, _c_text(f"two {i}\n"), None)
        seen[name] = log.lines

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("alpha", "beta")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, other in (("alpha", "beta"), ("beta", "alpha")):
        assert len(seen[name]) == 100
        assert all(line.startswith(name) and other not in line for line in seen[name])
        assert f"{name} part two 49" in seen[name]


def test_capture_log_reason_and_nesting() -> None:
    lib = _backend.ensure_backend()
    with _backend.capture_log() as outer:
        assert outer.reason() == ""
        with _backend.capture_log() as inner:
            _backend._on_log(lib.GGML_LOG_LEVEL_ERROR, _c_text("first\n"), None)
        _backend._on_log(lib.GGML_LOG_LEVEL_INFO, _c_text("not a warning\n"), None)
        _backend._on_log(lib.GGML_LOG_LEVEL_WARN, _c_text("second\n"), None)
    assert inner.lines == ["first"]
    assert outer.lines == ["first", "second"]
    assert outer.reason() == ": first | second" and outer.reason(1) == ": second"
    assert "second" in _backend.last_log_errors()
    assert _backend._captures.get(threading.get_ident()) is None  # nothing left behind


def test_concurrent_model_loads_quote_their_own_reason(tmp_path: Path) -> None:
    """Broken GGUF files loaded from two threads at once: each error names its own file's problem."""
    from llamarcp import Llama

    files = {}
    for name in ("left", "right"):
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)  # GGUF v3 with nonsense counts
        files[name] = path
    barrier = threading.Barrier(2)
    errors: dict[str, str] = {}

    def load(name: str) -> None:
        barrier.wait()
        for _ in range(5):
            try:
                Llama(str(files[name]), n_ctx=64, n_threads=1)
            except ModelLoadError as exc:
                errors[name] = str(exc)

    threads = [threading.Thread(target=load, args=(n,)) for n in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(errors) == {"left", "right"}
    assert "right.gguf" not in errors["left"] and "left.gguf" not in errors["right"]


def _c_text(text: str) -> object:
    from llamarcp._ffi import ffi

    return ffi.new("char[]", text.encode())
