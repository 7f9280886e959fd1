"""Named chat formats: llamarcp's own templates for models without `tokenizer.chat_template`, and the registry.

Each follows the model family's published prompt format; `bos_token`/`eos_token` come from the model.
`formatter_for_model` picks the formatter for a model: explicit template > named format > GGUF template > a
format guessed from the architecture.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llamarcp.chat.sandbox import compile_checked
from llamarcp.errors import ChatTemplateError

__all__ = [
    "CHAT_FORMATS",
    "DEFAULT_CHAT_FORMAT",
    "ChatFormat",
    "get_chat_format",
    "guess_chat_format",
    "register_chat_format",
]


@dataclass(frozen=True)
class ChatFormat:
    """A named prompt format: a jinja template plus the stop strings that end an assistant turn."""

    name: str
    template: str
    stop: tuple[str, ...] = ()
    description: str = ""
    aliases: tuple[str, ...] = field(default=())


_CHATML = """\
{%- for message in messages -%}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}
"""

_LLAMA_2 = """\
{%- set ns = namespace(system='') -%}
{%- if messages and messages[0].role == 'system' -%}
{%- set ns.system = '<<SYS>>\\n' ~ messages[0].content | trim ~ '\\n<</SYS>>\\n\\n' -%}
{%- set messages = messages[1:] -%}
{%- endif -%}
{%- for message in messages -%}
{%- if message.role == 'user' -%}
{{ bos_token }}[INST] {{ ns.system if loop.first else '' }}{{ message.content | trim }} [/INST]
{%- elif message.role == 'assistant' -%}
{{ ' ' ~ message.content | trim ~ ' ' ~ eos_token }}
{%- else -%}
{{ raise_exception('llama-2 format supports only system, user and assistant roles, got ' ~ message.role) }}
{%- endif -%}
{%- endfor -%}
"""

_LLAMA_3 = """\
{{- bos_token -}}
{%- for message in messages -%}
<|start_header_id|>{{ message.role }}<|end_header_id|>

{{ message.content | trim }}<|eot_id|>
{%- endfor -%}
{%- if add_generation_prompt -%}
<|start_header_id|>assistant<|end_header_id|>

