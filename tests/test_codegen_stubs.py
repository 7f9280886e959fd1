"""The typed stubs are real: mypy accepts correct use of lib/ffi and rejects wrong calls (run in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy")

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
    from llamarcp import ffi, lib

    lib.llama_backend_init()
    params = lib.llama_model_default_params()
    params.n_gpu_layers = 0
    params.vocab_only = True
    model = lib.llama_model_load_from_file(b"model.gguf", params)
    vocab = lib.llama_model_get_vocab(model)
    n_vocab: int = lib.llama_vocab_n_tokens(vocab)
    tokens = ffi.new("llama_token[8]")
    n: int = lib.llama_tokenize(vocab, b"hi", 2, tokens, 8, True, False)
    ctx_params = lib.llama_context_default_params()
    threads: int = ctx_params.n_threads
    rope: float = ctx_params.rope_freq_base
    seed: int = lib.LLAMA_DEFAULT_SEED
    kind: int = lib.LLAMA_VOCAB_TYPE_SPM
    info: bytes = ffi.string(lib.llama_print_system_info())
    lib.llama_model_free(model)


    from typing import TYPE_CHECKING

    if TYPE_CHECKING:
        from llamarcp._generated.lib_types import Lib


    def held(raw: "Lib") -> int:  # the library held in a variable, as _backend.get_lib() returns it
        cparams = raw.llama_context_default_params()
        batch: int = cparams.n_batch
        return raw.llama_vocab_n_tokens(raw.llama_model_get_vocab(ffi.NULL)) + batch + raw.LLAMA_DEFAULT_SEED
"""

BAD = """
    from llamarcp import ffi, lib

    lib.llama_backend_init(1)
    name: str = lib.llama_vocab_n_tokens(ffi.NULL)
    params = lib.llama_model_default_params()
    params.n_gpu_layers = "all"
    lib.llama_tokenize(ffi.NULL, "text", 4, None, 8, True, False)
    lib.llama_n_vocab(ffi.NULL)
    lib.llama_no_such_function()
    from llamarcp._generated.lib_types import Lib
    def held(raw: Lib) -> str:
        raw.llama_backend_init(1)
        raw.llama_no_such_function()
        return raw.llama_vocab_n_tokens(ffi.NULL)
"""


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One mypy run (it is slow to start) over a correct and a wrong sample program."""
    tmp = tmp_path_factory.mktemp("mypy")
    (tmp / "good.py").write_text(textwrap.dedent(GOOD))
    (tmp / "bad.py").write_text(textwrap.dedent(BAD))
    config = tmp / "mypy.ini"
    config.write_text("[mypy]\nenable_error_code = deprecated\nstrict_optional = True\n")
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(tmp / "cache")]
    proc = subprocess.run([*cmd, str(tmp / "good.py"), str(tmp / "bad.py")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # 1 = type errors found (in bad.py); 2 = crash
    return proc.stdout


def test_correct_use_type_checks(mypy_output: str) -> None:
    files = [line.split(":", 1)[0] for line in mypy_output.splitlines() if ": error:" in line]
    assert not [f for f in files if f.endswith("good.py") or "_generated" in f], mypy_output


def test_wrong_calls_are_rejected(mypy_output: str) -> None:
    expected = [
        ('bad.py:4: error: Too many arguments for "llama_backend_init"', "call-arg"),
        ("bad.py:5: error: Incompatible types in assignment", "assignment"),
        ('bad.py:7: error: Incompatible types in assignment (expression has type "str"', "assignment"),
        ('bad.py:8: error: Argument 2 to "llama_tokenize" has incompatible type "str"', "arg-type"),
        ('bad.py:8: error: Argument 4 to "llama_tokenize" has incompatible type "None"', "arg-type"),
        ("bad.py:9: error: function llamarcp._generated.lib.llama_n_vocab is deprecated: "
         "use llama_vocab_n_tokens instead", "deprecated"),
        ('bad.py:10: error: Module has no attribute "llama_no_such_function"', "attr-defined"),
        ('bad.py:13: error: Too many arguments for "llama_backend_init" of "Lib"', "call-arg"),
        ('bad.py:14: error: "Lib" has no attribute "llama_no_such_function"', "attr-defined"),
        ('bad.py:15: error: Incompatible return value type (got "int", expected "str")', "return-value"),
    ]  # fmt: skip
    lines = [line.split("/")[-1] for line in mypy_output.splitlines()]
    for text, code in expected:
        assert any(line.startswith(text) and line.endswith(f"[{code}]") for line in lines), (text, mypy_output)
