"""llama-cpp-python's `llama_grammar`: `LlamaGrammar` (llamarcp's), JSON-schema conversion, stock grammars."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from llamarcp._generated.grammars import EXAMPLE_GRAMMARS
from llamarcp.grammar import JSON_GBNF, LlamaGrammar

__all__ = [
    "ARITHMETIC_GBNF",
    "CHESS_GBNF",
    "C_GBNF",
    "ENGLISH_GBNF",
    "JAPANESE_GBNF",
    "JSON_ARR_GBNF",
    "JSON_GBNF",
    "LIST_GBNF",
    "LLAMA_GRAMMAR_DEFAULT_ROOT",
    "LlamaGrammar",
    "SchemaConverter",
    "json_schema_to_gbnf",
]

LLAMA_GRAMMAR_DEFAULT_ROOT = "root"

#: llama.cpp's example grammars (`grammars/*.gbnf` of the pinned tree, generated into the bindings), under
#: llama-cpp-python's names. JSON_GBNF is llamarcp's own JSON grammar (`llamarcp.grammar`), as JSON mode uses it.
ARITHMETIC_GBNF = EXAMPLE_GRAMMARS["arithmetic"]
C_GBNF = EXAMPLE_GRAMMARS["c"]
CHESS_GBNF = EXAMPLE_GRAMMARS["chess"]
ENGLISH_GBNF = EXAMPLE_GRAMMARS["english"]
JAPANESE_GBNF = EXAMPLE_GRAMMARS["japanese"]
JSON_ARR_GBNF = EXAMPLE_GRAMMARS["json_arr"]
LIST_GBNF = EXAMPLE_GRAMMARS["list"]


def json_schema_to_gbnf(schema: str | Mapping[str, Any], prop_order: Sequence[str] | None = None) -> str:
    """GBNF text for a JSON Schema (JSON text or dict); `prop_order` lists the properties to emit first."""
    parsed = json.loads(schema) if isinstance(schema, (str, bytes)) else schema
    if prop_order:
        parsed = _ordered(parsed, list(prop_order))
    return LlamaGrammar.from_json_schema(parsed).text


def _ordered(schema: Any, order: list[str]) -> Any:
    """Copy of `schema` whose `properties` (at every level) list the names in `order` first."""
    if isinstance(schema, list):
        return [_ordered(item, order) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {key: _ordered(value, order) for key, value in schema.items()}
    props = out.get("properties")
    if isinstance(props, Mapping):
        rank = {name: i for i, name in enumerate(order)}
        out["properties"] = dict(sorted(props.items(), key=lambda kv: rank.get(kv[0], len(rank))))
    return out


class SchemaConverter:
    """llama-cpp-python's converter interface: `visit(schema, name)` then `format_grammar()` gives GBNF text.

    The conversion is llamarcp's (`llamarcp.chat.grammars`); `allow_fetch` (remote `$ref`s) is refused, as
    fetching a schema from the network while building a grammar is not something a request should trigger.
    """

    def __init__(
        self, *, prop_order: Sequence[str] | None = None, allow_fetch: bool = False, dotall: bool = False,
        raw_pattern: bool = False,
    ) -> None:  # fmt: skip
        if allow_fetch:
            raise ValueError("SchemaConverter(allow_fetch=True): remote $refs are not fetched by llamarcp")
        self._prop_order = list(prop_order or [])
        self._schema: Any = None

    def resolve_refs(self, schema: Any, url: str) -> Any:
        """Local `$ref`s are resolved during conversion; the schema is returned as it is."""
        return schema

    def visit(self, schema: Mapping[str, Any], name: str) -> str:
        self._schema = schema
        return name or "root"

    def format_grammar(self) -> str:
        if self._schema is None:
            raise ValueError("SchemaConverter.format_grammar() before visit(schema, name)")
        return json_schema_to_gbnf(self._schema, self._prop_order)
