"""GBNF grammars (llama.cpp's grammar format), shaped like llama-cpp-python's `LlamaGrammar`.

The text is parsed by llama.cpp when a completion uses it (parsing needs the model's vocab); a grammar that
does not parse raises `GrammarError` there. `from_string(..., verify=...)` can check it early against a Llama.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llamarcp.errors import ChatMessageError, GrammarError
from llamarcp.validate.grammar import check_grammar

__all__ = ["JSON_GBNF", "LlamaGrammar"]


class LlamaGrammar:
    """GBNF text plus its start symbol."""

    def __init__(self, text: str, root: str = "root") -> None:
        if not isinstance(text, str):
            raise TypeError("grammar text must be str")
        check_grammar(text, root)  # refuse shapes that would crash or stall llama.cpp, before any model sees it
        self.text = text
        self.root = root

    @classmethod
    def from_string(
        cls, grammar: str, verbose: bool = False, *, root: str = "root", verify: Any = None
    ) -> LlamaGrammar:
        """Grammar from GBNF text; pass `verify=llama` to parse it now against that model's vocab."""
        result = cls(grammar, root)
        if verify is not None:
            result.check(verify)
        return result

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], verbose: bool = False, *, root: str = "root") -> LlamaGrammar:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise GrammarError(f"cannot read grammar file {path}: {exc}") from exc
        return cls(text, root)

    @classmethod
    def from_json_schema(cls, json_schema: str | Mapping[str, Any], verbose: bool = False) -> LlamaGrammar:
        """Grammar accepting the JSON values a JSON Schema (text or dict) describes (llamarcp's common subset,
        see `llamarcp.chat.grammars.json_schema_grammar`); a schema that is not JSON raises GrammarError."""
        from llamarcp.chat.grammars import json_schema_grammar

        if isinstance(json_schema, (str, bytes)):
            try:
                schema = json.loads(json_schema)
            except ValueError as exc:
                raise GrammarError(f"the JSON schema is not valid JSON: {exc}") from exc
        else:
            schema = json_schema
        if not isinstance(schema, Mapping):
            raise GrammarError(f"a JSON schema must be an object, got {type(schema).__name__}")
        try:
            return cls(json_schema_grammar(schema))
        except ChatMessageError as exc:  # the converter's error names the offending keyword
            raise GrammarError(str(exc)) from exc

    def check(self, llama: Any) -> None:
        """Parse with llama.cpp against `llama`'s vocab; raises GrammarError when it does not parse."""
        from llamarcp.sampling import grammar_sampler

        grammar_sampler(llama._model, self.text, self.root).close()

    def __repr__(self) -> str:
        return f"LlamaGrammar(root={self.root!r}, {len(self.text)} chars)"


#: JSON objects with string/number/literal/array/object values, numbers kept short so output stays bounded.
JSON_GBNF = r"""
root   ::= obj
obj    ::= "{" sp ( member ( "," sp member )* )? "}"
member ::= str sp ":" sp val sp
val    ::= obj | arr | str | num | "true" | "false" | "null"
arr    ::= "[" sp ( val sp ( "," sp val sp )* )? "]"
str    ::= "\"" ( [^"\\\x00-\x1f] | "\\" ["\\/bfnrt] )* "\""
num    ::= "-"? ( "0" | [1-9] [0-9]{0,8} ) ( "." [0-9]{1,8} )?
sp     ::= " "?
"""
