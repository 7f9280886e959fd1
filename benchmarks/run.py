"""Benchmark llamarcp against llama.cpp's llama-bench and llama-cpp-python, all on the same pinned libllama.

    python benchmarks/run.py            # full run: tiny + gemma models, writes RESULTS.md, results.png, results.json
    python benchmarks/run.py --smoke    # tiny model, one round, into benchmarks/.work/smoke/ (the test suite runs it)
    python benchmarks/run.py --prepare  # build llama-bench, install llama-cpp-python (ci/setup.sh runs it once)

The machine is shared and noisy, so every measurement is a round-robin: each round runs every contender on the
same test back to back (the order rotates every round), and ratios are taken within a round before the median.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contenders  # noqa: E402
import report  # noqa: E402
from contenders import ROOT, WORK_DIR, BenchmarkError, Toolchain, WorkerClient  # noqa: E402

PYTHON_CONTENDERS = {"llamarcp": "llamarcp", "llama-cpp-python": "llama_cpp"}

#: Completion prompts for tg; plain text (no chat template) so both libraries see identical tokens.
TG_PROMPTS = {
    "tiny": "Once upon a time",
    "gemma": "The history of the printing press begins in",
}
MODEL_LABELS = {"tiny": "tiny random llama (2M, F32)", "gemma": "gemma-3-270m Q4_K_M"}
#: Default model list per mode (key: smoke?). Both models also run on 1 thread: with 2 threads on 2 cores every
#: decode waits at thread barriers, and any other process on the machine stalls them (very noisy results).
DEFAULT_MODELS = {False: "tiny,tiny@1,gemma,gemma@1", True: "tiny"}


@dataclass(frozen=True)
class ModelSpec:
    key: str  # "tiny", "tiny@1", "gemma": the key in results["models"]
    base: str
    threads: int
    label: str

    @classmethod
    def parse(cls, text: str, default_threads: int) -> ModelSpec:
        base, _, threads_text = text.strip().partition("@")
        if base not in MODEL_LABELS:
            raise ValueError(f"unknown model {base!r} (choose from {', '.join(MODEL_LABELS)})")
        threads = int(threads_text) if threads_text else default_threads
        if threads < 1:
            raise ValueError(f"thread count must be >= 1 in {text!r}")
        label = f"{MODEL_LABELS[base]}, {threads} thread{'s' if threads > 1 else ''}"
        return cls(key=text.strip(), base=base, threads=threads, label=label)


# -- machine and models ------------------------------------------------------------------------------------
def physical_cores() -> int:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; os.cpu_count() where that is unavailable."""
    try:
        cores, phys = set(), "0"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                phys = value.strip()
            elif key.strip() == "core id":
                cores.add((phys, value.strip()))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


def machine_meta() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    ram_gb = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    commit = _git("rev-parse", "HEAD") or "unknown"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "ram_gb": ram_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        "git_dirty": dirty,
    }


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def tiny_model_path() -> Path:
    """The tests' tiny random model, written by tests/tiny_model.py into the same cache file the fixture uses."""
    spec = importlib.util.spec_from_file_location("_llamarcp_tiny_model", ROOT / "tests" / "tiny_model.py")
    assert spec is not None and spec.loader is not None
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    sys.path.insert(0, str(ROOT))
    import build_lib
    from llamarcp import _cache

    cached = _cache.cache_root() / "test-models" / f"{tiny.TINY_MODEL_VERSION}.gguf"
    if not cached.is_file():
        tiny.write_tiny_model(cached, Path(build_lib.ensure_source()) / "models" / tiny.VOCAB_FILE)
    return Path(cached)


def gemma_model_path() -> Path:
    sys.path.insert(0, str(ROOT))
    from llamarcp.models import default_model_path

    return Path(default_model_path())


