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
