"""codegen's ctypes spellings (render.CtypesSpeller, render_ctypes_face): C type text -> the compact spellings
llamarcp/compat/ctypes_face.py builds llama-cpp-python's ctypes module from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codegen import render
from codegen.model import Api

GENERATED = Path(__file__).resolve().parent.parent / "llamarcp" / "_generated"


@pytest.fixture(scope="module")
def api() -> Api:
    return Api.from_manifest(json.loads((GENERATED / "api.json").read_text(encoding="utf-8")))


@pytest.mark.parametrize(
    ("ctype", "spelling"),
    [
        ("int32_t", "c_int32"),
        ("const char *", "c_char_p"),  # bytes in, bytes out, as llama-cpp-python declares it
        ("char *", "c_char_p"),
        ("const char **", "*c_char_p"),
        ("void *", "c_void_p"),
        ("void", "None"),
        ("FILE *", "c_void_p"),
        ("float *", "*c_float"),
        ("llama_token *", "*c_int32"),  # typedefs resolve
        ("llama_seq_id **", "**c_int32"),
        ("struct llama_model *", "c_void_p"),  # opaque: handles are ints
        ("const struct llama_vocab *", "c_void_p"),
        ("llama_memory_t", "c_void_p"),  # a typedef of an opaque pointer
        ("struct ggml_tensor *", "c_void_p"),  # ggml's internals stay void *
        ("struct llama_batch", "S:llama_batch"),  # by value
        ("llama_token_data_array *", "*S:llama_token_data_array"),
        ("struct llama_sampler *", "*S:llama_sampler"),
        ("char[128]", "[128]c_char"),
        ("struct ggml_tensor * [10]", "[10]c_void_p"),
        ("llama_progress_callback", "F:llama_progress_callback"),
        ("enum llama_vocab_type", "c_int"),
    ],
)
def test_spellings(api: Api, ctype: str, spelling: str) -> None:
    assert render.CtypesSpeller(api).spell(ctype) == spelling


def test_inline_function_pointers_become_named_callbacks(api: Api) -> None:
    speller = render.CtypesSpeller(api)
    assert speller.spell("void (*)(struct llama_sampler *, llama_token)", hint="llama_sampler_i_accept") == (
        "F:llama_sampler_i_accept"
    )
    assert speller.callbacks["llama_sampler_i_accept"] == ("None", ("*S:llama_sampler", "c_int32"))
    assert speller.spell("int (*)(void)", hint="f") == "F:f" and speller.callbacks["f"] == ("c_int", ())
    assert speller.spell("int (*)(int)") == "c_void_p" and "has no name" in speller.diagnostics[-1]


def test_unknown_types_are_reported(api: Api) -> None:
    speller = render.CtypesSpeller(api)
    assert speller.spell("struct_of_nowhere_t") == "c_void_p"
    assert speller.diagnostics == ["WARN: ctypes face: unknown type 'struct_of_nowhere_t' spelled as void *"]


def test_rendered_tables(api: Api) -> None:
    namespace: dict[str, object] = {}
    exec(compile(render.render_ctypes_face(api), "_ctypes_face.py", "exec"), namespace)
    functions = namespace["FUNCTIONS"]
    assert isinstance(functions, dict)
    assert functions["llama_get_logits"] == ("llama", "*c_float", (("ctx", "c_void_p"),))
    assert namespace["BOUNDS"]["llama_token_to_piece"] == ((2, 3, True),)  # type: ignore[index]
    assert namespace["BOUNDS"]["llama_tokenize"] == ((1, 2, False), (3, 4, True))  # type: ignore[index]
    assert namespace["TOKEN_CHECKS"]["llama_vocab_get_attr"] == (0, 1)  # type: ignore[index]
    assert "llama_sampler_init_greedy" not in namespace["BOUNDS"]  # type: ignore[operator]
    assert all(name in functions for name in ("mtmd_init_from_file", "ggml_backend_dev_count"))
