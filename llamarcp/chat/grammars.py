"""GBNF grammars that constrain chat output: any JSON object, a JSON Schema subset, and forced tool calls."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from llamarcp.errors import ChatMessageError

__all__ = ["JSON_OBJECT_GRAMMAR", "json_schema_grammar", "tool_call_grammar"]

# Shared JSON building blocks. Whitespace is bounded so a sampler cannot wander into endless blank output.
_JSON_RULES = r"""
json-value   ::= json-object | json-array | json-string | json-number | json-literal
json-object  ::= "{" json-ws ( json-member ( "," json-ws json-member )* )? "}" json-ws
json-member  ::= json-string ":" json-ws json-value
json-array   ::= "[" json-ws ( json-value ( "," json-ws json-value )* )? "]" json-ws
json-string  ::= "\"" json-char* "\"" json-ws
json-char    ::= [^"\\\x00-\x1F\x7F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )
json-number  ::= json-int ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )? json-ws
json-int     ::= "-"? ( "0" | [1-9] [0-9]{0,15} )
json-integer ::= json-int json-ws
json-literal ::= ( "true" | "false" | "null" ) json-ws
json-boolean ::= ( "true" | "false" ) json-ws
json-null    ::= "null" json-ws
json-ws      ::= ( " " | "\n" [ \t]{0,8} )?
""".strip()

#: `response_format={"type": "json_object"}`: one JSON object, nothing before or after it.
JSON_OBJECT_GRAMMAR = "root ::= json-object\n" + _JSON_RULES

_PRIMITIVES = {
    "string": "json-string",
    "number": "json-number",
    "integer": "json-integer",
    "boolean": "json-boolean",
    "null": "json-null",
}


def _literal(value: Any) -> str:
    """A GBNF string literal matching `value` serialized as compact JSON."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(text, ensure_ascii=False)


