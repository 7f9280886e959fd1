"""`Llama`: llama-cpp-python's high-level API on the generated bindings and the current llama.cpp API.

Same class, method and keyword names and the same OpenAI-shaped dicts as llama-cpp-python, so porting is
changing an import. `Llama` is a facade; each concern lives in its own module: `_core` (owners of the C
objects), `loading` (keywords -> model and context), `turns` (lifetime, turn-taking between threads),
`engine` (the context, prefix reuse, the per-token loop), `batching` (many sequences per decode),
`token_picker` (greedy/grammar fast paths, logprobs), `sampling` (the sampler chain), `text_completion`
(requests and the OpenAI shape), `embeddings`, `state` (snapshots, atomic session files).
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from llamarcp import _backend, embeddings, loading, text_completion
from llamarcp._core import Context, ffi
from llamarcp._cpu import physical_core_count
from llamarcp._managed import abandon
from llamarcp.batching import Scheduler
from llamarcp.compat.cache import cache_restore, storing_after
from llamarcp.compat.llama_api import LlamaCppApiMixin
from llamarcp.embeddings import Reranking
from llamarcp.engine import Engine, Outcome, Step
from llamarcp.errors import LlamaError
from llamarcp.lora import LoraMethods
from llamarcp.model_facts import ModelFacts
from llamarcp.multimodal import MediaMixin, Projector
from llamarcp.placement import current_slot_request
from llamarcp.sampling import (
    LLAMA_DEFAULT_SEED,
    LogitsProcessorList,
    SamplingParams,
    StoppingCriteriaList,
    as_logits_processor,
    as_stopping_criteria,
)
from llamarcp.state import LlamaState
from llamarcp.state_methods import StateMethods
from llamarcp.text_completion import PromptType
from llamarcp.tokenizer import LlamaTokenizer, detokenize
from llamarcp.turns import Turns
from llamarcp.validate.params import (
    MAX_PENALTY_LAST_N,
    check_chat_arguments,
    check_int,
    check_llama_keywords,
    check_seed,
    check_texts,
    check_token_ids,
)

__all__ = [
    "LLAMA_DEFAULT_SEED",
    "Llama",
    "LlamaState",
    "LogitsProcessorList",
    "StoppingCriteriaList",
    "physical_core_count",
]

#: llama.h's LLAMA_POOLING_TYPE_UNSPECIFIED (a default argument, so read from the generated declarations).
_POOLING_UNSPECIFIED: int = ffi.integer_const("LLAMA_POOLING_TYPE_UNSPECIFIED")

#: Keywords llama-cpp-python dropped long ago (f16_kv, n_parts) or that LangChain's integration passes to every
#: Llama it makes (device): accepted without a word, as llama-cpp-python does; other unknown keywords warn.
_SWALLOWED_KEYWORDS = frozenset({"f16_kv", "n_parts", "device"})

#: The most sequences one context decodes together (`n_parallel`); llama.cpp's own limit is 256.
MAX_PARALLEL = 64

#: `generate()` keywords llama-cpp-python accepts that current llama.cpp no longer has a sampler for.
_GENERATE_OBSOLETE = frozenset({"tfs_z", "penalize_nl"})


class Llama(ModelFacts, LoraMethods, Reranking, StateMethods, LlamaCppApiMixin, MediaMixin):
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
        # model
        n_gpu_layers: int = 0,
        split_mode: int | None = None,
        main_gpu: int = 0,
        tensor_split: Sequence[float] | None = None,
        vocab_only: bool = False,
        use_mmap: bool = True,
        use_mlock: bool = False,
        kv_overrides: Mapping[str, bool | int | float | str] | None = None,
        check_tensors: bool = False,
        use_extra_bufts: bool | None = None,
        rpc_servers: str | Sequence[str] | None = None,
        # context
        seed: int = LLAMA_DEFAULT_SEED,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_seq_max: int | None = None,
        n_parallel: int = 1,
        kv_unified: bool = False,
        rope_scaling_type: int | None = None,
        pooling_type: int = _POOLING_UNSPECIFIED,
        attention_type: int | None = None,
        rope_freq_base: float = 0.0,
        rope_freq_scale: float = 0.0,
        yarn_ext_factor: float | None = None,
        yarn_attn_factor: float | None = None,
        yarn_beta_fast: float | None = None,
        yarn_beta_slow: float | None = None,
        yarn_orig_ctx: int | None = None,
        logits_all: bool = False,
        embedding: bool = False,
        offload_kqv: bool = True,
        flash_attn: bool | None = None,
        op_offload: bool | None = None,
        swa_full: bool | None = None,
        no_perf: bool | None = None,
        type_k: int | None = None,
        type_v: int | None = None,
        # sampling, adapters, chat
        last_n_tokens_size: int = 64,
        lora_base: str | None = None,
        lora_scale: float = 1.0,
        lora_path: str | os.PathLike[str] | None = None,
        numa: bool | int = False,
        chat_format: str | None = None,
        chat_handler: Any = None,
        draft_model: Any = None,
        tokenizer: Any = None,
        spm_infill: bool = False,
        verbose: bool = False,
        strict: bool = False,
        mmproj: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Load `model_path` and create its context. Every keyword of llama-cpp-python's `Llama` is accepted;
        keywords unknown to both are ignored with one warning (as llama-cpp-python swallows them), or refused
        with TypeError when `strict=True`. `mmproj` is a multimodal projector GGUF (llamarcp.multimodal): then
        chat messages may hold OpenAI `image_url` (and `input_audio`) parts."""
        self._init_args: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "kwargs")}
        self._init_args.update(kwargs)
        unknown = sorted(set(kwargs) - _SWALLOWED_KEYWORDS)
        if unknown:
            listed = ", ".join(unknown)
            if strict:
                raise TypeError(f"Llama() got unexpected keyword argument(s): {listed}")
            warnings.warn(f"Llama(): ignoring {listed} (not used by llamarcp)", stacklevel=2)
        if lora_base is not None:
            warnings.warn("Llama(lora_base=...): llama.cpp applies adapters to the loaded model; ignored", stacklevel=2)
        for name, value in (("n_ctx", n_ctx), ("n_batch", n_batch)):
            if not isinstance(value, int) or value < 0 or (name == "n_batch" and value == 0):
                raise ValueError(f"{name} must be a positive int (n_ctx=0 means the model's training context)")
        if not isinstance(n_parallel, int) or isinstance(n_parallel, bool) or not 1 <= n_parallel <= MAX_PARALLEL:
            raise ValueError(f"n_parallel must be an int in 1..{MAX_PARALLEL}, got {n_parallel!r}")
        check_llama_keywords({k: v for k, v in self._init_args.items() if k not in kwargs})
        self.n_parallel = n_parallel
        self.kv_unified = kv_unified and n_parallel > 1
        if logits_all and n_parallel > 1:
            raise ValueError("logits_all=True keeps one sequence's logits per position: it needs n_parallel=1")
        self.verbose = verbose
        if verbose:
            _backend.set_verbose(True)
        if numa:
            _backend.init_numa(int(numa))
        if model_path is None:
            from llamarcp.models import default_model_path

            model_path = default_model_path()
        self.model_path = str(model_path)
        self._init_args["model_path"] = model_path
        self._seed = check_seed(seed) & 0xFFFFFFFF if seed is not None else LLAMA_DEFAULT_SEED
        self.last_n_tokens_size = check_int("last_n_tokens_size", last_n_tokens_size, -1, MAX_PENALTY_LAST_N)
        self._chat_format = chat_format
        self.chat_handler = chat_handler
        self.draft_model = draft_model
        self.tokenizer_ = tokenizer
        self.spm_infill = spm_infill
        self.logits_all = logits_all
        self.embedding = bool(embedding)
        self.n_threads = n_threads if n_threads and n_threads > 0 else physical_core_count()
        self.n_threads_batch = n_threads_batch if n_threads_batch and n_threads_batch > 0 else self.n_threads
        self._engine: Engine | None = None
        self._scheduler: Scheduler | None = None
        self._projector: Projector | None = None

        self._model = loading.open_model(self._init_args)
        model, this = self._model, weakref.ref(self)  # no cycle through self: a dropped Llama is freed at once
        self._turns = Turns(
            free=model.close,
            is_freed=lambda: model.closed,
            on_close=lambda: _abort_if_alive(this),  # the per-token loop and the C abort callback look at it
            abandon=lambda: abandon(model),
        )
        turns = self._turns
        # Dropped without close(): closed all the same, so a batching thread lets the model go now, not when idle.
        weakref.finalize(self, turns.close).atexit = False  # at exit, llamarcp._backend's shutdown frees models
        if vocab_only:
            return
        try:
            self._engine = loading.open_engine(self._model, self._init_args, self, is_closing=lambda: turns.closing)
            if n_parallel > 1:
                self._scheduler = Scheduler(self._engine, self._turns, n_parallel, draft_model=draft_model)
            if logits_all and not self.embedding:  # an embedding context outputs embeddings, not logits
                self._engine.keep_all_logits()
            if lora_path is not None:
                self._lora = loading.apply_lora(self._model, self._engine, lora_path, lora_scale)
                self._lora_adapters().register(self._lora, float(lora_scale), applied=True)
            if mmproj is not None:
                self.load_projector(mmproj)
            if hasattr(draft_model, "attach") and not self.embedding:  # a DraftModel; last: a failed Llama never has it
                draft_model.attach(self, self._model, self._engine.n_ctx, n_parallel, self._engine.ctx.n_ctx())
        except BaseException:
            self._model.close()
            raise

    # -- lifetime ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the context and the model (also done when the object is garbage collected). Idempotent.

        Never blocks: a call still using the model (another thread, or a suspended stream) stops at its next token
        with ClosedError, and the memory is freed as soon as the last such call has let go, never under its feet.
        """
        self._turns.close()  # closes the context and batches first (they are the model's children)

    def __enter__(self) -> Llama:
        self._turns.check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._turns.closed

    def _engine_or_raise(self) -> Engine:
        self._turns.check_open()
        if self._engine is None:
            raise LlamaError("this Llama was loaded with vocab_only=True; it can tokenize but has no context")
        return self._engine

    def _context(self) -> Context:
        return self._engine_or_raise().ctx

    @property
    def _memory(self) -> Any:
        return self._engine_or_raise().memory

    def tokenizer(self) -> LlamaTokenizer:
        return LlamaTokenizer(self)

    # -- tokens -----------------------------------------------------------------------------------------------

    def tokenize(self, text: bytes | str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Text (UTF-8 bytes, or str) -> token ids; `add_bos` adds the vocab's BOS/EOS rules, `special` parses
        special-token text like `<s>`. Invalid UTF-8 raises TokenizeError."""
        with self._turns.using():
            return self._model.tokenize(text, add_special=add_bos, parse_special=special)

    def detokenize(
        self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None, special: bool = False
    ) -> bytes:
        """Token ids -> bytes. With `prev_tokens`, only the bytes the new tokens add after them (streaming)."""
        tokens = check_token_ids("tokens", tokens)
        if prev_tokens is not None:
            prev_tokens = check_token_ids("prev_tokens", prev_tokens)
        with self._turns.using():
            return detokenize(self._model, tokens, prev_tokens, special)

    # -- evaluation -------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the cached prefix: clear the context memory."""
        with self._turns.exclusive():
            self._engine_or_raise().clear()

    def abort(self) -> None:
        """Ask a running decode/generation/embedding (e.g. in another thread) to stop; it raises
        GenerationAborted.

        A request made while nothing runs is kept and stops the next decode, so a caller racing a generation
        that is just starting cannot miss it; `reset()` does not clear it.
        """
        if self._engine is not None:
            self._engine.abort.requested = True

    def clear_abort(self) -> None:
        """Withdraw an `abort()` that found nothing to stop, so it does not stop the next decode."""
        if self._engine is not None:
            self._engine.abort.requested = False

    def eval(self, tokens: Sequence[int]) -> int:
        """Decode `tokens` after the tokens the context already holds (llama-cpp-python's semantics: two calls
        append); returns how many were decoded. `reset()` first to start over."""
        with self._turns.exclusive():
            engine = self._engine_or_raise()
            tokens = check_token_ids("tokens", tokens)
            if not tokens:
                return 0
            held = engine.input_ids if engine.owner == "single" else []
            return engine.eval([*held, *tokens])

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
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        logits_processor: Callable[[Any, Any], Any] | None = None,
        stopping_criteria: Callable[[Any, Any], bool] | None = None,
        grammar: Any = None,
        seed: int | None = None,
        logit_bias: Mapping[int, float] | None = None,
        **obsolete: Any,
    ) -> Iterator[int]:
        """Yield sampled token ids after `tokens` until an end-of-generation token, a stopping criterion or a
        full context. `tfs_z` and `penalize_nl` (samplers llama.cpp removed) are accepted and have no effect;
        any other unknown keyword is a TypeError (a misspelt `temperature=` would otherwise be lost)."""
        unknown = set(obsolete) - _GENERATE_OBSOLETE
        if unknown:
            raise TypeError(f"generate() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        params = self._sampling_params(
            seed,
            temperature=temp,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            typical_p=typical_p,
            repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            grammar=grammar,
            logit_bias=logit_bias,
            mirostat_mode=mirostat_mode,
            mirostat_tau=mirostat_tau,
            mirostat_eta=mirostat_eta,
        )
        processor = as_logits_processor(logits_processor)
        criteria = as_stopping_criteria(stopping_criteria)
        return self._generated_tokens(check_token_ids("tokens", tokens), params, processor, criteria)

    def _generated_tokens(
        self, tokens: list[int], params: SamplingParams, processor: Any, criteria: Any
    ) -> Iterator[int]:
        for token, _piece, _lp in self._generate(tokens, params, None, None, processor, criteria):
            yield token

    def _sampling_params(self, seed: int | None = None, **knobs: Any) -> SamplingParams:
        """One call's sampling knobs with this model's penalty window and seed (None: the model's), checked
        (TypeError/ValueError naming the knob) before llama.cpp sees them. Every sampling entry point uses it."""
        params = SamplingParams(penalty_last_n=self.last_n_tokens_size, seed=self._effective_seed(seed), **knobs)
        params.validate(self._model.n_vocab)
        return params

    def _effective_seed(self, seed: int | None) -> int:
        if seed is None or check_seed(seed) < 0:
            return self._seed
        return int(seed) & 0xFFFFFFFF

    def _generate(
        self,
        prompt_tokens: list[int],
        params: SamplingParams,
        max_tokens: int | None,
        logprobs: int | None,
        logits_processor: Any,
        stopping_criteria: Any,
        outcome: Outcome | None = None,
        prompt_logprobs: int | None = None,
    ) -> Generator[Step, None, None]:
        """The steps of one generation. With `n_parallel > 1` the request joins the shared decode loop at once
        (so several can be started before any is read); otherwise it runs in a turn of its own on first read."""
        if self._scheduler is not None:
            self._turns.check_open()
            if prompt_logprobs is not None:
                raise ValueError("echo=True with logprobs needs n_parallel=1 (prompt logprobs decode every row)")
            job = self._scheduler.submit(
                prompt_tokens, params, max_tokens, logprobs, logits_processor, stopping_criteria
            )
            return self._scheduler.steps(job, outcome)
        return self._single_steps(
            prompt_tokens, params, max_tokens, logprobs, logits_processor, stopping_criteria, outcome, prompt_logprobs
        )

    def _single_steps(
        self,
        prompt_tokens: list[int],
        params: SamplingParams,
        max_tokens: int | None,
        logprobs: int | None,
        logits_processor: Any,
        stopping_criteria: Any,
        outcome: Outcome | None,
        prompt_logprobs: int | None = None,
    ) -> Generator[Step, None, None]:
        """The engine's loop inside a turn: the context is this generation's until the generator finishes."""
        self._turns.enter()
        try:
            engine = self._engine_or_raise()
            if engine.loras is not None and engine.loras.apply(engine.loras.resolve(current_slot_request().lora)):
                engine.clear()  # the cached prefix was computed with other adapters
            yield from engine.generate(
                prompt_tokens,
                params,
                max_tokens,
                logprobs,
                logits_processor,
                stopping_criteria,
                outcome,
                prompt_logprobs,
                draft_model=self.draft_model,
            )
        finally:
            self._turns.leave()

    # -- completions ------------------------------------------------------------------------------------------

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
        n: int = 1,
    ) -> Any:
        """Complete `prompt` (text or token ids); an OpenAI `text_completion` dict, or an iterator of chunks
        when `stream=True`. `temperature=0` is greedy. Stop strings never appear in the output.

        `n > 1` gives several choices of the same prompt (choice i samples with seed + i); with `n_parallel`
        they decode together and share the prompt's KV, otherwise they run one after the other and reuse it."""
        with self._turns.using():  # tokenizing and parsing the grammar touch the model
            request = text_completion.prepare(
                self,
                prompt,
                suffix=suffix,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                min_p=min_p,
                typical_p=typical_p,
                logprobs=logprobs,
                echo=echo,
                stop=stop,
                frequency_penalty=frequency_penalty,
                presence_penalty=presence_penalty,
                repeat_penalty=repeat_penalty,
                top_k=top_k,
                seed=seed,
                mirostat_mode=mirostat_mode,
                mirostat_tau=mirostat_tau,
                mirostat_eta=mirostat_eta,
                model=model,
                grammar=grammar,
                logit_bias=logit_bias,
                logits_processor=logits_processor,
                stopping_criteria=stopping_criteria,
            )
            if self.cache is not None:  # llama-cpp-python's prompt cache (llamarcp.compat.cache)
                cache_restore(self, request.prompt_tokens)
        if n != 1:
            requests = text_completion.choices(request, n)
            many = text_completion.stream_choices(self, requests)
            return many if stream else text_completion.collect_choices(requests, many)
        chunks = text_completion.stream_chunks(self, request)
        if self.cache is not None:
            chunks = storing_after(self, chunks)
        if stream:
            return chunks
        return text_completion.collect(request, chunks)

    def create_completions(self, prompts: Sequence[PromptType], **kwargs: Any) -> list[dict[str, Any]]:
        """Complete every prompt of a list (offline batch use); the responses come back in order.

        With `n_parallel > 1` all of them are decoded together through the shared loop, `n_parallel` at a
        time; otherwise one after another. Keywords are `create_completion`'s (not `stream`)."""
        with self._turns.using():
            return text_completion.complete_all(self, prompts, kwargs)

    def __call__(self, prompt: PromptType, *args: Any, **kwargs: Any) -> Any:
        return self.create_completion(prompt, *args, **kwargs)

    def create_chat_completion(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> Any:
        """OpenAI-shaped chat completion (dict, or chunks when `stream=True`); see `llamarcp.chat`.

        The prompt comes from the model's chat template unless `chat_format=`/`chat_template=` (or the
        constructor's `chat_format`) says otherwise.
        """
        from llamarcp.chat import create_chat_completion

        check_chat_arguments(messages, kwargs)
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
        context's pooling is NONE. Needs `Llama(..., embedding=True)`. Inputs longer than the model can take
        in one pass are cut (`truncate=False`: PromptTooLongError)."""
        with self._turns.exclusive():
            engine = self._engine_or_raise()
            if not self.embedding:
                raise LlamaError("embeddings need a Llama created with embedding=True")
            single = isinstance(input, str)
            texts = check_texts("input", input)
            rows, count = embeddings.embed(engine, texts, normalize=normalize, truncate=truncate)
        output = rows[0] if single else rows
        return (output, count) if return_count else output

    def create_embedding(self, input: str | Sequence[str], model: str | None = None) -> dict[str, Any]:
        """OpenAI-shaped embeddings response for one text or a list of texts."""
        rows, count = self.embed(input, return_count=True)
        return embeddings.embedding_response(
            [rows] if isinstance(input, str) else rows, count, model or self.model_path
        )

    def set_seed(self, seed: int) -> None:
        self._seed = check_seed(seed) & 0xFFFFFFFF

    def __repr__(self) -> str:
        engine = self._engine
        status = "closed" if self.closed else f"n_ctx={engine.n_ctx}" if engine is not None else "vocab_only"
        return f"<Llama {Path(self.model_path).name} {status}>"


def _abort_if_alive(llm: weakref.ref[Llama]) -> None:
    target = llm()
    if target is not None:
        target.abort()
