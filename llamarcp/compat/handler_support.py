"""What llama-cpp-python's chat handlers share: the completion keywords they pass on and their grammars."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llamarcp.compat.grammar import JSON_GBNF, LlamaGrammar

__all__ = ["COMPLETION_KEYS", "grammar_for", "schema_grammar"]

#: The keywords a handler passes from the chat call to `create_completion`.
COMPLETION_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "seed",
    "max_tokens",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "mirostat_mode",
    "mirostat_tau",
    "mirostat_eta",
    "model",
    "logits_processor",
    "logit_bias",
)


def grammar_for(response_format: Any, tools: Any, tool_choice: Any) -> tuple[Any, Any]:
    """(grammar, forced tool) from response_format / a named tool_choice, as llama-cpp-python's handlers do."""
    if isinstance(tool_choice, Mapping) and tools:
        name = (tool_choice.get("function") or {}).get("name")
        tool = next((t for t in tools if t.get("function", {}).get("name") == name), None)
        if tool is None:
            raise ValueError(f"tool_choice names {name!r}, which is not one of the tools")
        return schema_grammar(tool["function"].get("parameters") or {"type": "object"}), tool
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_object":
        schema = response_format.get("schema")
        return (schema_grammar(schema) if isinstance(schema, Mapping) else LlamaGrammar.from_string(JSON_GBNF)), None
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
        wrapper = response_format.get("json_schema") or {}
        schema = wrapper.get("schema") if isinstance(wrapper, Mapping) else None
        if isinstance(schema, Mapping):
            return schema_grammar(schema), None
    return None, None


def schema_grammar(schema: Mapping[str, Any]) -> LlamaGrammar:
    return LlamaGrammar.from_json_schema(dict(schema))