{% endif -%}
"""

# Gemma as llama.cpp lays it out (and Gemma 3's own template): system text opens the first user turn.
_GEMMA_MERGED = """\
{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
{%- if message.role == 'system' -%}
{%- set ns.system = ns.system ~ message.content | trim -%}
{%- else -%}
{%- set role = 'model' if message.role == 'assistant' else message.role -%}
<start_of_turn>{{ role }}
{% if ns.system and role != 'model' %}{{ ns.system }}

{% set ns.system = '' %}{% endif %}{{ message.content | trim }}<end_of_turn>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<start_of_turn>model
{% endif -%}
"""

# llama-cpp-python's "gemma": only user and assistant turns (system messages are dropped), text as given.
_GEMMA = """\
{{- bos_token -}}
{%- for message in messages if message.role in ('user', 'assistant') -%}
<start_of_turn>{{ 'model' if message.role == 'assistant' else 'user' }}
{% if message.content is string and message.content %}{{ message.content }}<end_of_turn>
{% endif %}
{%- endfor -%}
{%- if add_generation_prompt -%}
<start_of_turn>model
{% endif -%}
"""

# Mistral v3 ("[INST] ...[/INST]" without a space before [/INST]); a system message opens the first turn.
_MISTRAL_INSTRUCT = """\
{{- bos_token -}}
{%- set ns = namespace(open=false) -%}
{%- for message in messages -%}
{%- if not ns.open -%}[INST] {% set ns.open = true %}{%- endif -%}
{%- if message.role == 'system' -%}
{{ message.content }}

{% elif message.role == 'user' -%}
{{ message.content }}[/INST]
{%- elif message.role == 'assistant' -%}
{{ ' ' ~ message.content | trim ~ eos_token }}{% set ns.open = false %}
{%- else -%}
{{ raise_exception('mistral-instruct format supports only system, user and assistant roles, got ' ~ message.role) }}
{%- endif -%}
{%- endfor -%}
"""

_MISTRAL_V7 = """\
{{- bos_token -}}
{%- for message in messages -%}
{%- if message.role == 'system' -%}
[SYSTEM_PROMPT] {{ message.content }}[/SYSTEM_PROMPT]
{%- elif message.role == 'user' -%}
[INST] {{ message.content }}[/INST]
{%- elif message.role == 'assistant' -%}
{{ ' ' ~ message.content ~ eos_token }}
{%- else -%}
{{ raise_exception('mistral-v7 format supports only system, user and assistant roles, got ' ~ message.role) }}
{%- endif -%}
{%- endfor -%}
"""

_PHI_3 = """\
{%- for message in messages -%}
<|{{ message.role }}|>
{{ message.content }}<|end|>
{% endfor -%}
{%- if add_generation_prompt -%}
<|assistant|>
{% endif -%}
"""

_ZEPHYR = """\
{%- for message in messages -%}
<|{{ message.role }}|>
{{ message.content }}{{ eos_token }}
{% endfor -%}
{%- if add_generation_prompt -%}
<|assistant|>
{% endif -%}
"""

_VICUNA = """\
{%- for message in messages -%}
{%- if message.role == 'system' -%}
{{ message.content }}

{% elif message.role == 'user' -%}
USER: {{ message.content }}
{% elif message.role == 'assistant' -%}
ASSISTANT: {{ message.content }}{{ eos_token }}
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
ASSISTANT:
{%- endif -%}
"""

_ALPACA = """\
{%- for message in messages -%}
{%- if message.role == 'system' -%}
{{ message.content }}

{% elif message.role == 'user' -%}
### Instruction:
{{ message.content }}

{% elif message.role == 'assistant' -%}
### Response:
{{ message.content }}{{ eos_token }}

{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
### Response:
{% endif -%}
"""

CHAT_FORMATS: dict[str, ChatFormat] = {}
_ALIASES: dict[str, str] = {}


def register_chat_format(chat_format: ChatFormat, *, replace: bool = False) -> ChatFormat:
    """Add a named format (its template is compiled now, so a broken one fails at registration)."""
    for name in (chat_format.name, *chat_format.aliases):
        if not replace and (name in CHAT_FORMATS or name in _ALIASES):
            raise ValueError(f"chat format {name!r} is already registered")
    compile_checked(chat_format.template, chat_format.name)
    CHAT_FORMATS[chat_format.name] = chat_format
    for alias in chat_format.aliases:
        _ALIASES[alias] = chat_format.name
    return chat_format


def get_chat_format(name: str) -> ChatFormat:
    """Look up a registered format by name or alias; unknown names list the known ones."""
    key = _ALIASES.get(name, name)
    try:
        return CHAT_FORMATS[key]
    except KeyError:
        known = ", ".join(sorted(CHAT_FORMATS))
        raise ChatTemplateError(f"unknown chat_format {name!r}; known formats: {known}") from None


for _fmt in (
    ChatFormat("chatml", _CHATML, ("<|im_end|>",), "ChatML (Qwen, Yi, OpenHermes, SmolLM, ...)"),
    ChatFormat("llama-2", _LLAMA_2, (), "Llama 2 chat: [INST] <<SYS>> ... [/INST]", ("llama2",)),
    ChatFormat("llama-3", _LLAMA_3, ("<|eot_id|>",), "Llama 3 / 3.1 / 3.2 / 3.3 instruct", ("llama3",)),
    ChatFormat("gemma", _GEMMA, ("<end_of_turn>",), "Gemma as llama-cpp-python's gemma (system messages dropped)"),
    ChatFormat("gemma3", _GEMMA_MERGED, ("<end_of_turn>",), "Gemma as llama.cpp lays it out (system in the 1st turn)"),
    ChatFormat("mistral-instruct", _MISTRAL_INSTRUCT, (), "Mistral instruct v3 [INST] ...[/INST]", ("mistral",)),
    ChatFormat("mistral-v7", _MISTRAL_V7, (), "Mistral v7 with [SYSTEM_PROMPT]"),
    ChatFormat("phi-3", _PHI_3, ("<|end|>",), "Phi-3 / Phi-3.5", ("phi3",)),
    ChatFormat("zephyr", _ZEPHYR, (), "Zephyr <|user|> ... </s>"),
    ChatFormat("vicuna", _VICUNA, (), "Vicuna 1.1 USER:/ASSISTANT:"),
    ChatFormat("alpaca", _ALPACA, (), "Alpaca ### Instruction:/### Response:"),
):
    register_chat_format(_fmt)

#: Used when a model has no `tokenizer.chat_template` and no chat_format was given (llama.cpp does the same).
DEFAULT_CHAT_FORMAT = "chatml"


#: general.architecture prefix -> format, for GGUFs that carry no template (the default gemma-3-270m has none).
#: Only families whose chat layout is unambiguous from the architecture are listed.
_ARCHITECTURE_FORMATS = (("gemma", "gemma3"), ("phi3", "phi-3"), ("qwen", "chatml"))


def guess_chat_format(metadata: Mapping[str, Any]) -> str:
    """Named format for a model without `tokenizer.chat_template`, from its architecture; else chatml."""
    arch = str(metadata.get("general.architecture", ""))
    for prefix, name in _ARCHITECTURE_FORMATS:
        if arch.startswith(prefix):
            return name
    if arch == "llama" and metadata.get("tokenizer.ggml.pre") in ("llama-bpe", "llama3"):
        return "llama-3"
    return DEFAULT_CHAT_FORMAT


#: llama-cpp-python's name for the GGUF's own `tokenizer.chat_template` (what `Llama.chat_format` reports then).
GGUF_TEMPLATE_FORMAT = "chat_template.default"


def guessed_chat_format(llama: Any) -> str:
    """The chat format `llama` uses when none is given, named as llama-cpp-python names it: the GGUF's template
    ("chat_template.default"), else the format guessed from the architecture (gemma3, phi-3, ...; chatml)."""
    if llama.chat_template():
        return GGUF_TEMPLATE_FORMAT
    return guess_chat_format(dict(llama.metadata))
