"""llama-cpp-python's extra `Llama` attributes and methods, as a mixin the `Llama` facade inherits.

Everything here is expressed with llamarcp's own API (`self._model`, `self._engine` and `self._turns` of the
facade, its public methods, and `self._init_args`, the constructor's keyword arguments); nothing else in
llamarcp depends on it.

Logits: with `Llama(logits_all=True)` every decode outputs the logits of all its tokens and `scores` /
`_scores` / `eval_logits` hold one row per token the context holds (row i scores the token after position i),
as in llama-cpp-python; `sample(idx=...)` samples any position of the last `eval`. With the default
`logits_all=False` they hold one row, the last evaluated token's (llama-cpp-python leaves its `scores`
unwritten then), and `sample` only samples that last position.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["LlamaCppApiMixin", "MinTokensLogitsProcessor"]


def _output_row(engine: Any, idx: int | None, n_tokens: int) -> int:
    """The last decode's output row for llama-cpp-python's `sample(idx=...)` (a position; None/-1: the last)."""
    if idx is None or idx in (-1, n_tokens - 1):
        return -1
    kept = engine.kept_logits
    first, count = kept.last_decode if kept is not None else (n_tokens - 1, 1)
    if not isinstance(idx, int) or not first <= idx < first + count:
        where = (
            f"positions {first}..{first + count - 1} (the last eval)"
            if kept is not None and count
            else f"only the last evaluated token ({n_tokens - 1}) without logits_all=True"
        )
        raise ValueError(f"idx={idx!r}: can sample {where}")
    return idx - first


def _init_arg(name: str, default: Any = None) -> Any:
    """An attribute llama-cpp-python keeps from its constructor: read from `_init_args`, assignable."""
    slot = "_compat_" + name

    def get(self: Any) -> Any:
        if slot in self.__dict__:
            return self.__dict__[slot]
        return getattr(self, "_init_args", {}).get(name, default)

    def set(self: Any, value: Any) -> None:
        self.__dict__[slot] = value

    return property(get, set, doc=f"The constructor's `{name}` (llama-cpp-python keeps it as an attribute).")


class LlamaCppApiMixin:
    """Attributes and methods llama-cpp-python's `Llama` has beyond llamarcp's core API."""

    # Set by the constructor (`draft_model=`) or `set_cache`; class-level defaults so every Llama has them.
    cache: Any = None
    draft_model: Any = None
    _init_args: dict[str, Any]

    lora_path = _init_arg("lora_path")
    lora_scale = _init_arg("lora_scale", 1.0)
    lora_base = _init_arg("lora_base")
    kv_overrides = _init_arg("kv_overrides")
    numa = _init_arg("numa", False)
    tensor_split = _init_arg("tensor_split")

    # The facade provides these; declared for type checkers.
    _chat_format: str | None
    chat_handler: Any
    _model: Any
    _engine: Any
    _turns: Any

    @property
    def _history(self) -> list[int]:
        engine = self._engine
        return engine.input_ids if engine is not None else []

    # -- raw handles and parameters -------------------------------------------------------------------------

    @property
    def ctx(self) -> Any:
        """The `llama_context *` (cffi cdata) for `llamarcp.lib` / `llama_cpp.llama_cpp` calls."""
        return self._context().ptr  # type: ignore[attr-defined]

    @property
    def model(self) -> Any:
        """The `llama_model *` (cffi cdata)."""
        self._turns.check_open()
        return self._model.ptr

    @property
    def chat_format(self) -> str | None:
        """The chat format chat completions use: the constructor's, else (without a chat_handler) the one picked
        for the model, named as llama-cpp-python names it ("chat_template.default": the GGUF's own template)."""
        if self._chat_format is None and self.chat_handler is None and not self._turns.closed:
            from llamarcp.chat.formats import guessed_chat_format  # the chat package loads on first chat use

            self._chat_format = guessed_chat_format(self)
        return self._chat_format

    @chat_format.setter
    def chat_format(self, value: str | None) -> None:
        self._chat_format = value

    @property
    def n_batch(self) -> int:
        """Largest number of tokens one `llama_decode` call takes."""
        engine = self._engine
        return int(engine.n_batch) if engine is not None else int(self._init_args.get("n_batch", 512))

    @property
    def context_params(self) -> Any:
        """A `struct llama_context_params` with the values the context really uses (n_ctx after rounding)."""
        from llamarcp import _backend

        lib = _backend.get_lib()
        params = lib.llama_context_default_params()
        if self._engine is None:  # vocab_only: what was asked for
            params.n_ctx = int(self._init_args.get("n_ctx", 512))
            params.n_batch = int(self._init_args.get("n_batch", 512))
            return params
        ptr = self._context().ptr  # type: ignore[attr-defined]
        params.n_ctx = int(lib.llama_n_ctx(ptr))
        params.n_batch = int(lib.llama_n_batch(ptr))
        params.n_ubatch = int(lib.llama_n_ubatch(ptr))
        params.n_seq_max = int(lib.llama_n_seq_max(ptr))
        params.n_threads = int(lib.llama_n_threads(ptr))
        params.n_threads_batch = int(lib.llama_n_threads_batch(ptr))
        params.pooling_type = int(lib.llama_pooling_type(ptr))
        params.embeddings = bool(getattr(self, "embedding", False))
        args = self._init_args
        for name in ("rope_freq_base", "rope_freq_scale", "offload_kqv", "type_k", "type_v", "swa_full"):
            if args.get(name) is not None:
                setattr(params, name, args[name])
        return params

    @property
    def model_params(self) -> Any:
        """A `struct llama_model_params` with the constructor's model options."""
        from llamarcp import _adapt, _backend

        params = _backend.get_lib().llama_model_default_params()
        args = self._init_args
        for name in ("n_gpu_layers", "main_gpu", "vocab_only", "check_tensors"):
            if args.get(name) is not None:
                setattr(params, name, args[name])
        _adapt.set_load_mode(
            _backend.get_lib(), params, bool(args.get("use_mmap", True)), bool(args.get("use_mlock", False))
        )
        if args.get("split_mode") is not None:
            params.split_mode = int(args["split_mode"])
        return params

    def pooling_type(self) -> int:
        """The context's `enum llama_pooling_type` (LLAMA_POOLING_TYPE_*)."""
        from llamarcp import _backend

        return int(_backend.get_lib().llama_pooling_type(self.ctx))

    # -- token history and logits as numpy arrays -----------------------------------------------------------

    @property
    def input_ids(self) -> Any:
        """The tokens the context holds, as an `intc` numpy array (llama-cpp-python's `input_ids[:n_tokens]`)."""
        import numpy as np

        return np.asarray(self._history, dtype=np.intc)

    @property
    def eval_tokens(self) -> deque[int]:
        """The tokens the context holds, oldest first."""
        return deque(self._history, maxlen=int(self.n_ctx))  # type: ignore[attr-defined]

    @property
    def scores(self) -> Any:
        """Logits as a float32 array (a copy): `(n_tokens, n_vocab)` with `logits_all=True`, else `(1, n_vocab)`,
        the row of the last evaluated token."""
        import numpy as np

        if not self._history:
            return np.zeros((0, int(self.n_vocab)), dtype=np.single)  # type: ignore[attr-defined]
        engine = self._engine_or_raise()  # type: ignore[attr-defined]
        if engine.kept_logits is not None:
            return engine.kept_logits.rows(len(self._history))
        return np.array(engine.logits(), dtype=np.single).reshape(1, -1)

    @property
    def _scores(self) -> Any:
        return self.scores

    @property
    def eval_logits(self) -> deque[list[float]]:
        return deque(self.scores.tolist(), maxlen=int(self.n_ctx) if self.logits_all else 1)  # type: ignore[attr-defined]

    @staticmethod
    def logits_to_logprobs(logits: Any, axis: int = -1) -> Any:
        """log-softmax of `logits` along `axis` (float32, numerically stable)."""
        import numpy as np

        values = np.asarray(logits, dtype=np.single)
        peak = np.amax(values, axis=axis, keepdims=True)
        peak[~np.isfinite(peak)] = 0.0
        shifted = values - peak
        with np.errstate(divide="ignore"):
            log_z = np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
        return shifted - log_z

    @staticmethod
    def longest_token_prefix(a: Sequence[int], b: Sequence[int]) -> int:
        from llamarcp.compat.cache import longest_token_prefix

        return longest_token_prefix(a, b)

    # -- sampling -------------------------------------------------------------------------------------------

    def sample(
        self,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        temp: float = 0.80,
        repeat_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_eta: float = 0.1,
        mirostat_tau: float = 5.0,
        penalize_nl: bool = True,
        logits_processor: Any = None,
        grammar: Any = None,
        idx: int | None = None,
    ) -> int:
        """Sample one token from the logits of the last evaluated token (after `eval`), with the given settings;
        the context is not advanced. `temp=0` is greedy; penalties look at the tokens the context holds."""
        from llamarcp.errors import LlamaError
        from llamarcp.sampling import as_logits_processor, build_sampler_chain

        with self._turns.exclusive():
            engine = self._engine_or_raise()  # type: ignore[attr-defined]
            n_tokens = len(self._history)
            if n_tokens == 0:
                raise LlamaError("nothing to sample from: evaluate some tokens first (eval)")
            row = _output_row(engine, idx, n_tokens)
            params = self._sampling_params(  # type: ignore[attr-defined]
                None,
                temperature=temp,
                top_k=top_k,
                top_p=top_p,
                min_p=min_p,
                typical_p=typical_p,
                repeat_penalty=repeat_penalty,
                frequency_penalty=frequency_penalty,
                presence_penalty=presence_penalty,
                grammar=grammar,
                mirostat_mode=mirostat_mode,
                mirostat_tau=mirostat_tau,
                mirostat_eta=mirostat_eta,
            )
            processor = as_logits_processor(logits_processor)
            if processor is not None:
                import numpy as np

                from llamarcp.token_picker import apply_logits_processor, logits_view

                logits = logits_view(engine.ctx.ptr, int(self.n_vocab), row)  # type: ignore[attr-defined]
                apply_logits_processor(np, processor, np.asarray(self._history, dtype=np.intc), logits)
            chain = build_sampler_chain(self._model, params, history=self._history)
            try:
                return chain.sample(engine.ctx.ptr, row)
            finally:
                chain.close()

    # -- caches, tokenizer ----------------------------------------------------------------------------------

    def set_cache(self, cache: Any) -> None:
        """Use `cache` (a `LlamaRAMCache` / `LlamaDiskCache`, or None to stop) for prompt-prefix reuse."""
        from llamarcp.compat.cache import BaseLlamaCache

        if cache is not None and not isinstance(cache, BaseLlamaCache):
            raise TypeError(f"set_cache expects a BaseLlamaCache or None, got {type(cache).__name__}")
        self.cache = cache

    @property
    def tokenizer_(self) -> Any:
        """The `tokenizer=` given to the constructor, else the model's own vocab (llama-cpp-python's default)."""
        given = self.__dict__.get("_tokenizer_given")
        if given is not None:
            return given
        from llamarcp.compat.tokenizer import LlamaTokenizer

        return LlamaTokenizer(self)

    @tokenizer_.setter
    def tokenizer_(self, tokenizer: Any) -> None:
        self.__dict__["_tokenizer_given"] = tokenizer

    # -- OpenAI client types --------------------------------------------------------------------------------

    def create_chat_completion_openai_v1(self, *args: Any, **kwargs: Any) -> Any:
        """`create_chat_completion` returning the `openai` package's `ChatCompletion` (or its chunks)."""
        try:
            from openai.types.chat import ChatCompletion, ChatCompletionChunk
        except ImportError as exc:
            raise ImportError("create_chat_completion_openai_v1 needs the openai package (pip install openai)") from exc
        result = self.create_chat_completion(*args, **kwargs)  # type: ignore[attr-defined]
        if kwargs.get("stream", False):
            return (ChatCompletionChunk(**chunk) for chunk in result)
        return ChatCompletion(**result)

    # -- pickling: a pickled Llama is its constructor arguments ---------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        args = getattr(self, "_init_args", None)
        if args is None:
            raise TypeError("this Llama cannot be pickled: its constructor arguments were not recorded")
        state = dict(args)
        state["seed"] = int(self._seed)  # type: ignore[attr-defined]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    # -- Hugging Face Hub -----------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        filename: str | None,
        additional_files: Sequence[str] | None = None,
        local_dir: str | os.PathLike[str] | None = None,
        local_dir_use_symlinks: Any = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Download `filename` (a name or glob, e.g. `"*Q4_K_M.gguf"`) from the Hub repo `repo_id` (cached by
        `huggingface_hub`; works offline from the cache with `HF_HUB_OFFLINE=1`) and load it; `kwargs` go to
        the constructor. `additional_files` are further names/globs (other shards of a split GGUF)."""
        try:
            import huggingface_hub as hub
        except ImportError as exc:
            raise ImportError("Llama.from_pretrained needs huggingface_hub (pip install 'llamarcp[compat]')") from exc
        if not filename:
            raise ValueError("from_pretrained needs a filename (or glob) of a GGUF file in the repo")
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(repo_id)
        files = _repo_files(hub, repo_id, local_dir, cache_dir)
        main = _one_match(repo_id, filename, files)
        wanted = [main, *(_one_match(repo_id, pattern, files) for pattern in additional_files or ())]
        paths = []
        for name in wanted:
            sub, _, base = name.rpartition("/")
            paths.append(
                hub.hf_hub_download(
                    repo_id=repo_id,
                    filename=base,
                    subfolder=sub or None,
                    local_dir=None if local_dir is None else Path(local_dir),
                    cache_dir=None if cache_dir is None else Path(cache_dir),
                )
            )
        # The first file of a split GGUF makes llama.cpp load the other shards from the same folder.
        return cls(model_path=str(paths[0]), **kwargs)  # type: ignore[call-arg]


def _repo_files(hub: Any, repo_id: str, local_dir: Any, cache_dir: Any) -> list[str]:
    """Paths of the repo's files: from the Hub, or (offline, or the Hub unreachable) from the local copy."""
    online_error: Exception | None = None
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        try:
            return [str(f) for f in hub.list_repo_files(repo_id)]
        except Exception as exc:  # network/HTTP errors differ across huggingface_hub versions; try the cache
            online_error = exc
    try:
        root = (
            Path(local_dir)
            if local_dir is not None
            else Path(hub.snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
        )
    except Exception as exc:
        reason = f" (the Hub said: {online_error})" if online_error else ""
        raise FileNotFoundError(f"{repo_id}: not reachable and not in the local Hugging Face cache{reason}") from exc
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts)


def _one_match(repo_id: str, pattern: str, files: list[str]) -> str:
    matches = [f for f in files if fnmatch.fnmatch(f, pattern)]
    if len(matches) != 1:
        how = "No file" if not matches else f"{len(matches)} files"
        raise ValueError(f"{how} in {repo_id} match {pattern!r}; files: {json.dumps(files)}")
    return matches[0]


class MinTokensLogitsProcessor:
    """Logits processor that forbids the end-of-sequence token until `min_tokens` tokens were generated."""

    def __init__(self, min_tokens: int, token_eos: int) -> None:
        self.min_tokens = int(min_tokens)
        self.token_eos = int(token_eos)
        self.prompt_tokens: int | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.prompt_tokens is None:
            self.prompt_tokens = len(input_ids)
        if len(input_ids) - self.prompt_tokens < self.min_tokens:
            scores[self.token_eos] = -float("inf")
        return scores
