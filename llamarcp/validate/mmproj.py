"""Multimodal projector (mmproj) GGUFs checked in Python before libmtmd loads them.

An mmproj is untrusted input like a model file, and libmtmd (tools/mtmd/clip.cpp) trusts what it reads: a
missing `v.patch_embd.weight`, `v.position_embd.weight`, `attn_q` or projector tensor is a NULL it dereferences
(SIGSEGV in `mtmd_init_from_file`); a key of the wrong GGUF type trips `gguf_get_val_*`'s type assert; a weight of
the wrong shape, a head count that does not divide the embedding width or position rows that do not match the
patches abort in ggml (at load or at the first encode); and a file cut inside its last tensor loads silently with
uninitialised bytes. `check_mmproj` reads the header and tensor infos (never the tensor data) and raises
`ModelLoadError` naming the key or tensor.

Projector types whose graph llamarcp knows (`mlp`, `mlp_norm`, `ldp*`, `gemma3`) get their projector tensors
checked too; for every other type clip.cpp knows the common vision-tower checks apply.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamarcp.errors import ModelLoadError
from llamarcp.validate.gguf import GGUFHeader, read_gguf_header

__all__ = [
    "WHISPER_POSITIONS",
    "MAX_VISION_BLOCKS",
    "MAX_VISION_IMAGE_SIZE",
    "ProjectorInfo",
    "check_mmproj",
]

#: clip.cpp loads `block_count` layers; a real vision tower has at most a few dozen.
MAX_VISION_BLOCKS = 256
#: Largest `clip.vision.image_size` accepted (the encoder's input is image_size^2 pixels).
MAX_VISION_IMAGE_SIZE = 8192

# gguf_type ids of the file format (ggml/docs/gguf.md).
_U32, _I32, _F32, _BOOL, _STR, _ARR = 4, 5, 6, 7, 8, 9
_TYPE_NAMES = {_U32: "uint32", _I32: "int32", _F32: "float32", _BOOL: "bool", _STR: "string", _ARR: "array"}

#: Keys clip.cpp reads with a typed getter (`gguf_get_val_u32` etc. assert the type), by the type it asserts.
_KEY_TYPES: dict[str, int] = {
    "clip.has_vision_encoder": _BOOL,
    "clip.has_audio_encoder": _BOOL,
    "clip.use_gelu": _BOOL,
    "clip.use_silu": _BOOL,
    "clip.projector_type": _STR,
    "clip.vision.projector_type": _STR,
    "clip.audio.projector_type": _STR,
    "clip.vision.image_size": _U32,
    "clip.vision.patch_size": _U32,
    "clip.vision.projector.scale_factor": _U32,
    "clip.vision.spatial_merge_size": _U32,
    "clip.vision.image_min_pixels": _U32,
    "clip.vision.image_max_pixels": _U32,
    "clip.vision.mm_patch_merge_type": _STR,
    "clip.minicpmv_version": _I32,
    "clip.minicpmv_query_num": _U32,
    "clip.audio.num_mel_bins": _U32,
}
for _modality in ("vision", "audio"):
    for _suffix in ("embedding_length", "feed_forward_length", "block_count", "projection_dim"):
        _KEY_TYPES[f"clip.{_modality}.{_suffix}"] = _U32
    for _suffix in ("attention.head_count", "attention.head_count_kv", "attention.head_dim"):
        _KEY_TYPES[f"clip.{_modality}.{_suffix}"] = _U32
    _KEY_TYPES[f"clip.{_modality}.attention.layer_norm_epsilon"] = _F32
#: Array keys and their element type.
_ARRAY_TYPES = {"clip.vision.image_mean": _F32, "clip.vision.image_std": _F32}

#: Projector types clip.cpp's `PROJECTOR_TYPE_NAMES` lists (tools/mtmd/clip-impl.h of the pinned release).
KNOWN_PROJECTOR_TYPES = frozenset(
    [
        "mlp",
        "mlp_norm",
        "ldp",
        "ldpv2",
        "resampler",
        "adapter",
        "qwen2vl_merger",
        "qwen2.5vl_merger",
        "qwen3vl_merger",
        "ling3vl",
        "step3vl",
        "gemma3",
        "gemma3nv",
        "gemma3na",
        "gemma4v",
        "gemma4a",
        "gemma4uv",
        "gemma4ua",
        "phi4",
        "idefics3",
        "pixtral",
        "ultravox",
        "internvl",
        "llama4",
        "qwen2a",
        "qwen3a",
        "glma",
        "qwen2.5o",
        "voxtral",
        "meralion",
        "musicflamingo",
        "lfm2",
        "d1omni_v",
        "kimivl",
        "paddleocr",
        "lightonocr",
        "cogvlm",
        "janus_pro",
        "dots_ocr",
        "dots3note_v",
        "dots3note_a",
        "deepseekocr",
        "deepseekocr2",
        "deepseek4v",
        "lfm2a",
        "d1omni_a",
        "glm4v",
        "glm5v",
        "youtuvl",
        "yasa2",
        "kimik25",
        "nemotron_v2_vl",
        "hunyuanvl",
        "parakeet",
        "exaone4_5",
        "minicpmv4_6",
        "granite_speech",
        "mimovl",
        "minimax_m3",
        "granite4_vision",
        "mimo_audio",
        "cohere2v",
    ]
)
#: Types whose graph adds the learned position embedding to every patch (rows must match the patch grid).
_PATCH_POSITION_TYPES = frozenset({"mlp", "mlp_norm", "ldp", "ldpv2", "gemma3"})

#: Types whose graph starts with the `v.patch_embd.weight` convolution (patch x patch x RGB -> embedding_length).
_CONV_PATCH_TYPES = _PATCH_POSITION_TYPES | {
    "qwen2vl_merger",
    "qwen2.5vl_merger",
    "qwen3vl_merger",
    "idefics3",
    "pixtral",
}
#: Audio projectors on a whisper encoder (`clip_graph_whisper_enc`).
_WHISPER_TYPES = frozenset({"ultravox", "voxtral", "qwen2a", "glma", "meralion", "musicflamingo"})
#: Positions a whisper encoder needs: 30 s of 10 ms mel frames, halved by its second convolution.
WHISPER_POSITIONS = 1500
#: Types whose vision tower has no standard transformer blocks (clip.cpp `has_standard_layers`).
_NO_STANDARD_LAYERS = frozenset({"gemma3nv", "qwen3tts_spkenc", "pockettts_gen"})
#: Types for which clip.cpp swaps ffn_up and ffn_down when ffn_down's input width is the embedding width.
_FFN_SWAP_TYPES = frozenset(
    {"mlp", "mlp_norm", "ldp", "ldpv2", "qwen2vl_merger", "qwen2.5vl_merger", "exaone4_5", "adapter", "gemma3",
     "idefics3", "resampler", "minicpmv4_6"}
)  # fmt: skip

#: (bytes per block, elements per block) of the ggml types a projector's tensors use (ggml.c type_traits).
_GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (4, 1),  # F32
    1: (2, 1),  # F16
    2: (18, 32),  # Q4_0
    3: (20, 32),  # Q4_1
    6: (22, 32),  # Q5_0
    7: (24, 32),  # Q5_1
    8: (34, 32),  # Q8_0
    9: (36, 32),  # Q8_1
    10: (84, 256),  # Q2_K
    11: (110, 256),  # Q3_K
    12: (144, 256),  # Q4_K
    13: (176, 256),  # Q5_K
    14: (210, 256),  # Q6_K
    15: (292, 256),  # Q8_K
    24: (1, 1),  # I8
    25: (2, 1),  # I16
    26: (4, 1),  # I32
    27: (8, 1),  # I64
    28: (8, 1),  # F64
    30: (2, 1),  # BF16
}


@dataclass(frozen=True)
class ProjectorInfo:
    """What `check_mmproj` learned about a projector."""

    path: str
    projector_type: str
    has_vision: bool
    has_audio: bool
    image_size: int = 0
    patch_size: int = 0
    n_embd: int = 0
    #: Width of the embeddings it produces (must equal the text model's n_embd), when the type says it.
    n_embd_out: int | None = None


def _refuse(path: Any, message: str) -> ModelLoadError:
    return ModelLoadError(f"could not load projector {path}: {message}")


def check_mmproj(path: str | os.PathLike[str], n_embd_text: int | None = None) -> ProjectorInfo:
    """Refuse (ModelLoadError) an mmproj GGUF libmtmd would crash on; `n_embd_text` is the text model's width."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"projector file not found: {path}")
    header = read_gguf_header(path)
    kv = header.kv
    arch = header.architecture
    if arch is not None and arch != "clip":
        raise _refuse(path, f"general.architecture is {arch!r}, not 'clip' (is this the language model?)")
    _check_key_types(header, path)
    _check_extent(header, path)
    has_vision = kv.get("clip.has_vision_encoder") is True
    has_audio = kv.get("clip.has_audio_encoder") is True
    if not has_vision and not has_audio:
        raise _refuse(path, "clip.has_vision_encoder and clip.has_audio_encoder are both absent or false")
    proj_type = kv.get("clip.projector_type") or kv.get("clip.vision.projector_type") or ""
    if not has_vision:
        proj_type = kv.get("clip.projector_type") or kv.get("clip.audio.projector_type") or ""
    if proj_type not in KNOWN_PROJECTOR_TYPES:
        raise _refuse(path, f"clip.projector_type {proj_type!r} is not a projector type libmtmd knows")
    info = ProjectorInfo(str(path), proj_type, has_vision, has_audio)
    if has_vision:
        info = _check_vision(header, path, info)
    if has_audio:
        _check_audio(header, path, kv.get("clip.audio.projector_type") or proj_type)
        fc = header.tensor_shapes.get("mm.a.fc.weight")
        if info.n_embd_out is None and fc is not None and len(fc) >= 2:  # qwen2a's single projection
            info = ProjectorInfo(info.path, info.projector_type, has_vision, has_audio, n_embd_out=fc[1])
    if n_embd_text is not None and info.n_embd_out is not None and info.n_embd_out != n_embd_text:
        raise _refuse(
            path, f"it projects to width {info.n_embd_out} but the language model's embedding_length is {n_embd_text}"
        )
    return info


