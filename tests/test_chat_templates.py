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


# --- comparison with llama.cpp's own renderer (llama_chat_apply_template) ------------------------------------
# llama.cpp does not run jinja: it recognises a template family by substrings and prints its own layout of the
# messages. Where it claims support we compare; every difference below was read in both outputs and explained.

#: Rendered byte-for-byte the same by llamarcp (jinja, bos_token="") and by llama_chat_apply_template.
NATIVE_IDENTICAL = {
    "Bielik-11B-v3.0-Instruct.jinja",
    "ByteDance-Seed-OSS.jinja",
    "Kimi-K2-Instruct.jinja",
    "LFM2-8B-A1B.jinja",
    "LFM2.5-8B-A1B.jinja",
    "LFM2.5-Instruct.jinja",
    "MiMo-VL.jinja",
    "Qwen-Qwen2.5-7B-Instruct.jinja",
    "Qwen-Qwen3-0.6B.jinja",
    "Qwen3-Coder.jinja",
    "ibm-granite-granite-3.3-2B-Instruct.jinja",
    "ibm-granite-granite-4.0.jinja",
    "ibm-granite-granite-4.1.jinja",
    "llama-cpp-rwkv-world.jinja",
    "microsoft-Phi-3.5-mini-instruct.jinja",
    "moonshotai-Kimi-K2.jinja",
    "openbmb-MiniCPM5-1B.jinja",
}

_PREAMBLE = "the real template adds its own system preamble (date, knowledge cutoff, safety or tool instructions)"
_THINK = "the real template adds reasoning markers (<think>, </think>) that llama.cpp's layout omits"
_MISTRAL_TEKKEN = (
    "llama.cpp detects this as 'mistral-v7' (a space after [INST]); the template is the tekken variant without "
    "spaces, which equals llama.cpp's 'mistral-v7-tekken' (see test_mistral_tekken_matches_llama_cpp_by_name)"
)
_DEEPSEEK = "llama.cpp puts '\\n\\n' after the system prompt; " + _THINK

#: file -> why llama.cpp's rendering differs from the real template's.
NATIVE_DIFFERENCES = {
    "Cohere2MoE.jinja": _PREAMBLE,
    "CohereForAI-c4ai-command-r-plus-tool_use.jinja": _PREAMBLE,
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja": _PREAMBLE,
    "GLM-4.6.jinja": _THINK + "; llama.cpp also ends with a newline after <|assistant|>",
    "GLM-4.7-Flash.jinja": _THINK + "; llama.cpp also puts newlines after the role tags",
    "HuggingFaceTB-SmolLM3-3B.jinja": _PREAMBLE,
    "Kimi-K2-Thinking.jinja": _THINK,
    "Mistral-Small-3.2-24B-Instruct-2506.jinja": _MISTRAL_TEKKEN,
    "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.jinja": _THINK,
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": _PREAMBLE,
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": _PREAMBLE,
    "Qwen-QwQ-32B.jinja": _THINK,
    "Qwen3.5-4B.jinja": _THINK,
    "StepFun3.5-Flash.jinja": _THINK,
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja": _DEEPSEEK,
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja": _DEEPSEEK,
    "deepseek-ai-DeepSeek-V3.1.jinja": _DEEPSEEK,
    "deepseek-ai-DeepSeek-V3.2.jinja": _DEEPSEEK,
    "deepseek-ai-DeepSeek-V4-Flash-0731.jinja": _DEEPSEEK,
    "deepseek-ai-DeepSeek-V4.jinja": _DEEPSEEK,
    "inclusionai-ling-3.0-flash.jinja": _THINK + " and a 'detailed thinking on' system line",
    "llama-cpp-deepseek-r1.jinja": _DEEPSEEK + "; this template also closes user turns with end-of-sentence",
    "meetkai-functionary-medium-v3.1.jinja": _PREAMBLE,
    "meetkai-functionary-medium-v3.2.jinja": _PREAMBLE,
    "meta-llama-Llama-3.1-8B-Instruct.jinja": _PREAMBLE,
    "meta-llama-Llama-3.2-3B-Instruct.jinja": _PREAMBLE,
    "meta-llama-Llama-3.3-70B-Instruct.jinja": _PREAMBLE,
    "mistralai-Ministral-3-14B-Reasoning-2512.jinja": _MISTRAL_TEKKEN,
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": (
        "the real template moves the system prompt into the last user turn; llama.cpp puts it in the first"
    ),
    "openai-gpt-oss-120b.jinja": _PREAMBLE + " and moves the system message to a developer turn",
    "unsloth-Apriel-1.5.jinja": _PREAMBLE,
    "unsloth-mistral-Devstral-Small-2507.jinja": _MISTRAL_TEKKEN,
    "upstage-Solar-Open-100B.jinja": _PREAMBLE,
}

