"""llamarcp.validate.gguf: the header reader and the hyperparameter checks that keep llama.cpp from aborting."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamarcp.errors import ModelLoadError
from llamarcp.validate.gguf import MAX_LAYERS, check_gguf_hparams, read_gguf_header

# -- a minimal GGUF writer (header + key/values + tensor infos, no data) for unit tests --------------------------


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _value(value: Any) -> tuple[int, bytes]:
    """(gguf type id, encoded value): ints as UINT32 (INT32 when negative), floats as FLOAT32."""
    if isinstance(value, bool):
        return 7, struct.pack("<?", value)
    if isinstance(value, int):
        return (5, struct.pack("<i", value)) if value < 0 else (4, struct.pack("<I", value))
    if isinstance(value, float):
        return 6, struct.pack("<f", value)
    if isinstance(value, str):
        return 8, _string(value)
    elem_type, _ = _value(value[0])
    items = b"".join(_value(v)[1] for v in value)
    return 9, struct.pack("<IQ", elem_type, len(value)) + items


def make_gguf(kv: dict[str, Any], tensors: tuple[tuple[str, int], ...] = ()) -> bytes:
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for key, value in kv.items():
        type_id, data = _value(value)
        out += _string(key) + struct.pack("<I", type_id) + data
    for name, ggml_type in tensors:
        out += _string(name) + struct.pack("<I", 1) + struct.pack("<Q", 8) + struct.pack("<IQ", ggml_type, 0)
    return out


LLAMA = {
    "general.architecture": "llama",
    "llama.context_length": 2048,
    "llama.embedding_length": 64,
    "llama.block_count": 2,
    "llama.attention.head_count": 4,
    "llama.attention.head_count_kv": 2,
    "llama.attention.layer_norm_rms_epsilon": 1e-5,
}


def _check(tmp_path: Path, changes: dict[str, Any], tensors: tuple[tuple[str, int], ...] = ()) -> Any:
    path = tmp_path / "m.gguf"
    path.write_bytes(make_gguf({**LLAMA, **changes}, tensors))
    return check_gguf_hparams(path)


def test_reader_reads_the_tiny_model(tiny_model_path: Path) -> None:
    import gguf

    header = read_gguf_header(tiny_model_path)
    reference = gguf.GGUFReader(str(tiny_model_path))
    assert header.version == 3 and header.architecture == "llama"
    assert header.n_tensors == len(reference.tensors) == len(header.tensors)
    assert [name for name, _ in header.tensors] == [t.name for t in reference.tensors]
    assert header.kv["llama.block_count"] == reference.fields["llama.block_count"].contents()
    assert header.array_lengths["tokenizer.ggml.tokens"] == len(reference.fields["tokenizer.ggml.tokens"].data)
    assert check_gguf_hparams(tiny_model_path).kv == header.kv


def test_valid_header_passes(tmp_path: Path) -> None:
    assert _check(tmp_path, {}).kv["llama.block_count"] == 2


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"llama.block_count": 0}, "llama.block_count"),
        ({"llama.block_count": 1000}, "llama.block_count"),
        ({"llama.block_count": 2**32 - 1}, "llama.block_count"),
        ({"llama.block_count": MAX_LAYERS + 1}, "llama.block_count"),
        ({"llama.attention.layer_norm_rms_epsilon": math.nan}, "layer_norm_rms_epsilon"),
        ({"llama.attention.layer_norm_rms_epsilon": -1.0}, "layer_norm_rms_epsilon"),
        ({"llama.attention.layer_norm_rms_epsilon": -math.inf}, "layer_norm_rms_epsilon"),
        ({"llama.rope.freq_base": math.inf}, "llama.rope.freq_base"),
        ({"llama.rope.scaling.type": "bogus"}, "llama.rope.scaling.type"),
        ({"llama.nextn_predict_layers": 3}, "llama.nextn_predict_layers"),
        ({"llama.expert_count": 2000, "llama.expert_used_count": 2}, "llama.expert_count"),
        ({"llama.expert_count": 8, "llama.expert_used_count": 9}, "llama.expert_used_count"),
        ({"llama.expert_count": 8, "llama.expert_used_count": 0}, "llama.expert_used_count"),
        ({"llama.expert_used_count": 2}, "llama.expert_used_count"),
        ({"llama.expert_count": 8, "llama.expert_used_count": 2, "llama.expert_group_count": 3}, "group_count"),
        ({"llama.expert_count": 8, "llama.expert_used_count": 2, "llama.expert_group_count": 8}, "group_count"),
        ({"llama.expert_count": 8, "llama.expert_used_count": 2, "llama.expert_group_count": 2}, "group_used"),
        ({"llama.attention.head_count": 100}, "llama.attention.head_count"),
        ({"llama.attention.head_count_kv": 3}, "head_count_kv"),
        ({"llama.attention.head_count_kv": 0}, "head_count_kv"),
        ({"llama.feed_forward_length": [128, 128, 128]}, "llama.feed_forward_length"),
        ({"llama.pooling_type": 7}, "llama.pooling_type"),
    ],
)
def test_hyperparameters_llama_cpp_asserts_on(tmp_path: Path, changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ModelLoadError, match=key):
        _check(tmp_path, changes)


def test_valid_variants_pass(tmp_path: Path) -> None:
    _check(tmp_path, {"llama.expert_count": 8, "llama.expert_used_count": [2, 2]})
    _check(tmp_path, {"llama.rope.scaling.type": "yarn", "llama.attention.head_count_kv": [2, 4]})
    _check(tmp_path, {"llama.attention.layer_norm_rms_epsilon": 0.0, "llama.pooling_type": 1})


def test_integer_weight_types_are_refused(tmp_path: Path) -> None:
    from llamarcp.validate.params import ggml_type_names

    by_name = {name: value for value, name in ggml_type_names().items()}
    _check(tmp_path, {}, (("blk.0.attn_q.weight", by_name["GGML_TYPE_Q4_K"]),))
    with pytest.raises(ModelLoadError, match="integer type GGML_TYPE_I32"):
        _check(tmp_path, {}, (("blk.0.attn_v.weight", by_name["GGML_TYPE_I32"]),))
    with pytest.raises(ModelLoadError, match="unknown ggml type 4"):  # Q4_2, removed from ggml long ago
        _check(tmp_path, {}, (("blk.0.attn_v.weight", 4),))


def test_repeated_token_text_is_refused(tmp_path: Path) -> None:
    """`GGML_ASSERT(id_to_token.size() == token_to_id.size())` in llama_vocab::load (found by the fuzzer)."""
    path = tmp_path / "m.gguf"
    path.write_bytes(make_gguf({**LLAMA, "tokenizer.ggml.tokens": ["a", "b", "c", "b"]}))
    with pytest.raises(ModelLoadError, match="repeats a token text at index 3"):
        check_gguf_hparams(path, vocab_only=True)
    path.write_bytes(make_gguf({**LLAMA, "tokenizer.ggml.tokens": ["a", "b", "c"]}))
    assert check_gguf_hparams(path).array_lengths["tokenizer.ggml.tokens"] == 3


def test_vocab_only_skips_hyperparameters(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(make_gguf({**LLAMA, "llama.block_count": 0}))
    assert check_gguf_hparams(path, vocab_only=True).kv["llama.block_count"] == 0


@pytest.mark.parametrize("value", [0, 1000, 2**32 - 1])
def test_llama_refuses_bad_block_count_before_loading(tiny_model_path: Path, tmp_path: Path, value: int) -> None:
    """The issue's abort (`GGML_ASSERT(hparams.n_layer_all > 0 ...)`) becomes a ModelLoadError naming the key."""
    import gguf

    from llamarcp import Llama

    reader = gguf.GGUFReader(str(tiny_model_path))
    field = reader.fields["llama.block_count"]
    offset = field.offset + sum(part.nbytes for part in field.parts[:-1])
    data = bytearray(tiny_model_path.read_bytes())
    data[offset : offset + 4] = struct.pack("<I", value)
    path = tmp_path / "bad.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="llama.block_count"):
        Llama(str(path), n_ctx=64, n_threads=1)


@pytest.mark.parametrize(
    "blob",
    [
        b"GGUF" + struct.pack("<I", 1),  # version 1
        b"GGUF" + struct.pack("<IQQ", 3, 0, 2**62),  # more keys than bytes
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**40),  # key longer than the file
        make_gguf({"a": [1, 2, 3]})[:-3],  # array cut short
        make_gguf({"a": "text"})[:-1],
    ],
)
def test_malformed_headers_are_clean_errors(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(blob)
    with pytest.raises(ModelLoadError, match="malformed GGUF header"):
        read_gguf_header(path)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 400))
def test_random_bytes_only_raise_model_load_error(tmp_path_factory: Any, tail: bytes, cut: int) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "m.gguf"
    path.write_bytes((make_gguf(LLAMA) + tail)[:cut] if cut % 2 else b"GGUF" + struct.pack("<I", 3) + tail)
    try:
        header = check_gguf_hparams(path)
    except ModelLoadError:
        return
    assert header.version == 3  # anything else must have been refused
