"""`llama_cpp.llama_cpp` (llamarcp.compat.lowlevel) and `llama_cpp.mtmd_cpp`: llama-cpp-python's ctypes modules,
built from the generated tables (llamarcp/compat/ctypes_face.py), used the way outlines, llguidance and guidance
use them; the log callback; bad arguments."""

from __future__ import annotations

import ctypes
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamarcp import Llama, _lib
from llamarcp._release import generated_module
from llamarcp.compat import ctypes_face, install_as_llama_cpp, lowlevel, mtmd_module
from llamarcp.errors import ModelLoadError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def restore_logging() -> Iterator[None]:
    yield
    lowlevel.llama_log_set(None)


def test_ctypes_log_callback_receives_the_lines_and_errors_are_still_quoted(
    tiny_model_path: Path, tmp_path: Path, restore_logging: None
) -> None:
    seen: list[tuple[int, bytes, int | None]] = []

    def on_log(level: int, text: bytes, user_data: int | None) -> None:
        seen.append((level, text, user_data))

    callback = lowlevel.llama_log_callback(on_log)
    lowlevel.llama_log_set(callback, ctypes.c_void_p(1234))
    Llama(str(tiny_model_path), n_ctx=64, n_threads=1).close()
    assert seen and all(isinstance(text, bytes) for _, text, _ in seen)
    assert {data for _, _, data in seen} == {1234}
    assert any(b"llama_model_loader" in text or b"load" in text for _, text, _ in seen)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_model_path.read_bytes()[:4096])
    with pytest.raises(ModelLoadError, match="could not load .*broken.gguf.*: .+"):  # llama.cpp's reason quoted
        Llama(str(broken))


def test_null_callback_goes_back_to_the_logger(
    tiny_model_path: Path, caplog: pytest.LogCaptureFixture, restore_logging: None
) -> None:
    lowlevel.llama_log_set(lowlevel.llama_log_callback(lambda *a: None), None)  # silences llama.cpp
    with caplog.at_level(logging.DEBUG, logger="llamarcp.llama_cpp"):
        Llama(str(tiny_model_path), n_ctx=64, n_threads=1).close()
    assert not [r for r in caplog.records if r.name == "llamarcp.llama_cpp"]
    lowlevel.llama_log_set(lowlevel.llama_log_callback(), None)  # a NULL function pointer: llamarcp's default
    with caplog.at_level(logging.DEBUG, logger="llamarcp.llama_cpp"):
        Llama(str(tiny_model_path), n_ctx=64, n_threads=1).close()
    assert [r for r in caplog.records if r.name == "llamarcp.llama_cpp"]


def test_a_raising_python_callback_never_reaches_c(tiny_model_path: Path, restore_logging: None) -> None:
    calls = []

    def boom(level: int, text: bytes, user_data: object) -> None:
        calls.append(level)
        raise RuntimeError("a bug in the user's callback")

    lowlevel.llama_log_set(boom)
    Llama(str(tiny_model_path), n_ctx=64, n_threads=1).close()
    assert calls
    with pytest.raises(TypeError, match="expects a log callback or None"):
        lowlevel.llama_log_set(42)


def test_typedef_names_build_token_arrays() -> None:
    tokens = (lowlevel.llama_token * 3)(1, 2, 3)
    assert list(tokens) == [1, 2, 3] and ctypes.sizeof(lowlevel.llama_pos) == ctypes.sizeof(lowlevel.llama_seq_id) == 4


