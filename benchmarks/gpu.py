"""The GPU check: build libllama with CUDA, run the `gpu` tests and the benchmarks on a lent GPU machine, in one call.

    bash ci/gpu_check.sh --prepare          # HERE, once: stage .gpu-carry/ (wheels, llama.cpp tree, model pieces)
    bash ci/gpu_check.sh --stash            # THERE, for each extra model piece (optional calls before the run)
    bash ci/gpu_check.sh                    # THERE: the check; writes its report into $OUT
    bash ci/gpu_check.sh --dry-run          # HERE: every step but the CUDA ones, on the CPU build (tests use it)

The device machine has Python 3.12 with numpy, nvcc, CMake and ninja, but no network, and a call carries at most
64 MiB. So `--prepare` stages what the run needs in `.gpu-carry/` (git-ignored, named in the call's `carry`):
`base/` (wheels for CPython 3.12 manylinux x86_64, the pinned llama.cpp tree as a tar.gz, the manifest) and the
model cut into pieces `model-0/` ... `model-N/`; it prints the exact device calls. gemma-3-270m (253 MB) does not
fit one call: `model-0` rides with the run, the other pieces come first, one `--stash` call each, within the
machine's warm window; the first of them carries base/ too and starts the build in the background (its own
session outlives the call), so it compiles while the rest travels. Without every piece the run falls back to the
tests' tiny random model and says so.

Every step is timed and bounded; a failing step is reported and the later steps that need it are marked "not run",
the others still run. The whole run keeps inside `--budget` seconds (default 480: 8 minutes of a 10-minute call).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

#: The device's Python: wheels are fetched for it.
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
#: On the device image already (and large): not carried, reached through the venv's .pth to the image's packages.
DEVICE_PROVIDES = ("numpy", "matplotlib")
#: What the run needs beyond pyproject's `dependencies` and `server` extra (names from the `test` extra).
TEST_NEEDS = ("pytest", "gguf")
#: Modules the run imports: checked right after the venv is made, so a missing wheel is named there.
IMPORT_CHECK = ("cffi", "jinja2", "fastapi", "uvicorn", "sse_starlette", "yaml", "pytest", "gguf", "numpy")

#: The CUDA build: Hopper only, default flash-attention kernel set (no GGML_CUDA_FA_ALL_QUANTS), to keep it short.
CUDA_CMAKE_ARGS = ("-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90", "-DGGML_CUDA_FA_ALL_QUANTS=OFF")
TOOLS = "llama-bench,llama-server"

CARRY_DIR = ROOT / ".gpu-carry"
STASH_DIR = Path("/tmp/llamarcp-gpu-stash")  # on the device: outlives one call while the machine stays warm
#: One call's working tree is at most 64 MiB; a piece leaves room for the repository and this margin.
CALL_LIMIT = 64 << 20
MARGIN = 4 << 20

#: Step -> (most seconds it may take on the device, in the rehearsal).
LIMITS = {
    "machine": (30, 30),
    "stage": (60, 60),
    "venv": (90, 60),
    "model": (60, 60),
    "build": (330, 60),
    "pytest": (150, 120),
    "bench-run": (90, 120),
    "bench-serving": (120, 120),
}
REPORT_RESERVE = 10  # seconds kept for writing the report


def tiny_model_module() -> Any:
    """tests/tiny_model.py, loaded by path (tests/ is no package; an installed `tests` package must not win)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_llamarcp_tiny_model", ROOT / "tests" / "tiny_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def say(msg: str) -> None:
    print(f"gpu_check: {msg}", file=sys.stderr, flush=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _toml_project() -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def requirements() -> list[str]:
    """The requirement specifiers the device run installs: runtime, server, and the test tools it uses."""
    project = _toml_project()
    extras = project["optional-dependencies"]
    wanted = list(project["dependencies"]) + list(extras["server"])
    by_name = {re.split(r"[<>=!~ \[;]", spec, maxsplit=1)[0].lower(): spec for spec in extras["test"]}
    wanted += [by_name[name] for name in TEST_NEEDS]
    return sorted(dict.fromkeys(wanted))


def _req_name(spec: str) -> str:
    """'sse-starlette>=2.0' -> 'sse-starlette' (normalized as wheel names are)."""
    return re.split(r"[<>=!~ \[;]", spec, maxsplit=1)[0].strip().lower().replace("_", "-").replace(".", "-")


def _wheel_name(wheel: str) -> str:
    """'sse_starlette-3.7.1-py3-none-any.whl' -> 'sse-starlette'."""
    return wheel.split("-", 1)[0].lower().replace("_", "-").replace(".", "-")


# ------------------------------------------------------------------------------------------------ prepare


def repo_bytes() -> int:
    """Bytes of what every call sends: tracked plus untracked, not ignored files of this checkout."""
    proc = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    total = 0
    for name in proc.stdout.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def download_wheels(dest: Path) -> list[str]:
    """pip download of the requirements' closure as CPython 3.12 manylinux x86_64 wheels; the image's own
    packages (DEVICE_PROVIDES) are dropped again. Returns the wheel file names."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "-d", str(dest)]
    cmd += ["--only-binary", ":all:", "--python-version", DEVICE_PYTHON, "--implementation", "cp"]
    for plat in DEVICE_PLATFORMS:
        cmd += ["--platform", plat]
    proc = subprocess.run([*cmd, *requirements()], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"gpu_check: pip download failed:\n{proc.stderr[-3000:]}")
    for wheel in dest.glob("*.whl"):
        if _wheel_name(wheel.name) in DEVICE_PROVIDES:
            wheel.unlink()
    return sorted(w.name for w in dest.glob("*.whl"))


def pack_source(dest: Path) -> dict[str, Any]:
    """The pinned tree's build paths (what an sdist carries) and the tests' two vocab files, as one tar.gz."""
    import build_lib
    from llamarcp import _pin

    tiny_model = tiny_model_module()

    src = build_lib.pinned_source()
    archive = dest / f"llama.cpp-{_pin.LLAMA_CPP_COMMIT}.tar.gz"
    extra = [f"models/{tiny_model.VOCAB_FILE}", f"models/{tiny_model.BERT_VOCAB_FILE}"]
    with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
        for name in [*_pin.TREE_PATHS, *extra]:
            if (src / name).exists():
                tar.add(src / name, arcname=name)
    return {
        "file": archive.name,
        "commit": _pin.LLAMA_CPP_COMMIT,
        "tree_sha256": _pin.TREE_SHA256,
        "bytes": archive.stat().st_size,
        "vocab_files": extra,
    }


def model_source(kind: str) -> Path:
    if kind == "gemma":
        from llamarcp.models import default_model_path

        return Path(default_model_path())
    from llamarcp import _cache

    tiny_model = tiny_model_module()

    path = _cache.cache_root() / "test-models" / f"{tiny_model.TINY_MODEL_VERSION}.gguf"
    if not path.is_file():
        import build_lib

        tiny_model.write_tiny_model(path, build_lib.ensure_source() / "models" / tiny_model.VOCAB_FILE)
    return path


def cut_model(model: Path, carry: Path, first: int, rest: int) -> list[dict[str, Any]]:
    """Cut `model` into pieces: model-0 (rides with the run) and model-1 (with the first stash call) of `first`
    bytes, as each shares its call with base/, then model-2.. of `rest` bytes."""
    size = model.stat().st_size
    sizes: list[int] = []
    while sum(sizes) < size or not sizes:
        sizes.append(min(first if len(sizes) < 2 else rest, size - sum(sizes)))
    pieces: list[dict[str, Any]] = []
    with model.open("rb") as fh:
        for index, n in enumerate(sizes):
            block = fh.read(n)
            folder = carry / f"model-{index}"
            folder.mkdir(parents=True)
            part = folder / f"{model.name}.part{index}"
            part.write_bytes(block)
            piece = {"index": index, "of": len(sizes), "dir": folder.name, "file": part.name, "bytes": len(block)}
            piece["sha256"] = hashlib.sha256(block).hexdigest()
            (folder / "piece.json").write_text(json.dumps(piece) + "\n")
            pieces.append(piece)
    return pieces


def prepare(args: argparse.Namespace) -> int:
    carry: Path = args.carry
    started = time.monotonic()
    if carry.exists():
        shutil.rmtree(carry)
    base = carry / "base"
    base.mkdir(parents=True)
    manifest: dict[str, Any] = {
        "prepared_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": _git("rev-parse", "HEAD"),
        "requirements": requirements(),
        "device_provides": list(DEVICE_PROVIDES),
    }
    if args.no_wheels:
        manifest["wheels"] = None
        say("no wheels (--no-wheels): the run on a device could not set up its venv from this carry")
    else:
        say(f"downloading wheels for CPython {DEVICE_PYTHON} manylinux x86_64")
        manifest["wheels"] = download_wheels(base / "wheels")
    say("packing the pinned llama.cpp tree")
    manifest["source"] = pack_source(base)
    base_bytes = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
    repo = repo_bytes()
    rest = CALL_LIMIT - repo - MARGIN
    first = rest - base_bytes - (64 << 10)  # model-0 and model-1 travel with base/ (the manifest comes later)
    if first <= 0:
        raise SystemExit(f"gpu_check: the repository ({repo} B) and base/ ({base_bytes} B) leave no room for a model")
    model = model_source(args.model)
    say(f"cutting {model.name} ({model.stat().st_size} B) into pieces")
    manifest["model"] = {
        "kind": args.model,
        "name": model.name,
        "bytes": model.stat().st_size,
        "sha256": sha256_of(model),
        "pieces": cut_model(model, carry, min(first, args.piece_bytes or first), min(rest, args.piece_bytes or rest)),
        "with_base": ["model-0", "model-1"],
    }
    (base / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    sizes = {
        "repository (every call)": repo,
        "base/ (the run)": sum(p.stat().st_size for p in base.rglob("*") if p.is_file()),
        **{f"{p['dir']}/": p["bytes"] for p in manifest["model"]["pieces"]},
    }
    print(render_plan(manifest, sizes, carry))
    say(f"prepared {carry} in {time.monotonic() - started:.0f}s")
    return 0


def render_plan(manifest: dict[str, Any], sizes: dict[str, int], carry: Path) -> str:
    rel = os.path.relpath(carry, ROOT)
    lines = ["", "| piece | MiB |", "| --- | ---: |"]
    lines += [f"| {name} | {size / 2**20:.1f} |" for name, size in sizes.items()]
    pieces = manifest["model"]["pieces"]
    with_base = sizes["repository (every call)"] + sizes["base/ (the run)"]
    biggest = max(
        [with_base + p["bytes"] for p in pieces[:2]]
        + [sizes["repository (every call)"] + p["bytes"] for p in pieces[2:]]
    )
    lines += [f"| **largest call** | **{biggest / 2**20:.1f}** of {CALL_LIMIT >> 20} |", ""]
    lines.append("Device calls, back to back (the machine stays warm ~30 s after each):")
    for piece in pieces[1:]:
        carried = [f"{rel}/base", f"{rel}/{piece['dir']}"] if piece["index"] == 1 else [f"{rel}/{piece['dir']}"]
        note = "   # also stages, makes the venv, starts the build" if piece["index"] == 1 else ""
        lines.append(f'  run(carry={json.dumps(carried)}, command="bash ci/gpu_check.sh --stash", timeout_s=90){note}')
    lines.append(
        f'  run(carry=["{rel}/base", "{rel}/model-0"], command="bash ci/gpu_check.sh", timeout_s=600)'
        "   # then give_back"
    )
    if len(pieces) > 1:
        lines.append(f"Without the {len(pieces) - 1} stash calls the run builds from scratch and uses the tiny model.")
    return "\n".join(lines)


def _git(*args: str) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


# -------------------------------------------------------------------------------------------------- stash


def stash(args: argparse.Namespace) -> int:
    """Keep the model pieces this call carried in STASH_DIR (verified), for the run of a later call."""
    args.stash_dir.mkdir(parents=True, exist_ok=True)
    kept = []
    for meta_path in sorted(args.carry.glob("model-*/piece.json")):
        piece = json.loads(meta_path.read_text())
        part = meta_path.parent / piece["file"]
        if not part.is_file() or sha256_of(part) != piece["sha256"]:
            print(f"piece {piece['index']}: {part} is missing or damaged; not stashed")
            return 1
        shutil.copy2(part, args.stash_dir / part.name)
        shutil.copy2(meta_path, args.stash_dir / f"{part.name}.json")
        kept.append(piece["index"])
    have = sorted(int(p.name.rsplit("part", 1)[1].split(".")[0]) for p in args.stash_dir.glob("*.part*.json"))
    of = max((json.loads(p.read_text())["of"] for p in args.stash_dir.glob("*.json")), default=0)
    print(f"stashed pieces {kept}; {args.stash_dir} now holds pieces {have} of {of} (model-0 rides with the run)")
    if not kept:
        return 1
    if (args.carry / "base" / "manifest.json").is_file():
        # base/ came along (the first stash call): stage, make the venv and start the build now, in the background.
        runner = Runner(args)
        runner.stage()
        runner.venv()
        failed = [f"{s.name}: {s.status} ({s.detail})" for s in runner.steps if s.status != "ok"]
        print(f"early build not started: {'; '.join(failed)}" if failed else runner.start_early_build())
    return 0


# ---------------------------------------------------------------------------------------------------- run


@dataclass
class Step:
    name: str
    status: str = "not run"  # ok | failed | timeout | not run
    seconds: float = 0.0
    detail: str = ""
    command: str = ""
    output_tail: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


class Runner:
    """Runs the steps in order, each bounded by its own limit and by what is left of the budget."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = bool(args.dry_run)
        self.deadline = time.monotonic() + args.budget
        self.started = time.monotonic()
        self.steps: list[Step] = []
        self.work: Path = args.work
        self.work.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
        self.python = sys.executable
        self.manifest: dict[str, Any] = {}
        self.lib_dir: Path | None = None
        self.model_file: Path | None = None
        self.model_key = ""
        self.tree = ROOT
        self.cmake_args: list[str] = [] if self.dry else list(CUDA_CMAKE_ARGS)

    # -- plumbing
    def limit(self, name: str) -> float:
        cap = LIMITS[name][1 if self.dry else 0]
        return min(cap, self.deadline - time.monotonic() - REPORT_RESERVE)

    def step(self, name: str, needs: tuple[str, ...] = ()) -> Step | None:
        """A new step, or None (recorded as not run) when a step it needs did not succeed or time is up."""
        step = Step(name)
        self.steps.append(step)
        failed = [s.name for s in self.steps if s.name in needs and s.status != "ok"]
        if failed:
            step.detail = f"needs {', '.join(failed)}"
            return None
        if self.limit(name) < 5:
            step.detail = "no time left in the budget"
            return None
        return step

    def call(self, step: Step, cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> bool:
        """Run `cmd` in its own process group, bounded by the step's limit; kill the group on time-out."""
        step.command = shlex.join(cmd)
        limit = self.limit(step.name)
        say(f"{step.name}: {step.command} (limit {limit:.0f}s)")
        began = time.monotonic()
        out_path = log or (self.work / f"{step.name}.log")
        with out_path.open("w") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env or self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                code = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = None
        step.seconds += time.monotonic() - began
        step.output_tail = out_path.read_text(errors="replace")[-2500:]
        if code is None:
            step.status, step.detail = "timeout", f"stopped after {limit:.0f}s"
            return False
        if code != 0:
            step.status, step.detail = "failed", f"exit {code}"
            return False
        step.status = "ok"
        return True

    def timed(self, step: Step, fn: Any) -> None:
        began = time.monotonic()
        try:
            fn(step)
            step.status = step.status if step.status != "not run" else "ok"
        except Exception as exc:  # a failing step is reported; the steps that do not need it still run
            step.status, step.detail = "failed", f"{type(exc).__name__}: {exc}"
        step.seconds += time.monotonic() - began

    # -- steps
    def machine(self) -> None:
        step = self.step("machine")
        if step is None:
            return

        def run(step: Step) -> None:
            facts = step.facts
            facts["python"] = platform.python_version()
            facts["cpus"] = os.cpu_count()
            facts["repo_commit"] = _git("rev-parse", "HEAD") or "unknown (no git metadata on this machine)"
            smi = shutil.which("nvidia-smi")
            if smi:
                query = "name,driver_version,memory.total,memory.used,compute_cap,clocks.max.sm"
                proc = subprocess.run(
                    [smi, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
                )
                facts["nvidia_smi"] = proc.stdout.strip() or proc.stderr.strip()
            else:
                facts["nvidia_smi"] = "not found" + (" (dry run: expected)" if self.dry else "")
            nvcc = shutil.which("nvcc") or (
                "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None
            )
            if nvcc:
                proc = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20)
                facts["nvcc"] = (proc.stdout.strip().splitlines() or ["?"])[-1]
            else:
                facts["nvcc"] = "not found"
            for tool in ("cmake", "ninja"):
                path = shutil.which(tool)
                if path:
                    proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
                    facts[tool] = proc.stdout.splitlines()[0] if proc.stdout else "?"
                else:
                    facts[tool] = "not found"
            if not self.dry and facts["nvidia_smi"] == "not found":
                raise RuntimeError("nvidia-smi not found: no GPU driver on this machine")

        self.timed(step, run)

    def stage(self) -> None:
        """Unpack and verify the llama.cpp tree; put the model together from its pieces (or fall back)."""
        step = self.step("stage")
        if step is None:
            return

        def run(step: Step) -> None:
            import build_lib

            manifest_path = self.args.carry / "base" / "manifest.json"
            if not manifest_path.is_file():
                raise FileNotFoundError(f"{manifest_path} (run `bash ci/gpu_check.sh --prepare` first)")
            self.manifest = json.loads(manifest_path.read_text())
            source = self.manifest["source"]
            tree = (self.work / "llama.cpp") if self.dry else build_lib.CARRIED_SOURCE
            marker = tree / ".gpu-check-staged"
            reused = marker.is_file() and marker.read_text().strip() == source["tree_sha256"]
            if not reused:  # else an earlier call (--stash with base/) staged it: its early build may be reading it
                if tree.exists():
                    shutil.rmtree(tree)
                tree.mkdir(parents=True)
                with tarfile.open(self.args.carry / "base" / source["file"]) as tar:
                    tar.extractall(tree, filter="tar")  # Python >= 3.11.4 / 3.12: no paths or links out of `tree`
            build_lib.verify_tree(tree, source["tree_sha256"], f"the carried tree {tree}")
            marker.write_text(source["tree_sha256"] + "\n")
            how = "staged by an earlier call" if reused else "unpacked"
            step.facts["tree"] = f"{tree} (llama.cpp {source['commit']}, {how}, tree hash verified)"
            self.tree = tree
            if not self.dry:
                self.env["LLAMARCP_CACHE_DIR"] = str(self.work / "cache")

        self.timed(step, run)

    def model(self) -> None:
        """The model from its pieces (sha256 checked), else the tests' tiny random llama (written by the venv's
        Python: the image's has no gguf package)."""
        step = self.step("model", needs=("stage", "venv"))
        if step is None:
            return

        def run(step: Step) -> None:
            meta = self.manifest["model"]
            tiny_path, vocab_file = self._tiny_model_facts()
            target = self.work / "models" / meta["name"]
            missing = self._assemble(meta, target)
            if not missing:
                self.model_key = "gemma" if meta["kind"] == "gemma" else "tiny"
                self.model_file = target
                if self.model_key == "tiny" and not (tiny_path.is_file() and sha256_of(tiny_path) == meta["sha256"]):
                    tiny_path.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(target, tiny_path)  # benchmarks/run.py finds the tiny model at the tests' path
                step.facts["model"] = (
                    f"{meta['name']} ({meta['bytes']} B, sha256 verified, from {len(meta['pieces'])} pieces)"
                )
            else:
                if not tiny_path.is_file():
                    write = [
                        self.python,
                        "tests/tiny_model.py",
                        str(tiny_path),
                        "--vocab",
                        str(self.tree / "models" / vocab_file),
                    ]
                    if not self.call(step, write, log=self.work / "model.log"):
                        return
                self.model_file, self.model_key = tiny_path, "tiny"
                step.facts["model"] = (
                    f"FALLBACK tiny random llama: {meta['name']} pieces {missing} not here (stash them first)"
                )
            self.env["LLAMARCP_MODEL"] = str(self.model_file)

        self.timed(step, run)

    def _assemble(self, meta: dict[str, Any], target: Path) -> list[Any]:
        """Concatenate the pieces (from this call's carry or the stash) into `target`; what is missing."""
        found: list[Path] = []
        missing: list[Any] = []
        for piece in meta["pieces"]:
            candidates = [self.args.carry / piece["dir"] / piece["file"], self.args.stash_dir / piece["file"]]
            hit = next((c for c in candidates if c.is_file() and c.stat().st_size == piece["bytes"]), None)
            if hit is None:
                missing.append(piece["index"])
            else:
                found.append(hit)
        if missing:
            return missing
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            for part in found:
                with part.open("rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 20)
        return [] if sha256_of(target) == meta["sha256"] else ["(sha256 mismatch)"]

    def _tiny_model_facts(self) -> tuple[Path, str]:
        """(the tests' cached tiny model path, its vocab file name), asked of the venv's Python."""
        code = (
            "import importlib.util as u; s = u.spec_from_file_location('t', 'tests/tiny_model.py'); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); from llamarcp import _cache; "
            "print(_cache.cache_root() / 'test-models' / f'{m.TINY_MODEL_VERSION}.gguf'); print(m.VOCAB_FILE)"
        )
        proc = subprocess.run(
            [self.python, "-c", code], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            raise RuntimeError(f"could not locate the tiny model: {proc.stderr[-800:]}")
        path, vocab = proc.stdout.split()[-2:]
        return Path(path), vocab

    def venv(self) -> None:
        """A venv whose .pth reaches the image's own packages (numpy), with the carried wheels installed over them."""
        step = self.step("venv", needs=("stage",))
        if step is None:
            return
        venv_dir = self.work / "venv"
        ready = venv_dir / ".gpu-check-ready"
        wanted = json.dumps([self.manifest.get("wheels"), requirements()])
        if ready.is_file() and ready.read_text() == wanted:  # made by an earlier call; an early build may use it
            step.facts["venv"] = f"{venv_dir} (made by an earlier call)"
            python = venv_dir / "bin" / "python"
            if self.call(step, self._import_check(python), log=self.work / "venv-imports.log"):
                self.python = str(python)
            return
        if venv_dir.exists():
            shutil.rmtree(venv_dir)
        # On the device `python3` runs this script: its packages (numpy, matplotlib) are the image's. No pip in
        # the venv (a distribution's Python may lack ensurepip): the image's pip installs into it with --target.
        if not self.call(step, [sys.executable, "-m", "venv", "--without-pip", str(venv_dir)]):
            return
        python = venv_dir / "bin" / "python"
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        import sysconfig

        image_paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        (Path(site) / "zz-image-packages.pth").write_text("".join(f"{p}\n" for p in image_paths))
        step.facts["venv"] = str(venv_dir)
        step.facts["image_packages"] = list(image_paths)
        wheels_dir = self.args.carry / "base" / "wheels"
        wheels = self.manifest.get("wheels")
        step.facts["requirements_match_pyproject"] = self.manifest["requirements"] == requirements()
        if not step.facts["requirements_match_pyproject"]:
            step.status = "failed"
            step.detail = (
                f"the carry was prepared for {self.manifest['requirements']}, pyproject now needs {requirements()}: "
                "run --prepare again"
            )
            return
        if wheels is None:
            step.facts["wheels"] = "none in this carry (--no-wheels): the interpreter's own packages are used"
        else:
            have = {_wheel_name(w) for w in wheels}
            lacking = [r for r in self.manifest["requirements"] if _req_name(r) not in have]
            untagged = [w for w in wheels if not _fits_device(w)]
            step.facts["wheels"] = f"{len(wheels)} wheels"
            if lacking or untagged:
                step.status = "failed"
                step.detail = f"wheels lacking for {lacking}; not for the device's Python: {untagged}"
                return
            # Here (dry run) the same install goes into a scratch folder, as for the device's Python.
            target = Path(site) if not self.dry else self.work / f"site-py{DEVICE_PYTHON}"
            install = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
            install += ["--disable-pip-version-check", "--target", str(target)]
            if self.dry:
                install += ["--only-binary", ":all:", "--python-version", DEVICE_PYTHON, "--implementation", "cp"]
                install += [arg for plat in DEVICE_PLATFORMS for arg in ("--platform", plat)]
            install += [str(wheels_dir / w) for w in wheels]
            if not self.call(step, install, log=self.work / "venv-pip.log"):
                return
            step.facts["installed_into"] = str(target)
        if self.call(step, self._import_check(python), log=self.work / "venv-imports.log"):
            self.python = str(python)
            ready.write_text(wanted)

    @staticmethod
    def _import_check(python: Path) -> list[str]:
        return [str(python), "-c", f"import {', '.join(IMPORT_CHECK)}; import llamarcp; print(llamarcp.__file__)"]

    def build_command(self) -> list[str]:
        """build_lib.py as a user runs it (`--cuda`); in the dry run the cached CPU build (nothing compiled)."""
        if self.dry:
            return [self.python, "build_lib.py", "--no-build", "--tools", "llama-bench"]
        if shutil.which("ninja"):
            self.env["CMAKE_GENERATOR"] = "Ninja"  # the generator is not part of the build key
        cuda_bin = Path("/usr/local/cuda/bin")
        if not shutil.which("nvcc") and cuda_bin.is_dir():
            self.env["PATH"] = f"{cuda_bin}{os.pathsep}{self.env.get('PATH', '')}"
        flags = [f"--cmake-arg={a}" for a in CUDA_CMAKE_ARGS if a != "-DGGML_CUDA=ON"]
        return [self.python, "build_lib.py", "--cuda", *flags, "--tools", TOOLS, "-j", str(os.cpu_count() or 16)]

    def start_early_build(self) -> str:
        """Start the build in a session of its own, so it outlives this (stash) call and compiles while the other
        pieces travel; the run's build step then waits for it on build_lib's cache lock."""
        log = self.work / "build-early.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                self.build_command(),
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.work / "build-early.pid").write_text(f"{proc.pid} {time.time():.0f}\n")
        return f"early build started (pid {proc.pid}, log {log})"

    def build(self) -> None:
        step = self.step("build", needs=("stage", "venv"))
        if step is None:
            return
        flags = [f"--cmake-arg={a}" for a in CUDA_CMAKE_ARGS if a != "-DGGML_CUDA=ON"]
        step.facts["command"] = shlex.join(["python", "build_lib.py", "--cuda", *flags, "--tools", TOOLS, "-j", "16"])
        cmd = self.build_command()
        early = self.work / "build-early.pid"
        if early.is_file():
            pid, started = early.read_text().split()
            step.facts["early_build"] = f"started {time.time() - float(started):.0f}s before this step (pid {pid})"
        log = self.work / "build.log"
        ok = self.call(step, cmd, log=log)
        for name in ("build-early.log", "build.log"):
            path = self.work / name
            if path.is_file():
                took = re.findall(r"build_lib: built \S+ in (\d+)s", path.read_text(errors="replace"))
                if took:
                    step.facts[f"{name} compile seconds"] = took
        if ok:
            lines = [ln.strip() for ln in log.read_text().splitlines() if ln.strip()]
            printed = [Path(ln) for ln in lines if ln.startswith("/") and Path(ln, "llamarcp-build.json").is_file()]
            if not printed:
                step.status, step.detail = "failed", "build_lib.py printed no library directory"
                return
            self.lib_dir = printed[-1]
            self.env["LLAMARCP_LIB_PATH"] = str(self.lib_dir)
            libs = sorted(p.name for p in self.lib_dir.glob("libggml*.so"))
            step.facts["lib_dir"] = str(self.lib_dir)
            step.facts["libraries"] = libs
            if not self.dry and "libggml-cuda.so" not in libs:
                step.status, step.detail = "failed", f"no libggml-cuda.so in {self.lib_dir}"
        cmake_log = self.lib_dir.parent / "build.log" if self.lib_dir else None
        if cmake_log and cmake_log.is_file():
            shutil.copy2(cmake_log, self.work / "cmake-build.log")

    def pytest(self) -> None:
        step = self.step("pytest", needs=("stage", "venv", "model", "build"))
        if step is None:
            return
        findings = self.work / "findings.jsonl"
        findings.unlink(missing_ok=True)
        env = dict(self.env, LLAMARCP_GPU_FINDINGS=str(findings))
        base = [self.python, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_gpu.py", "-rA"]
        if self.dry:
            # No GPU here: check the gpu tests are collected under -m gpu, and that the default run deselects them.
            if not self.call(step, [*base, "-q", "-m", "gpu", "--collect-only"], env=env):
                return
            step.facts["collected"] = _last_summary(step.output_tail)
            if not self.call(step, [*base, "-q"], env=env, log=self.work / "pytest-default.log"):
                return
            step.facts["default_selection"] = _last_summary(step.output_tail)
            if "deselected" not in step.facts["default_selection"]:
                step.status, step.detail = "failed", "the gpu tests were not deselected on a build without CUDA"
            return
        self.call(step, [*base, "-v", "-m", "gpu", "--durations=5"], env=env, log=self.work / "pytest.log")
        step.facts["summary"] = _last_summary(step.output_tail)
        if findings.is_file():
            step.facts["findings"] = [json.loads(line) for line in findings.read_text().splitlines() if line.strip()]

    def bench_run(self) -> None:
        step = self.step("bench-run", needs=("stage", "venv", "model", "build"))
        if step is None:
            return
        out = self.work / "bench-run"
        if self.dry:
            knobs = ["--models", f"{self.model_key}@1", "--reps", "1", "--tg", "8", "--pp", "32", "--threads", "1"]
        else:
            knobs = ["--models", self.model_key, "--reps", "3", "--tg", "128", "--pp", "512", "--n-gpu-layers", "99"]
        cmd = [self.python, "benchmarks/run.py", *knobs, "--no-install", "--no-llama-cpp-python", "--skip-imports"]
        cmd += ["--skip-tools", *(f"--cmake-arg={a}" for a in self.cmake_args), "--out", str(out)]
        if self.call(step, cmd):
            results = json.loads((out / "results.json").read_text())
            step.facts["rows"] = throughput_rows(results)
            step.facts["notes"] = [n for m in results["models"].values() for n in m.get("notes", [])]

    def bench_serving(self) -> None:
        step = self.step("bench-serving", needs=("stage", "venv", "model", "build"))
        if step is None:
            return
        out = self.work / "serving"
        if self.dry:
            knobs = ["--clients", "2", "--requests", "1", "--max-tokens", "4", "--max-slots", "2", "--threads", "1"]
            knobs += ["--contenders", "parallel,one-slot"]  # llama-server is built only in the CUDA build
        else:
            knobs = ["--clients", "8,32", "--requests", "2", "--max-tokens", "32", "--max-slots", "32"]
            knobs += ["--threads", "4", "--n-gpu-layers", "99", "--start-timeout", "60", "--request-timeout", "60"]
        cmd = [self.python, "benchmarks/serving.py", "--models", self.model_key, "--reps", "1", *knobs]
        cmd += ["--no-install", "--max-minutes", "1", *(f"--cmake-arg={a}" for a in self.cmake_args)]
        cmd += ["--out", str(out)]
        if self.call(step, cmd):
            results = json.loads((out / "serving.json").read_text())
            step.facts["rows"] = serving_rows(results)
            step.facts["failures"] = results.get("failures", [])

    def run(self) -> int:
        for name in ("machine", "stage", "venv", "model", "build", "pytest", "bench_run", "bench_serving"):
            getattr(self, name)()
        return self.report()

    # -- report
    def report(self) -> int:
        out: Path = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        total = time.monotonic() - self.started
        data = {
            "mode": "dry run (CPU rehearsal)" if self.dry else "device",
            "finished_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": total,
            "budget_s": self.args.budget,
            "prepared": {k: self.manifest.get(k) for k in ("prepared_at", "git_commit")},
            "model": str(self.model_file) if self.model_file else None,
            "steps": [s.__dict__ for s in self.steps],
        }
        (out / "gpu-report.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
        text = render_report(data)
        (out / "gpu-report.md").write_text(text)
        for name in ("pytest.log", "cmake-build.log", "build.log", "build-early.log"):
            src = self.work / name
            if src.is_file():
                (out / name).write_text(src.read_text(errors="replace")[-400_000:])  # the tail: files come back <16 MiB
        for sub, name in (("bench-run", "results.json"), ("serving", "serving.json")):
            src = self.work / sub / name
            if src.is_file():
                shutil.copy2(src, out / f"{sub}-{name}")
        print(text)
        return 0 if all(s.status == "ok" for s in self.steps) else 1


def _fits_device(wheel: str) -> bool:
    """A wheel file name the device's CPython 3.12 on manylinux x86_64 can install."""
    python_tag, abi_tag, plat_tag = wheel[: -len(".whl")].split("-")[-3:]
    pythons = python_tag.split(".")
    py_ok = any(p in ("py3", "py2.py3", "cp312") or p == "py312" for p in pythons) or (
        abi_tag == "abi3" and any(p.startswith("cp3") and int(p[3:] or 0) <= 12 for p in pythons)
    )
    plat_ok = plat_tag == "any" or any(p.endswith("_x86_64") and p.startswith("manylinux") for p in plat_tag.split("."))
    return py_ok and plat_ok


def _last_summary(text: str) -> str:
    lines = [
        ln.strip("= ").strip()
        for ln in text.splitlines()
        if re.search(r"\d+ (passed|failed|error|selected|tests? collected|deselected)", ln)
    ]
    return lines[-1] if lines else "(no pytest summary line)"


def throughput_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """llamarcp vs llama-bench per test: medians (tokens/s) and the median of the per-round ratios."""
    import report

    rows = []
    for key, model in results.get("models", {}).items():
        for test, cells in model.get("tests", {}).items():
            bench, ours = cells.get("llama-bench", {}), cells.get("llamarcp", {})
            ratio = report.ratio(results, key, test, "llamarcp", "llama-bench")
            rows.append(
                {
                    "model": key,
                    "test": test,
                    "llamarcp": ours.get("summary", {}).get("median"),
                    "llama-bench": bench.get("summary", {}).get("median"),
                    "ratio": ratio["median"] if ratio else None,
                    "errors": [c["error"] for c in (bench, ours) if c.get("error")],
                }
            )
    return rows


def serving_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Aggregate tokens/s and p50 latency per client count and contender."""
    rows = []
    for key, model in results.get("models", {}).items():
        for clients, group in model.get("groups", {}).items():
            for contender, cell in group.items():
                if "summary" not in cell and "error" not in cell:
                    continue  # a contender this run did not measure
                rows.append(
                    {
                        "model": key,
                        "clients": int(clients),
                        "contender": contender,
                        "tokens_per_s": cell.get("summary", {}).get("median"),
                        "p50_latency_s": cell.get("latency", {}).get("p50"),
                        "error": cell.get("error"),
                    }
                )
    return rows


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "-"


def render_report(data: dict[str, Any]) -> str:
    lines = [f"# GPU check ({data['mode']}), {data['finished_at']}", ""]
    lines.append(f"Total {data['seconds']:.0f} s of a {data['budget_s']} s budget. Carry prepared {data['prepared']}.")
    lines += ["", "| step | status | seconds | detail |", "| --- | --- | ---: | --- |"]
    for s in data["steps"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {s['detail']} |")
    by_name = {s["name"]: s for s in data["steps"]}
    machine = by_name.get("machine", {}).get("facts", {})
    if machine:
        lines += ["", "## Machine", ""] + [f"- {k}: {v}" for k, v in machine.items()]
    for name in ("stage", "venv", "model", "build"):
        facts = by_name.get(name, {}).get("facts", {})
        if facts:
            lines += ["", f"## {name}", ""] + [f"- {k}: {v}" for k, v in facts.items()]
    tests = by_name.get("pytest", {})
    if tests.get("facts"):
        lines += ["", "## pytest -m gpu", ""]
        lines += [f"- {k}: {v}" for k, v in tests.get("facts", {}).items() if k != "findings"]
        lines += [f"- finding: {json.dumps(f)}" for f in tests.get("facts", {}).get("findings", [])]
    run_rows = by_name.get("bench-run", {}).get("facts", {}).get("rows", [])
    if run_rows:
        lines += ["", "## benchmarks/run.py (tokens/s, medians)", ""]
        lines += [
            "| model | test | llamarcp | llama-bench | llamarcp / llama-bench |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for r in run_rows:
            ratio = _num(r["ratio"], "{:.2f}")
            lines.append(f"| {r['model']} | {r['test']} | {_num(r['llamarcp'])} | {_num(r['llama-bench'])} | {ratio} |")
    serve_rows = by_name.get("bench-serving", {}).get("facts", {}).get("rows", [])
    if serve_rows:
        lines += ["", "## benchmarks/serving.py (aggregate tokens/s, p50 latency)", ""]
        lines += ["| model | clients | contender | tokens/s | p50 s |", "| --- | ---: | --- | ---: | ---: |"]
        for r in sorted(serve_rows, key=lambda r: (r["model"], r["clients"], r["contender"])):
            p50 = _num(r["p50_latency_s"], "{:.2f}")
            lines.append(f"| {r['model']} | {r['clients']} | {r['contender']} | {_num(r['tokens_per_s'])} | {p50} |")
    for s in data["steps"]:
        if s["status"] != "ok" and s["output_tail"].strip():
            lines += ["", f"## {s['name']}: {s['status']} ({s['detail']})", "", "```", s["output_tail"][-1500:], "```"]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("run", "prepare", "stash"), nargs="?", default="run")
    p.add_argument("--dry-run", action="store_true", help="run: every step but the CUDA ones, on the CPU build")
    p.add_argument("--carry", type=Path, default=CARRY_DIR, help=f"the staged folder (default {CARRY_DIR})")
    p.add_argument("--stash-dir", type=Path, default=STASH_DIR, help=f"stashed model pieces (default {STASH_DIR})")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default /tmp/llamarcp-gpu[-dry])")
    p.add_argument("--out", type=Path, default=None, help="report folder (default $OUT, else WORK/report)")
    p.add_argument("--budget", type=float, default=480.0, help="seconds the whole run may take (default 480)")
    p.add_argument("--model", choices=("gemma", "tiny"), default="gemma", help="prepare: the model to carry")
    p.add_argument("--no-wheels", action="store_true", help="prepare: carry no wheels (rehearsals only)")
    p.add_argument("--piece-bytes", type=int, default=0, help="prepare: cut the model into pieces this small")
    args = p.parse_args(argv)
    args.carry = args.carry.resolve()
    args.work = (args.work or Path("/tmp/llamarcp-gpu-dry" if args.dry_run else "/tmp/llamarcp-gpu")).resolve()
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else args.work / "report")
    args.out = out.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "prepare":
        return prepare(args)
    if args.mode == "stash":
        return stash(args)
    return Runner(args).run()


if __name__ == "__main__":
    sys.exit(main())
