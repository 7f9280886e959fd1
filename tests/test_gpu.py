"""The CUDA path: offload, agreement with the CPU, batching, state across devices, main_gpu checks.

The `gpu` tests need a libllama built with CUDA (`python build_lib.py --cuda`, found through LLAMARCP_LIB_PATH) and
a GPU; conftest deselects them where the library has no CUDA backend. `ci/gpu_check.sh` runs them on the lent
device machine. The model is $LLAMARCP_MODEL, else the default gemma-3-270m. The CPU reference runs in the same
process on the same library with nothing offloaded (`n_gpu_layers=0, op_offload=False`).

Findings (where GPU and CPU first part, the top-2 margin there) are printed and, when $LLAMARCP_GPU_FINDINGS names
a file, appended to it as JSON lines for the device report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from greedy import tokens_and_tops

from llamarcp import Llama
from llamarcp._backend import check_main_gpu, gpu_names

#: Log-probability gap under which a different greedy pick on the GPU is kernel rounding, not a bug: CUDA's
#: matrix kernels quantize activations (q8_1) where the CPU's use q8_K/q8_0, which moves logits by ~1e-2.
GPU_NEAR_TIE = 0.2
PROMPTS = [
    "The history of the printing press begins in",
    "Water boils at",
    "The three primary colors are",
    "def fibonacci(n):",
    "Once upon a time",
    "The capital of France is",
    "1, 2, 3, 4,",
    "In the beginning",
]
N_TOKENS = 48
FINDINGS_ENV = "LLAMARCP_GPU_FINDINGS"
OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


def record(test: str, **facts: Any) -> None:
    """Print a finding; append it to $LLAMARCP_GPU_FINDINGS (JSON lines) for the device report."""
    line = json.dumps({"test": test, **facts})
    print(f"FINDING {line}")
    target = os.environ.get(FINDINGS_ENV)
    if target:
        with open(target, "a") as fh:
            fh.write(line + "\n")


def greedy(llm: Llama, prompt: str, n: int = N_TOKENS) -> dict[str, Any]:
    choice: dict[str, Any] = llm(prompt, max_tokens=n, temperature=0, logprobs=2)["choices"][0]
    return choice


def compare(got: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Where `got` (GPU) and `ref` (CPU) greedy choices part: index, tokens, both top-2 margins, and the
    largest difference of the chosen token's logprob over the common prefix."""
    got_tokens, got_tops = tokens_and_tops(got)
    ref_tokens, ref_tops = tokens_and_tops(ref)
    max_delta = 0.0
    for i, (a, b) in enumerate(zip(got_tokens, ref_tokens)):
        if a != b:
            return {
                "equal": False,
                "first_divergence": i,
                "gpu_token": a,
                "cpu_token": b,
                "cpu_top2_margin": _margin(ref_tops[i]),
                "gpu_top2_margin": _margin(got_tops[i]),
                "max_abs_logprob_delta_before": max_delta,
            }
        if got_tops[i] and ref_tops[i] and a in got_tops[i] and a in ref_tops[i]:
            max_delta = max(max_delta, abs(got_tops[i][a] - ref_tops[i][a]))
    return {"equal": got["text"] == ref["text"], "n_tokens": len(ref_tokens), "max_abs_logprob_delta": max_delta}


def _margin(top: dict[str, float] | None) -> float | None:
    values = sorted((top or {}).values(), reverse=True)
    return values[0] - values[1] if len(values) >= 2 else None


def acceptable(found: dict[str, Any]) -> bool:
    """Equal text, or a first difference at a near tie of the CPU's two best tokens."""
    if found["equal"] or "first_divergence" not in found:
        return True
    margin = found["cpu_top2_margin"]
    return margin is not None and margin < GPU_NEAR_TIE


# -- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpus() -> list[str]:
    from llamarcp._lib import loaded_path

    names = gpu_names()
    if not names:
        pytest.fail(
            f"no GPU device in the loaded libllama ({loaded_path()}): build one with `python build_lib.py --cuda` "
            "and point LLAMARCP_LIB_PATH at the directory it prints"
        )
    return names


