"""Write random-weight multimodal projector GGUFs (mmproj) that b11549's libmtmd loads and runs.

`mlp` is LLaVA-1.5's projector, sized for the tiny llama of tiny_model.py (n_embd 64): a 48x48 image in 8x8
patches gives 36 image tokens. `gemma3` fits gemma-3-270m (n_embd 640): 48/8 = 6 patches a side, pooled by the
scale factor 2 into 3x3 = 9 tokens. `omit`, `shapes` and `keys` break one thing on purpose for the crash tests
(a tensor left out, a tensor of another shape, a key of another value or type).

    python tests/tiny_mmproj.py OUT.gguf [--projector gemma3 --n-embd-text 640]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TINY_MMPROJ_VERSION = "tiny-mmproj-v1"

IMAGE_SIZE = 48
PATCH_SIZE = 8
N_EMBD = 32
N_FF = 48  # must differ from N_EMBD: clip.cpp tells ffn_up from ffn_down by their shapes
N_LAYER = 2
N_HEAD = 4
N_HIDDEN = 96  # mlp: the projector's hidden width
SEED = 4321

#: Image tokens one image becomes (the tests' expectation; measured with libmtmd).
MLP_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
GEMMA3_SCALE = 2
GEMMA3_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE // GEMMA3_SCALE) ** 2


def projector_tensors(projector: str, n_embd_text: int, seed: int = SEED) -> dict[str, Any]:
    """name -> float32 numpy array (numpy shapes: ggml's ne reversed) of a random projector."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def rand(*shape: int, std: float = 0.05) -> Any:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    e, f = N_EMBD, N_FF
    n_pos = (IMAGE_SIZE // PATCH_SIZE) ** 2
    tensors: dict[str, Any] = {
        "v.patch_embd.weight": rand(e, 3, PATCH_SIZE, PATCH_SIZE, std=0.2),
        "v.position_embd.weight": rand(n_pos, e, std=0.2),
    }
    for i in range(N_LAYER):
        blk = f"v.blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[blk + name + ".weight"] = rand(e, e, std=1 / np.sqrt(e))
        tensors[blk + "ln1.weight"] = np.ones(e, dtype=np.float32)
        tensors[blk + "ln2.weight"] = np.ones(e, dtype=np.float32)
        tensors[blk + "ffn_up.weight"] = rand(f, e, std=1 / np.sqrt(e))
        tensors[blk + "ffn_down.weight"] = rand(e, f, std=1 / np.sqrt(f))
    if projector == "mlp":
        tensors["mm.0.weight"] = rand(N_HIDDEN, e, std=1 / np.sqrt(e))
        tensors["mm.0.bias"] = rand(N_HIDDEN, std=0.02)
        tensors["mm.2.weight"] = rand(n_embd_text, N_HIDDEN, std=1 / np.sqrt(N_HIDDEN))
        tensors["mm.2.bias"] = rand(n_embd_text, std=0.02)
    elif projector == "gemma3":
        tensors["v.post_ln.weight"] = np.ones(e, dtype=np.float32)
        tensors["mm.soft_emb_norm.weight"] = np.ones(e, dtype=np.float32)
        tensors["mm.input_projection.weight"] = rand(e, n_embd_text, std=1 / np.sqrt(e))
    else:
        raise ValueError(f"unknown projector {projector!r} (mlp or gemma3)")
    return tensors


def write_tiny_mmproj(
    out_path: str | os.PathLike[str],
    projector: str = "mlp",
    n_embd_text: int = 64,
    *,
    seed: int = SEED,
    omit: tuple[str, ...] = (),
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    keys: Mapping[str, Any] | None = None,
) -> Path:
    """Write a projector to `out_path` (atomically) and return the path.

    `omit`: tensor or key names to leave out; `shapes`: tensors replaced by random ones of that numpy shape;
    `keys`: keys written with another value (a `(value, gguf.GGUFValueType)` pair sets the type too).
    """
    import gguf
    import numpy as np

    tensors = projector_tensors(projector, n_embd_text, seed)
    rng = np.random.default_rng(seed + 1)
    for name, shape in (shapes or {}).items():
        tensors[name] = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    values: dict[str, tuple[Any, Any]] = {
        "clip.has_vision_encoder": (True, gguf.GGUFValueType.BOOL),
        "clip.projector_type": (projector, gguf.GGUFValueType.STRING),
        "clip.vision.image_size": (IMAGE_SIZE, gguf.GGUFValueType.UINT32),
        "clip.vision.patch_size": (PATCH_SIZE, gguf.GGUFValueType.UINT32),
        "clip.vision.embedding_length": (N_EMBD, gguf.GGUFValueType.UINT32),
        "clip.vision.feed_forward_length": (N_FF, gguf.GGUFValueType.UINT32),
        "clip.vision.block_count": (N_LAYER, gguf.GGUFValueType.UINT32),
        "clip.vision.projection_dim": (n_embd_text, gguf.GGUFValueType.UINT32),
        "clip.vision.attention.head_count": (N_HEAD, gguf.GGUFValueType.UINT32),
        "clip.vision.attention.layer_norm_epsilon": (1e-6, gguf.GGUFValueType.FLOAT32),
        "clip.vision.image_mean": ([0.5, 0.5, 0.5], gguf.GGUFValueType.ARRAY),
        "clip.vision.image_std": ([0.5, 0.5, 0.5], gguf.GGUFValueType.ARRAY),
    }
    if projector == "gemma3":
        values["clip.vision.projector.scale_factor"] = (GEMMA3_SCALE, gguf.GGUFValueType.UINT32)
    for key, value in (keys or {}).items():
        if isinstance(value, tuple):
            values[key] = value
        else:
            values[key] = (value, values[key][1] if key in values else gguf.GGUFValueType.UINT32)

    return _write_projector(out_path, f"llamarcp tiny random {projector} projector", values, tensors, omit)


def _write_projector(
    out_path: str | os.PathLike[str],
    name: str,
    values: Mapping[str, tuple[Any, Any]],
    tensors: Mapping[str, Any],
    omit: tuple[str, ...],
) -> Path:
    """Write a `clip` GGUF of these keys (value, gguf type) and tensors, less `omit`, atomically; its path."""
    import gguf
    from tiny_model import _gguf_file  # the tiny models' writer: a temp file renamed into place

    with _gguf_file(out_path, "clip") as writer:
        writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        for key, (value, value_type) in values.items():
            if key in omit:
                continue
            if value_type == gguf.GGUFValueType.ARRAY:
                writer.add_array(key, value)
            else:
                writer.add_key_value(key, value, value_type)
        for tensor_name, array in tensors.items():
            if tensor_name not in omit:
                writer.add_tensor(tensor_name, array)
    return Path(out_path)


#: The audio projector: Qwen2-Audio's (`qwen2a`): a whisper encoder and one linear layer.
N_MEL = 128
AUDIO_POSITIONS = 1500  # whisper: a 30 s chunk is 3000 mel frames, halved by the second convolution
#: Tokens of one clip of up to 30 s (the positions, halved again by the average pool).
AUDIO_TOKENS = AUDIO_POSITIONS // 2


def write_tiny_audio_mmproj(
    out_path: str | os.PathLike[str], n_embd_text: int = 64, *, seed: int = SEED, omit: tuple[str, ...] = ()
) -> Path:
    """A random `qwen2a` audio projector (whisper encoder) for the tiny llama."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)

    def rand(*shape: int, std: float = 0.05) -> Any:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    e, f = N_EMBD, N_FF
    ones, zeros = np.ones(e, dtype=np.float32), np.zeros(e, dtype=np.float32)
    tensors: dict[str, Any] = {
        "a.conv1d.1.weight": rand(e, N_MEL, 3, std=0.1),
        "a.conv1d.1.bias": rand(e, 1, std=0.02),
        "a.conv1d.2.weight": rand(e, e, 3, std=0.1),
        "a.conv1d.2.bias": rand(e, 1, std=0.02),
        "a.position_embd.weight": rand(AUDIO_POSITIONS, e, std=0.2),
        "mm.a.fc.weight": rand(n_embd_text, e, std=1 / np.sqrt(e)),
        "mm.a.fc.bias": rand(n_embd_text, std=0.02),
    }
    for i in range(N_LAYER):
        blk = f"a.blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[blk + name + ".weight"] = rand(e, e, std=1 / np.sqrt(e))
        tensors[blk + "attn_q.bias"] = rand(e, std=0.02)
        tensors[blk + "attn_v.bias"] = rand(e, std=0.02)
        tensors[blk + "attn_out.bias"] = rand(e, std=0.02)
        for norm in ("ln1", "ln2"):
            tensors[blk + norm + ".weight"], tensors[blk + norm + ".bias"] = ones, zeros
        tensors[blk + "ffn_up.weight"] = rand(f, e, std=1 / np.sqrt(e))
        tensors[blk + "ffn_up.bias"] = rand(f, std=0.02)
        tensors[blk + "ffn_down.weight"] = rand(e, f, std=1 / np.sqrt(f))
        tensors[blk + "ffn_down.bias"] = rand(e, std=0.02)
    u32 = gguf.GGUFValueType.UINT32
    values: dict[str, tuple[Any, Any]] = {
        "clip.has_audio_encoder": (True, gguf.GGUFValueType.BOOL),
        "clip.projector_type": ("qwen2a", gguf.GGUFValueType.STRING),
        "clip.audio.num_mel_bins": (N_MEL, u32),
        "clip.audio.embedding_length": (e, u32),
        "clip.audio.feed_forward_length": (f, u32),
        "clip.audio.block_count": (N_LAYER, u32),
        "clip.audio.projection_dim": (n_embd_text, u32),
        "clip.audio.attention.head_count": (N_HEAD, u32),
        "clip.audio.attention.layer_norm_epsilon": (1e-5, gguf.GGUFValueType.FLOAT32),
    }
    return _write_projector(out_path, "llamarcp tiny random qwen2a audio projector", values, tensors, omit)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--projector", default="mlp", choices=("mlp", "gemma3"))
    parser.add_argument("--n-embd-text", type=int, default=64)
    args = parser.parse_args(argv)
    print(write_tiny_mmproj(args.out, args.projector, args.n_embd_text))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
