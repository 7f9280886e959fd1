"""GGUF headers read in Python and the hyperparameters llama.cpp asserts on checked before it loads the file.

llama.cpp's GGUF parser (ggml/src/gguf.cpp) rejects malformed files cleanly, but the model loader then trusts
the values: `GGML_ASSERT(n_layer > 0 && n_layer <= LLAMA_MAX_LAYERS)` and the expert-count asserts in
`llama_model_base::load_hparams`, an unknown `rope.scaling.type` string, and at the first decode
`GGML_ASSERT(eps >= 0.0f)` of the norm kernels all abort the process; so do a vocab with a repeated token text
(`llama_vocab::load`), an unknown `pooling_type`, an integer-typed weight (SIGSEGV in the first decode), and a
norm/bias/scale weight that is not F32 (SIGABRT in ggml's CPU add/mul at the first decode), or any tensor in
Q8_1/Q8_K (SIGSEGV: no CPU kernel takes them as a weight).
`check_gguf_hparams` reads the header, key/value section and tensor infos (tensor data is never touched) and
raises `ModelLoadError` naming the offending key or tensor.

The reader is self-contained (the `gguf` package is a test dependency only); it bounds every length by the
file size, so a hostile header cannot make it allocate more than the file holds.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from llamarcp.errors import ModelLoadError
from llamarcp.validate.gguf_roles import f32_role

__all__ = [
    "ACTIVATION_ONLY_TYPES",
    "MAX_EXPERTS",
    "MAX_KEY_BYTES",
    "MAX_LAYERS",
    "GGUFHeader",
    "check_gguf_hparams",
    "read_gguf_header",
]

#: llama.cpp's LLAMA_MAX_LAYERS (src/llama-hparams.h, not part of llama.h so not in the generated bindings):
#: `block_count` must be in 1..MAX_LAYERS or the loader aborts.
MAX_LAYERS = 512
#: llama.cpp's LLAMA_MAX_EXPERTS (src/llama-hparams.h): `expert_count` above it aborts the loader.
MAX_EXPERTS = 1024
#: ggml types that exist only as the other operand of a quantized dot product (Q8_1 for Q4_1/Q5_1, Q8_K for the
#: k-quants): ggml-cpu.c gives them no `vec_dot` and ggml.c no `to_float`, so as a weight any matrix product
#: or row lookup crashes. Refused for every tensor.
ACTIVATION_ONLY_TYPES = ("GGML_TYPE_Q8_1", "GGML_TYPE_Q8_K")
#: Longest key accepted (gguf.cpp has no limit; real keys are under 100 bytes).
MAX_KEY_BYTES = 64 * 1024
#: Numeric arrays up to this length are decoded (per-layer hyperparameters); longer ones are only skipped.
MAX_DECODED_ARRAY = 4 * MAX_LAYERS

_MAGIC = b"GGUF"
_MAX_DIMS = 4  # GGML_MAX_DIMS; gguf.cpp refuses more
_TOKENS_KEY = "tokenizer.ggml.tokens"
_SUPPORTED_VERSIONS = (2, 3)


def _gguf_types() -> dict[str, int]:
    """Value type ids of the GGUF file format (ggml/docs/gguf.md, `enum gguf_type` in gguf.h).

    Written out here because they are part of the file format, and the generated bindings only carry the
    gguf.h declarations llama.h uses (not this enum).
    """
    order = ("UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "STRING", "ARRAY")
    types = {f"GGUF_TYPE_{name}": value for value, name in enumerate(order)}
    types.update(GGUF_TYPE_UINT64=10, GGUF_TYPE_INT64=11, GGUF_TYPE_FLOAT64=12)
    return types


@dataclass
class GGUFHeader:
    """The fixed header and the key/value section of a GGUF file (array values longer than
    MAX_DECODED_ARRAY, and string arrays, are kept as their length only, in `array_lengths`)."""

    version: int
    n_tensors: int
    kv: dict[str, Any] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    #: (name, ggml type id) of every tensor, in file order.
    tensors: list[tuple[str, int]] = field(default_factory=list)
    #: Index of the first token of `tokenizer.ggml.tokens` whose text repeats an earlier one, if any.
    duplicate_token: int | None = None
    #: gguf_type id of every key (for arrays: of the elements, in `array_types`).
    kv_types: dict[str, int] = field(default_factory=dict)
    array_types: dict[str, int] = field(default_factory=dict)
    #: ggml `ne` (innermost first, as ggml stores it) and data offset (from `data_start`) of every tensor.
    tensor_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    tensor_offsets: dict[str, int] = field(default_factory=dict)
    #: Where the tensor data section starts (the end of the tensor infos, aligned) and the file's size.
    data_start: int = 0
    file_size: int = 0

    @property
    def architecture(self) -> str | None:
        arch = self.kv.get("general.architecture")
        return arch if isinstance(arch, str) else None


class _Cursor:
    def __init__(self, data: Any, path: Path) -> None:
        self.data = data
        self.pos = 0
        self.size = len(data)
        self.path = path

    def fail(self, message: str) -> ModelLoadError:
        return ModelLoadError(f"could not load {self.path}: malformed GGUF header: {message} (at byte {self.pos})")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"needs {n} more bytes but the file ends")
        chunk = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > self.size:
            raise self.fail("the file ends inside the header")
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += size
        return value

    def string(self, limit: int | None = None) -> bytes:
        length = self.unpack("<Q")
        if limit is not None and length > limit:
            raise self.fail(f"a {length}-byte string exceeds the {limit}-byte limit")
        return self.take(length)


# struct format of each scalar gguf_type name.
_SCALARS = {
    "GGUF_TYPE_UINT8": "<B",
    "GGUF_TYPE_INT8": "<b",
    "GGUF_TYPE_UINT16": "<H",
    "GGUF_TYPE_INT16": "<h",
    "GGUF_TYPE_UINT32": "<I",
    "GGUF_TYPE_INT32": "<i",
    "GGUF_TYPE_FLOAT32": "<f",
    "GGUF_TYPE_BOOL": "<?",
    "GGUF_TYPE_UINT64": "<Q",
    "GGUF_TYPE_INT64": "<q",
    "GGUF_TYPE_FLOAT64": "<d",
}


def _read_value(cur: _Cursor, type_id: int, names: dict[int, str], key: str, header: GGUFHeader) -> Any:
    name = names.get(type_id)
    if name is None:
        raise cur.fail(f"key {key!r} has unknown value type {type_id}")
    if name in _SCALARS:
        return cur.unpack(_SCALARS[name])
    if name == "GGUF_TYPE_STRING":
        return cur.string().decode("utf-8", errors="replace")
    # An array: element type, count, elements (nested arrays are not allowed by gguf.cpp either).
    elem_id = cur.unpack("<I")
    count = cur.unpack("<Q")
    elem = names.get(elem_id)
    header.array_lengths[key] = count
    header.array_types[key] = elem_id
    if elem in _SCALARS:
        fmt = _SCALARS[elem]
        width = struct.calcsize(fmt)
        if count > (cur.size - cur.pos) // width:
            raise cur.fail(f"array {key!r} claims {count} elements, more than the file holds")
        if count <= MAX_DECODED_ARRAY:
            values = list(struct.unpack_from(f"<{count}{fmt[1]}", cur.data, cur.pos))
            cur.pos += width * count
            return values
        cur.pos += width * count
        return None
    if elem == "GGUF_TYPE_STRING":
        if count > (cur.size - cur.pos) // 8:
            raise cur.fail(f"array {key!r} claims {count} strings, more than the file holds")
        data, pos, size = cur.data, cur.pos, cur.size
        # Skipped, not decoded (token lists are large); the vocab's token texts are only checked for duplicates.
        seen: set[bytes] | None = set() if key == _TOKENS_KEY else None
        for index in range(count):
            if pos + 8 > size:
                cur.pos = pos
                raise cur.fail(f"array {key!r} ends past the end of the file")
            (length,) = struct.unpack_from("<Q", data, pos)
            pos += 8 + length
            if pos > size:
                cur.pos = size
                raise cur.fail(f"a string of array {key!r} ends past the end of the file")
            if seen is not None:
                text = data[pos - length : pos]
                if text in seen and header.duplicate_token is None:
                    header.duplicate_token = index
                seen.add(text)
        cur.pos = pos
        return None
    raise cur.fail(f"array {key!r} has unsupported element type {elem_id}")


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """The header and key/value pairs of a GGUF file; ModelLoadError when they are malformed or truncated."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                raise ModelLoadError(f"could not load {path}: the file is empty")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _parse(_Cursor(data, path))
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc}") from exc


