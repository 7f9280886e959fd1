"""llama-cpp-python's `llama_grammar` names (llamarcp.compat.grammar) and `LlamaGrammar.from_json_schema`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from llamarcp import Llama
from llamarcp.compat.grammar import (
    ARITHMETIC_GBNF,
    C_GBNF,
    CHESS_GBNF,
    ENGLISH_GBNF,
    JAPANESE_GBNF,
    JSON_ARR_GBNF,
    JSON_GBNF,
    LIST_GBNF,
    LLAMA_GRAMMAR_DEFAULT_ROOT,
    LlamaGrammar,
    json_schema_to_gbnf,
)
from llamarcp.errors import GrammarError

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def llm(tiny_model_path: Path) -> Iterator[Llama]:
    with Llama(str(tiny_model_path), n_ctx=512, n_threads=1, seed=3) as model:
        yield model


@pytest.mark.parametrize(
    "text", [JSON_GBNF, JSON_ARR_GBNF, LIST_GBNF, ARITHMETIC_GBNF, C_GBNF, CHESS_GBNF, ENGLISH_GBNF, JAPANESE_GBNF]
)
def test_stock_grammars_parse(text: str, llm: Llama) -> None:
    LlamaGrammar.from_string(text, verify=llm)
    assert LLAMA_GRAMMAR_DEFAULT_ROOT == "root"


def test_example_grammars_are_the_bindings_trees_files() -> None:
    """The *_GBNF texts are llama.cpp's grammars/*.gbnf of the tree the bindings came from (codegen writes them)."""
    from codegen.generate import bindings_source, example_grammars

    files = example_grammars(bindings_source())
    assert {"arithmetic", "c", "chess", "japanese", "json_arr", "list"} <= set(files)
    assert tuple(files[name] for name in ("arithmetic", "c", "chess", "japanese", "json_arr", "list")) == (
        ARITHMETIC_GBNF,
        C_GBNF,
        CHESS_GBNF,
        JAPANESE_GBNF,
        JSON_ARR_GBNF,
        LIST_GBNF,
    )


def test_from_json_schema_constrains_output_to_the_schema(llm: Llama) -> None:
    grammar = LlamaGrammar.from_json_schema(json.dumps(SCHEMA))
    assert LlamaGrammar.from_json_schema(SCHEMA).text == grammar.text  # a dict works too
    grammar.check(llm)
    out = llm("Person:", grammar=grammar, max_tokens=120, temperature=0.7, seed=5)
    assert out["choices"][0]["finish_reason"] == "stop"
    value = json.loads(out["choices"][0]["text"])
    assert set(value) == {"name", "age"} and isinstance(value["age"], int) and len(value["name"]) <= 6


def test_prop_order_puts_the_named_properties_first() -> None:
    text = json_schema_to_gbnf(json.dumps(SCHEMA), prop_order=["age"])
    assert text.index('\\"age\\"') < text.index('\\"name\\"')
    default = json_schema_to_gbnf(SCHEMA)
    assert default.index('\\"name\\"') < default.index('\\"age\\"')


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", '{"$ref": "http://example.com/schema"}'])
def test_bad_schemas_raise_grammar_error(bad: str) -> None:
    with pytest.raises(GrammarError):
        LlamaGrammar.from_json_schema(bad)


def test_schema_converter_interface() -> None:
    from llamarcp.compat.grammar import SchemaConverter

    converter = SchemaConverter(prop_order=["age"])
    converter.visit(converter.resolve_refs(SCHEMA, "input"), "")
    assert converter.format_grammar() == json_schema_to_gbnf(SCHEMA, prop_order=["age"])
    with pytest.raises(ValueError, match="not fetched"):
        SchemaConverter(allow_fetch=True)