#: llama_chat_apply_template returns -1: no built-in layout recognises these templates.
NATIVE_UNSUPPORTED = {
    "Apertus-8B-Instruct.jinja",
    "Apriel-1.6-15b-Thinker-fixed.jinja",
    "GigaChat3-10B-A1.8B.jinja",
    "GigaChat3.1-10B-A1.8B.jinja",
    "Kimi-K3.jinja",
    "MiniMax-M1.jinja",
    "MiniMax-M2.jinja",
    "MiniMax-M3.jinja",
    "NVIDIA-Nemotron-Nano-v2.jinja",
    "Reka-Edge.jinja",
    "Spark2.5.jinja",
    "google-gemma-4-31B-it-interleaved.jinja",
    "google-gemma-4-31B-it.jinja",
    "muse-glimmer.jinja",
    "poolside-Laguna-S-2.1.jinja",
    "poolside-Laguna-XS-2.1.jinja",
    "poolside-Laguna-XS.2.jinja",
    "tencent-Hy3.jinja",
}

#: eos_token to render with where llama.cpp hard-codes the model's end-of-turn text.
NATIVE_EOS = {name: "</s>" for name in NATIVE_DIFFERENCES if "mistral" in name.lower() or "Devstral" in name}


def test_native_classification_covers_every_template() -> None:
    groups = [NATIVE_IDENTICAL, set(NATIVE_DIFFERENCES), NATIVE_UNSUPPORTED, set(EXPECTED_FAILURES)]
    assert sum(len(g) for g in groups) == len(TEMPLATE_FILES)
    assert set().union(*groups) == {p.name for p in TEMPLATE_FILES}


@pytest.mark.parametrize("path", [p for p in TEMPLATE_FILES if p.name not in EXPECTED_FAILURES], ids=lambda p: p.name)
def test_real_template_against_llama_cpp(path: Path) -> None:
    from llamarcp.chat.native import llama_cpp_apply_template

    source = path.read_text(encoding="utf-8")
    if path.name in NATIVE_UNSUPPORTED:
        with pytest.raises(ChatTemplateError, match="does not support this template"):
            llama_cpp_apply_template(source, CONVERSATION)
        return
    native = llama_cpp_apply_template(source, CONVERSATION)
    ours = ChatFormatter(source, "", NATIVE_EOS.get(path.name, "")).render(CONVERSATION)
    if path.name in NATIVE_IDENTICAL:
        assert ours == native
    else:
        assert path.name in NATIVE_DIFFERENCES
        assert ours != native, "now identical: move it to NATIVE_IDENTICAL"
        for message in CONVERSATION:  # both still carry the whole conversation
            assert message["content"] in native
        _assert_documented_difference(NATIVE_DIFFERENCES[path.name], ours, native)


def _assert_documented_difference(reason: str, ours: str, native: str) -> None:
    """Check the stated reason on the two renderings, so the table cannot drift into fiction."""
    system, first_user = CONVERSATION[0]["content"], CONVERSATION[1]["content"]
    if reason.startswith(_PREAMBLE):
        assert len(ours) > len(native) + 40, "expected the real template to add a preamble"
    if _THINK in reason:
        assert "think>" in ours and "think>" not in native
    if reason.startswith("llama.cpp puts '\\n\\n' after the system prompt"):
        assert system + "\n\n" in native and system + "\n\n" not in ours
    if reason == _MISTRAL_TEKKEN:
        assert "[INST] " in native and "[INST] " not in ours
    if "last user turn" in reason:
        assert ours.index(system) > ours.index("Paris.") and native.index(system) < native.index(first_user)


