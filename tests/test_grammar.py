"""LlamaGrammar: GBNF text and its root, read from strings and files, checked against a model's vocab."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llamarcp.errors import GrammarError
from llamarcp.grammar import JSON_GBNF, LlamaGrammar


def test_from_string_and_file(tmp_path: Path) -> None:
    grammar = LlamaGrammar.from_string('root ::= "yes" | "no"')
    assert grammar.root == "root" and "yes" in grammar.text
    path = tmp_path / "g.gbnf"
    path.write_text("start ::= [0-9]+\n", encoding="utf-8")
    loaded = LlamaGrammar.from_file(path, root="start")
    assert loaded.text.startswith("start") and loaded.root == "start"
    assert "LlamaGrammar(root='start'" in repr(loaded)


def test_unreadable_file_and_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(GrammarError, match="cannot read"):
        LlamaGrammar.from_file(tmp_path / "missing.gbnf")
    (tmp_path / "bad.gbnf").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(GrammarError, match="cannot read"):
        LlamaGrammar.from_file(tmp_path / "bad.gbnf")
    with pytest.raises(TypeError):
        LlamaGrammar(b"root ::= x")  # type: ignore[arg-type]


def test_verify_parses_against_the_vocab(tiny_llama: Any) -> None:
    LlamaGrammar.from_string(JSON_GBNF, verify=tiny_llama)
    with pytest.raises(GrammarError):
        LlamaGrammar.from_string("root ::= undefined_rule", verify=tiny_llama)
    with pytest.raises(GrammarError):
        LlamaGrammar('root ::= "a"', root="nope").check(tiny_llama)


def test_json_grammar_constrains_output(tiny_llama: Any) -> None:
    import json

    out = tiny_llama("Data:", max_tokens=40, temperature=0, grammar=LlamaGrammar(JSON_GBNF))["choices"][0]["text"]
    if out.endswith("}"):
        assert isinstance(json.loads(out), dict)
    else:  # cut by max_tokens: still a prefix the grammar allows
        assert out.startswith("{")
