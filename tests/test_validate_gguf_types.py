"""llamarcp.validate.gguf_roles: element-wise weights (norms, biases, scales, token types) must be F32.

ggml's CPU add/mul abort the process when an F32 activation meets an F16/BF16/quantized weight. Measured on
llama.cpp b11549 with tests/gguf_types_child.py --no-validate: every norm weight/bias, every attention/FFN bias
and `token_types` of the tiny bert, llama and gemma3 models in F16, BF16 or Q8_0 ends in SIGABRT at the first
decode, while every matrix (attn_*/ffn_*/output weights) and lookup table (token_embd, position_embd) in
those types loads and runs.
"""

from __future__ import annotations

import json
import re
import signal
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from procs import run
from tiny_model import VOCAB_FILE, retype_tensors, write_tiny_gemma3

from llamarcp.errors import ModelLoadError
from llamarcp.validate.gguf import ACTIVATION_ONLY_TYPES, check_gguf_hparams
from llamarcp.validate.gguf_roles import F32_ROLES, F32_SUFFIXES, f32_role
from llamarcp.validate.params import ggml_type_names

HERE = Path(__file__).resolve().parent
TYPES = ("F16", "BF16", "Q8_0")

# (architecture, tensor) pairs that abort llama.cpp when not F32, one or more per kind of role.
CRASHING = [
    ("bert", "token_types.weight"),
    ("bert", "token_embd_norm.weight"),
    ("bert", "token_embd_norm.bias"),
    ("bert", "blk.0.attn_q.bias"),
    ("bert", "blk.1.ffn_down.bias"),
    ("bert", "blk.0.layer_output_norm.weight"),
    ("llama", "blk.0.attn_norm.weight"),
    ("llama", "blk.1.ffn_norm.weight"),
    ("llama", "output_norm.weight"),
    ("gemma3", "blk.0.attn_q_norm.weight"),
    ("gemma3", "blk.1.post_ffw_norm.weight"),
]
# Matrices and lookup tables: any float or quantized type runs.
RUNNING = [
    ("bert", "position_embd.weight"),
    ("bert", "blk.0.attn_q.weight"),
    ("llama", "token_embd.weight"),
    ("gemma3", "blk.0.ffn_down.weight"),
]


@pytest.fixture(scope="module")
def bases(tiny_model_path: Path, tiny_bert_path: Path, llama_cpp_source: Path, tmp_path_factory: Any) -> dict:
    gemma3 = tmp_path_factory.mktemp("gemma3") / "tiny-gemma3.gguf"
    write_tiny_gemma3(gemma3, llama_cpp_source / "models" / VOCAB_FILE)
    return {"bert": tiny_bert_path, "llama": tiny_model_path, "gemma3": gemma3}


def _retyped(bases: dict, tmp_path: Path, arch: str, tensor: str, ggml_type: str) -> Path:
    out = tmp_path / f"{arch}-{tensor}-{ggml_type}.gguf"
    return retype_tensors(bases[arch], out, {tensor: ggml_type})


def _child(*args: Any) -> tuple[int, list[dict]]:
    proc = run([sys.executable, HERE / "gguf_types_child.py", *args], timeout=600, env=_child_env())
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _child_env() -> dict[str, str]:
    import os

    # GGML_NO_BACKTRACE: ggml's abort handler would otherwise attach gdb to print a backtrace.
    return {**os.environ, "PYTHONPATH": str(HERE.parent), "GGML_NO_BACKTRACE": "1"}


@pytest.mark.parametrize("ggml_type", TYPES)
@pytest.mark.parametrize(("arch", "tensor"), CRASHING)
def test_element_wise_weight_that_is_not_f32_is_refused(
    bases: dict, tmp_path: Path, arch: str, tensor: str, ggml_type: str
) -> None:
    from llamarcp import Llama

    path = _retyped(bases, tmp_path, arch, tensor, ggml_type)
    with pytest.raises(ModelLoadError, match=rf"tensor '{re.escape(tensor)}' has type {ggml_type} but must be F32"):
        Llama(str(path), n_ctx=64, n_threads=1, embedding=arch == "bert")


