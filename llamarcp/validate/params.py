"""Constructor keywords, context and sampling parameters, call arguments: checked before llama.cpp sees them.

llama.cpp reads `type_k`/`type_v` as indexes into its type table (an out-of-range value is an out-of-bounds
read), lets `std::bad_alloc` escape its C API for absurd thread counts (SIGABRT), and allocates the penalty
ring buffer for any `penalty_last_n` (10**9 -> 4 GB). The functions here raise TypeError for a value of the
wrong type and ValueError for one out of range, naming the parameter; the limits are the MAX_* constants below
or come from the generated bindings (GGML_MAX_N_THREADS, the `ggml_type` enum, llama_max_parallel_sequences).

Every `Llama` keyword that names a `llama_model_params` / `llama_context_params` field is checked against that
field's C type as the loaded release declares it (`c_field_types`): an integer against its type's range, an enum
against its values, a float for finiteness, a bool for being one. So `n_ctx=2**32` is a ValueError naming
`n_ctx` and its range instead of cffi's OverflowError naming `uint32_t`, and a field a new release adds is
covered without a hand-kept list.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

__all__ = [
    "MAX_MIN_KEEP",
    "MAX_PENALTY_LAST_N",
    "MODEL_AND_CONTEXT_STRUCTS",
    "c_field_types",
    "check_c_value",
    "check_chat_arguments",
    "check_context_params",
    "check_finite",
    "check_int",
    "check_llama_keywords",
    "check_logit_bias",
    "check_prompt",
    "check_sampling_params",
    "check_seed",
    "check_stop",
    "check_texts",
    "check_token_ids",
    "ggml_type_names",
    "set_fields",
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


# -- C field types, from the loaded release's declarations ----------------------------------------------------------

#: The structs whose fields `Llama` keywords fill (a keyword that names a field is checked against its C type).
MODEL_AND_CONTEXT_STRUCTS = ("struct llama_model_params", "struct llama_context_params")

_FLOAT_MAX = {"float": 3.4028234663852886e38, "double": 1.7976931348623157e308}


@cache
def c_field_types(struct: str) -> dict[str, Any]:
    """Field name -> cffi type of `struct` as the loaded bindings declare it."""
    from llamarcp._ffi import ffi

    return {name: field.type for name, field in ffi.typeof(struct).fields}


@cache
def c_int_range(ctype: Any) -> tuple[int, int]:
    """The values an integer C type holds (from its size and signedness)."""
    from llamarcp._ffi import ffi

    bits = 8 * ffi.sizeof(ctype)
    signed = int(ffi.cast(ctype, -1)) < 0
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _enum_choices(ctype: Any) -> dict[int, str]:
    return {value: name for value, name in ctype.elements.items() if not name.endswith("_COUNT")}


def check_c_value(name: str, ctype: Any, value: Any) -> Any:
    """`value` checked for a C field of type `ctype`: TypeError for the wrong kind, ValueError outside the type's
    range or the enum's values, both naming `name`. Returns it as cffi takes it. Pointers are not checked."""
    kind, cname = ctype.kind, ctype.cname
    if kind == "enum":
        number = check_int(name, value, -(2**63), 2**64)
        choices = _enum_choices(ctype)
        if number not in choices:
            listed = ", ".join(f"{v} ({n})" for v, n in sorted(choices.items()))
            raise ValueError(f"{name} must be one of the {cname} values: {listed}; got {number}")
        return number
    if kind != "primitive":
        return value
    if cname == "_Bool":
        if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
            return bool(value)
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    if cname in _FLOAT_MAX:
        limit = _FLOAT_MAX[cname]
        return check_finite(name, value, -limit, limit)
    low, high = c_int_range(ctype)
    try:
        return check_int(name, value, low, high)
    except ValueError as exc:
        raise ValueError(f"{exc} ({cname})") from None


def set_fields(params: Any, struct: str, values: Mapping[str, Any]) -> None:
    """Assign `values` (None: keep the default) to the fields of `params`, each checked against its C type first."""
    types = c_field_types(struct)
    for name, value in values.items():
        if value is None:
            continue
        if name not in types:
            raise ValueError(f"{name} is not supported by the loaded llama.cpp release ({struct} has no such field)")
        setattr(params, name, check_c_value(name, types[name], value))


def check_llama_keywords(args: Mapping[str, Any]) -> None:
    """`Llama(...)` keywords: each one named like a model or context params field is checked against that field's
    C type (None keeps llama.cpp's default), then what combines several (n_ctx x n_parallel)."""
    for name in ("n_batch", "n_ubatch"):
        if args.get(name):  # 0 / None: llama.cpp's choice; otherwise within int32, as llama.cpp uses them
            check_int(name, args[name], 1, _INT32_MAX)
    for struct in MODEL_AND_CONTEXT_STRUCTS:
        for name, ctype in c_field_types(struct).items():
            if args.get(name) is not None:
                check_c_value(name, ctype, args[name])
    n_ctx, n_parallel = args.get("n_ctx") or 0, args.get("n_parallel") or 1
    if isinstance(n_parallel, int) and n_parallel > 1:
        high = c_int_range(c_field_types("struct llama_context_params")["n_ctx"])[1] // n_parallel
        check_int(f"n_ctx (per sequence, with n_parallel={n_parallel})", n_ctx, 0, high)


