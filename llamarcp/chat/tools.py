"""Recognise tool calls in generated text and turn them into OpenAI `tool_calls` entries.

Models write tool calls in their family's own syntax; the common ones are handled:
- Hermes / Qwen / many fine-tunes: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (one or more)
- Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` or `[TOOL_CALLS]name[ARGS]{...}`
- Llama 3.x: the whole reply is `{"name": ..., "parameters": {...}}` (optionally after `<|python_tag|>`)
- FireFunction: `functools[{"name": ..., "arguments": {...}}]`
- llamarcp's own forced-call grammar: the whole reply is `{"name": ..., "arguments": {...}}`
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["parse_tool_calls", "tool_names"]

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_MISTRAL_NAMED = re.compile(r"\[TOOL_CALLS\]\s*([A-Za-z0-9_.\-]+)\s*\[ARGS\]\s*", re.DOTALL)


def tool_names(tools: Sequence[Mapping[str, Any]] | None) -> set[str]:
    names = set()
    for tool in tools or ():
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def _call(name: str, arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, str):
        text = arguments
    else:
        text = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": text}}


def _from_object(obj: Any, known: set[str]) -> dict[str, Any] | None:
    if not isinstance(obj, Mapping):
        return None
    if isinstance(obj.get("function"), Mapping) and "name" not in obj:
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or name not in known:
        return None
    for key in ("arguments", "parameters", "args"):
        if key in obj:
            return _call(name, obj[key])
    return _call(name, {})


def _decode_prefix(text: str) -> tuple[Any, int] | None:
    try:
        return json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None


def parse_tool_calls(text: str, tools: Sequence[Mapping[str, Any]] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Split generated `text` into (content, tool_calls). No recognised call: (text, []).

    Only calls to the function names in `tools` count; without tools nothing is a call.
    """
    known = tool_names(tools)
    if not known:
        return text, []
    stripped = text.strip()

    tagged = _TAGGED.findall(stripped)
    if tagged:
        calls = []
        for body in tagged:
            decoded = _decode_prefix(body)
            call = _from_object(decoded[0], known) if decoded else None
            if call is None:
                return text, []
            calls.append(call)
        content = stripped[: stripped.find("<tool_call>")].strip()
        return content, calls

    if "[TOOL_CALLS]" in stripped:
        content = stripped[: stripped.find("[TOOL_CALLS]")].strip()
        named = list(_MISTRAL_NAMED.finditer(stripped))
        if named:
            calls = []
            for match in named:
                decoded = _decode_prefix(stripped[match.end() :])
                call = _from_object({"name": match.group(1), "arguments": decoded[0]}, known) if decoded else None
                if call is None:
                    return text, []
                calls.append(call)
            return content, calls
        decoded = _decode_prefix(stripped[stripped.find("[TOOL_CALLS]") + len("[TOOL_CALLS]") :].lstrip())
        if decoded:
            items = decoded[0] if isinstance(decoded[0], list) else [decoded[0]]
            calls = [c for c in (_from_object(item, known) for item in items) if c is not None]
            if calls and len(calls) == len(items):
                return content, calls
        return text, []

    for prefix in ("functools", "<|python_tag|>", ""):
        if not stripped.startswith(prefix):
            continue
        body = stripped[len(prefix) :].strip()
        decoded = _decode_prefix(body)
        if decoded is None or body[decoded[1] :].strip():
            continue
        items = decoded[0] if isinstance(decoded[0], list) else [decoded[0]]
        calls = [c for c in (_from_object(item, known) for item in items) if c is not None]
        if calls and len(calls) == len(items):
            return "", calls
    return text, []