def test_the_refused_file_aborts_llama_cpp_without_the_check(bases: dict, tmp_path: Path) -> None:
    """The issue's crash: bert with an F16 `token_types.weight` kills the process (SIGABRT in ggml's CPU add)
    when llamarcp's GGUF check is bypassed, and is a ModelLoadError with it."""
    path = _retyped(bases, tmp_path, "bert", "token_types.weight", "F16")
    code, _ = _child("--no-validate", path)
    assert code == -signal.SIGABRT
    code, results = _child(path)
    assert code == 0
    assert results[0]["error"] == "ModelLoadError"
    assert "'token_types.weight' has type F16 but must be F32" in results[0]["message"]


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "tensor", "ggml_type"), [(*case, TYPES[i % 3]) for i, case in enumerate(CRASHING)])
def test_every_refused_role_really_aborts_llama_cpp(
    bases: dict, tmp_path: Path, arch: str, tensor: str, ggml_type: str
) -> None:
    """The rule refuses nothing llama.cpp runs: each refused case of CRASHING kills a child without the check."""
    code, results = _child("--no-validate", _retyped(bases, tmp_path, arch, tensor, ggml_type))
    assert code == -signal.SIGABRT, results


def test_matrices_and_lookup_tables_in_any_type_still_run(bases: dict, tmp_path: Path) -> None:
    """The rule refuses no layout llama.cpp runs: F16/BF16/Q8_0 matrices and embedding tables decode (in a child,
    so a wrong rule fails the test instead of the test runner)."""
    paths = [_retyped(bases, tmp_path, arch, tensor, t) for arch, tensor in RUNNING for t in TYPES]
    code, results = _child(*paths)
    assert code == 0, results
    assert [r["error"] for r in results] == [None] * len(paths), results


def test_draft_model_server_and_ctypes_face_refuse_it_too(bases: dict, tmp_path: Path) -> None:
    from llamarcp.compat import lowlevel
    from llamarcp.draft_model import DraftModel
    from llamarcp.server.pool import ModelEntry
    from llamarcp.server.settings import ModelConfig

    path = _retyped(bases, tmp_path, "llama", "blk.0.attn_norm.weight", "BF16")
    with pytest.raises(ModelLoadError, match="'blk.0.attn_norm.weight' has type BF16"):
        DraftModel(path)
    entry = ModelEntry(ModelConfig(model=str(path), n_ctx=64, n_parallel=1), max_queue=1)
    with pytest.raises(ModelLoadError, match="'blk.0.attn_norm.weight' has type BF16"):
        entry.load()
    with pytest.raises(ModelLoadError, match="'blk.0.attn_norm.weight' has type BF16"):  # llama-cpp-python's low level
        lowlevel.llama_model_load_from_file(str(path).encode(), lowlevel.llama_model_default_params())


@pytest.mark.slow
def test_real_quantized_gemma_layout_passes(default_model_path: Path) -> None:
    """gemma-3-270m q4_k_m: quantized matrices, F32 norms; 109 of its tensors have an F32 role."""
    header = check_gguf_hparams(default_model_path)
    assert sum(f32_role(name) is not None for name, _ in header.tensors) == 109


def test_table_matches_the_pinned_llama_cpp_source(llama_cpp_source: Path) -> None:
    """F32_ROLES is LLM_TENSOR_NAMES x LLM_TENSOR_INFOS of src/llama-arch.cpp, for the ops that need F32."""
    text = (llama_cpp_source / "src" / "llama-arch.cpp").read_text()

    def block(name: str) -> str:
        start = text.index(f"{name} = {{")
        return text[start : text.index("};", start)]

    names = re.findall(r'\{\s*(LLM_TENSOR_\w+)\s*,\s*"([^"]+)"\s*\}', block("LLM_TENSOR_NAMES"))
    info = r"\{\s*(LLM_TENSOR_\w+)\s*,\s*\{\s*LLM_TENSOR_LAYER_\w+\s*,\s*GGML_OP_(\w+)\s*\}\s*\}"
    ops = dict(re.findall(info, block("LLM_TENSOR_INFOS")))
    needs_f32 = {"ADD", "ADD_ID", "DIV", "MUL", "ROPE", "RWKV_WKV6", "SCALE", "SSM_CONV", "SSM_SCAN"}
    by_name: dict[str, set[str]] = {}
    for enum, name in names:
        by_name.setdefault(name, set()).add(ops.get(enum, "NONE"))
    derived = {name: min(found) for name, found in by_name.items() if found <= needs_f32}
    assert derived == F32_ROLES
    loader = (llama_cpp_source / "src" / "llama-model-loader.cpp").read_text()
    assert 'strcmp(tn.suffix, "bias") == 0' in loader  # the loader's rule behind F32_SUFFIXES["bias"]
    bert = (llama_cpp_source / "src" / "models" / "bert.cpp").read_text()
    assert "ggml_add(ctx0, inpL, type_row0)" in bert  # GRAPH_F32_ROLES["token_types"]


# -- the rule over (role, type), on headers alone ------------------------------------------------------------


