"""The benchmark runner: its statistics and report helpers, and a real smoke run so it cannot rot.

The smoke run (`python benchmarks/run.py --smoke --no-install`) measures all three contenders once on the tiny
model. It installs and builds nothing: `ci/setup.sh` runs `benchmarks/run.py --prepare` once (llama-bench into
the pinned cache entry, llama-cpp-python with LLAMA_BUILD=OFF into benchmarks/.work/), and a missing piece fails
with that hint. The numbers are checked for sanity (finite, positive), never against a time budget.
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
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


report = _load("report")


def test_summarize_median_and_spread() -> None:
    s = report.summarize([3.0, 1.0, 2.0, 10.0])
    assert s == {"median": 2.5, "min": 1.0, "max": 10.0, "spread": 9.0 / 2.5, "n": 4}
    with pytest.raises(ValueError):
        report.summarize([])


def test_paired_ratio_uses_rounds_and_skips_failed_ones() -> None:
    # Round 2 failed for the numerator, round 3 for the denominator: only rounds 1 and 4 pair up.
    r = report.paired_ratio([10.0, None, 30.0, 8.0], [20.0, 5.0, None, 4.0])
    assert r is not None
    assert r["n"] == 2
    assert r["median"] == pytest.approx((0.5 + 2.0) / 2)
    assert report.paired_ratio([None], [1.0]) is None


def test_no_install_names_the_fix_instead_of_installing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contenders = _load("contenders")
    monkeypatch.setattr(contenders, "LCP_VENV", tmp_path / "no-venv")
    with pytest.raises(contenders.BenchmarkError, match=r"not installed in .*no-venv; run `bash ci/setup.sh`"):
        contenders.ensure_llama_cpp_python(install=False)
    assert not (tmp_path / "no-venv").exists()


def test_write_markdown_keeps_hand_written_text(tmp_path: Path) -> None:
    results = {
        "meta": {
            "finished_at": "2026-01-01 00:00 UTC",
            "mode": "smoke",
            "reps": 1,
            "command": "python benchmarks/run.py --smoke",
            "cpu": "cpu",
            "physical_cores": 2,
            "ram_gb": 1.0,
            "load_before": "0",
            "load_after": "0",
            "git_commit": "abc",
            "git_dirty": False,
            "llama_cpp_commit": "def",
            "lib_dir": "/lib",
            "same_library": "yes",
            "threads": 2,
            "n_batch": 512,
            "flash_attn": True,
            "python": "3.11",
        },
        "models": {},
    }
    path = tmp_path / "RESULTS.md"
    report.write_markdown(results, path, "Title")
    text = path.read_text()
    assert text.startswith("# Title\n") and report.GENERATED_BEGIN in text and report.GENERATED_END in text
    path.write_text(text.replace("# Title\n", "# Title\n\nHand-written intro.\n") + "\n## Notes\nkept\n")
    results["meta"]["git_commit"] = "0123456"
    report.write_markdown(results, path, "Title")
    text = path.read_text()
    assert "Hand-written intro." in text and "## Notes\nkept" in text
    assert "`0123456`" in text and "`abc`" not in text
    assert text.count(report.GENERATED_BEGIN) == 1


def _positive_rate(cell: dict[str, Any]) -> float:
    assert not cell.get("error"), cell.get("error")
    value = cell["summary"]["median"]
    assert math.isfinite(value) and value > 0
    return float(value)


def _positive_seconds(cell: dict[str, Any]) -> None:
    assert not cell.get("error"), cell
    assert math.isfinite(cell["summary"]["median"]) and cell["summary"]["median"] > 0, cell


def test_smoke_run_produces_sane_numbers_and_files(tmp_path: Path) -> None:
    # The timeout is a hang guard (the group dies with it), not a budget: nothing is built or installed here.
    proc = run(
        [sys.executable, ROOT / "benchmarks" / "run.py", "--smoke", "--no-install", "--out", tmp_path],
        cwd=ROOT,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text())
    meta = results["meta"]
    assert meta["mode"] == "smoke" and meta["reps"] == 1
    assert not meta["same_library"].startswith("NOT VERIFIED"), meta["same_library"]
    assert results["failures"] == []

    tiny = results["models"]["tiny"]
    assert tiny["notes"] == []
    for name in ("llama-bench", "llamarcp", "llama-cpp-python"):
        for test in ("tg", "pp128", "pp512"):
            rate = _positive_rate(tiny["tests"][test][name])
            assert rate < 10_000_000, (name, test, rate)  # more would be a broken measurement, not a fast machine
    for name, load in tiny["load"].items():
        assert load["uses_pinned_library"], (name, load["libllama"])
    # Greedy decoding on the same model must give the same text through both Python bindings (on the llama.cpp
    # each was written for, when the pin has moved past llama-cpp-python's).
    assert tiny["same_greedy_text"] is True
    assert all(run["matches_unstreamed"] for runs in tiny["tg_runs"].values() for run in runs)

    imports = results["imports"]
    for key in ("from llamarcp import lib, ffi", "from llamarcp import Llama", "import llama_cpp"):
        _positive_seconds(imports[key])
    assert results["tools"]
    for cell in results["tools"].values():
        _positive_seconds(cell)

    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "| llamarcp / llama-bench |" in markdown and "tiny random llama" in markdown
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_truncated_model_keeps_vocab_and_drafts_for_its_source(tmp_path: Path, tiny_model_path: Path) -> None:
    # benchmarks/draft_decoding.py's bad draft model (gemma cut to its first blocks), here on the tiny model.
    import gguf

    from llamarcp import Llama
    from llamarcp.draft_model import DraftModel

    sys.path.insert(0, str(ROOT / "benchmarks"))
    draft_decoding = _load("draft_decoding")
    out = tmp_path / "first1.gguf"
    draft_decoding.truncate_model(tiny_model_path, 1, out)
    source, cut = gguf.GGUFReader(tiny_model_path), gguf.GGUFReader(out)
    arch = source.fields["general.architecture"].contents()
    assert source.fields[f"{arch}.block_count"].contents() > 1
    assert cut.fields[f"{arch}.block_count"].contents() == 1
    assert not any(t.name.startswith("blk.1.") for t in cut.tensors)
    assert cut.fields["tokenizer.ggml.tokens"].contents() == source.fields["tokenizer.ggml.tokens"].contents()
    with pytest.raises(SystemExit, match="keep 1"):
        draft_decoding.truncate_model(tiny_model_path, 0, tmp_path / "none.gguf")
    prompt = "one two three one two three one two"
    with Llama(str(tiny_model_path), n_ctx=128, verbose=False) as plain:
        expected = plain(prompt, max_tokens=12, temperature=0)["choices"][0]["text"]
    draft = DraftModel(out, num_pred_tokens=4)  # loads, and the vocab check against its source passes
    try:
        with Llama(str(tiny_model_path), n_ctx=128, verbose=False, draft_model=draft) as spec:
            assert spec(prompt, max_tokens=12, temperature=0)["choices"][0]["text"] == expected
    finally:
        draft.close()
