"""Every difference between the llama.cpp releases of the window that llamarcp's own code meets, in one place.

Each function asks the loaded declarations (the ffi `llamarcp._release` selected) what they have: a struct's
fields, a function's parameter count. No release names or version comparisons: a release that renames or adds
a parameter is served by what its header declares. Code elsewhere calls these instead of the C function or field.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from llamarcp._ffi import ffi


@cache
def fields(struct: str) -> frozenset[str]:
    """Field names of a struct of the loaded declarations ("struct llama_model_params")."""
    return frozenset(name for name, _ in ffi.typeof(struct).fields)


def has_field(struct: str, name: str) -> bool:
    return name in fields(struct)


def arity(lib: Any, function: str) -> int:
    """How many parameters `function` takes in the loaded declarations."""
    return len(ffi.typeof(getattr(lib, function)).args)


#: (use_mmap, use_mlock) -> the `enum llama_load_mode` constant of releases that replaced the two bools by it.
_LOAD_MODES = {(True, True): "MMAP_MLOCK", (True, False): "MMAP", (False, True): "MLOCK", (False, False): "NONE"}


def set_load_mode(lib: Any, params: Any, use_mmap: bool, use_mlock: bool) -> None:
    """Set how a model is read into `struct llama_model_params`: `load_mode`, or `use_mmap`/`use_mlock` before it."""
    if has_field("struct llama_model_params", "load_mode"):
        params.load_mode = getattr(lib, "LLAMA_LOAD_MODE_" + _LOAD_MODES[bool(use_mmap), bool(use_mlock)])
    else:
        params.use_mmap = bool(use_mmap)
        params.use_mlock = bool(use_mlock)


def sampler_init_penalties(lib: Any, n_vocab: int, last_n: int, repeat: float, freq: float, present: float) -> Any:
    """`llama_sampler_init_penalties`: releases before the vocabulary-size parameter take the four penalties only."""
    if arity(lib, "llama_sampler_init_penalties") == 5:
        return lib.llama_sampler_init_penalties(n_vocab, last_n, repeat, freq, present)
    return lib.llama_sampler_init_penalties(last_n, repeat, freq, present)


def mtmd_bitmap_from_buf(lib: Any, ctx: Any, buf: Any, size: int) -> Any:
    """`mtmd_helper_bitmap_init_from_buf`'s bitmap: a pointer in old releases, a wrapper (with options) later."""
    if arity(lib, "mtmd_helper_bitmap_init_from_buf") == 5:
        return lib.mtmd_helper_bitmap_init_from_buf(ctx, buf, size, False, lib.mtmd_helper_init_opt_default()).bitmap
    if arity(lib, "mtmd_helper_bitmap_init_from_buf") == 4:
        return lib.mtmd_helper_bitmap_init_from_buf(ctx, buf, size, False).bitmap
    return lib.mtmd_helper_bitmap_init_from_buf(ctx, buf, size)


def mtmd_non_causal(lib: Any, ctx: Any, chunk: Any) -> bool:
    """Whether the image's embeddings are decoded with non-causal attention (per chunk in newer releases)."""
    if arity(lib, "mtmd_decode_use_non_causal") == 2:
        return bool(lib.mtmd_decode_use_non_causal(ctx, chunk))
    return bool(lib.mtmd_decode_use_non_causal(ctx))


def mtmd_decode_image_chunk(lib: Any, ctx: Any, lctx: Any, chunk: Any, embd: Any, *args: Any) -> int:
    """`mtmd_helper_decode_image_chunk` (n_past, seq_id, n_batch, new_n_past), without its newer callback."""
    if arity(lib, "mtmd_helper_decode_image_chunk") == 10:
        return int(lib.mtmd_helper_decode_image_chunk(ctx, lctx, chunk, embd, *args, ffi.NULL, ffi.NULL))
    return int(lib.mtmd_helper_decode_image_chunk(ctx, lctx, chunk, embd, *args))


def set_mtmd_text_len(text: Any, length: int) -> None:
    """`struct mtmd_input_text.text_len` where the release has it; older releases read the text up to its NUL."""
    if has_field("struct mtmd_input_text", "text_len"):
        text.text_len = length