class _SchemaConverter:
    """Translates the common JSON Schema subset (type, properties, required, items, enum, const, anyOf/oneOf,
    string min/maxLength, $ref to $defs/definitions) into GBNF rules; anything unrecognised accepts any JSON value."""

    def __init__(self, root_schema: Mapping[str, Any]) -> None:
        self.root = root_schema
        self.rules: dict[str, str] = {}
        self._refs: dict[str, str] = {}

    def _new_rule(self, hint: str, body: str) -> str:
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", hint).strip("-").lower() or "rule"
        if base.startswith("json-") or base == "root":
            base = "s-" + base
        name, n = base, 1
        while name in self.rules:
            n += 1
            name = f"{base}-{n}"
        self.rules[name] = body
        return name

    def _resolve(self, ref: str) -> Mapping[str, Any]:
        if not ref.startswith("#/"):
            raise ChatMessageError(f"JSON schema $ref {ref!r} is not supported (only local '#/...' references)")
        node: Any = self.root
        for part in ref[2:].split("/"):
            if not isinstance(node, Mapping) or part not in node:
                raise ChatMessageError(f"JSON schema $ref {ref!r} does not resolve")
            node = node[part]
        if not isinstance(node, Mapping):
            raise ChatMessageError(f"JSON schema $ref {ref!r} does not point to a schema")
        return node

    def visit(self, schema: Any, hint: str, depth: int = 0) -> str:
        if depth > 64:
            raise ChatMessageError("JSON schema nests too deeply (more than 64 levels)")
        if schema is True or schema == {} or not isinstance(schema, Mapping):
            return "json-value"
        if "$ref" in schema:
            ref = schema["$ref"]
            if ref not in self._refs:
                name = self._new_rule(ref.rsplit("/", 1)[-1], "json-value")  # placeholder for recursion
                self._refs[ref] = name
                self.rules[name] = self.visit(self._resolve(ref), name, depth + 1)
            return self._refs[ref]
        if "const" in schema:
            return f"{_literal(schema['const'])} json-ws"
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise ChatMessageError("JSON schema 'enum' must be a non-empty list")
            return "( " + " | ".join(_literal(v) for v in values) + " ) json-ws"
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [self.visit(s, f"{hint}-{i}", depth + 1) for i, s in enumerate(schema[key])]
                return "( " + " | ".join(options) + " )"
        kind = schema.get("type")
        if isinstance(kind, list):
            options = [self.visit({**schema, "type": k}, f"{hint}-{k}", depth + 1) for k in kind]
            return "( " + " | ".join(options) + " )"
        if kind == "string" and ("maxLength" in schema or "minLength" in schema):
            low = int(schema.get("minLength", 0))
            high = schema.get("maxLength")
            bounds = f"{low}," + (str(int(high)) if high is not None else "")
            if low < 0 or (high is not None and int(high) < low):
                raise ChatMessageError("JSON schema string bounds must satisfy 0 <= minLength <= maxLength")
            return f'"\\"" json-char{{{bounds}}} "\\"" json-ws'
        if kind in _PRIMITIVES:
            return _PRIMITIVES[kind]
        if kind == "array":
            items = self.visit(schema.get("items", True), f"{hint}-item", depth + 1)
            item = self._new_rule(f"{hint}-item", items)
            return f'"[" json-ws ( {item} ( "," json-ws {item} )* )? "]" json-ws'
        if kind == "object" or "properties" in schema:
            return self._object(schema, hint, depth)
        return "json-value"

    def _object(self, schema: Mapping[str, Any], hint: str, depth: int) -> str:
        properties = schema.get("properties") or {}
        if not isinstance(properties, Mapping):
            raise ChatMessageError("JSON schema 'properties' must be an object")
        if not properties:
            return "json-object"
        required = set(schema.get("required") or [])
        # Properties come in declared order; required ones must appear, optional ones may be left out.
        parts: list[tuple[str, bool]] = []
        for key, sub in properties.items():
            value = self._new_rule(f"{hint}-{key}", self.visit(sub, f"{hint}-{key}", depth + 1))
            parts.append((f'{_literal(key)} json-ws ":" json-ws {value}', key in required))
        body = self._sequence(parts, hint)
        return f'"{{" json-ws {body} "}}" json-ws'

    def _sequence(self, parts: list[tuple[str, bool]], hint: str) -> str:
        # Emit "a , b , c" where optional members may be skipped without leaving stray commas:
        # rule_i = member_i ( "," rest_{i+1} )?  for each possible first member, built back to front.
        if all(req for _, req in parts):
            return ' "," json-ws '.join(member for member, _ in parts)
        tails: list[str] = [""] * (len(parts) + 1)
        for i in range(len(parts) - 1, -1, -1):
            member, _ = parts[i]
            later = list(range(i + 1, len(parts)))
            options = []
            for j in later:
                options.append(tails[j])
                if parts[j][1]:
                    break  # a required member cannot be skipped
            must_follow = any(parts[j][1] for j in later)
            body = member
            if options:
                body += f' ( "," json-ws ( {" | ".join(options)} ) )' + ("" if must_follow else "?")
            tails[i] = self._new_rule(f"{hint}-from-{i}", body)
        starts = []
        for i, (_, req) in enumerate(parts):
            starts.append(tails[i])
            if req:
                break
        else:
            return f"( {' | '.join(starts)} )?"
        return f"( {' | '.join(starts)} )"


def json_schema_grammar(schema: Mapping[str, Any]) -> str:
    """GBNF for JSON matching `schema` (a practical subset of JSON Schema; unknown keywords accept any value)."""
    if not isinstance(schema, Mapping):
        raise ChatMessageError("JSON schema must be an object")
    converter = _SchemaConverter(schema)
    root = converter.visit(schema, "root")
    lines = [f"root ::= {root}"]
    lines += [f"{name} ::= {body}" for name, body in converter.rules.items()]
    return "\n".join(lines) + "\n" + _JSON_RULES


def tool_call_grammar(tools: Sequence[Mapping[str, Any]]) -> str:
    """GBNF for exactly one call `{"name": "<tool>", "arguments": {...}}` to one of `tools` (OpenAI shape),
    with the arguments constrained by each tool's `parameters` schema."""
    converter = _SchemaConverter({})
    alternatives = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise ChatMessageError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}")
        params = function.get("parameters") or {"type": "object"}
        converter.root = params
        converter._refs = {}
        args = converter.visit(params, f"{function['name']}-args")
        if args == "json-value":
            args = "json-object"
        alternatives.append(
            f'"{{" json-ws "\\"name\\"" json-ws ":" json-ws {_literal(function["name"])} json-ws "," json-ws '
            f'"\\"arguments\\"" json-ws ":" json-ws {args} "}}" json-ws'
        )
    if not alternatives:
        raise ChatMessageError("tools must not be empty")
    lines = ["root ::= " + " | ".join(f"( {a} )" for a in alternatives)]
    lines += [f"{name} ::= {body}" for name, body in converter.rules.items()]
    return "\n".join(lines) + "\n" + _JSON_RULES
