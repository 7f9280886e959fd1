"""A draft model for speculative decoding: a second, small model with the target's vocab that drafts greedily.

`DraftModel(path)` loads the small model once. Attached to a `Llama` (`Llama(..., draft_model=DraftModel(path))`,
or the server's `--model-draft PATH`) it checks that both vocabs agree (as llama.cpp's
`common_speculative_are_compatible`) and gets its own context with one sequence per target sequence (one for a
plain `Llama`, one per slot with `n_parallel`) and as many KV cells as the target's context, so its memory is
bounded by the target's. A `DraftSequence` keeps what its KV holds; asked for drafts after a history it keeps
the common prefix (the accepted tokens), removes the rest, decodes what is new and then proposes up to `n`
tokens by greedy decoding of the small model. The target verifies them (llamarcp.draft_decoding,
llamarcp.batching), so output is the target's greedy output whatever the draft model says.

It is also a `LlamaDraftModel` (`draft_model(input_ids) -> ids`) for code written against llama-cpp-python.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llamarcp._backend import get_lib
from llamarcp._core import Batch, Context, Model
from llamarcp._ffi import ffi
from llamarcp.compat.speculative import LlamaDraftModel
from llamarcp.engine import context_params
from llamarcp.errors import DraftModelError, LlamaError

if TYPE_CHECKING:
    from llamarcp.llama import Llama

__all__ = ["DraftModel", "DraftSequence", "check_compatible"]

#: llama.cpp's SPEC_VOCAB_MAX_SIZE_DIFFERENCE and SPEC_VOCAB_CHECK_START_TOKEN_ID (common/speculative.cpp).
MAX_VOCAB_SIZE_DIFFERENCE = 128
CHECK_START_TOKEN_ID = 5
#: Most draft tokens per step a DraftModel may be asked for.
MAX_PRED_TOKENS = 256
#: Tokens decoded per llama_decode when the draft model catches up with a history (a new prompt); llama.cpp lowers
#: it to the context's size.
CATCH_UP_BATCH = 512


def check_compatible(target: Model, draft: Model) -> None:
    """Raise DraftModelError unless the draft model's tokens mean what the target's do (same vocab type, same
    BOS/EOS handling, sizes within 128, identical token texts from id 5 on)."""
    lib = get_lib()
    tv, dv = target.vocab, draft.vocab
    where = f"draft model {draft.path} and target model {target.path}"
    if int(lib.llama_vocab_type(tv)) != int(lib.llama_vocab_type(dv)):
        raise DraftModelError(
            f"{where} have different vocab types ({int(lib.llama_vocab_type(dv))} vs "
            f"{int(lib.llama_vocab_type(tv))}): a draft model must share the target's tokenizer"
        )
    for name, add, special in (
        ("BOS", lib.llama_vocab_get_add_bos, lib.llama_vocab_bos),
        ("EOS", lib.llama_vocab_get_add_eos, lib.llama_vocab_eos),
    ):
        if bool(add(tv)) != bool(add(dv)) or (bool(add(tv)) and int(special(tv)) != int(special(dv))):
            raise DraftModelError(f"{where} disagree on the {name} token (add: {bool(add(dv))} vs {bool(add(tv))})")
    nt, nd = target.n_vocab, draft.n_vocab
    if abs(nt - nd) > MAX_VOCAB_SIZE_DIFFERENCE:
        raise DraftModelError(
            f"{where} have vocabs of {nd} and {nt} tokens (at most {MAX_VOCAB_SIZE_DIFFERENCE} apart)"
        )
    text = lib.llama_vocab_get_text
    string = ffi.string
    for token in range(CHECK_START_TOKEN_ID, min(nt, nd)):
        if string(text(tv, token)) != string(text(dv, token)):
            raise DraftModelError(
                f"{where} have different text for token {token} ({string(text(dv, token))!r} vs "
                f"{string(text(tv, token))!r}): a draft model must share the target's vocab"
            )


def _positive(name: str, value: Any, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ValueError(f"{name} must be an int in 1..{high}, got {value!r}")
    return value


class DraftModel(LlamaDraftModel):
    """A small GGUF model with the target's vocab that drafts tokens for speculative decoding.

    `num_pred_tokens`: most drafts per step (the engines adapt how many they try, up to this);
    `min_pred_tokens`: a proposal shorter than this is not tried (0: any). `n_threads` / `n_threads_batch`
    default to the target's; `n_gpu_layers` offloads the draft model like the target's keyword.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        num_pred_tokens: int = 8,
        min_pred_tokens: int = 0,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_gpu_layers: int = 0,
    ) -> None:
        self.num_pred_tokens = _positive("num_pred_tokens", num_pred_tokens, MAX_PRED_TOKENS)
        if isinstance(min_pred_tokens, bool) or not isinstance(min_pred_tokens, int) or min_pred_tokens < 0:
            raise ValueError(f"min_pred_tokens must be an int >= 0, got {min_pred_tokens!r}")
        if min_pred_tokens > num_pred_tokens:
            raise ValueError(f"min_pred_tokens ({min_pred_tokens}) exceeds num_pred_tokens ({num_pred_tokens})")
        self.min_pred_tokens = min_pred_tokens
        for name, value in (("n_threads", n_threads), ("n_threads_batch", n_threads_batch)):
            if value is not None:
                _positive(name, value, 1024)
        self.n_threads, self.n_threads_batch = n_threads, n_threads_batch
        self.model = Model(model_path, n_gpu_layers=n_gpu_layers)
        self.model_path = str(model_path)
        self._ctx: Context | None = None
        self._batch: Batch | None = None
        self._sequences: list[DraftSequence] = []
        self._owner: weakref.ref[Llama] | None = None
        self._lock = threading.Lock()
        self.n_ctx_seq = 0
        self.target_n_vocab = self.model.n_vocab
        #: Time the last `draft_many` spent reading history it had not seen (a new prompt, the tokens of a pause):
        #: a cost of following the request, not of the drafts, so the draft control does not count it.
        self.catch_up_seconds = 0.0

    # -- attaching to a target --------------------------------------------------------------------------------

    def attach(self, llama: Llama, target: Model, n_ctx_seq: int, n_seq: int, cells: int | None = None) -> None:
        """Check the vocabs and make a context of `n_seq` sequences of up to `n_ctx_seq` tokens for `llama`'s use,
        `cells` KV cells in all (the target's: `n_seq * n_ctx_seq`, or fewer when its slots share one cache; a
        draft sequence that finds no room drafts nothing that step). A DraftModel serves one open Llama at a time
        (a closed one's context is replaced)."""
        with self._lock:
            owner = self._owner() if self._owner is not None else None
            if owner is not None and owner is not llama and not owner.closed:
                raise DraftModelError(
                    f"draft model {self.model_path} already serves another open Llama; close it or load the draft "
                    "model once per Llama"
                )
            self.model._check_open()
            check_compatible(target, self.model)
            self._close_context()
            n_batch = CATCH_UP_BATCH
            params = context_params(
                n_ctx=cells or n_ctx_seq * n_seq,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_threads=self.n_threads or llama.n_threads,
                n_threads_batch=self.n_threads_batch or self.n_threads or llama.n_threads_batch,
                n_seq_max=n_seq,
                embedding=False,
                flash_attn=None,
            )
            self._ctx = Context(self.model, params)
            # llama.cpp lowers n_batch to n_ctx and asserts that a decode fits it: batches are the context's size.
            self._batch = Batch(self._ctx.n_batch(), 1, parent=self._ctx)
            self.n_ctx_seq = n_ctx_seq
            self.target_n_vocab = target.n_vocab
            self._sequences = [DraftSequence(self, seq_id) for seq_id in range(n_seq)]
            self._owner = weakref.ref(llama)

    def _close_context(self) -> None:
        if self._batch is not None:
            self._batch.close()
        if self._ctx is not None:
            self._ctx.close()
        self._ctx = self._batch = None
        self._sequences = []

    def close(self) -> None:
        """Free the context and the draft model. Idempotent."""
        with self._lock:
            self._close_context()
            self.model.close()

    def __enter__(self) -> DraftModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- drafting ---------------------------------------------------------------------------------------------

    def sequence(self, seq_id: int) -> DraftSequence:
        if not self._sequences:
            raise DraftModelError(
                f"draft model {self.model_path} is not attached to an open Llama (pass it as Llama(draft_model=...))"
            )
        return self._sequences[seq_id]

    def draft(self, history: Sequence[int], n: int, seq_id: int = 0) -> list[int]:
        """Up to `n` greedy tokens of the draft model after `history` (its sequence `seq_id`)."""
        return self.draft_many([(seq_id, history, n)])[0]

    def draft_many(self, requests: Sequence[tuple[int, Sequence[int], int]]) -> list[list[int]]:
        """Drafts for several sequences at once, `(seq_id, history, n)` each: their new history tokens go into
        shared batches, then one decode per draft position serves all of them (the batching scheduler's slots
        draft together). A proposal shorter than `min_pred_tokens` comes back empty."""
        results: list[list[int]] = [[] for _ in requests]
        if self._ctx is None or self._ctx.closed:
            raise DraftModelError(
                f"draft model {self.model_path} is not attached to an open Llama (pass it as Llama(draft_model=...)) "
                "or was closed"
            )
        self.catch_up_seconds = 0.0
        with self._lock:
            active: list[tuple[int, DraftSequence, int]] = []
            catch_up: list[tuple[int, int, int, bool]] = []
            last: list[tuple[int, int, int, bool]] = []
            for index, (seq_id, history, n) in enumerate(requests):
                n = min(n, self.num_pred_tokens, self.n_ctx_seq - len(history))
                if n <= 0 or not history:
                    continue
                seq = self.sequence(seq_id)
                seq.follow(history)
                pending = history[len(seq.tokens) :]  # at least the last token (decoded again for its logits)
                pos = len(seq.tokens)
                catch_up += [(t, pos + i, seq_id, False) for i, t in enumerate(pending[:-1])]
                last.append((pending[-1], pos + len(pending) - 1, seq_id, True))
                seq.tokens.extend(pending)  # taken back by `_reset` if a decode fails
                active.append((index, seq, n))
            if not active:
                return results
            try:
                started = time.perf_counter()
                assert self._batch is not None
                step = self._batch.capacity
                for start in range(0, len(catch_up), step):
                    self._decode(catch_up[start : start + step])
                self.catch_up_seconds = time.perf_counter() - started
                self._decode(last)
                self._greedy(active, results)
            except LlamaError:  # a failed draft costs this step its drafts, never a request
                for _index, seq, _n in active:
                    seq._reset()
                return [[] for _ in requests]
        return [drafts if len(drafts) >= self.min_pred_tokens else [] for drafts in results]

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        assert self._ctx is not None and self._batch is not None
        if entries:
            rc = int(get_lib().llama_decode(self._ctx.ptr, self._batch.fill_entries(entries)))
            if rc != 0:
                raise LlamaError(f"the draft model's llama_decode returned {rc}")

    def _greedy(self, active: list[tuple[int, DraftSequence, int]], results: list[list[int]]) -> None:
        """Greedy tokens for every active sequence; logits row i belongs to active[i] (the last decode)."""
        import numpy as np

        assert self._ctx is not None
        lib = get_lib()
        ctx_ptr, vocab, n_vocab, limit = self._ctx.ptr, self.model.vocab, self.model.n_vocab, self.target_n_vocab
        while active:
            going: list[tuple[int, DraftSequence, int]] = []
            entries: list[tuple[int, int, int, bool]] = []
            for row, (index, seq, n) in enumerate(active):
                logits = ffi.buffer(lib.llama_get_logits_ith(ctx_ptr, row), 4 * n_vocab)
                token = int(np.argmax(np.frombuffer(logits, dtype=np.float32)))
                if token >= limit or lib.llama_vocab_is_eog(vocab, token):
                    continue  # the target cannot take it / the draft model would stop here
                results[index].append(token)
                if len(results[index]) < n:
                    entries.append((token, len(seq.tokens), seq.seq_id, True))
                    seq.tokens.append(token)
                    going.append((index, seq, n))
            self._decode(entries)
            active = going

    def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
        import numpy as np

        history = [int(t) for t in np.asarray(input_ids).reshape(-1)]
        return np.asarray(self.draft(history, self.num_pred_tokens), dtype=np.intc)


