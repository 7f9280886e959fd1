"""Images (and audio) into a prompt through libmtmd: the projector, its C objects, and media prompts.

`Projector` owns the `mtmd_context` of an mmproj loaded for a model (checked first by `validate.mmproj`), and
the only `mtmd_*_free` calls of the package sit in the `Managed` owners below. `Projector.prompt(text, media)`
turns text holding one marker per medium into a `MediaPrompt`: a list of ids in which every text token is
itself and every image position is a negative placeholder derived from the image's SHA-256, so the engine's
and the scheduler's prefix reuse (which compare ids) reuse an image's KV exactly when the same image sits at
the same place, and nothing else changes for them. `evaluate` decodes the part after a reused prefix into one
sequence: text chunks as tokens, image chunks as embeddings (encoded once per image: an LRU of embeddings keyed
by the image hash serves a follow-up turn whose prefix differs).

Media bytes come from `llamarcp.multimodal_input` (data URIs, local files, http(s) with a size and a time
limit), checked by `validate.media` before libmtmd decodes them (and again here, for bytes given directly).
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamarcp import _adapt
from llamarcp._backend import capture_log, get_lib
from llamarcp._core import Model
from llamarcp._ffi import ffi
from llamarcp._managed import Managed
from llamarcp.errors import DecodeError, MediaError, ModelLoadError, PromptTooLongError, check_decode
from llamarcp.multimodal_input import MEDIA_FETCH_TIMEOUT_S, Media, has_media, load_media, split_media_messages
from llamarcp.validate.media import check_audio, check_image
from llamarcp.validate.mmproj import ProjectorInfo, check_mmproj

if TYPE_CHECKING:
    from llamarcp.engine import Engine

__all__ = [
    "MAX_CACHED_EMBEDDING_BYTES",
    "MEDIA_FETCH_TIMEOUT_S",
    "Media",
    "MediaMixin",
    "MediaPrompt",
    "Projector",
    "has_media",
    "input_modalities",
    "load_media",
    "split_media_messages",
]

#: Bytes of image/audio embeddings a projector keeps for reuse (least recently used dropped first).
MAX_CACHED_EMBEDDING_BYTES = 128 * 1024 * 1024

_CHUNK_TEXT: int = ffi.integer_const("MTMD_INPUT_CHUNK_TYPE_TEXT")


# -- owners of the C objects ---------------------------------------------------------------------------------------


class _MtmdContext(Managed):
    kind = "mtmd context"

    def _free(self, ptr: Any) -> None:
        get_lib().mtmd_free(ptr)


class _Bitmap(Managed):
    kind = "mtmd bitmap"

    def _free(self, ptr: Any) -> None:
        get_lib().mtmd_bitmap_free(ptr)


class _Chunks(Managed):
    kind = "mtmd input chunks"

    def _free(self, ptr: Any) -> None:
        get_lib().mtmd_input_chunks_free(ptr)


def chat_tokenizer(llm: Any, messages: Sequence[Mapping[str, Any]], allow_files: bool) -> tuple[Any, Any]:
    """(messages, tokenize) for the chat path: without media parts, the messages and `llm.tokenize`; with them,
    the messages with markers and a tokenize that builds the MediaPrompt (MediaError for a text-only model)."""
    if not has_media(messages):
        return messages, llm.tokenize
    projector = Projector.require(getattr(llm, "projector", None))
    marked, media = split_media_messages(messages, projector.marker, allow_files=allow_files)

    def tokenize(text: bytes, add_bos: bool = True, special: bool = True) -> MediaPrompt:
        return llm.media_prompt(text.decode("utf-8"), media, add_bos=add_bos)  # type: ignore[no-any-return]

    return marked, tokenize


@functools.lru_cache(maxsize=64)
def input_modalities(mmproj: str | None) -> list[str]:
    """What a model with projector `mmproj` (None: text only) takes, from the projector's header."""
    if mmproj is None:
        return ["text"]
    try:
        info = check_mmproj(mmproj)
    except ModelLoadError:
        return ["text"]
    return ["text", *(["image"] if info.has_vision else []), *(["audio"] if info.has_audio else [])]


