"""llama-cpp-python's multimodal chat handlers (`Llava15ChatHandler`, `MTMDChatHandler`, ...) on llamarcp.multimodal.

Same class names, constructor keywords (`clip_model_path`, `verbose`, `use_gpu`), `from_pretrained`, class
attributes (`DEFAULT_SYSTEM_MESSAGE`, `CHAT_FORMAT`) and prompts as llama-cpp-python 0.3.36, so
`Llama(model, chat_handler=Llava15ChatHandler(clip_model_path=...))` runs unchanged after
`install_as_llama_cpp()`. The projector is loaded into the Llama on the first call (`Llama.load_projector`,
validated first, freed with the model); images go through llamarcp's media prompt (so a follow-up turn reuses
the image's KV) instead of llama-cpp-python's reset-and-re-encode.

The templates render exactly what 0.3.36's do (tested against its output, quirks included: a string user
message under the LLaVA-1.5 format gets an empty second "USER: "). `MTMDChatHandler` and `Gemma4ChatHandler`
use the model's own chat template through llamarcp's chat path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llamarcp.chat.completion import completion_to_chat
from llamarcp.chat.formatter import ChatFormatter
from llamarcp.chat.function_calling import legacy_to_tools
from llamarcp.compat.handler_support import COMPLETION_KEYS, grammar_for
from llamarcp.multimodal import load_media, split_media_messages
from llamarcp.validate.media import check_image, check_request_images

__all__ = [
    "Gemma4ChatHandler",
    "Llama3VisionAlpha",
    "Llama3VisionAlphaChatHandler",
    "Llava15ChatHandler",
    "Llava16ChatHandler",
    "MTMDChatHandler",
    "MiniCPMv26ChatHandler",
    "MoondreamChatHandler",
    "NanoLlavaChatHandler",
    "ObsidianChatHandler",
    "Qwen25VLChatHandler",
    "VISION_CHAT_FORMATS",
]

# Shared pieces: a message's image URLs (each followed by `after`) and its text parts (each wrapped). A string
# content is iterable in jinja but its characters have no `type`, so both render nothing for it.
_MACROS = (
    "{% macro images(content, after='') %}{% for part in content %}{% if part.type == 'image_url' %}"
    "{{ part.image_url if part.image_url is string else part.image_url.url }}{{ after }}"
    "{% endif %}{% endfor %}{% endmacro %}"
    "{% macro texts(content, before='', after='') %}{% for part in content %}{% if part.type == 'text' %}"
    "{{ before }}{{ part.text }}{{ after }}{% endif %}{% endfor %}{% endmacro %}"
)


def _both(string_first: bool, before: str = "", image_after: str = "") -> str:
    """A user message's content: the string as is, and for a list its images first, then its texts."""
    as_string = "{% if m.content is string %}" + before + "{{ m.content }}{% endif %}"
    as_list = "{% if m.content is iterable %}" + before + "{{ images(m.content, '" + image_after + "') }}"
    as_list += "{{ texts(m.content) }}{% endif %}"
    return as_string + as_list if string_first else as_list + as_string