# -- import and tool timings -------------------------------------------------------------------------------
def measure_imports(toolchain: Toolchain, lcp_python: Path | None, reps: int) -> dict[str, Any]:
    """Wall time of whole `python -c ...` processes, interleaved; each compared with its interpreter's bare start."""
    env = contenders.lib_env(toolchain)
    contenders.compile_bytecode()  # llama-cpp-python's venv got its .pyc files from pip
    snippets: list[tuple[str, str, str, Path, bool]] = [
        ("python -c pass", sys.executable, "pass", ROOT, True),
        ("from llamarcp import lib, ffi", sys.executable, "from llamarcp import lib, ffi", ROOT, False),
        ("from llamarcp import Llama", sys.executable, "from llamarcp import Llama", ROOT, False),
    ]
    if lcp_python is not None:
        snippets += [
            ("python -c pass (llama-cpp-python venv)", str(lcp_python), "pass", WORK_DIR, True),
            ("import llama_cpp", str(lcp_python), "import llama_cpp", WORK_DIR, False),
            ("from llama_cpp import Llama", str(lcp_python), "from llama_cpp import Llama", WORK_DIR, False),
        ]
    times: dict[str, list[float]] = {key: [] for key, *_ in snippets}
    cpu_times: dict[str, list[float]] = {key: [] for key, *_ in snippets}
    errors: dict[str, str] = {}
    for rep in range(reps + 1):  # round 0 warms the page cache and is dropped
        for key, python, code, cwd, _ in snippets:
            if key in errors:
                continue
            elapsed, cpu, rc, tail = contenders.time_process([python, "-c", code], env, cwd)
            if rc != 0:
                errors[key] = f"exit {rc}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"
            elif rep > 0:
                times[key].append(elapsed)
                cpu_times[key].append(cpu)
    out: dict[str, Any] = {}
    baseline_for = {sys.executable: "python -c pass", str(lcp_python): "python -c pass (llama-cpp-python venv)"}
    for key, python, _code, _cwd, is_baseline in snippets:
        interpreter = "system" if python == sys.executable else "llama-cpp-python venv"
        if key in errors:
            out[key] = {"interpreter": interpreter, "error": errors[key]}
            continue
        summary = report.summarize(times[key])
        cpu_ms = statistics.median(cpu_times[key]) * 1000
        cell: dict[str, Any] = {"interpreter": interpreter, "samples": times[key], "summary": summary}
        cell.update(baseline=is_baseline, cpu_ms=cpu_ms)
        base_key = baseline_for[python]
        if not is_baseline and times.get(base_key):
            # Paired: each run minus the bare start of the same round, then the median (noise hits both alike).
            pairs = zip(times[key], times[base_key])
            cell["over_bare_ms"] = statistics.median(a - b for a, b in pairs) * 1000
            cell["cpu_over_bare_ms"] = cpu_ms - statistics.median(cpu_times[base_key]) * 1000
        out[key] = cell
    return out


def codegen_import_time(runs: int) -> dict[str, Any]:
    """The codegen engineer's benchmarks/import_time.py (lib + ffi only), run as a cross-check of the table."""
    spec = importlib.util.spec_from_file_location("_import_time", Path(__file__).resolve().parent / "import_time.py")
    if spec is None or spec.loader is None:
        return {"error": "benchmarks/import_time.py not found"}
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return dict(module.measure(runs), command=module.IMPORT)
    except Exception as exc:  # recorded in the report rather than aborting the run
        return {"error": f"{type(exc).__name__}: {exc}"}


def measure_tools(toolchain: Toolchain, reps: int) -> dict[str, Any]:
    """Run times of the codegen staleness check and the drift symbol check (whatever of them exists)."""
    env = contenders.lib_env(toolchain)
    lib = str(toolchain.lib_dir / "libllama.so")
    commands = {
        "codegen/generate.py --check": [sys.executable, "codegen/generate.py", "--check"],
        "llamarcp.drift symbols": [sys.executable, "-m", "llamarcp.drift", "symbols", lib],
    }
    out: dict[str, Any] = {}
    for key, argv in commands.items():
        samples, error = [], None
        for _ in range(reps):
            elapsed, _cpu, rc, tail = contenders.time_process(argv, env, ROOT)
            if rc != 0:
                error = f"exit {rc}: {tail.strip()[-300:]}"
                break
            samples.append(elapsed)
        shown = " ".join(["python", *argv[1:]]).replace(lib, "<lib>/libllama.so")
        out[key] = (
            {"argv": shown, "error": error}
            if error
            else {"argv": shown, "samples": samples, "summary": report.summarize(samples)}
        )
    return out