# -- the prompt ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Span:
    start: int  # first position
    n_pos: int  # positions it takes (n_tokens unless M-RoPE)
    n_tokens: int  # KV cells / embeddings it takes
    index: int  # chunk index
    kind: int
    digest: str  # the medium's hash ("" for text)


def _placeholder(digest: str, offset: int) -> int:
    """A negative id no vocab has: the same for the same image at the same offset within it."""
    return -1 - ((int(digest[:16], 16) + offset) & 0x7FFFFFFF)  # 2**31 negative int32 values


class MediaPrompt(list[int]):
    """Prompt ids (text tokens, and negative placeholders where media sit) plus the libmtmd chunks behind them.

    It travels wherever a token list does (text_completion, the engine, the scheduler), which recognise it by
    type; `list(prompt)` drops the media, so they keep the object itself.
    """

    def __init__(self, ids: list[int], projector: Projector, chunks: _Chunks, spans: list[_Span]) -> None:
        super().__init__(ids)
        self.projector = projector
        self.chunks = chunks
        self.spans = spans

    def text_tokens(self) -> list[int]:
        return [t for t in self if t >= 0]

    @property
    def n_media(self) -> int:
        return sum(1 for s in self.spans if s.kind != _CHUNK_TEXT)

    def safe_prefix(self, n: int) -> int:
        """The longest reusable prefix of at most `n` positions that does not end inside a medium."""
        for span in self.spans:
            if span.kind != _CHUNK_TEXT and span.start < n < span.start + span.n_pos:
                return span.start
        return n

    def decode_from(self, engine: Engine, start: int, seq_id: int = 0, end: int | None = None) -> int:
        """Decode positions `start`..`end` (default: all) of this prompt into `seq_id` (the memory holds the first
        `start` already); the prompt's last position outputs logits. Returns the positions decoded."""
        return self.projector.decode(engine, self, start, seq_id, len(self) if end is None else end)

    @property
    def tail_start(self) -> int:
        """Where the text after the last medium starts (the scheduler decodes it batched with other sequences)."""
        return self.spans[-1].start


_log_routed: list[bool] = []


def _route_mtmd_log(lib: Any) -> None:
    """libmtmd logs through its own callback: send it where llama.cpp's lines go (logging, capture_log)."""
    if not _log_routed:
        from llamarcp import _backend

        callback = _backend._state.get("log_callback")
        if callback is not None:
            lib.mtmd_helper_log_set(callback, ffi.NULL)
        _log_routed.append(True)


def evaluate(engine: Engine, prompt: MediaPrompt) -> int:
    """`Engine.eval` for a media prompt: sequence 0 ends up holding `prompt`, its longest cached prefix reused
    (never cut inside a medium). Returns the positions decoded."""
    engine.claim("single")
    if len(prompt) > engine.n_ctx:
        raise PromptTooLongError(len(prompt), engine.n_ctx)
    if engine.kept_logits is not None:
        raise MediaError("images cannot be combined with logits_all=True")
    n_common = 0
    for a, b in zip(engine.input_ids, prompt):
        if a != b:
            break
        n_common += 1
    n_common = prompt.safe_prefix(min(n_common, len(prompt) - 1))
    n_swa = engine.model.n_swa()
    if n_common > 0 and n_swa > 0:
        pos_min = int(get_lib().llama_memory_seq_pos_min(engine.memory, 0))
        if pos_min > max(0, n_common - n_swa):
            n_common = 0
    engine.truncate(n_common)
    try:
        n_done = prompt.decode_from(engine, n_common, 0)
    except BaseException:
        engine.truncate(n_common)  # drop whatever part of the rest reached the memory
        raise
    engine.input_ids[:] = list(prompt)
    engine.n_prompt_tokens_evaluated = n_done
    return n_done


# -- the projector -------------------------------------------------------------------------------------------------


