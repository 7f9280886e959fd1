"""build_lib.py: verification, cache keys, cache hits, --source builds and failure handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import build_lib
from llamarcp import _cache, _pin

ROOT = Path(__file__).resolve().parents[1]

FAKE_CMAKE = """\
cmake_minimum_required(VERSION 3.14)
project(fake_llama C)
set(CMAKE_LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
add_library(llama SHARED src/llama.c)
"""


def run_build_lib(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("CMAKE_ARGS", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "build_lib.py"), *args], capture_output=True, text=True, env=full_env
    )


@pytest.fixture
def fake_source(tmp_path: Path) -> Path:
    """A minimal tree shaped like llama.cpp whose `llama` target builds in about a second."""
    src = tmp_path / "fake-llama.cpp"
    (src / "include").mkdir(parents=True)
    (src / "src").mkdir()
    (src / "include" / "llama.h").write_text("int llama_fake_answer(void);\n")
    (src / "src" / "llama.c").write_text("int llama_fake_answer(void) { return 42; }\n")
    (src / "CMakeLists.txt").write_text(FAKE_CMAKE)
    return src


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLAMARCP_CACHE_DIR", str(cache))
    return cache


def test_sha256_mismatch_is_refused(cache_dir: Path) -> None:
    downloads = cache_dir / "downloads"
    downloads.mkdir(parents=True)
    (downloads / _pin.PINNED.filename).write_bytes(b"not the sdist")
    proc = run_build_lib("--print-source", env={"LLAMARCP_CACHE_DIR": str(cache_dir)})
    assert proc.returncode == 1
    assert "sha256 mismatch" in proc.stderr
    assert _pin.PINNED.sha256 in proc.stderr
    assert not (cache_dir / "src" / _pin.LLAMA_CPP_COMMIT).exists()


def test_verify_sha256_accepts_matching_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"llama")
    build_lib.verify_sha256(path, build_lib.sha256_of(path))
    with pytest.raises(build_lib.BuildError, match="sha256 mismatch"):
        build_lib.verify_sha256(path, "0" * 64)


@given(
    flags=st.lists(st.from_regex(r"-D[A-Z_]{1,12}=(ON|OFF|[0-9])", fullmatch=True), max_size=6, unique=True),
    extra=st.from_regex(r"-D[A-Z_]{1,12}=(ON|OFF)", fullmatch=True),
)
def test_cache_key_depends_on_flag_set_not_order(flags: list[str], extra: str) -> None:
    key = _cache.build_key("pinned:abc", flags)
    assert key == _cache.build_key("pinned:abc", list(reversed(flags)))
    if extra not in flags:
        assert key != _cache.build_key("pinned:abc", [*flags, extra])
    assert key != _cache.build_key("pinned:def", flags)


def test_backend_flags_and_cmake_args_env_change_the_key() -> None:
    base = build_lib.user_cmake_args([], [], env={})
    cuda = build_lib.user_cmake_args(["cuda"], [], env={})
    env_args = build_lib.user_cmake_args([], [], env={"CMAKE_ARGS": "-DGGML_CUDA=on -DX='a b'"})
    assert base == []
    assert cuda == ["-DGGML_CUDA=ON"]
    assert env_args == ["-DGGML_CUDA=on", "-DX=a b"]
    keys = {_cache.build_key("pinned:x", _cache.FIXED_CMAKE_ARGS + a) for a in (base, cuda, env_args)}
    assert len(keys) == 3


def test_source_build_then_cache_hit_then_rebuild_on_change(fake_source: Path, cache_dir: Path) -> None:
    env = {"LLAMARCP_CACHE_DIR": str(cache_dir)}
    first = run_build_lib("--source", str(fake_source), env=env)
    assert first.returncode == 0, first.stderr
    lib_dir = Path(first.stdout.strip().splitlines()[-1])
    assert (lib_dir / "libllama.so").is_file()
    stamp = json.loads((lib_dir / _cache.STAMP_NAME).read_text())
    assert stamp["source"] == str(fake_source.resolve())
    assert stamp["pinned"] is False
    built_at = (lib_dir / "libllama.so").stat().st_mtime_ns

    started = time.monotonic()
    second = run_build_lib("--source", str(fake_source), env=env)
    elapsed = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stderr
    assert "configuring" not in second.stderr
    assert elapsed < 2.0
    assert (lib_dir / "libllama.so").stat().st_mtime_ns == built_at

    flagged = run_build_lib("--source", str(fake_source), "--cmake-arg", "-DLLAMARCP_TEST_FLAG=1", env=env)
    assert flagged.returncode == 0, flagged.stderr
    assert Path(flagged.stdout.strip().splitlines()[-1]) != lib_dir

    (fake_source / "src" / "llama.c").write_text("int llama_fake_answer(void) { return 7; }\n")
    third = run_build_lib("--source", str(fake_source), env=env)
    assert third.returncode == 0, third.stderr
    assert "configuring" in third.stderr
    assert (lib_dir / "libllama.so").stat().st_mtime_ns != built_at


def test_failed_build_never_becomes_the_cache(fake_source: Path, cache_dir: Path) -> None:
    (fake_source / "src" / "llama.c").write_text("int llama_fake_answer(void) { return }\n")
    proc = run_build_lib("--source", str(fake_source), env={"LLAMARCP_CACHE_DIR": str(cache_dir)})
    assert proc.returncode == 1
    assert "build failed" in proc.stderr
    assert "log:" in proc.stderr
    assert not list(cache_dir.glob(f"builds/*/lib/{_cache.STAMP_NAME}"))
    assert not list(cache_dir.glob("builds/*/lib/libllama.so"))


def test_force_rebuilds(fake_source: Path, cache_dir: Path) -> None:
    env = {"LLAMARCP_CACHE_DIR": str(cache_dir)}
    assert run_build_lib("--source", str(fake_source), env=env).returncode == 0
    forced = run_build_lib("--source", str(fake_source), "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert "configuring" in forced.stderr


def test_source_that_is_not_llama_cpp_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    proc = run_build_lib("--source", str(tmp_path), env={"LLAMARCP_CACHE_DIR": str(cache_dir)})
    assert proc.returncode == 1
    assert "is not a llama.cpp tree" in proc.stderr


def test_missing_cmake_is_a_clear_error(fake_source: Path, cache_dir: Path, tmp_path: Path) -> None:
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    proc = run_build_lib(
        "--source", str(fake_source), env={"LLAMARCP_CACHE_DIR": str(cache_dir), "PATH": str(empty_bin)}
    )
    assert proc.returncode == 1
    assert "cmake not found" in proc.stderr


def test_unknown_flag_and_unknown_tool_are_rejected(cache_dir: Path) -> None:
    bad_flag = run_build_lib("--cudda")
    assert bad_flag.returncode == 2
    assert "unrecognized arguments: --cudda" in bad_flag.stderr
    bad_tool = run_build_lib("--tools", "llama-nonsense", env={"LLAMARCP_CACHE_DIR": str(cache_dir)})
    assert bad_tool.returncode == 1
    assert "unknown tool 'llama-nonsense'" in bad_tool.stderr


def test_pinned_build_is_cached_and_a_second_run_is_fast() -> None:
    """ci/setup.sh builds the pinned library before the tests; asking again must build nothing."""
    started = time.monotonic()
    proc = run_build_lib()
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stderr
    assert elapsed < 2.0
    lib_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert lib_dir == _cache.pinned_default_lib_dir()
    stamp = json.loads((lib_dir / _cache.STAMP_NAME).read_text())
    assert stamp["commit"] == _pin.LLAMA_CPP_COMMIT
    assert stamp["pinned"] is True


def test_cmake_error_message_quotes_what_is_wrong(tmp_path: Path) -> None:
    # CMake names the problem on the lines after "CMake Error at file:line (command):" (e.g. a CUDA toolkit
    # without cuBLAS); the one-line BuildError must carry them, not just the location.
    script = (
        "print('-- Found CUDAToolkit')\n"
        "print('CMake Error at ggml/src/ggml-cuda/CMakeLists.txt:178 (target_link_libraries):')\n"
        "print('  Target \"ggml-cuda\" links to:')\n"
        "print('')\n"
        "print('    CUDA::cublas')\n"
        "print('  but the target was not found.')\n"
        "print('-- Generating done')\n"
        "raise SystemExit(1)\n"
    )
    log = tmp_path / "build.log"
    with pytest.raises(build_lib.BuildError) as info:
        build_lib._run_logged([sys.executable, "-c", script], log, "configure")
    message = str(info.value)
    assert message.startswith("configure failed (exit 1): CMake Error at ggml/src/ggml-cuda/CMakeLists.txt:178")
    assert 'Target "ggml-cuda" links to: CUDA::cublas but the target was not found.' in message
    assert "Generating done" not in message
    assert info.value.log == log and "CUDA::cublas" in log.read_text()
