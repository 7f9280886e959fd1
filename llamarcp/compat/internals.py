"""`llama_cpp._internals`: llama-cpp-python's thin owners of llama.cpp pointers, on the ctypes face.

`LlamaModel`, `LlamaContext`, `LlamaBatch` and `LlamaSampler` with the constructors and methods code written
against llama-cpp-python calls (`LlamaBatch(n_tokens=..., embd=0, n_seq_max=1).set_batch(...)`,
`LlamaContext(model=..., params=...).decode(batch)`, ...). Their handles are the ctypes face's (ints, ctypes
pointers), so they mix with `llama_cpp.llama_cpp` calls. What llama.cpp would abort on is checked first: the
GGUF file and the context parameters (through the face's guards), batch sizes, grammars.
`llama_cpp.Llama` remains llamarcp's own class; these are for code that builds on the raw layer.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Sequence
from typing import Any

from llamarcp.compat import lowlevel as _c

__all__ = ["LlamaBatch", "LlamaContext", "LlamaModel", "LlamaSampler"]


class _Owner:
    """One C pointer freed once by `close()` (also at garbage collection); children are closed first."""

    _free_name = ""

    def _own(self, handle: Any) -> None:
        self._handle = handle
        self._children: list[Callable[[], None]] = []
        self.sampler = None  # llama-cpp-python's objects all have it; cleanup code in the wild looks for it

    def close(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is None:
            return
        for child in reversed(getattr(self, "_children", [])):
            child()
        self._children = []
        self._handle = None
        getattr(_c, self._free_name)(handle)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter teardown: the library may be gone already
            self.close()


class LlamaModel(_Owner):
    """A loaded `llama_model` (`.model`, an int) and its vocab (`.vocab`)."""

    _free_name = "llama_model_free"

    def __init__(self, *, path_model: str, params: Any, verbose: bool = True) -> None:
        self.path_model = path_model
        self.params = params
        self.verbose = verbose
        if not os.path.exists(path_model):
            raise ValueError(f"Model path does not exist: {path_model}")
        model = _c.llama_model_load_from_file(os.fsencode(path_model), params)
        if model is None:
            raise ValueError(f"Failed to load model from file: {path_model}")
        self._own(model)
        self.vocab = _c.llama_model_get_vocab(model)

    @property
    def model(self) -> int | None:
        return self._handle

    @staticmethod
    def default_params() -> Any:
        return _c.llama_model_default_params()

    def vocab_type(self) -> int:
        return int(_c.llama_vocab_type(self.vocab))

    def n_vocab(self) -> int:
        return int(_c.llama_vocab_n_tokens(self.vocab))

    def n_ctx_train(self) -> int:
        return int(_c.llama_model_n_ctx_train(self.model))

    def n_embd(self) -> int:
        return int(_c.llama_model_n_embd(self.model))

    def rope_freq_scale_train(self) -> float:
        return float(_c.llama_model_rope_freq_scale_train(self.model))

    def desc(self) -> str:
        buffer = ctypes.create_string_buffer(1024)
        _c.llama_model_desc(self.model, buffer, len(buffer))
        return buffer.value.decode("utf-8", "replace")

    def size(self) -> int:
        return int(_c.llama_model_size(self.model))

    def n_params(self) -> int:
        return int(_c.llama_model_n_params(self.model))

    def token_get_text(self, token: int) -> str:
        return (_c.llama_vocab_get_text(self.vocab, token) or b"").decode("utf-8", "replace")

    def token_get_score(self, token: int) -> float:
        return float(_c.llama_vocab_get_score(self.vocab, token))

    def token_get_attr(self, token: int) -> int:
        return int(_c.llama_vocab_get_attr(self.vocab, token))

    def token_bos(self) -> int:
        return int(_c.llama_vocab_bos(self.vocab))

    def token_eos(self) -> int:
        return int(_c.llama_vocab_eos(self.vocab))

    def token_eot(self) -> int:
        return int(_c.llama_vocab_eot(self.vocab))

    def token_sep(self) -> int:
        return int(_c.llama_vocab_sep(self.vocab))

    def token_nl(self) -> int:
        return int(_c.llama_vocab_nl(self.vocab))

    def token_prefix(self) -> int:
        return int(_c.llama_vocab_fim_pre(self.vocab))

    def token_middle(self) -> int:
        return int(_c.llama_vocab_fim_mid(self.vocab))

    def token_suffix(self) -> int:
        return int(_c.llama_vocab_fim_suf(self.vocab))

    def add_bos_token(self) -> bool:
        return bool(_c.llama_vocab_get_add_bos(self.vocab))

    def add_eos_token(self) -> bool:
        return bool(_c.llama_vocab_get_add_eos(self.vocab))

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        capacity = len(text) + 2
        while True:
            tokens = (_c.llama_token * capacity)()
            n = _c.llama_tokenize(self.vocab, text, len(text), tokens, capacity, add_bos, special)
            if n >= 0:
                return list(tokens[:n])
            if -n <= capacity:  # not a size problem: llama.cpp refused the text
                raise RuntimeError(f"Failed to tokenize: text={text!r} n_tokens={n}")
            capacity = -n

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        size = 32
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = _c.llama_token_to_piece(self.vocab, token, buffer, size, 0, special)
            if n <= size:
                return buffer.raw[: max(n, 0)]
            size = n

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        out = b"".join(self.token_to_piece(t, special) for t in tokens)
        if tokens and tokens[0] == self.token_bos() and out[:1] == b" ":
            return out[1:]  # llama-cpp-python drops the space a first piece after BOS carries
        return out

    def metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in range(int(_c.llama_model_meta_count(self.model))):
            key = self._meta(_c.llama_model_meta_key_by_index, i)
            out[key] = self._meta(_c.llama_model_meta_val_str_by_index, i)
        return out

    def _meta(self, function: Any, index: int) -> str:
        size = 256
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = function(self.model, index, buffer, size)
            if n < size:
                return buffer.value.decode("utf-8", "replace")
            size = n + 1


class LlamaContext(_Owner):
    """A `llama_context` (`.ctx`, an int) on a `LlamaModel`; closed before its model."""

    _free_name = "llama_free"

    def __init__(self, *, model: LlamaModel, params: Any, verbose: bool = True) -> None:
        if model.model is None:
            raise ValueError("the LlamaModel is closed")
        self.model = model
        self.params = params
        self.verbose = verbose
        ctx = _c.llama_init_from_model(model.model, params)
        if ctx is None:
            raise ValueError("Failed to create llama_context")
        self._own(ctx)
        self.memory = _c.llama_get_memory(ctx)
        model._children.append(self.close)

    @property
    def ctx(self) -> int | None:
        return self._handle

    @staticmethod
    def default_params() -> Any:
        return _c.llama_context_default_params()

    def n_ctx(self) -> int:
        return int(_c.llama_n_ctx(self.ctx))

    def pooling_type(self) -> int:
        return int(_c.llama_pooling_type(self.ctx))

    def kv_cache_clear(self) -> None:
        if self.memory is not None:
            _c.llama_memory_clear(self.memory, True)

    def kv_cache_seq_rm(self, seq_id: int, p0: int, p1: int) -> bool:
        return bool(_c.llama_memory_seq_rm(self.memory, max(seq_id, 0), p0, p1))

    def kv_cache_seq_cp(self, seq_id_src: int, seq_id_dst: int, p0: int, p1: int) -> None:
        _c.llama_memory_seq_cp(self.memory, seq_id_src, seq_id_dst, p0, p1)

    def kv_cache_seq_keep(self, seq_id: int) -> None:
        _c.llama_memory_seq_keep(self.memory, seq_id)

    def kv_cache_seq_shift(self, seq_id: int, p0: int, p1: int, shift: int) -> None:
        _c.llama_memory_seq_add(self.memory, seq_id, p0, p1, shift)

    def get_state_size(self) -> int:
        return int(_c.llama_state_get_size(self.ctx))

    def decode(self, batch: LlamaBatch) -> None:
        code = _c.llama_decode(self.ctx, batch.batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")

    def encode(self, batch: LlamaBatch) -> None:
        code = _c.llama_encode(self.ctx, batch.batch)
        if code != 0:
            raise RuntimeError(f"llama_encode returned {code}")

    def set_n_threads(self, n_threads: int, n_threads_batch: int) -> None:
        _c.llama_set_n_threads(self.ctx, n_threads, n_threads_batch)

    def get_logits(self) -> Any:
        return _c.llama_get_logits(self.ctx)

    def get_logits_ith(self, i: int) -> Any:
        return _c.llama_get_logits_ith(self.ctx, i)

    def get_embeddings(self) -> Any:
        return _c.llama_get_embeddings(self.ctx)

    def get_embeddings_ith(self, i: int) -> Any:
        return _c.llama_get_embeddings_ith(self.ctx, i)

    def get_embeddings_seq(self, seq_id: int) -> Any:
        return _c.llama_get_embeddings_seq(self.ctx, seq_id)


class LlamaBatch(_Owner):
    """A `llama_batch` (`.batch`, the ctypes Structure) of at most `n_tokens` tokens."""

    _free_name = "llama_batch_free"

    def __init__(self, *, n_tokens: int, embd: int, n_seq_max: int, verbose: bool = True) -> None:
        for name, value, low in (("n_tokens", n_tokens, 1), ("embd", embd, 0), ("n_seq_max", n_seq_max, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"LlamaBatch: {name} must be an int >= {low}, got {value!r}")
        self._n_tokens = n_tokens
        self.embd = embd
        self.n_seq_max = n_seq_max
        self.verbose = verbose
        self._own(_c.llama_batch_init(n_tokens, embd, n_seq_max))

    @property
    def batch(self) -> Any:
        return self._handle

    def n_tokens(self) -> int:
        return int(self.batch.n_tokens)

    def reset(self) -> None:
        self.batch.n_tokens = 0

    def _room(self, start: int, count: int) -> None:
        if count < 1 or start + count > self._n_tokens:  # llama_batch_init's arrays hold n_tokens entries
            raise ValueError(f"LlamaBatch holds {self._n_tokens} tokens: cannot put {count} after {start}")

    def set_batch(self, batch: Sequence[int], n_past: int, logits_all: bool) -> None:
        n = len(batch)
        self._room(0, n)
        b = self.batch
        b.n_tokens = n
        for i, token in enumerate(batch):
            b.token[i] = token
            b.pos[i] = n_past + i
            b.seq_id[i][0] = 0
            b.n_seq_id[i] = 1
            b.logits[i] = logits_all
        b.logits[n - 1] = True

    def add_sequence(self, batch: Sequence[int], seq_id: int, logits_all: bool) -> None:
        n = len(batch)
        b = self.batch
        start = int(b.n_tokens)
        self._room(start, n)
        if not isinstance(seq_id, int) or seq_id < 0:
            raise ValueError(f"seq_id must be an int >= 0, got {seq_id!r}")
        b.n_tokens = start + n
        for i, token in enumerate(batch):
            b.token[start + i] = token
            b.pos[start + i] = i
            b.seq_id[start + i][0] = seq_id
            b.n_seq_id[start + i] = 1
            b.logits[start + i] = logits_all
        b.logits[start + n - 1] = True

    def close(self) -> None:
        batch = getattr(self, "_handle", None)
        if batch is not None:
            self._handle = None
            _c.llama_batch_free(batch)


class LlamaSampler(_Owner):
    """A sampler chain (`.sampler`); `add_*` appends llama.cpp's samplers, `sample(ctx)` picks a token."""

    _free_name = "llama_sampler_free"

    def __init__(self) -> None:
        self._own(_c.llama_sampler_chain_init(_c.llama_sampler_chain_default_params()))
        self.sampler = self._handle

    def close(self) -> None:
        super().close()
        self.sampler = None

    def _add(self, sampler: Any) -> None:
        _c.llama_sampler_chain_add(self.sampler, sampler)

    def add_greedy(self) -> None:
        self._add(_c.llama_sampler_init_greedy())

    def add_dist(self, seed: int) -> None:
        self._add(_c.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def add_top_k(self, k: int) -> None:
        self._add(_c.llama_sampler_init_top_k(k))

    def add_top_p(self, p: float, min_keep: int = 1) -> None:
        self._add(_c.llama_sampler_init_top_p(p, min_keep))

    def add_min_p(self, p: float, min_keep: int = 1) -> None:
        self._add(_c.llama_sampler_init_min_p(p, min_keep))

    def add_typical(self, p: float, min_keep: int = 1) -> None:
        self._add(_c.llama_sampler_init_typical(p, min_keep))

    def add_temp(self, temp: float) -> None:
        self._add(_c.llama_sampler_init_temp(temp))

    def add_temp_ext(self, t: float, delta: float, exponent: float) -> None:
        self._add(_c.llama_sampler_init_temp_ext(t, delta, exponent))

    def add_xtc(self, p: float, t: float, min_keep: int, seed: int) -> None:
        self._add(_c.llama_sampler_init_xtc(p, t, min_keep, seed & 0xFFFFFFFF))

    def add_top_n_sigma(self, n: float) -> None:
        self._add(_c.llama_sampler_init_top_n_sigma(n))

    def add_mirostat(self, n_vocab: int, seed: int, tau: float, eta: float, m: int) -> None:
        self._add(_c.llama_sampler_init_mirostat(n_vocab, seed & 0xFFFFFFFF, tau, eta, m))

    def add_mirostat_v2(self, seed: int, tau: float, eta: float) -> None:
        self._add(_c.llama_sampler_init_mirostat_v2(seed & 0xFFFFFFFF, tau, eta))

    def add_penalties(
        self,
        penalty_last_n: int,
        penalty_repeat: float,
        penalty_freq: float,
        penalty_present: float,
        *args: Any,
    ) -> None:
        self._add(_c.llama_sampler_init_penalties(penalty_last_n, penalty_repeat, penalty_freq, penalty_present))

    def add_grammar(self, model: LlamaModel, grammar: Any) -> None:
        """`grammar`: a LlamaGrammar (llama_cpp.llama_grammar) or GBNF text; checked before llama.cpp parses it."""
        text = getattr(grammar, "_grammar", None) or getattr(grammar, "grammar", None) or grammar
        root = getattr(grammar, "_root", None) or getattr(grammar, "root", None) or "root"
        if not isinstance(text, str):
            raise TypeError(f"add_grammar expects a LlamaGrammar or GBNF text, got {type(grammar).__name__}")
        sampler = _c.llama_sampler_init_grammar(model.vocab, text.encode(), str(root).encode())
        if not sampler:
            raise ValueError("llama.cpp refused the grammar")
        self._add(sampler)

    def get_seed(self) -> int:
        return int(_c.llama_sampler_get_seed(self.sampler))

    def sample(self, ctx: LlamaContext, idx: int = -1) -> int:
        return int(_c.llama_sampler_sample(self.sampler, ctx.ctx, idx))

    def accept(self, token: int) -> None:
        _c.llama_sampler_accept(self.sampler, token)

    def reset(self) -> None:
        _c.llama_sampler_reset(self.sampler)
