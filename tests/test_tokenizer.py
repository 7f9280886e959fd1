"""Tokenizer: llama.cpp's own vectors for every vocab file, vocab-only loads, round-trip fuzzing, bad input."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from llamarcp import Llama
from llamarcp.errors import TokenizeError
from llamarcp.tokenizer import LlamaTokenizer, TextStream

SEPARATOR = "\n__ggml_vocab_test__\n"


def _source_models() -> Path:
    import sys

    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import build_lib

    return Path(build_lib.ensure_source()) / "models"


MODELS = _source_models()
VOCABS = sorted(p.name for p in MODELS.glob("ggml-vocab-*.gguf"))
VOCABS_WITH_VECTORS = [name for name in VOCABS if (MODELS / f"{name}.inp").exists()]


def read_vectors(vocab: str) -> list[tuple[str, list[int]]]:
    """Parse `.inp`/`.out` the way llama.cpp's test-tokenizer-0 does: cases split by the separator line,
    one line of space-separated ids per case; a separator at the very end opens no new case."""
    raw = (MODELS / f"{vocab}.inp").read_bytes().decode("utf-8")
    cases: list[str] = []
    pos = 0
    while pos < len(raw):
        nxt = raw.find(SEPARATOR, pos)
        if nxt == -1:
            cases.append(raw[pos:])
            break
        cases.append(raw[pos:nxt])
        pos = nxt + len(SEPARATOR)
    lines = (MODELS / f"{vocab}.out").read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    assert len(cases) == len(lines), f"{vocab}: {len(cases)} inputs but {len(lines)} expected outputs"
    return [(text, [int(t) for t in line.split()]) for text, line in zip(cases, lines)]


_loaded: dict[str, Llama] = {}


def vocab_llama(vocab: str) -> Llama:
    if vocab not in _loaded:
        _loaded[vocab] = Llama(str(MODELS / vocab), vocab_only=True)
    return _loaded[vocab]


@pytest.fixture(scope="module", autouse=True)
def _close_vocabs() -> Iterator[None]:
    yield
    for llm in _loaded.values():
        llm.close()
    _loaded.clear()


def test_every_vocab_file_is_covered() -> None:
    assert len(VOCABS) >= 15
    assert len(VOCABS_WITH_VECTORS) >= 12


@pytest.mark.parametrize("vocab", VOCABS_WITH_VECTORS)
def test_llama_cpp_vectors(vocab: str) -> None:
    llm = vocab_llama(vocab)
    vectors = read_vectors(vocab)
    assert vectors
    failures = []
    for text, expected in vectors:
        got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if got != expected:
            failures.append((text, expected, got))
    assert not failures, f"{len(failures)}/{len(vectors)} cases differ, first: {failures[0]!r}"


@pytest.mark.parametrize("vocab", VOCABS)
def test_vocab_only_load(vocab: str) -> None:
    llm = vocab_llama(vocab)
    assert llm.n_vocab > 1000
    tokens = llm.tokenize(b"Hello world", add_bos=False)
    assert tokens and all(0 <= t < llm.n_vocab for t in tokens)
    assert "hello" in llm.detokenize(tokens).decode("utf-8").lower()  # BERT vocabs lowercase
    with pytest.raises(Exception, match="vocab_only"):
        llm.create_completion("Hello")


@pytest.mark.parametrize("vocab", ["ggml-vocab-llama-spm.gguf", "ggml-vocab-qwen2.gguf", "ggml-vocab-gpt-2.gguf"])
def test_round_trip_fuzz(vocab: str) -> None:
    """These vocabs reproduce any text exactly (SPM with byte fallback, byte-level BPE), except where llama.cpp
    applies the vocab's clean_up_tokenization_spaces (GPT-2: " ?" -> "?", "a 's" -> "a's", as HF does)."""
    llm = vocab_llama(vocab)
    cleans_spaces = llm.detokenize(llm.tokenize(b"a ?", add_bos=False)) == b"a?"
    if cleans_spaces:
        assert llm.detokenize(llm.tokenize(b"Hi , you 's ok !", add_bos=False)) == b"Hi, you's ok!"

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=64))
    def round_trip(text: str) -> None:
        if cleans_spaces:
            assume(re.search(r" [?!.,']", text) is None)  # the clean-up's patterns (llama-vocab.cpp)
        data = text.encode("utf-8")
        assert llm.detokenize(llm.tokenize(data, add_bos=False)) == data
        assert llm.detokenize(llm.tokenize(data, add_bos=True)) == data

    round_trip()