def _check_key_types(header: GGUFHeader, path: Path) -> None:
    for key, expected in _KEY_TYPES.items():
        actual = header.kv_types.get(key)
        if actual is not None and actual != expected:
            raise _refuse(path, f"key {key!r} has type {_TYPE_NAMES.get(actual, actual)}, not {_TYPE_NAMES[expected]}")
    for key, element in _ARRAY_TYPES.items():
        actual = header.kv_types.get(key)
        if actual is None:
            continue
        if actual != _ARR or header.array_types.get(key) != element:
            raise _refuse(path, f"key {key!r} must be an array of {_TYPE_NAMES[element]}")
        if header.array_lengths.get(key) != 3:
            raise _refuse(path, f"key {key!r} must hold 3 values (one per RGB channel)")
    for key, value in header.kv.items():
        if key.startswith("clip.") and header.kv_types.get(key) == _U32 and value > 0x7FFFFFFF:
            raise _refuse(path, f"key {key!r} = {value} exceeds INT32_MAX")


def _nbytes(shape: tuple[int, ...], ggml_type: int) -> int | None:
    sizes = _GGML_TYPE_SIZES.get(ggml_type)
    if sizes is None:
        return None
    type_size, block = sizes
    if not shape or shape[0] % block:
        return None
    n = 1
    for dim in shape:
        n *= dim
    return n // block * type_size


