"""The rerank and KV-memory benchmarks (benchmarks/rerank.py, benchmarks/kv_memory.py): one real smoke run each,
llamarcp only (llama-server is not built in CI), so they cannot rot. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

from procs import run

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


rerank = _load("rerank")
kv_memory = _load("kv_memory")


def test_documents_are_fixed_and_sized() -> None:
    docs = rerank.documents(16, 80)
    assert docs == rerank.documents(16, 80) and len(set(docs)) == 16
    assert all(53 <= len(d.split()) <= 107 for d in docs)


def test_rerank_smoke_run(tmp_path: Path) -> None:
    proc = run([sys.executable, str(ROOT / "benchmarks" / "rerank.py"), "--smoke", "--out", str(tmp_path)],
               timeout=600, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "rerank.json").read_text())
    tiny = results["models"]["tiny"]
    assert tiny["notes"] == []
    cell = tiny["groups"]["1"][rerank.LLAMARCP]
    assert cell["errors"] == []
    (rate,) = cell["rounds"]
    assert math.isfinite(rate) and rate > 0
    scores = tiny["scores"][rerank.LLAMARCP]
    assert len(scores) == 16 and len(set(scores)) == 16
    text = (tmp_path / "RESULTS.md").read_text()
    assert rerank.BEGIN in text and rerank.END in text


def test_kv_memory_smoke_run(tmp_path: Path) -> None:
    proc = run(
        [sys.executable, str(ROOT / "benchmarks" / "kv_memory.py"), "--smoke", "--ctx", "512", "--out", str(tmp_path)],
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "kv_memory.json").read_text())["rows"]
    assert [r["contender"] for r in rows] == ["llamarcp", "llamarcp --swa-full", "llamarcp"]
    for row in rows:
        result = row["result"]
        assert "error" not in result, result
        assert result["kv_mib"] == result["kv_mib_health"] > 0  # llama.cpp's log line, and /health's figure
        assert result["rss_mib"] > 0
    unified, full, split = (r["result"] for r in rows)
    assert unified["kv_cells_health"] == split["kv_cells_health"] == 512  # 512 shared, or 4 x 128
    assert unified["kv_mib"] == full["kv_mib"] == split["kv_mib"]  # the tiny model has no sliding window
    text = (tmp_path / "RESULTS.md").read_text()
    assert kv_memory.BEGIN in text and kv_memory.END in text
