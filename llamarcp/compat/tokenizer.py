"""Tokenizers (llama-cpp-python's `llama_tokenizer`): the model's own, or a Hugging Face one."""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from typing import Any

from llamarcp.tokenizer import LlamaTokenizer as _ModelTokenizer

__all__ = ["BaseLlamaTokenizer", "LlamaHFTokenizer", "LlamaTokenizer"]


class BaseLlamaTokenizer(abc.ABC):
    @abc.abstractmethod
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = True) -> list[int]:
        """UTF-8 bytes -> token ids."""

    @abc.abstractmethod
    def detokenize(
        self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None, special: bool = False
    ) -> bytes:
        """Token ids -> bytes; with `prev_tokens`, only the bytes `tokens` add after them."""


class LlamaTokenizer(_ModelTokenizer, BaseLlamaTokenizer):
    """The vocab of a loaded `Llama` (what `llama.tokenizer()` returns)."""

    @classmethod
    def from_ggml_file(cls, path: str | os.PathLike[str]) -> LlamaTokenizer:
        """Tokenizer of a GGUF file, loading only its vocab."""
        import llamarcp

        return cls(llamarcp.Llama(model_path=path, vocab_only=True))


class LlamaHFTokenizer(BaseLlamaTokenizer):
    """A `transformers` tokenizer behind the same interface (for models whose GGUF vocab is incomplete)."""

    def __init__(self, hf_tokenizer: Any) -> None:
        self.hf_tokenizer = hf_tokenizer

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = True) -> list[int]:
        return list(self.hf_tokenizer.encode(text.decode("utf-8", errors="ignore"), add_special_tokens=special))

    def detokenize(
        self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None, special: bool = False
    ) -> bytes:
        skip = not special
        if prev_tokens is None:
            return str(self.hf_tokenizer.decode(list(tokens), skip_special_tokens=skip)).encode("utf-8")
        full = str(self.hf_tokenizer.decode([*prev_tokens, *tokens], skip_special_tokens=skip)).encode("utf-8")
        head = str(self.hf_tokenizer.decode(list(prev_tokens), skip_special_tokens=skip)).encode("utf-8")
        return full[len(head) :] if full.startswith(head) else full

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str) -> LlamaHFTokenizer:
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise ImportError("LlamaHFTokenizer needs the transformers package (pip install transformers)") from exc
        return cls(AutoTokenizer.from_pretrained(pretrained_model_name_or_path))