class DraftSequence:
    """One sequence of the draft context, kept in step with one target sequence's history."""

    def __init__(self, owner: DraftModel, seq_id: int) -> None:
        self.owner = owner
        self.seq_id = seq_id
        self.tokens: list[int] = []  # what the draft KV holds for this sequence

    def _reset(self) -> None:
        ctx = self.owner._ctx
        if ctx is not None and not ctx.closed:
            get_lib().llama_memory_seq_rm(ctx.memory, self.seq_id, -1, -1)
        self.tokens = []

    def follow(self, history: Sequence[int]) -> None:
        """Keep the longest prefix of what the KV holds that `history` shares, but not its last token (decoded
        again for fresh logits); start over where the memory cannot drop just the rest (a recurrent model) or a
        sliding window has dropped positions the kept prefix still needs."""
        shared = 0
        for a, b in zip(self.tokens, history):
            if a != b:
                break
            shared += 1
        n = min(shared, len(history) - 1)
        owner = self.owner
        assert owner._ctx is not None
        lib = get_lib()
        memory = owner._ctx.memory
        if n < len(self.tokens) and not lib.llama_memory_seq_rm(memory, self.seq_id, n, -1):
            self._reset()
            return
        del self.tokens[n:]
        n_swa = owner.model.n_swa()
        if n > 0 and n_swa > 0 and int(lib.llama_memory_seq_pos_min(memory, self.seq_id)) > max(0, n - n_swa):
            self._reset()
