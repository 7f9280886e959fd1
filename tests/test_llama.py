"""Llama on the tiny random-weight model: completions, sampling, prefix reuse, state, bad input, lifetime."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from llamarcp import Llama
from llamarcp._core import Context
from llamarcp.errors import (
    ClosedError,
    GenerationAborted,
    GrammarError,
    LlamaError,
    ModelLoadError,
    ModelNotFoundError,
    PromptTooLongError,
    TokenizeError,
)
from llamarcp.llama import physical_core_count

PROMPT = "The quick brown fox"


def rss_bytes() -> int:
    statm = Path("/proc/self/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    import psutil

    return int(psutil.Process().memory_info().rss)


def text_of(result: dict[str, Any]) -> str:
    return str(result["choices"][0]["text"])


# -- loading -------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not found") as info:
        Llama(str(tmp_path / "nope.gguf"))
    assert isinstance(info.value, FileNotFoundError)


def test_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        Llama(str(path))
    with pytest.raises(ModelLoadError, match="not a file"):
        Llama(str(tmp_path))


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.99])
def test_truncated_gguf(tiny_model_path: Path, tmp_path: Path, fraction: float) -> None:
    data = tiny_model_path.read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelLoadError, match="could not load"):
        Llama(str(path))


def test_empty_and_header_only_files(tiny_model_path: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError):
        Llama(str(empty))
    header = tmp_path / "header.gguf"
    header.write_bytes(tiny_model_path.read_bytes()[:24])
    with pytest.raises(ModelLoadError):
        Llama(str(header))


def test_unknown_keywords_warn_like_llama_cpp_python_or_fail_when_strict(tiny_model_path: Path) -> None:
    """llama-cpp-python swallows unknown keywords: one warning here (none for the obsolete ones LangChain passes
    to every model, n_parts, f16_kv and device), a TypeError with strict=True."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Llama(str(tiny_model_path), n_ctx=64, n_parts=-1, f16_kv=True, device="cpu").close()
    with pytest.warns(UserWarning, match=r"ignoring n_ctxx \(not used by llamarcp\)"):
        Llama(str(tiny_model_path), n_ctx=64, n_ctxx=64, f16_kv=True).close()
    with pytest.raises(TypeError, match="n_ctxx"):
        Llama(str(tiny_model_path), n_ctxx=64, strict=True)


def test_every_llama_cpp_python_keyword_is_accepted(tiny_model_path: Path) -> None:
    import warnings

    keywords: dict[str, Any] = {
        "split_mode": 1,
        "kv_overrides": {"llama.context_length": 1024},
        "rope_scaling_type": -1,
        "attention_type": -1,
        "yarn_ext_factor": -1.0,
        "yarn_attn_factor": 1.0,
        "yarn_beta_fast": 32.0,
        "yarn_beta_slow": 1.0,
        "yarn_orig_ctx": 0,
        "logits_all": False,
        "op_offload": True,
        "no_perf": True,
        "numa": False,
        "draft_model": None,
        "tokenizer": None,
        "spm_infill": False,
        "lora_scale": 1.0,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of them is "unknown"
        with Llama(str(tiny_model_path), n_ctx=64, n_threads=1, **keywords) as llm:
            assert llm._model.n_ctx_train() == 1024  # the metadata override reached llama.cpp
            assert llm._init_args["yarn_beta_fast"] == 32.0 and llm._init_args["n_ctx"] == 64
    with pytest.raises(TypeError, match="kv_overrides"):
        Llama(str(tiny_model_path), kv_overrides={"general.name": [1]})
    with pytest.raises(ValueError, match="kv_overrides"):
        Llama(str(tiny_model_path), kv_overrides={"x" * 200: 1})


def test_facts(tiny_llama: Llama) -> None:
    assert tiny_llama.n_ctx == 512 and tiny_llama.n_ctx() == 512
    assert tiny_llama.n_vocab == 32000
    assert tiny_llama.n_embd == 64
    assert tiny_llama.token_bos() == 1 and tiny_llama.token_eos == 2
    meta = tiny_llama.metadata
    assert meta["general.architecture"] == "llama"
    assert meta["general.name"] == "llamarcp tiny random llama"
    assert meta["llama.block_count"] == "2"
    assert tiny_llama.chat_template() is None


def test_default_threads_are_physical_cores() -> None:
    cores = physical_core_count()
    assert 1 <= cores <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert cores <= len(os.sched_getaffinity(0))


def test_default_thread_count_used(fresh: Any) -> None:
    llm = fresh(n_threads=None)
    assert llm.n_threads == physical_core_count()


# -- completions ---------------------------------------------------------------------------------------------


def test_completion_shape(tiny_llama: Llama) -> None:
    result = tiny_llama.create_completion(PROMPT, max_tokens=8, temperature=0)
    assert result["object"] == "text_completion"
    assert result["id"].startswith("cmpl-")
    choice = result["choices"][0]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] == "length"
    usage = result["usage"]
    n_prompt = len(tiny_llama.tokenize(PROMPT.encode()))
    assert usage == {"prompt_tokens": n_prompt, "completion_tokens": 8, "total_tokens": n_prompt + 8}
    assert isinstance(choice["text"], str) and choice["text"]
    assert tiny_llama(PROMPT, max_tokens=8, temperature=0) | {"id": 0, "created": 0} == result | {"id": 0, "created": 0}


