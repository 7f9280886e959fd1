"""`python -m llamarcp`: llama-cli style flags, streaming to stdout, timings on stderr, clear errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llamarcp import Llama
from llamarcp.__main__ import _unescape, build_parser, main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_flags_match_llama_cli() -> None:
    args = build_parser().parse_args(
        [
            "-m",
            "x.gguf",
            "-p",
            "hi",
            "-n",
            "5",
            "-c",
            "256",
            "-t",
            "3",
            "-ngl",
            "7",
            "--temp",
            "0",
            "--top-k",
            "9",
            "--top-p",
            "0.5",
            "--seed",
            "4",
            "--grammar-file",
            "g.gbnf",
            "-r",
            "User:",
            "-i",
        ]
    )
    assert (args.model, args.prompt, args.n_predict, args.ctx_size, args.threads, args.n_gpu_layers) == (
        "x.gguf",
        "hi",
        5,
        256,
        3,
        7,
    )
    assert (args.temp, args.top_k, args.top_p, args.seed, args.grammar_file) == (0.0, 9, 0.5, 4, "g.gbnf")
    assert args.reverse_prompt == ["User:"] and args.interactive
    long = build_parser().parse_args(
        [
            "--model",
            "m",
            "--prompt",
            "p",
            "--n-predict",
            "3",
            "--ctx-size",
            "64",
            "--threads",
            "2",
            "--n-gpu-layers",
            "1",
            "--grammar",
            'root ::= "a"',
        ]
    )
    assert (long.model, long.n_predict, long.ctx_size, long.threads, long.n_gpu_layers) == ("m", 3, 64, 2, 1)


def test_escapes() -> None:
    assert _unescape(r"a\nb\tc\\d\x41\q") == "a\nb\tc\\dA\\q"


def test_completion_streams_prompt_then_text(tiny_model_path: Path) -> None:
    code, out, err = run_cli("-m", str(tiny_model_path), "-p", "Hello", "-n", "12", "--temp", "0", "-t", "1")
    assert code == 0
    with Llama(str(tiny_model_path), n_ctx=4096, n_threads=1) as llm:
        expected = llm("Hello", max_tokens=12, temperature=0)["choices"][0]["text"]
    assert out == "Hello" + expected + "\n"
    assert "tokens per second" in err and "eval time" in err and "load time" in err


def test_grammar_and_stop(tiny_model_path: Path, tmp_path: Path) -> None:
    grammar = tmp_path / "digits.gbnf"
    grammar.write_text('root ::= [0-9]+ "x" [0-9]+\n')
    code, out, _ = run_cli(
        "-m",
        str(tiny_model_path),
        "-p",
        "n=",
        "-n",
        "10",
        "--grammar-file",
        str(grammar),
        "-r",
        "x",
        "--no-display-prompt",
        "-s",
        "3",
        "-t",
        "1",
    )
    assert code == 0
    assert out.strip().isdigit()  # digits only: the stop string `x` and what follows are cut


def test_bad_inputs_give_clear_errors(tiny_model_path: Path, tmp_path: Path) -> None:
    code, _, err = run_cli("-m", str(tmp_path / "missing.gguf"), "-p", "x")
    assert code == 1 and "not found" in err
    code, _, err = run_cli("-m", str(tiny_model_path), "-p", "x", "--grammar", "root ::= (", "-t", "1")
    assert code == 1 and "invalid GBNF" in err
    code, _, err = run_cli("-m", str(tiny_model_path), "-p", "x", "-n", "0", "-t", "1")
    assert code == 1 and "-n 0" in err
    code, _, err = run_cli("-m", str(tiny_model_path), "-p", "word " * 400, "-c", "256", "-t", "1")
    assert code == 1 and "context holds" in err
    code, _, err = run_cli("-m", str(tiny_model_path), "-f", str(tmp_path / "nope.txt"), "-t", "1")
    assert code == 1 and "cannot read prompt file" in err


def test_interactive_chat_loop(tiny_model_path: Path) -> None:
    code, out, _ = run_cli(
        "-m",
        str(tiny_model_path),
        "-i",
        "--chat-format",
        "chatml",
        "-n",
        "4",
        "--temp",
        "0",
        "-t",
        "1",
        stdin="first question\nsecond question\n",
    )
    assert code == 0
    assert len([line for line in out.split("\n") if line.strip()]) >= 2  # one reply per user line


def test_module_entry_point(tiny_model_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "llamarcp", "-m", str(tiny_model_path), "-p", "Hi", "-n", "6", "--temp", "0", "-t", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Hi") and len(proc.stdout) > 3
    assert "tokens per second" in proc.stderr
    assert "llama_" not in proc.stderr.replace("llamarcp", "")  # llama.cpp's own log stays quiet by default


@pytest.mark.slow
def test_default_model(default_model_path: Path) -> None:
    code, out, err = run_cli("-p", "The three primary colors are", "-n", "8", "--temp", "0", "-c", "512")
    assert code == 0, err
    assert out.startswith("The three primary colors are") and "red" in out
    assert "tokens per second" in err
