"""Speculative decoding speed-up: plain greedy vs `draft_model=LlamaPromptLookupDecoding()` on a repetitive
prompt (the model is asked to repeat a block of code), in one process, interleaved round by round.

    python benchmarks/draft_decoding.py [--model tiny|gemma|PATH] [--threads 1] [--tokens 96] [--rounds 3]
        [--parallel N] [--prompt code|json] [--draft-model tiny|gemma|gemma-first4|PATH]

`--parallel N` (N > 1) measures the continuous-batching scheduler's drafting (the server's `--spec-type
ngram-simple`) instead of the one-sequence engine's; `--prompt json` continues a JSON array whose rows differ by
a counter (drafts are often wrong there: the adaptive draft length must keep it as fast as plain decoding).

`--draft-model` drafts with a second model (llamarcp.draft_model.DraftModel, the server's `--model-draft`)
instead of prompt lookup; `--draft` is then its num_pred_tokens. gemma drafting for gemma is only a sanity bound
(every draft is accepted, but each costs as much as a target step): a real draft model is several times smaller.
`gemma-firstN` (N = 1..17) is a bad draft model: gemma-3-270m cut to its first N transformer blocks (same vocab
and tokenizer, written once by `truncated_gemma` into the benchmark work dir): cheaper than the target but mostly
wrong, the case where the adaptive control must keep speculation from costing speed.

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

from contenders import WORK_DIR  # noqa: E402
from run import gemma_model_path, tiny_model_path  # noqa: E402

CODE = "def scale(values, factor):\n    return [value * factor for value in values]\n\n"
PROMPT = "Repeat this code exactly, three times.\n\n" + CODE * 3 + "Here it is again:\n\n"
ROWS = "".join(f'  {{"id": {i}, "name": "item{i}", "price": {3 * i + 1}, "tags": ["a", "b"]}},\n' for i in range(8))
JSON_PROMPT = "Continue this JSON array with 40 more rows.\n\n[\n" + ROWS
PROMPTS = {"code": PROMPT, "json": JSON_PROMPT}


def truncated_gemma(blocks: int) -> Path:
    """gemma-3-270m cut to its first `blocks` transformer blocks, written once into the benchmark work dir."""
    source = gemma_model_path()
    path = WORK_DIR / "models" / f"{source.stem}-first{blocks}.gguf"
    if not path.is_file():
        truncate_model(source, blocks, path)
    return path


def truncate_model(source: Path, blocks: int, path: Path) -> None:
    """Write `source` with only its first `blocks` transformer blocks to `path` with the gguf package:
    `<arch>.block_count` rewritten, every other key (the vocab and the tokenizer too) and tensor copied."""
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    total = int(reader.fields[f"{arch}.block_count"].contents())
    if not 1 <= blocks < total:
        raise SystemExit(f"{source.name} has {total} blocks: keep 1..{total - 1}, not {blocks}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    writer = gguf.GGUFWriter(partial, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue  # written by GGUFWriter itself
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = blocks if field.name == f"{arch}.block_count" else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    kept = [t for t in reader.tensors if not t.name.startswith("blk.") or int(t.name.split(".")[1]) < blocks]
    for t in kept:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in kept:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    partial.replace(path)


def model_path(name: str) -> Path:
    """tiny, gemma, gemma-firstN (see truncated_gemma) or a file path."""
    if name == "tiny":
        return tiny_model_path()
    if name == "gemma":
        return gemma_model_path()
    if name.startswith("gemma-first") and name[len("gemma-first") :].isdigit():
        return truncated_gemma(int(name[len("gemma-first") :]))
    return Path(name)


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
    parser.add_argument(
        "--draft-model", help="tiny|gemma|gemma-firstN|PATH: draft with this model instead of prompt lookup"
    )
    args = parser.parse_args(argv)
    prompt = PROMPTS[args.prompt]

    from llamarcp import Llama
    from llamarcp.compat.speculative import LlamaPromptLookupDecoding

    path = model_path(args.model)
    common = {"n_ctx": 1024, "n_threads": args.threads, "n_threads_batch": args.threads, "n_parallel": args.parallel}
    plain = Llama(str(path), **common)
    drafter: Any = LlamaPromptLookupDecoding(args.ngram, args.draft)
    if args.draft_model:
        from llamarcp.draft_model import DraftModel

        draft_path = model_path(args.draft_model)
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
