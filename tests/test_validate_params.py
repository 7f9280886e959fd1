"""llamarcp.validate.params: context and sampling parameters refused in Python, with the parameter named."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from llamarcp.sampling import SamplingParams
from llamarcp.validate.params import (
    MAX_PENALTY_LAST_N,
    check_context_params,
    check_finite,
    check_int,
    check_seed,
    ggml_type_names,
)

N_VOCAB = 32000


@pytest.mark.parametrize(
    ("changes", "error", "name"),
    [
        ({"typical_p": -1.0}, ValueError, "typical_p"),
        ({"typical_p": 2.0}, ValueError, "typical_p"),
        ({"top_p": math.nan}, ValueError, "top_p"),
        ({"repeat_penalty": math.nan}, ValueError, "repeat_penalty"),
        ({"repeat_penalty": 0.0}, ValueError, "repeat_penalty"),
        ({"frequency_penalty": math.inf}, ValueError, "frequency_penalty"),
        ({"presence_penalty": -math.inf}, ValueError, "presence_penalty"),
        ({"mirostat_tau": math.nan}, ValueError, "mirostat_tau"),
        ({"mirostat_eta": math.inf}, ValueError, "mirostat_eta"),
        ({"mirostat_mode": 3}, ValueError, "mirostat_mode"),
        ({"temperature": math.nan}, ValueError, "temperature"),
        ({"temperature": "hot"}, TypeError, "temperature"),
        ({"penalty_last_n": 10**9}, ValueError, "last_n_tokens_size"),
        ({"penalty_last_n": -2}, ValueError, "last_n_tokens_size"),
        ({"seed": "7"}, TypeError, "seed"),
        ({"seed": 2**32}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"top_k": 2**31}, ValueError, "top_k"),
        ({"top_k": 40.0}, TypeError, "top_k"),
        ({"min_keep": -1}, ValueError, "min_keep"),
        ({"logit_bias": {N_VOCAB: 1.0}}, ValueError, "logit_bias token"),
        ({"logit_bias": {"5": 1.0}}, TypeError, "logit_bias token"),
        ({"logit_bias": {5: math.nan}}, ValueError, "logit_bias for token 5"),
        ({"logit_bias": {5: math.inf}}, ValueError, "logit_bias for token 5"),
    ],
)
def test_sampling_params_refused(changes: dict[str, Any], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=name):
        SamplingParams(**changes).validate(N_VOCAB)


def test_sampling_params_accepted() -> None:
    SamplingParams().validate(N_VOCAB)
    edge = SamplingParams(
        temperature=0,
        top_k=-1,
        typical_p=0.5,
        penalty_last_n=MAX_PENALTY_LAST_N,
        seed=0xFFFFFFFF,
        logit_bias={0: -math.inf, 5: 2},  # -inf bans a token
        mirostat_mode=2,
    )
    edge.validate(N_VOCAB)


def test_helpers() -> None:
    assert check_int("n", 5, 0, 10) == 5
    with pytest.raises(TypeError, match="n must be an int"):
        check_int("n", True, 0, 10)
    with pytest.raises(ValueError, match="n must be between 0 and 10"):
        check_int("n", 11, 0, 10)
    assert check_finite("x", 1, 0.0, 2.0) == 1.0
    assert check_seed(-1) == -1
    types = ggml_type_names()
    assert types[0] == "GGML_TYPE_F32" and "GGML_TYPE_COUNT" not in types.values()


def _context_params(**changes: Any) -> Any:
    from llamarcp._backend import get_lib

    params = get_lib().llama_context_default_params()
    for name, value in changes.items():
        setattr(params, name, value)
    return params


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"type_k": 999}, "type_k"),
        ({"type_v": 4}, "type_v"),  # a hole in the ggml_type enum (Q4_2 was removed)
        ({"type_k": 43}, "type_k"),  # GGML_TYPE_COUNT
        ({"n_threads": 10**6}, "n_threads"),
        ({"n_threads_batch": 0}, "n_threads_batch"),
        ({"n_batch": 0}, "n_batch"),
        ({"n_ubatch": 0}, "n_ubatch"),
        ({"n_seq_max": 100_000}, "n_seq_max"),
        ({"pooling_type": 9}, "pooling_type"),
        ({"flash_attn_type": 5}, "flash_attn_type"),
        ({"rope_freq_base": math.nan}, "rope_freq_base"),
        ({"rope_freq_scale": -1.0}, "rope_freq_scale"),
    ],
)
def test_context_params_refused(changes: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        check_context_params(_context_params(**changes))


def test_default_context_params_pass() -> None:
    check_context_params(_context_params())


@pytest.mark.parametrize(("kwargs", "name"), [({"type_k": 999}, "type_k"), ({"n_threads": 10**6}, "n_threads")])
def test_llama_refuses_bad_context_params(tiny_model_path: Path, kwargs: dict[str, Any], name: str) -> None:
    """The issue's out-of-bounds read (type_k=999) and SIGABRT (n_threads=10**6) become ValueErrors."""
    from llamarcp import Llama

    params: dict[str, Any] = {"n_ctx": 64, "n_threads": 1, **kwargs}
    with pytest.raises(ValueError, match=name):
        Llama(str(tiny_model_path), **params)