_LLAVA_15 = (
    _MACROS + "{% for m in messages %}"
    "{% if m.role == 'system' %}{{ m.content }}{% endif %}"
    "{% if m.role == 'user' %}" + _both(True, "USER: ") + "{% endif %}"
    "{% if m.role == 'assistant' and m.content is not none %}ASSISTANT: {{ m.content }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)
_OBSIDIAN = (
    _MACROS + "{% for m in messages %}"
    "{% if m.role == 'system' %}<|im_start|>system\n{{ m.content }}\n###\n{% endif %}"
    "{% if m.role == 'user' %}<|im_start|>user\n" + _both(True) + "###\n{% endif %}"
    "{% if m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content }}###\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_MOONDREAM = (
    _MACROS + "{% for m in messages %}"
    "{% if m.role == 'user' %}"
    "{% if m.content is iterable %}{{ images(m.content, '\n\n') }}{{ texts(m.content, 'Question: ', '\n\n') }}"
    "{% endif %}{% if m.content is string %}Question: {{ m.content }}\n\n{% endif %}"
    "{% endif %}"
    "{% if m.role == 'assistant' %}Answer:{{ m.content }}\n\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Answer:{% endif %}"
)
_LLAVA_16 = (
    _MACROS + "{% for m in messages %}"
    "{% if m.role == 'system' %}{{ m.content }}{% endif %}"
    "{% if m.role == 'user' %}" + _both(False, image_after="\n") + "{% endif %}"
    "{% if m.role == 'assistant' %}{{ m.content }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Answer:{% endif %}"
)
_NANOLLAVA = (
    _MACROS + "{% for m in messages %}"
    "{% if m.role == 'system' %}<|im_start|>system\n{{ m.content }}<|im_end|>{% endif %}"
    "{% if m.role == 'user' %}<|im_start|>user\n" + _both(True) + "<|im_end|>{% endif %}"
    "{% if m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content }}<|im_end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_LLAMA3_VISION_ALPHA = (
    _MACROS + "{% for m in messages %}<|start_header_id|>"
    "{% if m.role == 'user' %}user<|end_header_id|>\n\n" + _both(False) + "{% endif %}"
    "{% if m.role == 'assistant' %}assistant<|end_header_id|>\n\n{{ m.content }}{% endif %}"
    "<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_MINICPM_V26 = (
    _MACROS + "{% for m in messages %}"
    "{% if loop.first and messages[0].role != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m.role }}\n" + _both(False) + "<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# 0.3.36 writes `{{ self.DEFAULT_SYSTEM_MESSAGE }}` here, which jinja renders empty; its generation prompt is
# unconditional.
_QWEN25_VL = (
    "{% for m in messages %}"
    "{% if loop.first and m.role != 'system' %}<|im_start|>system\n<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m.role }}\n"
    "{% if m.content is string %}{{ m.content }}<|im_end|>\n{% else %}"
    "{% for part in m.content %}{% if part.type == 'image_url' %}"
    "{{ part.image_url if part.image_url is string else part.image_url.url }}"
    "{% elif part.type == 'text' %}{{ part.text }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}<|im_start|>assistant\n"
)

_LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions."
)


#: The sampling defaults of 0.3.36's handler `__call__` (a direct call, without create_chat_completion's).
_HANDLER_DEFAULTS: dict[str, Any] = {
    "temperature": 0.2,
    "top_p": 0.95,
    "top_k": 40,
    "min_p": 0.05,
    "typical_p": 1.0,
    "max_tokens": None,
    "repeat_penalty": 1.1,
}


def _image_url_of(part: Mapping[str, Any]) -> Any:
    value = part.get("image_url")
    return value.get("url") if isinstance(value, Mapping) else value


class Llava15ChatHandler:
    """LLaVA-1.5's prompt format with a projector (`clip_model_path`, an mmproj GGUF)."""

    DEFAULT_SYSTEM_MESSAGE: str | None = _LLAVA_SYSTEM
    CHAT_FORMAT: str = _LLAVA_15

    def __init__(self, clip_model_path: str, verbose: bool = True, use_gpu: bool | None = None) -> None:
        if not os.path.exists(clip_model_path):
            raise ValueError(f"Clip model path does not exist: {clip_model_path}")
        self.clip_model_path = clip_model_path
        self.verbose = verbose
        self.use_gpu = use_gpu
        self._formatter: ChatFormatter | None = None

    # -- llama-cpp-python's helpers ------------------------------------------------------------------------------

    def load_image(self, image_url: str) -> bytes:
        """The bytes of an image URL (data URI, http(s), local path), validated."""
        return load_media(image_url).data

    @staticmethod
    def get_image_urls(messages: Sequence[Mapping[str, Any]]) -> list[str]:
        """The image URLs of the user messages, in order."""
        urls = []
        for message in messages:
            content = message.get("content")
            if message.get("role") != "user" or not isinstance(content, (list, tuple)):
                continue
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "image_url":
                    urls.append(_image_url_of(part))
        return urls

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        filename: str | None,
        local_dir: str | os.PathLike[str] | None = None,
        local_dir_use_symlinks: Any = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """The handler for a projector file (name or glob) of a Hugging Face repo (works offline from the cache)."""
        from llamarcp.compat.llama_api import _one_match, _repo_files

        try:
            import huggingface_hub as hub
        except ImportError as exc:
            raise ImportError(
                f"{cls.__name__}.from_pretrained needs huggingface_hub (pip install huggingface-hub)"
            ) from exc
        if not filename:
            raise ValueError("from_pretrained needs the projector's filename (or a glob) in the repo")
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(repo_id)
        name = _one_match(repo_id, filename, _repo_files(hub, repo_id, local_dir, cache_dir))
        sub, _, base = name.rpartition("/")
        path = hub.hf_hub_download(
            repo_id=repo_id,
            filename=base,
            subfolder=sub or None,
            local_dir=None if local_dir is None else Path(local_dir),
            cache_dir=None if cache_dir is None else Path(cache_dir),
        )
        return cls(clip_model_path=str(path), **kwargs)

    # -- the prompt ----------------------------------------------------------------------------------------------

    def render_prompt(self, messages: Sequence[Mapping[str, Any]], marker: str) -> str:
        """The prompt text of `messages`, each user image at a `marker` (as 0.3.36 renders it)."""
        if self._formatter is None:
            self._formatter = ChatFormatter(self.CHAT_FORMAT, name=type(self).__name__)
        msgs = [dict(m) for m in messages]
        if self.DEFAULT_SYSTEM_MESSAGE is not None and not _first_system(msgs):
            msgs.insert(0, {"role": "system", "content": self.DEFAULT_SYSTEM_MESSAGE})
        for message in msgs:
            content = message.get("content")
            if message.get("role") == "user" and isinstance(content, (list, tuple)):
                message["content"] = [
                    {"type": "image_url", "image_url": {"url": marker}}
                    if isinstance(p, Mapping) and p.get("type") == "image_url"
                    else p
                    for p in content
                ]
        return self._formatter.render(msgs, add_generation_prompt=True)

    def __call__(
        self,
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
        projector = llama.load_projector(self.clip_model_path, use_gpu=self.use_gpu)
        allow_files = kwargs.pop("allow_local_media", True)  # the server says False
        prompt, stops = self._media_prompt(llama, projector, messages, allow_files, kwargs)
        return self._complete(llama, prompt, stops, functions, function_call, tools, tool_choice, stream, stop,
                              response_format, grammar, logprobs, top_logprobs, kwargs)  # fmt: skip

    def _media_prompt(
        self, llama: Any, projector: Any, messages: list[Any], allow_files: bool, kwargs: dict[str, Any]
    ) -> tuple[Any, list[str]]:
        """The prompt (text and media) of `messages` in this handler's format, and the stop strings it adds."""
        text = self.render_prompt(messages, projector.marker)
        media = [load_media(url, allow_files=allow_files) for url in self.get_image_urls(messages)]
        check_request_images([check_image(m.data) for m in media])
        return llama.media_prompt(text, media, add_bos=True), []

    def _complete(
        self,
        llama: Any,
        prompt: Any,
        stops: list[str],
        functions: Any,
        function_call: Any,
        tools: Any,
        tool_choice: Any,
        stream: bool,
        stop: str | list[str] | None,
        response_format: Any,
        grammar: Any,
        logprobs: bool | None,
        top_logprobs: int | None,
        kwargs: dict[str, Any],
    ) -> Any:
        settings = {**_HANDLER_DEFAULTS, **{k: kwargs[k] for k in COMPLETION_KEYS if k in kwargs}}
        tools, tool_choice = legacy_to_tools(functions, function_call, tools, tool_choice)
        constraint, tool = grammar_for(response_format, tools, tool_choice)
        completion = llama.create_completion(
            prompt,
            stream=stream,
            stop=([stop] if isinstance(stop, str) else list(stop or [])) + stops,
            grammar=constraint if constraint is not None else grammar,
            logprobs=top_logprobs if logprobs else None,
            **settings,
        )
        if tool is not None:
            from llamarcp.chat.function_calling import completion_to_tool_call

            return completion_to_tool_call(tool["function"]["name"], completion, stream)
        return completion_to_chat(completion, stream)


def _first_system(messages: list[dict[str, Any]]) -> str:
    """llama-cpp-python's `_get_system_message`: the first system message's content, "" when none."""
    for message in messages:
        if message.get("role") == "system":
            return message.get("content") or ""
    return ""


class ObsidianChatHandler(Llava15ChatHandler):
    CHAT_FORMAT = _OBSIDIAN


class MoondreamChatHandler(Llava15ChatHandler):
    CHAT_FORMAT = _MOONDREAM


class Llava16ChatHandler(Llava15ChatHandler):
    DEFAULT_SYSTEM_MESSAGE = _LLAVA_SYSTEM + " "
    CHAT_FORMAT = _LLAVA_16


class NanoLlavaChatHandler(Llava15ChatHandler):
    DEFAULT_SYSTEM_MESSAGE = "Answer the question"
    CHAT_FORMAT = _NANOLLAVA


class Llama3VisionAlphaChatHandler(Llava15ChatHandler):
    DEFAULT_SYSTEM_MESSAGE = None
    CHAT_FORMAT = _LLAMA3_VISION_ALPHA


Llama3VisionAlpha = Llama3VisionAlphaChatHandler


class MiniCPMv26ChatHandler(Llava15ChatHandler):
    DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant."
    CHAT_FORMAT = _MINICPM_V26


class Qwen25VLChatHandler(Llava15ChatHandler):
    DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant."
    CHAT_FORMAT = _QWEN25_VL


class MTMDChatHandler(Llava15ChatHandler):
    """Any projector libmtmd supports, with the model's own chat template (GGUF `tokenizer.chat_template`)."""

    DEFAULT_SYSTEM_MESSAGE = None

    def __init__(self, clip_model_path: str, verbose: bool = True, use_gpu: bool = True) -> None:
        super().__init__(clip_model_path, verbose=verbose, use_gpu=use_gpu)

    def _media_prompt(
        self, llama: Any, projector: Any, messages: list[Any], allow_files: bool, kwargs: dict[str, Any]
    ) -> tuple[Any, list[str]]:
        from llamarcp.chat.completion import chat_formatter, render_chat_prompt

        marked, media = split_media_messages(messages, projector.marker, allow_files=allow_files)
        formatter = chat_formatter(llama)
        text = render_chat_prompt(formatter, marked, None, kwargs.pop("template_kwargs", None))
        bos = formatter.bos_token
        return llama.media_prompt(text, media, add_bos=not (bos and text.startswith(bos))), list(formatter.stop)


class Gemma4ChatHandler(MTMDChatHandler):
    """Gemma 4 (and Gemma 3) vision models: the model's own template, as MTMDChatHandler."""


#: llama-cpp-python's server `--chat_format` values that need a projector -> the handler class.
VISION_CHAT_FORMATS: dict[str, type[Llava15ChatHandler]] = {
    "llava-1-5": Llava15ChatHandler,
    "obsidian": ObsidianChatHandler,
    "llava-1-6": Llava16ChatHandler,
    "moondream": MoondreamChatHandler,
    "nanollava": NanoLlavaChatHandler,
    "llama-3-vision-alpha": Llama3VisionAlphaChatHandler,
    "minicpm-v-2.6": MiniCPMv26ChatHandler,
    "qwen2.5-vl": Qwen25VLChatHandler,
    "mtmd": MTMDChatHandler,
    "gemma4": Gemma4ChatHandler,
}
