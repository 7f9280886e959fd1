"""Image in, 32 tokens out: llamarcp against llama.cpp's `llama-mtmd-cli` on the same libllama/libmtmd build.

Gemma-3-270m (the `model` extra) with a random `gemma3` projector (tests/tiny_mmproj.py), one PNG, greedy,
end-of-generation tokens banned on both sides so each produces exactly 32 tokens. Per round (interleaved):

- llama-mtmd-cli: image encode ("mtmd batch encoding done in") + prompt eval + eval, from its log lines (its
  model load and image file decode are outside the measured span);
- llamarcp: the same span (`last_timings`: encode + prefill, then 32 tokens) of a `create_chat_completion` on a
  fresh Llama (so the image is encoded, not cached), and the whole call besides (template compiled for the new
  Llama, image checks, image file decode and preprocessing included);
- llama-cpp-python 0.3.36 (its venv, benchmarks/contenders.py) on libllama + libmtmd built from the llama.cpp it
  vendors: the whole `create_chat_completion` of a fresh Llama with a `Llava15ChatHandler` subclass carrying
  gemma's prompt format (the usual way to give it a format; the GGUF has no chat template for
  `MTMDChatHandler`), in a fresh process per round. Its handler creates the mtmd context inside that first call.

    flock /tmp/llamarcp-heavy.lock python benchmarks/multimodal.py [--rounds 5] [--threads 2] [--no-lcp]

Needs `python build_lib.py --mtmd --tools llama-mtmd-cli` (and, for llama-cpp-python, its venv and
`build_lib.py --source <its tree> --mtmd`, both made on first use). Writes benchmarks/multimodal.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
N_PREDICT = 32
PROMPT = "Describe the image."


def _load(name: str) -> Any:
    if str(ROOT / "tests") not in sys.path:
        sys.path.append(str(ROOT / "tests"))  # tiny_mmproj imports tiny_model's writer
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "tests" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mtmd_cli(lib_dir: Path) -> Path:
    cli = lib_dir.parent / "bin" / "llama-mtmd-cli"
    if not cli.is_file():
        raise SystemExit(f"{cli} is missing: run `python build_lib.py --mtmd --tools llama-mtmd-cli`")
    return cli


def run_mtmd_cli(cli: Path, model: Path, mmproj: Path, image: Path, threads: int) -> dict[str, float]:
    cmd = [
        str(cli),
        "-m",
        str(model),
        "--mmproj",
        str(mmproj),
        "--image",
        str(image),
        "-p",
        PROMPT,
        "-n",
        str(N_PREDICT),
        "--temp",
        "0",
        "--ignore-eos",
        "-t",
        str(threads),
        "-c",
        "1024",
        "--no-warmup",
        # the model extra's GGUF has no chat template (llamarcp guesses gemma's); -v prints llama_perf's timings
        "--chat-template",
        "gemma",
        "-v",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"llama-mtmd-cli failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    log = proc.stderr + proc.stdout
    encode = sum(float(m) for m in re.findall(r"encoding done in (\d+(?:\.\d+)?) ms", log))
    prompt = re.search(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens", log)
    gen = re.search(r"\beval time =\s*([\d.]+) ms /\s*(\d+) runs", log)
    if prompt is None or gen is None:
        raise RuntimeError(f"no timings in llama-mtmd-cli's log:\n{log[-2000:]}")
    total = encode + float(prompt.group(1)) + float(gen.group(1))
    return {
        "total_ms": total,
        "encode_ms": encode,
        "prompt_ms": float(prompt.group(1)),
        "prompt_tokens": float(prompt.group(2)),
        "eval_ms": float(gen.group(1)),
        "eval_runs": float(gen.group(2)),
    }


def run_llamarcp(model: Path, mmproj: Path, image: Path, threads: int) -> dict[str, float]:
    from llamarcp import Llama

    with Llama(str(model), mmproj=mmproj, n_ctx=1024, n_threads=threads, verbose=False) as llm:
        banned = {t: float("-inf") for t in {llm.token_eos(), *llm.tokenize(b"<end_of_turn>", False, True)}}
        messages = [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": str(image)}}, {"type": "text", "text": PROMPT}],
            }
        ]
        started = time.perf_counter()
        reply = llm.create_chat_completion(messages, max_tokens=N_PREDICT, temperature=0, logit_bias=banned)
        total = (time.perf_counter() - started) * 1e3
        timings = llm.last_timings
    assert reply["usage"]["completion_tokens"] == N_PREDICT, reply["usage"]
    return {
        "call_ms": total,
        "total_ms": timings["prompt_ms"] + timings["predicted_ms"],
        "prompt_ms": timings["prompt_ms"],
        "prompt_tokens": float(reply["usage"]["prompt_tokens"]),
        "eval_ms": timings["predicted_ms"],
    }


#: Run by llama-cpp-python's interpreter (argv: model, mmproj, image URL, threads, prompt, n_predict).
LCP_CHILD = r"""
import json, sys, time
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Llava15ChatHandler