def test_bos_and_special_tokens() -> None:
    llm = vocab_llama("ggml-vocab-llama-spm.gguf")
    assert llm.token_bos == 1 and llm.token_bos() == 1
    assert llm.token_eos == 2
    assert llm.tokenize(b"Hello world") == [1, 15043, 3186]
    assert llm.tokenize(b"Hello world", add_bos=False) == [15043, 3186]
    # `special` parses control-token text; without it `<s>` is plain text.
    assert llm.tokenize(b"<s>Hi", add_bos=False, special=True)[0] == 1
    assert 1 not in llm.tokenize(b"<s>Hi", add_bos=False, special=False)
    assert llm.detokenize([1, 15043]) == b"Hello"
    assert llm.detokenize([1, 15043], special=True) == b"<s>Hello"
    assert llm.detokenize([3186], prev_tokens=[1, 15043]) == b" world"
    assert llm.tokenize(b"") == [1]


def test_tokenizer_facade() -> None:
    llm = vocab_llama("ggml-vocab-llama-spm.gguf")
    tok = llm.tokenizer()
    assert isinstance(tok, LlamaTokenizer)
    ids = tok.encode("Grüße, 世界")
    assert tok.decode(ids) == "Grüße, 世界"


def test_invalid_utf8_and_bad_ids_raise() -> None:
    llm = vocab_llama("ggml-vocab-llama-spm.gguf")
    with pytest.raises(TokenizeError, match="UTF-8"):
        llm.tokenize(b"abc\xff\xfe")
    with pytest.raises(TokenizeError, match="UTF-8"):
        llm.tokenize(b"\xe4\xb8")  # truncated multi-byte character
    with pytest.raises(TokenizeError, match="surrogate"):
        llm.tokenize("lone \ud800 surrogate")
    with pytest.raises(TokenizeError, match="outside the vocab"):
        llm.detokenize([5, llm.n_vocab])
    with pytest.raises(TokenizeError, match="outside the vocab"):
        llm.detokenize([-1])
    with pytest.raises(TypeError):
        llm.tokenize(123)  # type: ignore[arg-type]
    assert issubclass(TokenizeError, ValueError)


def test_long_text_grows_buffer() -> None:
    llm = vocab_llama("ggml-vocab-llama-spm.gguf")
    text = ("lorem ipsum dolor sit amet " * 2000).encode()
    tokens = llm.tokenize(text, add_bos=False)
    assert len(tokens) > 5000
    assert llm.detokenize(tokens) == text


# -- the streaming text assembler --------------------------------------------------------------------------------


def test_stream_never_splits_characters() -> None:
    stream = TextStream()
    data = "a中😀é".encode()
    out = [stream.push(data[i : i + 1]) for i in range(len(data))]
    assert all("\ufffd" not in part for part in out)
    assert "".join(out) + stream.finish() == "a中😀é"
    assert out[:2] == ["a", ""]  # the first byte of 中 is held back


def test_stream_invalid_bytes_become_replacement_chars() -> None:
    stream = TextStream()
    assert stream.push(b"ok\xff") == "ok\ufffd"
    assert stream.push(b"\xe4\xb8") == ""
    assert stream.finish() == "\ufffd"


def test_stream_stop_string_across_pieces() -> None:
    stream = TextStream(stop=["STOP"])
    parts = [stream.push(p) for p in (b"hello S", b"T", b"O", b"P and more")]
    assert "".join(parts) == "hello "
    assert stream.stopped and stream.stop_string == "STOP"
    assert stream.push(b"x") == "" and stream.finish() == ""


def test_stream_releases_held_text_that_is_no_stop() -> None:
    stream = TextStream(stop=["STOP"])
    assert stream.push(b"ST") == ""
    assert stream.push(b"ART") == "START"
    assert stream.push(b"ST") == ""
    assert stream.finish() == "ST"
    assert stream.text == "STARTST" and not stream.stopped


def test_stream_earliest_of_several_stops() -> None:
    stream = TextStream(stop=["world", "lo w"])
    assert stream.push(b"hello world") == "hel"
    assert stream.stop_string == "lo w"


def test_tokenize_from_many_threads() -> None:
    import threading

    llm = vocab_llama("ggml-vocab-llama-spm.gguf")
    texts = [f"thread {i} says héllo wörld {'x' * i}" for i in range(16)]
    expected = [llm.tokenize(t.encode()) for t in texts]
    failures: list[int] = []

    def work(i: int) -> None:
        for _ in range(200):
            if llm.tokenize(texts[i].encode()) != expected[i] or llm.detokenize(expected[i]) != texts[i].encode():
                failures.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab中😀\n ", max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12),
    stops=st.lists(st.text(alphabet="ab中 ", min_size=1, max_size=3), max_size=3),
)
def test_stream_property_matches_reference(text: str, cuts: list[int], stops: list[str]) -> None:
    """However the bytes are split into pieces, the output is the text cut at the earliest stop string."""
    data = text.encode()
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    stream = TextStream(stop=stops)
    out = [stream.push(data[a:b]) for a, b in zip(points, points[1:])]
    out.append(stream.finish())
    hits = [text.find(s) for s in stops if s in text]
    expected = text[: min(hits)] if hits else text
    assert "".join(out) == expected
    assert all("\ufffd" not in part for part in out)
    assert stream.stopped == bool(hits)
