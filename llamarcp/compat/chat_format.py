"""llama-cpp-python's `llama_chat_format`: chat handlers, formatter functions and their registry.

Two kinds of extension, as in llama-cpp-python:
- a *chat formatter* `(messages=..., **kwargs) -> ChatFormatterResponse(prompt, stop, ...)`, registered by name
  with the `@register_chat_format(name)` decorator and then used with `Llama(chat_format=name)`;
- a *chat completion handler* `(llama=..., messages=..., tools=..., stream=..., ...) -> chat completion`,
  registered with `@register_chat_completion_handler(name)` or passed as `Llama(chat_handler=...)`.

Names registered here take over `create_chat_completion` for that `chat_format`; every other name is one of
llamarcp's own formats (`llamarcp.chat.CHAT_FORMATS`, rendered in the jinja sandbox), which also answer to
`get_chat_completion_handler(name)`. The `format_<name>` functions render those formats the formatter way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import llamarcp.chat.legacy_formats  # noqa: F401 - every format llama-cpp-python names, registered
from llamarcp.chat import handlers
from llamarcp.chat.completion import completion_to_chat
from llamarcp.chat.function_calling import chatml_function_calling, legacy_to_tools
from llamarcp.chat.templates import CHAT_FORMATS
from llamarcp.chat.templates import ChatFormatter as _TemplateFormatter
from llamarcp.compat.handler_support import COMPLETION_KEYS as _COMPLETION_KEYS
from llamarcp.compat.handler_support import grammar_for as _grammar_for
from llamarcp.compat.vision_handlers import *  # noqa: F403 - llama-cpp-python's multimodal handlers
from llamarcp.compat.vision_handlers import __all__ as _vision_names

__all__ = [
    "CHATML_BOS_TOKEN",
    "CHATML_CHAT_TEMPLATE",
    "CHATML_EOS_TOKEN",
    "LLAMA3_INSTRUCT_CHAT_TEMPLATE",
    "MISTRAL_INSTRUCT_BOS_TOKEN",
    "MISTRAL_INSTRUCT_CHAT_TEMPLATE",
    "MISTRAL_INSTRUCT_EOS_TOKEN",
    "MIXTRAL_INSTRUCT_CHAT_TEMPLATE",
    "ChatFormatter",
    "ChatFormatterResponse",
    "Jinja2ChatFormatter",
    "LlamaChatCompletionHandler",
    "LlamaChatCompletionHandlerNotFoundException",
    "LlamaChatCompletionHandlerRegistry",
    "chat_formatter_to_chat_completion_handler",
    "chatml_function_calling",
    "get_chat_completion_handler",
    "guess_chat_format_from_gguf_metadata",
    "hf_autotokenizer_to_chat_completion_handler",
    "hf_autotokenizer_to_chat_formatter",
    "hf_tokenizer_config_to_chat_completion_handler",
    "hf_tokenizer_config_to_chat_formatter",
    "register_chat_completion_handler",
    "register_chat_format",
    "registered_handler",
]


# llama-cpp-python's template constants, as llamarcp's own templates of those formats (same prompts).
CHATML_CHAT_TEMPLATE = CHAT_FORMATS["chatml"].template
CHATML_BOS_TOKEN = "<s>"
CHATML_EOS_TOKEN = "<|im_end|>"
MISTRAL_INSTRUCT_CHAT_TEMPLATE = CHAT_FORMATS["mistral-instruct"].template
MIXTRAL_INSTRUCT_CHAT_TEMPLATE = MISTRAL_INSTRUCT_CHAT_TEMPLATE
MISTRAL_INSTRUCT_BOS_TOKEN = "<s>"
MISTRAL_INSTRUCT_EOS_TOKEN = "</s>"
LLAMA3_INSTRUCT_CHAT_TEMPLATE = CHAT_FORMATS["llama-3"].template


@dataclass
class ChatFormatterResponse:
    """What a chat formatter returns: the prompt text and how completion should stop."""

    prompt: str
    stop: str | list[str] | None = None
    stopping_criteria: Any = None
    added_special: bool = False  # the prompt already starts with BOS: do not add another


class ChatFormatter(Protocol):  # type: ignore[no-redef]
    def __call__(self, *, messages: list[Any], **kwargs: Any) -> ChatFormatterResponse: ...


class LlamaChatCompletionHandler(Protocol):
    """`handler(llama=..., messages=..., **openai_params) -> dict or iterator of chunks` (keyword-only)."""

    def __call__(self, *, llama: Any, messages: list[Any], **kwargs: Any) -> Any: ...


class LlamaChatCompletionHandlerNotFoundException(Exception):
    pass


class LlamaChatCompletionHandlerRegistry:
    """The process-wide name -> handler table (a singleton, like llama-cpp-python's; stored in
    llamarcp.chat.handlers, which the chat path consults)."""

    _instance: LlamaChatCompletionHandlerRegistry | None = None
    _chat_handlers = handlers._HANDLERS

    def __new__(cls) -> LlamaChatCompletionHandlerRegistry:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def register_chat_completion_handler(self, name: str, chat_handler: Any, overwrite: bool = False) -> None:
        handlers.register(name, chat_handler, overwrite=overwrite, taken=CHAT_FORMATS)

    def unregister_chat_handler(self, name: str) -> None:
        handlers.unregister(name)

    def get_chat_completion_handler_by_name(self, name: str) -> Any:
        handler = handlers.registered(name)
        if handler is not None:
            return handler
        if name in CHAT_FORMATS:
            return _builtin_handler(name)
        known = sorted({*handlers.names(), *CHAT_FORMATS})
        raise LlamaChatCompletionHandlerNotFoundException(f"invalid chat handler: {name} (valid formats: {known})")


def registered_handler(name: str) -> Any:
    """The handler registered under `name`, or None (then llamarcp's own formats apply)."""
    return handlers.registered(name)


def get_chat_completion_handler(name: str) -> Any:
    return LlamaChatCompletionHandlerRegistry().get_chat_completion_handler_by_name(name)


def register_chat_completion_handler(name: str) -> Callable[[Any], Any]:
    """Decorator: `@register_chat_completion_handler("my-format")` on a handler function."""

    def decorator(handler: Any) -> Any:
        LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(name, handler)
        return handler

    return decorator


def register_chat_format(name: str) -> Callable[[Any], Any]:
    """Decorator: `@register_chat_format("my-format")` on a formatter `(messages, **kwargs) -> ChatFormatterResponse`;
    `Llama(chat_format="my-format")` then renders prompts with it. Returns the formatter unchanged."""

    def decorator(formatter: Any) -> Any:
        handler = chat_formatter_to_chat_completion_handler(formatter)
        LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(name, handler)
        return formatter

    return decorator


def _builtin_handler(name: str) -> Any:
    def handler(*, llama: Any, messages: Any, **kwargs: Any) -> Any:
        from llamarcp.chat.completion import create_chat_completion

        for key in ("tfs_z", "penalize_nl"):
            kwargs.pop(key, None)
        return create_chat_completion(llama, messages, chat_format=name, **kwargs)

    handler.__name__ = f"chat_handler_{name}"
    return handler


# -- formatter -> handler ---------------------------------------------------------------------------------------


def chat_formatter_to_chat_completion_handler(chat_formatter: Any) -> Any:
    """A chat completion handler that renders the prompt with `chat_formatter` and completes it."""

    def chat_completion_handler(
        *,
        llama: Any,
        messages: list[Any],
        functions: Any = None,
        function_call: Any = None,
        tools: Any = None,
        tool_choice: Any = None,
        stream: bool = False,
        stop: str | list[str] | None = None,
        response_format: Any = None,
        grammar: Any = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        **kwargs: Any,
    ) -> Any:
        completion_args = {k: kwargs.pop(k) for k in _COMPLETION_KEYS if k in kwargs}
        for key in ("tfs_z", "penalize_nl", "stopping_criteria"):
            kwargs.pop(key, None)
        result = chat_formatter(
            messages=messages, functions=functions, function_call=function_call, tools=tools, tool_choice=tool_choice,
            **kwargs,
        )  # fmt: skip
        if not isinstance(result, ChatFormatterResponse):
            raise TypeError(f"chat formatter returned {type(result).__name__}, expected ChatFormatterResponse")
        prompt = llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if result.stop is not None:
            stops += [result.stop] if isinstance(result.stop, str) else list(result.stop)
        tools, tool_choice = legacy_to_tools(functions, function_call, tools, tool_choice)
        constraint, tool = _grammar_for(response_format, tools, tool_choice)
        completion = llama.create_completion(
            prompt,
            stream=stream,
            stop=stops,
            grammar=constraint if constraint is not None else grammar,
            logprobs=top_logprobs if logprobs else None,
            stopping_criteria=result.stopping_criteria,
            **completion_args,
        )
        if tool is not None:
            from llamarcp.chat.function_calling import completion_to_tool_call

            return completion_to_tool_call(tool["function"]["name"], completion, stream)
        return completion_to_chat(completion, stream)

    return chat_completion_handler


# -- jinja formatters (sandboxed, through llamarcp's ChatFormatter) -----------------------------------------------


class Jinja2ChatFormatter:
    """A chat formatter from jinja template text (e.g. a tokenizer_config's chat_template), rendered sandboxed."""

    def __init__(
        self,
        template: str,
        eos_token: str,
        bos_token: str,
        add_generation_prompt: bool = True,
        stop_token_ids: Sequence[int] | None = None,
    ) -> None:
        self.template = template
        self.eos_token = eos_token
        self.bos_token = bos_token
        self.add_generation_prompt = add_generation_prompt
        self.stop_token_ids = set(stop_token_ids) if stop_token_ids is not None else None
        self._formatter = _TemplateFormatter(template, bos_token, eos_token, name="Jinja2ChatFormatter")

    def __call__(
        self, *, messages: list[Any], functions: Any = None, function_call: Any = None, tools: Any = None,
        tool_choice: Any = None, **kwargs: Any,
    ) -> ChatFormatterResponse:  # fmt: skip
        tools, _ = legacy_to_tools(functions, function_call, tools, tool_choice)
        prompt = self._formatter.render(messages, add_generation_prompt=self.add_generation_prompt, tools=tools)
        stopping = None
        if self.stop_token_ids:
            ids = self.stop_token_ids

            def stop_on_token(tokens: Any, logits: Any) -> bool:
                return len(tokens) > 0 and int(tokens[-1]) in ids

            stopping = [stop_on_token]
        added = bool(self.bos_token) and prompt.startswith(self.bos_token)
        return ChatFormatterResponse(
            prompt=prompt, stop=[self.eos_token], stopping_criteria=stopping, added_special=added
        )

    def to_chat_handler(self) -> Any:
        return chat_formatter_to_chat_completion_handler(self)


def hf_tokenizer_config_to_chat_formatter(
    tokenizer_config: Mapping[str, Any], add_generation_prompt: bool = True
) -> Jinja2ChatFormatter:
    """Formatter from a Hugging Face `tokenizer_config.json` dict (its chat_template, bos/eos tokens)."""
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str):
        raise ValueError("the tokenizer config has no chat_template")

    def token(key: str) -> str:
        value = tokenizer_config.get(key)
        if isinstance(value, Mapping):
            value = value.get("content")
        return value if isinstance(value, str) else ""

    return Jinja2ChatFormatter(template, token("eos_token"), token("bos_token"), add_generation_prompt)


