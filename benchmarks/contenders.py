"""The three contenders and the environment they share: one pinned libllama, llama-bench, a llama-cpp-python venv.

Everything here prepares or drives a process; the measuring loop lives in run.py and the report in report.py.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / ".work"
LCP_VENV = WORK_DIR / "venv-llama-cpp-python"
LCP_VERSION = "0.3.36"


class BenchmarkError(RuntimeError):
    """A benchmark step could not run; the message says which and why."""


# -- the shared library and llama-bench -------------------------------------------------------------------
@dataclass(frozen=True)
class Toolchain:
    lib_dir: Path  # the bindings' tree (the pin): llamarcp and llama-bench
    llama_bench: Path
    commit: str
    #: The library llama-cpp-python runs on: `lib_dir` when its ctypes describe the same llama.cpp, else a build
    #: (same flags) of the llama.cpp its release vendors: its hand-written structs would misread another ABI.
    lcp_lib_dir: Path
    lcp_commit: str


PREPARE_HINT = "run `bash ci/setup.sh` or `python benchmarks/run.py --prepare` first"


def ensure_toolchain(cmake_args: list[str] | None = None, install: bool = True, with_lcp: bool = True) -> Toolchain:
    """Build (or reuse from the cache) libllama plus llama-bench of the bindings' tree (the pin), via build_lib.py.

    With `install=False` (`--no-install`) nothing is built: a missing llama-bench is an error naming the fix.
    `with_lcp=False`: no library for llama-cpp-python (it is not benchmarked; its tree may not be fetchable).
    """
    extra = [f"--cmake-arg={arg}" for arg in cmake_args or []]
    no_build = [] if install else ["--no-build"]
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from codegen.generate import bindings_build_source
    from llamarcp._pin import KNOWN_CARRIERS

    tree = bindings_build_source()  # None: the pin; during a bump, the tree the bindings were regenerated from
    source = [] if tree is None else ["--source", str(tree)]
    lib_dir = _build_lib(["--tools", "llama-bench", *source, *no_build, *extra], install)
    bench = lib_dir.parent / "bin" / "llama-bench"
    if not bench.is_file():
        raise BenchmarkError(f"build_lib.py reported {lib_dir} but {bench} does not exist")
    commit = str(json.loads((lib_dir / "llamarcp-build.json").read_text())["commit"])
    lcp_commit = KNOWN_CARRIERS[LCP_VERSION].commit  # the llama.cpp llama-cpp-python's ctypes were written for
    lcp_lib_dir = lib_dir
    if lcp_commit != commit and with_lcp:
        lcp_tree = _build_lib(["--print-source", "--carrier", LCP_VERSION, *no_build], install)
        lcp_lib_dir = _build_lib(["--source", str(lcp_tree), *no_build, *extra], install)
    return Toolchain(lib_dir, bench, commit, lcp_lib_dir, lcp_commit)


def lcp_mtmd_lib_dir(install: bool = True) -> Path:
    """libllama + libmtmd of the llama.cpp llama-cpp-python 0.3.36 vendors (its `mtmd_cpp` ctypes describe that
    tree's mtmd.h), built with the default flags; reused from build_lib.py's cache."""
    from llamarcp._pin import KNOWN_CARRIERS

    no_build = [] if install else ["--no-build"]
    tree = _build_lib(["--print-source", "--carrier", LCP_VERSION, *no_build], install)
    lib_dir = _build_lib(["--source", str(tree), "--mtmd", *no_build], install)
    commit = str(json.loads((lib_dir / "llamarcp-build.json").read_text())["commit"])
    if not KNOWN_CARRIERS[LCP_VERSION].commit.startswith(commit) or not any(lib_dir.glob("libmtmd.*")):
        raise BenchmarkError(f"{lib_dir} is not a libmtmd build of llama-cpp-python {LCP_VERSION}'s llama.cpp")
    return lib_dir


def _build_lib(argv: list[str], install: bool) -> Path:
    """Run build_lib.py; the path it prints last."""
    proc = subprocess.run([sys.executable, str(ROOT / "build_lib.py"), *argv], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        hint = "" if install else f" ({PREPARE_HINT})"
        raise BenchmarkError(f"build_lib.py {' '.join(argv)} failed{hint}:\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1]).resolve()


def compile_bytecode() -> None:
    """Write llamarcp's .pyc files first, as `pip install` does: with PYTHONDONTWRITEBYTECODE set (some CI and
    container images set it) every timed import would otherwise compile the package from source again."""
    proc = subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "llamarcp")], capture_output=True)
    if proc.returncode != 0:
        raise BenchmarkError(f"compileall llamarcp failed: {proc.stdout.decode()[-500:]}{proc.stderr.decode()[-500:]}")


def lib_env(toolchain: Toolchain) -> dict[str, str]:
    """Environment that makes llamarcp load `lib_dir`'s libllama and llama-cpp-python `lcp_lib_dir`'s."""
    env = dict(os.environ)
    env["LLAMARCP_LIB_PATH"] = str(toolchain.lib_dir)
    env["LLAMA_CPP_LIB_PATH"] = str(toolchain.lcp_lib_dir)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# -- llama-cpp-python in its own venv, without its own llama.cpp -----------------------------------------
def lcp_python() -> Path:
    return LCP_VENV / "bin" / "python"


def ensure_llama_cpp_python(log: Any = print, install: bool = True) -> Path:
    """Create the venv and install llama-cpp-python with LLAMA_BUILD=OFF (no bundled libllama); reused later.

    With `install=False` (`--no-install`, what the test suite uses) a missing venv is an error naming the fix.
    """
    python = lcp_python()
    if python.exists() and _installed_lcp_version(python) == LCP_VERSION:
        return python
    if not install:
        raise BenchmarkError(f"llama-cpp-python=={LCP_VERSION} is not installed in {LCP_VENV}; {PREPARE_HINT}")
    log(f"installing llama-cpp-python=={LCP_VERSION} into {LCP_VENV} (LLAMA_BUILD=OFF: uses our libllama)")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(LCP_VENV)
    env = dict(os.environ, CMAKE_ARGS="-DLLAMA_BUILD=OFF")
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"llama-cpp-python=={LCP_VERSION}"],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise BenchmarkError(f"pip install llama-cpp-python=={LCP_VERSION} failed:\n{proc.stderr[-3000:]}")
    if _installed_lcp_version(python) != LCP_VERSION:
        raise BenchmarkError(f"llama-cpp-python {LCP_VERSION} not importable from {python} after install")
    return python


def _installed_lcp_version(python: Path) -> str | None:
    code = "from importlib.metadata import version; print(version('llama-cpp-python'))"
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


# -- persistent Python workers -----------------------------------------------------------------------------
class WorkerClient:
    """A bench_worker.py process for one implementation; `request` sends one op and waits for its reply."""

    def __init__(self, impl: str, python: Path | str, env: dict[str, str], stderr_path: Path) -> None:
        self.impl = impl
        self.stderr_path = stderr_path
        stderr_path.parent.mkdir(parents=True, exist_ok=True)
        self._stderr = stderr_path.open("w")
        self.proc = subprocess.Popen(
            [str(python), str(BENCH_DIR / "bench_worker.py"), impl],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
            cwd=str(WORK_DIR),  # not the repo root: the llama-cpp-python venv must not see ./llamarcp shadowing
        )

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise BenchmarkError(f"{self.impl} worker died: {self._stderr_tail()}") from None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise BenchmarkError(
                f"{self.impl} worker {describe_exit(self.proc.returncode)} during {op!r}: {self._stderr_tail()}"
            )
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.request("quit")
                self.proc.wait(timeout=30)
            except (BenchmarkError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()

    def _stderr_tail(self) -> str:
        self._stderr.flush()
        try:
            return self.stderr_path.read_text()[-2000:]
        except OSError:
            return "(no stderr)"


# -- llama-bench ------------------------------------------------------------------------------------------
def run_llama_bench(
    toolchain: Toolchain,
    model: Path,
    *,
    n_prompt: int,
    n_gen: int,
    threads: int,
    n_batch: int,
    flash_attn: bool,
    repack: bool = True,
    n_gpu_layers: int = 0,
) -> dict[str, Any]:
    """One llama-bench test (pp when n_gen == 0, tg when n_prompt == 0), one repetition after its own warmup."""
    cmd = [
        str(toolchain.llama_bench),
        "-m", str(model),
        "-p", str(n_prompt),
        "-n", str(n_gen),
        "-t", str(threads),
        "-b", str(n_batch),
        "-ub", str(n_batch),
        "-fa", "on" if flash_attn else "off",
        "--repack", "1" if repack else "0",
        "-ngl", str(n_gpu_layers),
        "-r", "1",
        "-o", "jsonl",
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchmarkError(f"llama-bench {describe_exit(proc.returncode)}: {' '.join(cmd)}\n{proc.stderr[-600:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    if len(rows) != 1:
        raise BenchmarkError(f"llama-bench printed {len(rows)} result rows, expected 1:\n{proc.stdout[-2000:]}")
    row = rows[0]
    return {
        "tokens_per_s": float(row["samples_ts"][0]),
        "build_commit": row.get("build_commit"),
        "n_threads": row.get("n_threads"),
        "wall_s": time.perf_counter() - started,
    }


def describe_exit(returncode: int | None) -> str:
    """'exited with code 2' or 'was killed by SIGILL' (a crash inside the C library shows up as a signal)."""
    if returncode is not None and returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            pass
    return f"exited with code {returncode}"


# -- whole-process timings ----------------------------------------------------------------------------------
def time_process(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int, str]:
    """Wall and CPU seconds of one process run to completion, its exit code and the tail of its output.

    CPU time (user + system of the child) is much steadier than wall time when other jobs share the cores.
    """
    cpu_before = _children_cpu()
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=str(cwd), capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    return elapsed, _children_cpu() - cpu_before, proc.returncode, (proc.stderr + proc.stdout)[-1500:]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
