"""ci/gpu_check.sh rehearsed on the CPU, so the device script cannot rot between the sessions that get a GPU.

The real steps run with small inputs: `--prepare` stages a carry (the pinned tree, the tiny model cut into
pieces, no wheels: no network in tests), `--stash` keeps the pieces a "call" carried, and `--dry-run` runs every
step but the CUDA ones (stage, venv, the cached CPU build, pytest on tests/test_gpu.py, both benchmarks).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "ci" / "gpu_check.sh"
PIECE = 6 << 20  # the tiny model (17 MB) in three pieces

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu  # noqa: E402


def run(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The script in its own process group; the whole group is killed if it outlives `timeout`."""
    env = dict(os.environ, LLAMARCP_GPU_PYTHON=sys.executable)
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def carry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpu-check") / "carry"
    proc = run("--prepare", "--model", "tiny", "--no-wheels", "--piece-bytes", PIECE, "--carry", folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "largest call" in proc.stdout and 'command="bash ci/gpu_check.sh --stash"' in proc.stdout
    return folder


@pytest.fixture(scope="module")
def rehearsal(carry: Path) -> dict[str, Any]:
    """The calls `--prepare` printed: model-1 travels with base/ (that call also stages, makes the venv and starts
    the build), model-2 alone, then the run with base/ and model-0."""
    root = carry.parent
    stash_dir, work = root / "stash", root / "work"
    stashed = []
    for index in (1, 2):
        call = root / f"call-{index}"
        call.mkdir()
        if index == 1:
            shutil.copytree(carry / "base", call / "base")
        shutil.move(carry / f"model-{index}", call / f"model-{index}")
        stashed.append(run("--stash", "--dry-run", "--carry", call, "--stash-dir", stash_dir, "--work", work))
        assert stashed[-1].returncode == 0, stashed[-1].stderr[-2000:] + stashed[-1].stdout
    out = root / "out"
    proc = run("--dry-run", "--carry", carry, "--stash-dir", stash_dir, "--work", work, "--out", out)
    report = json.loads((out / "gpu-report.json").read_text())
    return {"proc": proc, "stashed": stashed, "report": report, "out": out}


def steps(rehearsal: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in rehearsal["report"]["steps"]}


def test_every_step_but_cuda_runs_on_the_cpu(rehearsal: dict[str, Any]) -> None:
    by_name = steps(rehearsal)
    assert list(by_name) == ["machine", "stage", "venv", "model", "build", "pytest", "bench-run", "bench-serving"]
    broken = {n: (s["status"], s["detail"], s["output_tail"][-800:]) for n, s in by_name.items() if s["status"] != "ok"}
    assert not broken
    assert rehearsal["proc"].returncode == 0
    assert "| build | ok |" in rehearsal["proc"].stdout  # the report is printed too (the call's output_tail)


def test_the_tree_is_verified_and_the_stashed_pieces_assembled(rehearsal: dict[str, Any]) -> None:
    first, second = rehearsal["stashed"]
    assert "now holds pieces [1] of 3" in first.stdout and "early build started" in first.stdout
    assert "now holds pieces [1, 2] of 3" in second.stdout
    assert "staged by an earlier call, tree hash verified" in steps(rehearsal)["stage"]["facts"]["tree"]
    assert "made by an earlier call" in steps(rehearsal)["venv"]["facts"]["venv"]
    assert "sha256 verified, from 3 pieces" in steps(rehearsal)["model"]["facts"]["model"]


def test_venv_reaches_the_image_packages_and_checks_the_requirements(rehearsal: dict[str, Any]) -> None:
    venv = Path(steps(rehearsal)["venv"]["facts"]["venv"].split()[0])
    pth = next((venv / "lib").glob("python3.*/site-packages/zz-image-packages.pth"))
    assert Path(
        pth.read_text().splitlines()[0], "numpy"
    ).is_dir()  # the interpreter's own packages (on the device: the image's)
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import numpy, gguf, llamarcp"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0


def test_build_names_the_cuda_command_and_finds_the_cpu_build(rehearsal: dict[str, Any]) -> None:
    facts = steps(rehearsal)["build"]["facts"]
    assert "build_lib.py --cuda --cmake-arg=-DCMAKE_CUDA_ARCHITECTURES=90" in facts["command"]
    assert "--tools llama-bench,llama-server" in facts["command"]
    assert facts["early_build"].startswith("started")  # by the first stash call, which carried base/ too
    assert "libggml-cpu.so" in facts["libraries"]


def test_gpu_tests_are_collected_and_deselected_without_cuda(rehearsal: dict[str, Any]) -> None:
    facts = steps(rehearsal)["pytest"]["facts"]
    assert re.search(r"(\d+)/(\d+) tests collected \(1 deselected\)", facts["collected"]), facts
    assert re.fullmatch(r"1 passed, \d+ deselected.*", facts["default_selection"]), facts


def test_benchmarks_give_rows(rehearsal: dict[str, Any]) -> None:
    rows = steps(rehearsal)["bench-run"]["facts"]["rows"]
    assert {r["test"] for r in rows} == {"tg", "pp32"}
    assert all(r["llamarcp"] and r["llama-bench"] and r["ratio"] for r in rows), rows
    serving = steps(rehearsal)["bench-serving"]["facts"]["rows"]
    assert {r["contender"] for r in serving} == {"llamarcp --parallel N", "llamarcp 1 slot"}
    assert all(r["tokens_per_s"] for r in serving), serving
    text = (rehearsal["out"] / "gpu-report.md").read_text()
    assert "## benchmarks/run.py" in text and "## benchmarks/serving.py" in text


def test_report_files_fit_what_comes_back(rehearsal: dict[str, Any]) -> None:
    files = sorted(p for p in rehearsal["out"].rglob("*") if p.is_file())
    assert len(files) <= 8 and all(p.parent == rehearsal["out"] for p in files)
    assert all(p.stat().st_size < 16 << 20 for p in files)
    assert {"gpu-report.md", "gpu-report.json", "bench-run-results.json", "serving-serving.json"} <= {
        p.name for p in files
    }


def test_a_damaged_piece_is_not_stashed(carry: Path, tmp_path: Path) -> None:
    call = tmp_path / "call"
    shutil.copytree(carry / "model-0", call / "model-0")
    part = next((call / "model-0").glob("*.part0"))
    part.write_bytes(b"\0" + part.read_bytes()[1:])
    proc = run("--stash", "--carry", call, "--stash-dir", tmp_path / "stash")
    assert proc.returncode == 1 and "missing or damaged; not stashed" in proc.stdout


def test_missing_pieces_fall_back_to_the_tiny_model(carry: Path, tmp_path: Path) -> None:
    partial = tmp_path / "carry"  # the run's own call only: no stash calls before it
    for name in ("base", "model-0"):
        shutil.copytree(carry / name, partial / name)
    args = gpu.parse_args(["--dry-run", "--carry", str(partial), "--stash-dir", str(tmp_path / "empty")])
    args.work, args.out = tmp_path / "work", tmp_path / "out"
    runner = gpu.Runner(args)
    runner.stage()
    runner.venv()
    runner.model()
    assert [(s.name, s.status) for s in runner.steps] == [("stage", "ok"), ("venv", "ok"), ("model", "ok")]
    facts = runner.steps[-1].facts
    assert facts["model"].startswith("FALLBACK tiny random llama") and "[1, 2]" in facts["model"]
    assert runner.model_key == "tiny" and runner.model_file is not None and runner.model_file.is_file()


def test_requirements_and_wheel_tags() -> None:
    names = {gpu._req_name(r) for r in gpu.requirements()}
    assert {"cffi", "jinja2", "fastapi", "uvicorn", "sse-starlette", "pytest", "gguf"} <= names
    assert gpu._wheel_name("sse_starlette-3.7.1-py3-none-any.whl") == "sse-starlette"
    assert gpu._fits_device("cffi-2.0.0-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl")
    assert gpu._fits_device("jinja2-3.1.6-py3-none-any.whl")
    assert gpu._fits_device("pydantic_core-2.41.5-cp39-abi3-manylinux_2_17_x86_64.whl")
    assert not gpu._fits_device("cffi-2.0.0-cp311-cp311-manylinux2014_x86_64.whl")
    assert not gpu._fits_device("psutil-7.0.0-cp36-abi3-macosx_11_0_arm64.whl")