def test_the_usual_silencing_snippet_through_the_installed_llama_cpp(tiny_model_path: Path) -> None:
    code = f"""
import ctypes, llamarcp
llamarcp.install_as_llama_cpp()
import llama_cpp
lines = []
def quiet(level, text, user_data):
    lines.append(text)
cb = llama_cpp.llama_log_callback(quiet)
llama_cpp.llama_log_set(cb, ctypes.c_void_p())
llm = llama_cpp.Llama(model_path={str(tiny_model_path)!r}, n_ctx=64, verbose=True)
print(len(lines) > 0, llm.create_completion("a", max_tokens=2)["object"])
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "text_completion"]
    assert "llama_model_loader" not in proc.stderr  # verbose=True would print them: the callback took them


# ------------------------------------------------------------------------------------------ the ctypes face


@pytest.fixture(scope="module")
def llm(tiny_model_path: Path) -> Iterator[Llama]:
    model = Llama(str(tiny_model_path), n_ctx=128, n_batch=32, n_threads=1, logits_all=True)
    yield model
    model.close()


def _piece(vocab: int, token: int, size: int = 32) -> bytes:
    buffer = (ctypes.c_char * size)()
    n = lowlevel.llama_token_to_piece(vocab, token, buffer, size, 0, True)
    assert 0 <= n <= size
    return buffer[:n]


def test_outlines_vocabulary_walk(llm: Llama) -> None:
    """outlines' LlamaCppTokenizer: a vocab handle from `model.model`, pieces into a `c_char * 32` array."""
    vocab = lowlevel.llama_model_get_vocab(llm.model)  # llamarcp's cffi handle is taken, an int comes back
    assert isinstance(vocab, int) and vocab
    for token in (1, 2, 100, 3000, 31999):  # llama_detokenize drops the leading space of a first piece
        assert _piece(vocab, token).lstrip(b" ") == llm.detokenize([token], special=True).lstrip(b" ")
    buffer = ctypes.create_string_buffer(17)  # llguidance's way
    n = lowlevel.llama_token_to_piece(vocab, 100, buffer, 16, 0, True)
    assert buffer.raw[:n] == _piece(vocab, 100)
    assert lowlevel.llama_vocab_n_tokens(vocab) == llm.n_vocab()
    assert lowlevel.llama_vocab_eos(vocab) == llm.token_eos()
    assert lowlevel.llama_token_get_attr(vocab, 1) & lowlevel.LLAMA_TOKEN_ATTR_CONTROL


def test_llguidance_takes_llama_tokenize_from_lib(llm: Llama) -> None:
    """llguidance casts `llama_cpp.llama_cpp._lib.llama_tokenize` to an address it calls from Rust."""
    assert isinstance(lowlevel._lib, ctypes.CDLL) and lowlevel._lib._name == _lib.loaded_path()
    address = ctypes.cast(lowlevel._lib.llama_tokenize, ctypes.c_void_p).value
    assert address == int(ffi_address(_backend_lib().llama_tokenize))
    tokenize = ctypes.CFUNCTYPE(
        ctypes.c_int32, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_int32),
        ctypes.c_int32, ctypes.c_bool, ctypes.c_bool,
    )(address)  # fmt: skip
    out = (ctypes.c_int32 * 16)()
    n = tokenize(lowlevel.llama_model_get_vocab(llm.model), b"hello world", 11, out, 16, False, False)
    assert list(out[:n]) == llm.tokenize(b"hello world", add_bos=False)


def ffi_address(function: object) -> int:
    from llamarcp._ffi import ffi

    return int(ffi.cast("uintptr_t", function))


def _backend_lib() -> Any:
    from llamarcp import _backend

    return _backend.get_lib()


def test_guidance_batch_decode_and_logits_as_numpy(llm: Llama) -> None:
    """guidance's LlamaCppEngine: its own llama_batch, memory cleared by seq_rm, logits read through numpy."""
    np = pytest.importorskip("numpy")
    tokens = llm.tokenize(b"The quick brown fox", add_bos=True)
    batch = lowlevel.llama_batch_init(32, 0, 1)
    assert isinstance(batch, lowlevel.llama_batch) and batch.n_tokens == 0
    try:
        batch.n_tokens = len(tokens)
        for j, token in enumerate(tokens):
            batch.token[j] = token
            batch.pos[j] = j
            batch.seq_id[j][0] = 0
            batch.n_seq_id[j] = 1
            batch.logits[j] = True
        llm.reset()
        memory = lowlevel.llama_get_memory(llm.ctx)
        assert isinstance(memory, int)
        lowlevel.llama_memory_seq_rm(memory, -1, 0, -1)
        assert lowlevel.llama_decode(llm.ctx, batch) == 0
        pointer = lowlevel.llama_get_logits(llm.ctx)
        theirs = np.ctypeslib.as_array(pointer, shape=(len(tokens), llm.n_vocab())).copy()
    finally:
        lowlevel.llama_batch_free(batch)
    llm.reset()
    llm.eval(tokens)
    ours = np.asarray(llm.scores)
    assert theirs.shape == ours.shape
    assert np.allclose(theirs, ours, atol=1e-4)