class Projector:
    """An mmproj loaded for `model`: vision/audio encoder, marker, embedding cache; `close()` frees it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        model: Model,
        *,
        n_threads: int = 4,
        use_gpu: bool = True,
        flash_attn: bool | None = None,
        verbose: bool = False,
    ) -> None:
        self.path = str(path)
        self.info: ProjectorInfo = check_mmproj(path, int(get_lib().llama_model_n_embd_inp(model.ptr)))
        lib = get_lib()
        _route_mtmd_log(lib)
        params = lib.mtmd_context_params_default()
        params.use_gpu = bool(use_gpu)
        params.print_timings = bool(verbose)
        params.n_threads = max(1, int(n_threads))
        params.warmup = False
        if flash_attn is not None:
            params.flash_attn_type = (
                lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        with capture_log() as log:
            ptr = lib.mtmd_init_from_file(os.fsencode(self.path), model.ptr, params)
        if ptr == ffi.NULL:
            raise ModelLoadError(f"could not load projector {self.path}{log.reason()}")
        self._ctx = _MtmdContext(ptr, parent=model)  # freed before the model, never after
        self.model = model
        self.marker = ffi.string(lib.mtmd_default_marker()).decode()
        self.supports_vision = bool(lib.mtmd_support_vision(ptr))
        self.supports_audio = bool(lib.mtmd_support_audio(ptr))
        self.uses_mrope = bool(lib.mtmd_decode_use_mrope(ptr))
        self.n_embd_inp = int(lib.llama_model_n_embd_inp(model.ptr))
        self._lock = threading.Lock()  # encode + read of the output embeddings are one step
        self._embeddings: OrderedDict[str, Any] = OrderedDict()
        #: Media chunks encoded so far (a cache hit does not count): what tests and benchmarks read.
        self.n_encoded = 0

    @classmethod
    def attach(cls, llm: Any, path: str | os.PathLike[str], use_gpu: bool | None) -> Projector:
        """`llm`'s projector for `path`: the loaded one when it is the same file, else a new one (the old freed)."""
        current = llm._projector
        if current is not None and not current.closed:
            if current.path == str(path):
                return current  # type: ignore[no-any-return]
            current.close()
        return cls(
            path,
            llm._model,
            n_threads=llm.n_threads_batch,
            use_gpu=llm._init_args["n_gpu_layers"] != 0 if use_gpu is None else use_gpu,
            flash_attn=llm._init_args["flash_attn"],
            verbose=llm.verbose,
        )

    @staticmethod
    def require(projector: Projector | None) -> Projector:
        if projector is None:
            raise MediaError("this model takes no images or audio (text only): load it with an mmproj projector")
        return projector

    @property
    def modalities(self) -> list[str]:
        return ["text", *(["image"] if self.supports_vision else []), *(["audio"] if self.supports_audio else [])]

    def close(self) -> None:
        self._embeddings.clear()
        self._ctx.close()

    @property
    def closed(self) -> bool:
        return self._ctx.closed

    # -- tokenizing ----------------------------------------------------------------------------------------------

    def _bitmap(self, medium: Media, index: int) -> _Bitmap:
        lib = get_lib()
        if medium.kind == "image" and not self.supports_vision:
            raise MediaError(f"{self.path} has no vision encoder: this model takes no images")
        if medium.kind == "audio" and not self.supports_audio:
            raise MediaError(f"{self.path} has no audio encoder: this model takes no audio")
        if medium.kind == "image":
            check_image(medium.data, f"image {index}")
        else:
            check_audio(medium.data, f"audio {index}")
        buf = ffi.from_buffer(medium.data)
        with capture_log() as log:
            bitmap_ptr = _adapt.mtmd_bitmap_from_buf(lib, self._ctx.ptr, buf, len(medium.data))
        if bitmap_ptr == ffi.NULL:
            raise MediaError(f"{medium.kind} {index} could not be decoded{log.reason()}")
        bitmap = _Bitmap(bitmap_ptr)
        lib.mtmd_bitmap_set_id(bitmap.ptr, medium.digest.encode())
        return bitmap

    def prompt(self, text: str, media: Sequence[Media], *, add_special: bool = True) -> MediaPrompt:
        """Tokenize `text`, in which each medium of `media` sits where a `self.marker` is, in order."""
        count = text.count(self.marker)
        if count != len(media):
            raise MediaError(
                f"the prompt has {count} media markers ({self.marker}) but {len(media)} images/audio clips were given"
            )
        with self._lock:  # one libmtmd call at a time per projector (the scheduler may be encoding)
            return self._tokenize(text, media, add_special)

    def _tokenize(self, text: str, media: Sequence[Media], add_special: bool) -> MediaPrompt:
        lib = get_lib()
        bitmaps = [self._bitmap(m, i) for i, m in enumerate(media)]
        try:
            encoded = text.encode("utf-8")
            text_buf = ffi.new("char[]", encoded)
            inp = ffi.new("struct mtmd_input_text *")
            inp.text, inp.add_special, inp.parse_special = text_buf, add_special, True
            _adapt.set_mtmd_text_len(inp, len(encoded))
            array = ffi.new("struct mtmd_bitmap *[]", [b.ptr for b in bitmaps] or [ffi.NULL])
            chunks = _Chunks(lib.mtmd_input_chunks_init())
            with capture_log() as log:
                rc = int(lib.mtmd_tokenize(self._ctx.ptr, chunks.ptr, inp, array, len(bitmaps)))
            if rc != 0:
                chunks.close()
                raise MediaError(f"libmtmd could not tokenize the prompt with its media (error {rc}){log.reason()}")
        finally:
            for bitmap in bitmaps:
                bitmap.close()
        return self._as_prompt(chunks)

    def _as_prompt(self, chunks: _Chunks) -> MediaPrompt:
        lib = get_lib()
        ids: list[int] = []
        spans: list[_Span] = []
        n_tokens_out = ffi.new("size_t *")
        for index in range(int(lib.mtmd_input_chunks_size(chunks.ptr))):
            chunk = lib.mtmd_input_chunks_get(chunks.ptr, index)
            kind = int(lib.mtmd_input_chunk_get_type(chunk))
            if kind == _CHUNK_TEXT:
                tokens = lib.mtmd_input_chunk_get_tokens_text(chunk, n_tokens_out)
                n = int(n_tokens_out[0])
                spans.append(_Span(len(ids), n, n, index, kind, ""))
                ids.extend(tokens[0:n])
            else:
                digest = ffi.string(lib.mtmd_input_chunk_get_id(chunk)).decode() or "0" * 16
                n_pos = int(lib.mtmd_input_chunk_get_n_pos(chunk))
                n_tokens = int(lib.mtmd_input_chunk_get_n_tokens(chunk))
                spans.append(_Span(len(ids), n_pos, n_tokens, index, kind, digest))
                ids.extend(_placeholder(digest, k) for k in range(n_pos))
        if not ids or ids[-1] < 0:
            raise MediaError("a prompt must end with text after its last image or audio clip")
        return MediaPrompt(ids, self, chunks, spans)

    # -- decoding ------------------------------------------------------------------------------------------------

    def _embedding(self, chunk: Any, span: _Span) -> Any:
        """The chunk's embeddings (float*), from the cache or encoded now."""
        lib = get_lib()
        with self._lock:
            cached = self._embeddings.get(span.digest)
            if cached is not None and len(cached) == span.n_tokens * self.n_embd_inp:
                self._embeddings.move_to_end(span.digest)
                return cached
            with capture_log() as log:
                rc = int(lib.mtmd_encode_chunk(self._ctx.ptr, chunk))
            if rc != 0:
                raise MediaError(f"libmtmd could not encode the image/audio (error {rc}){log.reason()}")
            self.n_encoded += 1
            n = span.n_tokens * self.n_embd_inp
            embd = ffi.new("float[]", n)
            ffi.memmove(embd, lib.mtmd_get_output_embd(self._ctx.ptr), n * ffi.sizeof("float"))
            self._embeddings[span.digest] = embd
            cached_bytes = ffi.sizeof("float") * sum(len(e) for e in self._embeddings.values())
            while len(self._embeddings) > 1 and cached_bytes > MAX_CACHED_EMBEDDING_BYTES:  # the newest may stay
                _, dropped = self._embeddings.popitem(last=False)
                cached_bytes -= ffi.sizeof("float") * len(dropped)
            return embd

    def decode(self, engine: Engine, prompt: MediaPrompt, start: int, seq_id: int, stop: int) -> int:
        """See MediaPrompt.decode_from."""
        lib = get_lib()
        ctx = engine.ctx.ptr
        n_batch = engine.n_batch  # the context's own: libmtmd aborts on a larger one
        n_ubatch = int(engine.ctx.n_ubatch())
        decoded = 0
        for span in prompt.spans:
            end = min(span.start + span.n_pos, stop)
            if end <= start or span.start >= stop:
                continue
            chunk = lib.mtmd_input_chunks_get(prompt.chunks.ptr, span.index)
            if span.kind == _CHUNK_TEXT:
                first = max(start, span.start)
                tokens = prompt[first:end]
                last_span = end == len(prompt)
                for offset in range(0, len(tokens), n_batch):
                    part = tokens[offset : offset + n_batch]
                    is_last = last_span and offset + len(part) == len(tokens)
                    batch = engine.batch.fill(part, first + offset, seq_id, logits_last=is_last)
                    check_decode(engine.decode_abortable(batch), "llama_decode (prompt text)")
                decoded += len(tokens)
                continue
            if span.start < start:
                raise AssertionError("a reused prefix ends inside a medium")  # MediaPrompt.safe_prefix prevents it
            if _adapt.mtmd_non_causal(lib, self._ctx.ptr, chunk) and span.n_tokens > n_ubatch:
                raise MediaError(
                    f"an image of {span.n_tokens} tokens needs n_ubatch >= {span.n_tokens} (this context has "
                    f"{n_ubatch}): create the Llama with n_batch and n_ubatch of at least {span.n_tokens}"
                )
            embd = self._embedding(chunk, span)
            new_n_past = ffi.new("llama_pos *")
            engine.abort.exc = None
            engine._set_abort_callback(True)  # Llama.abort() and Ctrl-C stop the image's llama_decode calls too
            try:
                with capture_log() as log:
                    rc = _adapt.mtmd_decode_image_chunk(
                        lib, self._ctx.ptr, ctx, chunk, embd, span.start, seq_id, n_batch, new_n_past
                    )
            finally:
                engine._set_abort_callback(False)
            if rc != 0:
                if engine.abort.requested or engine.abort.exc is not None:
                    engine.raise_if_aborted("image decoding")
                raise DecodeError(rc, f"mtmd_helper_decode_image_chunk{log.reason()}")
            decoded += span.n_pos
        return decoded


class MediaMixin:
    """`Llama`'s image and audio methods (the facade keeps the projector; this module owns what it does)."""

    # The facade provides these; declared for type checkers.
    _projector: Projector | None
    _turns: Any

    @property
    def projector(self) -> Projector | None:
        """The multimodal projector (`mmproj=` / `load_projector`), or None for a text-only model."""
        return self._projector

    def load_projector(self, path: str | os.PathLike[str], *, use_gpu: bool | None = None) -> Projector:
        """Load an mmproj GGUF for this model (validated first); chat messages may then hold images."""
        with self._turns.exclusive():
            self._engine_or_raise()  # type: ignore[attr-defined]
            self._projector = Projector.attach(self, path, use_gpu)
            return self._projector

    def media_prompt(self, text: str, media: Sequence[Media], add_bos: bool = True) -> MediaPrompt:
        """`text` with one `projector.marker` per image/audio of `media`: a prompt `create_completion` takes."""
        with self._turns.using():
            return Projector.require(self._projector).prompt(text, media, add_special=add_bos)
