"""Embeddings: texts -> vectors (pooled per sequence, or per token when the context's pooling is NONE).

Several texts share one batch as separate sequences (up to `n_seq_max - 1`, within `n_batch`), each aligned
to ROW_ALIGN rows, so a text's vector does not depend on what it was batched with; the memory is cleared after
each batch, so embedding never leaves anything a later completion could wrongly reuse. Each
input is cut to the tokens the model can take in one pass: `n_batch`, `n_ctx` and the positions it was trained
for (a BERT trained on 128 positions reads out of bounds past them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from llamarcp._backend import get_lib
from llamarcp._core import Batch
from llamarcp._ffi import ffi
from llamarcp.errors import LlamaError, PromptTooLongError, check_decode

if TYPE_CHECKING:
    from llamarcp.engine import Engine
    from llamarcp.turns import Turns

__all__ = [
    "ROW_ALIGN",
    "embed",
    "embed_tokens",
    "embedding_response",
    "max_input_tokens",
    "rank",
    "rerank_tokens",
    "Reranking",
]

#: Every text starts and ends on a multiple of this many batch rows (padding rows go to a sequence of their
#: own that nothing reads). ggml's CPU matrix kernels work in row tiles and round a row differently at other
#: offsets within a tile: on gemma-3 Q4_K_M an unaligned text in a batch differed from the same text alone by
#: up to 4.5e-4 in cosine (0.35 absolute in a mean-pooled vector); aligned, batched equals one by one exactly.
ROW_ALIGN = 16


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
    model = engine.model
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
    return embed_tokens(engine, all_tokens, normalize=normalize), sum(len(t) for t in all_tokens)


def embed_tokens(
    engine: Engine, all_tokens: Sequence[list[int]], *, normalize: bool = False, one_per_decode: bool = False
) -> list[Any]:
    """`embed` for token lists that already fit `max_input_tokens` (rerank pairs are built as tokens).
    `one_per_decode` decodes each text alone (no padding rows; what `rank` does, see there)."""
    lib = get_lib()
    model, ctx = engine.model, engine.ctx
    n_seq_max = ctx.n_seq_max()
    pooling = ctx.pooling_type()
    n_embd = model.n_embd()
    if pooling == lib.LLAMA_POOLING_TYPE_RANK:
        n_embd = int(lib.llama_model_n_cls_out(model.ptr))
    encoder_only = model.has_encoder() and not model.has_decoder()
    results: list[Any] = []
    embed_batch = Batch(engine.n_batch, n_seq_max, parent=ctx)
    what = "llama_encode" if encoder_only else "llama_decode"
    # With two or more sequence ids, the last one carries the padding rows and the others the texts. A reranker's
    # context runs flash attention (rank() below), which rounds a packed text differently: one text per decode.
    packed = n_seq_max > 1 and not one_per_decode and pooling != lib.LLAMA_POOLING_TYPE_RANK
    n_texts_max = n_seq_max - 1 if packed else 1
    pad_seq = n_seq_max - 1 if packed else None
    pad_token = max(model.token_bos(), 0)
    per_token = pooling == lib.LLAMA_POOLING_TYPE_NONE
    try:
        engine.clear()
        group: list[list[int]] = []

        def rows_of(tokens: list[int]) -> int:
            return _padded(len(tokens), engine.n_batch) if pad_seq is not None else len(tokens)

        def flush() -> None:
            if not group:
                return
            entries: list[tuple[int, int, int, bool]] = []
            starts = []
            pad_pos = 0
            for seq_id, tokens in enumerate(group):
                starts.append(len(entries))
                entries.extend((t, pos, seq_id, True) for pos, t in enumerate(tokens))
                for _ in range(rows_of(tokens) - len(tokens)):
                    assert pad_seq is not None
                    entries.append((pad_token, pad_pos, pad_seq, False))
                    pad_pos += 1
            try:
                rc = engine.decode_abortable(embed_batch.fill_entries(entries), what, encode=encoder_only)
            finally:
                lib.llama_memory_clear(engine.memory, True)
            check_decode(rc, what)
            for seq_id, (tokens, start) in enumerate(zip(group, starts)):
                if per_token:
                    results.append(
                        [
                            _floats(lib.llama_get_embeddings_ith(ctx.ptr, start + i), n_embd, normalize)
                            for i in range(len(tokens))
                        ]
                    )
                else:
                    results.append(_floats(lib.llama_get_embeddings_seq(ctx.ptr, seq_id), n_embd, normalize))
            group.clear()

        total = 0
        for tokens in all_tokens:
            if engine.abort.requested:
                engine.raise_if_aborted("embedding")
            if group and (total + rows_of(tokens) > engine.n_batch or len(group) >= n_texts_max):
                flush()
                total = 0
            group.append(tokens)
            total += rows_of(tokens)
        flush()
    finally:
        embed_batch.close()
    return results


def _padded(n: int, n_batch: int) -> int:
    """Rows a text of `n` tokens takes in a batch: rounded up to ROW_ALIGN while that fits in one batch."""
    rows = -(-n // ROW_ALIGN) * ROW_ALIGN
    return rows if rows <= n_batch else n


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


def rerank_tokens(engine: Engine, query: str, document: str) -> list[int]:
    """The tokens a reranker reads for one (query, document) pair, as llama-server builds them: the model's
    `rerank` chat template with {query}/{document} filled in, else BOS query EOS SEP document EOS (per the
    vocab's add-BOS/EOS/SEP flags)."""
    return _pair_tokens(engine, query)(document)


def _pair_tokens(engine: Engine, query: str) -> Callable[[str], list[int]]:
    """`rerank_tokens` for one query and many documents (the query is tokenized once)."""
    model = engine.model
    lib = get_lib()
    template = model.chat_template("rerank")
    if template is not None:
        with_query = template.replace("{query}", query)
        return lambda document: model.tokenize(
            with_query.replace("{document}", document), add_special=False, parse_special=True
        )
    vocab = model.vocab
    eos = model.token_eos()
    if eos < 0:
        eos = int(lib.llama_vocab_sep(vocab))
    add_eos = [eos] if lib.llama_vocab_get_add_eos(vocab) else []
    head: list[int] = [model.token_bos()] if lib.llama_vocab_get_add_bos(vocab) else []
    head += model.tokenize(query, add_special=False, parse_special=False) + add_eos
    if lib.llama_vocab_get_add_sep(vocab):
        head.append(int(lib.llama_vocab_sep(vocab)))
    return lambda document: head + model.tokenize(document, add_special=False, parse_special=False) + add_eos


def rank(engine: Engine, query: str, documents: Sequence[str], *, truncate: bool = True) -> tuple[list[float], int]:
    """A relevance score per document (the classifier head's first output, as llama-server reports it) and
    the tokens read. The context must pool with LLAMA_POOLING_TYPE_RANK."""
    lib = get_lib()
    if engine.ctx.pooling_type() != lib.LLAMA_POOLING_TYPE_RANK:
        raise LlamaError(
            "rank() needs a reranker context: Llama(..., embedding=True, pooling_type=LLAMA_POOLING_TYPE_RANK)"
        )
    if not isinstance(query, str) or not all(isinstance(d, str) for d in documents):
        raise TypeError("rank() takes a query string and a list of document strings")
    limit = max_input_tokens(engine)
    pair_tokens = _pair_tokens(engine, query)
    pairs = []
    for document in documents:
        tokens = pair_tokens(document)
        if len(tokens) > limit:
            if not truncate:
                raise PromptTooLongError(len(tokens), limit)
            tokens = tokens[:limit]
        if not tokens:
            raise ValueError("cannot rank an empty query and document (no tokens)")
        pairs.append(tokens)
    # One pair per decode: a cross-encoder attends over the whole batch, so packing pairs costs attention over
    # rows it masks out (the 88-token pairs of benchmarks/rerank.py ranked 2x faster one by one than 8 to a
    # batch), and a pair alone is scored the same whatever else was asked, flash attention on or off.
    rows = embed_tokens(engine, pairs, one_per_decode=True) if pairs else []
    return [float(row[0]) for row in rows], sum(len(t) for t in pairs)


class Reranking:
    """`Llama.rank` (a mixin of the facade)."""

    if TYPE_CHECKING:
        embedding: bool
        _turns: Turns

        def _engine_or_raise(self) -> Engine: ...

    def rank(self, query: str, documents: Sequence[str], truncate: bool = True, return_count: bool = False) -> Any:
        """How relevant each document is to `query` (higher is more relevant), from a reranker (cross-encoder)
        model loaded with `Llama(path, embedding=True, pooling_type=LLAMA_POOLING_TYPE_RANK)`: the classifier's
        raw score per document, in the order given, as llama-server's /v1/rerank computes it. Pairs longer than
        one pass are cut (`truncate=False`: PromptTooLongError); `return_count` adds the tokens read."""
        with self._turns.exclusive():
            engine = self._engine_or_raise()
            if not self.embedding:
                raise LlamaError("rank() needs Llama(..., embedding=True, pooling_type=LLAMA_POOLING_TYPE_RANK)")
            scores, count = rank(engine, query, list(documents), truncate=truncate)
        return (scores, count) if return_count else scores
