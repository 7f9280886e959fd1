"""Shared fixtures: the pinned llama.cpp source, the tiny random model, the real default model.

The tiny model (see tests/tiny_model.py) is written once and cached under the llamarcp cache dir, keyed by its
version string, so every test session after the first gets it for free.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_tiny_model_module() -> Any:
    # Loaded by path so it works whether or not tests/ is a package.
    spec = importlib.util.spec_from_file_location("_llamarcp_tiny_model", Path(__file__).with_name("tiny_model.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny_model = _load_tiny_model_module()


def cuda_build_found() -> bool:
    """Whether the libllama llamarcp would load has ggml's CUDA backend beside it (nothing is loaded to tell)."""
    from llamarcp._lib import find_library
    from llamarcp.errors import LibraryNotFoundError

    try:
        found = Path(find_library())
    except LibraryNotFoundError:
        return False
    return any(found.parent.glob("libggml-cuda*"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests are deselected (not skipped: they never count as passed) unless the library has CUDA or the
    command line's -m names them (then they run, and fail clearly without a GPU)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items or "gpu" in (config.getoption("markexpr") or "") or cuda_build_found():
        return
    config.hook.pytest_deselected(items=gpu_items)
    items[:] = [item for item in items if not item.get_closest_marker("gpu")]


@pytest.fixture(scope="session")
def llama_cpp_source() -> Path:
    """The llama.cpp tree the generated bindings describe (include/, models/ggml-vocab-*.gguf, templates).

    The verified pinned tree, unless the bindings were regenerated from another one (a bump in progress):
    then that tree, so layout, count and header tests check the bindings against their own source.
    """
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from codegen.generate import bindings_source

    return bindings_source()


@pytest.fixture(scope="session")
def tiny_model_writer() -> Any:
    """tests/tiny_model.py as a module (write_tiny_model, write_tiny_lora, the model's dimensions)."""
    return tiny_model


@pytest.fixture(scope="session")
def tiny_model_path(llama_cpp_source: Path) -> Path:
    """A small llama-architecture GGUF with random weights and the real llama SPM tokenizer (~9 MB, cached)."""
    from llamarcp import _cache

    cached = _cache.cache_root() / "test-models" / f"{tiny_model.TINY_MODEL_VERSION}.gguf"
    if not cached.is_file():
        # Atomic write (temp + rename): concurrent sessions may race, both produce identical bytes.
        tiny_model.write_tiny_model(cached, llama_cpp_source / "models" / tiny_model.VOCAB_FILE)
    return cached


@pytest.fixture(scope="session")
def tiny_bert_path(llama_cpp_source: Path) -> Path:
    """A small random BERT (non-causal, mean pooling, no KV cache) with the real bge vocab, for embeddings."""
    from llamarcp import _cache

    cached = _cache.cache_root() / "test-models" / f"{tiny_model.TINY_MODEL_VERSION}-bert.gguf"
    if not cached.is_file():
        tiny_model.write_tiny_bert(cached, llama_cpp_source / "models" / tiny_model.BERT_VOCAB_FILE)
    return cached


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The real default model (gemma-3-270m Q4_K_M), assembled from the `model` extra; for @pytest.mark.slow tests.

    Fails (never skips) when the extra is missing, so a CI without it cannot pass silently.
    """
    from llamarcp.models import default_model_path as resolve

    return resolve()


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_path: Path) -> Iterator[Any]:
    """One shared Llama on the tiny model, for read-only tests (tokenizer, metadata, completions that reset)."""
    from llamarcp import Llama

    llm = Llama(str(tiny_model_path), n_ctx=512, n_threads=1, seed=1234)
    yield llm
    llm.close()


@pytest.fixture()
def fresh(tiny_model_path: Path) -> Any:
    """A new Llama per test, for tests that compare against a cold cache or close the object."""
    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("n_ctx", 512)
        kwargs.setdefault("n_threads", 1)
        from llamarcp import Llama

        llm = Llama(str(tiny_model_path), **kwargs)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        llm.close()
