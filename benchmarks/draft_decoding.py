"""Speculative decoding speed-up: plain greedy vs `draft_model=LlamaPromptLookupDecoding()` on a repetitive
prompt (the model is asked to repeat a block of code), in one process, interleaved round by round.

    python benchmarks/draft_decoding.py [--model tiny|gemma|PATH] [--threads 1] [--tokens 96] [--rounds 3]
        [--parallel N] [--prompt code|json] [--draft-model tiny|gemma|PATH]

`--parallel N` (N > 1) measures the continuous-batching scheduler's drafting (the server's `--spec-type
ngram-simple`) instead of the one-sequence engine's; `--prompt json` continues a JSON array whose rows differ by
a counter (drafts are often wrong there: the adaptive draft length must keep it as fast as plain decoding).

`--draft-model` drafts with a second model (llamarcp.draft_model.DraftModel, the server's `--model-draft`)
instead of prompt lookup; `--draft` is then its num_pred_tokens. gemma drafting for gemma is only a sanity bound
(every draft is accepted, but each costs as much as a target step): a real draft model is several times smaller.

Prints one Markdown table row: tokens/s of both, the median per-round speed-up with its range, the share of
drafts accepted, and whether the greedy texts were identical (they must be).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from run import gemma_model_path, tiny_model_path  # noqa: E402

CODE = "def scale(values, factor):\n    return [value * factor for value in values]\n\n"
PROMPT = "Repeat this code exactly, three times.\n\n" + CODE * 3 + "Here it is again:\n\n"
ROWS = "".join(f'  {{"id": {i}, "name": "item{i}", "price": {3 * i + 1}, "tags": ["a", "b"]}},\n' for i in range(8))
JSON_PROMPT = "Continue this JSON array with 40 more rows.\n\n[\n" + ROWS
PROMPTS = {"code": PROMPT, "json": JSON_PROMPT}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ngram", type=int, default=2)
    parser.add_argument("--draft", type=int, default=10, help="num_pred_tokens")
    parser.add_argument("--parallel", type=int, default=1, help="n_parallel (> 1: the batching scheduler)")
    parser.add_argument("--prompt", choices=sorted(PROMPTS), default="code")
    parser.add_argument("--draft-model", help="tiny|gemma|PATH: draft with this model instead of prompt lookup")
    args = parser.parse_args(argv)
    prompt = PROMPTS[args.prompt]

    from llamarcp import Llama
    from llamarcp.compat.speculative import LlamaPromptLookupDecoding

    models = {"tiny": tiny_model_path, "gemma": gemma_model_path}
    path = models.get(args.model, lambda: Path(args.model))()
    common = {"n_ctx": 1024, "n_threads": args.threads, "n_threads_batch": args.threads, "n_parallel": args.parallel}
    plain = Llama(str(path), **common)
    drafter: Any = LlamaPromptLookupDecoding(args.ngram, args.draft)
    if args.draft_model:
        from llamarcp.draft_model import DraftModel

        draft_path = models.get(args.draft_model, lambda: Path(args.draft_model))()
        drafter = DraftModel(draft_path, num_pred_tokens=args.draft)
    spec = Llama(str(path), draft_model=drafter, **common)
    rates: dict[str, list[float]] = {"plain": [], "draft": []}
    ratios, accepted, drafted, texts = [], 0.0, 0.0, set()
    for round_no in range(args.rounds):
        order = [("plain", plain), ("draft", spec)]
        if round_no % 2:
            order.reverse()
        this_round = {}
        for name, llm in order:
            if args.parallel == 1:
                llm.reset()
                llm.eval(llm.tokenize(prompt.encode()))  # prompt evaluated outside the clock
            else:
                llm(prompt, max_tokens=1, temperature=0)  # the scheduler's slot caches the prompt
            started = time.perf_counter()
            text = llm(prompt, max_tokens=args.tokens, temperature=0)["choices"][0]["text"]
            elapsed = time.perf_counter() - started
            texts.add(text)
            n = llm.last_timings["predicted_n"]
            this_round[name] = n / elapsed
            rates[name].append(n / elapsed)
            if name == "draft":
                drafted += llm.last_timings.get("draft_n", 0.0)
                accepted += llm.last_timings.get("draft_accepted_n", 0.0)
        ratios.append(this_round["draft"] / this_round["plain"])
    identical = len(texts) == 1
    name = Path(path).name + (f" + draft {Path(drafter.model_path).name}" if args.draft_model else "")
    print(
        f"| {name} | {args.prompt} | {args.parallel} | {args.threads} | {args.tokens} "
        f"| {statistics.median(rates['plain']):.1f} "
        f"| {statistics.median(rates['draft']):.1f} | **{statistics.median(ratios):.2f}x** "
        f"({min(ratios):.2f}-{max(ratios):.2f}) | {accepted / max(drafted, 1):.0%} | {'yes' if identical else 'NO'} |"
    )
    plain.close()
    spec.close()
    if args.draft_model:
        drafter.close()
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