@pytest.mark.parametrize(
    "name",
    [
        "Mistral-Small-3.2-24B-Instruct-2506.jinja",
        "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
        "unsloth-mistral-Devstral-Small-2507.jinja",
    ],
)
def test_mistral_tekken_matches_llama_cpp_by_name(name: str) -> None:
    from llamarcp.chat.native import llama_cpp_apply_template

    ours = ChatFormatter((TEMPLATES_DIR / name).read_text(encoding="utf-8"), "", "</s>").render(CONVERSATION)
    assert ours == llama_cpp_apply_template("mistral-v7-tekken", CONVERSATION)


#: llamarcp named format -> (llama.cpp built-in name, eos_token llama.cpp hard-codes for it)
NAMED_VS_NATIVE = {
    "chatml": ("chatml", ""),
    "llama-3": ("llama3", ""),
    "gemma": ("gemma", ""),
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

#: Templates that ignore OpenAI-style `tools`; llamarcp describes the tools in the system message for them.
IGNORES_TOOLS = {
    "HuggingFaceTB-SmolLM3-3B.jinja",  # takes `xml_tools` instead
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
    "deepseek-ai-DeepSeek-V3.1.jinja",
    "llama-cpp-rwkv-world.jinja",
    "microsoft-Phi-3.5-mini-instruct.jinja",
}

#: file -> (error fragment, why) for templates that cannot take OpenAI-style tools at all.
TOOLS_FAILURES = {
    "CohereForAI-c4ai-command-r-plus-tool_use.jinja": (
        "has no attribute 'description'",
        "expects Cohere's own tool format (name/description/parameter_definitions at top level)",
    ),
}


@pytest.mark.parametrize("path", [p for p in TEMPLATE_FILES if p.name not in EXPECTED_FAILURES], ids=lambda p: p.name)
def test_tools_reach_the_prompt(path: Path) -> None:
    formatter = _formatter(path)
    if path.name in TOOLS_FAILURES:
        with pytest.raises(ChatTemplateError, match=TOOLS_FAILURES[path.name][0]):
            render_chat_prompt(formatter, CONVERSATION, [WEATHER])
        return
    assert formatter.supports_tools == (path.name not in IGNORES_TOOLS)
    prompt = render_chat_prompt(formatter, CONVERSATION, [WEATHER])
    assert "get_weather" in prompt and "Weather for a city" in prompt
    if path.name in IGNORES_TOOLS:
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

#: file -> (error fragment, why) for templates that cannot render an OpenAI tool-call round trip.
ROUND_TRIP_FAILURES = {
    **TOOLS_FAILURES,
    "fireworks-ai-llama-3-firefunction-v2.jinja": EXPECTED_FAILURES["fireworks-ai-llama-3-firefunction-v2.jinja"],
    "google-gemma-2-2b-it.jinja": ("roles must alternate", "Gemma 2 has no tool role"),
}


@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=lambda p: p.name)
def test_tool_call_round_trip(path: Path) -> None:
    formatter = _formatter(path)
    if path.name in ROUND_TRIP_FAILURES:
        with pytest.raises(ChatTemplateError, match=ROUND_TRIP_FAILURES[path.name][0]):
            formatter.render(TOOL_ROUND_TRIP, tools=[WEATHER])
        return
    prompt = formatter.render(TOOL_ROUND_TRIP, tools=[WEATHER])
    assert "Paris" in prompt and "sunny" in prompt and "It is sunny." in prompt
    # Arguments reach the model as JSON (or the template's own key/value layout), never double-encoded or as a
    # Python dict repr: the JSON text was parsed for templates that want an object.
    assert '\\"city\\"' not in prompt
    assert "{'city': 'Paris'}" not in prompt
