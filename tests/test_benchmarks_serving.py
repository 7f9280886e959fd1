"""The serving benchmark (benchmarks/serving.py): its helpers, and one real smoke run so it cannot rot.

The smoke run starts llamarcp's server twice on the tiny model (`--parallel 2` and one slot), sends 2 clients x 2
requests to each and checks what it wrote: sane numbers (finite, positive, p50 <= p95), the RESULTS.md block,
the chart, and that every greedy completion of the parallel server equals the one-slot server's. The speculative
mode's smoke run (`--speculative --smoke`) streams both prompts to llamarcp without and with `--spec-type
ngram-simple` and checks the texts agree. They build and install nothing (llama-server is not part of a smoke run)
and assert no timing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from procs import run

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


serving = _load("serving")


def test_every_request_of_a_run_has_its_own_prompt() -> None:
    prompts = [serving.prompt(i) for i in range(16 * 2)]  # the largest default run: 16 clients x 2 requests
    assert len(set(prompts)) == len(prompts)


def test_slots_follow_clients_within_bounds() -> None:
    assert [serving.slots_for(c, 16) for c in (1, 4, 8, 16, 32)] == [4, 4, 8, 16, 16]
    assert serving.slots_for(2, 2) == 2


def test_latency_summary_nearest_rank() -> None:
    s = serving.latency_summary([float(v) for v in range(1, 21)])  # 1..20
    assert s["p50"] == 10.5
    assert s["p95"] == 19.0
    assert s["max"] == 20.0
    assert s["n"] == 20


def test_bad_arguments_are_refused() -> None:
    for argv in (["--clients", "0"], ["--clients", "x"], ["--models", "nope"], ["--contenders", "other"]):
        with pytest.raises(SystemExit):
            serving.parse_args(argv)


def _minimal_results() -> dict[str, Any]:
    meta = {
        "finished_at": "2026-01-01 00:00 UTC",
        "mode": "smoke",
        "reps": 1,
        "command": "python benchmarks/serving.py --smoke",
        "cpu": "cpu",
        "physical_cores": 2,
        "uptime_before": "up",
        "uptime_after": "up",
        "git_commit": "abc",
        "llama_cpp_commit": "def",
        "lib_dir": "/lib",
        "clients_text": "2",
        "requests": 2,
        "max_tokens": 8,
        "threads": 2,
        "n_batch": 512,
        "ctx": 512,
        "max_slots": 16,
        "load_before": "0",
    }
    return {"meta": meta, "models": {}, "failures": []}


def test_write_markdown_replaces_only_its_block(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmarks\n\nhand-written notes\n")
    serving.write_markdown(_minimal_results(), path)
    serving.write_markdown(_minimal_results(), path)  # the second run replaces the block, appends nothing
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written notes\n")
    assert text.count(serving.SERVING_TITLE) == 1
    assert text.count(serving.SERVING_BEGIN) == 1
    assert text.count(serving.SERVING_END) == 1


def test_smoke_run_measures_and_writes_its_files(tmp_path: Path) -> None:
    proc = run(
        [sys.executable, str(ROOT / "benchmarks" / "serving.py"), "--smoke", "--no-install", "--out", str(tmp_path)],
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "serving.json").read_text())
    assert results["failures"] == []
    tiny = results["models"]["tiny"]
    assert tiny["notes"] == []
    group = tiny["groups"]["2"]
    for name in (serving.LLAMARCP_PARALLEL, serving.LLAMARCP_ONE_SLOT):
        cell = group[name]
        assert "error" not in cell, cell.get("error")
        (rate,) = cell["rounds"]
        assert math.isfinite(rate) and rate > 0
        assert cell["tokens"] and max(cell["tokens"]) <= 8
        lat = cell["latency"]
        assert lat["n"] == 4
        assert 0 < lat["p50"] <= lat["p95"] <= lat["max"]
        assert len(cell["texts"]) == 4
    # Greedy output of requests decoded together equals the one-slot server's for every prompt (tiny model).
    assert group[serving.LLAMARCP_PARALLEL]["texts"] == group[serving.LLAMARCP_ONE_SLOT]["texts"]
    assert tiny["slots"] == {"2": 2}
    text = (tmp_path / "RESULTS.md").read_text()
    assert serving.SERVING_BEGIN in text and serving.SERVING_END in text
    assert (tmp_path / "serving.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


serving_speculative = _load("serving_speculative")


def test_speculative_text_check_needs_one_text_over_all_rounds() -> None:
    def cell(*texts: str) -> dict[str, Any]:
        return {"texts": list(texts)}

    assert serving_speculative.same_text(cell("a", "a"), cell("a")) is True
    assert serving_speculative.same_text(cell("a", "b"), cell("a", "b")) is False  # rounds must agree too
    assert serving_speculative.same_text(cell("a"), cell("b")) is False
    assert serving_speculative.same_text(cell(), cell("a")) is None
    key = f"{serving_speculative.LLAMARCP_SPEC} = {serving_speculative.LLAMARCP_PLAIN}"
    results = {"models": {"gemma": {"identical": {"code": {key: True}, "json": {key: False}}}}}
    assert serving_speculative.llamarcp_mismatches(results) == ["gemma/json"]


def test_speculative_bad_arguments_are_refused() -> None:
    for argv in (["--prompts", "nope"], ["--prompts", ""], ["--reps", "-1"], ["--model", "other"]):
        with pytest.raises(SystemExit):
            serving_speculative.parse_args(argv)


def test_speculative_smoke_run_streams_both_servers_with_the_same_text(tmp_path: Path) -> None:
    # Through serving.py's own entry point, as the README documents it.
    argv = [sys.executable, str(ROOT / "benchmarks" / "serving.py"), "--speculative", "--smoke", "--out", str(tmp_path)]
    proc = run(argv, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "serving-speculative.json").read_text())
    tiny = results["models"]["tiny"]
    assert tiny["notes"] == []
    assert set(tiny["servers"]) == {serving_speculative.LLAMARCP_PLAIN, serving_speculative.LLAMARCP_SPEC}
    assert "--spec-type ngram-simple" in tiny["servers"][serving_speculative.LLAMARCP_SPEC]
    for prompt in ("code", "json"):
        by = tiny["prompts"][prompt]
        for name in (serving_speculative.LLAMARCP_PLAIN, serving_speculative.LLAMARCP_SPEC):
            cell = by[name]
            assert cell["errors"] == []
            (rate,) = cell["rounds"]
            assert math.isfinite(rate) and rate > 0
            (text,) = cell["texts"]
            assert text
            assert cell["accepted"] <= cell["drafted"]
        assert by[serving_speculative.LLAMARCP_PLAIN]["texts"] == by[serving_speculative.LLAMARCP_SPEC]["texts"]
        assert tiny["identical"][prompt][f"{serving_speculative.LLAMARCP_SPEC} = {serving_speculative.LLAMARCP_PLAIN}"]
        assert by[serving_speculative.SERVER_PLAIN]["rounds"] == [None]  # llama-server is not part of the smoke run
    text = (tmp_path / "RESULTS.md").read_text()
    assert serving_speculative.BEGIN in text and serving_speculative.END in text
    assert "| tiny random llama (2M, F32) | code | llamarcp |" in text
    assert "distinct text(s)" in proc.stdout  # the greedy texts are printed
