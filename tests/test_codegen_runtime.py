"""The generated bindings against the real built libllama, and the missing-symbol guard (llamarcp._libproxy)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from llamarcp import ffi, lib
from llamarcp._generated import _symbols
from llamarcp._libproxy import LibProxy, is_available
from llamarcp.errors import MissingSymbolError

VOCAB = "ggml-vocab-llama-spm.gguf"


@pytest.fixture(scope="module")
def vocab_model(llama_cpp_source: Path):  # type: ignore[no-untyped-def]
    lib.llama_backend_init()
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(str(llama_cpp_source / "models" / VOCAB).encode(), params)
    assert model != ffi.NULL
    yield model
    lib.llama_model_free(model)


def test_default_params_round_trip_through_the_real_library() -> None:
    lib.llama_backend_init()
    model_params = lib.llama_model_default_params()
    assert ffi.typeof(model_params) is ffi.typeof("struct llama_model_params")
    assert model_params.vocab_only is False
    assert model_params.devices == ffi.NULL
    ctx_params = lib.llama_context_default_params()
    assert ctx_params.n_batch >= ctx_params.n_ubatch > 0
    assert lib.llama_sampler_chain_default_params().no_perf in (True, False)
    assert lib.llama_max_devices() >= 1


def test_system_info_is_a_c_string() -> None:
    info = ffi.string(lib.llama_print_system_info())
    assert isinstance(info, bytes) and b"CPU" in info


def test_constants_are_reachable_on_lib() -> None:
    assert lib.LLAMA_DEFAULT_SEED == 0xFFFFFFFF
    assert lib.LLAMA_TOKEN_NULL == -1
    assert lib.LLAMA_SESSION_MAGIC == lib.LLAMA_FILE_MAGIC_GGSN == 0x6767736E
    assert lib.LLAMA_VOCAB_TYPE_SPM == 1


def _vocab_cases(source: Path) -> list[tuple[bytes, list[int]]]:
    inputs = (source / "models" / f"{VOCAB}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = (source / "models" / f"{VOCAB}.out").read_text(encoding="utf-8").split("\n")
    return [(text.encode(), [int(t) for t in out.split()]) for text, out in zip(inputs, outputs) if text][:20]


def test_tokenize_matches_llama_cpp_reference_tokens(vocab_model, llama_cpp_source: Path) -> None:  # type: ignore[no-untyped-def]
    vocab = lib.llama_model_get_vocab(vocab_model)
    assert lib.llama_vocab_type(vocab) == lib.LLAMA_VOCAB_TYPE_SPM
    cases = _vocab_cases(llama_cpp_source)
    assert len(cases) >= 10
    for text, expected in cases:
        buf = ffi.new("llama_token[]", len(text) + 8)
        n = lib.llama_tokenize(vocab, text, len(text), buf, len(buf), False, False)
        assert list(buf[0:n]) == expected, text


def test_token_to_piece_round_trip(vocab_model) -> None:  # type: ignore[no-untyped-def]
    vocab = lib.llama_model_get_vocab(vocab_model)
    text = b"Hello world"
    tokens = ffi.new("llama_token[16]")
    n = lib.llama_tokenize(vocab, text, len(text), tokens, 16, True, False)
    assert tokens[0] == lib.llama_vocab_bos(vocab)
    out = b""
    piece = ffi.new("char[64]")
    for i in range(1, n):
        k = lib.llama_token_to_piece(vocab, tokens[i], piece, 64, 0, False)
        out += ffi.buffer(piece, k)[:]
    assert out.strip() == text


# ---------------------------------------------------------------------------------------------- guard


def _libproxy_over(raw_attrs: dict[str, object]) -> LibProxy:
    return LibProxy(types.SimpleNamespace(**raw_attrs), "/fake/libllama.so")


def test_missing_declared_function_fails_on_call_naming_symbol_and_library() -> None:
    proxy = _libproxy_over({})
    func = proxy.llama_backend_init  # access alone must not raise: import-time code touches names
    with pytest.raises(MissingSymbolError) as info:
        func()
    assert info.value.symbol == "llama_backend_init"
    assert "/fake/libllama.so" in str(info.value)
    assert "python build_lib.py" in str(info.value)
    assert not is_available(proxy, "llama_backend_init")


def test_missing_deprecated_function_hint_carries_the_header_message() -> None:
    with pytest.raises(MissingSymbolError, match="use llama_model_free instead"):
        _libproxy_over({}).llama_free_model(None)


def test_missing_optional_group_hint_says_how_to_get_it() -> None:
    rpc = next(iter(_symbols.GROUPS["ggml-rpc"]))
    with pytest.raises(MissingSymbolError, match="--rpc"):
        getattr(_libproxy_over({}), rpc)()


def test_undeclared_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="declares no"):
        _libproxy_over({}).llama_no_such_function  # noqa: B018
    assert not is_available(_libproxy_over({}), "llama_no_such_function")


def test_resolved_attributes_are_cached_as_plain_instance_attributes() -> None:
    calls = []

    class Raw:
        def __getattr__(self, name: str) -> object:
            calls.append(name)
            return 42

    proxy = LibProxy(Raw(), "x")
    assert proxy.LLAMA_TOKEN_NULL == 42
    assert proxy.LLAMA_TOKEN_NULL == 42
    assert calls == ["LLAMA_TOKEN_NULL"]
    assert vars(proxy)["LLAMA_TOKEN_NULL"] == 42
    with pytest.raises(AttributeError):
        proxy.LLAMA_TOKEN_NULL = 1  # type: ignore[misc]


def test_extra_constants_are_served(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_symbols.EXTRA_CONSTANTS, "LLAMA_SOME_STRING", "abc")
    assert _libproxy_over({}).LLAMA_SOME_STRING == "abc"


def test_real_library_without_llama_symbols_raises_missing_symbol() -> None:
    from llamarcp import _lib

    path = Path(_lib.loaded_path() or "")
    base = next(path.parent.glob("libggml-base.so*"))
    proxy = LibProxy(ffi.dlopen(str(base)), str(base))
    assert not is_available(proxy, "llama_print_system_info")
    with pytest.raises(MissingSymbolError) as info:
        proxy.llama_print_system_info()
    assert str(base) in str(info.value)


def test_every_declared_function_of_the_llama_group_is_exported() -> None:
    missing = [name for name in _symbols.GROUPS["llama"] if not is_available(lib, name)]
    assert missing == []