@pytest.fixture(scope="module")
def model_path() -> Path:
    from llamarcp.models import default_model_path

    return Path(default_model_path())  # $LLAMARCP_MODEL, else gemma-3-270m from the `model` extra


@pytest.fixture(scope="module")
def cpu(model_path: Path) -> Iterator[Llama]:
    with Llama(str(model_path), n_ctx=512, n_gpu_layers=0, op_offload=False, seed=1) as llm:
        yield llm


@pytest.fixture(scope="module")
def gpu(gpus: list[str], model_path: Path) -> Iterator[Llama]:
    with Llama(str(model_path), n_ctx=512, n_gpu_layers=-1, seed=1) as llm:
        yield llm


def load_and_count_offload(caplog: pytest.LogCaptureFixture, model_path: Path, **kwargs: Any) -> tuple[Llama, int, int]:
    """Load with llama.cpp's info log captured; (llm, layers offloaded, layers offloadable) from its report."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="llamarcp.llama_cpp"):
        llm = Llama(str(model_path), n_ctx=512, seed=1, **kwargs)
    found = [OFFLOADED.search(r.getMessage()) for r in caplog.records]
    matches = [m for m in found if m is not None]
    if not matches:
        llm.close()
        pytest.fail("llama.cpp logged no 'offloaded N/M layers to GPU' line while loading")
    return llm, int(matches[-1].group(1)), int(matches[-1].group(2))


# -- offload ----------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_full_offload_puts_every_layer_on_the_gpu(
    gpus: list[str], model_path: Path, cpu: Llama, caplog: pytest.LogCaptureFixture
) -> None:
    llm, offloaded, total = load_and_count_offload(caplog, model_path, n_gpu_layers=-1)
    with llm:
        assert offloaded == total > 0
        found = compare(greedy(llm, PROMPTS[0]), greedy(cpu, PROMPTS[0]))
    record("full_offload", gpus=gpus, layers=f"{offloaded}/{total}", prompt=PROMPTS[0], **found)
    assert acceptable(found), found


@pytest.mark.gpu
def test_partial_offload_matches_cpu(
    gpus: list[str], model_path: Path, cpu: Llama, caplog: pytest.LogCaptureFixture
) -> None:
    probe, _, total = load_and_count_offload(caplog, model_path, n_gpu_layers=-1)
    probe.close()
    part = total // 2
    llm, offloaded, _ = load_and_count_offload(caplog, model_path, n_gpu_layers=part)
    with llm:
        assert offloaded == part
        found = compare(greedy(llm, PROMPTS[1]), greedy(cpu, PROMPTS[1]))
    record("partial_offload", layers=f"{offloaded}/{total}", prompt=PROMPTS[1], **found)
    assert acceptable(found), found


@pytest.mark.gpu
def test_greedy_text_equals_cpu_or_parts_at_a_near_tie(gpu: Llama, cpu: Llama) -> None:
    results = {p: compare(greedy(gpu, p), greedy(cpu, p)) for p in PROMPTS}
    for prompt, found in results.items():
        record("greedy_vs_cpu", prompt=prompt, **found)
    equal = sum(f["equal"] for f in results.values())
    record("greedy_vs_cpu_summary", equal=equal, of=len(PROMPTS), near_tie=GPU_NEAR_TIE)
    bad = {p: f for p, f in results.items() if not acceptable(f)}
    assert not bad, f"GPU and CPU greedy text part away from a near tie: {bad}"


# -- embeddings, batching, state -------------------------------------------------------------------------------


@pytest.mark.gpu
def test_embeddings_match_cpu(gpus: list[str], model_path: Path) -> None:
    texts = PROMPTS[:4]
    kwargs: dict[str, Any] = {"n_ctx": 512, "embedding": True, "pooling_type": 1}  # mean pooling
    with Llama(str(model_path), n_gpu_layers=-1, **kwargs) as on_gpu:
        got = on_gpu.embed(texts)
    with Llama(str(model_path), n_gpu_layers=0, op_offload=False, **kwargs) as on_cpu:
        want = on_cpu.embed(texts)
    cosines = [_cosine(a, b) for a, b in zip(got, want)]
    record("embeddings_cosine", cosines=cosines)
    assert len(cosines) == len(texts) and min(cosines) >= 0.999, cosines


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.mark.gpu
def test_eight_parallel_sequences_equal_solo_runs(gpus: list[str], model_path: Path, gpu: Llama) -> None:
    knobs: dict[str, Any] = {"max_tokens": 24, "temperature": 0, "logprobs": 2}
    solo = [gpu(p, **knobs)["choices"][0] for p in PROMPTS]
    with Llama(str(model_path), n_ctx=512, n_gpu_layers=-1, n_parallel=8, seed=1) as batched:
        together = [r["choices"][0] for r in batched.create_completions(PROMPTS, **knobs)]
    found = [compare(b, s) for b, s in zip(together, solo)]
    record(
        "n_parallel_8", equal=sum(f["equal"] for f in found), of=len(found), parted=[f for f in found if not f["equal"]]
    )
    assert len(together) == len(PROMPTS)
    assert all(acceptable(f) for f in found), found


@pytest.mark.gpu
@pytest.mark.parametrize("direction", ["gpu_to_cpu", "cpu_to_gpu"])
def test_state_moves_between_gpu_and_cpu(gpus: list[str], model_path: Path, direction: str) -> None:
    prompt = PROMPTS[0]
    common: dict[str, Any] = {"n_ctx": 512, "flash_attn": True, "seed": 1}  # one KV layout on both sides
    with (
        Llama(str(model_path), n_gpu_layers=-1, **common) as on_gpu,
        Llama(str(model_path), n_gpu_layers=0, op_offload=False, **common) as on_cpu,
    ):
        source, target = (on_gpu, on_cpu) if direction == "gpu_to_cpu" else (on_cpu, on_gpu)
        expected = greedy(target, prompt, 24)
        target.reset()
        source.eval(source.tokenize(prompt.encode()))
        target.load_state(source.save_state())
        got = greedy(target, prompt, 24)
        reused = target.n_prompt_tokens_evaluated
    found = compare(got, expected)
    record(f"state_{direction}", prompt_tokens_evaluated_after_restore=reused, **found)
    assert reused == 1  # the restored prefix was used, not re-evaluated
    assert acceptable(found), found


# -- main_gpu ---------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_main_gpu_out_of_range_is_a_clear_error(gpus: list[str], model_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"main_gpu={len(gpus)} is out of range: this libllama sees {len(gpus)} GPU"):
        Llama(str(model_path), n_gpu_layers=-1, main_gpu=len(gpus))
    with Llama(str(model_path), n_ctx=256, n_gpu_layers=-1, split_mode=0, main_gpu=len(gpus) - 1) as llm:
        assert greedy(llm, PROMPTS[2], 4)["text"]  # split_mode NONE on the last GPU works


def test_main_gpu_is_checked_against_the_devices_of_any_build(tiny_model_path: Path) -> None:
    n = len(gpu_names())  # 0 on a CPU build
    with pytest.raises(ValueError, match=rf"main_gpu={n + 1} is out of range: this libllama sees"):
        Llama(str(tiny_model_path), main_gpu=n + 1)
    with pytest.raises(ValueError, match="main_gpu must be >= -1"):
        check_main_gpu(-2)
    with pytest.raises(TypeError, match="main_gpu must be an int"):
        Llama(str(tiny_model_path), main_gpu="1")  # type: ignore[arg-type]
    check_main_gpu(0)
    check_main_gpu(-1)
    check_main_gpu(n + 5, has_devices=True)  # an explicit device list: llama.cpp checks the index against it
    with Llama(str(tiny_model_path), n_ctx=64, n_threads=1, main_gpu=0) as llm:
        assert llm.n_vocab > 0
