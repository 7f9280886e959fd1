"""Speculative decoding with a draft model: several greedy tokens per `llama_decode` when the drafts are right.

After each sampled token the draft model (`LlamaPromptLookupDecoding`, or a small model with the same vocab:
llamarcp.draft_model.DraftModel) proposes the tokens that probably
follow. The sampled token and all drafts go into one batch that outputs logits at every position; the target
model's argmax at position i is compared with draft i, and the run of agreeing drafts is kept (each is exactly
the token plain greedy decoding would have picked there). The first disagreement is already the next token,
read from the same logits; the rejected drafts are removed from the KV memory. Output is token-for-token that
of plain greedy decoding; the speed-up is the number of accepted drafts per decode. How many drafts go into a
batch adapts (`llamarcp.ngram_draft.DraftControl`, shared with the batching scheduler): it doubles after a fully
accepted run and drops to one more than the accepted count after a miss, and drafting pauses while fewer than
half of the drafts are accepted, so a draft model that is often wrong costs little more than plain decoding.

Used by `Engine.generate` for greedy requests (a greedy-only sampler chain, no grammar, no logits processor,
stopping criteria or logprobs) when `Llama(draft_model=...)` is set; other requests ignore the draft model.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from llamarcp._backend import get_lib
from llamarcp._ffi import ffi
from llamarcp.errors import DECODE_NO_KV_SLOT, check_decode
from llamarcp.ngram_draft import DraftControl, carried_pause, prompt_lookup_index, remember_pause

if TYPE_CHECKING:
    from llamarcp.engine import Engine, Outcome, Step

__all__ = ["greedy_with_drafts"]


def greedy_with_drafts(engine: Engine, draft_model: Any, limit: int, outcome: Outcome) -> Generator[Step, None, None]:
    """Greedy tokens after the evaluated prompt (its logits must be the last output), at most `limit` of them."""
    np = engine._numpy
    lib = get_lib()
    model, ctx_ptr, vocab = engine.model, engine.ctx.ptr, engine.model.vocab
    logits_ith, is_eog, decode = lib.llama_get_logits_ith, lib.llama_vocab_is_eog, lib.llama_decode
    nbytes, frombuffer, argmax, f32 = 4 * model.n_vocab, np.frombuffer, np.argmax, np.float32
    pieces, token_to_piece = model._pieces, model.token_to_piece
    input_ids, n_ctx, batch = engine.input_ids, engine.n_ctx, engine.batch
    max_drafts = max(0, min(engine.n_batch, batch.capacity) - 1)
    abort = engine.abort

    def pick(i: int) -> int:
        return int(argmax(frombuffer(ffi.buffer(logits_ith(ctx_ptr, i), nbytes), dtype=f32)))

    def step(token: int) -> Step:
        piece = pieces.get(token)
        return token, piece if piece is not None else token_to_piece(token), None

    n_generated = 0
    ngrams = prompt_lookup_index(draft_model, input_ids)
    min_drafts = int(getattr(draft_model, "min_pred_tokens", 0))
    # llamarcp.draft_model.DraftModel: `draft(history, n, seq)` drafts up to the room left, from its own cache
    own_drafts = draft_model.draft if hasattr(draft_model, "draft_many") else None
    paused = carried_pause(draft_model) if ngrams is None else 0  # a draft model that did not pay lately
    control = DraftControl(max_drafts, min_drafts, engine.plain_rate_hint, paused)  # drafts per step (adaptive)
    out = -1  # the output row whose logits predict the next token
    outcome["finish_reason"] = "length"
    outcome["drafted"] = outcome["accepted"] = 0
    while n_generated < limit:
        if abort.requested:
            engine.raise_if_aborted()
        token = pick(out)
        if is_eog(vocab, token):
            outcome["finish_reason"] = "stop"
            return
        n_generated += 1
        yield step(token)
        if ngrams is not None:
            ngrams.extend((token,))
        if n_generated >= limit or len(input_ids) >= n_ctx:
            return  # no room to decode this token; finish_reason stays "length"
        room = min(control.budget(), n_ctx - len(input_ids) - 1, limit - n_generated)
        drafts: list[int] = []
        started = time.perf_counter()  # drafting counts: a draft model's own decodes are part of the price
        if room > 0 and ngrams is not None:
            drafts = ngrams.propose(min(room, draft_model.num_pred_tokens))
        elif room > 0 and own_drafts is not None:
            drafts = own_drafts([*input_ids, token], room, 0)
            started += getattr(draft_model, "catch_up_seconds", 0.0)  # reading new history: not the drafts' cost
        elif room > 0:
            proposed = draft_model(np.asarray([*input_ids, token], dtype=np.intc))
            drafts = [int(t) for t in np.asarray(proposed).reshape(-1)[:room]]
            model.check_tokens(drafts)  # a draft model's bug must not reach llama_decode as an invalid id
        if len(drafts) < min_drafts:
            drafts = []
        tokens = [token, *drafts]
        b = batch.fill(tokens, len(input_ids), 0, logits_last=False)
        ffi.memmove(b.logits, b"\x01" * len(tokens), len(tokens))  # logits at every position, to verify drafts
        rc = decode(ctx_ptr, b)
        if rc != 0:
            engine.truncate(len(input_ids))
            if rc == DECODE_NO_KV_SLOT:
                return  # context full: stop like running out of room
            check_decode(rc)
        input_ids.extend(tokens)
        if drafts:
            outcome["draft_steps"] = outcome.get("draft_steps", 0) + 1  # verification steps (/metrics)
        accepted = 0
        for i, draft in enumerate(drafts):
            if pick(i) != draft:
                break
            if is_eog(vocab, draft):
                outcome["finish_reason"] = "stop"
                engine.truncate(len(input_ids) - (len(drafts) - i))
                outcome["drafted"] += len(drafts)
                outcome["accepted"] += accepted
                return
            accepted += 1
            n_generated += 1
            yield step(draft)
            if ngrams is not None:
                ngrams.extend((draft,))
            if n_generated >= limit:
                break
        outcome["drafted"] += len(drafts)
        outcome["accepted"] += accepted
        if accepted < len(drafts):
            engine.truncate(len(input_ids) - (len(drafts) - accepted))
        if drafts:
            control.adapt(len(drafts), accepted, time.perf_counter() - started)
            if ngrams is None:
                remember_pause(draft_model, control)
        else:
            control.observe_plain(time.perf_counter() - started)
            engine.plain_rate_hint = control.plain_rate
        out = accepted
