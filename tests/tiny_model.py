"""Write a tiny random-weight llama-architecture GGUF for fast tests.

The tokenizer is copied from llama.cpp's `models/ggml-vocab-llama-spm.gguf` (a real SentencePiece vocab), so
text round-trips through it exactly like through a real llama model; only the weights are random. Generation
is therefore meaningless but deterministic, fast (a few ms per token) and exercises the whole C path.

Used by the `tiny_model_path` fixture in conftest.py; also runnable for benchmarks:
    python tests/tiny_model.py OUT.gguf [--vocab path/to/ggml-vocab-llama-spm.gguf]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Part of every cache key; bump when the written file changes in any way.
TINY_MODEL_VERSION = "tiny-llama-v2"

VOCAB_FILE = "ggml-vocab-llama-spm.gguf"

# Small enough to write in ~1 s and decode in a few ms per token, big enough to be a real transformer.
N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
N_CTX_TRAIN = 2048
SEED = 1234

# Copied verbatim from the vocab file: everything llama.cpp reads to build the tokenizer.
_TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
)


@contextmanager
def _gguf_file(out_path: str | os.PathLike[str], arch: str) -> Iterator[Any]:
    """A GGUFWriter on a temp file beside `out_path`; written and renamed into place when the block ends."""
    import gguf

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out)


def write_tiny_model(out_path: str | os.PathLike[str], vocab_path: str | os.PathLike[str], seed: int = SEED) -> Path:
    """Write the tiny model to `out_path` (atomically: a temp file renamed into place) and return the path;
    another `seed` gives other random weights with the same vocab (a draft model for speculative tests)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(vocab_path))
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    head_dim = N_EMBD // N_HEAD

    with _gguf_file(out_path, "llama") as writer:
        writer.add_name("llamarcp tiny random llama")
        writer.add_context_length(N_CTX_TRAIN)
        writer.add_embedding_length(N_EMBD)
        writer.add_block_count(N_LAYER)
        writer.add_feed_forward_length(N_FF)
        writer.add_head_count(N_HEAD)
        writer.add_head_count_kv(N_HEAD_KV)
        writer.add_rope_dimension_count(head_dim)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(n_vocab)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)

        for key in _TOKENIZER_KEYS:
            field = reader.fields.get(key)
            if field is None:
                continue
            value = field.contents()
            value_type = field.types[0]
            if value_type == gguf.GGUFValueType.ARRAY:
                writer.add_array(key, value)
            else:
                writer.add_key_value(key, value, value_type)

        rng = np.random.default_rng(seed)

        def rand(*shape: int, std: float) -> np.ndarray:
            return (rng.standard_normal(shape) * std).astype(np.float32)

        writer.add_tensor("token_embd.weight", rand(n_vocab, N_EMBD, std=0.5))
        writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        # A separate output matrix: tied embeddings would make every token predict itself. Logit std ~2.4 keeps
        # sampling neither uniform noise nor always the argmax.
        writer.add_tensor("output.weight", rand(n_vocab, N_EMBD, std=0.3))
        proj_std = 1.0 / np.sqrt(N_EMBD)
        for layer in range(N_LAYER):
            prefix = f"blk.{layer}."
            writer.add_tensor(prefix + "attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
            writer.add_tensor(prefix + "attn_q.weight", rand(N_HEAD * head_dim, N_EMBD, std=proj_std))
            writer.add_tensor(prefix + "attn_k.weight", rand(N_HEAD_KV * head_dim, N_EMBD, std=proj_std))
            writer.add_tensor(prefix + "attn_v.weight", rand(N_HEAD_KV * head_dim, N_EMBD, std=proj_std))
            writer.add_tensor(prefix + "attn_output.weight", rand(N_EMBD, N_HEAD * head_dim, std=proj_std))
            writer.add_tensor(prefix + "ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
            writer.add_tensor(prefix + "ffn_gate.weight", rand(N_FF, N_EMBD, std=proj_std))
            writer.add_tensor(prefix + "ffn_up.weight", rand(N_FF, N_EMBD, std=proj_std))
            writer.add_tensor(prefix + "ffn_down.weight", rand(N_EMBD, N_FF, std=1.0 / np.sqrt(N_FF)))

    return Path(out_path)


BERT_VOCAB_FILE = "ggml-vocab-bert-bge.gguf"


def write_tiny_bert(
    out_path: str | os.PathLike[str],
    vocab_path: str | os.PathLike[str],
    pooling: int = 1,
    classifier: bool = False,
    shape: tuple[int, int, int, int, int] = (N_EMBD, N_LAYER, N_HEAD, N_FF, 128),
    f16: bool = False,
) -> Path:
    """A tiny random BERT (non-causal, no KV cache) with the real bge WordPiece vocab, for embedding tests.

    `classifier=True` adds a cross-encoder head (llama.cpp's src/models/bert.cpp: `cls` dense + tanh,
    `cls.output` to one score) and rank pooling: a tiny reranker. `shape` is (n_embd, n_layer, n_head, n_ff,
    trained positions) and `f16` stores the matrices in F16 (as published rerankers are): benchmarks/rerank.py
    writes one of MiniLM-L6's shape (384, 6, 12, 1536, 512)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(vocab_path))
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    n_embd, n_layer, n_head, n_ff, n_ctx_train = shape
    with _gguf_file(out_path, "bert") as writer:
        writer.add_name("llamarcp tiny random bert")
        writer.add_context_length(n_ctx_train)
        writer.add_embedding_length(n_embd)
        writer.add_block_count(n_layer)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(n_head)
        writer.add_layer_norm_eps(1e-12)
        writer.add_causal_attention(False)
        writer.add_pooling_type(gguf.PoolingType.RANK if classifier else gguf.PoolingType(pooling))
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
        for key, field in reader.fields.items():
            if key.startswith("tokenizer."):
                value, value_type = field.contents(), field.types[0]
                if value_type == gguf.GGUFValueType.ARRAY:
                    writer.add_array(key, value)
                else:
                    writer.add_key_value(key, value, value_type)
        rng = np.random.default_rng(SEED)

        def rand(*shape: int, std: float = 0.2) -> np.ndarray:
            matrix = f16 and len(shape) == 2 and shape[0] > 2  # token_types stays F32: llama.cpp adds its row as is
            return (rng.standard_normal(shape) * std).astype(np.float16 if matrix else np.float32)

        ones, zeros = np.ones(n_embd, dtype=np.float32), np.zeros(n_embd, dtype=np.float32)
        writer.add_tensor("token_embd.weight", rand(n_vocab, n_embd, std=1.0))
        writer.add_tensor("token_types.weight", rand(2, n_embd))
        writer.add_tensor("position_embd.weight", rand(n_ctx_train, n_embd))
        writer.add_tensor("token_embd_norm.weight", ones)
        writer.add_tensor("token_embd_norm.bias", zeros)
        for layer in range(n_layer):
            prefix = f"blk.{layer}."
            for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
                writer.add_tensor(prefix + name + ".weight", rand(n_embd, n_embd))
                writer.add_tensor(prefix + name + ".bias", rand(n_embd, std=0.02))
            writer.add_tensor(prefix + "attn_output_norm.weight", ones)
            writer.add_tensor(prefix + "attn_output_norm.bias", zeros)
            writer.add_tensor(prefix + "ffn_up.weight", rand(n_ff, n_embd))
            writer.add_tensor(prefix + "ffn_up.bias", rand(n_ff, std=0.02))
            writer.add_tensor(prefix + "ffn_down.weight", rand(n_embd, n_ff))
            writer.add_tensor(prefix + "ffn_down.bias", rand(n_embd, std=0.02))
            writer.add_tensor(prefix + "layer_output_norm.weight", ones)
            writer.add_tensor(prefix + "layer_output_norm.bias", zeros)
        if classifier:
            writer.add_tensor("cls.weight", rand(n_embd, n_embd))
            writer.add_tensor("cls.bias", rand(n_embd, std=0.02))
            writer.add_tensor("cls.output.weight", rand(1, n_embd, std=1.0))
            writer.add_tensor("cls.output.bias", np.zeros(1, dtype=np.float32))
    return Path(out_path)


def write_tiny_gemma3(out_path: str | os.PathLike[str], vocab_path: str | os.PathLike[str], seed: int = SEED) -> Path:
    """A tiny random gemma3 (sliding-window attention, q/k norms, post-attention and post-FFN norms) with the
    llama SentencePiece vocab: llama.cpp's src/models/gemma3.cpp graph on a model that loads in milliseconds."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(vocab_path))
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    n_head, n_head_kv, head_dim = 2, 1, 32  # head_dim 32: the q/k norms hold whole Q8_0 blocks
    with _gguf_file(out_path, "gemma3") as writer:
        writer.add_name("llamarcp tiny random gemma3")
        writer.add_context_length(N_CTX_TRAIN)
        writer.add_embedding_length(N_EMBD)
        writer.add_block_count(N_LAYER)
        writer.add_feed_forward_length(N_FF)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_layer_norm_rms_eps(1e-6)
        writer.add_sliding_window(32)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        for key in _TOKENIZER_KEYS:
            field = reader.fields.get(key)
            if field is not None:
                value, value_type = field.contents(), field.types[0]
                if value_type == gguf.GGUFValueType.ARRAY:
                    writer.add_array(key, value)
                else:
                    writer.add_key_value(key, value, value_type)
        rng = np.random.default_rng(seed)

        def rand(*shape: int, std: float = 0.125) -> np.ndarray:
            return (rng.standard_normal(shape) * std).astype(np.float32)

        writer.add_tensor("token_embd.weight", rand(n_vocab, N_EMBD, std=0.5))
        writer.add_tensor("output_norm.weight", rand(N_EMBD, std=0.1))
        for layer in range(N_LAYER):
            prefix = f"blk.{layer}."
            for norm, width in (("attn_norm", N_EMBD), ("attn_q_norm", head_dim), ("attn_k_norm", head_dim)):
                writer.add_tensor(prefix + norm + ".weight", rand(width, std=0.1))
            writer.add_tensor(prefix + "attn_q.weight", rand(n_head * head_dim, N_EMBD))
            writer.add_tensor(prefix + "attn_k.weight", rand(n_head_kv * head_dim, N_EMBD))
            writer.add_tensor(prefix + "attn_v.weight", rand(n_head_kv * head_dim, N_EMBD))
            writer.add_tensor(prefix + "attn_output.weight", rand(N_EMBD, n_head * head_dim))
            for norm in ("post_attention_norm", "ffn_norm", "post_ffw_norm"):
                writer.add_tensor(prefix + norm + ".weight", rand(N_EMBD, std=0.1))
            writer.add_tensor(prefix + "ffn_gate.weight", rand(N_FF, N_EMBD))
            writer.add_tensor(prefix + "ffn_up.weight", rand(N_FF, N_EMBD))
            writer.add_tensor(prefix + "ffn_down.weight", rand(N_EMBD, N_FF))
    return Path(out_path)


def retype_tensors(src_path: str | os.PathLike[str], out_path: str | os.PathLike[str], types: dict[str, str]) -> Path:
    """Copy a GGUF with the tensors named in `types` stored in another ggml type ("F16", "BF16", "Q8_0", ...):
    the keys are kept, each listed tensor is dequantized to F32 and converted with the `gguf` package (a type
    it cannot quantize to, such as Q8_K, is written as zero blocks)."""
    import gguf
    import numpy as np
    from gguf import quants

    reader = gguf.GGUFReader(str(src_path))
    arch = reader.fields["general.architecture"].contents()
    with _gguf_file(out_path, arch) as writer:
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture":
                continue
            value, value_type = field.contents(), field.types[0]
            if value_type == gguf.GGUFValueType.ARRAY:
                writer.add_array(key, value)
            else:
                writer.add_key_value(key, value, value_type)
        for tensor in reader.tensors:
            target = types.get(tensor.name)
            if target is None:
                writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
                continue
            data = quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
            kind = gguf.GGMLQuantizationType[target]
            if kind == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(tensor.name, data)
            elif kind == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(tensor.name, data.astype(np.float16))
            else:
                try:
                    blocks = quants.quantize(data, kind)
                except NotImplementedError:  # no quantizer in `gguf` (Q8_K): zero blocks of the type's size
                    block, size = gguf.GGML_QUANT_SIZES[kind]
                    blocks = np.zeros((*data.shape[:-1], data.shape[-1] // block * size), dtype=np.uint8)
                writer.add_tensor(tensor.name, blocks, raw_dtype=kind)
    return Path(out_path)


def write_tiny_lora(out_path: str | os.PathLike[str], rank: int = 4, seed: int = 7, n_in: int = N_EMBD) -> Path:
    """A random LoRA adapter for the tiny model's attn_q/attn_v of every layer (n_in != N_EMBD: a wrong one)."""
    import numpy as np

    with _gguf_file(out_path, "llama") as writer:
        writer.add_type("adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", float(rank))
        rng = np.random.default_rng(seed)
        head_dim = N_EMBD // N_HEAD
        for layer in range(N_LAYER):
            for name, n_out in (("attn_q", N_HEAD * head_dim), ("attn_v", N_HEAD_KV * head_dim)):
                base = f"blk.{layer}.{name}.weight"
                writer.add_tensor(base + ".lora_a", (rng.standard_normal((rank, n_in)) * 0.5).astype(np.float32))
                writer.add_tensor(base + ".lora_b", (rng.standard_normal((n_out, rank)) * 0.5).astype(np.float32))
    return Path(out_path)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="where to write the GGUF")
    parser.add_argument("--vocab", help=f"path to {VOCAB_FILE} (default: from the pinned llama.cpp source)")
    args = parser.parse_args(argv)
    vocab = args.vocab
    if vocab is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        import build_lib

        vocab = build_lib.ensure_source() / "models" / VOCAB_FILE
    print(write_tiny_model(args.out, vocab))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
