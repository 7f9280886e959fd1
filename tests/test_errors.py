"""The one place llama.cpp return codes become exceptions, and the exception hierarchy's promises."""

from __future__ import annotations

import pytest

from llamarcp import errors


def test_check_decode_maps_every_code() -> None:
    errors.check_decode(0)  # success is quiet
    with pytest.raises(errors.ContextFullError, match="no room"):
        errors.check_decode(errors.DECODE_NO_KV_SLOT)
    with pytest.raises(errors.GenerationAborted, match="llama_encode was aborted"):
        errors.check_decode(errors.DECODE_ABORTED, "llama_encode")
    for code in (-1, -3, 7):
        with pytest.raises(errors.DecodeError) as info:
            errors.check_decode(code)
        assert info.value.code == code


def test_every_error_is_a_llama_error() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert len(classes) > 15
    assert all(issubclass(c, errors.LlamaError) for c in classes)


def test_builtin_bases_let_generic_handlers_work() -> None:
    assert issubclass(errors.ModelNotFoundError, FileNotFoundError)
    assert issubclass(errors.PromptTooLongError, ValueError) and issubclass(
        errors.PromptTooLongError, errors.ContextFullError
    )
    assert issubclass(errors.LoraAdapterError, errors.ModelLoadError)
    assert issubclass(errors.GrammarError, ValueError) and issubclass(errors.StateError, ValueError)
    assert str(errors.PromptTooLongError(10, 8)).count("10") >= 1
