"""Where the time of one generated token goes in `llamarcp.Llama`, layer by layer, in one process.

    python benchmarks/profile_tokens.py [--model tiny|gemma|PATH] [--threads N] [--tokens 256] [--rounds 5]

Four loops over the same context, interleaved round by round (the machine is noisy):
  decode        llama_decode of one token through cffi, like llama-bench tg (no sampling at all)
  decode+greedy the same plus llama_sampler_sample on a greedy chain (argmax over the whole vocab, in C)
  decode+numpy argmax  the same greedy pick done by numpy.argmax on the logits (no token-data array)
  decode+backend greedy  llama.cpp's experimental backend sampling (argmax inside the decode graph)
  generate      Llama.generate(temp=0): the Python generation loop, token ids only
  stream        Llama.create_completion(stream=True, temperature=0): detokenize, stop handling, chunk dicts
The differences between neighbouring rows are the cost of each layer. Then cProfile of the stream loop.
Uses a few private attributes of Llama (context pointer, memory) to build the raw C loops.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from run import gemma_model_path, physical_cores, tiny_model_path  # noqa: E402

PROMPT = {"tiny": "Once upon a time", "gemma": "The history of the printing press begins in"}


def raw_loops(llm: Any, n: int) -> dict[str, Any]:
    from llamarcp import ffi, lib

    ctx = llm._context().ptr
    memory = llm._memory
    token = ffi.new("int32_t[1]", [llm.token_bos])
    batch = lib.llama_batch_get_one(token, 1)
    params = lib.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = lib.llama_sampler_chain_init(params)
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())

    def decode_only() -> float:
        lib.llama_memory_clear(memory, True)
        decode = lib.llama_decode
        started = time.perf_counter()
        for _ in range(n):
            if decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        return (time.perf_counter() - started) / n

    def decode_sampled_by(sampler: Any) -> float:
        """Seconds per token of decode + `llama_sampler_sample(sampler)`, from an empty memory."""
        lib.llama_memory_clear(memory, True)
        decode, sample = lib.llama_decode, lib.llama_sampler_sample
        token[0] = llm.token_bos
        started = time.perf_counter()
        for _ in range(n):
            if decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            token[0] = sample(sampler, ctx, -1)
        return (time.perf_counter() - started) / n

    def decode_greedy() -> float:
        return decode_sampled_by(chain)

    def decode_backend_greedy() -> float:
        # [EXPERIMENTAL] llama.cpp backend sampling: argmax inside the decode graph; sample() just reads it.
        bchain = lib.llama_sampler_chain_init(params)
        lib.llama_sampler_chain_add(bchain, lib.llama_sampler_init_greedy())
        if not lib.llama_set_sampler(ctx, 0, bchain):
            lib.llama_sampler_free(bchain)
            return float("nan")
        try:
            return decode_sampled_by(bchain)
        finally:
            lib.llama_set_sampler(ctx, 0, ffi.NULL)
            lib.llama_sampler_free(bchain)

    def decode_argmax() -> float:
        # Greedy without the sampler's token-data array: numpy argmax straight on the logits (same token, first max).
        import numpy as np

        lib.llama_memory_clear(memory, True)
        decode, logits_ith, n_vocab = lib.llama_decode, lib.llama_get_logits_ith, int(llm.n_vocab)
        token[0] = llm.token_bos
        started = time.perf_counter()
        for _ in range(n):
            if decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            token[0] = int(np.argmax(np.frombuffer(ffi.buffer(logits_ith(ctx, -1), 4 * n_vocab), dtype=np.float32)))
        return (time.perf_counter() - started) / n

    def sample_only() -> float:
        sample = lib.llama_sampler_sample
        started = time.perf_counter()
        for _ in range(n):
            sample(chain, ctx, -1)
        return (time.perf_counter() - started) / n

    try:
        return {
            "decode": decode_only(),
            "decode+greedy": decode_greedy(),
            "decode+numpy argmax": decode_argmax(),
            "greedy sample alone": sample_only(),
            "decode+backend greedy": decode_backend_greedy(),
        }
    finally:
        lib.llama_sampler_free(chain)
        llm.reset()  # the raw loops bypassed the Llama's token history


def generate_loop(llm: Any, prompt_tokens: list[int], n: int) -> float:
    llm.reset()
    gen = llm.generate(prompt_tokens, temp=0.0, repeat_penalty=1.0)
    next(gen)  # the prompt is evaluated before the first token: start the clock after it
    count, started = 0, time.perf_counter()
    for _ in gen:
        count += 1
        if count >= n - 1:
            break
    elapsed = time.perf_counter() - started
    gen.close()
    return elapsed / max(count, 1)


def stream_loop(llm: Any, prompt: str, n: int) -> tuple[float, int]:
    llm.reset()
    it = llm.create_completion(prompt, max_tokens=n, temperature=0.0, repeat_penalty=1.0, stream=True)
    next(it)
    started = time.perf_counter()
    for _chunk in it:
        pass
    elapsed = time.perf_counter() - started
    n_tokens = int(llm.last_timings["predicted_n"])
    return elapsed / max(n_tokens - 1, 1), n_tokens


def instrumented_stream(llm: Any, prompt: str, n: int) -> dict[str, float]:
    """Stream once with llama_decode/llama_sampler_sample wrapped in timers: C time vs everything else, per token.

    Subtracting the measured C time of each call makes the Python share independent of how slow decoding is;
    the CPU-time columns (this thread only) also drop the time other processes took the core away.
    """
    from llamarcp import lib

    names = ("llama_decode", "llama_sampler_sample")
    wall = dict.fromkeys(names, 0.0)
    cpu = dict.fromkeys(names, 0.0)
    originals = {name: getattr(lib, name) for name in names}
    perf, tcpu = time.perf_counter, time.thread_time

    def timed(name: str, fn: Any) -> Any:
        def call(*args: Any) -> Any:
            w0, c0 = perf(), tcpu()
            try:
                return fn(*args)
            finally:
                cpu[name] += tcpu() - c0
                wall[name] += perf() - w0

        return call

    probe = timed("llama_decode", lambda: None)
    t0 = perf()
    for _ in range(10000):
        probe()
    wrapper_cost = (perf() - t0) / 10000  # the timer itself, subtracted from the Python share

    llm.reset()
    for name, fn in originals.items():
        lib.__dict__[name] = timed(name, fn)  # LibProxy caches resolved functions in its __dict__
    try:
        it = llm.create_completion(prompt, max_tokens=n, temperature=0.0, repeat_penalty=1.0, stream=True)
        next(it)  # prompt evaluated and first token out: time only the steady state
        for name in names:
            wall[name] = cpu[name] = 0.0
        w0, c0 = perf(), tcpu()
        for _chunk in it:
            pass
        total_wall, total_cpu = perf() - w0, tcpu() - c0
    finally:
        for name, fn in originals.items():
            lib.__dict__[name] = fn
    steps = max(int(llm.last_timings["predicted_n"]) - 1, 1)
    overhead = 2 * steps * wrapper_cost
    return {
        "total (wall)": total_wall / steps,
        "llama_decode (wall)": wall["llama_decode"] / steps,
        "llama_sampler_sample (wall)": wall["llama_sampler_sample"] / steps,
        "rest: Python, numpy argmax (wall)": (total_wall - sum(wall.values()) - overhead) / steps,
        "rest (thread cpu)": (total_cpu - sum(cpu.values()) - overhead) / steps,
        "llama_sampler_sample (thread cpu)": cpu["llama_sampler_sample"] / steps,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--threads", type=int, default=physical_cores())
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile-top", type=int, default=18)
    args = p.parse_args()

    from llamarcp import Llama

    key = args.model if args.model in PROMPT else "tiny"
    path = tiny_model_path() if args.model == "tiny" else gemma_model_path() if args.model == "gemma" else args.model
    llm = Llama(str(path), n_ctx=args.tokens + 64, n_threads=args.threads, flash_attn=True, verbose=False)
    prompt = PROMPT[key]
    prompt_tokens = llm.tokenize(prompt.encode())

    rows: dict[str, list[float]] = {}
    n_stream = 0
    for _ in range(args.rounds + 1):  # round 0 warms up and is dropped
        sample = raw_loops(llm, args.tokens)
        sample["generate"] = generate_loop(llm, prompt_tokens, args.tokens)
        sample["stream"], n_stream = stream_loop(llm, prompt, args.tokens)
        for name, value in sample.items():
            rows.setdefault(name, []).append(value)
    medians = {name: statistics.median(values[1:]) for name, values in rows.items()}
    minima = {name: min(values[1:]) for name, values in rows.items()}

    print(f"model {path}, {args.threads} threads, {args.tokens} tokens/loop, {args.rounds} rounds (median)")
    print(f"stream loop produced {n_stream} tokens (greedy may stop early at end-of-generation)")
    print(f"{'loop':22s} {'us/token':>10s} {'min us':>10s} {'tokens/s':>10s} {'vs decode':>10s}")
    names = (
        "decode",
        "decode+greedy",
        "decode+numpy argmax",
        "decode+backend greedy",
        "generate",
        "stream",
        "greedy sample alone",
    )
    for name in names:
        us, ratio = medians[name] * 1e6, medians["decode"] / medians[name]
        print(f"{name:22s} {us:10.1f} {minima[name] * 1e6:10.1f} {1e6 / us:10.0f} {ratio:10.3f}")
    for label, stats in (("median", medians), ("min", minima)):
        print(
            f"layer costs from the {label}s (us/token): "
            f"greedy sampling {1e6 * (stats['decode+greedy'] - stats['decode']):.1f}, "
            f"Python generate loop {1e6 * (stats['generate'] - stats['decode+greedy']):.1f}, "
            f"detokenize+stream chunks {1e6 * (stats['stream'] - stats['generate']):.1f}"
        )

    parts: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, value in instrumented_stream(llm, prompt, args.tokens).items():
            parts.setdefault(name, []).append(value)
    print("\nstreamed create_completion, C calls timed individually (us/token, median over rounds):")
    for name, values in parts.items():
        print(f"  {name:34s} {statistics.median(values) * 1e6:9.1f}  (min {min(values) * 1e6:.1f})")
    print()

    profiler = cProfile.Profile()
    llm.reset()
    profiler.enable()
    for _chunk in llm.create_completion(prompt, max_tokens=args.tokens, temperature=0.0, stream=True):
        pass
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.profile_top)
    print(out.getvalue())
    llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
