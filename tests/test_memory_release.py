"""Freed memory goes back to the system: a dropped or closed Llama frees its model at once, and glibc's
`malloc_trim` returns the heap pages it freed, so RSS stays flat over many load/drop cycles."""

from __future__ import annotations

import gc
import sys
import time
import weakref
from pathlib import Path

import pytest
from procs import run

from llamarcp import Llama

CYCLES_CHILD = """
import sys
from llamarcp import Llama

def rss_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

after = {}
for cycle in range(1, int(sys.argv[2]) + 1):
    llm = Llama(sys.argv[1], n_ctx=256, n_threads=1)
    llm.eval(llm.tokenize(b"The quick brown fox"))
    if cycle % 2:
        llm.close()  # half closed, half only dropped
    del llm
    if cycle in (1, int(sys.argv[2])):
        after[cycle] = rss_kb()
print(*after.values())
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_rss_stays_flat_over_300_load_drop_cycles(tiny_model_path: Path) -> None:
    """The issue's probe: 45 -> 280 MB after 300 cycles before; within 10% of the first cycle now."""
    proc = run([sys.executable, "-c", CYCLES_CHILD, tiny_model_path, "300"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, last = map(int, proc.stdout.split())
    assert last <= first * 1.10, f"RSS {first / 1024:.1f} MB after the first cycle, {last / 1024:.1f} MB after 300"


def test_a_dropped_llama_frees_its_model_at_once(tiny_model_path: Path) -> None:
    """No reference cycle through the Llama: dropping the last reference frees the model without the GC."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        llm = Llama(str(tiny_model_path), n_ctx=64, n_threads=1)
        llm("Hello", max_tokens=2, temperature=0)
        model = weakref.ref(llm._model)
        del llm
        assert model() is None
    finally:
        if was_enabled:
            gc.enable()


def test_a_dropped_batching_llama_lets_its_model_go_without_waiting_for_the_idle_thread(tiny_model_path: Path) -> None:
    """With n_parallel the decoding thread holds the context; dropping the Llama closes it, so the thread lets go
    at once instead of after its idle timeout (llamarcp.batching.IDLE_EXIT_S)."""
    from llamarcp.batching import IDLE_EXIT_S

    llm = Llama(str(tiny_model_path), n_ctx=64, n_threads=1, n_parallel=2)
    llm("Hello", max_tokens=2, temperature=0)
    model = weakref.ref(llm._model)
    del llm
    deadline = time.monotonic() + IDLE_EXIT_S / 3  # a bound on the wait, well under the idle timeout
    while model() is not None and not model().closed and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.01)
    assert model() is None or model().closed  # type: ignore[union-attr]


def test_each_freed_model_trims_the_heap_once(tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llamarcp._core as core

    calls: list[int] = []
    real = core.release_freed_memory

    def counting() -> None:
        calls.append(1)
        real()

    monkeypatch.setattr(core, "release_freed_memory", counting)
    llm = Llama(str(tiny_model_path), n_ctx=64, n_threads=1)
    llm.close()
    llm.close()
    assert len(calls) == 1  # once per freed model, not per close() call
    if sys.platform.startswith("linux") and _is_glibc():
        assert core._malloc_trim() is not None


def _is_glibc() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc"
