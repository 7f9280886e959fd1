#!/usr/bin/env python3
"""How much `from llamarcp import lib, ffi` adds to interpreter start (budget: 40 ms).

    python benchmarks/import_time.py            # 20 interleaved runs of each, prints medians and the overhead
    python benchmarks/import_time.py --runs 50 --json
    python benchmarks/import_time.py --check    # exit 1 when the median overhead is over the budget
    python benchmarks/import_time.py --drop-in  # `import llama_cpp` after install_as_llama_cpp() instead

Both commands run in fresh interpreters (`python -c ...`), interleaved so machine load hits both alike;
the import loads the real libllama (dlopen), so build it first with `python build_lib.py`.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_MS = 40.0
BARE = "pass"
IMPORT = "from llamarcp import lib, ffi; lib.llama_backend_init"
#: llama-cpp-python's import, served by llamarcp (its ctypes face builds nothing until a name is used).
IMPORT_DROP_IN = "import llamarcp; llamarcp.install_as_llama_cpp(); import llama_cpp, llama_cpp.llama_cpp"


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _once(code: str) -> tuple[float, float]:
    """(wall ms, CPU ms) of one fresh interpreter running `code`; CPU time is steadier on a busy machine."""
    cpu = _cpu_children()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return (time.perf_counter() - start) * 1000.0, (_cpu_children() - cpu) * 1000.0


def measure(runs: int, code: str = IMPORT) -> dict[str, float]:
    from contenders import compile_bytecode  # benchmarks/ is on sys.path: run as a script, or from run.py

    compile_bytecode()  # .pyc files first, as `pip install` writes them
    _once(code)  # warm the page cache: the first dlopen of a fresh build reads it from disk
    bare, full = [], []
    for _ in range(runs):
        bare.append(_once(BARE))
        full.append(_once(code))
    return {
        "runs": runs,
        "bare_median_ms": statistics.median(w for w, _ in bare),
        "import_median_ms": statistics.median(w for w, _ in full),
        "overhead_median_ms": statistics.median(f[0] - b[0] for f, b in zip(full, bare)),
        "overhead_min_ms": min(w for w, _ in full) - min(w for w, _ in bare),
        "overhead_cpu_median_ms": statistics.median(f[1] - b[1] for f, b in zip(full, bare)),
        "budget_ms": BUDGET_MS,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when the median overhead exceeds the budget")
    parser.add_argument("--drop-in", action="store_true", help=f"time `{IMPORT_DROP_IN}` instead")
    args = parser.parse_args(argv)
    code = IMPORT_DROP_IN if args.drop_in else IMPORT
    result = measure(args.runs, code)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(
            f"bare interpreter: {result['bare_median_ms']:.1f} ms, with `{code}`: "
            f"{result['import_median_ms']:.1f} ms (medians of {args.runs})\n"
            f"overhead: {result['overhead_median_ms']:.1f} ms median, {result['overhead_min_ms']:.1f} ms best case, "
            f"{result['overhead_cpu_median_ms']:.1f} ms CPU (median); budget {BUDGET_MS:.0f} ms"
        )
    return 1 if args.check and result["overhead_median_ms"] > BUDGET_MS else 0


if __name__ == "__main__":
    sys.exit(main())