def _check_extent(header: GGUFHeader, path: Path) -> None:
    """Every tensor's bytes lie inside the file (a cut file would load with uninitialised weights)."""
    types = dict(header.tensors)
    for name, shape in header.tensor_shapes.items():
        size = _nbytes(shape, types[name])
        if size is None:  # a type this table does not size (gguf.cpp still checks the alignment)
            size = 1
        end = header.data_start + header.tensor_offsets[name] + size
        if end > header.file_size:
            raise _refuse(
                path,
                f"the file is truncated: tensor {name!r} ends at byte {end} but the file has {header.file_size} bytes",
            )


def _u32(header: GGUFHeader, path: Path, key: str, *, required: bool = True, minimum: int = 1) -> int:
    value = header.kv.get(key)
    if value is None:
        if required:
            raise _refuse(path, f"required key {key!r} is missing")
        return 0
    if value < minimum:
        raise _refuse(path, f"key {key!r} = {value} must be >= {minimum}")
    return int(value)


def _shape(header: GGUFHeader, path: Path, name: str, expected: tuple[int, ...] | None, *, required: bool) -> bool:
    """Check tensor `name` has ggml shape `expected` (ne, innermost first; trailing 1s ignored); False if absent."""
    shape = header.tensor_shapes.get(name)
    if shape is None:
        if required:
            raise _refuse(path, f"required tensor {name!r} is missing")
        return False
    if expected is not None:
        trimmed = list(shape)
        while len(trimmed) > len(expected) and trimmed[-1] == 1:
            trimmed.pop()
        if tuple(trimmed) != expected:
            raise _refuse(path, f"tensor {name!r} has shape {list(shape)}, expected {list(expected)}")
    return True