# -- throughput ---------------------------------------------------------------------------------------------
class ThroughputRun:
    """Round-robin tg/pp measurements of llama-bench and the Python workers on one model."""

    def __init__(self, args: argparse.Namespace, toolchain: Toolchain, lcp_python: Path | None, log: Any) -> None:
        self.args, self.toolchain, self.lcp_python, self.log = args, toolchain, lcp_python, log
        self.threads: int = args.threads

    def run(self, spec: ModelSpec, model_path: Path) -> dict[str, Any]:
        args, model_key, self.threads = self.args, spec.base, spec.threads
        # Each test runs at llama-bench's context size for it (n_prompt + n_gen, padded to 256 by llama.cpp):
        # the KV cache size changes decode speed measurably (gemma pp512: n_ctx 512 vs 1024 is ~7 %).
        tests: dict[str, dict[str, Any]] = {"tg": {"n_prompt": 0, "n_gen": args.tg, "n_ctx": _ctx(args.tg + 64)}}
        for n in args.pp:
            tests[f"pp{n}"] = {"n_prompt": n, "n_gen": 0, "n_ctx": _ctx(n)}
        names = ["llama-bench", *self._python_contenders()]
        cells: dict[str, dict[str, dict[str, Any]]] = {
            t: {c: {"rounds": [], "errors": []} for c in names} for t in tests
        }
        result: dict[str, Any] = {"label": spec.label, "path": str(model_path), "threads": spec.threads}
        result.update(notes=[], settings=[])
        workers = self._start_workers(spec.key, model_path, result)
        try:
            for rnd in range(args.reps):
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                for test_key, test in tests.items():
                    for name in order:
                        value = self._measure(name, workers, model_key, model_path, test, rnd, result)
                        cell = cells[test_key][name]
                        if isinstance(value, str):
                            cell["rounds"].append(None)
                            cell["errors"].append(value)
                        else:
                            cell["rounds"].append(value)
                result.setdefault("load_per_round", []).append(_load_average().split()[0])
                self.log(f"  {spec.key} round {rnd + 1}/{args.reps} done (load {_load_average()})")
        finally:
            for worker in workers.values():
                if worker is not None:
                    worker.close()
        result["tests"] = {t: {c: _finish_cell(cell) for c, cell in by_c.items()} for t, by_c in cells.items()}
        self._check_same_text(result)
        return result

    def _python_contenders(self) -> list[str]:
        return ["llamarcp"] + (["llama-cpp-python"] if self.lcp_python is not None else [])

    def _start_workers(self, model_key: str, model_path: Path, result: dict[str, Any]) -> dict[str, Any]:
        env = contenders.lib_env(self.toolchain)
        workers: dict[str, Any] = {}
        result["load"] = {}
        for name in self._python_contenders():
            python = sys.executable if name == "llamarcp" else self.lcp_python
            assert python is not None
            stderr_path = WORK_DIR / "logs" / f"{model_key.replace('@', '-t')}-{name}.stderr"
            client = WorkerClient(PYTHON_CONTENDERS[name], python, env, stderr_path)
            try:
                reply = self._load(client, model_path)
                if reply["ok"]:  # warm up: one short pp (the first tg request adds an unstreamed reference run)
                    tokens = self._random_tokens(reply["n_vocab"], 32, seed=-1)
                    warm = client.request("pp", tokens=tokens, n_ctx=_ctx(self.args.tg + 64))
                    if not warm["ok"]:
                        reply = warm
            except BenchmarkError as exc:
                reply = {"ok": False, "error": str(exc)}
            if not reply["ok"]:
                result["notes"].append(f"{name} could not load the model or warm up: {reply['error']}")
                client.close()
                workers[name] = None
                continue
            libs = reply.pop("libraries")
            reply["libllama"] = libs.get("libllama", "not mapped")
            wanted = self.toolchain.lib_dir if name == "llamarcp" else self.toolchain.lcp_lib_dir
            reply["uses_pinned_library"] = Path(reply["libllama"]).parent == wanted
            if not reply["uses_pinned_library"]:
                result["notes"].append(f"{name} mapped {reply['libllama']}, not {wanted}")
            if reply["not_set"]:
                result["notes"].append(f"{name} Llama() does not accept {', '.join(reply['not_set'])} (left default)")
            result["load"][name] = reply
            workers[name] = client
        llamarcp_extra = result["load"].get("llamarcp", {}).get("extra_bufts")
        if llamarcp_extra is False:
            # llamarcp leaves repacking/AMX off on a build that offers AMX (llamarcp/_cpu.py): match it.
            result["repack"] = False
            result["settings"].append(
                "llamarcp loaded without extra buffer types (AMX build): llama-bench gets --repack 0"
            )
        return workers

    def _load(self, client: WorkerClient, model_path: Path) -> dict[str, Any]:
        return client.request(
            "load",
            model=str(model_path),
            n_ctx=_ctx(self.args.tg + 64),
            n_batch=self.args.n_batch,
            n_threads=self.threads,
            flash_attn=self.args.flash_attn,
            seed=1234,
            n_gpu_layers=self.args.n_gpu_layers,
        )

    def _random_tokens(self, n_vocab: int, n: int, seed: int) -> list[int]:
        rng = random.Random(seed * 7919 + n)
        return [rng.randrange(n_vocab) for _ in range(n)]

    def _measure(
        self,
        name: str,
        workers: dict[str, Any],
        model_key: str,
        model_path: Path,
        test: dict[str, Any],
        rnd: int,
        result: dict[str, Any],
    ) -> float | str:
        args = self.args
        if name == "llama-bench":
            try:
                out = contenders.run_llama_bench(
                    self.toolchain,
                    model_path,
                    n_prompt=test["n_prompt"],
                    n_gen=test["n_gen"],
                    threads=self.threads,
                    n_batch=args.n_batch,
                    flash_attn=args.flash_attn,
                    repack=result.get("repack", True),
                    n_gpu_layers=args.n_gpu_layers,
                )
            except BenchmarkError as exc:
                return str(exc)
            return float(out["tokens_per_s"])
        worker = workers.get(name)
        if worker is None:
            return "not loaded (see the notes)"
        try:
            if test["n_gen"]:
                reply = worker.request("tg", prompt=TG_PROMPTS[model_key], n_predict=test["n_gen"], n_ctx=test["n_ctx"])
            else:
                n_vocab = result["load"][name]["n_vocab"]
                tokens = self._random_tokens(n_vocab, test["n_prompt"], seed=rnd)
                reply = worker.request("pp", tokens=tokens, n_ctx=test["n_ctx"])
        except BenchmarkError as exc:  # the worker process died (e.g. a crash inside libllama)
            worker.close()
            workers[name] = None
            result["notes"].append(f"{name} worker died: {exc}")
            return str(exc)
        if not reply["ok"]:
            return reply["error"]
        if test["n_gen"]:
            result.setdefault("tg_runs", {}).setdefault(name, []).append(
                {k: reply[k] for k in ("n_tokens", "chunks", "first_chunk_s", "matches_unstreamed")}
            )
            result.setdefault("tg_text", {})[name] = reply["text"]
        return float(reply["tokens_per_s"])

    def _check_same_text(self, result: dict[str, Any]) -> None:
        texts = result.get("tg_text", {})
        if len(texts) == 2:
            # Bytes that are not valid UTF-8 become U+FFFD in llamarcp; llama-cpp-python drops them (errors="ignore").
            same = len({t.replace("\ufffd", "") for t in texts.values()}) == 1
            result["same_greedy_text"] = same
            result["replacement_chars"] = {name: t.count("\ufffd") for name, t in texts.items()}
            if not same:
                result["notes"].append("llamarcp and llama-cpp-python produced different greedy text")
        for name, runs in result.get("tg_runs", {}).items():
            counts = {r["n_tokens"] for r in runs}
            if any(not r["matches_unstreamed"] for r in runs):
                result["notes"].append(f"{name}: streamed text differs from the unstreamed greedy text")
            if max(counts) < self.args.tg:
                result["notes"].append(f"{name}: greedy generation stopped after {sorted(counts)} of {self.args.tg}")


