"""Every real chat template of the bindings' llama.cpp tree (`models/templates/*.jinja`) renders in the sandbox.

The tree is `codegen.generate.bindings_source()`: the pin, or during a bump the tree the bindings were regenerated
from. What each template is expected to do (render, refuse the standard conversation, compare with llama.cpp's
own renderer, take tools) lives in tests/data/chat_templates.json, one reviewed entry per template name, so a
bump fails naming exactly the templates that are new or gone.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llamarcp.chat import ChatFormatter
from llamarcp.errors import ChatTemplateError

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from codegen.generate import bindings_source  # noqa: E402

TEMPLATES_DIR = bindings_source() / "models" / "templates"
TEMPLATE_FILES = sorted(TEMPLATES_DIR.glob("*.jinja"))
EXPECTATIONS_FILE = Path(__file__).with_name("data") / "chat_templates.json"
#: template file name -> its reviewed expectations (the keys are explained in the file's "_comment")
EXPECTATIONS: dict[str, dict[str, Any]] = {
    name: entry
    for name, entry in json.loads(EXPECTATIONS_FILE.read_text(encoding="utf-8")).items()
    if not name.startswith("_")
}

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


def _check_preamble(ours: str, native: str) -> None:
    assert len(ours) > len(native) + 40, "expected the real template to add a preamble"


def _check_think(ours: str, native: str) -> None:
    assert "think>" in ours and "think>" not in native


def _check_system_newlines(ours: str, native: str) -> None:
    system = CONVERSATION[0]["content"]
    assert system + "\n\n" in native and system + "\n\n" not in ours


def _check_mistral_tekken(ours: str, native: str) -> None:
    assert "[INST] " in native and "[INST] " not in ours


def _check_system_in_last_user_turn(ours: str, native: str) -> None:
    system, first_user = CONVERSATION[0]["content"], CONVERSATION[1]["content"]
    assert ours.index(system) > ours.index("Paris.") and native.index(system) < native.index(first_user)


#: `native_differs` kind -> the check of that difference on (our rendering, llama.cpp's), so the file cannot
#: drift into fiction.
NATIVE_DIFFERENCE_CHECKS: dict[str, Callable[[str, str], None]] = {
    "preamble": _check_preamble,
    "think": _check_think,
    "system-newlines": _check_system_newlines,
    "mistral-tekken": _check_mistral_tekken,
    "system-in-last-user-turn": _check_system_in_last_user_turn,
}
#: key -> allowed values (None: any text)
EXPECTATION_KEYS: dict[str, set[str] | None] = {
    "raises": None,
    "why": None,
    "generation_prompt": {"appended", "ignored"},
    "history_suffix": None,
    "native": {"identical", "differs", "unsupported"},
    "native_differs": set(NATIVE_DIFFERENCE_CHECKS),
    "native_note": None,
    "native_eos": None,
    "tools": {"template", "llamarcp"},
    "tools_raises": None,
    "tools_why": None,
    "round_trip_raises": None,
    "round_trip_why": None,
}


def _expected(path: Path) -> dict[str, Any]:
    entry = EXPECTATIONS.get(path.name)
    if entry is None:
        pytest.fail(f"{path.name} has no expectations: render it, read it, and add its object to {EXPECTATIONS_FILE}")
    return entry


def _names_with(key: str, value: Any = None) -> set[str]:
    return {name for name, e in EXPECTATIONS.items() if key in e and (value is None or value in [e[key], *e[key]])}


#: Templates that cannot render the standard conversation (rendered the way they do support further below).
EXPECTED_FAILURES = _names_with("raises")
RENDERING_FILES = [p for p in TEMPLATE_FILES if p.name not in EXPECTED_FAILURES]

BOS, EOS = "<s>", "</s>"


def _formatter(path: Path) -> ChatFormatter:
    return ChatFormatter(path.read_text(encoding="utf-8"), BOS, EOS, name=path.name)


def test_every_template_has_an_expectation() -> None:
    in_tree = {p.name for p in TEMPLATE_FILES}
    assert in_tree, f"no *.jinja under {TEMPLATES_DIR}"
    new = sorted(in_tree - set(EXPECTATIONS))
    gone = sorted(set(EXPECTATIONS) - in_tree)
    assert not new and not gone, (
        f"{TEMPLATES_DIR} and {EXPECTATIONS_FILE.name} disagree: "
        f"new templates to review and add: {new}; entries of templates no longer in the tree: {gone}"
    )


def test_expectations_are_well_formed() -> None:
    for name, entry in EXPECTATIONS.items():
        assert name.endswith(".jinja"), name
        for key, value in entry.items():
            assert key in EXPECTATION_KEYS, f"{name}: unknown key {key!r}"
            allowed = EXPECTATION_KEYS[key]
            values = value if isinstance(value, list) else [value]
            assert values and all(isinstance(v, str) and v for v in values), f"{name}: {key} = {value!r}"
            assert allowed is None or set(values) <= allowed, f"{name}: {key} = {value!r}, allowed: {sorted(allowed)}"
        for raised, why in (("raises", "why"), ("tools_raises", "tools_why"), ("round_trip_raises", "round_trip_why")):
            assert (raised in entry) == (why in entry), f"{name}: {raised} and {why} go together"
        # A template that renders the conversation is compared with llama.cpp; one that cannot, is not.
        assert ("native" in entry) != ("raises" in entry), f"{name}: exactly one of native / raises"
        assert ("native_differs" in entry) == (entry.get("native") == "differs"), f"{name}: native_differs"


@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=lambda p: p.name)
def test_real_template_renders_conversation(path: Path) -> None:
    expected = _expected(path)
    formatter = _formatter(path)
    if "raises" in expected:
        with pytest.raises(ChatTemplateError, match=expected["raises"]):
            formatter.render(CONVERSATION)
        return
    prompt = formatter.render(CONVERSATION, add_generation_prompt=True)
    for message in CONVERSATION:
        assert message["content"] in prompt, (message, prompt)
    # History stays in order (system may legitimately move, e.g. Mistral puts it before the last user turn).
    first_user = prompt.index("What is the capital of France?")
    assert first_user < prompt.index("Paris.") < prompt.index("And of Italy?")
    # The generation prompt is appended after the history, never woven into it.
    without = formatter.render(CONVERSATION, add_generation_prompt=False)
    if expected.get("generation_prompt") == "ignored":
        assert prompt == without
    elif "history_suffix" in expected:
        assert without == prompt[: -len(expected["history_suffix"])] + EOS
    else:
        assert prompt.startswith(without) and prompt != without


def test_gemma2_renders_without_system_message() -> None:
    formatter = _formatter(TEMPLATES_DIR / "google-gemma-2-2b-it.jinja")
    prompt = formatter.render(CONVERSATION[1:])
    assert prompt == (
        "<s><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
        "<start_of_turn>model\nParis.<end_of_turn>\n"
        "<start_of_turn>user\nAnd of Italy?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_firefunction_renders_with_its_variables() -> None:
    formatter = _formatter(TEMPLATES_DIR / "fireworks-ai-llama-3-firefunction-v2.jinja")
    prompt = formatter.render(CONVERSATION, functions='[{"name": "get_weather"}]', datetime="2026-01-01")
    assert '[{"name": "get_weather"}]' in prompt
    assert "Today is 2026-01-01." in prompt
    assert "And of Italy?" in prompt


def test_templates_with_tools_render_the_tool_schema() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    rendered = 0
    for name in (
        "Qwen-Qwen2.5-7B-Instruct.jinja",
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
        "Qwen-Qwen3-0.6B.jinja",
    ):
        prompt = _formatter(TEMPLATES_DIR / name).render(CONVERSATION, tools=tools)
        assert "get_weather" in prompt and "Weather for a city" in prompt, name
        rendered += 1
    assert rendered == 4


def test_kimi_tool_call_round_trip_uses_template_local_lists() -> None:
    # Kimi-K2-Thinking keeps its own queue of tool-call ids with list.append/pop; that must work in the sandbox.
    formatter = _formatter(TEMPLATES_DIR / "Kimi-K2-Thinking.jinja")
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    prompt = formatter.render(messages)
    assert "get_weather" in prompt and "sunny" in prompt


def test_generation_tag_is_rendered_transparently() -> None:
    formatter = _formatter(TEMPLATES_DIR / "poolside-Laguna-XS.2.jinja")
    prompt = formatter.render(CONVERSATION)
    assert "Paris." in prompt
    assert "generation" not in prompt.replace("add_generation_prompt", "")


# --- comparison with llama.cpp's own renderer (llama_chat_apply_template) ------------------------------------
# llama.cpp does not run jinja: it recognises a template family by substrings and prints its own layout of the
# messages. Where it claims support we compare; every difference below was read in both outputs and explained.


@pytest.mark.parametrize("path", RENDERING_FILES, ids=lambda p: p.name)
def test_real_template_against_llama_cpp(path: Path) -> None:
    from llamarcp.chat.native import llama_cpp_apply_template

    expected = _expected(path)
    source = path.read_text(encoding="utf-8")
    if expected["native"] == "unsupported":
        with pytest.raises(ChatTemplateError, match="does not support this template"):
            llama_cpp_apply_template(source, CONVERSATION)
        return
    native = llama_cpp_apply_template(source, CONVERSATION)
    ours = ChatFormatter(source, "", expected.get("native_eos", "")).render(CONVERSATION)
    if expected["native"] == "identical":
        assert ours == native
        return
    assert ours != native, 'now identical: set native = "identical"'
    for message in CONVERSATION:  # both still carry the whole conversation
        assert message["content"] in native
    for kind in expected["native_differs"]:
        NATIVE_DIFFERENCE_CHECKS[kind](ours, native)


@pytest.mark.parametrize("name", sorted(_names_with("native_differs", "mistral-tekken")))
def test_mistral_tekken_matches_llama_cpp_by_name(name: str) -> None:
    from llamarcp.chat.native import llama_cpp_apply_template

    ours = ChatFormatter((TEMPLATES_DIR / name).read_text(encoding="utf-8"), "", "</s>").render(CONVERSATION)
    assert ours == llama_cpp_apply_template("mistral-v7-tekken", CONVERSATION)


#: llamarcp named format -> (llama.cpp built-in name, eos_token llama.cpp hard-codes for it)
NAMED_VS_NATIVE = {
    "chatml": ("chatml", ""),
    "llama-3": ("llama3", ""),
    "gemma3": ("gemma", ""),  # llamarcp's "gemma" is llama-cpp-python's, which drops system messages
    "mistral-instruct": ("mistral-v3", "</s>"),
    "mistral-v7": ("mistral-v7", "</s>"),
    "phi-3": ("phi3", ""),
    "zephyr": ("zephyr", "<|endoftext|>"),
    "vicuna": ("vicuna", "</s>"),
}


@pytest.mark.parametrize("name", sorted(NAMED_VS_NATIVE))
def test_named_format_matches_llama_cpp_builtin(name: str) -> None:
    from llamarcp.chat.native import llama_cpp_apply_template

    native_name, eos = NAMED_VS_NATIVE[name]
    for add in (True, False):
        ours = ChatFormatter.from_format(name, "", eos).render(CONVERSATION, add_generation_prompt=add)
        assert ours == llama_cpp_apply_template(native_name, CONVERSATION, add_generation_prompt=add)


def test_llama2_differs_from_llama_cpp_only_in_assistant_spacing() -> None:
    # Meta's published format wraps assistant replies as " {reply} </s>"; llama.cpp writes "{reply}</s>" and
    # leaves out the <s> before the first turn (the tokenizer adds it).
    from llamarcp.chat.native import llama_cpp_apply_template

    ours = ChatFormatter.from_format("llama-2", "<s>", "</s>").render(CONVERSATION)
    native = llama_cpp_apply_template("llama2-sys-bos", CONVERSATION)
    assert ours == "<s>" + native.replace("[/INST]Paris.</s>", "[/INST] Paris. </s>")


def test_llama_cpp_builtin_names_are_listed() -> None:
    from llamarcp.chat.native import llama_cpp_builtin_templates

    names = llama_cpp_builtin_templates()
    assert {"chatml", "llama3", "gemma", "mistral-v7-tekken"} <= set(names)
    assert len(names) == len(set(names)) > 40


def test_unknown_template_is_refused_by_llama_cpp() -> None:
    from llamarcp.chat.native import llama_cpp_apply_template

    with pytest.raises(ChatTemplateError, match="does not support"):
        llama_cpp_apply_template("{{ messages }} nothing llama.cpp recognises", CONVERSATION)


# --- tools reach the model with every template -----------------------------------------------------------------

from llamarcp.chat.completion import render_chat_prompt  # noqa: E402

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.mark.parametrize("path", RENDERING_FILES, ids=lambda p: p.name)
def test_tools_reach_the_prompt(path: Path) -> None:
    expected = _expected(path)
    formatter = _formatter(path)
    if "tools_raises" in expected:
        with pytest.raises(ChatTemplateError, match=expected["tools_raises"]):
            render_chat_prompt(formatter, CONVERSATION, [WEATHER])
        return
    ignores_tools = expected.get("tools") == "llamarcp"
    assert formatter.supports_tools == (not ignores_tools)
    prompt = render_chat_prompt(formatter, CONVERSATION, [WEATHER])
    assert "get_weather" in prompt and "Weather for a city" in prompt
    if ignores_tools:
        assert "<tool_call>" in prompt  # llamarcp's own instructions, in the system message
        assert "You are a terse assistant." in prompt
    else:
        assert prompt == formatter.render(CONVERSATION, tools=[WEATHER])


def test_tool_instructions_go_to_the_first_user_turn_when_system_is_refused() -> None:
    formatter = _formatter(TEMPLATES_DIR / "google-gemma-2-2b-it.jinja")
    assert not formatter.supports_tools
    prompt = render_chat_prompt(formatter, CONVERSATION[1:], [WEATHER])
    assert prompt.startswith("<s><start_of_turn>user\nYou can call these tools")
    assert prompt.index("get_weather") < prompt.index("What is the capital of France?")


TOOL_ROUND_TRIP = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            # OpenAI clients send arguments as JSON text; the id has the 9-character shape Mistral requires.
            {
                "id": "call12345",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "sunny"},
    {"role": "assistant", "content": "It is sunny."},
    {"role": "user", "content": "Thanks"},
]


@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=lambda p: p.name)
def test_tool_call_round_trip(path: Path) -> None:
    expected = _expected(path)
    formatter = _formatter(path)
    if "round_trip_raises" in expected:
        with pytest.raises(ChatTemplateError, match=expected["round_trip_raises"]):
            formatter.render(TOOL_ROUND_TRIP, tools=[WEATHER])
        return
    prompt = formatter.render(TOOL_ROUND_TRIP, tools=[WEATHER])
    assert "Paris" in prompt and "sunny" in prompt and "It is sunny." in prompt
    # Arguments reach the model as JSON (or the template's own key/value layout), never double-encoded or as a
    # Python dict repr: the JSON text was parsed for templates that want an object.
    assert '\\"city\\"' not in prompt
    assert "{'city': 'Paris'}" not in prompt
