"""Embeddings: texts -> vectors (pooled per sequence, or per token when the context's pooling is NONE).

Several texts share one batch as separate sequences (up to `n_seq_max`, within `n_batch`); the memory is
cleared after each batch, so embedding never leaves anything a later completion could wrongly reuse. Each
input is cut to the tokens the model can take in one pass: `n_batch`, `n_ctx` and the positions it was trained
for (a BERT trained on 128 positions reads out of bounds past them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llamarcp._backend import get_lib
from llamarcp._core import Batch
from llamarcp._generated._llama_ffi import ffi
from llamarcp.errors import LlamaError, PromptTooLongError, check_decode

if TYPE_CHECKING:
    from llamarcp.engine import Engine

__all__ = ["embed", "embedding_response", "max_input_tokens"]


def max_input_tokens(engine: Engine) -> int:
    """The most tokens one input may have: one batch, one context, and the model's trained positions."""
    limits = [engine.n_batch, engine.n_ctx]
    n_train = engine.model.n_ctx_train()
    if n_train > 0:
        limits.append(n_train)
    return min(limits)


def embed(
    engine: Engine, texts: Sequence[str], *, normalize: bool = False, truncate: bool = True
) -> tuple[list[Any], int]:
    """One embedding per text (a list of floats, or of per-token lists under pooling NONE), and the token count.

    The caller holds the context (a turn of `llamarcp.turns`). `Llama.abort()` stops it between and during
    batches with GenerationAborted.
    """
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("input must be a string or a list of strings")
    lib = get_lib()
    model, ctx = engine.model, engine.ctx
    n_seq_max = ctx.n_seq_max()
    pooling = ctx.pooling_type()
    n_embd = model.n_embd()
    if pooling == lib.LLAMA_POOLING_TYPE_RANK:
        n_embd = int(lib.llama_model_n_cls_out(model.ptr))
    encoder_only = model.has_encoder() and not model.has_decoder()
    limit = max_input_tokens(engine)
    all_tokens: list[list[int]] = []
    for text in texts:
        tokens = model.tokenize(text, add_special=True, parse_special=False)
        if len(tokens) > limit:
            if not truncate:
                raise PromptTooLongError(len(tokens), limit)
            tokens = tokens[:limit]
        if not tokens:
            raise ValueError("cannot embed an empty input (no tokens)")
        all_tokens.append(tokens)
    results: list[Any] = []
    embed_batch = Batch(engine.n_batch, n_seq_max, parent=ctx)
    what = "llama_encode" if encoder_only else "llama_decode"
    try:
        engine.clear()
        group: list[list[int]] = []

        def flush() -> None:
            if not group:
                return
            batch = embed_batch.fill_sequences(group, output_all=True)
            try:
                rc = engine.decode_abortable(batch, what, encode=encoder_only)
            finally:
                lib.llama_memory_clear(engine.memory, True)
            check_decode(rc, what)
            index = 0
            for seq_id, tokens in enumerate(group):
                if pooling == lib.LLAMA_POOLING_TYPE_NONE:
                    rows = []
                    for _ in tokens:
                        rows.append(_floats(lib.llama_get_embeddings_ith(ctx.ptr, index), n_embd, normalize))
                        index += 1
                    results.append(rows)
                else:
                    results.append(_floats(lib.llama_get_embeddings_seq(ctx.ptr, seq_id), n_embd, normalize))
            group.clear()

        total = 0
        for tokens in all_tokens:
            if engine.abort.requested:
                engine.raise_if_aborted("embedding")
            if group and (total + len(tokens) > engine.n_batch or len(group) >= n_seq_max):
                flush()
                total = 0
            group.append(tokens)
            total += len(tokens)
        flush()
    finally:
        embed_batch.close()
    return results, sum(len(t) for t in all_tokens)


def embedding_response(rows: list[Any], count: int, model_name: str) -> dict[str, Any]:
    """OpenAI-shaped embeddings response."""
    return {
        "object": "list",
        "data": [{"object": "embedding", "embedding": row, "index": i} for i, row in enumerate(rows)],
        "model": model_name,
        "usage": {"prompt_tokens": count, "total_tokens": count},
    }


def _floats(ptr: Any, n: int, normalize: bool) -> list[float]:
    if ptr == ffi.NULL:
        raise LlamaError("llama.cpp returned no embeddings (check the model's pooling type)")
    values = list(ffi.unpack(ptr, n))
    if normalize:
        norm = math.sqrt(sum(v * v for v in values))
        if norm > 0:
            values = [v / norm for v in values]
    return values
