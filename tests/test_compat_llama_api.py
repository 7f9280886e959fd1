"""llama-cpp-python's extra `Llama` API (llamarcp.compat.llama_api): handles, params views, numpy views,
`sample`, pickling, OpenAI client types, `from_pretrained` from an offline Hugging Face cache."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hub_cache import fake_hub_cache

import llamarcp
from llamarcp import Llama
from llamarcp.compat.llama_api import MinTokensLogitsProcessor
from llamarcp.errors import LlamaError

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The quick brown fox"


@pytest.fixture()
def llm(tiny_model_path: Path) -> Iterator[Llama]:
    with Llama(str(tiny_model_path), n_ctx=256, n_batch=64, n_threads=1, seed=42) as model:
        yield model


def test_raw_handles_and_params(llm: Llama) -> None:
    lib = llamarcp.lib
    assert lib.llama_n_ctx(llm.ctx) == llm.n_ctx == llm.context_params.n_ctx
    assert lib.llama_model_n_embd(llm.model) == llm.n_embd
    assert llm.n_batch == 64 == llm.context_params.n_batch
    assert llm.context_params.n_threads == 1
    assert llm.pooling_type() == llm.context_params.pooling_type
    params = llm.model_params
    assert params.n_gpu_layers == 0 and params.load_mode == lib.LLAMA_LOAD_MODE_MMAP and params.vocab_only is False
    llm.close()
    with pytest.raises(llamarcp.errors.ClosedError):
        llm.ctx  # noqa: B018


def test_vocab_only_params(tiny_model_path: Path) -> None:
    with Llama(str(tiny_model_path), vocab_only=True, n_ctx=128) as vocab:
        assert vocab.context_params.n_ctx == 128 and vocab.model_params.vocab_only is True
        with pytest.raises(LlamaError, match="vocab_only"):
            vocab.ctx  # noqa: B018


def test_token_history_and_scores_as_numpy(llm: Llama) -> None:
    tokens = llm.tokenize(PROMPT.encode())
    assert llm.scores.shape == (0, llm.n_vocab)
    llm.eval(tokens)
    ids = llm.input_ids
    assert ids.dtype == np.intc and ids.tolist() == tokens
    assert list(llm.eval_tokens) == tokens
    scores = llm.scores
    assert scores.shape == (1, llm.n_vocab) and scores.dtype == np.single
    assert np.array_equal(scores[-1], llm._engine.logits())
    assert len(llm.eval_logits) == 1 and llm._scores.shape == scores.shape


def test_sample_greedy_is_the_argmax_and_does_not_advance(llm: Llama) -> None:
    with pytest.raises(LlamaError, match="evaluate some tokens first"):
        llm.sample()
    llm.eval(llm.tokenize(PROMPT.encode()))
    n = llm.n_tokens
    token = llm.sample(temp=0.0)
    assert token == int(np.argmax(llm.scores[-1]))
    assert llm.n_tokens == n
    assert llm.sample(temp=0.0, idx=n - 1) == token
    with pytest.raises(ValueError, match="only the last evaluated token .* without logits_all=True"):
        llm.sample(idx=0)


# -- logits_all=True: one row of logits per position, as llama-cpp-python keeps them --------------------------


@pytest.fixture()
def llm_all(tiny_model_path: Path) -> Iterator[Llama]:
    with Llama(str(tiny_model_path), n_ctx=256, n_batch=8, n_threads=1, seed=42, logits_all=True) as model:
        yield model


def test_logits_all_keeps_a_row_per_position_equal_to_last_token_logits(llm: Llama, llm_all: Llama) -> None:
    tokens = llm.tokenize(b"The quick brown fox jumps over the lazy dog and runs")  # over n_batch=8: 2 chunks
    llm_all.eval(tokens)
    scores = llm_all.scores
    assert scores.shape == (len(tokens), llm_all.n_vocab) and scores.dtype == np.single
    assert np.array_equal(llm_all._scores, scores) and len(llm_all.eval_logits) == len(tokens)
    for n in (1, 5, len(tokens)):  # row n-1 is what a context holding tokens[:n] predicts next
        llm.reset()
        llm.eval(tokens[:n])
        assert np.allclose(scores[n - 1], llm.scores[-1], atol=1e-4), n
    assert np.array_equal(scores[-1], llm_all._engine.logits())


def test_logits_all_rows_follow_generation_and_reuse(llm_all: Llama) -> None:
    prompt = llm_all.tokenize(PROMPT.encode())
    out = llm_all.create_completion(PROMPT, max_tokens=6, temperature=0.0)
    assert out["usage"]["completion_tokens"] == 6
    history = llm_all.input_ids.tolist()
    scores = llm_all.scores
    assert scores.shape == (len(history), llm_all.n_vocab) and history[: len(prompt)] == prompt
    for pos in range(len(prompt) - 1, len(history) - 1):  # greedy: each generated token is its row's argmax
        assert int(np.argmax(scores[pos])) == history[pos + 1], pos
    before = scores.copy()
    llm_all.create_completion(PROMPT, max_tokens=2, temperature=0.0)  # the prompt's prefix is reused...
    n_reused = len(prompt) - 1  # ...and its last token decoded again (alone: rounding may differ slightly)
    assert np.array_equal(llm_all.scores[:n_reused], before[:n_reused])
    assert np.allclose(llm_all.scores[n_reused], before[n_reused], atol=1e-4)


def test_logits_all_sample_takes_any_position_of_the_last_eval(llm_all: Llama) -> None:
    tokens = llm_all.tokenize(PROMPT.encode())
    llm_all.eval(tokens)  # one chunk: every position is an output row of this decode
    scores = llm_all.scores
    for idx in range(len(tokens)):
        assert llm_all.sample(temp=0.0, idx=idx) == int(np.argmax(scores[idx])), idx
    with pytest.raises(ValueError, match=rf"positions 0\.\.{len(tokens) - 1} \(the last eval\)"):
        llm_all.sample(idx=len(tokens))


def test_logits_all_state_round_trip_and_session_files(llm_all: Llama, tmp_path: Path) -> None:
    tokens = llm_all.tokenize(PROMPT.encode())
    llm_all.eval(tokens)
    state = llm_all.save_state()
    assert state.scores is not None and np.array_equal(state.scores, llm_all.scores)
    expected = llm_all.scores
    llm_all.reset()
    llm_all.eval(llm_all.tokenize(b"something else entirely"))
    llm_all.load_state(state)
    assert np.array_equal(llm_all.scores, expected)
    # A session file holds no logits: restored positions read NaN until decoded again, which eval then does.
    path = tmp_path / "s.bin"
    llm_all.save_state_file(path)
    llm_all.reset()
    llm_all.load_state_file(path)
    assert llm_all.input_ids.tolist() == tokens and np.isnan(llm_all.scores).all()
    llm_all.eval([])  # nothing new: the rows stay unknown
    unknown = llm_all.save_state()  # ...also through a snapshot taken now
    llm_all.load_state(unknown)
    assert np.isnan(llm_all.scores).all()
    llm_all.reset()
    llm_all.eval(tokens)
    assert np.allclose(llm_all.scores, expected, atol=1e-4) and not np.isnan(llm_all.scores).any()


def test_logits_all_needs_one_sequence(tiny_model_path: Path) -> None:
    with pytest.raises(ValueError, match="logits_all=True .* needs n_parallel=1"):
        Llama(str(tiny_model_path), n_ctx=256, logits_all=True, n_parallel=2)


def test_sample_applies_a_logits_processor(llm: Llama) -> None:
    llm.eval(llm.tokenize(PROMPT.encode()))
    seen: list[int] = []

    def only_token_7(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        seen.append(len(input_ids))
        out = np.full_like(scores, -np.inf)
        out[7] = 0.0
        return out

    assert llm.sample(temp=0.8, logits_processor=[only_token_7]) == 7
    assert seen == [llm.n_tokens]


def test_min_tokens_processor_blocks_eos_until_enough_tokens() -> None:
    proc = MinTokensLogitsProcessor(2, token_eos=1)
    scores = np.zeros(4, dtype=np.single)
    assert proc(np.arange(5), scores.copy())[1] == -np.inf  # first call: the prompt length is remembered
    assert proc(np.arange(6), scores.copy())[1] == -np.inf
    assert proc(np.arange(7), scores.copy())[1] == 0.0


def test_logprob_helpers() -> None:
    logits = np.array([[0.0, np.log(3.0)]], dtype=np.single)
    assert np.allclose(np.exp(Llama.logits_to_logprobs(logits)), [[0.25, 0.75]])
    assert Llama.longest_token_prefix([1, 2, 3], (1, 2, 5)) == 2


def test_tokenizer_property(llm: Llama) -> None:
    assert llm.tokenizer_.tokenize(PROMPT.encode()) == llm.tokenize(PROMPT.encode())
    assert llm.tokenizer_.decode(llm.tokenize(PROMPT.encode(), add_bos=False)) == PROMPT


def test_pickle_recreates_from_the_constructor_arguments(llm: Llama) -> None:
    expected = llm(PROMPT, max_tokens=6, temperature=0)["choices"][0]["text"]
    clone = pickle.loads(pickle.dumps(llm))
    try:
        assert clone is not llm and clone.model_path == llm.model_path
        assert clone.n_ctx == llm.n_ctx and clone.n_batch == llm.n_batch
        assert clone(PROMPT, max_tokens=6, temperature=0)["choices"][0]["text"] == expected
    finally:
        clone.close()


def test_openai_v1_types(llm: Llama) -> None:
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    messages = [{"role": "user", "content": "Hi"}]
    result = llm.create_chat_completion_openai_v1(messages=messages, max_tokens=4, temperature=0)
    assert isinstance(result, ChatCompletion) and result.choices[0].message.role == "assistant"
    chunks = list(llm.create_chat_completion_openai_v1(messages=messages, max_tokens=4, temperature=0, stream=True))
    assert chunks and all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == result.choices[0].message.content


def test_from_pretrained_offline_from_the_hub_cache(tiny_model_path: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("tiny")
    fake_hub_cache(
        tmp_path / "hub",
        "someone/tiny-GGUF",
        {"tiny-Q8_0.gguf": tiny_model_path, "README.md": readme, "sub/other.bin": readme},
    )
    code = (
        "import llamarcp\n"
        "from llamarcp import Llama\n"
        "llm = Llama.from_pretrained('someone/tiny-GGUF', '*Q8_0.gguf', n_ctx=256, n_threads=1)\n"
        "print(llm.n_ctx, llm.model_path.endswith('tiny-Q8_0.gguf'))\n"
        "for pattern in ('*.safetensors', '*'):\n"
        "    try:\n"
        "        Llama.from_pretrained('someone/tiny-GGUF', pattern)\n"
        "    except ValueError as exc:\n"
        "        print(str(exc).split(';')[0])\n"
        "try:\n"
        "    Llama.from_pretrained('someone/not-cached', '*.gguf')\n"
        "except FileNotFoundError as exc:\n"
        "    print('missing:', 'local Hugging Face cache' in str(exc))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "256 True"
    assert lines[1] == "No file in someone/tiny-GGUF match '*.safetensors'"
    assert lines[2] == "3 files in someone/tiny-GGUF match '*'"
    assert lines[3] == "missing: True"


def test_constructor_arguments_as_attributes(tiny_model_path: Path) -> None:
    with Llama(str(tiny_model_path), n_ctx=256, n_threads=1, lora_scale=0.5, tensor_split=[1.0]) as llm:
        assert llm.lora_path is None and llm.lora_scale == 0.5 and llm.tensor_split == [1.0]
        assert llm.numa is False and llm.kv_overrides is None and llm.lora_base is None
        llm.lora_scale = 0.25
        assert llm.lora_scale == 0.25
