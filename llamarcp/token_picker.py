"""How the next token is picked from the last decode's logits, beyond a plain `llama_sampler_sample`.

- `greedy_argmax`: for a chain that is only `greedy`, the argmax of a zero-copy numpy view of the logits.
- `GrammarPicker`: llama.cpp's common-sampler strategy for grammars (check only the chain's pick against the
  grammar; constrain the whole vocab only when the grammar rejects it).
- `logits_view` / `logprob_info`: what logits processors, stopping criteria and logprobs are given.
- `LogitsRows`: every evaluated position's logits, kept for `Llama(logits_all=True)` (llama-cpp-python's `scores`).
Both pickers give exactly the token llama.cpp's own samplers would; they only skip work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from llamarcp._backend import get_lib
from llamarcp._ffi import ffi
from llamarcp.errors import GrammarError, LlamaError

__all__ = ["GrammarPicker", "LogitsRows", "apply_logits_processor", "greedy_argmax", "logits_view", "logprob_info"]


def logits_view(ctx_ptr: Any, n_vocab: int, index: int = -1) -> Any:
    """numpy view (no copy) of the logits of output row `index` of the last decode (-1: the last row); only
    used when logprobs/logits are asked for."""
    try:
        import numpy as np
    except ImportError as exc:  # pragma: no cover - numpy is a test dependency
        raise LlamaError("logprobs/logits_processor need numpy (pip install numpy)") from exc
    ptr = get_lib().llama_get_logits_ith(ctx_ptr, index)
    if ptr == ffi.NULL:
        raise LlamaError("no logits available (nothing decoded yet?)")
    return np.frombuffer(ffi.buffer(ptr, 4 * n_vocab), dtype=np.float32)


def apply_logits_processor(np: Any, processor: Any, input_ids: Any, scores: Any) -> None:
    """Run a caller's logits processor and write what it returns into `scores` (the logits row, in place).

    The result must be the scores themselves or an array of the same shape: a scalar or a wrong-sized array
    would otherwise be broadcast into every logit (or fail deep in numpy with no name)."""
    result = processor(input_ids, scores)
    if result is scores:
        return
    array = np.asarray(result, dtype=np.float32)
    if array.shape != scores.shape:
        raise ValueError(
            f"logits_processor must return the scores (an array of shape {scores.shape}), got "
            f"{type(result).__name__} of shape {array.shape}"
        )
    scores[:] = array


class LogitsRows:
    """The logits of every evaluated position, by position (row p scores the token after position p).

    Filled after each decode whose tokens all output logits; grows as positions are reached (llama-cpp-python
    allocates n_ctx rows up front: with a 262k vocab that is 1 MiB per position either way)."""

    def __init__(self, n_vocab: int, n_ctx: int) -> None:
        try:
            import numpy as np
        except ImportError as exc:  # pragma: no cover - numpy is a test dependency
            raise LlamaError("logits_all=True needs numpy (pip install numpy)") from exc
        self._np = np
        self.n_vocab, self.n_ctx = n_vocab, n_ctx
        self._rows = np.zeros((0, n_vocab), dtype=np.float32)
        self.last_decode = (0, 0)  # (first position, count) of the rows the last decode output
        self.valid = 0  # rows 0..valid-1 belong to the tokens the context holds

    def store(self, ctx_ptr: Any, pos0: int, n: int) -> None:
        """Copy the `n` output rows of the last decode (positions pos0..pos0+n-1, every token an output)."""
        ptr = get_lib().llama_get_logits(ctx_ptr)
        if ptr == ffi.NULL:
            raise LlamaError("no logits available after a decode (was it an embedding context?)")
        self._reserve(pos0 + n)
        flat = self._np.frombuffer(ffi.buffer(ptr, 4 * n * self.n_vocab), dtype=self._np.float32)
        self._rows[pos0 : pos0 + n] = flat.reshape(n, self.n_vocab)
        self.last_decode = (pos0, n)
        if pos0 <= self.valid:
            self.valid = pos0 + n

    def _reserve(self, need: int) -> None:
        if need > len(self._rows):
            size = min(self.n_ctx, max(need, 2 * len(self._rows), 16))
            grown = self._np.zeros((size, self.n_vocab), self._rows.dtype)
            grown[: len(self._rows)] = self._rows
            self._rows = grown

    def keep_only(self, n_keep: int) -> None:
        """The context now holds only its first `n_keep` tokens (later rows are stale)."""
        self.valid = min(self.valid, n_keep)
        if self.last_decode[0] + self.last_decode[1] > n_keep:
            self.last_decode = (0, 0)

    def put(self, rows: Any) -> None:
        """Take rows restored with a state snapshot (positions 0..len(rows)-1)."""
        rows = self._np.asarray(rows, dtype=self._np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_vocab:
            raise ValueError(f"restored logits have shape {rows.shape}, expected (n, {self.n_vocab})")
        self._reserve(len(rows))
        self._rows[: len(rows)] = rows
        unknown = self._np.flatnonzero(self._np.isnan(rows).any(axis=1))  # saved while they were not known
        self.valid, self.last_decode = (int(unknown[0]) if len(unknown) else len(rows)), (0, 0)

    def rows(self, n_tokens: int) -> Any:
        """A copy of the rows of positions 0..n_tokens-1, shape (n_tokens, n_vocab); rows no decode has filled
        since the context was restored without logits are NaN."""
        out = self._np.full((n_tokens, self.n_vocab), self._np.nan, dtype=self._np.float32)
        n_known = min(self.valid, n_tokens)
        out[:n_known] = self._rows[:n_known]
        return out


def greedy_argmax(np: Any, ctx_ptr: Any, n_vocab: int) -> Callable[[], int]:
    """The argmax of the last logits, read in place.

    Same token as llama.cpp's greedy sampler (first maximum wins in both), without building its vocab-sized
    candidate array each token: 2-4 % of a gemma token (262k vocab).
    """
    logits_ith = get_lib().llama_get_logits_ith
    buffer, frombuffer, argmax, f32 = ffi.buffer, np.frombuffer, np.argmax, np.float32
    nbytes = 4 * n_vocab

    def pick() -> int:
        return int(argmax(frombuffer(buffer(logits_ith(ctx_ptr, -1), nbytes), dtype=f32)))

    return pick


class GrammarPicker:
    """Candidate buffers for grammar-checked sampling, allocated once per context (vocab-sized)."""

    def __init__(self, np: Any, ctx_ptr: Any, n_vocab: int) -> None:
        self._ctx_ptr = ctx_ptr
        self._n_vocab = n_vocab
        self._cand = ffi.new("llama_token_data[]", n_vocab)
        self._view = np.frombuffer(
            ffi.buffer(self._cand), dtype=np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        )
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._cur_p = ffi.new("llama_token_data_array *")
        self._single = ffi.new("llama_token_data[1]")
        self._single_p = ffi.new("llama_token_data_array *")

    def _fill_candidates(self) -> Any:
        view = self._view
        view["id"] = self._ids
        view["logit"] = logits_view(self._ctx_ptr, self._n_vocab)
        view["p"] = 0.0
        cur_p = self._cur_p
        cur_p.data, cur_p.size, cur_p.selected, cur_p.sorted = self._cand, self._n_vocab, -1, False
        return cur_p

    def pick(self, chain: Any, grammar: Any) -> int:
        """Let the chain pick, check only that pick against the grammar, and constrain the full vocab (then
        pick again) only when the grammar rejects it; both samplers accept the final token."""
        lib = get_lib()
        cur_p = self._fill_candidates()
        lib.llama_sampler_apply(chain, cur_p)
        token = int(cur_p.data[cur_p.selected].id) if cur_p.selected >= 0 else -1
        single, single_p = self._single, self._single_p
        single[0].id, single[0].logit, single[0].p = max(token, 0), 1.0, 0.0
        single_p.data, single_p.size, single_p.selected, single_p.sorted = single, 1, -1, False
        rejected = token < 0
        if not rejected:
            lib.llama_sampler_apply(grammar, single_p)  # grammar state only advances on accept
            rejected = math.isinf(single_p.data[0].logit)
        if rejected:
            cur_p = self._fill_candidates()
            lib.llama_sampler_apply(grammar, cur_p)
            lib.llama_sampler_apply(chain, cur_p)
            if cur_p.selected < 0 or math.isinf(cur_p.data[cur_p.selected].logit):
                raise GrammarError("the grammar allows no next token here")
            token = int(cur_p.data[cur_p.selected].id)
        lib.llama_sampler_accept(grammar, token)
        lib.llama_sampler_accept(chain, token)
        return token


def logprob_info(scores: Any, token: int, top_n: int) -> dict[str, Any]:
    """Log-softmax of `scores` at `token`, plus the `top_n` most likely tokens: {"token", "logprob", "top"}."""
    import numpy as np

    logits = scores.astype(np.float64)
    peak = float(logits.max())
    log_z = peak + math.log(float(np.exp(logits - peak).sum()))
    info: dict[str, Any] = {"token": token, "logprob": float(logits[token]) - log_z, "top": {}}
    if top_n > 0:
        top = np.argpartition(-logits, min(top_n, len(logits) - 1))[:top_n]
        for t in sorted(top.tolist(), key=lambda t: -logits[t]):
            info["top"][int(t)] = float(logits[t]) - log_z
    return info