def _check_ffn(header: GGUFHeader, path: Path, blk: str, n_embd: int, proj_type: str) -> None:
    """ffn_up takes the embedding to the hidden width, ffn_down brings it back (the widths must agree)."""
    up = header.tensor_shapes.get(blk + "ffn_up.weight")
    down = header.tensor_shapes.get(blk + "ffn_down.weight")
    if up is None or down is None:
        raise _refuse(
            path, f"required tensor {blk + ('ffn_up' if up is None else 'ffn_down') + '.weight'!r} is missing"
        )
    if len(up) < 2 or len(down) < 2:
        raise _refuse(path, f"tensors {blk}ffn_up/ffn_down must be matrices, not {list(up)}/{list(down)}")
    if proj_type in _FFN_SWAP_TYPES and down[0] == n_embd:
        up, down = down, up  # clip.cpp swaps the two of old converters the same way
    if up[0] != n_embd or down[1] != n_embd or up[1] != down[0]:
        raise _refuse(
            path,
            f"tensors {blk}ffn_up/ffn_down have shapes {list(up)}/{list(down)}: expected [{n_embd}, F]/[F, {n_embd}] "
            f"(embedding_length {n_embd})",
        )


def _check_tower(header: GGUFHeader, path: Path, modality: str, prefix: str, proj_type: str) -> tuple[int, int, int]:
    """The transformer blocks: (n_embd, n_ff, block_count) after checking heads and every block's weights."""
    key = f"clip.{modality}."
    n_embd = _u32(header, path, key + "embedding_length")
    # Qwen2-VL projectors of the old surgery script say 0 here: the blocks' own shapes are what counts.
    n_ff = _u32(header, path, key + "feed_forward_length", minimum=0)
    n_layer = _u32(header, path, key + "block_count")
    if n_layer > MAX_VISION_BLOCKS:
        raise _refuse(path, f"key {key + 'block_count'!r} = {n_layer} exceeds {MAX_VISION_BLOCKS}")
    n_head = _u32(header, path, key + "attention.head_count")
    n_head_kv = _u32(header, path, key + "attention.head_count_kv", required=False) or n_head
    head_dim = _u32(header, path, key + "attention.head_dim", required=False)
    _u32(header, path, key + "projection_dim", minimum=0)
    if key + "attention.layer_norm_epsilon" not in header.kv:
        raise _refuse(path, f"required key {key + 'attention.layer_norm_epsilon'!r} is missing")
    eps = header.kv[key + "attention.layer_norm_epsilon"]
    if not eps >= 0 or eps != eps:
        raise _refuse(path, f"key {key + 'attention.layer_norm_epsilon'!r} = {eps} must be a number >= 0")
    if not head_dim:
        if n_embd % n_head:
            raise _refuse(path, f"attention.head_count {n_head} does not divide embedding_length {n_embd}")
        head_dim = n_embd // n_head
    if n_head % n_head_kv:
        raise _refuse(path, f"attention.head_count_kv {n_head_kv} does not divide attention.head_count {n_head}")
    if proj_type in _NO_STANDARD_LAYERS:
        return n_embd, n_ff, n_layer
    q_width, kv_width = n_head * head_dim, n_head_kv * head_dim
    for il in range(n_layer):
        blk = f"{prefix}.blk.{il}."
        has_qkv = _shape(header, path, blk + "attn_qkv.weight", (n_embd, q_width + 2 * kv_width), required=False)
        if not has_qkv:
            _shape(header, path, blk + "attn_q.weight", (n_embd, q_width), required=True)
            _shape(header, path, blk + "attn_k.weight", (n_embd, kv_width), required=True)
            _shape(header, path, blk + "attn_v.weight", (n_embd, kv_width), required=True)
        _shape(header, path, blk + "attn_out.weight", (q_width, n_embd), required=True)
        if blk + "ffn_gate_exps.weight" in header.tensor_shapes:
            continue  # a mixture-of-experts block: no dense ffn
        _check_ffn(header, path, blk, n_embd, proj_type)
    return n_embd, n_ff, n_layer


