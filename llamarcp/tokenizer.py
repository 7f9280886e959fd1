"""Tokenizer facade (llama-cpp-python's `LlamaTokenizer` shape) and the streaming text assembler.

`TextStream` is what keeps streamed output correct: token pieces are bytes, and one UTF-8 character may be
split across tokens, so pieces go through an incremental decoder that holds back an incomplete character;
stop strings are found across piece boundaries, and text that might be the start of a stop string is held
back until it is known not to be one.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llamarcp._core import Model

__all__ = ["LlamaTokenizer", "TextStream"]


class LlamaTokenizer:
    """Tokenize/detokenize with a Llama's vocab (what llama-cpp-python's `llama.tokenizer()` returns)."""

    def __init__(self, llama: Any) -> None:
        self._llama = llama

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return list(self._llama.tokenize(text, add_bos=add_bos, special=special))

    def detokenize(
        self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None, special: bool = False
    ) -> bytes:
        return bytes(self._llama.detokenize(tokens, prev_tokens=prev_tokens, special=special))

    def encode(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return self.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def decode(self, tokens: Sequence[int]) -> str:
        return self.detokenize(tokens).decode("utf-8", errors="replace")


class TextStream:
    """Bytes pieces in, safe-to-emit text out: whole UTF-8 characters only, and nothing past a stop string."""

    def __init__(self, stop: Iterable[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stop if s]
        self._pending = ""  # decoded, but may be the start of a stop string
        self._emitted: list[str] = []  # everything emitted so far (joined on demand: += would be quadratic)
        self.stopped = False  # a stop string was found; the rest of the generation is discarded
        self.stop_string: str | None = None

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return "".join(self._emitted)

    def push(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that can be emitted now (may be empty)."""
        if self.stopped:
            return ""
        return self._take(self._pending + self._decoder.decode(piece))

    def finish(self) -> str:
        """End of generation: flush what was held back (an unfinished character becomes U+FFFD)."""
        if self.stopped:
            return ""
        tail = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        out = self._cut_at_stop(tail)
        if out is None:
            out = tail
        self._emitted.append(out)
        return out

    def _cut_at_stop(self, buf: str) -> str | None:
        first = -1
        for stop in self._stops:
            at = buf.find(stop)
            if at != -1 and (first == -1 or at < first):
                first, self.stop_string = at, stop
        if first == -1:
            return None
        self.stopped = True
        return buf[:first]

    def _take(self, buf: str) -> str:
        if not self._stops:
            self._emitted.append(buf)
            return buf
        out = self._cut_at_stop(buf)
        if out is not None:
            self._pending = ""
            self._emitted.append(out)
            return out
        hold = _longest_stop_prefix_suffix(buf, self._stops)
        out = buf[: len(buf) - hold]
        self._pending = buf[len(buf) - hold :]
        self._emitted.append(out)
        return out


def detokenize(model: Model, tokens: Sequence[int], prev_tokens: Sequence[int] | None, special: bool) -> bytes:
    """Token ids -> bytes; with `prev_tokens`, only the bytes the new tokens add after them (streaming)."""
    if prev_tokens:
        prev = list(prev_tokens)
        full = _detokenize(model, prev + list(tokens), special)
        head = _detokenize(model, prev, special)
        return full[len(head) :] if full.startswith(head) else full
    return _detokenize(model, list(tokens), special)


def _detokenize(model: Model, tokens: list[int], special: bool) -> bytes:
    bos = model.token_bos()
    if tokens and tokens[0] == bos and bos >= 0:
        # A leading BOS is the tokenizer's own marker: drop it so the text has no artificial leading space.
        head = model.token_to_piece(bos, special=True) if special else b""
        return head + model.detokenize(tokens[1:], special=special)
    return model.detokenize(tokens, special=special)


def _longest_stop_prefix_suffix(buf: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `buf` that is the beginning of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(buf)), best, -1):
            if buf.endswith(stop[:n]):
                best = n
                break
    return best
