"""`Llama(n_parallel=N, kv_unified=True)`: N sequences share `n_ctx` KV cells (llama-server's `-np N -c C
--kv-unified`) instead of N x n_ctx. A full cache drops idle prefix caches first, then ends the running
sequence holding the most cells with finish_reason "length"; every other answer is unchanged."""

from __future__ import annotations

import concurrent.futures
import logging
import re
from pathlib import Path

import pytest

from llamarcp import Llama

NO_EOS = {2: float("-inf")}
PROMPTS = [f"Story number {i} begins with a dragon and" for i in range(4)]


def greedy(llm: Llama, prompt: str, n: int) -> tuple[str, str, int]:
    out = llm.create_completion(prompt, max_tokens=n, temperature=0, logit_bias=NO_EOS)
    choice = out["choices"][0]
    return str(choice["text"]), str(choice["finish_reason"]), int(out["usage"]["completion_tokens"])


def test_cells_are_shared(tiny_model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sizes = {}
    for unified in (False, True):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="llamarcp.llama_cpp"):
            llm = Llama(str(tiny_model_path), n_ctx=256, n_parallel=4, n_threads=1, kv_unified=unified)
        with llm:
            sizes[unified] = llm.kv_cells()
            mib = llm.kv_cache_mib()
            assert llm.n_ctx == 256  # each sequence may still hold n_ctx tokens
        logged = re.search(r"llama_kv_cache: size = +([0-9.]+) MiB \(\s*(\d+) cells", caplog.text)
        assert logged is not None and int(logged.group(2)) == sizes[unified]
        assert mib == float(logged.group(1)) > 0  # llama.cpp's own account of the buffer
    assert sizes == {False: 1024, True: 256}
    with pytest.raises(TypeError, match="kv_unified"):
        Llama(str(tiny_model_path), n_ctx=64, n_parallel=2, kv_unified="yes")  # type: ignore[arg-type]


def test_full_shared_cache(tiny_model_path: Path) -> None:
    with Llama(str(tiny_model_path), n_ctx=256, n_threads=1) as alone:
        expected = [greedy(alone, p, 100)[0] for p in PROMPTS]
    with Llama(str(tiny_model_path), n_ctx=256, n_parallel=4, n_threads=1, kv_unified=True) as llm:
        # One after another, each fits: the idle caches of the earlier ones are dropped to make room (after
        # that a sequence's cells are no longer in order, which may round the last bits differently).
        sequential = [greedy(llm, p, 100) for p in PROMPTS]
        assert [r[1:] for r in sequential] == [("length", 100)] * 4
        assert [r[0] for r in sequential[:2]] == expected[:2]  # no eviction needed yet: exactly the same
        assert all(text[:12] == full[:12] for (text, _, _), full in zip(sequential, expected))
        # Together they need ~4 x 110 cells of 256: some end early, as if their context were full.
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda p: greedy(llm, p, 100), PROMPTS))
        assert all(reason == "length" and 0 < n <= 100 for _, reason, n in together)
        assert any(n == 100 for _, _, n in together) and any(n < 100 for _, _, n in together)
        assert sum(state["n_tokens"] for state in llm._scheduler.slot_states()) <= 256  # type: ignore[union-attr]
        assert greedy(llm, PROMPTS[0], 100)[1:] == ("length", 100)  # and it keeps serving


@pytest.mark.slow
def test_sliding_window_cache_like_llama_server(default_model_path: Path) -> None:
    # gemma-3's windowed layers: llama-server keeps them to their window (swa_full off), which is what
    # llamarcp's server does by default; with swa_full the cache is as large as for full attention.
    sizes = {}
    for swa_full in (True, False):
        with Llama(
            str(default_model_path), n_ctx=4096, n_parallel=4, n_threads=1, kv_unified=True, swa_full=swa_full
        ) as llm:
            sizes[swa_full] = llm.kv_cache_mib()
            assert llm.kv_cells() == 4096
    # 12 MiB for the 3 full-attention layers either way; the 15 windowed layers: 4 x 512 + 512 cells instead of
    # 4096 (measured on llama-server b11549 -np 4 -c 4096 -kvu: 12.00 + 37.50 MiB, benchmarks/kv_memory.py).
    assert sizes == {True: 72.0, False: 49.5}