def test_a_whole_model_through_ctypes_alone(tiny_model_path: Path) -> None:
    """llama-cpp-python's low-level example: params structs, a progress callback, load, tokenize, decode."""
    calls: list[float] = []

    @lowlevel.llama_progress_callback
    def progress(fraction: float, user_data: int | None) -> bool:
        calls.append(fraction)
        return True

    params = lowlevel.llama_model_default_params()
    params.progress_callback = progress
    model = lowlevel.llama_model_load_from_file(str(tiny_model_path).encode(), params)
    assert isinstance(model, int) and model and calls and calls[-1] == pytest.approx(1.0)
    try:
        cparams = lowlevel.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_threads = 64, 16, 1
        ctx = lowlevel.llama_init_from_model(model, cparams)
        assert isinstance(ctx, int) and lowlevel.llama_n_ctx(ctx) >= 64
        vocab = lowlevel.llama_model_get_vocab(model)
        text = b"hello there"
        tokens = (lowlevel.llama_token * 16)()
        n = lowlevel.llama_tokenize(vocab, text, len(text), tokens, 16, True, False)
        assert n > 1
        assert lowlevel.llama_decode(ctx, lowlevel.llama_batch_get_one(tokens, n)) == 0
        row = lowlevel.llama_get_logits_ith(ctx, -1)
        assert isinstance(row, ctypes.POINTER(ctypes.c_float)) and all(abs(row[i]) < 1e6 for i in range(8))
        desc = ctypes.create_string_buffer(64)
        assert lowlevel.llama_model_desc(model, desc, 64) > 0 and desc.value
        lowlevel.llama_free(ctx)
    finally:
        lowlevel.llama_model_free(model)


def test_wrong_ctypes_argument_is_a_type_error_naming_the_parameter(llm: Llama) -> None:
    vocab = lowlevel.llama_model_get_vocab(llm.model)
    with pytest.raises(
        TypeError, match=r"llama_token_to_piece\(\): parameter 3 'buf' takes c_char_p, got c_int_Array_8"
    ):
        lowlevel.llama_token_to_piece(vocab, 1, (ctypes.c_int * 8)(), 8, 0, True)
    with pytest.raises(TypeError, match=r"parameter 2 'batch' takes llama_batch, got int"):
        lowlevel.llama_decode(llm.ctx, 5)
    with pytest.raises(TypeError, match=r"llama_tokenize\(\): parameter 4 'tokens' takes LP_c_int"):
        lowlevel.llama_tokenize(vocab, b"ab", 2, (ctypes.c_int64 * 4)(), 4, False, False)  # 8-byte ints
    with pytest.raises(TypeError, match="parameter 2 'token'"):
        lowlevel.llama_token_to_piece(vocab, 1.5, ctypes.create_string_buffer(8), 8, 0, True)


def test_buffer_smaller_than_its_count_is_refused(llm: Llama) -> None:
    vocab = lowlevel.llama_model_get_vocab(llm.model)
    with pytest.raises(ctypes_face.BufferTooSmallError, match=r"'buf' holds 8 element\(s\).*length=32"):
        lowlevel.llama_token_to_piece(vocab, 100, (ctypes.c_char * 8)(), 32, 0, True)
    with pytest.raises(TypeError, match=r"'tokens' holds 2 element\(s\) \(8 bytes\) but n_tokens_max=4"):
        lowlevel.llama_tokenize(vocab, b"hello", 5, (lowlevel.llama_token * 2)(), 4, False, False)
    with pytest.raises(TypeError, match=r"'text' holds 5 element\(s\).*text_len=50"):
        lowlevel.llama_tokenize(vocab, b"hello", 50, (lowlevel.llama_token * 8)(), 8, False, False)
    with pytest.raises(TypeError, match="'buf' is written to and bytes are immutable"):
        lowlevel.llama_token_to_piece(vocab, 100, b"x" * 32, 32, 0, True)  # ctypes would write into the bytes
    tokens = (lowlevel.llama_token * 8)()  # exactly large enough: allowed
    assert lowlevel.llama_tokenize(vocab, b"hello", 5, tokens, 8, False, False) > 0


