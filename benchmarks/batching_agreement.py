"""How often a request decoded among others (continuous batching) gives the text it gives alone, on gemma.

llama.cpp's CPU kernels round a row differently depending on where it sits in a batch, so a greedy request
batched with others can pick another token once two candidates are nearly tied. This measures it instead of
assuming it: `python benchmarks/batching_agreement.py [--parallel 4] [--tokens 32]`.
"""

from __future__ import annotations

import argparse
import json
import threading

from llamarcp import Llama
from llamarcp.models import default_model_path

PROMPTS = [
    "The three primary colors are",
    "Once upon a time, in a small village,",
    "The capital of France is",
    "def fibonacci(n):",
    "Water boils at a temperature of",
    "The best way to learn a language is",
    "In 1969, the first humans",
    "A haiku about the sea:",
]


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    path = str(default_model_path())
    with Llama(path, n_ctx=512, n_threads=args.threads) as solo:
        alone = [solo(p, max_tokens=args.tokens, temperature=0)["choices"][0]["text"] for p in PROMPTS]
    together: dict[int, str] = {}
    with Llama(path, n_ctx=512, n_threads=args.threads, n_parallel=args.parallel) as llm:

        def ask(i: int) -> None:
            together[i] = llm(PROMPTS[i], max_tokens=args.tokens, temperature=0)["choices"][0]["text"]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    same = sum(together[i] == alone[i] for i in range(len(PROMPTS)))
    prefix = [common_prefix(together[i], alone[i]) / max(1, len(alone[i])) for i in range(len(PROMPTS))]
    print(
        json.dumps(
            {
                "requests": len(PROMPTS),
                "n_parallel": args.parallel,
                "identical": same,
                "mean_common_prefix_fraction": round(sum(prefix) / len(prefix), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