def _check_audio(header: GGUFHeader, path: Path, proj_type: str) -> None:
    """The audio tower; for whisper encoders also what `clip_graph_whisper_enc` asserts (aborts on)."""
    n_mel = _u32(header, path, "clip.audio.num_mel_bins")
    n_embd, _n_ff, n_layer = _check_tower(header, path, "audio", "a", proj_type)
    if proj_type not in _WHISPER_TYPES:
        return
    _shape(header, path, "a.conv1d.1.weight", (3, n_mel, n_embd), required=True)
    _shape(header, path, "a.conv1d.2.weight", (3, n_embd, n_embd), required=True)
    positions = header.tensor_shapes.get("a.position_embd.weight")
    if positions is None or len(positions) < 2 or positions[0] != n_embd or positions[1] < WHISPER_POSITIONS:
        raise _refuse(
            path,
            f"tensor 'a.position_embd.weight' must be [{n_embd}, >= {WHISPER_POSITIONS}] (a 30 s chunk's positions), "
            f"not {list(positions) if positions else 'missing'}",
        )
    for il in range(n_layer):
        blk = f"a.blk.{il}."
        for name in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "attn_q.bias", "attn_v.bias"):
            _shape(header, path, blk + name, (n_embd,), required=True)
        if blk + "attn_k.bias" in header.tensor_shapes:
            raise _refuse(path, f"tensor {blk + 'attn_k.bias'!r} must not exist (whisper's key projection has no bias)")


def _check_vision(header: GGUFHeader, path: Path, info: ProjectorInfo) -> ProjectorInfo:
    image_size = _u32(header, path, "clip.vision.image_size")
    patch_size = _u32(header, path, "clip.vision.patch_size")
    if image_size > MAX_VISION_IMAGE_SIZE:
        raise _refuse(path, f"clip.vision.image_size {image_size} exceeds {MAX_VISION_IMAGE_SIZE}")
    if patch_size > image_size:
        raise _refuse(path, f"clip.vision.patch_size {patch_size} exceeds clip.vision.image_size {image_size}")
    for key in ("clip.vision.image_mean", "clip.vision.image_std"):
        if key not in header.kv_types:
            raise _refuse(path, f"required key {key!r} is missing")
    n_embd, _n_ff, _n_layer = _check_tower(header, path, "vision", "v", info.projector_type)
    proj = info.projector_type
    if proj in _CONV_PATCH_TYPES:  # their graph convolves the image with it (a missing one is a NULL deref)
        _shape(header, path, "v.patch_embd.weight", (patch_size, patch_size, 3, n_embd), required=True)
    per_side = image_size // patch_size
    n_patches = per_side * per_side
    has_class = "v.class_embd" in header.tensor_shapes
    if proj in _PATCH_POSITION_TYPES:
        rows = n_patches + (1 if has_class else 0)
        _shape(header, path, "v.position_embd.weight", (n_embd, rows), required=True)
    elif "v.position_embd.weight" in header.tensor_shapes:
        shape = header.tensor_shapes["v.position_embd.weight"]
        if shape[0] != n_embd:
            raise _refuse(path, f"tensor 'v.position_embd.weight' has width {shape[0]}, not embedding_length {n_embd}")
    n_embd_out: int | None = None
    if proj in ("mlp", "mlp_norm"):
        hidden = header.tensor_shapes.get("mm.0.weight")
        if hidden is None or len(hidden) < 2:
            raise _refuse(path, "required tensor 'mm.0.weight' is missing")
        _shape(header, path, "mm.0.weight", (n_embd, hidden[1]), required=True)
        _shape(header, path, "mm.0.bias", (hidden[1],), required=True)
        out = header.tensor_shapes.get("mm.2.weight")
        if out is None or len(out) < 2:
            raise _refuse(path, "required tensor 'mm.2.weight' is missing")
        _shape(header, path, "mm.2.weight", (hidden[1], out[1]), required=True)
        _shape(header, path, "mm.2.bias", (out[1],), required=True)
        n_embd_out = out[1]
    elif proj == "gemma3":
        scale = _u32(header, path, "clip.vision.projector.scale_factor", required=False) or 4
        if per_side % scale:
            raise _refuse(path, f"clip.vision.projector.scale_factor {scale} does not divide the {per_side}-patch side")
        _shape(header, path, "mm.soft_emb_norm.weight", (n_embd,), required=True)
        projection = header.tensor_shapes.get("mm.input_projection.weight")
        if projection is None or len(projection) < 2:
            raise _refuse(path, "required tensor 'mm.input_projection.weight' is missing")
        _shape(header, path, "mm.input_projection.weight", (projection[0], n_embd), required=True)
        n_embd_out = projection[0]
    return ProjectorInfo(info.path, proj, info.has_vision, info.has_audio, image_size, patch_size, n_embd, n_embd_out)