# -- call arguments ----------------------------------------------------------------------------------------------


def check_token_ids(name: str, tokens: Any) -> list[int]:
    """A sequence of token ids as ints within int32 (the vocab check comes later, against the model)."""
    if isinstance(tokens, (str, bytes, bytearray)) or not isinstance(tokens, Iterable):
        raise TypeError(f"{name} must be a sequence of token ids (ints), got {type(tokens).__name__} {tokens!r:.60}")
    array: Any = tokens
    dtype_kind = getattr(getattr(array, "dtype", None), "kind", None)
    if dtype_kind in ("i", "u") and getattr(array, "ndim", 1) == 1:
        ids: list[int] = array.tolist()  # a numpy array of integers: Python ints at once
    else:
        ids = []
        for token in tokens:
            if isinstance(token, bool) or not isinstance(token, numbers.Integral):
                raise TypeError(f"{name} must hold token ids (ints), found {type(token).__name__} {token!r:.60}")
            ids.append(int(token))
    if ids and not (min(ids) >= -(2**31) and max(ids) <= _INT32_MAX):
        bad = next(t for t in ids if not -(2**31) <= t <= _INT32_MAX)
        raise ValueError(f"{name} holds token id {bad}: outside the vocab (token ids are int32)")
    return ids


def check_prompt(prompt: Any) -> str | bytes | list[int]:
    """A completion prompt: text (str, UTF-8 bytes) or token ids."""
    if isinstance(prompt, (str, bytes)):
        return prompt
    if isinstance(prompt, bytearray):
        return bytes(prompt)
    if prompt is None or not isinstance(prompt, Iterable):
        raise TypeError(
            f"prompt must be a str, bytes or a list of token ids, got {type(prompt).__name__} {prompt!r:.60}"
        )
    return check_token_ids("prompt", prompt)


def check_logit_bias(bias: Any) -> dict[int, float] | None:
    """`logit_bias` as {token id: bias}; keys may be ints or decimal strings (OpenAI's JSON sends strings)."""
    if bias is None:
        return None
    if not isinstance(bias, Mapping):
        raise TypeError(
            f"logit_bias must be a mapping of token id -> bias (e.g. {{15043: -100.0}}), got {type(bias).__name__}"
        )
    result: dict[int, float] = {}
    for key, value in bias.items():
        token: Any = key
        if isinstance(key, str):
            token = int(key) if key.strip().lstrip("-").isdigit() else key
        if isinstance(token, bool) or not isinstance(token, numbers.Integral):
            raise TypeError(f"logit_bias keys must be token ids (ints or decimal strings), got {key!r:.60}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"logit_bias for token {key!r} must be a number, got {type(value).__name__} {value!r:.60}")
        result[int(token)] = float(value)
    return result or None


def check_stop(stop: Any) -> list[str]:
    """`stop`: None, one string, or a list of strings."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, Iterable) and not isinstance(stop, (bytes, bytearray, Mapping)):
        stops = list(stop)
        if all(isinstance(s, str) for s in stops):
            return stops
    raise TypeError(f"stop must be a string or a list of strings, got {type(stop).__name__} {stop!r:.60}")


def check_texts(name: str, texts: Any) -> list[str]:
    """One text or a list of texts (embeddings input)."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, Iterable) and not isinstance(texts, (bytes, bytearray, Mapping)):
        items = list(texts)
        if all(isinstance(t, str) for t in items):
            return items
    raise TypeError(f"{name} must be a string or a list of strings, got {type(texts).__name__} {texts!r:.60}")


def check_chat_arguments(messages: Any, options: Mapping[str, Any]) -> None:
    """The containers of a chat request: `messages` (and `tools`/`functions` when given) lists of objects, `stop`
    a string or list of strings; what is inside each message is the chat module's to check."""
    for name, value in (
        ("messages", messages),
        ("tools", options.get("tools")),
        ("functions", options.get("functions")),
    ):
        if value is None and name != "messages":
            continue
        if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(value, Iterable):
            raise TypeError(f"{name} must be a list of objects (dicts), got {type(value).__name__} {value!r:.60}")
        items = value if isinstance(value, Sequence) else ()  # an iterator is left to the chat code, unconsumed
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise TypeError(f"{name}[{index}] must be an object (a dict), got {type(item).__name__} {item!r:.60}")
    check_stop(options.get("stop"))
