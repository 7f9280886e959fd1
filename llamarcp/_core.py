"""Thin owners of llama.cpp objects: Model, Context, Batch (each a `Managed`), plus vocab helpers.

Everything here is one C call deep: argument checks that keep bad input away from C (where a C++ exception
would abort the process), return codes turned into exceptions, and buffers reused so the per-token path does
not allocate.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import threading
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llamarcp._backend import capture_log, check_main_gpu, get_lib
from llamarcp._managed import Managed
from llamarcp.errors import (
    ContextCreationError,
    LoraAdapterError,
    ModelLoadError,
    ModelNotFoundError,
    TokenizeError,
)
from llamarcp.validate import check_context_params, check_gguf_hparams
from llamarcp.validate.params import set_fields

__all__ = ["Batch", "Context", "LoraAdapter", "Model", "ffi"]

from llamarcp import _adapt, _guard
from llamarcp._ffi import ffi

GGUF_MAGIC = b"GGUF"
#: llama.cpp's account of a context's KV (or recurrent) memory, one line per cache (two with sliding windows).
_KV_SIZE = re.compile(r"^llama_(?:kv_cache|memory_recurrent): size = +([0-9.]+) MiB")


def release_freed_memory() -> None:
    """Hand the heap memory freed so far back to the system (glibc's `malloc_trim(0)`; elsewhere nothing).

    glibc keeps what a closed model and its context freed in its arenas, fragmented among live blocks: each
    load/close cycle left ~0.8 MB of RSS behind (45 -> 280 MB over 300), which a server swapping models pays.
    Called once per freed model; it costs about 2 ms."""
    trim = _malloc_trim()
    if trim is not None:
        with contextlib.suppress(Exception):  # interpreter exit: ctypes may be half torn down
            trim(0)


@functools.cache
def _malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc only: musl and others lack it
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class Model(Managed):
    """A loaded `llama_model` and its vocab; tokenization lives here because it needs only the vocab."""

    kind = "model"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        vocab_only: bool = False,
        n_gpu_layers: int = 0,
        main_gpu: int = 0,
        split_mode: int | None = None,
        use_mmap: bool = True,
        use_mlock: bool = False,
        check_tensors: bool = False,
        use_extra_bufts: bool | None = None,
        devices: Any = None,
        tensor_split: Sequence[float] | None = None,
        kv_overrides: Mapping[str, bool | int | float | str] | None = None,
    ) -> None:
        lib = get_lib()
        self._lib = lib
        self.path = Path(path)
        check_main_gpu(main_gpu, has_devices=devices is not None)
        _check_gguf_file(self.path)
        check_gguf_hparams(self.path, vocab_only=vocab_only)
        params = lib.llama_model_default_params()
        # Offload devices (llamarcp.rpc.RpcDevices): its NULL-terminated array must outlive the model.
        self._devices = devices
        if devices is not None:
            params.devices = devices.array
        self._tensor_split = _tensor_split_array(lib, tensor_split)
        if self._tensor_split is not None:
            params.tensor_split = self._tensor_split
        self._kv_overrides = _kv_override_array(lib, kv_overrides)
        if self._kv_overrides is not None:
            params.kv_overrides = self._kv_overrides
        params.vocab_only = bool(vocab_only)
        fields = {"n_gpu_layers": n_gpu_layers, "main_gpu": main_gpu, "split_mode": split_mode}
        set_fields(params, "struct llama_model_params", fields)  # each checked against its C type first
        _adapt.set_load_mode(lib, params, use_mmap, use_mlock)
        params.check_tensors = bool(check_tensors)
        if use_extra_bufts is None:
            from llamarcp._cpu import default_use_extra_bufts

            use_extra_bufts = default_use_extra_bufts(lib, ffi)
        params.use_extra_bufts = bool(use_extra_bufts)
        with capture_log() as log:
            ptr = lib.llama_model_load_from_file(os.fsencode(self.path), params)
        if ptr == ffi.NULL:
            raise ModelLoadError(f"llama.cpp could not load {self.path}{log.reason()}")
        super().__init__(ptr)
        if devices is not None:
            devices.claim()  # its RPC servers now serve this model (llamarcp.rpc refuses to share them)
        self.vocab_only = bool(vocab_only)
        self.vocab = lib.llama_model_get_vocab(ptr)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}
        self._piece_buf = ffi.new("char[]", 256)
        self._piece_lock = threading.Lock()  # the piece buffer is shared; tokenizing is allowed from many threads

    def _free(self, ptr: Any) -> None:
        self._lib.llama_model_free(ptr)
        if self._devices is not None:
            self._devices.release()
        release_freed_memory()

    # -- vocab ------------------------------------------------------------------------------------------------

    def token_bos(self) -> int:
        return int(self._lib.llama_vocab_bos(self.vocab))

    def token_eos(self) -> int:
        return int(self._lib.llama_vocab_eos(self.vocab))

    def token_eot(self) -> int:
        return int(self._lib.llama_vocab_eot(self.vocab))

    def token_nl(self) -> int:
        return int(self._lib.llama_vocab_nl(self.vocab))

    def add_bos(self) -> bool:
        return bool(self._lib.llama_vocab_get_add_bos(self.vocab))

    def add_eos(self) -> bool:
        return bool(self._lib.llama_vocab_get_add_eos(self.vocab))

    def is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.vocab, token))

    def check_tokens(self, tokens: Sequence[int]) -> None:
        """Refuse ids outside the vocab before they reach C (where they would be an out-of-range read)."""
        n_vocab = self.n_vocab
        for token in tokens:
            if not 0 <= token < n_vocab:
                raise TokenizeError(f"token id {token} is outside the vocab (0..{n_vocab - 1})")

    def tokenize(self, text: bytes | str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """UTF-8 bytes -> token ids. Invalid UTF-8 raises TokenizeError (llama.cpp would abort on it)."""
        self._check_open()
        if isinstance(text, str):
            text = _encode(text)
        elif isinstance(text, (bytes, bytearray, memoryview)):
            text = bytes(text)
            try:
                text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TokenizeError(f"text is not valid UTF-8: {exc}") from exc
        else:
            raise TypeError(f"text must be bytes or str, not {type(text).__name__}")
        if len(text) >= 2**31 - 8:
            raise TokenizeError("text too long to tokenize (2 GiB limit of llama_tokenize)")
        lib = self._lib
        capacity = len(text) + 8
        buf = ffi.new("int32_t[]", capacity)  # per call: other threads may tokenize at the same time
        n = lib.llama_tokenize(self.vocab, text, len(text), buf, len(buf), add_special, parse_special)
        if n < 0:
            if n == -(2**31):
                raise TokenizeError("tokenization result does not fit in int32")
            buf = ffi.new("int32_t[]", -n)
            n = lib.llama_tokenize(self.vocab, text, len(text), buf, len(buf), add_special, parse_special)
            if n < 0:
                raise TokenizeError(f"llama_tokenize failed ({n})")
        return list(ffi.unpack(buf, n))

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (cached: the generation loop calls this per token)."""
        cache = self._special_pieces if special else self._pieces
        piece = cache.get(token)
        if piece is not None:
            return piece
        self._check_open()
        if not 0 <= token < self.n_vocab:
            raise TokenizeError(f"token id {token} is outside the vocab (0..{self.n_vocab - 1})")
        lib = self._lib
        with self._piece_lock:
            n = lib.llama_token_to_piece(self.vocab, token, self._piece_buf, len(self._piece_buf), 0, special)
            if n < 0:
                self._piece_buf = ffi.new("char[]", -n + 16)
                n = lib.llama_token_to_piece(self.vocab, token, self._piece_buf, len(self._piece_buf), 0, special)
            piece = ffi.buffer(self._piece_buf, n)[:] if n > 0 else b""
        cache[token] = piece
        return piece

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        """Token ids -> bytes, with llama.cpp's rules for the leading space and space clean-up."""
        self._check_open()
        tokens = list(tokens)
        if not tokens:
            return b""
        self.check_tokens(tokens)
        lib = self._lib
        arr = ffi.new("int32_t[]", tokens)
        size = max(64, 8 * len(tokens))
        out = ffi.new("char[]", size)
        n = lib.llama_detokenize(self.vocab, arr, len(tokens), out, size, False, special)
        if n < 0:
            size = -n
            out = ffi.new("char[]", size)
            n = lib.llama_detokenize(self.vocab, arr, len(tokens), out, size, False, special)
        return ffi.buffer(out, n)[:] if n > 0 else b""

    # -- model facts ------------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        """GGUF key/value pairs (scalar values as strings; arrays are not exposed by llama.cpp)."""
        self._check_open()
        lib, ptr = self._lib, self.ptr
        result: dict[str, str] = {}
        buf_size = 1024
        buf = ffi.new("char[]", buf_size)
        for i in range(int(lib.llama_model_meta_count(ptr))):
            n = lib.llama_model_meta_key_by_index(ptr, i, buf, buf_size)
            if n < 0:
                continue
            if n >= buf_size:
                buf_size = n + 1
                buf = ffi.new("char[]", buf_size)
                lib.llama_model_meta_key_by_index(ptr, i, buf, buf_size)
            key = ffi.string(buf).decode("utf-8", errors="replace")
            n = lib.llama_model_meta_val_str_by_index(ptr, i, buf, buf_size)
            if n < 0:
                continue
            if n >= buf_size:
                buf_size = n + 1
                buf = ffi.new("char[]", buf_size)
                lib.llama_model_meta_val_str_by_index(ptr, i, buf, buf_size)
            result[key] = ffi.string(buf).decode("utf-8", errors="replace")
        return result

    def chat_template(self, name: str | None = None) -> str | None:
        self._check_open()
        raw = self._lib.llama_model_chat_template(self.ptr, name.encode() if name else ffi.NULL)
        return None if raw == ffi.NULL else ffi.string(raw).decode("utf-8", errors="replace")

    def description(self) -> str:
        buf = ffi.new("char[]", 256)
        n = self._lib.llama_model_desc(self.ptr, buf, 256)
        return ffi.string(buf).decode("utf-8", errors="replace") if n >= 0 else ""

    def n_ctx_train(self) -> int:
        return int(self._lib.llama_model_n_ctx_train(self.ptr))

    def n_embd(self) -> int:
        return int(self._lib.llama_model_n_embd(self.ptr))

    def n_swa(self) -> int:
        return int(self._lib.llama_model_n_swa(self.ptr))

    def has_encoder(self) -> bool:
        return bool(self._lib.llama_model_has_encoder(self.ptr))

    def has_decoder(self) -> bool:
        return bool(self._lib.llama_model_has_decoder(self.ptr))

    def size(self) -> int:
        return int(self._lib.llama_model_size(self.ptr))

    def n_params(self) -> int:
        return int(self._lib.llama_model_n_params(self.ptr))


class Context(Managed):
    """A `llama_context` of a Model (the model stays alive and open while the context exists)."""

    kind = "context"

    def __init__(self, model: Model, params: Any) -> None:
        lib = model._lib
        self._lib = lib
        check_context_params(params)
        with capture_log() as log, capture_log(all_levels=True) as full_log:
            ptr = lib.llama_init_from_model(model.ptr, params)
        if ptr == ffi.NULL:
            raise ContextCreationError(f"llama_init_from_model failed{log.reason()}")
        #: The KV cache's size in MiB as llama.cpp reports it (its only account of it; 0.0 without KV memory).
        self.kv_cache_mib = sum(float(m) for line in full_log.lines for m in _KV_SIZE.findall(line))
        super().__init__(ptr, parent=model)
        self.model = model
        try:  # the first context of the process: the by-value results that need one are probed before use
            _guard.probe_live("struct llama_context *", ptr, lib)
        except BaseException:
            self.close()
            raise
        self.memory = lib.llama_get_memory(ptr)

    def _free(self, ptr: Any) -> None:
        self._lib.llama_free(ptr)

    def n_ctx(self) -> int:
        return int(self._lib.llama_n_ctx(self.ptr))

    def n_batch(self) -> int:
        return int(self._lib.llama_n_batch(self.ptr))

    def n_ubatch(self) -> int:
        return int(self._lib.llama_n_ubatch(self.ptr))

    def n_seq_max(self) -> int:
        return int(self._lib.llama_n_seq_max(self.ptr))

    def pooling_type(self) -> int:
        return int(self._lib.llama_pooling_type(self.ptr))


class LoraAdapter(Managed):
    """A LoRA adapter GGUF loaded for a Model (freed before the model, as llama.cpp requires)."""

    kind = "LoRA adapter"

    def __init__(self, model: Model, path: str | os.PathLike[str]) -> None:
        lib = model._lib
        self._lib = lib
        self.path = Path(path)
        _check_gguf_file(self.path)
        with capture_log() as log:
            ptr = lib.llama_adapter_lora_init(model.ptr, os.fsencode(self.path))
        if ptr == ffi.NULL:
            raise LoraAdapterError(f"llama.cpp could not load the LoRA adapter {self.path}{log.reason()}")
        super().__init__(ptr, parent=model)

    def _free(self, ptr: Any) -> None:
        self._lib.llama_adapter_lora_free(ptr)


class Batch(Managed):
    """A `llama_batch` from llama_batch_init, allocated once and refilled for every decode."""

    kind = "batch"

    def __init__(self, n_tokens: int, n_seq_max: int = 1, *, parent: Managed | None = None) -> None:
        lib = get_lib()
        self._lib = lib
        if n_tokens <= 0 or n_seq_max <= 0:
            raise ValueError("a batch needs n_tokens > 0 and n_seq_max > 0")
        batch = lib.llama_batch_init(n_tokens, 0, n_seq_max)
        if batch.token == ffi.NULL:
            raise MemoryError("llama_batch_init failed")
        super().__init__(batch, parent=parent)
        self.capacity = n_tokens
        self.n_seq_max = n_seq_max
        self._n_seq_one = array("i", [1]) * n_tokens

    def _free(self, ptr: Any) -> None:
        self._lib.llama_batch_free(ptr)

    def fill(
        self, tokens: Sequence[int], pos0: int, seq_id: int = 0, logits_last: bool = True, logits_all: bool = False
    ) -> Any:
        """Put `tokens` of one sequence at positions pos0.. into the batch; only the last one outputs logits
        (every one with `logits_all`)."""
        batch = self.ptr
        n = len(tokens)
        if n > self.capacity:
            raise ValueError(f"{n} tokens do not fit a batch of {self.capacity}")
        ffi.memmove(batch.token, array("i", tokens), 4 * n)
        ffi.memmove(batch.pos, array("i", range(pos0, pos0 + n)), 4 * n)
        ffi.memmove(batch.n_seq_id, self._n_seq_one, 4 * n)
        seq = batch.seq_id
        for i in range(n):
            seq[i][0] = seq_id
        flags = bytearray(b"\x01" * n if logits_all else n)
        if logits_last and n:
            flags[-1] = 1
        ffi.memmove(batch.logits, bytes(flags), n)
        batch.n_tokens = n
        return batch

    def fill_entries(self, entries: Sequence[tuple[int, int, int, bool]]) -> Any:
        """Tokens of several sequences in one batch: (token, position, seq_id, wants logits) each."""
        batch = self.ptr
        n = len(entries)
        if n > self.capacity:
            raise ValueError(f"{n} tokens do not fit a batch of {self.capacity}")
        tokens, positions, seq_ids, flags = zip(*entries) if entries else ((), (), (), ())
        ffi.memmove(batch.token, array("i", tokens), 4 * n)
        ffi.memmove(batch.pos, array("i", positions), 4 * n)
        ffi.memmove(batch.n_seq_id, self._n_seq_one, 4 * n)
        seq = batch.seq_id
        for i, seq_id in enumerate(seq_ids):
            seq[i][0] = seq_id
        ffi.memmove(batch.logits, bytes(bytearray(flags)), n)
        batch.n_tokens = n
        return batch

    def fill_sequences(self, sequences: Sequence[Sequence[int]], output_all: bool = True) -> Any:
        """Several sequences (seq ids 0..k-1), each from position 0; every token outputs (for embeddings)."""
        batch = self.ptr
        total = sum(len(s) for s in sequences)
        if total > self.capacity or len(sequences) > self.n_seq_max:
            raise ValueError("sequences do not fit the batch")
        i = 0
        for seq_id, tokens in enumerate(sequences):
            for pos, token in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq_id
                batch.logits[i] = 1 if output_all or pos == len(tokens) - 1 else 0
                i += 1
        batch.n_tokens = total
        return batch


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TokenizeError(f"text cannot be encoded as UTF-8 (lone surrogate?): {exc}") from exc


def _tensor_split_array(lib: Any, tensor_split: Sequence[float] | None) -> Any:
    """`tensor_split` -> the float[llama_max_devices()] llama.cpp reads (share of the layers per device), or None."""
    if tensor_split is None:
        return None
    values = [float(v) for v in tensor_split]
    n_max = int(lib.llama_max_devices())
    if len(values) > n_max:
        raise ValueError(f"tensor_split has {len(values)} entries; this llama.cpp supports at most {n_max} devices")
    if any(not v >= 0 or v == float("inf") for v in values):  # `not v >= 0` also catches NaN
        raise ValueError(f"tensor_split entries must be finite and >= 0, got {list(tensor_split)}")
    return ffi.new("float[]", values + [0.0] * (n_max - len(values)))  # all zeros: split by free memory


def _kv_override_array(lib: Any, overrides: Mapping[str, bool | int | float | str] | None) -> Any:
    """GGUF metadata overrides -> the key-terminated `llama_model_kv_override[]` llama.cpp reads, or None."""
    if not overrides:
        return None
    array = ffi.new("struct llama_model_kv_override[]", len(overrides) + 1)  # zeroed: the last one ends the list
    for item, (key, value) in zip(array, overrides.items()):
        raw_key = _encode(key) if isinstance(key, str) else b""
        if not raw_key or len(raw_key) >= 128 or b"\x00" in raw_key:
            raise ValueError(f"kv_overrides key must be a non-empty string under 128 bytes, got {key!r}")
        item.key = raw_key
        if isinstance(value, bool):
            item.tag, item.val_bool = lib.LLAMA_KV_OVERRIDE_TYPE_BOOL, value
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise ValueError(f"kv_overrides[{key!r}] does not fit int64")
            item.tag, item.val_i64 = lib.LLAMA_KV_OVERRIDE_TYPE_INT, value
        elif isinstance(value, float):
            item.tag, item.val_f64 = lib.LLAMA_KV_OVERRIDE_TYPE_FLOAT, value
        elif isinstance(value, str):
            raw = _encode(value)
            if len(raw) >= 128 or b"\x00" in raw:
                raise ValueError(f"kv_overrides[{key!r}]: strings must be under 128 bytes without NUL")
            item.tag, item.val_str = lib.LLAMA_KV_OVERRIDE_TYPE_STR, raw
        else:
            raise TypeError(f"kv_overrides[{key!r}] must be bool, int, float or str, not {type(value).__name__}")
    return array


def _check_gguf_file(path: Path) -> None:
    """Catch the common mistakes before llama.cpp sees the file: missing, a directory, not GGUF."""
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"model path is not a file: {path}")
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc}") from exc
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