def _same_library_note(results: dict[str, Any], toolchain: Toolchain) -> str:
    """Which libllama each worker mapped (read from /proc/self/maps), checked against the one it should run on."""
    loads = [m.get("load", {}) for m in results["models"].values()]
    mapped = {name: {str(load[name].get("libllama")) for load in loads if name in load} for name in PYTHON_CONTENDERS}
    wanted = {"llamarcp": toolchain.lib_dir, "llama-cpp-python": toolchain.lcp_lib_dir}
    ok = all(Path(m).parent == wanted[name] for name, libs in mapped.items() for m in libs)
    if not ok or not any(mapped.values()):
        return f"NOT VERIFIED: workers mapped { ({k: sorted(v) for k, v in mapped.items()}) }"
    if toolchain.lcp_lib_dir == toolchain.lib_dir:
        return (
            f"yes: every Python worker mapped {toolchain.lib_dir}/libllama.so; llama-bench comes from the same build "
            "tree and finds it through its RUNPATH"
        )
    return (
        f"llamarcp and llama-bench: {toolchain.lib_dir} (llama.cpp {toolchain.commit}); llama-cpp-python "
        f"{contenders.LCP_VERSION}: {toolchain.lcp_lib_dir}, the same flags on the llama.cpp its ctypes describe "
        f"({toolchain.lcp_commit[:12]}): on the pin's library its hand-written structs would misread the ABI"
    )


