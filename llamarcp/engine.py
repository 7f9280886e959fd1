"""The generation engine: one llama.cpp context, its batches, prefix reuse, and the per-token loop.

`Engine` owns the `Context` (and through it the KV memory), a prompt batch allocated once, a 1-token batch
whose id/position are the only things written per token, the abort callback, and the token history that
mirrors what the memory holds. It knows nothing about text, OpenAI shapes or threads: `Llama` hands it one
request at a time (see `llamarcp.turns`) and shapes what it yields (see `llamarcp.text_completion`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

from llamarcp._backend import get_lib
from llamarcp._core import Batch, Context, Model
from llamarcp._ffi import ffi
from llamarcp.errors import (
    DECODE_ABORTED,
    DECODE_NO_KV_SLOT,
    ClosedError,
    GenerationAborted,
    PromptTooLongError,
    check_decode,
)
from llamarcp.generation_stats import GenerationStats
from llamarcp.multimodal import MediaPrompt
from llamarcp.multimodal import evaluate as evaluate_media
from llamarcp.sampling import SamplerChain, SamplingParams, build_sampler_chain, grammar_sampler
from llamarcp.token_picker import (
    GrammarPicker,
    LogitsRows,
    apply_logits_processor,
    greedy_argmax,
    logits_view,
    logprob_info,
)
from llamarcp.validate.params import set_fields

__all__ = ["AbortState", "Engine", "Outcome", "Step", "context_params"]

#: What the loop yields per token: (token id, its piece as bytes, logprob info or None).
Step = tuple[int, bytes, "dict[str, Any] | None"]
#: Filled by `Engine.generate` when it ends: "finish_reason" ("stop" / "length") and "timings".
Outcome = dict[str, Any]


class AbortState:
    """Shared between an Engine and its C abort callback (kept free of a back-reference to the Engine)."""

    __slots__ = ("exc", "requested")

    def __init__(self) -> None:
        self.requested = False
        self.exc: BaseException | None = None


class Engine:
    """A context of `model` plus everything the decode loop reuses between tokens."""

    def __init__(self, model: Model, params: Any, is_closing: Callable[[], bool], n_ctx_seq: int | None = None) -> None:
        self.model = model
        self.ctx = Context(model, params)
        self._is_closing = is_closing
        try:
            self.batch = Batch(self.ctx.n_batch(), 1, parent=self.ctx)
            #: The most tokens one sequence may hold (the whole context unless it is shared by several).
            self.n_ctx = min(n_ctx_seq, self.ctx.n_ctx()) if n_ctx_seq else self.ctx.n_ctx()
            self.n_batch = self.ctx.n_batch()
            self.memory = self.ctx.memory
            # The single-token step reuses a 1-token batch set up once: per token only its id and position change.
            self._one = Batch(1, 1, parent=self.ctx)
            self._one_batch = self._one.fill([0], 0, 0, logits_last=True)
            self.abort = AbortState()
            self._abort_cb = ffi.callback(
                "ggml_abort_callback", _make_abort_fn(self.abort), onerror=_abort_onerror(self.abort)
            )
        except BaseException:
            self.ctx.close()
            raise
        self._abort_installed = False
        self._grammar_picker: GrammarPicker | None = None
        try:  # for the greedy fast path and logprobs; imported here so no generation pays the import
            import numpy

            self._numpy: Any = numpy
        except ImportError:  # pragma: no cover - numpy is a test dependency
            self._numpy = None
        #: Token ids the memory holds (sequence 0), in order: the reusable prefix.
        self.input_ids: list[int] = []
        #: Tokens the last prompt evaluation actually decoded (the rest came from the reused prefix).
        self.n_prompt_tokens_evaluated = 0
        self.last_timings: dict[str, float] = {}
        #: Tokens/s of plain greedy steps seen by speculative decoding (llamarcp.ngram_draft): where new ones start.
        self.plain_rate_hint: float | None = None
        #: Totals over every generation of this context (the server's /metrics).
        self.stats = GenerationStats()
        #: Hot-swappable LoRA adapters (`Llama.add_lora`; llamarcp.lora), None until one is loaded.
        self.loras: Any = None
        #: Who last arranged the memory: "single" (this class, sequence 0) or the batching scheduler.
        self.owner = "single"
        #: With `keep_all_logits()` (Llama(logits_all=True)): every evaluated position's logits.
        self.kept_logits: LogitsRows | None = None

    def keep_all_logits(self) -> None:
        """From now on every decode outputs (and keeps) the logits of all its tokens, not just the last."""
        if self.kept_logits is None:
            self.kept_logits = LogitsRows(self.model.n_vocab, self.n_ctx)

    # -- abort ------------------------------------------------------------------------------------------------

    def _set_abort_callback(self, on: bool) -> None:
        if on != self._abort_installed:
            lib = get_lib()
            if on:
                lib.llama_set_abort_callback(self.ctx.ptr, self._abort_cb, ffi.NULL)
            else:
                lib.llama_set_abort_callback(self.ctx.ptr, ffi.NULL, ffi.NULL)
            self._abort_installed = on

    def raise_if_aborted(self, where: str = "generation") -> None:
        state = self.abort
        if self._is_closing():
            raise ClosedError(f"this Llama was closed during {where}")
        if state.exc is not None:  # Ctrl-C caught inside the C abort callback
            exc, state.exc = state.exc, None
            state.requested = False
            raise exc
        if state.requested:
            state.requested = False
            raise GenerationAborted(f"{where} aborted by Llama.abort()")

    def decode_abortable(self, batch: Any, what: str = "llama_decode", encode: bool = False) -> int:
        """One llama_decode/llama_encode that `Llama.abort()` (and Ctrl-C) can stop; returns the C result."""
        lib = get_lib()
        self.abort.exc = None
        self._set_abort_callback(True)
        try:
            rc = int((lib.llama_encode if encode else lib.llama_decode)(self.ctx.ptr, batch))
        finally:
            self._set_abort_callback(False)
        if rc == DECODE_ABORTED or self.abort.exc is not None:
            self.raise_if_aborted(what)
        return rc

    # -- memory and history -----------------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget everything the memory holds (the single-sequence side owns it afterwards)."""
        get_lib().llama_memory_clear(self.memory, True)
        self.input_ids = []
        self.owner = "single"
        if self.kept_logits is not None:
            self.kept_logits.keep_only(0)

    def claim(self, owner: str) -> bool:
        """Take the memory for `owner`; clears it (True) when someone else arranged it last."""
        if self.owner == owner:
            return False
        self.clear()
        self.owner = owner
        return True

    def truncate(self, n_keep: int) -> None:
        """Make the memory hold exactly the first `n_keep` tokens of the history (after errors, or for reuse)."""
        lib = get_lib()
        if not lib.llama_memory_seq_rm(self.memory, 0, n_keep, -1):
            lib.llama_memory_clear(self.memory, True)
            n_keep = 0
        del self.input_ids[n_keep:]
        if self.kept_logits is not None:
            self.kept_logits.keep_only(n_keep)

    def sync_history(self) -> None:
        """After an interruption: cut the history (and memory) to what the memory really holds."""
        if self.ctx.closed:
            return
        n_mem = int(get_lib().llama_memory_seq_pos_max(self.memory, 0)) + 1
        self.truncate(max(0, min(n_mem, len(self.input_ids))))

    def logits(self) -> Any:
        return logits_view(self.ctx.ptr, self.model.n_vocab)

    # -- prompt evaluation ------------------------------------------------------------------------------------

    def eval(self, tokens: Sequence[int]) -> int:
        """Bring the memory to exactly `tokens`, reusing the longest cached prefix; returns tokens decoded.

        The last token is always decoded again so its logits are fresh for sampling.
        """
        tokens = list(tokens)
        if not tokens:
            raise ValueError("nothing to evaluate: the token list is empty")
        self.model.check_tokens(tokens)
        self.claim("single")
        if len(tokens) > self.n_ctx:
            raise PromptTooLongError(len(tokens), self.n_ctx)
        lib = get_lib()
        n_common = 0
        for a, b in zip(self.input_ids, tokens):
            if a != b:
                break
            n_common += 1
        n_common = min(n_common, len(tokens) - 1)
        if self.kept_logits is not None:  # positions restored without their logits are decoded again
            n_common = min(n_common, self.kept_logits.valid)
        n_swa = self.model.n_swa()
        if n_common > 0 and n_swa > 0:
            # A sliding-window cache may have dropped positions the reused prefix needs; then start over.
            pos_min = int(lib.llama_memory_seq_pos_min(self.memory, 0))
            if pos_min > max(0, n_common - n_swa):
                n_common = 0
        if n_common < len(self.input_ids) or n_common == 0:
            self.truncate(n_common)
            n_common = len(self.input_ids)
        n_done = 0
        # A pending abort() is left to the C callback, which stops the first graph node (tested that way).
        self.abort.exc = None
        self._set_abort_callback(True)
        try:
            pos = n_common
            decode, ctx_ptr, batch, kept = lib.llama_decode, self.ctx.ptr, self.batch, self.kept_logits
            while pos < len(tokens):
                chunk = tokens[pos : pos + self.n_batch]
                rc = decode(ctx_ptr, batch.fill(chunk, pos, 0, logits_last=True, logits_all=kept is not None))
                if rc != 0:
                    self.truncate(pos)
                    if rc == DECODE_ABORTED:
                        self.raise_if_aborted("prompt evaluation (llama_decode)")
                    check_decode(rc)
                if kept is not None:
                    kept.store(ctx_ptr, pos, len(chunk))
                self.input_ids.extend(chunk)
                pos += len(chunk)
                n_done += len(chunk)
        except BaseException:
            # KeyboardInterrupt between chunks, or a failed chunk: keep history and memory in agreement.
            n_mem = int(lib.llama_memory_seq_pos_max(self.memory, 0)) + 1
            self.truncate(min(len(self.input_ids), n_mem))
            raise
        finally:
            self._set_abort_callback(False)
        self.n_prompt_tokens_evaluated = n_done
        return n_done

    def prompt_logprobs(self, tokens: list[int], top_n: int) -> list[dict[str, Any] | None]:
        """Log-probabilities of each prompt token given the ones before it (None for the first), decoding the
        prompt from its start with every row's logits out; the memory then holds the prompt."""
        self.model.check_tokens(tokens)
        if len(tokens) > self.n_ctx:
            raise PromptTooLongError(len(tokens), self.n_ctx)
        self.claim("single")
        self.truncate(0)
        n_vocab = self.model.n_vocab
        infos: list[dict[str, Any] | None] = [None]
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            batch = self.batch.fill_entries([(t, start + i, 0, True) for i, t in enumerate(chunk)])
            rc = self.decode_abortable(batch)
            if rc != 0:
                self.truncate(start)
                check_decode(rc)
            if self.kept_logits is not None:
                self.kept_logits.store(self.ctx.ptr, start, len(chunk))
            self.input_ids.extend(chunk)
            for i in range(len(chunk)):
                if start + i + 1 < len(tokens):
                    infos.append(logprob_info(logits_view(self.ctx.ptr, n_vocab, i), tokens[start + i + 1], top_n))
        return infos

    # -- generation -------------------------------------------------------------------------------------------

    def generate(
        self,
        prompt_tokens: list[int],
        params: SamplingParams,
        max_tokens: int | None,
        logprobs: int | None = None,
        logits_processor: Any = None,
        stopping_criteria: Any = None,
        outcome: Outcome | None = None,
        prompt_logprobs: int | None = None,
        draft_model: Any = None,
    ) -> Generator[Step, None, None]:
        """Evaluate the prompt, then sample/decode until an end-of-generation token, `max_tokens` or a full
        context. `outcome` (owned by the caller, so concurrent generations cannot mix them up) receives
        "finish_reason" and "timings" when the loop ends, and "prompt_logprobs" (with that many top entries)
        before the first step when asked for. A `draft_model` speeds up greedy requests (see
        llamarcp.draft_decoding); other requests do not use it."""
        outcome = {} if outcome is None else outcome
        model = self.model
        started = time.perf_counter()
        media = prompt_tokens if isinstance(prompt_tokens, MediaPrompt) else None
        if media is not None:  # images/audio among the tokens (llamarcp.multimodal)
            if prompt_logprobs is not None:
                raise ValueError("prompt logprobs (echo with logprobs) are not available for a prompt with images")
            n_eval = evaluate_media(self, media)
            draft_model = None
        else:
            if prompt_logprobs is not None:
                outcome["prompt_logprobs"] = self.prompt_logprobs(prompt_tokens, prompt_logprobs)
            n_eval = self.eval(prompt_tokens)
        prompt_done = time.perf_counter()
        grammar = self._grammar_sampler(params)
        chain: SamplerChain = build_sampler_chain(
            model, params, history=media.text_tokens() if media else prompt_tokens, grammar_in_chain=grammar is None
        )
        n_generated = 0
        try:
            lib = get_lib()
            sample = lib.llama_sampler_sample
            is_eog = lib.llama_vocab_is_eog
            decode = lib.llama_decode
            chain_ptr, ctx_ptr, vocab = chain.ptr, self.ctx.ptr, model.vocab
            one_batch = self._one_batch
            one_token, one_pos = one_batch.token, one_batch.pos
            input_ids = self.input_ids
            pieces = model._pieces
            token_to_piece = model.token_to_piece
            n_ctx = self.n_ctx
            abort = self.abort
            limit = max_tokens if max_tokens is not None else n_ctx
            np = self._numpy
            greedy = None
            if np is not None and chain.names == ["greedy"] and grammar is None and logits_processor is None:
                greedy = greedy_argmax(np, ctx_ptr, model.n_vocab)
            picker = self._grammar_picker if grammar is not None else None
            wants_scores = logits_processor is not None or stopping_criteria is not None or logprobs is not None
            outcome["finish_reason"] = "length"
            kept = self.kept_logits
            if draft_model is not None and greedy is not None and not wants_scores and kept is None:
                from llamarcp.draft_decoding import greedy_with_drafts

                for drafted_step in greedy_with_drafts(self, draft_model, limit, outcome):
                    n_generated += 1
                    yield drafted_step
                return
            while n_generated < limit:
                if abort.requested:
                    self.raise_if_aborted()
                scores = None
                if wants_scores:
                    scores = self.logits()
                    if logits_processor is not None:
                        apply_logits_processor(np, logits_processor, np.asarray(input_ids, dtype=np.intc), scores)
                if greedy is not None:
                    token = greedy()
                elif picker is None:
                    token = int(sample(chain_ptr, ctx_ptr, -1))
                else:
                    assert grammar is not None
                    token = picker.pick(chain_ptr, grammar.ptr)
                if is_eog(vocab, token):
                    outcome["finish_reason"] = "stop"
                    break
                info = logprob_info(scores, token, logprobs) if logprobs is not None else None
                piece = pieces.get(token)
                if piece is None:
                    piece = token_to_piece(token)
                n_generated += 1
                if stopping_criteria is not None:
                    ids = np.asarray([*input_ids, token], dtype=np.intc)
                    if stopping_criteria(ids, scores):
                        outcome["finish_reason"] = "stop"
                        yield token, piece, info
                        break
                yield token, piece, info
                if n_generated >= limit:
                    break
                if len(input_ids) >= n_ctx:
                    break  # no room to decode this token; finish_reason stays "length"
                one_token[0] = token
                one_pos[0] = len(input_ids)
                input_ids.append(token)
                rc = decode(ctx_ptr, one_batch)
                if rc != 0:
                    del input_ids[-1]
                    self.truncate(len(input_ids))
                    if rc == DECODE_NO_KV_SLOT:
                        break  # context full: stop like running out of room
                    check_decode(rc)
                if kept is not None:
                    kept.store(ctx_ptr, len(input_ids) - 1, 1)
        except BaseException:
            # Interrupted between C calls (Ctrl-C) or the consumer stopped: keep memory == history.
            self.sync_history()
            raise
        finally:
            chain.close()
            if grammar is not None:
                grammar.close()
            done = time.perf_counter()
            timings = {
                "prompt_n": float(len(prompt_tokens)),
                "prompt_eval_n": float(n_eval),
                "prompt_ms": (prompt_done - started) * 1e3,
                "predicted_n": float(n_generated),
                "predicted_ms": (done - prompt_done) * 1e3,
            }
            if "drafted" in outcome:  # speculative decoding (llamarcp.draft_decoding): drafts tried / kept
                timings["draft_n"] = float(outcome["drafted"])
                timings["draft_accepted_n"] = float(outcome["accepted"])
                timings["draft_steps"] = float(outcome.get("draft_steps", 0))
            outcome["timings"] = self.last_timings = timings
            decoded_alone = -(-n_eval // self.n_batch) + max(0, len(self.input_ids) - len(prompt_tokens))
            self.stats.add_generation(timings, decode_calls=decoded_alone)

    def _grammar_sampler(self, params: SamplingParams) -> Any:
        """The grammar as a separate sampler for `GrammarPicker`, or None (no grammar, or no numpy: then the
        grammar runs inside the chain over every candidate, which is correct but slower)."""
        if params.grammar is None or self._numpy is None:
            return None
        if self._grammar_picker is None:
            self._grammar_picker = GrammarPicker(self._numpy, self.ctx.ptr, self.model.n_vocab)
        return grammar_sampler(self.model, params.grammar, params.grammar_root)


def context_params(
    *,
    n_ctx: int,
    n_batch: int,
    n_ubatch: int | None,
    n_threads: int,
    n_threads_batch: int,
    n_seq_max: int | None,
    embedding: bool,
    flash_attn: bool | None,
    **fields: Any,
) -> Any:
    """`llama_context_params` for `Llama`'s keywords: llama.cpp's defaults, with what was asked for set.

    `fields` are llama_context_params fields under their C names; a None value keeps llama.cpp's default.
    """
    lib = get_lib()
    params = lib.llama_context_default_params()
    sizes = {  # drift: fields llama_context_params
        "n_ctx": n_ctx,
        "n_batch": n_batch,
        "n_ubatch": n_ubatch if n_ubatch else (n_batch if embedding else min(n_batch, 512)),
        "n_threads": n_threads,
        "n_threads_batch": n_threads_batch,
        "n_seq_max": n_seq_max if n_seq_max else (8 if embedding else 1),
    }
    set_fields(params, "struct llama_context_params", sizes)  # each checked against its C type first
    params.kv_unified = True  # every sequence may use the whole n_ctx (embedding batches)
    params.embeddings = bool(embedding)
    rank = fields.get("pooling_type") == lib.LLAMA_POOLING_TYPE_RANK
    if flash_attn is None and embedding and not rank:
        # Flash attention accumulates over every KV cell, masked ones of other sequences included, so a batched
        # text would round differently from the same text alone (llamarcp.embeddings): off unless asked for.
        # A reranker scores one pair per decode (embeddings.rank), so it keeps llama.cpp's default (auto).
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
    elif flash_attn is None:
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_AUTO
    else:
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
    set_fields(params, "struct llama_context_params", fields)
    return params


def _make_abort_fn(state: AbortState) -> Callable[[Any], bool]:
    def should_abort(_data: Any) -> bool:
        return state.requested

    return should_abort


def _abort_onerror(state: AbortState) -> Callable[..., bool]:
    # Ctrl-C lands inside the callback (it is the Python code running while C decodes): keep it, stop decoding.
    def onerror(_exc_type: Any, exc_value: BaseException | None, _tb: Any) -> bool:
        state.exc = exc_value
        return True

    return onerror
