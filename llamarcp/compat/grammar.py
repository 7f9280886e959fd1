"""llama-cpp-python's `llama_grammar`: `LlamaGrammar` (llamarcp's), JSON-schema conversion, stock grammars."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from llamarcp.grammar import JSON_GBNF, LlamaGrammar

__all__ = [
    "ARITHMETIC_GBNF",
    "JSON_ARR_GBNF",
    "JSON_GBNF",
    "LIST_GBNF",
    "LLAMA_GRAMMAR_DEFAULT_ROOT",
    "LlamaGrammar",
    "SchemaConverter",
    "json_schema_to_gbnf",
]

LLAMA_GRAMMAR_DEFAULT_ROOT = "root"

#: Arithmetic expressions over integers and identifiers.
ARITHMETIC_GBNF = r"""
root  ::= ( expr "=" ws term "\n" )+
expr  ::= term ( [-+*/] term )*
term  ::= ( ident | num | "(" ws expr ")" ) ws
ident ::= [a-z] [a-z0-9_]{0,30}
num   ::= [0-9]{1,18}
ws    ::= [ \t\n]{0,8}
"""

#: A JSON array of JSON values (numbers kept short so output stays bounded).
JSON_ARR_GBNF = r"""
root   ::= arr
arr    ::= "[" sp ( val sp ( "," sp val sp )* )? "]"
obj    ::= "{" sp ( member ( "," sp member )* )? "}"
member ::= str sp ":" sp val sp
val    ::= obj | arr | str | num | "true" | "false" | "null"
str    ::= "\"" ( [^"\\\x00-\x1f] | "\\" ["\\/bfnrt] )* "\""
num    ::= "-"? ( "0" | [1-9] [0-9]{0,8} ) ( "." [0-9]{1,8} )?
sp     ::= " "?
"""

#: A Markdown bullet list, one item per line.
LIST_GBNF = r"""
root ::= item+
item ::= "- " [^\r\n]+ "\n"
"""


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
