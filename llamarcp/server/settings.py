"""What the server serves: one `ModelConfig` per model, and `ServerSettings` for the whole server.

Both are llamarcp's own names; `llamarcp.server.compat` maps llama-cpp-python's command line, environment and
config file onto them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["DEFAULT_PARALLEL", "ModelConfig", "ServerSettings"]

#: Generations one model runs at once by default (`--parallel`). Four shared decode steps already win on a
#: 2-core machine (llama-server's own default is four slots too); each slot holds `n_ctx` tokens of KV.
DEFAULT_PARALLEL = 4


@dataclass
class ModelConfig:
    """One served model: the file, the name clients use, and how to load it."""

    #: GGUF path; None = the default gemma-3-270m of the `model` extra.
    model: str | None = None
    #: The id `/v1/models` reports and requests name (default: the file name).
    alias: str | None = None
    #: Tokens per sequence: each of the `n_parallel` slots holds up to this many (the KV cache is n_parallel x n_ctx).
    n_ctx: int = 2048
    n_batch: int = 512
    #: Generations decoded together in shared steps (continuous batching); 1 = one at a time.
    n_parallel: int = DEFAULT_PARALLEL
    n_threads: int | None = None
    n_gpu_layers: int = 0
    #: "host:port,..." of ggml-rpc-server workers for this model (its embeddings context stays local).
    rpc_servers: str | None = None
    seed: int | None = None
    chat_format: str | None = None
    #: Jinja chat template source used instead of the model's own (like llama-server's --chat-template-file).
    chat_template: str | None = None
    #: Extra chat template variables for every request (a request's chat_template_kwargs win).
    chat_template_kwargs: dict[str, Any] | None = None
    #: Serve /v1/embeddings for this model.
    embeddings: bool = True
    #: Further `Llama()` keywords (n_ubatch, flash_attn, type_k, use_mmap, embedding, lora_path, ...).
    llama_kwargs: dict[str, Any] = field(default_factory=dict)
    verbose: bool = False
    #: Multimodal projector GGUF (`--mmproj`, llama-cpp-python's `clip_model_path`): image_url parts accepted.
    mmproj: str | None = None
    #: A multimodal `chat_format` of llama-cpp-python ("llava-1-5", ...): served by its chat handler.
    vision_format: str | None = None

    def __post_init__(self) -> None:
        from llamarcp.compat.vision_handlers import VISION_CHAT_FORMATS

        if self.chat_format in VISION_CHAT_FORMATS:  # a handler, not a template llamarcp renders
            self.vision_format, self.chat_format = self.chat_format, None

    def llama_arguments(self) -> dict[str, Any]:
        """Keyword arguments for `Llama(self.model, **...)`."""
        kwargs: dict[str, Any] = {
            "n_ctx": self.n_ctx,
            "n_batch": self.n_batch,
            "n_parallel": self.n_parallel,
            "n_threads": self.n_threads,
            "n_gpu_layers": self.n_gpu_layers,
            "chat_format": self.chat_format,
            "verbose": self.verbose,
            **self.llama_kwargs,
        }
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if self.mmproj is not None:
            from llamarcp.compat.vision_handlers import VISION_CHAT_FORMATS

            kwargs["mmproj"] = self.mmproj
            if self.vision_format is not None:
                kwargs["chat_handler"] = VISION_CHAT_FORMATS[self.vision_format](self.mmproj, verbose=self.verbose)
        return kwargs


@dataclass
class ServerSettings:
    """Everything `python -m llamarcp.server` can set besides the HTTP listener (host, port, TLS).

    The single-model fields (`model` ... `verbose`) describe the one served model unless `models` lists several
    (a config file); then those fields are unused.
    """

    model: str | None = None
    model_alias: str | None = None
    api_key: str | None = None
    #: Per sequence (see ModelConfig.n_ctx).
    n_ctx: int = 2048
    n_batch: int = 512
    n_parallel: int = DEFAULT_PARALLEL
    n_threads: int | None = None
    n_gpu_layers: int = 0
    rpc_servers: str | None = None
    seed: int | None = None
    chat_format: str | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    #: Requests running or waiting per model before new ones get 503 (at most n_parallel of them run).
    max_queue: int = 16
    embeddings: bool = True
    llama_kwargs: dict[str, Any] = field(default_factory=dict)
    verbose: bool = False
    mmproj: str | None = None
    #: Several models (from a config file); the first is the default and is loaded at startup.
    models: list[ModelConfig] | None = None
    #: At most this many models are loaded at once; loading another evicts the least recently used idle one.
    max_loaded_models: int = 1
    #: Answer 404 to a model name the server does not know (default: serve the default model under any name).
    strict_model_names: bool = False
    #: A streamed generation ends (with [DONE]) as soon as another request waits for the same model.
    interrupt_requests: bool = False
    #: No SSE keep-alive comments in streams (some clients choke on them).
    disable_ping_events: bool = False
    #: ASGI root path, when a reverse proxy serves the API under a prefix (given to uvicorn by the CLI).
    root_path: str = ""
    #: The most tokens one request generates (max_tokens null or larger is cut to it); None = the context size.
    n_predict: int | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    #: Seconds a client may take to send a whole request body (slow uploads get 408).
    body_timeout: float = 30.0

    def model_configs(self) -> list[ModelConfig]:
        """The served models, the default first."""
        if self.models:
            return [replace(m) for m in self.models]
        return [
            ModelConfig(
                model=self.model,
                alias=self.model_alias,
                n_ctx=self.n_ctx,
                n_batch=self.n_batch,
                n_parallel=self.n_parallel,
                n_threads=self.n_threads,
                n_gpu_layers=self.n_gpu_layers,
                rpc_servers=self.rpc_servers,
                seed=self.seed,
                chat_format=self.chat_format,
                chat_template=self.chat_template,
                chat_template_kwargs=self.chat_template_kwargs,
                embeddings=self.embeddings,
                llama_kwargs=dict(self.llama_kwargs),
                verbose=self.verbose,
                mmproj=self.mmproj,
            )
        ]

    def validate(self) -> None:
        """ValueError for settings the server cannot run with."""
        if self.max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if self.max_loaded_models < 1:
            raise ValueError("max_loaded_models must be at least 1")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        if self.n_predict is not None and self.n_predict < 1:
            raise ValueError("n_predict must be at least 1 (or unset: the context size)")
        from llamarcp.llama import MAX_PARALLEL

        aliases: dict[str, int] = {}
        for i, config in enumerate(self.model_configs()):
            if isinstance(config.n_parallel, bool) or not 1 <= config.n_parallel <= MAX_PARALLEL:
                raise ValueError(f"n_parallel (--parallel) must be in 1..{MAX_PARALLEL}, got {config.n_parallel!r}")
            if config.vision_format is not None and config.mmproj is None:
                raise ValueError(f"chat_format {config.vision_format!r} needs a projector: --mmproj / clip_model_path")
            name = config.alias or config.model or ""
            if name in aliases:
                raise ValueError(f"models {aliases[name]} and {i} share the alias {name!r}; give each a model_alias")
            aliases[name] = i