def _ctx(n_tokens: int) -> int:
    """The context size llama.cpp makes of a request for n_tokens (it pads n_ctx up to a multiple of 256)."""
    return max(256, -(-n_tokens // 256) * 256)


def _finish_cell(cell: dict[str, Any]) -> dict[str, Any]:
    samples = [v for v in cell["rounds"] if v is not None]
    out: dict[str, Any] = {"rounds": cell["rounds"]}
    if samples:
        out["summary"] = report.summarize(samples)
    if cell["errors"]:
        out["error"] = cell["errors"][0]
        out["n_errors"] = len(cell["errors"])
    return out


# -- main ---------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny model, one round, short runs (used by the tests)")
    p.add_argument(
        "--models",
        default=None,
        help="comma list of MODEL[@THREADS], MODEL in tiny,gemma; THREADS defaults to --threads "
        "(default: tiny,tiny@1,gemma,gemma@1; smoke: tiny)",
    )
    p.add_argument("--reps", type=int, default=None, help="rounds per test (default 7; smoke 1)")
    p.add_argument("--import-reps", type=int, default=None, help="runs per import snippet (default 20; smoke 2)")
    p.add_argument("--tg", type=int, default=None, help="tokens generated per tg run (default 128; smoke 32)")
    p.add_argument("--pp", default="128,512", help="prompt lengths for pp (default 128,512)")
    p.add_argument("--threads", type=int, default=physical_cores(), help="threads for every contender")
    p.add_argument("--n-batch", type=int, default=512)
    p.add_argument("--flash-attn", choices=("on", "off"), default="on")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers every contender offloads (-ngl; default 0)")
    p.add_argument(
        "--cmake-arg",
        action="append",
        default=[],
        help="extra CMake argument for the library build (repeatable; a separate cached build of the same pin)",
    )
    p.add_argument("--no-llama-cpp-python", action="store_true", help="skip the llama-cpp-python contender")
    p.add_argument(
        "--prepare",
        action="store_true",
        help="only build llama-bench and install llama-cpp-python into benchmarks/.work (ci/setup.sh runs this)",
    )
    p.add_argument(
        "--no-install",
        action="store_true",
        help="never build or pip-install anything; fail if --prepare has not run (the test suite uses this)",
    )
    p.add_argument("--skip-imports", action="store_true")
    p.add_argument("--skip-tools", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="output dir (default benchmarks/; smoke .work/smoke)")
    args = p.parse_args(argv)
    try:
        args.models = [ModelSpec.parse(m, args.threads) for m in (args.models or DEFAULT_MODELS[args.smoke]).split(",")]
    except ValueError as exc:
        p.error(str(exc))
    args.reps = args.reps or (1 if args.smoke else 7)
    args.import_reps = args.import_reps or (2 if args.smoke else 20)
    args.tg = args.tg or (32 if args.smoke else 128)
    args.pp = [int(x) for x in args.pp.split(",") if x]
    args.flash_attn = args.flash_attn == "on"
    args.out = args.out or (WORK_DIR / "smoke" if args.smoke else Path(__file__).resolve().parent)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    meta = machine_meta()
    meta.update(
        mode="smoke" if args.smoke else "full",
        reps=args.reps,
        threads=args.threads,
        n_batch=args.n_batch,
        flash_attn=args.flash_attn,
        n_gpu_layers=args.n_gpu_layers,
        load_before=_load_average(),
        command="python benchmarks/run.py" + (" " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else ""),
    )
    results: dict[str, Any] = {"meta": meta, "models": {}, "failures": []}

    if args.prepare:
        toolchain = contenders.ensure_toolchain(args.cmake_arg)
        log(f"llama-bench ready: {toolchain.llama_bench}")
        if not args.no_llama_cpp_python:
            log(f"llama-cpp-python ready: {contenders.ensure_llama_cpp_python(log)}")
        return 0

    toolchain = contenders.ensure_toolchain(
        args.cmake_arg, install=not args.no_install, with_lcp=not args.no_llama_cpp_python
    )
    meta["cmake_args"] = args.cmake_arg
    meta.update(
        lib_dir=str(toolchain.lib_dir),
        llama_cpp_commit=toolchain.commit,
        llama_bench=str(toolchain.llama_bench),
        llama_cpp_python_lib_dir=str(toolchain.lcp_lib_dir),
        llama_cpp_python_llama_cpp=toolchain.lcp_commit,
    )
    log(f"library {toolchain.lib_dir} (llama.cpp {toolchain.commit[:12]}), llama-bench built")

    lcp_python: Path | None = None
    if not args.no_llama_cpp_python:
        try:
            lcp_python = contenders.ensure_llama_cpp_python(log, install=not args.no_install)
            meta["llama_cpp_python_version"] = contenders.LCP_VERSION
        except BenchmarkError as exc:
            results["failures"].append(f"llama-cpp-python unavailable: {exc}")
            log(f"llama-cpp-python unavailable: {exc}")

    if not args.skip_imports:
        log(f"import times ({args.import_reps} interleaved runs each)")
        results["imports"] = measure_imports(toolchain, lcp_python, args.import_reps)
        results["import_time_script"] = codegen_import_time(args.import_reps)
    if not args.skip_tools:
        log("codegen / drift run times")
        results["tools"] = measure_tools(toolchain, 1 if args.smoke else 3)

    runner = ThroughputRun(args, toolchain, lcp_python, log)
    for spec in args.models:
        path = tiny_model_path() if spec.base == "tiny" else gemma_model_path()
        log(f"throughput on {spec.key} ({spec.threads} threads): {path}")
        results["models"][spec.key] = runner.run(spec, path)

    meta["load_after"] = _load_average()
    meta["finished_at"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta["wall_s"] = time.perf_counter() - started
    meta["same_library"] = _same_library_note(results, toolchain)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report.write_markdown(results, args.out / "RESULTS.md", "Benchmarks: llamarcp vs llama-bench vs llama-cpp-python")
    report.write_chart(results, args.out / "results.png")
    log(f"wrote {args.out / 'RESULTS.md'}, results.png, results.json")
    print(report.render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