def test_token_ids_out_of_the_vocab_are_refused_not_aborted(llm: Llama) -> None:
    """llama.cpp indexes its vocab with the id unchecked: an id past the end aborts the whole process."""
    vocab = lowlevel.llama_model_get_vocab(llm.model)
    n_vocab = lowlevel.llama_vocab_n_tokens(vocab)
    for function in (lowlevel.llama_vocab_get_attr, lowlevel.llama_token_get_text, lowlevel.llama_vocab_is_control):
        with pytest.raises(ValueError, match=rf"token={n_vocab} is not a token of this vocab \(0..{n_vocab - 1}\)"):
            function(vocab, n_vocab)
    with pytest.raises(ValueError, match="token=-5"):
        lowlevel.llama_token_to_piece(vocab, -5, ctypes.create_string_buffer(8), 8, 0, True)
    with pytest.raises(ValueError, match="'vocab' is NULL"):
        lowlevel.llama_vocab_get_score(None, 1)
    assert lowlevel.llama_vocab_is_eog(vocab, -1) is False  # LLAMA_TOKEN_NULL: llama.cpp checks it there
    assert lowlevel.llama_vocab_is_eog(vocab, lowlevel.llama_vocab_eos(vocab)) is True


def test_every_struct_matches_the_compiler_layout() -> None:
    structs = generated_module("_ctypes_face").STRUCTS
    for name, (_, size, fields) in structs.items():
        cls = ctypes_face.ctype("S:" + name)
        assert size is None or ctypes.sizeof(cls) == size, name
        assert [f[0] for f in cls._fields_] == [f[0] for f in fields]
    kv = lowlevel.llama_model_kv_override()
    kv.val_i64 = 7  # the anonymous union reads through, and as llama-cpp-python's `value`
    assert kv.value.val_i64 == 7
    with pytest.raises(ctypes_face.StructLayoutError, match="is 4 bytes, the compiler's is 8"):
        ctypes_face._check_layout(type("bad", (ctypes.Structure,), {"_fields_": [("a", ctypes.c_int)]}), "bad", 8, ())


def test_pointer_aliases_and_callback_types() -> None:
    assert lowlevel.llama_model_p_ctypes is ctypes.c_void_p and lowlevel.llama_vocab_p(5) == 5
    assert lowlevel.llama_token_data_array_p._type_ is lowlevel.llama_token_data_array
    assert lowlevel.llama_token_p._type_ is ctypes.c_int32 and lowlevel.llama_memory_t is ctypes.c_void_p
    assert lowlevel.llama_memory_t_ctypes is ctypes.c_void_p
    assert lowlevel.llama_log_callback is lowlevel.ggml_log_callback
    assert lowlevel.ggml_abort_callback._restype_ is ctypes.c_bool
    assert lowlevel.llama_sampler_i_apply._argtypes_[1]._type_ is lowlevel.llama_token_data_array
    names = dir(lowlevel)
    assert {"llama_decode", "llama_batch", "llama_vocab_p", "_lib", "llama_progress_callback"} <= set(names)
    with pytest.raises(AttributeError, match="declares no 'llama_nothing'"):
        lowlevel.llama_nothing  # noqa: B018


def test_mtmd_cpp_face() -> None:
    if ctypes_face.cdll("mtmd") is None:
        pytest.skip("no libmtmd beside the loaded libllama (python build_lib.py --mtmd)")
    assert mtmd_module.mtmd_default_marker() == b"<__media__>"
    params = mtmd_module.mtmd_context_params_default()
    assert isinstance(params, mtmd_module.mtmd_context_params) and params.n_threads > 0
    chunks = mtmd_module.mtmd_input_chunks_init()
    assert isinstance(chunks, int) and mtmd_module.mtmd_input_chunks_size(chunks) == 0
    mtmd_module.mtmd_input_chunks_free(chunks)
    assert mtmd_module.MTMD_INPUT_CHUNK_TYPE_TEXT == 0 and mtmd_module.mtmd_context_p_ctypes is ctypes.c_void_p
    assert isinstance(mtmd_module._libmtmd, ctypes.CDLL)