class Gemma3ChatHandler(Llava15ChatHandler):
    DEFAULT_SYSTEM_MESSAGE = None
    CHAT_FORMAT = (
        "{% for message in messages %}"
        "{% if message.role == 'user' %}<start_of_turn>user\n"
        "{% if message.content is string %}{{ message.content }}{% else %}"
        "{% for content in message.content %}"
        "{% if content.type == 'image_url' %}{{ content.image_url.url }}{% endif %}"
        "{% endfor %}"
        "{% for content in message.content %}"
        "{% if content.type == 'text' %}{{ content.text }}{% endif %}"
        "{% endfor %}{% endif %}<end_of_turn>\n{% endif %}"
        "{% if message.role == 'assistant' %}<start_of_turn>model\n{{ message.content }}<end_of_turn>\n{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )


model, mmproj, image_url, threads, prompt, n_predict = sys.argv[1:7]
llm = Llama(
    model_path=model,
    chat_handler=Gemma3ChatHandler(clip_model_path=mmproj, verbose=False),
    n_ctx=1024,
    n_threads=int(threads),
    n_threads_batch=int(threads),
    verbose=False,
)
banned = {t: float("-inf") for t in {llm.token_eos(), *llm.tokenize(b"<end_of_turn>", add_bos=False, special=True)}}
parts = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": prompt}]
messages = [{"role": "user", "content": parts}]
started = time.perf_counter()
reply = llm.create_chat_completion(messages=messages, max_tokens=int(n_predict), temperature=0, logit_bias=banned)
call_ms = (time.perf_counter() - started) * 1e3
print(json.dumps({"call_ms": call_ms, "prompt_tokens": reply["usage"]["prompt_tokens"],
                  "completion_tokens": reply["usage"]["completion_tokens"]}))
"""


def run_llama_cpp_python(
    python: Path, lib_dir: Path, model: Path, mmproj: Path, image: Path, threads: int
) -> dict[str, float]:
    import os

    from contenders import WORK_DIR

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LLAMARCP_LIB_PATH")}
    env.update(LLAMA_CPP_LIB_PATH=str(lib_dir), MTMD_CPP_LIB=str(lib_dir))
    argv = [str(python), "-c", LCP_CHILD, str(model), str(mmproj), image.as_uri(), str(threads), PROMPT]
    # cwd: not the repository root, where ./llamarcp would sit beside llama-cpp-python's own package
    proc = subprocess.run([*argv, str(N_PREDICT)], capture_output=True, text=True, timeout=300, env=env, cwd=WORK_DIR)
    if proc.returncode != 0:
        raise RuntimeError(f"llama-cpp-python failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["completion_tokens"] == N_PREDICT, out
    return {"call_ms": out["call_ms"], "prompt_tokens": float(out["prompt_tokens"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "multimodal.json"))
    parser.add_argument("--no-lcp", action="store_true", help="leave llama-cpp-python 0.3.36 out")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from llamarcp import _cache, _lib, lib
    from llamarcp.models import default_model_path

    lib.llama_max_devices()
    loaded = _lib.loaded_path()
    assert loaded is not None
    cli = _mtmd_cli(Path(loaded).parent)
    model = Path(default_model_path())
    work = _cache.cache_root() / "bench-multimodal"
    mmproj = _load("tiny_mmproj").write_tiny_mmproj(work / "mmproj-gemma3-random.gguf", "gemma3", 640)
    image = work / "image.png"
    image.write_bytes(_load("media_files").png(256, 192, seed=1))
    rows: dict[str, list[dict[str, float]]] = {"llama-mtmd-cli": [], "llamarcp": []}
    lcp: tuple[Path, Path] | None = None
    if not args.no_lcp:
        import contenders

        lcp = (contenders.ensure_llama_cpp_python(), contenders.lcp_mtmd_lib_dir())
        rows["llama-cpp-python"] = []
    run_mtmd_cli(cli, model, mmproj, image, args.threads)  # warm the page cache for all
    run_llamarcp(model, mmproj, image, args.threads)
    if lcp is not None:
        run_llama_cpp_python(*lcp, model, mmproj, image, args.threads)
    for _ in range(args.rounds):
        rows["llama-mtmd-cli"].append(run_mtmd_cli(cli, model, mmproj, image, args.threads))
        rows["llamarcp"].append(run_llamarcp(model, mmproj, image, args.threads))
        if lcp is not None:
            rows["llama-cpp-python"].append(run_llama_cpp_python(*lcp, model, mmproj, image, args.threads))
    median = {k: statistics.median(r["total_ms"] for r in v) for k, v in rows.items() if k != "llama-cpp-python"}
    median["llamarcp (whole call)"] = statistics.median(r["call_ms"] for r in rows["llamarcp"])
    ratio = median["llama-mtmd-cli"] / median["llamarcp"]
    result: dict[str, Any] = {
        "rounds": rows,
        "median_total_ms": median,
        "speed_vs_llama_mtmd_cli": ratio,
        "threads": args.threads,
        "library": str(loaded),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if lcp is not None:
        median["llama-cpp-python (whole call)"] = statistics.median(r["call_ms"] for r in rows["llama-cpp-python"])
        result["speed_vs_llama_cpp_python"] = median["llama-cpp-python (whole call)"] / median["llamarcp (whole call)"]
        result["llama_cpp_python_library"] = str(lcp[1])
    # the fastest round of each: on a shared machine the least disturbed one (the medians are the headline)
    result["min_ms"] = {
        "llama-mtmd-cli": min(r["total_ms"] for r in rows["llama-mtmd-cli"]),
        "llamarcp": min(r["total_ms"] for r in rows["llamarcp"]),
        "llamarcp (whole call)": min(r["call_ms"] for r in rows["llamarcp"]),
        **({"llama-cpp-python (whole call)": min(r["call_ms"] for r in rows["llama-cpp-python"])} if lcp else {}),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"gemma-3-270m + random gemma3 projector, {args.threads} threads, image + prefill + {N_PREDICT} tokens:")
    for name, value in median.items():
        print(f"  {name:22s} {value:8.1f} ms (median of {args.rounds})")
    print(
        f"  llamarcp speed / llama-mtmd-cli = {ratio:.2f}x (same span); whole call: "
        f"{median['llama-mtmd-cli'] / median['llamarcp (whole call)']:.2f}x"
    )
    if lcp is not None:
        print(f"  llamarcp speed / llama-cpp-python = {result['speed_vs_llama_cpp_python']:.2f}x (whole call each)")
    print("  fastest rounds: " + ", ".join(f"{name} {value:.1f} ms" for name, value in result["min_ms"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
