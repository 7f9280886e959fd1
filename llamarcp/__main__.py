"""`python -m llamarcp`: generate text like llama.cpp's llama-cli, with the same flag names where they overlap.

python -m llamarcp -m model.gguf -p "Hello" -n 20     # stream a completion to stdout, timings on stderr
python -m llamarcp -p "Hello"                          # default model (pip install 'llamarcp[model]')
python -m llamarcp -m model.gguf -i                    # chat loop with the model's chat template
python -m llamarcp -m M --mmproj P --image a.png -p "Describe it"   # one chat turn about an image
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from llamarcp.errors import LlamaError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llamarcp",
        description="Generate text with llama.cpp through llamarcp (flags follow llama-cli).",
    )
    p.add_argument("-m", "--model", help="GGUF model path (default: gemma-3-270m from the `model` extra)")
    p.add_argument("-p", "--prompt", help="prompt to start generation with (first user message with -i)")
    p.add_argument("-f", "--file", help="read the prompt from this file")
    p.add_argument("-sys", "--system-prompt", dest="system_prompt", help="system message for -i chat")
    p.add_argument(
        "-n",
        "--n-predict",
        "--predict",
        dest="n_predict",
        type=int,
        default=-1,
        help="tokens to predict (-1 = until end of generation or a full context; default -1)",
    )
    p.add_argument(
        "-c",
        "--ctx-size",
        dest="ctx_size",
        type=int,
        default=4096,
        help="context size in tokens (0 = the model's training context; default 4096)",
    )
    p.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=2048, help="logical batch size")
    p.add_argument("-ub", "--ubatch-size", dest="ubatch_size", type=int, default=512, help="physical batch size")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads for generation (default: physical cores)")
    p.add_argument(
        "-tb",
        "--threads-batch",
        dest="threads_batch",
        type=int,
        default=None,
        help="threads for prompt processing (default: same as --threads)",
    )
    p.add_argument(
        "-ngl",
        "--gpu-layers",
        "--n-gpu-layers",
        dest="n_gpu_layers",
        type=int,
        default=0,
        help="layers to offload to the GPU (-1 = all)",
    )
    p.add_argument(
        "--rpc",
        dest="rpc_servers",
        metavar="SERVERS",
        default=None,
        help="comma-separated RPC servers (host:port) to offload -ngl layers to (library from build_lib.py --rpc)",
    )
    p.add_argument(
        "-ts",
        "--tensor-split",
        dest="tensor_split",
        metavar="N0,N1,...",
        type=_tensor_split,
        default=None,
        help="share of the offloaded layers per device (RPC servers first, then GPUs), e.g. 3,1",
    )
    p.add_argument("-s", "--seed", type=int, default=-1, help="RNG seed (-1 = random)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature (0 = greedy; default 0.8)")
    p.add_argument("--top-k", dest="top_k", type=int, default=40)
    p.add_argument("--top-p", dest="top_p", type=float, default=0.95)
    p.add_argument("--min-p", dest="min_p", type=float, default=0.05)
    p.add_argument("--typical", dest="typical_p", type=float, default=1.0)
    p.add_argument("--repeat-penalty", dest="repeat_penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", dest="repeat_last_n", type=int, default=64)
    p.add_argument("--presence-penalty", dest="presence_penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", dest="frequency_penalty", type=float, default=0.0)
    p.add_argument("--mirostat", type=int, default=0, choices=(0, 1, 2))
    p.add_argument("--grammar", help="GBNF grammar constraining the output")
    p.add_argument("--grammar-file", dest="grammar_file", help="file holding a GBNF grammar")
    p.add_argument(
        "-r",
        "--reverse-prompt",
        dest="reverse_prompt",
        action="append",
        default=[],
        help="stop when this text is generated (repeatable)",
    )
    p.add_argument("--ignore-eos", dest="ignore_eos", action="store_true", help="never stop at end-of-generation")
    p.add_argument(
        "-i",
        "--interactive",
        "-cnv",
        "--conversation",
        dest="interactive",
        action="store_true",
        help="chat loop using the model's chat template (or --chat-format / --chat-template-file)",
    )
    p.add_argument("--mmproj", help="multimodal projector GGUF of the model (for --image / --audio)")
    p.add_argument(
        "--image",
        dest="images",
        action="append",
        default=[],
        metavar="FILE",
        help="image for the (first) chat message, with --mmproj; repeat for several",
    )
    p.add_argument("--audio", dest="audios", action="append", default=[], metavar="FILE", help="audio clip, as --image")
    p.add_argument("--chat-format", dest="chat_format", help="named chat format for -i (e.g. chatml)")
    p.add_argument("--chat-template-file", dest="chat_template_file", help="jinja chat template for -i")
    p.add_argument(
        "--no-display-prompt",
        dest="display_prompt",
        action="store_false",
        help="do not print the prompt before the generated text",
    )
    p.add_argument(
        "-e",
        "--escape",
        dest="escape",
        action="store_true",
        default=True,
        help="process escapes (\\n, \\t, ...) in the prompt (default)",
    )
    p.add_argument("--no-escape", dest="escape", action="store_false", help="take the prompt literally")
    p.add_argument("--no-mmap", dest="use_mmap", action="store_false", help="read the model instead of mapping it")
    p.add_argument("--mlock", action="store_true", help="keep the model in RAM")
    p.add_argument(
        "-nr",
        "--no-repack",
        dest="repack",
        action="store_false",
        default=None,
        help="no weight repacking / extra CPU buffer types (default: on unless ggml would use AMX)",
    )
    p.add_argument("--repack", dest="repack", action="store_true", help="force weight repacking on")
    p.add_argument("-fa", "--flash-attn", dest="flash_attn", choices=("on", "off", "auto"), default="auto")
    p.add_argument("-v", "--verbose", action="store_true", help="print llama.cpp's log to stderr")
    return p


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "'": "'", '"': '"', "\\": "\\", "0": "\0"}


def _tensor_split(text: str) -> list[float]:
    """llama-cli's -ts syntax: proportions separated by ',' or '/'."""
    try:
        return [float(part) for part in re.split(r"[,/]", text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 3,1 or 3/1, got {text!r}") from None


def _unescape(text: str) -> str:
    """llama-cli's escape processing: \\n \\r \\t \\' \\" \\\\ \\0 and \\xNN; anything else stays as written."""
    return re.sub(
        r"\\(x[0-9a-fA-F]{2}|.)",
        lambda m: chr(int(m.group(1)[1:], 16)) if m.group(1)[0] == "x" else _ESCAPES.get(m.group(1), m.group(0)),
        text,
    )


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LlamaError(f"cannot read {what} {path}: {exc}") from exc


def _sampling_kwargs(args: argparse.Namespace, llm: Any) -> dict[str, Any]:
    grammar = args.grammar
    if args.grammar_file:
        grammar = _read_text(args.grammar_file, "grammar file")
    kwargs: dict[str, Any] = {
        "temperature": args.temp,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "typical_p": args.typical_p,
        "repeat_penalty": args.repeat_penalty,
        "presence_penalty": args.presence_penalty,
        "frequency_penalty": args.frequency_penalty,
        "mirostat_mode": args.mirostat,
        "seed": None if args.seed < 0 else args.seed,
        "grammar": grammar,
        "stop": list(args.reverse_prompt) or None,
        "max_tokens": None if args.n_predict < 0 else args.n_predict,
    }
    if args.n_predict == 0:
        raise LlamaError("-n 0 asks for no tokens; use -n -1 for 'until done' or a positive count")
    if args.ignore_eos:
        kwargs["logit_bias"] = {llm.token_eos(): float("-inf")}
    return kwargs


def _print_timings(err: TextIO, load_ms: float, timings: dict[str, float], total_ms: float) -> None:
    def rate(ms: float, n: float) -> str:
        if n <= 0 or ms <= 0:
            return ""
        return f" ({ms / n:8.2f} ms per token, {n * 1e3 / ms:8.2f} tokens per second)"

    prompt_ms, prompt_n = timings.get("prompt_ms", 0.0), timings.get("prompt_eval_n", 0.0)
    eval_ms, eval_n = timings.get("predicted_ms", 0.0), timings.get("predicted_n", 0.0)
    err.write("\n")
    err.write(f"llamarcp:        load time = {load_ms:10.2f} ms\n")
    err.write(
        f"llamarcp: prompt eval time = {prompt_ms:10.2f} ms / {int(prompt_n):5d} tokens{rate(prompt_ms, prompt_n)}\n"
    )
    err.write(f"llamarcp:        eval time = {eval_ms:10.2f} ms / {int(eval_n):5d} tokens{rate(eval_ms, eval_n)}\n")
    err.write(f"llamarcp:       total time = {total_ms:10.2f} ms / {int(prompt_n + eval_n):5d} tokens\n")
    err.flush()


def _complete(llm: Any, prompt: str, args: argparse.Namespace, out: TextIO, err: TextIO, load_ms: float) -> int:
    kwargs = _sampling_kwargs(args, llm)
    started = time.perf_counter()
    if args.display_prompt:
        out.write(prompt)
        out.flush()
    status = 0
    try:
        for chunk in llm.create_completion(prompt, stream=True, **kwargs):
            text = chunk["choices"][0]["text"]
            if text:
                out.write(text)
                out.flush()
    except KeyboardInterrupt:
        err.write("\n[interrupted]\n")
        status = 130
    out.write("\n")
    out.flush()
    _print_timings(err, load_ms, llm.last_timings, (time.perf_counter() - started) * 1e3)
    return status


def _media_parts(args: argparse.Namespace) -> list[dict[str, Any]]:
    """OpenAI content parts for --image / --audio files (read and checked when the chat sends them)."""
    import base64

    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": path}} for path in args.images]
    for path in args.audios:
        data = base64.b64encode(_read_bytes(path, "audio file")).decode()
        parts.append({"type": "input_audio", "input_audio": {"data": data, "format": path.rsplit(".", 1)[-1]}})
    return parts


def _read_bytes(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise LlamaError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _chat(llm: Any, args: argparse.Namespace, first: str | None, inp: TextIO, out: TextIO, err: TextIO) -> int:
    kwargs = _sampling_kwargs(args, llm)
    template = _read_text(args.chat_template_file, "chat template") if args.chat_template_file else None
    messages: list[dict[str, Any]] = []
    if args.system_prompt:
        messages.append({"role": "system", "content": args.system_prompt})
    interactive_tty = inp.isatty()
    pending = first
    while True:
        if pending is None:
            if interactive_tty:
                out.write("\n> ")
                out.flush()
            line = inp.readline()
            if not line:  # EOF (Ctrl-D)
                out.write("\n")
                return 0
            pending = line.rstrip("\n")
            if not pending.strip():
                pending = None
                continue
        media = _media_parts(args) if not any(m["role"] == "user" for m in messages) else []
        messages.append({"role": "user", "content": [*media, {"type": "text", "text": pending}] if media else pending})
        pending = None
        reply: list[str] = []
        try:
            stream = llm.create_chat_completion(
                messages, stream=True, chat_format=args.chat_format, chat_template=template, **kwargs
            )
            for chunk in stream:
                delta = chunk["choices"][0].get("delta", {})
                text = delta.get("content") or ""
                if text:
                    reply.append(text)
                    out.write(text)
                    out.flush()
        except KeyboardInterrupt:
            err.write("\n[interrupted]\n")
        out.write("\n")
        out.flush()
        messages.append({"role": "assistant", "content": "".join(reply)})


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Entry point of `python -m llamarcp` and the `llamarcp` script; returns the exit status."""
    inp, out, err = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        prompt = args.prompt
        if args.file:
            prompt = _read_text(args.file, "prompt file")
        elif prompt is not None and args.escape:
            prompt = _unescape(prompt)
        if prompt is None and not args.interactive:
            prompt = ""
        if (args.images or args.audios) and not args.mmproj:
            raise LlamaError("--image / --audio need the model's projector: --mmproj FILE")
        from llamarcp.llama import Llama

        started = time.perf_counter()
        llm = Llama(
            args.model,
            n_ctx=args.ctx_size,
            n_batch=args.batch_size,
            n_ubatch=args.ubatch_size,
            n_threads=args.threads,
            n_threads_batch=args.threads_batch,
            n_gpu_layers=args.n_gpu_layers,
            rpc_servers=args.rpc_servers,
            tensor_split=args.tensor_split,
            seed=args.seed if args.seed >= 0 else 0xFFFFFFFF,
            use_mmap=args.use_mmap,
            use_mlock=args.mlock,
            use_extra_bufts=args.repack,
            flash_attn={"on": True, "off": False}.get(args.flash_attn),
            last_n_tokens_size=args.repeat_last_n,
            chat_format=args.chat_format,
            verbose=args.verbose,
            mmproj=args.mmproj,
        )
        load_ms = (time.perf_counter() - started) * 1e3
        with llm:
            if args.interactive:
                return _chat(llm, args, prompt, inp, out, err)
            if args.images or args.audios:  # one chat turn about the media, like llama-mtmd-cli
                return _chat(llm, args, prompt or "Describe this.", io.StringIO(""), out, err)
            return _complete(llm, prompt, args, out, err, load_ms)
    except LlamaError as exc:
        err.write(f"error: {exc}\n")
        return 1
    except (ValueError, TypeError) as exc:  # bad sampling values and the like, raised before generation
        err.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        err.write("\n[interrupted]\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