def test_importing_llama_cpp_builds_nothing() -> None:
    """`import llama_cpp` loads neither the tables nor the library: names are built on first access."""
    code = """
import sys, llamarcp, llamarcp._lib
llamarcp.install_as_llama_cpp()
import llama_cpp, llama_cpp.llama_cpp, llama_cpp.mtmd_cpp
print(sorted(m for m in sys.modules if m.endswith("_ctypes_face") or m == "llamarcp._generated._llama_ffi"))
print(llamarcp._lib.loaded_path())
llama_cpp.llama_batch_init
print(sorted(m for m in sys.modules if m.endswith("_ctypes_face")))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:3] == ["[]", "None", "['llamarcp._generated._ctypes_face']"]


# ------------------------------------------------------------------------------------------ llama_cpp._internals


def test_internals_model_context_batch_sampler(tiny_model_path: Path) -> None:
    from llamarcp.compat import internals

    install_as_llama_cpp()
    import llama_cpp._internals as li

    assert li is internals
    model = li.LlamaModel(path_model=str(tiny_model_path), params=li.LlamaModel.default_params(), verbose=False)
    assert isinstance(model.model, int) and model.n_vocab() == 32000 and model.metadata()["general.architecture"]
    tokens = model.tokenize(b"hello world", add_bos=True, special=False)
    assert tokens[0] == model.token_bos() and model.detokenize(tokens) == b"hello world"
    params = li.LlamaContext.default_params()
    params.n_ctx, params.n_batch, params.n_threads, params.n_threads_batch = 64, 16, 1, 1
    ctx = li.LlamaContext(model=model, params=params, verbose=False)
    batch = li.LlamaBatch(n_tokens=16, embd=0, n_seq_max=1)
    batch.set_batch(tokens, n_past=0, logits_all=False)
    ctx.decode(batch)
    sampler = li.LlamaSampler()
    sampler.add_top_k(1)
    sampler.add_greedy()
    token = sampler.sample(ctx, -1)
    row = ctx.get_logits_ith(-1)
    assert token == max(range(model.n_vocab()), key=lambda i: row[i])
    with pytest.raises(ValueError, match="holds 16 tokens: cannot put 17 after 0"):
        batch.set_batch(list(range(17)), n_past=0, logits_all=False)  # llama-cpp-python would write past the end
    with pytest.raises(ValueError, match="n_threads"):
        bad = li.LlamaContext.default_params()
        bad.n_threads = 0
        li.LlamaContext(model=model, params=bad)
    sampler.close()
    batch.close()
    model.close()  # closes its context first
    assert ctx.ctx is None and model.model is None
    with pytest.raises(ValueError, match="does not exist"):
        li.LlamaModel(path_model=str(tiny_model_path) + ".missing", params=li.LlamaModel.default_params())


def test_ctypes_loader_checks_the_gguf_first(tiny_model_path: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_model_path.read_bytes()[:4096])
    with pytest.raises(ModelLoadError, match="broken.gguf"):
        lowlevel.llama_model_load_from_file(str(broken).encode(), lowlevel.llama_model_default_params())
    with pytest.raises(Exception, match="root"):
        lowlevel.llama_sampler_init_grammar(None, b'other ::= "x"', b"root")  # no root rule: refused first


def test_every_spelling_of_the_tables_is_a_ctypes_type() -> None:
    tables = generated_module("_ctypes_face")
    spellings = {s for _, result, params in tables.FUNCTIONS.values() for s in (result, *(p for _, p in params))}
    spellings |= {s for result, params in tables.CALLBACKS.values() for s in (result, *params)}
    spellings |= set(tables.TYPEDEFS.values())
    for spelling in sorted(spellings):
        built = ctypes_face.ctype(spelling)
        assert built is None if spelling == "None" else isinstance(built, type), spelling
    assert ctypes_face.ctype("[4]*c_float")._length_ == 4
    with pytest.raises(KeyError, match="unknown type 'c_nothing'"):
        ctypes_face._build_type("c_nothing")


def test_star_import_binds_functions_types_and_constants() -> None:
    code = """
import llamarcp
llamarcp.install_as_llama_cpp()
from llama_cpp.llama_cpp import *
from llama_cpp.mtmd_cpp import *
print(llama_batch.__name__, llama_decode.__name__, LLAMA_TOKEN_ATTR_CONTROL, llama_token_p._type_.__name__)
print(mtmd_context_params.__name__, MTMD_INPUT_CHUNK_TYPE_TEXT, "_lib" in dir())
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["llama_batch", "llama_decode", "8", "c_int", "mtmd_context_params", "0", "False"]
