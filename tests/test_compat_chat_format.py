"""llama-cpp-python's `llama_chat_format` (llamarcp.compat.chat_format): the handler registry and decorators,
`chat_handler=`, Jinja2/HF-config formatters, and every named format it accepts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamarcp import Llama
from llamarcp.chat.completion import LEGACY_FORMAT_NAMES
from llamarcp.chat.legacy_formats import LEGACY_FORMATS
from llamarcp.compat import chat_format as cf
from llamarcp.errors import ChatMessageError

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
]

#: Every `chat_format=` name llama-cpp-python 0.3.36 registers with `@register_chat_format`.
LLAMA_CPP_PYTHON_FORMATS = (
    "llama-2", "llama-3", "alpaca", "qwen", "vicuna", "oasst_llama", "baichuan-2", "baichuan", "openbuddy",
    "redpajama-incite", "snoozy", "phind", "intel", "open-orca", "mistrallite", "zephyr", "pygmalion", "chatml",
    "mistral-instruct", "chatglm3", "openchat", "saiga", "gemma",
)  # fmt: skip


@pytest.fixture(scope="module")
def llm(tiny_model_path: Path) -> Iterator[Llama]:
    with Llama(str(tiny_model_path), n_ctx=512, n_threads=1) as model:
        yield model


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_legacy_names_are_the_ones_defined() -> None:
    assert set(LEGACY_FORMATS) == LEGACY_FORMAT_NAMES


@pytest.mark.parametrize("name", LLAMA_CPP_PYTHON_FORMATS)
def test_every_llama_cpp_python_format_completes_a_chat(name: str, tiny_model_path: Path) -> None:
    with Llama(str(tiny_model_path), n_ctx=512, n_threads=1, chat_format=name) as llm:
        result = llm.create_chat_completion(MESSAGES, max_tokens=2)
    assert result["choices"][0]["message"]["role"] == "assistant"
    assert cf.get_chat_completion_handler(name) is not None


#: Each older format's rendering of MESSAGES: the model family's published layout (see legacy_formats.py).
EXPECTED_LEGACY = {
    "qwen": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        "Hello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    ),
    "oasst_llama": (
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n"
        "<|prompter|>Hi</s><|assistant|>Hello!</s><|prompter|>2+2?</s><|assistant|>"
    ),
    "baichuan-2": "Be brief.<reserved_106>Hi<reserved_107>Hello!<reserved_106>2+2?<reserved_107>",
    "baichuan": "Be brief.<reserved_102>Hi<reserved_103>Hello!<reserved_102>2+2?<reserved_103>",
    "openbuddy": "Be brief.\n\nUser: Hi\nAssistant: Hello!\nUser: 2+2?\nAssistant:",
    "redpajama-incite": "Be brief.\n<human>: Hi\n<bot>: Hello!\n<human>: 2+2?\n<bot>:",
    "snoozy": "### Instruction:\nBe brief.\n### Prompt: Hi\n### Response: Hello!\n### Prompt: 2+2?\n### Response:",
    "phind": (
        "### System Prompt\nBe brief.\n\n### User Message\nHi\n\n### Assistant\nHello!\n\n"
        "### User Message\n2+2?\n\n### Assistant\n"
    ),
    "intel": "### System:\nBe brief.\n### User:\nHi\n### Assistant:\nHello!\n### User:\n2+2?\n### Assistant:\n",
    "open-orca": (
        "Be brief.<|end_of_turn|>\nUser: Hi<|end_of_turn|>\nAssistant: Hello!<|end_of_turn|>\n"
        "User: 2+2?<|end_of_turn|>\nAssistant: "
    ),
    "mistrallite": "<|system|>Be brief.</s><|prompter|>Hi</s><|assistant|>Hello!</s><|prompter|>2+2?</s><|assistant|>",
    "pygmalion": "<|system|>Be brief.\n<|user|>Hi\n<|model|>Hello!\n<|user|>2+2?\n<|model|>",
    "chatglm3": "<|system|>\nBe brief.<|user|>\nHi<|assistant|>\nHello!<|user|>\n2+2?<|assistant|>",
    "openchat": (
        "Be brief.<|end_of_turn|>GPT4 Correct User: Hi<|end_of_turn|>GPT4 Correct Assistant: Hello!<|end_of_turn|>"
        "GPT4 Correct User: 2+2?<|end_of_turn|>GPT4 Correct Assistant:"
    ),
    "saiga": "<s>system\nBe brief.</s><s>user\nHi</s><s>bot\nHello!</s><s>user\n2+2?</s><s>bot\n",
}


def test_every_older_format_has_an_expected_rendering() -> None:
    assert set(EXPECTED_LEGACY) == LEGACY_FORMAT_NAMES


@pytest.mark.parametrize(("name", "prompt"), sorted(EXPECTED_LEGACY.items()))
def test_format_functions_render_the_published_layouts(name: str, prompt: str) -> None:
    fn = getattr(cf, next(f for f, n in cf._FORMAT_FUNCTIONS.items() if n == name))
    result = fn(MESSAGES)
    assert isinstance(result, cf.ChatFormatterResponse) and result.prompt == prompt


def test_qwen_default_system_message() -> None:
    prompt = cf.format_qwen([{"role": "user", "content": "Hi"}]).prompt  # type: ignore[attr-defined]
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")


def test_register_chat_format_decorator_is_used_by_chat_format(tiny_model_path: Path) -> None:
    name = unique("mine")
    seen: list[Any] = []

    @cf.register_chat_format(name)
    def format_mine(messages: list[Any], **kwargs: Any) -> cf.ChatFormatterResponse:
        seen.append(messages)
        return cf.ChatFormatterResponse(prompt="Q: " + messages[-1]["content"] + "\nA:", stop=["\n"])

    assert format_mine([{"role": "user", "content": "x"}]).prompt == "Q: x\nA:"  # returned unchanged
    with Llama(str(tiny_model_path), n_ctx=512, n_threads=1, chat_format=name) as llm:
        result = llm.create_chat_completion([{"role": "user", "content": "hello"}], max_tokens=3, temperature=0)
        expected = llm("Q: hello\nA:", max_tokens=3, temperature=0, stop=["\n"])["choices"][0]["text"]
    assert seen[-1] == [{"role": "user", "content": "hello"}]
    assert result["object"] == "chat.completion" and result["choices"][0]["message"]["content"] == expected
    with pytest.raises(ValueError, match="already registered"):
        cf.register_chat_format(name)(format_mine)
    with pytest.raises(ValueError, match="already registered"):
        cf.register_chat_format("chatml")(format_mine)  # llamarcp's own names are taken too
    cf.LlamaChatCompletionHandlerRegistry().unregister_chat_handler(name)
    with pytest.raises(cf.LlamaChatCompletionHandlerNotFoundException):
        cf.get_chat_completion_handler(name)


def test_chat_handler_is_called_with_llama_cpp_pythons_signature(tiny_model_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    def handler(**kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        return {"handled": True}

    with Llama(str(tiny_model_path), n_ctx=512, n_threads=1, chat_handler=handler) as llm:
        out = llm.create_chat_completion(
            messages=[{"role": "user", "content": "x"}], temperature=0.3, max_tokens=5, mirostat_mode=2
        )
    assert out == {"handled": True}
    (kwargs,) = calls
    assert kwargs["llama"] is llm and kwargs["messages"] == [{"role": "user", "content": "x"}]
    assert kwargs["temperature"] == 0.3 and kwargs["max_tokens"] == 5 and kwargs["mirostat_mode"] == 2
    assert {"tools", "tool_choice", "response_format", "stream", "grammar", "logprobs"} <= set(kwargs)


def test_register_chat_completion_handler(llm: Llama) -> None:
    name = unique("handler")

    @cf.register_chat_completion_handler(name)
    def handler(*, llama: Any, messages: Any, **kwargs: Any) -> str:
        return f"{len(messages)} messages"

    assert llm.create_chat_completion(MESSAGES, chat_format=name) == "4 messages"
    with pytest.raises(TypeError, match="callable"):
        cf.LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(unique("x"), 42)


def test_jinja2_formatter_is_sandboxed_and_becomes_a_handler(llm: Llama) -> None:
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    formatter = cf.Jinja2ChatFormatter(template, eos_token="</s>", bos_token="<s>", stop_token_ids=[2])
    response = formatter(messages=[{"role": "user", "content": "hi"}])
    assert response.prompt == "<user>hi<assistant>" and response.stop == ["</s>"]
    assert response.stopping_criteria is not None and response.stopping_criteria[0]([5, 2], None) is True
    result = formatter.to_chat_handler()(llama=llm, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert result["object"] == "chat.completion"
    evil = cf.Jinja2ChatFormatter("{{ ''.__class__.__mro__ }}", eos_token="", bos_token="")
    with pytest.raises(Exception, match="unsafe|sandbox"):
        evil(messages=[{"role": "user", "content": "x"}])


def test_hf_tokenizer_config_formatter() -> None:
    config = {
        "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.content }}]{% endfor %}",
        "bos_token": {"content": "<s>"},
        "eos_token": "</s>",
    }
    response = cf.hf_tokenizer_config_to_chat_formatter(config)(messages=[{"role": "user", "content": "a"}])
    assert response.prompt == "<s>[a]" and response.added_special is True and response.stop == ["</s>"]
    with pytest.raises(ValueError, match="no chat_template"):
        cf.hf_tokenizer_config_to_chat_formatter({})


def test_guess_chat_format_from_gguf_metadata() -> None:
    chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    assert cf.guess_chat_format_from_gguf_metadata({"tokenizer.chat_template": chatml}) == "chatml"
    assert cf.guess_chat_format_from_gguf_metadata({}) is None


def test_response_format_in_a_formatter_handler(llm: Llama) -> None:
    import json

    name = unique("json")
    cf.register_chat_format(name)(lambda messages, **kw: cf.ChatFormatterResponse(prompt="JSON:"))
    try:
        handler = cf.get_chat_completion_handler(name)
        out = handler(
            llama=llm, messages=MESSAGES, response_format={"type": "json_object"}, max_tokens=60, temperature=0
        )
        if out["choices"][0]["finish_reason"] == "stop":
            assert isinstance(json.loads(out["choices"][0]["message"]["content"]), dict)
        else:
            assert out["choices"][0]["message"]["content"].lstrip().startswith("{")
    finally:
        cf.LlamaChatCompletionHandlerRegistry().unregister_chat_handler(name)


def test_template_constants_render_their_formats() -> None:
    chatml = cf.Jinja2ChatFormatter(cf.CHATML_CHAT_TEMPLATE, cf.CHATML_EOS_TOKEN, cf.CHATML_BOS_TOKEN)
    assert (
        chatml(messages=[{"role": "user", "content": "hi"}]).prompt
        == cf.format_chatml(  # type: ignore[attr-defined]
            [{"role": "user", "content": "hi"}]
        ).prompt
    )
    assert cf.MIXTRAL_INSTRUCT_CHAT_TEMPLATE == cf.MISTRAL_INSTRUCT_CHAT_TEMPLATE
    assert "<|start_header_id|>" in cf.LLAMA3_INSTRUCT_CHAT_TEMPLATE


# --- behaviour llama-cpp-python's users rely on (haystack, guidance) ------------------------------------------


def test_empty_tools_list_means_no_tools(llm: Llama) -> None:
    """llama-cpp-haystack passes `tools=[]` on every call; llama-cpp-python treats it as no tools."""
    with_empty = llm.create_chat_completion(MESSAGES, tools=[], max_tokens=3, temperature=0, seed=1)
    without = llm.create_chat_completion(MESSAGES, max_tokens=3, temperature=0, seed=1)
    assert with_empty["choices"][0]["message"] == without["choices"][0]["message"]
    assert with_empty["usage"]["prompt_tokens"] == without["usage"]["prompt_tokens"]
    with pytest.raises(ChatMessageError, match="tool_choice needs tools"):
        llm.create_chat_completion(MESSAGES, tools=[], tool_choice="required", max_tokens=3)


def test_chat_format_reports_the_format_picked_for_the_model(llm: Llama, tiny_model_path: Path) -> None:
    assert llm.chat_format == "chatml"  # the tiny model has no template and an unknown family: chatml
    with Llama(str(tiny_model_path), n_ctx=256, n_threads=1, chat_format="gemma") as explicit:
        assert explicit.chat_format == "gemma"
    with Llama(str(tiny_model_path), n_ctx=256, n_threads=1, chat_handler=lambda **kwargs: None) as handled:
        assert handled.chat_format is None  # llama-cpp-python leaves it unset when a handler decides


def test_chat_format_of_a_gguf_template_is_chat_template_default(tmp_path: Path, tiny_model_path: Path) -> None:
    from llamarcp.chat.completion import chat_formatter

    with Llama(str(tiny_model_path), n_ctx=256, n_threads=1) as llm:
        llm._model.chat_template = lambda name=None: "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        llm._chat_format = None
        assert llm.chat_format == "chat_template.default"
        assert chat_formatter(llm).render(MESSAGES[:2]) == "<system>Be brief.<user>Hi"
        assert chat_formatter(llm, "chat_template.default").name == "tokenizer.chat_template"


def test_gemma_drops_system_messages_as_llama_cpp_python_does() -> None:
    from llamarcp.chat.templates import ChatFormatter

    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Late system."},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": " 2+2? "},
    ]
    prompt = ChatFormatter.from_format("gemma", "<bos>", "<eos>").render(messages)
    # llama-cpp-python 0.3.36 format_gemma: user/model turns only, text untrimmed, generation prompt last.
    assert prompt == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\n 2+2? <end_of_turn>\n<start_of_turn>model\n"
    )
