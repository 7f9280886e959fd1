"""`llama_cpp.llama_cpp` (llamarcp.compat.lowlevel): llama-cpp-python's ctypes log callback, typedef names and
C-string results over llamarcp's cffi library."""

from __future__ import annotations

import ctypes
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llamarcp import Llama
from llamarcp.compat import lowlevel
from llamarcp.errors import ModelLoadError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def restore_logging() -> Iterator[None]:
    yield
    lowlevel.llama_log_set(None)


def test_ctypes_log_callback_receives_the_lines_and_errors_are_still_quoted(
    tiny_model_path: Path, tmp_path: Path, restore_logging: None
) -> None:
    seen: list[tuple[int, bytes, int | None]] = []

    def on_log(level: int, text: bytes, user_data: int | None) -> None:
        seen.append((level, text, user_data))

    callback = lowlevel.llama_log_callback(on_log)
    lowlevel.llama_log_set(callback, ctypes.c_void_p(1234))
    Llama(str(tiny_model_path), n_ctx=64, n_threads=1).close()
    assert seen and all(isinstance(text, bytes) for _, text, _ in seen)
    assert {data for _, _, data in seen} == {1234}
    assert any(b"llama_model_loader" in text or b"load" in text for _, text, _ in seen)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_model_path.read_bytes()[:4096])
    with pytest.raises(ModelLoadError, match="could not load .*broken.gguf.*: .+"):  # llama.cpp's reason quoted
        Llama(str(broken))


def test_null_callback_goes_back_to_the_logger(
    tiny_model_path: Path, caplog: pytest.LogCaptureFixture, restore_logging: None
) -> None:
    lowlevel.llama_log_set(lowlevel.llama_log_callback(lambda *a: None), None)  # silences llama.cpp
    with caplog.at_level(logging.DEBUG, logger="llamarcp.llama_cpp"):
        Llama(str(tiny_model_path), n_ctx=64, n_threads=1).close()
    assert not [r for r in caplog.records if r.name == "llamarcp.llama_cpp"]
    lowlevel.llama_log_set(lowlevel.llama_log_callback(), None)  # a NULL function pointer: llamarcp's default
    with caplog.at_level(logging.DEBUG, logger="llamarcp.llama_cpp"):
        Llama(str(tiny_model_path), n_ctx=64, n_threads=1).close()
    assert [r for r in caplog.records if r.name == "llamarcp.llama_cpp"]


def test_a_raising_python_callback_never_reaches_c(tiny_model_path: Path, restore_logging: None) -> None:
    calls = []

    def boom(level: int, text: bytes, user_data: object) -> None:
        calls.append(level)
        raise RuntimeError("a bug in the user's callback")

    lowlevel.llama_log_set(boom)
    Llama(str(tiny_model_path), n_ctx=64, n_threads=1).close()
    assert calls
    with pytest.raises(TypeError, match="expects a log callback or None"):
        lowlevel.llama_log_set(42)


def test_typedef_names_build_token_arrays() -> None:
    tokens = (lowlevel.llama_token * 3)(1, 2, 3)
    assert list(tokens) == [1, 2, 3] and ctypes.sizeof(lowlevel.llama_pos) == ctypes.sizeof(lowlevel.llama_seq_id) == 4


def test_the_usual_silencing_snippet_through_the_installed_llama_cpp(tiny_model_path: Path) -> None:
    code = f"""
import ctypes, llamarcp
llamarcp.install_as_llama_cpp()
import llama_cpp
lines = []
def quiet(level, text, user_data):
    lines.append(text)
cb = llama_cpp.llama_log_callback(quiet)
llama_cpp.llama_log_set(cb, ctypes.c_void_p())
llm = llama_cpp.Llama(model_path={str(tiny_model_path)!r}, n_ctx=64, verbose=True)
print(len(lines) > 0, llm.create_completion("a", max_tokens=2)["object"])
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "text_completion"]
    assert "llama_model_loader" not in proc.stderr  # verbose=True would print them: the callback took them