def test_greedy_is_deterministic(tiny_llama: Llama, fresh: Any) -> None:
    first = text_of(tiny_llama(PROMPT, max_tokens=24, temperature=0))
    assert text_of(tiny_llama(PROMPT, max_tokens=24, temperature=0)) == first
    assert text_of(fresh()(PROMPT, max_tokens=24, temperature=0)) == first


def test_same_seed_same_text(tiny_llama: Llama, fresh: Any) -> None:
    a = text_of(tiny_llama(PROMPT, max_tokens=24, seed=42))
    b = text_of(tiny_llama(PROMPT, max_tokens=24, seed=42))
    c = text_of(tiny_llama(PROMPT, max_tokens=24, seed=43))
    assert a == b
    assert a != c
    assert text_of(fresh(seed=42)(PROMPT, max_tokens=24)) == a  # the constructor seed is the default seed


def test_stream_matches_non_stream(tiny_llama: Llama) -> None:
    full = text_of(tiny_llama(PROMPT, max_tokens=32, temperature=0))
    chunks = list(tiny_llama(PROMPT, max_tokens=32, temperature=0, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == full
    assert all(c["object"] == "text_completion" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert len({c["id"] for c in chunks}) == 1


def test_stop_strings(tiny_llama: Llama) -> None:
    full = text_of(tiny_llama(PROMPT, max_tokens=32, temperature=0))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.index(stop)]
    result = tiny_llama(PROMPT, max_tokens=32, temperature=0, stop=[stop, "never-there"])
    assert text_of(result) == expected
    assert result["choices"][0]["finish_reason"] == "stop"
    streamed = list(tiny_llama(PROMPT, max_tokens=32, temperature=0, stop=stop, stream=True))
    assert "".join(c["choices"][0]["text"] for c in streamed) == expected
    assert streamed[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_never_emits_broken_utf8(tiny_llama: Llama) -> None:
    # Force byte-fallback tokens <0xE4> <0xB8> <0xAD> (UTF-8 of 中) twice: each character spans three tokens.
    # In the llama SPM vocab the byte tokens follow <unk>, <s>, </s>: byte b has id b + 3.
    byte_token = {b: b + 3 for b in (0xE4, 0xB8, 0xAD)}
    assert all(tiny_llama.detokenize([t]) == bytes([b]) for b, t in byte_token.items())
    forced = [byte_token[0xE4], byte_token[0xB8], byte_token[0xAD]] * 2
    step = {"i": 0}

    def force(_ids: Any, scores: Any) -> Any:
        scores[:] = -1e30
        scores[forced[min(step["i"], len(forced) - 1)]] = 0.0
        step["i"] += 1
        return scores

    chunks = [c["choices"][0]["text"] for c in tiny_llama(PROMPT, max_tokens=6, stream=True, logits_processor=force)]
    assert "".join(chunks) == "中中"
    assert all("\ufffd" not in c for c in chunks)
    assert [c for c in chunks if c] == ["中", "中"]


def test_grammar_constrains_output(tiny_llama: Llama) -> None:
    grammar = r'root ::= "{\"n\": " [1-9] [0-9]? [0-9]? ", \"ok\": " ("true" | "false") "}"'
    for seed in (1, 2, 3):
        result = tiny_llama(PROMPT, max_tokens=40, seed=seed, grammar=grammar)
        data = json.loads(text_of(result))
        assert set(data) == {"n", "ok"} and 1 <= data["n"] <= 999
        assert result["choices"][0]["finish_reason"] == "stop"  # the grammar ends, so only EOG is left


def test_json_grammar_prefix_is_json(tiny_llama: Llama) -> None:
    from llamarcp.grammar import JSON_GBNF, LlamaGrammar

    grammar = LlamaGrammar.from_string(JSON_GBNF, verify=tiny_llama)
    text = text_of(tiny_llama(PROMPT, max_tokens=30, seed=7, grammar=grammar))
    assert text.startswith("{")
    # Random weights rarely close the object within 30 tokens; closing what is open must give valid JSON then.
    if text.endswith("}"):
        json.loads(text)


def test_invalid_grammar(tiny_llama: Llama) -> None:
    with pytest.raises(GrammarError, match="invalid GBNF"):
        tiny_llama(PROMPT, grammar="root ::= [unclosed")
    with pytest.raises(GrammarError):
        tiny_llama(PROMPT, grammar='start ::= "x"')  # no root rule
    with pytest.raises(GrammarError, match="empty"):
        tiny_llama(PROMPT, grammar="   ")
    with pytest.raises(GrammarError):  # raised at the call even when streaming
        tiny_llama(PROMPT, grammar="root ::= (", stream=True)
    assert text_of(tiny_llama(PROMPT, max_tokens=4, temperature=0))  # still usable


def test_logit_bias_and_penalties(tiny_llama: Llama) -> None:
    target = tiny_llama.tokenize(b" banana", add_bos=False)[-1]
    result = tiny_llama(PROMPT, max_tokens=5, temperature=0, logit_bias={target: 100.0})
    assert text_of(result) == tiny_llama.detokenize([target] * 5).decode()
    penalised = tiny_llama(
        PROMPT, max_tokens=5, temperature=0, logit_bias={target: 3.0}, repeat_penalty=1.5, presence_penalty=1.0
    )
    assert text_of(penalised)
    assert text_of(tiny_llama(PROMPT, max_tokens=5, temperature=0.7, top_k=5, top_p=0.5, min_p=0.1, typical_p=0.9))
    assert text_of(tiny_llama(PROMPT, max_tokens=5, mirostat_mode=2, seed=1))


def test_logprobs(tiny_llama: Llama) -> None:
    result = tiny_llama(PROMPT, max_tokens=6, temperature=0, logprobs=3)
    lp = result["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 6
    assert "".join(lp["tokens"]) == text_of(result)
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert value <= 0.0
        assert 1 <= len(top) <= 3
        assert max(top.values()) == pytest.approx(value, abs=1e-4)  # greedy picks the most likely token
        assert token in top


def test_echo_and_token_prompt(tiny_llama: Llama) -> None:
    tokens = tiny_llama.tokenize(PROMPT.encode())
    plain = text_of(tiny_llama(PROMPT, max_tokens=4, temperature=0))
    assert text_of(tiny_llama(tokens, max_tokens=4, temperature=0)) == plain
    assert text_of(tiny_llama(PROMPT, max_tokens=4, temperature=0, echo=True)) == PROMPT + plain


def test_max_tokens_validation(tiny_llama: Llama) -> None:
    """0 and -1 mean "until the context is full" as in llama-cpp-python (tests/test_text_completion.py)."""
    for bad in (2.5, "8", True):
        with pytest.raises(ValueError, match="max_tokens"):
            tiny_llama(PROMPT, max_tokens=bad)  # type: ignore[arg-type]


def test_max_tokens_none_runs_to_context_end(fresh: Any) -> None:
    llm = fresh(n_ctx=64)
    result = llm(PROMPT, max_tokens=None, temperature=0, logit_bias={llm.token_eos(): -1000.0})
    assert result["usage"]["total_tokens"] == llm.n_ctx  # llama.cpp may round n_ctx up (here to 256)
    assert result["choices"][0]["finish_reason"] == "length"


def test_prompt_longer_than_context(fresh: Any) -> None:
    llm = fresh(n_ctx=256)
    with pytest.raises(PromptTooLongError, match=f"context holds {llm.n_ctx}") as info:
        llm("word " * 400, max_tokens=4)
    assert isinstance(info.value, ValueError) and info.value.n_prompt > llm.n_ctx
    with pytest.raises(PromptTooLongError):
        llm.eval([1] + [100] * llm.n_ctx)
    assert text_of(llm(PROMPT, max_tokens=4, temperature=0))


def test_invalid_utf8_input(tiny_llama: Llama) -> None:
    with pytest.raises(TokenizeError, match="UTF-8"):
        tiny_llama(b"caf\xc3", max_tokens=2)
    with pytest.raises(TokenizeError):
        tiny_llama("bad \udcff", max_tokens=2)
    with pytest.raises(TokenizeError, match="outside the vocab"):
        tiny_llama([1, 99999], max_tokens=2)


def test_bad_sampling_values(tiny_llama: Llama) -> None:
    with pytest.raises(ValueError, match="top_p"):
        tiny_llama(PROMPT, top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        tiny_llama(PROMPT, temperature=float("nan"))
    with pytest.raises(ValueError, match="logit_bias"):
        tiny_llama(PROMPT, logit_bias={10**9: 1.0})
    with pytest.raises(ValueError, match="suffix"):
        tiny_llama(PROMPT, suffix="end")


# -- prefix reuse and state ----------------------------------------------------------------------------------


def test_prefix_reuse_decodes_only_new_tokens_and_matches_fresh(fresh: Any) -> None:
    llm = fresh()
    base = "Once upon a time there was a little"
    longer = base + " house in the woods"
    llm(base, max_tokens=8, temperature=0)
    assert llm.n_prompt_tokens_evaluated == len(llm.tokenize(base.encode()))
    reused = text_of(llm(longer, max_tokens=16, temperature=0))
    n_new = len(llm.tokenize(longer.encode())) - len(llm.tokenize(base.encode()))
    assert llm.n_prompt_tokens_evaluated == n_new
    assert reused == text_of(fresh()(longer, max_tokens=16, temperature=0))
    # A prompt that diverges in the middle keeps only the common part.
    other = "Once upon a time there was a big dog"
    sampled = text_of(llm(other, max_tokens=16, seed=5))
    assert llm.n_prompt_tokens_evaluated < len(llm.tokenize(other.encode()))
    assert sampled == text_of(fresh()(other, max_tokens=16, seed=5))
    # The same prompt again re-decodes just its last token (for fresh logits).
    llm(other, max_tokens=4, temperature=0)
    assert llm.n_prompt_tokens_evaluated == 1


def test_reset(tiny_llama: Llama) -> None:
    tiny_llama(PROMPT, max_tokens=2)
    assert tiny_llama.n_tokens > 0
    tiny_llama.reset()
    assert tiny_llama.n_tokens == 0
    tiny_llama(PROMPT, max_tokens=2)
    assert tiny_llama.n_prompt_tokens_evaluated == len(tiny_llama.tokenize(PROMPT.encode()))


# -- interruption --------------------------------------------------------------------------------------------


def test_abort_stops_prompt_decode_and_object_stays_usable(fresh: Any) -> None:
    llm = fresh(n_ctx=1024, n_batch=1024)
    expected = text_of(llm(PROMPT, max_tokens=8, temperature=0))
    llm.reset()
    llm.abort()  # the C abort callback answers "stop" at the first graph node of the next decode
    with pytest.raises(GenerationAborted, match="llama_decode"):
        llm("tok " * 500, max_tokens=4)
    assert llm.n_tokens == 0
    assert text_of(llm(PROMPT, max_tokens=8, temperature=0)) == expected


def test_abort_during_streaming(tiny_llama: Llama) -> None:
    stream = tiny_llama(PROMPT, max_tokens=50, temperature=0, stream=True)
    next(stream)
    tiny_llama.abort()
    with pytest.raises(GenerationAborted, match="generation aborted"):
        list(stream)
    assert tiny_llama.n_tokens > 0  # memory and history still agree: the next call reuses them
    assert text_of(tiny_llama(PROMPT, max_tokens=4, temperature=0))


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="needs POSIX signals")
def test_ctrl_c_during_generation(fresh: Any) -> None:
    llm = fresh(n_ctx=2048, n_batch=2048, n_ubatch=256)
    prompt = [1] + [100 + (i * 7) % 30000 for i in range(1500)]
    expected = text_of(fresh(n_ctx=2048)(PROMPT, max_tokens=8, temperature=0))
    # A job started in the background (`cmd &` in a script, as CI runners do) inherits SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler: install it here so the signal is a Ctrl-C whoever started us.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.03, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            llm(prompt, max_tokens=None, temperature=0)
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, previous)
    from llamarcp._backend import get_lib

    n_mem = get_lib().llama_memory_seq_pos_max(llm._memory, 0) + 1
    assert llm.n_tokens == n_mem  # history and KV memory agree after the interrupt
    assert text_of(llm(PROMPT, max_tokens=8, temperature=0)) == expected


def test_second_generation_in_same_thread_is_refused(tiny_llama: Llama) -> None:
    first = tiny_llama(PROMPT, max_tokens=10, stream=True)
    next(first)
    with pytest.raises(LlamaError, match="still running"):
        tiny_llama(PROMPT, max_tokens=2)
    first.close()
    assert text_of(tiny_llama(PROMPT, max_tokens=2))


def test_threads_take_turns(tiny_llama: Llama) -> None:
    expected = text_of(tiny_llama(PROMPT, max_tokens=12, temperature=0))
    results: list[str] = []

    def work() -> None:
        results.append(text_of(tiny_llama(PROMPT, max_tokens=12, temperature=0)))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4


# -- lifetime ------------------------------------------------------------------------------------------------


def test_use_after_close(fresh: Any) -> None:
    llm = fresh()
    llm(PROMPT, max_tokens=2)
    llm.close()
    llm.close()  # idempotent
    assert llm.closed
    for call in (
        lambda: llm(PROMPT, max_tokens=2),
        lambda: llm.tokenize(b"x"),
        lambda: llm.detokenize([1]),
        lambda: llm.n_ctx,
        lambda: llm.metadata,
        lambda: llm.save_state(),
        lambda: llm.reset(),
        lambda: llm.eval([1]),
    ):
        with pytest.raises(ClosedError):
            call()


def test_context_manager(tiny_model_path: Path) -> None:
    with Llama(str(tiny_model_path), n_ctx=64, n_threads=1) as llm:
        assert text_of(llm(PROMPT, max_tokens=2))
    assert llm.closed
    with pytest.raises(ClosedError):
        llm(PROMPT)


def test_close_while_streaming(fresh: Any) -> None:
    llm = fresh()
    stream = llm(PROMPT, max_tokens=20, stream=True)
    next(stream)
    llm.close()
    with pytest.raises(ClosedError):
        list(stream)


def test_context_cycles_keep_rss_flat(tiny_llama: Llama) -> None:
    from llamarcp._backend import get_lib
    from llamarcp.sampling import SamplingParams, build_sampler_chain

    lib = get_lib()
    model = tiny_llama._model

    def cycle() -> None:
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = 256, 64, 64
        params.n_threads = params.n_threads_batch = 1
        ctx = Context(model, params)
        build_sampler_chain(model, SamplingParams(grammar='root ::= "a"')).close()
        ctx.close()

    for _ in range(100):
        cycle()
    before = rss_bytes()
    for _ in range(1000):
        cycle()
    growth = rss_bytes() - before
    assert growth < 8 * 1024 * 1024, f"RSS grew {growth / 2**20:.1f} MiB over 1000 context create/free cycles"


def test_llama_open_close_cycles(tiny_model_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "m.gguf"
    shutil.copy(tiny_model_path, copy)
    for _ in range(5):
        Llama(str(copy), n_ctx=64, n_threads=1).close()
    before = rss_bytes()
    for _ in range(20):
        with Llama(str(copy), n_ctx=64, n_threads=1) as llm:
            llm(PROMPT, max_tokens=2)
    assert rss_bytes() - before < 16 * 1024 * 1024


def test_close_from_another_thread_stops_generation(fresh: Any) -> None:
    llm = fresh(n_ctx=2048)
    errors: list[BaseException] = []
    started = threading.Event()

    def work() -> None:
        try:
            for _ in llm(PROMPT, max_tokens=None, stream=True, logit_bias={llm.token_eos(): -1000.0}):
                started.set()
        except BaseException as exc:  # noqa: BLE001 - the test inspects what the worker saw
            errors.append(exc)
        finally:
            started.set()

    worker = threading.Thread(target=work)
    worker.start()
    started.wait(30)
    llm.close()  # waits for the worker to let go of the context, then frees
    worker.join(30)
    assert not worker.is_alive()
    assert llm.closed
    assert len(errors) == 1 and isinstance(errors[0], ClosedError)


def test_lora_adapter(fresh: Any, tmp_path: Path, tiny_model_writer: Any) -> None:
    writer = tiny_model_writer
    good = writer.write_tiny_lora(tmp_path / "lora.gguf")
    base = text_of(fresh()(PROMPT, max_tokens=16, temperature=0))
    adapted = fresh(lora_path=str(good))
    changed = text_of(adapted(PROMPT, max_tokens=16, temperature=0))
    assert changed != base
    assert text_of(fresh(lora_path=str(good), lora_scale=0.0)(PROMPT, max_tokens=16, temperature=0)) == base
    adapted.close()  # adapter, context and model are freed in the right order
    wrong = writer.write_tiny_lora(tmp_path / "wrong.gguf", n_in=32)
    with pytest.raises(ModelLoadError, match="LoRA"):
        fresh(lora_path=str(wrong))
    with pytest.raises(ModelNotFoundError):
        fresh(lora_path=str(tmp_path / "missing.gguf"))


def test_context_too_big_for_memory(tiny_model_path: Path) -> None:
    from llamarcp.errors import ContextCreationError

    with pytest.raises(ContextCreationError, match="kv cache"):
        Llama(str(tiny_model_path), n_ctx=2**32 - 1, n_threads=1)
    with pytest.raises(ValueError):
        Llama(str(tiny_model_path), n_ctx=-5)


def test_generate_yields_the_completion_tokens(tiny_llama: Llama) -> None:
    prompt = tiny_llama.tokenize(PROMPT.encode())
    tokens = []
    for token in tiny_llama.generate(prompt, temp=0):
        tokens.append(token)
        if len(tokens) == 10:
            break
    text = text_of(tiny_llama(PROMPT, max_tokens=10, temperature=0))
    assert tiny_llama.detokenize(tokens, prev_tokens=prompt).decode("utf-8", errors="replace") == text
    assert tiny_llama.input_ids[: len(prompt)].tolist() == prompt


@pytest.mark.parametrize(
    ("knobs", "fragment"),
    [({"top_p": 2.0}, "top_p"), ({"temp": float("nan")}, "temperature"), ({"repeat_penalty": 0.0}, "repeat_penalty"),
     ({"logit_bias": {10**9: 1.0}}, "logit_bias token"), ({"seed": "x"}, "seed")],
)  # fmt: skip
def test_generate_checks_its_sampling_knobs_at_the_call(tiny_llama: Llama, knobs: dict, fragment: str) -> None:
    """generate() and sample() build their knobs like create_completion: bad values fail before llama.cpp."""
    prompt = tiny_llama.tokenize(PROMPT.encode())
    with pytest.raises((TypeError, ValueError), match=fragment):
        tiny_llama.generate(prompt, **knobs)
    if "logit_bias" not in knobs and "seed" not in knobs:
        tiny_llama.eval(prompt)
        with pytest.raises((TypeError, ValueError), match=fragment):
            tiny_llama.sample(**knobs)
        tiny_llama.reset()


def test_set_seed(tiny_llama: Llama) -> None:
    tiny_llama.set_seed(77)
    a = text_of(tiny_llama(PROMPT, max_tokens=12))
    tiny_llama.set_seed(77)
    assert text_of(tiny_llama(PROMPT, max_tokens=12)) == a
    tiny_llama.set_seed(1234)


def test_processor_and_criteria_lists(tiny_llama: Llama) -> None:
    from llamarcp.llama import LogitsProcessorList, StoppingCriteriaList

    target = tiny_llama.tokenize(b" banana", add_bos=False)[-1]

    def prefer(_ids: Any, scores: Any) -> Any:
        scores[target] += 1000.0
        return scores

    seen: list[int] = []

    def stop_after_three(ids: Any, _scores: Any) -> bool:
        seen.append(len(ids))
        return len(seen) >= 3

    for processors, criteria in (
        (LogitsProcessorList([prefer]), StoppingCriteriaList([stop_after_three])),
        ([prefer], [stop_after_three]),
    ):
        seen.clear()
        result = tiny_llama(
            PROMPT, max_tokens=10, temperature=0, logits_processor=processors, stopping_criteria=criteria
        )
        assert text_of(result) == tiny_llama.detokenize([target] * 3).decode()
        assert result["choices"][0]["finish_reason"] == "stop"
    with pytest.raises(TypeError):
        tiny_llama(PROMPT, logits_processor=42)


def test_gguf_without_weights_or_unknown_arch(llama_cpp_source: Path, tiny_model_path: Path, tmp_path: Path) -> None:
    # A vocab-only GGUF (no tensors) cannot be loaded as a full model.
    with pytest.raises(ModelLoadError, match="could not load"):
        Llama(str(llama_cpp_source / "models" / "ggml-vocab-llama-spm.gguf"), n_ctx=64)
    # An architecture name llama.cpp does not know (the GGUF string "llama": u64 length 5, then the bytes).
    data = tiny_model_path.read_bytes()
    patched = tmp_path / "unknown-arch.gguf"
    patched.write_bytes(data.replace(b"\x05" + b"\x00" * 7 + b"llama", b"\x05" + b"\x00" * 7 + b"xxxxx", 1))
    with pytest.raises(ModelLoadError, match="unknown model architecture"):
        Llama(str(patched), n_ctx=64)


def test_stream_resumed_from_other_threads(tiny_llama: Llama) -> None:
    """asyncio.to_thread(next, stream) style: each chunk may be pulled by a different worker thread."""
    from concurrent.futures import ThreadPoolExecutor

    expected = text_of(tiny_llama(PROMPT, max_tokens=20, temperature=0))
    stream = tiny_llama(PROMPT, max_tokens=20, temperature=0, stream=True)
    texts: list[str] = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        while True:
            chunk = pool.submit(next, stream, None).result()
            if chunk is None:
                break
            texts.append(chunk["choices"][0]["text"])
    assert "".join(texts) == expected
    assert text_of(tiny_llama(PROMPT, max_tokens=20, temperature=0)) == expected  # the context was let go


def test_close_does_not_wait_for_a_suspended_stream(fresh: Any) -> None:
    llm = fresh()
    stream = llm(PROMPT, max_tokens=20, stream=True)
    next(stream)
    closer = threading.Thread(target=llm.close)
    closer.start()
    closer.join(5)
    assert not closer.is_alive() and llm.closed
    assert llm._model.closed is False  # still in use by the suspended stream...
    stream.close()
    assert llm._model.closed  # ...and freed the moment the stream lets go


def test_greedy_fast_path_matches_the_sampler_chain(tiny_llama: Llama, fresh: Any) -> None:
    """Plain greedy picks the argmax of the logits directly; a zero logit bias forces llama.cpp's greedy chain."""
    other = tiny_llama.tokenize(b" zebra", add_bos=False)[-1]
    for prompt in (PROMPT, "Once upon a time", "1, 2, 3,"):
        fast = tiny_llama(prompt, max_tokens=40, temperature=0)
        chain = tiny_llama(prompt, max_tokens=40, temperature=0, logit_bias={other: 0.0})
        assert text_of(fast) == text_of(chain)


def test_eval_appends_like_llama_cpp_python(fresh: Any) -> None:
    llm = fresh()
    first, second = llm.tokenize(PROMPT.encode()), llm.tokenize(b" jumps over", add_bos=False)
    assert llm.eval(first) == len(first)
    assert llm.eval(second) == len(second)  # only the new tokens are decoded
    assert llm.input_ids.tolist() == first + second and llm.eval([]) == 0
    llm.reset()
    assert llm.eval(second) == len(second) and llm.input_ids.tolist() == second


def test_seed_and_penalty_window_are_checked_at_the_call(tiny_model_path: Path, tiny_llama: Llama) -> None:
    with pytest.raises(TypeError, match="seed"):
        Llama(str(tiny_model_path), n_ctx=64, seed="7")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="last_n_tokens_size"):
        Llama(str(tiny_model_path), n_ctx=64, last_n_tokens_size=10**9)
    with pytest.raises(TypeError, match="seed"):
        tiny_llama(PROMPT, max_tokens=2, seed="7")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        tiny_llama.set_seed(1.5)  # type: ignore[arg-type]
