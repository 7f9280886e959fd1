"""Context and sampling parameters checked before llama.cpp sees them.

llama.cpp reads `type_k`/`type_v` as indexes into its type table (an out-of-range value is an out-of-bounds
read), lets `std::bad_alloc` escape its C API for absurd thread counts (SIGABRT), and allocates the penalty
ring buffer for any `penalty_last_n` (10**9 -> 4 GB). The functions here raise TypeError for a value of the
wrong type and ValueError for one out of range, naming the parameter; the limits are the MAX_* constants below
or come from the generated bindings (GGML_MAX_N_THREADS, the `ggml_type` enum, llama_max_parallel_sequences).
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_MIN_KEEP",
    "MAX_PENALTY_LAST_N",
    "check_context_params",
    "check_finite",
    "check_int",
    "check_sampling_params",
    "check_seed",
    "ggml_type_names",
]

#: Largest `penalty_last_n` (llama-cpp-python's `last_n_tokens_size`): the penalty sampler keeps a ring buffer
#: of this many token ids.
MAX_PENALTY_LAST_N = 1 << 20
#: Largest `min_keep` of the top-p / typical / min-p samplers (they keep at least this many candidates).
MAX_MIN_KEEP = 1 << 20

_INT32_MAX = 2**31 - 1
_UINT32_MAX = 2**32 - 1


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """`value` as an int in [low, high]; bools and non-integers (floats, strings) are a TypeError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = operator.index(value)
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def check_finite(name: str, value: Any, low: float = -math.inf, high: float = math.inf) -> float:
    """`value` as a finite float in [low, high] (NaN and infinities refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not low <= number <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return number


def check_seed(value: Any) -> int:
    """A sampling seed: an int; negatives and LLAMA_DEFAULT_SEED mean "random", others must fit in uint32."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"seed must be an int or None, got {type(value).__name__} {value!r}")
    value = operator.index(value)
    if value > _UINT32_MAX:
        raise ValueError(f"seed must fit in 32 bits (0..{_UINT32_MAX}), got {value}")
    return value


def ggml_type_names() -> dict[int, str]:
    """Every `ggml_type` value the pinned ggml.h defines (from the generated bindings), GGML_TYPE_COUNT excluded."""
    from llamarcp._ffi import ffi

    elements: dict[int, str] = ffi.typeof("enum ggml_type").elements
    return {value: name for value, name in elements.items() if name != "GGML_TYPE_COUNT"}


def _enum_values(enum: str) -> set[int]:
    from llamarcp._ffi import ffi

    return set(ffi.typeof(f"enum {enum}").elements)


def check_context_params(params: Any) -> None:
    """Check a `llama_context_params` struct (as filled by the caller) before `llama_init_from_model`."""
    from llamarcp._backend import get_lib

    lib = get_lib()
    max_threads = int(lib.GGML_MAX_N_THREADS)
    for name in ("n_threads", "n_threads_batch"):
        check_int(name, int(getattr(params, name)), 1, max_threads)
    # n_ctx is free (llama.cpp refuses a KV cache it cannot allocate); the sizes must stay in int32 range.
    check_int("n_batch", int(params.n_batch), 1, _INT32_MAX)
    check_int("n_ubatch", int(params.n_ubatch), 1, _INT32_MAX)
    check_int("n_seq_max", int(params.n_seq_max), 1, int(lib.llama_max_parallel_sequences()))
    types = ggml_type_names()
    for name in ("type_k", "type_v"):
        value = int(getattr(params, name))
        if value not in types:
            raise ValueError(f"{name} must be a ggml_type (e.g. {lib.GGML_TYPE_F16} for F16), got {value}")
    for name, enum in (
        ("pooling_type", "llama_pooling_type"),
        ("rope_scaling_type", "llama_rope_scaling_type"),
        ("attention_type", "llama_attention_type"),
        ("flash_attn_type", "llama_flash_attn_type"),
    ):
        value = int(getattr(params, name))
        if value not in _enum_values(enum):
            raise ValueError(f"{name} must be one of {sorted(_enum_values(enum))}, got {value}")
    for name in (
        "rope_freq_base",
        "rope_freq_scale",
        "yarn_ext_factor",
        "yarn_attn_factor",
        "yarn_beta_fast",
        "yarn_beta_slow",
        "defrag_thold",
    ):
        number = float(getattr(params, name))
        if math.isnan(number) or math.isinf(number):
            raise ValueError(f"{name} must be a finite number, got {number}")
    if float(params.rope_freq_base) < 0 or float(params.rope_freq_scale) < 0:
        raise ValueError("rope_freq_base and rope_freq_scale must be >= 0 (0 means the model's value)")


def check_sampling_params(params: Any, n_vocab: int) -> None:
    """Check a `llamarcp.sampling.SamplingParams` against llama.cpp's samplers and this model's vocab."""
    for name in ("temperature", "frequency_penalty", "presence_penalty", "mirostat_eta"):
        check_finite(name, getattr(params, name))
    check_finite("repeat_penalty", params.repeat_penalty)
    if params.repeat_penalty <= 0:
        raise ValueError(f"repeat_penalty must be > 0 (1.0 disables it), got {params.repeat_penalty!r}")
    for name in ("top_p", "min_p", "typical_p"):
        check_finite(name, getattr(params, name), 0.0, 1.0)
    check_finite("mirostat_tau", params.mirostat_tau, 0.0)
    check_int("top_k", params.top_k, -_INT32_MAX, _INT32_MAX)
    check_int("penalty_last_n (last_n_tokens_size)", params.penalty_last_n, -1, MAX_PENALTY_LAST_N)
    check_int("min_keep", params.min_keep, 0, MAX_MIN_KEEP)
    check_int("mirostat_mode", params.mirostat_mode, 0, 2)
    seed = check_seed(params.seed)
    if seed < 0:
        raise ValueError(f"seed must be resolved to 0..{_UINT32_MAX} before sampling, got {seed}")
    if not isinstance(params.grammar_root, str) or not params.grammar_root:
        raise TypeError("grammar_root must be a non-empty str")
    bias = params.logit_bias
    if bias:
        if not isinstance(bias, Mapping):
            raise TypeError(f"logit_bias must be a mapping of token id -> bias, got {type(bias).__name__}")
        for token, value in bias.items():
            check_int("logit_bias token", token, 0, n_vocab - 1)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"logit_bias for token {token} must be a number, got {value!r}")
            if math.isnan(value) or value == math.inf:  # -inf is how a token is banned
                raise ValueError(f"logit_bias for token {token} must be finite or -inf, got {value!r}")