def hf_tokenizer_config_to_chat_completion_handler(
    tokenizer_config: Mapping[str, Any], add_generation_prompt: bool = True
) -> Any:
    return hf_tokenizer_config_to_chat_formatter(tokenizer_config, add_generation_prompt).to_chat_handler()


def hf_autotokenizer_to_chat_formatter(pretrained_model_name_or_path: str | os.PathLike[str]) -> Any:
    """Formatter that renders with `transformers.AutoTokenizer.apply_chat_template` (needs transformers)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise ImportError("hf_autotokenizer_to_chat_formatter needs transformers (pip install transformers)") from exc
    tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path)

    def format_autotokenizer(*, messages: list[Any], **kwargs: Any) -> ChatFormatterResponse:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return ChatFormatterResponse(prompt=str(prompt), stop=tokenizer.eos_token)

    return format_autotokenizer


def hf_autotokenizer_to_chat_completion_handler(pretrained_model_name_or_path: str | os.PathLike[str]) -> Any:
    return chat_formatter_to_chat_completion_handler(hf_autotokenizer_to_chat_formatter(pretrained_model_name_or_path))


def guess_chat_format_from_gguf_metadata(metadata: Mapping[str, str]) -> str | None:
    """A format name for a GGUF whose `tokenizer.chat_template` is one of the well-known ones, else None
    (llamarcp renders the GGUF's own template in that case, which is what the name would stand for)."""
    template = metadata.get("tokenizer.chat_template")
    if not isinstance(template, str):
        return None
    if "<|im_start|>" in template and "tools" not in template:
        return "chatml"
    if "<|start_header_id|>" in template and "tools" not in template:
        return "llama-3"
    if "[INST]" in template and "raise_exception('Only user and assistant roles are supported!')" in template:
        return "mistral-instruct"
    return None


# -- the named formats as formatter functions -------------------------------------------------------------------


def _formatter_function(name: str) -> Callable[..., ChatFormatterResponse]:
    def format_messages(messages: list[Any], **kwargs: Any) -> ChatFormatterResponse:
        formatter = _TemplateFormatter.from_format(name)
        prompt = formatter.render(messages, add_generation_prompt=True)
        stop = list(formatter.stop) or None
        return ChatFormatterResponse(prompt=prompt, stop=stop)

    format_messages.__name__ = format_messages.__qualname__ = "format_" + name.replace("-", "_")
    format_messages.__doc__ = f"Render `messages` in the {name!r} chat format."
    return format_messages


#: llama-cpp-python's names of its formatter functions -> the format each renders.
_FORMAT_FUNCTIONS = {
    "format_llama2": "llama-2",
    "format_llama3": "llama-3",
    "format_alpaca": "alpaca",
    "format_qwen": "qwen",
    "format": "vicuna",
    "format_oasst_llama": "oasst_llama",
    "format_baichuan2": "baichuan-2",
    "format_baichuan": "baichuan",
    "format_openbuddy": "openbuddy",
    "format_redpajama_incite": "redpajama-incite",
    "format_snoozy": "snoozy",
    "format_phind": "phind",
    "format_intel": "intel",
    "format_open_orca": "open-orca",
    "format_mistrallite": "mistrallite",
    "format_zephyr": "zephyr",
    "format_pygmalion": "pygmalion",
    "format_chatml": "chatml",
    "format_mistral_instruct": "mistral-instruct",
    "format_chatglm3": "chatglm3",
    "format_openchat": "openchat",
    "format_saiga": "saiga",
    "format_gemma": "gemma",
}
for _function_name, _format_name in _FORMAT_FUNCTIONS.items():
    globals()[_function_name] = _formatter_function(_format_name)
__all__ += list(_FORMAT_FUNCTIONS)

__all__ += [name for name in _vision_names if name != "VISION_CHAT_FORMATS"]

register_chat_completion_handler("chatml-function-calling")(chatml_function_calling)