def _parse(cur: _Cursor) -> GGUFHeader:
    if cur.take(4) != _MAGIC:
        raise cur.fail("bad magic (not a GGUF file)")
    version = cur.unpack("<I")
    if version not in _SUPPORTED_VERSIONS:
        raise cur.fail(f"unsupported GGUF version {version} (supported: {_SUPPORTED_VERSIONS})")
    n_tensors = cur.unpack("<Q")
    n_kv = cur.unpack("<Q")
    # Every tensor info and every key/value pair takes at least 8 + 4 bytes.
    if n_kv > cur.size // 12 or n_tensors > cur.size // 12:
        raise cur.fail(f"{n_kv} keys / {n_tensors} tensors cannot fit in a {cur.size}-byte file")
    names = {value: name for name, value in _gguf_types().items()}
    header = GGUFHeader(version=version, n_tensors=n_tensors)
    for _ in range(n_kv):
        key = cur.string(MAX_KEY_BYTES).decode("utf-8", errors="replace")
        type_id = cur.unpack("<I")
        header.kv_types[key] = type_id
        header.kv[key] = _read_value(cur, type_id, names, key, header)
    for _ in range(n_tensors):
        name = cur.string(MAX_KEY_BYTES).decode("utf-8", errors="replace")
        n_dims = cur.unpack("<I")
        if n_dims > _MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (at most {_MAX_DIMS})")
        header.tensor_shapes[name] = struct.unpack(f"<{n_dims}Q", cur.take(8 * n_dims))
        tensor_type = cur.unpack("<I")
        header.tensor_offsets[name] = cur.unpack("<Q")  # gguf.cpp checks it against the file; validate/mmproj too
        header.tensors.append((name, tensor_type))
    alignment = header.kv.get("general.alignment", 32)
    alignment = alignment if isinstance(alignment, int) and alignment > 0 else 32
    header.data_start = -(-cur.pos // alignment) * alignment
    header.file_size = cur.size
    return header


# -- hyperparameter checks ---------------------------------------------------------------------------------------


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _ints(value: Any) -> list[int] | None:
    """A scalar or per-layer array hyperparameter as a list of ints (None when absent or not integers)."""
    if _is_int(value):
        return [value]
    if isinstance(value, list) and all(_is_int(v) for v in value):
        return value
    return None


def _rope_scaling_names() -> set[str]:
    from llamarcp._ffi import ffi

    prefix = "LLAMA_ROPE_SCALING_TYPE_"
    return {
        name[len(prefix) :].lower()
        for value, name in ffi.typeof("enum llama_rope_scaling_type").elements.items()
        if value >= 0 and name != prefix + "MAX_VALUE"
    }


def check_gguf_hparams(path: str | os.PathLike[str], *, vocab_only: bool = False) -> GGUFHeader:
    """Read `path`'s header and refuse the hyperparameters llama.cpp would abort on (ModelLoadError, key named).

    With `vocab_only`, llama.cpp reads no hyperparameters, so only the header itself is checked.
    """
    header = read_gguf_header(path)
    if header.duplicate_token is not None:  # llama_vocab::load asserts every token text is unique
        raise ModelLoadError(
            f"could not load {path}: GGUF key {_TOKENS_KEY!r} repeats a token text at index {header.duplicate_token}"
        )
    arch = header.architecture
    if vocab_only or arch is None or arch == "clip":
        return header  # llama.cpp loads no hyperparameters then (and reports a missing architecture itself)
    kv = header.kv

    def refuse(key: str, reason: str) -> ModelLoadError:
        return ModelLoadError(f"could not load {path}: GGUF key {key!r} = {kv.get(key)!r} {reason}")

    def key(suffix: str) -> str:
        return f"{arch}.{suffix}"

    # Any float hyperparameter of the architecture that is NaN or infinite is corrupt; an epsilon must be >= 0.
    for name, value in kv.items():
        if not name.startswith(arch + "."):
            continue
        floats = value if isinstance(value, list) else [value]
        for item in floats:
            if isinstance(item, float):
                if not math.isfinite(item):
                    raise refuse(name, "is not a finite number")
                if item < 0 and ("epsilon" in name or name.endswith("_eps")):
                    raise refuse(name, "must be >= 0 (llama.cpp's norm kernels assert eps >= 0)")

    n_layer = kv.get(key("block_count"))
    if _is_int(n_layer) and not 1 <= n_layer <= MAX_LAYERS:
        raise refuse(key("block_count"), f"must be between 1 and {MAX_LAYERS} (LLAMA_MAX_LAYERS)")
    layers = n_layer if _is_int(n_layer) else MAX_LAYERS

    nextn = kv.get(key("nextn_predict_layers"))
    if _is_int(nextn) and nextn > layers:
        raise refuse(key("nextn_predict_layers"), f"must not exceed block_count ({layers})")

    for suffix in ("feed_forward_length", "attention.head_count", "attention.head_count_kv", "expert_used_count"):
        name = key(suffix)
        length = header.array_lengths.get(name)
        if length is not None and length > layers:
            raise refuse(name, f"has {length} per-layer entries but block_count is {layers}")

    _check_experts(kv, key, refuse, layers)

    scaling = kv.get(key("rope.scaling.type"))
    if isinstance(scaling, str) and scaling not in _rope_scaling_names():
        raise refuse(key("rope.scaling.type"), f"is not one of {sorted(_rope_scaling_names())}")

    n_embd = kv.get(key("embedding_length"))
    heads = _ints(kv.get(key("attention.head_count")))
    if _is_int(n_embd) and heads:
        if n_embd == 0 and any(heads):
            raise refuse(key("embedding_length"), "must be > 0 for a model with attention heads")
        if any(h > n_embd for h in heads):
            raise refuse(key("attention.head_count"), f"exceeds embedding_length ({n_embd})")
    heads_kv = _ints(kv.get(key("attention.head_count_kv")))
    if heads and heads_kv:
        width = max(len(heads), len(heads_kv))
        for h, h_kv in zip(
            heads * width if len(heads) == 1 else heads, heads_kv * width if len(heads_kv) == 1 else heads_kv
        ):
            if h_kv > h or (h_kv and h % h_kv) or (h and not h_kv and len(heads_kv) == 1):
                raise refuse(key("attention.head_count_kv"), f"must be > 0 and divide attention.head_count ({h})")
    _check_enum_key(kv, key("pooling_type"), "llama_pooling_type", refuse)
    _check_tensor_types(header, path)
    return header


def _check_enum_key(kv: dict[str, Any], name: str, enum: str, refuse: Any) -> None:
    """An integer key llama.cpp casts to a C enum (an unknown value aborts where it is switched on)."""
    from llamarcp._ffi import ffi

    value = kv.get(name)
    if _is_int(value) and value not in ffi.typeof(f"enum {enum}").elements:
        raise refuse(name, f"is not a {enum} value")


def _check_tensor_types(header: GGUFHeader, path: str | os.PathLike[str]) -> None:
    """Weights must have a ggml type llama.cpp computes with: an integer type (I8..I64) where a float or
    quantized weight is expected reaches kernels that do not support it (SIGSEGV in the first decode), and a
    norm, bias, scale or other element-wise weight (`gguf_roles.f32_role`) that is not F32 makes ggml's CPU
    binary ops abort (SIGABRT in the first decode)."""
    from llamarcp.validate.params import ggml_type_names

    types = ggml_type_names()
    integer_names = ("GGML_TYPE_I8", "GGML_TYPE_I16", "GGML_TYPE_I32", "GGML_TYPE_I64")
    integer = {value for value, name in types.items() if name in integer_names}
    f32 = next(value for value, name in types.items() if name == "GGML_TYPE_F32")
    no_kernel = {value for value, name in types.items() if name in ACTIVATION_ONLY_TYPES}
    for name, tensor_type in header.tensors:
        if tensor_type not in types:
            raise ModelLoadError(f"could not load {path}: tensor {name!r} has unknown ggml type {tensor_type}")
        if tensor_type in integer and name.endswith(".weight"):
            raise ModelLoadError(
                f"could not load {path}: tensor {name!r} has integer type {types[tensor_type]}, not a weight type"
            )
        if tensor_type in no_kernel:
            raise ModelLoadError(
                f"could not load {path}: tensor {name!r} has type {_short(types[tensor_type])}, an activation-side "
                "type ggml's CPU backend can neither multiply nor dequantize (SIGSEGV/SIGABRT at the first decode); "
                "store weights as F32, F16, BF16 or a weight quantization such as Q8_0 or Q4_K"
            )
        op = f32_role(name)
        if op is not None and tensor_type != f32:
            raise ModelLoadError(
                f"could not load {path}: tensor {name!r} has type {_short(types[tensor_type])} but must be F32: "
                f"llama.cpp applies it to F32 activations with GGML_OP_{op}, and ggml's CPU kernels abort the "
                "process on any other type (rule: element-wise weights are F32, see llamarcp.validate.gguf_roles)"
            )


def _short(type_name: str) -> str:
    return type_name.removeprefix("GGML_TYPE_")


def _check_experts(kv: dict[str, Any], key: Any, refuse: Any, layers: int) -> None:
    """The expert-count asserts of llama_model_base::load_hparams."""
    n_expert = kv.get(key("expert_count"), 0)
    if not _is_int(n_expert):
        return
    used = _ints(kv.get(key("expert_used_count"), 0)) or [0]
    used_max = max(used[:layers], default=0)
    groups = kv.get(key("expert_group_count"), 0)
    group_used = kv.get(key("expert_group_used_count"), 0)
    if n_expert > MAX_EXPERTS:
        raise refuse(key("expert_count"), f"exceeds {MAX_EXPERTS} (LLAMA_MAX_EXPERTS)")
    if used_max > n_expert:
        raise refuse(key("expert_used_count"), f"exceeds expert_count ({n_expert})")
    if n_expert > 0:
        if used_max <= 0:
            raise refuse(key("expert_used_count"), "must be > 0 when the model has experts")
        if _is_int(groups) and groups >= n_expert:
            raise refuse(key("expert_group_count"), f"must be below expert_count ({n_expert})")
        if _is_int(groups) and groups > 1:
            if n_expert % groups:
                raise refuse(key("expert_group_count"), f"must divide expert_count ({n_expert})")
            if not (_is_int(group_used) and 0 < group_used < groups):
                raise refuse(key("expert_group_used_count"), "must be between 1 and expert_group_count - 1")
    else:
        if used_max:
            raise refuse(key("expert_used_count"), "must be 0 when expert_count is 0")
        if _is_int(groups) and groups:
            raise refuse(key("expert_group_count"), "must be 0 when expert_count is 0")
