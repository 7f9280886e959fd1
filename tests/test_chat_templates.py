"""Every real chat template shipped with the pinned llama.cpp (`models/templates/*.jinja`) renders in the sandbox.

Templates that cannot render the standard conversation are listed in EXPECTED_FAILURES with the reason,
reviewed by reading the template; each of those is also rendered the way the template does support.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llamarcp.chat import ChatFormatter
from llamarcp.errors import ChatTemplateError

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import build_lib  # noqa: E402

TEMPLATES_DIR = Path(build_lib.ensure_source()) / "models" / "templates"
TEMPLATE_FILES = sorted(TEMPLATES_DIR.glob("*.jinja"))

#: Number of .jinja files in the pinned tree (models/templates also holds a README.md).
EXPECTED_TEMPLATE_COUNT = 70

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]

#: file name -> (substring of the ChatTemplateError message, why, reviewed by reading the template)
EXPECTED_FAILURES = {
    "google-gemma-2-2b-it.jinja": (
        "System role not supported",
        "Gemma 2's template calls raise_exception for any system message",
    ),
    "fireworks-ai-llama-3-firefunction-v2.jinja": (
        "'functions' is undefined",
        "FireFunction's template concatenates caller-supplied `functions` (JSON text) and `datetime` strings "
        "into its system prompt; without them jinja cannot add undefined to a string",
    ),
}

#: Templates whose output does not depend on add_generation_prompt (the [INST] turn already cues the model).
IGNORES_ADD_GENERATION_PROMPT = {
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",
    "Mistral-Small-3.2-24B-Instruct-2506.jinja",
    "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    "unsloth-mistral-Devstral-Small-2507.jinja",
}
#: Templates that close the history with eos_token instead of the generation prompt (-> the prompt's suffix).
ENDS_HISTORY_WITH_EOS = {"microsoft-Phi-3.5-mini-instruct.jinja": "<|assistant|>\n"}

BOS, EOS = "<s>", "</s>"


def _formatter(path: Path) -> ChatFormatter:
    return ChatFormatter(path.read_text(encoding="utf-8"), BOS, EOS, name=path.name)


def test_template_count_matches_directory() -> None:
    assert len(TEMPLATE_FILES) == EXPECTED_TEMPLATE_COUNT, [p.name for p in TEMPLATE_FILES]
    assert set(EXPECTED_FAILURES) <= {p.name for p in TEMPLATE_FILES}


@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=lambda p: p.name)
def test_real_template_renders_conversation(path: Path) -> None:
    formatter = _formatter(path)
    if path.name in EXPECTED_FAILURES:
        fragment, _why = EXPECTED_FAILURES[path.name]
        with pytest.raises(ChatTemplateError, match=fragment):
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
    if path.name in IGNORES_ADD_GENERATION_PROMPT:
        assert prompt == without
    elif path.name in ENDS_HISTORY_WITH_EOS:
        assert without == prompt[: -len(ENDS_HISTORY_WITH_EOS[path.name])] + EOS
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