def _header(tensors: list[tuple[str, int]]) -> bytes:
    def string(text: str) -> bytes:
        return struct.pack("<Q", len(text.encode())) + text.encode()

    kv = string("general.architecture") + struct.pack("<I", 8) + string("llama")
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), 1) + kv
    for name, ggml_type in tensors:
        out += string(name) + struct.pack("<IQIQ", 1, 32, ggml_type, 0)
    return out


_FLOAT_AND_QUANT = sorted(
    value
    for value, name in ggml_type_names().items()
    if (not name.startswith("GGML_TYPE_I") or name.startswith("GGML_TYPE_IQ")) and name not in ACTIVATION_ONLY_TYPES
)
_ACTIVATION_ONLY = [value for value, name in ggml_type_names().items() if name in ACTIVATION_ONLY_TYPES]
_F32 = next(value for value, name in ggml_type_names().items() if name == "GGML_TYPE_F32")
_STEMS = sorted(F32_ROLES)


def _instantiate(stem: str, index: int) -> str:
    return stem.replace("%d", str(index))


@settings(max_examples=300, deadline=None)
@given(
    stem=st.sampled_from([*_STEMS, "token_types"]),
    index=st.integers(0, 300),
    suffix=st.sampled_from(["weight", "bias", "scale", None]),
    ggml_type=st.sampled_from(_FLOAT_AND_QUANT),
)
def test_any_role_in_any_type(tmp_path_factory: Any, stem: str, index: int, suffix: str | None, ggml_type: int) -> None:
    name = _instantiate(stem, index) + (f".{suffix}" if suffix else "")
    path = tmp_path_factory.mktemp("roles") / "m.gguf"
    path.write_bytes(_header([("token_embd.weight", ggml_type), (name, ggml_type)]))
    if ggml_type == _F32:
        assert check_gguf_hparams(path).tensors[1][0] == name
    else:
        with pytest.raises(ModelLoadError, match=rf"tensor '{re.escape(name)}' has type \w+ but must be F32"):
            check_gguf_hparams(path)


@settings(max_examples=200, deadline=None)
@given(
    stem=st.sampled_from(["token_embd", "output", "position_embd", "blk.%d.attn_q", "blk.%d.ffn_up_exps"]),
    index=st.integers(0, 300),
    suffix=st.sampled_from(["bias", "scale", "weight"]),
    ggml_type=st.sampled_from(_FLOAT_AND_QUANT),
)
def test_matrix_weights_take_any_type_but_their_bias_and_scale_do_not(
    tmp_path_factory: Any, stem: str, index: int, suffix: str, ggml_type: int
) -> None:
    name = f"{_instantiate(stem, index)}.{suffix}"
    path = tmp_path_factory.mktemp("roles") / "m.gguf"
    path.write_bytes(_header([(name, ggml_type)]))
    if suffix == "weight" or ggml_type == _F32:
        check_gguf_hparams(path)
    else:
        with pytest.raises(ModelLoadError, match=f"GGML_OP_{F32_SUFFIXES[suffix]}"):
            check_gguf_hparams(path)


@pytest.mark.parametrize("name", ["token_embd.weight", "blk.3.attn_q.weight", "output.weight", "output_norm.weight"])
def test_activation_only_types_are_refused_for_every_tensor(tmp_path: Path, name: str) -> None:
    assert len(_ACTIVATION_ONLY) == 2  # Q8_1, Q8_K
    for ggml_type in _ACTIVATION_ONLY:
        path = tmp_path / "m.gguf"
        path.write_bytes(_header([(name, ggml_type)]))
        with pytest.raises(ModelLoadError, match=rf"'{re.escape(name)}' has type Q8_[1K], an activation-side type"):
            check_gguf_hparams(path)


@pytest.mark.slow
def test_a_q8_k_matrix_crashes_llama_cpp_without_the_check(llama_cpp_source: Path, tmp_path: Path) -> None:
    """Q8_K has no CPU dot product: a Q8_K attn_q (a bert of width 256, whole Q8_K blocks) is a SIGSEGV in the
    first decode without llamarcp's check, a ModelLoadError with it."""
    from tiny_model import BERT_VOCAB_FILE, write_tiny_bert

    base = write_tiny_bert(
        tmp_path / "bert256.gguf", llama_cpp_source / "models" / BERT_VOCAB_FILE, shape=(256, 1, 4, 256, 64)
    )
    path = retype_tensors(base, tmp_path / "q8k.gguf", {"blk.0.attn_q.weight": "Q8_K"})
    code, _ = _child("--no-validate", path)
    assert code == -signal.SIGSEGV
    code, results = _child(path)
    assert code == 0 and results[0]["error"] == "ModelLoadError"
    assert "'blk.0.attn_q.weight' has type Q8_K" in results[0]["message"]
