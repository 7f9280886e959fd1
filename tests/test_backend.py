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
