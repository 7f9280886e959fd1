"""LoRA hot swap on `Llama`: adapters loaded once, scales per generation (`SlotRequest.lora`), and with
continuous batching generations with different adapters take turns without mixing their KV."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import pytest

from llamarcp import Llama
from llamarcp.errors import LoraAdapterError
from llamarcp.placement import SlotRequest, slot_request

PROMPT = "The adapters change what comes next:"
NO_EOS = {2: float("-inf")}


@pytest.fixture(scope="module")
def lora_path(tiny_model_writer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tiny_model_writer.write_tiny_lora(tmp_path_factory.mktemp("lora") / "tiny-lora.gguf"))


def greedy(llm: Llama, lora: dict[int, float] | None = None, prompt: str = PROMPT) -> str:
    with slot_request(SlotRequest(lora=tuple(lora.items()) if lora is not None else None)):
        out = llm.create_completion(prompt, max_tokens=12, temperature=0, logit_bias=NO_EOS)
    return str(out["choices"][0]["text"])


@pytest.mark.parametrize("n_parallel", [1, 4])
def test_scales_per_generation(tiny_model_path: Path, lora_path: Path, n_parallel: int) -> None:
    with Llama(str(tiny_model_path), n_ctx=256, n_threads=1, n_parallel=n_parallel) as llm:
        base = greedy(llm)
        assert llm.add_lora(lora_path, scale=1.0) == 0
        assert llm.lora_adapters() == [{"id": 0, "path": str(lora_path), "scale": 1.0}]
        adapted = greedy(llm)
        assert adapted != base
        assert greedy(llm, {0: 0.0}) == base  # the cached prompt of the adapted run is not reused
        assert greedy(llm) == adapted
        llm.set_lora_scales({0: 0.0})
        assert greedy(llm) == base
        assert greedy(llm, {0: 1.0}) == adapted
        half = greedy(llm, {0: 0.5})
        assert half == greedy(llm, {0: 0.5})  # any scale, deterministic
        with pytest.raises(ValueError, match="does not exist"):
            greedy(llm, {3: 1.0})
        with pytest.raises(ValueError, match="finite"):
            greedy(llm, {0: float("inf")})
        with pytest.raises(ValueError, match="finite"):
            llm.set_lora_scales({0: 1e9})


def test_concurrent_generations_with_different_adapters(tiny_model_path: Path, lora_path: Path) -> None:
    with Llama(str(tiny_model_path), n_ctx=256, n_threads=1, n_parallel=4) as llm:
        llm.add_lora(lora_path, scale=0.0)
        expected = {0.0: greedy(llm, {0: 0.0}), 1.0: greedy(llm, {0: 1.0})}
        scales = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]
        with concurrent.futures.ThreadPoolExecutor(len(scales)) as pool:
            results = list(pool.map(lambda s: greedy(llm, {0: s}), scales))
        assert results == [expected[s] for s in scales]


def test_adapter_for_another_model_is_refused(tiny_model_path: Path, tiny_model_writer: Any, tmp_path: Path) -> None:
    wrong = tiny_model_writer.write_tiny_lora(tmp_path / "wrong.gguf", n_in=32)
    with Llama(str(tiny_model_path), n_ctx=128, n_threads=1) as llm:
        with pytest.raises(LoraAdapterError):
            llm.add_lora(wrong)
        assert llm.lora_adapters() == []
        with pytest.raises(FileNotFoundError):
            llm.add_lora(tmp_path / "missing.gguf")