def test_llama_refuses_bad_sampling_params(tiny_llama: Any) -> None:
    with pytest.raises(ValueError, match="typical_p"):
        tiny_llama("hi", max_tokens=2, typical_p=2.0)
    with pytest.raises(ValueError, match="top_k"):
        tiny_llama("hi", max_tokens=2, top_k=2**31)
    with pytest.raises(ValueError, match="mirostat_tau"):
        tiny_llama("hi", max_tokens=2, mirostat_mode=2, mirostat_tau=math.nan)
    with pytest.raises(ValueError, match="repeat_penalty"):
        tiny_llama("hi", max_tokens=2, repeat_penalty=math.inf)
    assert tiny_llama("hi", max_tokens=2, temperature=0)["choices"][0]["text"] is not None


def test_llama_refuses_huge_last_n_tokens_size(tiny_model_path: Path) -> None:
    from llamarcp import Llama

    with pytest.raises(ValueError, match="last_n_tokens_size"):  # refused where Llama takes it
        Llama(str(tiny_model_path), n_ctx=64, n_threads=1, last_n_tokens_size=10**9)


# -- every keyword checked before cffi sees it (issue 22) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n_ctx": 2**32}, ValueError, "n_ctx must be between 0 and 4294967295"),
        ({"n_ctx": 10**12}, ValueError, "n_ctx must be between 0 and 4294967295"),
        ({"n_ubatch": -1}, ValueError, "n_ubatch must be between 1 and 2147483647"),
        ({"type_k": -1}, ValueError, r"type_k must be one of the enum ggml_type values: 0 \(GGML_TYPE_F32\)"),
        ({"split_mode": 99}, ValueError, "split_mode must be one of the enum llama_split_mode values"),
        ({"offload_kqv": 2}, TypeError, "offload_kqv must be a bool"),
        ({"rope_freq_base": "x"}, TypeError, "rope_freq_base must be a number"),
        ({"yarn_ext_factor": 1e300}, ValueError, "yarn_ext_factor must be between"),
        ({"n_ctx": 2**31, "n_parallel": 4}, ValueError, r"n_ctx \(per sequence, with n_parallel=4\)"),
    ],
)
def test_the_issues_constructor_keywords(
    tiny_model_path: Path, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    from llamarcp import Llama

    with pytest.raises(error, match=message):
        Llama(str(tiny_model_path), n_threads=1, **kwargs)


def _llama_keyword_fields() -> list[tuple[str, Any]]:
    """Every Llama keyword that names a model/context params field, with the field's C type (from the loaded
    release's declarations: a field a release adds is covered as soon as Llama takes it)."""
    import inspect

    from llamarcp import Llama
    from llamarcp.validate.params import MODEL_AND_CONTEXT_STRUCTS, c_field_types

    keywords = set(inspect.signature(Llama.__init__).parameters)
    return [
        (name, ctype)
        for struct in MODEL_AND_CONTEXT_STRUCTS
        for name, ctype in c_field_types(struct).items()
        if name in keywords and ctype.kind in ("primitive", "enum")
    ]


def _bad_values(ctype: Any) -> list[Any]:
    from llamarcp.validate.params import c_int_range

    if ctype.kind == "enum":
        return [max(ctype.elements) + 1000, min(ctype.elements) - 1000, "1"]
    if ctype.cname == "_Bool":
        return [2, "yes"]
    if ctype.cname in ("float", "double"):
        return [math.nan, math.inf, 1e309 if ctype.cname == "double" else 1e39, "x"]
    low, high = c_int_range(ctype)
    return [low - 1, high + 1, 2**64, 1.5, "3"]


def test_every_integer_field_a_keyword_sets_is_checked_with_its_name(tiny_model_path: Path) -> None:
    """cffi would raise OverflowError naming the C type; every keyword/field pair answers with the keyword."""
    from llamarcp import Llama

    pairs = _llama_keyword_fields()
    names = {name for name, _ in pairs}
    assert {"n_ctx", "n_batch", "n_ubatch", "n_seq_max", "n_threads", "yarn_orig_ctx", "n_gpu_layers"} <= names
    assert {"type_k", "type_v", "pooling_type", "split_mode", "offload_kqv", "rope_freq_base"} <= names
    checked = 0
    for name, ctype in pairs:
        for bad in _bad_values(ctype):
            with pytest.raises((TypeError, ValueError), match=name) as caught:
                Llama(str(tiny_model_path), **{"n_threads": 1, name: bad})
            assert not isinstance(caught.value, OverflowError)
            checked += 1
    assert checked >= 5 * len(pairs) // 2


def test_set_fields_checks_before_assigning() -> None:
    from llamarcp.validate.params import set_fields

    params = _context_params()
    with pytest.raises(ValueError, match="n_ctx must be between 0 and 4294967295"):
        set_fields(params, "struct llama_context_params", {"n_ctx": 2**32})
    set_fields(params, "struct llama_context_params", {"n_ctx": 1024, "n_threads": None, "type_k": 1})
    assert params.n_ctx == 1024 and params.type_k == 1
    with pytest.raises(ValueError, match="not_a_field is not supported by the loaded llama.cpp release"):
        set_fields(params, "struct llama_context_params", {"not_a_field": 1})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prompt": 12345}, TypeError, "prompt must be a str, bytes or a list of token ids, got int"),
        ({"prompt": None}, TypeError, "prompt must be a str, bytes or a list of token ids, got NoneType"),
        ({"prompt": [1.5]}, TypeError, "prompt must hold token ids"),
        ({"prompt": [2**40]}, ValueError, "prompt holds token id 1099511627776: outside the vocab"),
        ({"prompt": "hi", "logit_bias": [1, 2]}, TypeError, "logit_bias must be a mapping of token id -> bias"),
        ({"prompt": "hi", "logit_bias": {"a": 1.0}}, TypeError, "logit_bias keys must be token ids"),
        ({"prompt": "hi", "logit_bias": {5: "x"}}, TypeError, "logit_bias for token 5 must be a number"),
        ({"prompt": "hi", "logit_bias": {10**12: 1.0}}, ValueError, "logit_bias token"),
        ({"prompt": "hi", "stop": 5}, TypeError, "stop must be a string or a list of strings"),
        ({"prompt": "hi", "logprobs": True}, TypeError, "logprobs must be an int"),
        ({"prompt": "hi", "logprobs": -1}, ValueError, "logprobs must be between 0"),
    ],
)
def test_the_issues_call_keywords(
    tiny_llama: Any, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        tiny_llama.create_completion(max_tokens=2, **kwargs)


def test_call_arguments_accepted_and_refused(tiny_llama: Any) -> None:
    import numpy as np

    from llamarcp.validate.params import check_texts, check_token_ids

    tokens = tiny_llama.tokenize(b"Hello")
    assert tiny_llama.create_completion(tokens, max_tokens=2, temperature=0)["choices"][0]["text"] is not None
    assert tiny_llama.create_completion(np.array(tokens), max_tokens=2, temperature=0)["usage"]["prompt_tokens"] == len(
        tokens
    )
    result = tiny_llama.create_completion("hi", max_tokens=2, logit_bias={"5": -1.0, 7: 1}, temperature=0)
    assert result["choices"][0]["text"] is not None  # OpenAI's JSON sends token ids as strings
    assert check_token_ids("tokens", np.array([1, 2], dtype=np.int32)) == [1, 2]
    for call, bad in ((tiny_llama.eval, 12345), (tiny_llama.detokenize, None), (tiny_llama.generate, 5)):
        with pytest.raises(TypeError, match="tokens must be a sequence of token ids"):
            call(bad)
    assert check_texts("input", "a") == ["a"]
    with pytest.raises(TypeError, match="input must be a string or a list of strings"):
        check_texts("input", 12345)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"messages": None}, "messages must be a list of objects"),
        ({"messages": 12345}, "messages must be a list of objects"),
        ({"messages": "hi"}, "messages must be a list of objects"),
        ({"messages": ["hi"]}, r"messages\[0\] must be an object"),
        ({"stop": 5}, "stop must be a string or a list of strings"),
        ({"tools": 5}, "tools must be a list of objects"),
        ({"functions": [1]}, r"functions\[0\] must be an object"),
    ],
)
def test_chat_call_keywords(tiny_llama: Any, kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **kwargs}
    with pytest.raises(TypeError, match=message):
        tiny_llama.create_chat_completion(**arguments)
