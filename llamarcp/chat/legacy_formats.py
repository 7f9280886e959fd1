"""The older named chat formats llama-cpp-python accepts as `chat_format=` (qwen, baichuan, openchat, ...).

Each is registered in `CHAT_FORMATS` like llamarcp's own formats, as a small jinja template rendered in the same
sandbox. They follow each model family's published prompt layout; where llama-cpp-python's hand-built prompt
deviates from it (a dropped assistant role in saiga, a doubled colon in intel, OpenChat's doubled end-of-turn),
the published layout is used. Messages of roles a format has no place for (tool, function) are left out, as
llama-cpp-python does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from llamarcp.chat.templates import ChatFormat, register_chat_format

__all__ = ["LEGACY_FORMATS"]


@dataclass(frozen=True)
class _Layout:
    """A turn-based prompt: optional system block, user/assistant turns wrapped in markers, a generation cue."""

    name: str
    system: tuple[str, str]  # text before / after the system message content
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str
    stop: tuple[str, ...] = ()
    default_system: str = ""  # used when the conversation has no system message
    always_system: bool = False  # emit the system block even when its content is empty
    description: str = ""


def _lit(text: str) -> str:
    """A jinja string literal for `text` (JSON's escapes are a subset jinja's lexer reads)."""
    return json.dumps(text, ensure_ascii=False)


def _template(layout: _Layout) -> str:
    sys_before, sys_after = layout.system
    parts = [
        "{%- set ns = namespace(sys=none) -%}",
        "{%- for m in messages -%}{%- if m.role == 'system' and ns.sys is none -%}",
        "{%- set ns.sys = m.content if m.content is string else '' -%}{%- endif -%}{%- endfor -%}",
        f"{{%- set sys = ns.sys if ns.sys else {_lit(layout.default_system)} -%}}",
        f"{{%- if sys or {str(layout.always_system).lower()} -%}}",
        f"{{{{ {_lit(sys_before)} ~ sys ~ {_lit(sys_after)} }}}}{{%- endif -%}}",
        "{%- for m in messages -%}{%- set text = m.content if m.content is string else '' -%}",
        f"{{%- if m.role == 'user' -%}}{{{{ {_lit(layout.user[0])} ~ text ~ {_lit(layout.user[1])} }}}}",
        "{%- elif m.role == 'assistant' -%}",
        f"{{{{ {_lit(layout.assistant[0])} ~ text ~ {_lit(layout.assistant[1])} }}}}",
        "{%- endif -%}{%- endfor -%}",
        f"{{%- if add_generation_prompt -%}}{{{{ {_lit(layout.generation)} }}}}{{%- endif -%}}",
    ]
    return "".join(parts)


_LAYOUTS = (
    _Layout(
        "qwen",
        ("<|im_start|>system\n", "<|im_end|>\n"),
        ("<|im_start|>user\n", "<|im_end|>\n"),
        ("<|im_start|>assistant\n", "<|im_end|>\n"),
        "<|im_start|>assistant\n",
        ("<|im_end|>", "<|endoftext|>"),
        default_system="You are a helpful assistant.",
        description="Qwen (1.x) ChatML with a default system message",
    ),
    _Layout(
        "oasst_llama",
        ("[INST] <<SYS>>\n", "\n<</SYS>>\n\n"),
        ("<|prompter|>", "</s>"),
        ("<|assistant|>", "</s>"),
        "<|assistant|>",
        always_system=True,
        description="OpenAssistant on Llama: <|prompter|> / <|assistant|>",
    ),
    _Layout(
        "baichuan-2",
        ("", ""),
        ("<reserved_106>", ""),
        ("<reserved_107>", ""),
        "<reserved_107>",
        description="Baichuan 2 chat",
    ),
    _Layout(
        "baichuan",
        ("", ""),
        ("<reserved_102>", ""),
        ("<reserved_103>", ""),
        "<reserved_103>",
        description="Baichuan (1) chat",
    ),
    _Layout(
        "openbuddy",
        ("", "\n\n"),
        ("User: ", "\n"),
        ("Assistant: ", "\n"),
        "Assistant:",
        ("\nUser:",),
        default_system="You are a helpful, honest and harmless assistant named Buddy, talking to a human User.",
        description="OpenBuddy User:/Assistant:",
    ),
    _Layout(
        "redpajama-incite",
        ("", "\n"),
        ("<human>: ", "\n"),
        ("<bot>: ", "\n"),
        "<bot>:",
        ("<human>",),
        description="RedPajama-INCITE chat <human>:/<bot>:",
    ),
    _Layout(
        "snoozy",
        ("### Instruction:\n", "\n"),
        ("### Prompt: ", "\n"),
        ("### Response: ", "\n"),
        "### Response:",
        ("###",),
        default_system="Answer the question, complete the task or continue the conversation below, as fits.",
        description="GPT4All Snoozy ### Instruction/### Prompt/### Response",
    ),
    _Layout(
        "phind",
        ("### System Prompt\n", "\n\n"),
        ("### User Message\n", "\n\n"),
        ("### Assistant\n", "\n\n"),
        "### Assistant\n",
        ("### User Message",),
        default_system="You are an intelligent programming assistant.",
        description="Phind CodeLlama ### System Prompt/### User Message/### Assistant",
    ),
    _Layout(
        "intel",
        ("### System:\n", "\n"),
        ("### User:\n", "\n"),
        ("### Assistant:\n", "\n"),
        "### Assistant:\n",
        ("### User:",),
        description="Intel neural-chat ### System:/### User:/### Assistant:",
    ),
    _Layout(
        "open-orca",
        ("", "<|end_of_turn|>\n"),
        ("User: ", "<|end_of_turn|>\n"),
        ("Assistant: ", "<|end_of_turn|>\n"),
        "Assistant: ",
        ("<|end_of_turn|>", "User:"),
        default_system="You are a helpful assistant. Think step by step and say so when you are not sure.",
        description="OpenOrca-Platypus User:/Assistant: with <|end_of_turn|>",
    ),
    _Layout(
        "mistrallite",
        ("<|system|>", "</s>"),
        ("<|prompter|>", "</s>"),
        ("<|assistant|>", "</s>"),
        "<|assistant|>",
        ("<|prompter|>",),
        description="MistralLite <|prompter|>/<|assistant|>",
    ),
    _Layout(
        "pygmalion",
        ("<|system|>", "\n"),
        ("<|user|>", "\n"),
        ("<|model|>", "\n"),
        "<|model|>",
        ("<|user|>",),
        description="Pygmalion / Metharme <|system|>/<|user|>/<|model|>",
    ),
    _Layout(
        "chatglm3",
        ("<|system|>\n", ""),
        ("<|user|>\n", ""),
        ("<|assistant|>\n", ""),
        "<|assistant|>",
        ("<|user|>", "<|observation|>"),
        description="ChatGLM3 <|system|>/<|user|>/<|assistant|>",
    ),
    _Layout(
        "openchat",
        ("", "<|end_of_turn|>"),
        ("GPT4 Correct User: ", "<|end_of_turn|>"),
        ("GPT4 Correct Assistant: ", "<|end_of_turn|>"),
        "GPT4 Correct Assistant:",
        ("<|end_of_turn|>",),
        description="OpenChat 3.5 GPT4 Correct User:/GPT4 Correct Assistant:",
    ),
    _Layout(
        "saiga",
        ("<s>system\n", "</s>"),
        ("<s>user\n", "</s>"),
        ("<s>bot\n", "</s>"),
        "<s>bot\n",
        ("</s>",),
        description="Saiga (Russian Llama/Mistral) <s>role ... </s>",
    ),
)

LEGACY_FORMATS: dict[str, ChatFormat] = {}
for _layout in _LAYOUTS:
    LEGACY_FORMATS[_layout.name] = register_chat_format(
        ChatFormat(_layout.name, _template(_layout), _layout.stop, _layout.description)
    )
