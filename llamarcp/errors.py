"""Every exception llamarcp raises; C return codes are translated to these in one place.

High-level modules add their subclasses here too, so `except llamarcp.LlamaError` catches all.
"""

from __future__ import annotations


class LlamaError(Exception):
    """Base class of every llamarcp error."""


class LibraryNotFoundError(LlamaError, OSError):
    """No libllama could be found or loaded; the message names every place looked at."""


class LibraryLoadError(LlamaError, OSError):
    """A libllama was found but the system loader could not load it; the message quotes the loader's reason."""

    library: str | None = None


class LibraryMismatchError(LlamaError, ImportError):
    """The loaded libllama does not match the API llamarcp was generated from."""

    #: Filled by llamarcp._guard: the library path, functions it lacks, and the commits involved.
    library: str | None = None
    missing: tuple[str, ...] = ()
    expected_commit: str | None = None
    found_commit: str | None = None


class MissingSymbolError(LlamaError, AttributeError):
    """A function declared by the pinned llama.h is not exported by the loaded library."""

    def __init__(self, symbol: str, library: str, hint: str = "", header: str = "llama.h") -> None:
        self.symbol = symbol
        self.library = library
        message = f"{symbol} is declared by {header} but not exported by {library}"
        super().__init__(f"{message}; {hint}" if hint else message)


class DriftError(LlamaError):
    """A drift-checker input is unusable: unreadable library or manifest, unparsable header."""


# --- high-level API errors (llamarcp.llama, llamarcp.models, ...) -------------------------------------------------


class ClosedError(LlamaError, ValueError):
    """An object was used after `close()` (its C pointer is gone)."""


class ModelNotFoundError(LlamaError, FileNotFoundError):
    """A model path that does not exist, or the default model whose package is not installed."""


class ModelLoadError(LlamaError, ValueError):
    """llama.cpp could not load a model file: not GGUF, truncated, unsupported architecture, ..."""


class DraftModelError(LlamaError, ValueError):
    """A draft model that cannot serve a target: its vocab differs, or it already serves another Llama."""


class LoraAdapterError(ModelLoadError):
    """A LoRA adapter could not be loaded for this model, or llama.cpp refused to apply it."""


class ContextCreationError(LlamaError, RuntimeError):
    """llama_init_from_model returned NULL (out of memory, invalid parameters)."""


class ContextFullError(LlamaError, RuntimeError):
    """The context (KV cache) has no room for more tokens; raise `n_ctx` or shorten the input."""


class PromptTooLongError(ContextFullError, ValueError):
    """The prompt alone needs more tokens than the context holds."""

    def __init__(self, n_prompt: int, n_ctx: int) -> None:
        self.n_prompt = n_prompt
        self.n_ctx = n_ctx
        super().__init__(f"prompt is {n_prompt} tokens but the context holds {n_ctx}; raise n_ctx or shorten it")


class DecodeError(LlamaError, RuntimeError):
    """llama_decode/llama_encode failed with a return code that is not 'context full' or 'aborted'."""

    def __init__(self, code: int, what: str = "llama_decode") -> None:
        self.code = code
        super().__init__(f"{what} failed with code {code}")


class GenerationAborted(LlamaError, RuntimeError):
    """llama_decode stopped because the abort callback asked it to (e.g. `Llama.abort()` from another thread)."""


class TokenizeError(LlamaError, ValueError):
    """Text could not be tokenized (invalid UTF-8, too long, ...)."""


class GrammarError(LlamaError, ValueError):
    """A GBNF grammar failed to parse (llama_sampler_init_grammar returned NULL)."""


class StateError(LlamaError, ValueError):
    """A state could not be saved (the path names no regular file, the disk refused) or restored into this
    context (other model, other size, corrupt); the message names the path and the reason."""


class StateFileNotFoundError(StateError, FileNotFoundError):
    """`load_state_file` was given a path where there is nothing."""


# --- the one place llama.cpp return codes become exceptions ------------------------------------------------------

#: llama_decode return codes with a meaning of their own (see llama.h); anything else is DecodeError.
DECODE_NO_KV_SLOT = 1
DECODE_ABORTED = 2


def check_decode(code: int, what: str = "llama_decode") -> None:
    """Raise the exception a llama_decode/llama_encode return code stands for; 0 returns quietly."""
    if code == 0:
        return
    if code == DECODE_NO_KV_SLOT:
        raise ContextFullError(f"{what}: no room left in the context (KV cache full); raise n_ctx")
    if code == DECODE_ABORTED:
        raise GenerationAborted(f"{what} was aborted")
    raise DecodeError(code, what)


class ChatTemplateError(LlamaError, ValueError):
    """A chat template failed to compile or render, or rejected the conversation (its `raise_exception`)."""


class ChatTemplateSecurityError(ChatTemplateError):
    """A chat template tried something the sandbox forbids (Python internals, huge allocations, ...)."""


class ChatMessageError(LlamaError, ValueError):
    """The chat messages (or tools) are not in the OpenAI shape the chat API accepts."""


class MediaError(ChatMessageError):
    """An image or audio input is malformed, truncated, too large or unsupported, or the model takes no such input."""


# --- backends and distributed inference (llamarcp.rpc) ------------------------------------------------------------


class BackendUnavailableError(LlamaError, RuntimeError):
    """The loaded llama.cpp was built without a backend that was asked for (RPC, CUDA, ...)."""


class RpcServerError(LlamaError, ConnectionError):
    """An RPC worker (`ggml-rpc-server`) cannot be used; `endpoint` is its host:port."""

    def __init__(self, endpoint: str, reason: str) -> None:
        self.endpoint = endpoint
        self.reason = reason
        super().__init__(f"RPC server {endpoint}: {reason}")


class RpcServerUnreachableError(RpcServerError):
    """Nothing answers at the endpoint: unknown host, connection refused, timeout, or busy with another client."""


class RpcServerInUseError(RpcServerError):
    """The worker already serves another open model of this process; each open model needs its own workers."""


class RpcProtocolError(RpcServerError):
    """The endpoint answered, but not as a ggml-rpc-server speaking this llama.cpp's RPC protocol."""
