"""Chat formatting: the sandbox (CVE-2024-34359), template helpers, named formats, message validation."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from llamarcp.chat import (
    CHAT_FORMATS,
    ChatFormat,
    ChatFormatter,
    formatter_for_model,
    get_chat_format,
    register_chat_format,
)
from llamarcp.errors import ChatMessageError, ChatTemplateError, ChatTemplateSecurityError, LlamaError

CONVERSATION = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]


def render(template: str, messages: list[dict] | None = None, **kwargs: object) -> str:
    return ChatFormatter(template, "<s>", "</s>").render(messages or CONVERSATION, **kwargs)


# --- sandbox ------------------------------------------------------------------------------------------------


def _payloads(sentinel: Path) -> dict[str, str]:
    cmd = f"touch {sentinel}"
    return {
        # The published proof of concept for CVE-2024-34359 (llama-cpp-python rendered it unsandboxed).
        "cve_2024_34359_poc": (
            "{% for x in ().__class__.__base__.__subclasses__() %}"
            "{% if 'warning' in x.__name__ %}"
            "{{ x()._module.__builtins__['__import__']('os').popen('" + cmd + "') }}"
            "{% endif %}{% endfor %}"
        ),
        "mro_subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "cycler_globals": "{{ cycler.__init__.__globals__.os.popen('" + cmd + "').read() }}",
        "joiner_globals": "{{ joiner.__init__.__globals__['os'].system('" + cmd + "') }}",
        "namespace_globals": "{{ namespace.__init__.__globals__.os.system('" + cmd + "') }}",
        "raise_exception_globals": "{{ raise_exception.__globals__['os'].system('" + cmd + "') }}",
        "range_globals": "{{ range.__globals__['os'].popen('" + cmd + "') }}",
        "self_context": "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('" + cmd + "') }}",
        "attr_filter": "{{ ''|attr('__class__')|attr('__mro__') }}",
        "format_string": "{{ '{0.__class__.__mro__}'.format('') }}",
        "getattr_on_message": "{{ messages[0].__class__.__init__.__globals__ }}",
        "dict_mutation": "{{ messages[0].update({'role': 'pwned'}) }}",
        "huge_string": "{{ 'x' * 1000000000000 }}",
        "huge_power": "{{ 10 ** 100000000 }}",
        "huge_printf_width": "{{ '%999999999d' % 1 }}",
        "huge_format_width": "{{ '{:>999999999}'.format('x') }}",
        "huge_format_filter": "{{ '%0999999999d' | format(1) }}",
        "huge_ljust": "{{ 'x'.ljust(10000000000) }}",
        "huge_center_filter": "{{ 'x' | center(10000000000) }}",
        "huge_indent_filter": "{{ 'a\nb' | indent(10000000000) }}",
        "huge_replace": "{{ ('x' * 1000000).replace('x', 'yyyyyyyyyy') }}",
        "huge_join": "{{ ('x' * 1000000).join(['a'] * 1000) }}",
    }


@pytest.mark.parametrize(
    "name",
    sorted(_payloads(Path("/nonexistent")).keys()),
)
def test_malicious_template_is_stopped_by_the_sandbox(name: str, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    template = _payloads(sentinel)[name]
    with pytest.raises(ChatTemplateSecurityError) as info:
        render(template)
    assert isinstance(info.value, ChatTemplateError) and isinstance(info.value, LlamaError)
    assert not sentinel.exists(), "template executed a shell command"


def test_malicious_template_cannot_read_files(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.txt"
    secret = "llamarcp-secret-4f1d9c"
    secret_file.write_text(secret)
    attempts = [
        "{% include '" + str(secret_file) + "' %}",
        "{% import '" + str(secret_file) + "' as s %}{{ s }}",
        "{% extends '" + str(secret_file) + "' %}",
        "{{ open('" + str(secret_file) + "').read() }}",
        "{{ cycler.__init__.__globals__['__builtins__']['open']('" + str(secret_file) + "').read() }}",
    ]
    for template in attempts:
        with pytest.raises(ChatTemplateError) as info:
            render(template)
        assert secret not in str(info.value), template


def test_caller_messages_are_never_modified() -> None:
    messages = [{"role": "user", "content": "hello", "extra": [1, 2]}]
    snapshot = json.dumps(messages)
    # list.append is allowed on the private copy the template sees (real templates keep queues that way).
    out = render(
        "{% set _ = messages.append({'role': 'x'}) %}{{ messages|length }}{{ messages[0].extra.pop() }}", messages
    )
    assert out == "22"
    assert json.dumps(messages) == snapshot


def test_lipsum_is_not_available() -> None:
    with pytest.raises(ChatTemplateError, match="lipsum"):
        render("{{ lipsum(n=100000000) }}")


def test_string_helpers_still_work_at_normal_sizes() -> None:
    template = (
        "{{ '%-5s|' % 'ab' }}{{ '{:>4}'.format('x') }}{{ 'x'.ljust(3, '.') }}{{ 'ab' | center(6) }}"
        "{{ 'a-b'.replace('-', '+') }}{{ ','.join(['1', '2']) }}{{ '%03d' | format(7) }}"
    )
    assert render(template) == "ab   |   xx..  ab  a+b1,2007"


def test_endless_loops_hit_the_render_deadline() -> None:
    template = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}never"
    formatter = ChatFormatter(template, render_timeout=0.3)
    with pytest.raises(ChatTemplateSecurityError, match="longer than 0.3 s"):  # the deadline, not the loop, ended it
        formatter.render(CONVERSATION)
    assert ChatFormatter("x").render_timeout == 5.0


@pytest.mark.parametrize(
    "template",
    [
        # Exponential macro recursion: no loop at all, 2**60 calls.
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
        # Few iterations, each one expensive.
        "{% set big = range(100000) | list %}{% for i in range(100000) %}{% set y = big | sort %}{% endfor %}",
    ],
)
def test_recursion_and_heavy_iterations_hit_the_deadline(template: str) -> None:
    with pytest.raises(ChatTemplateSecurityError, match="longer than 0.3 s"):
        ChatFormatter(template, render_timeout=0.3).render(CONVERSATION)


def test_unbounded_recursion_is_an_error() -> None:
    with pytest.raises(ChatTemplateError, match="recursed too deeply"):
        render("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}")


def test_loop_guard_keeps_loop_semantics() -> None:
    template = (
        "{% for m in messages %}{{ loop.index }}/{{ loop.length }}{{ '!' if loop.last }} {% endfor %}"
        "{% for a in [[1, [2]]] recursive %}<{% if a is iterable %}{{ loop(a) }}{% else %}{{ a }}{% endif %}>"
        "{% endfor %}"
        "{% for k, v in {'a': 1}.items() if v %}{{ k }}={{ v }}{% else %}none{% endfor %}"
    )
    assert render(template) == "1/4 2/4 3/4 4/4! <<1><<2>>>a=1"


def test_runaway_output_is_bounded() -> None:
    template = "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}"
    with pytest.raises(ChatTemplateError, match="more than"):
        render(template)


# --- helpers real templates need ------------------------------------------------------------------------------


def test_raise_exception_becomes_chat_template_error() -> None:
    template = "{% if messages[0].role == 'system' %}{{ raise_exception('No system role, please') }}{% endif %}ok"
    with pytest.raises(ChatTemplateError, match="rejected the conversation: No system role, please"):
        render(template)
    assert render(template, CONVERSATION[1:]) == "ok"


def test_syntax_error_is_reported_with_line() -> None:
    with pytest.raises(ChatTemplateError, match="syntax error on line 2"):
        ChatFormatter("ok\n{% for %}")


@pytest.mark.parametrize("bad", ["", "   ", None, 42])
def test_empty_or_non_string_template_is_rejected(bad: object) -> None:
    with pytest.raises(ChatTemplateError, match="non-empty string"):
        ChatFormatter(bad)  # type: ignore[arg-type]


def test_runtime_error_in_template_is_wrapped() -> None:
    with pytest.raises(ChatTemplateError, match="ZeroDivisionError"):
        render("{{ 1 // 0 }}")
    with pytest.raises(ChatTemplateError, match="UndefinedError"):
        render("{{ nothing.here }}")


def test_strftime_now_uses_the_clock() -> None:
    fixed = datetime.datetime(2026, 7, 14, 9, 30)
    formatter = ChatFormatter("{{ strftime_now('%d %b %Y') }}", now=lambda: fixed)
    assert formatter.render(CONVERSATION) == "14 Jul 2026"
    today = datetime.datetime.now().strftime("%Y")
    assert render("{{ strftime_now('%Y') }}") == today


def test_tojson_is_hugging_face_compatible() -> None:
    data = {"b": "é<>&", "a": [1, 2]}
    assert render("{{ x | tojson }}", x=data) == json.dumps(data, ensure_ascii=False)
    assert render("{{ x | tojson(indent=2) }}", x=data) == json.dumps(data, ensure_ascii=False, indent=2)
    assert render("{{ x | tojson(ensure_ascii=True) }}", x=data) == json.dumps(data)
    assert render("{{ x | tojson(sort_keys=True) }}", x=data) == json.dumps(data, ensure_ascii=False, sort_keys=True)
    assert render("{{ x | tojson(separators=(',', ':')) }}", x=data) == json.dumps(
        data, ensure_ascii=False, separators=(",", ":")
    )


def test_loop_controls() -> None:
    template = (
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{{ m.content }}{% if m.role == 'assistant' %}{% break %}{% endif %}{% endfor %}"
    )
    assert render(template) == "U1A1"


def test_template_variables() -> None:
    template = "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools | length }}|{{ enable_thinking }}"
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert render(template, tools=tools, enable_thinking=False) == "<s>|</s>|True|1|False"
    assert render(template, add_generation_prompt=False, tools=[]) == "<s>|</s>|False|0|"


def test_trim_and_lstrip_blocks_like_transformers() -> None:
    template = "{% for m in messages %}\n    {% if m.role == 'user' %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}"
    assert render(template) == "U1\nU2\n"


# --- content parts and message validation --------------------------------------------------------------------


def test_text_parts_are_flattened_for_string_only_templates() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    formatter = ChatFormatter.from_format("chatml")
    assert not formatter.supports_typed_content
    assert formatter.render(messages) == "<|im_start|>user\na\nb<|im_end|>\n<|im_start|>assistant\n"


def test_text_parts_are_kept_for_templates_that_iterate_them() -> None:
    template = (
        "{% for m in messages %}{% if m.content is string %}{{ m.content }}"
        "{% else %}{% for p in m.content %}[{{ p.type }}:{{ p.text }}]{% endfor %}{% endif %}{% endfor %}"
    )
    formatter = ChatFormatter(template)
    assert formatter.supports_typed_content
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert formatter.render(messages) == "[text:a][text:b]"


def test_non_text_parts_are_refused_by_string_only_templates() -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
    with pytest.raises(ChatMessageError, match="image_url"):
        ChatFormatter.from_format("chatml").render(messages)


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([], "must not be empty"),
        ("hello", "must be a list"),
        ({"role": "user"}, "must be a list"),
        (["hello"], r"messages\[0\] must be an object"),
        ([{"content": "x"}], r"messages\[0\].role"),
        ([{"role": "", "content": "x"}], r"messages\[0\].role"),
        ([{"role": "user", "content": 5}], r"messages\[0\].content must be"),
        ([{"role": "user", "content": ["x"]}], r"messages\[0\].content\[0\]"),
        ([{"role": "user", "content": "x", "meta": object()}], r"messages\[0\].meta: unsupported value"),
    ],
)
def test_malformed_messages_raise_clear_errors(messages: object, fragment: str) -> None:
    with pytest.raises(ChatMessageError, match=fragment):
        ChatFormatter.from_format("chatml").render(messages)  # type: ignore[arg-type]


# --- named formats -------------------------------------------------------------------------------------------

EXPECTED_NAMED = {
    "chatml": "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
    "<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n",
    "llama-2": "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]",
    "llama-3": "<s><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>"
    "\n\nU1<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|><|start_header_id|>user"
    "<|end_header_id|>\n\nU2<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma": "<s><start_of_turn>user\nU1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
    "<start_of_turn>user\nU2<end_of_turn>\n<start_of_turn>model\n",  # llama-cpp-python's: no system message
    "gemma3": "<s><start_of_turn>user\nS\n\nU1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
    "<start_of_turn>user\nU2<end_of_turn>\n<start_of_turn>model\n",
    "mistral-instruct": "<s>[INST] S\n\nU1[/INST] A1</s>[INST] U2[/INST]",
    "mistral-v7": "<s>[SYSTEM_PROMPT] S[/SYSTEM_PROMPT][INST] U1[/INST] A1</s>[INST] U2[/INST]",
    "phi-3": "<|system|>\nS<|end|>\n<|user|>\nU1<|end|>\n<|assistant|>\nA1<|end|>\n"
    "<|user|>\nU2<|end|>\n<|assistant|>\n",
    "zephyr": "<|system|>\nS</s>\n<|user|>\nU1</s>\n<|assistant|>\nA1</s>\n<|user|>\nU2</s>\n<|assistant|>\n",
    "vicuna": "S\n\nUSER: U1\nASSISTANT: A1</s>\nUSER: U2\nASSISTANT:",
    "alpaca": "S\n\n### Instruction:\nU1\n\n### Response:\nA1</s>\n\n### Instruction:\nU2\n\n### Response:\n",
}


def test_every_named_format_has_an_expected_rendering() -> None:
    # llama-cpp-python's older formats register on first use; tests/test_compat_chat_format.py renders them.
    from llamarcp.chat.completion import LEGACY_FORMAT_NAMES

    assert set(EXPECTED_NAMED) == set(CHAT_FORMATS) - LEGACY_FORMAT_NAMES


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMED))
def test_named_format_renders_published_layout(name: str) -> None:
    assert ChatFormatter.from_format(name, "<s>", "</s>").render(CONVERSATION) == EXPECTED_NAMED[name]


def test_format_aliases_and_unknown_names() -> None:
    assert get_chat_format("llama3") is get_chat_format("llama-3")
    assert get_chat_format("phi3").name == "phi-3"
    with pytest.raises(ChatTemplateError, match="unknown chat_format 'nope'.*chatml"):
        get_chat_format("nope")


def test_named_formats_refuse_unknown_roles() -> None:
    with pytest.raises(ChatTemplateError, match="got tool"):
        ChatFormatter.from_format("llama-2").render([{"role": "tool", "content": "x"}])


def test_register_chat_format() -> None:
    fmt = ChatFormat("test-echo", "{% for m in messages %}{{ m.role }}={{ m.content }};{% endfor %}", ("END",))
    try:
        register_chat_format(fmt)
        formatter = ChatFormatter.from_format("test-echo")
        assert formatter.render(CONVERSATION[:2]) == "system=S;user=U1;"
        assert formatter.stop == ("END",)
        with pytest.raises(ValueError, match="already registered"):
            register_chat_format(fmt)
        with pytest.raises(ChatTemplateError, match="syntax error"):
            register_chat_format(ChatFormat("test-broken", "{% if %}"))
        assert "test-broken" not in CHAT_FORMATS
    finally:
        CHAT_FORMATS.pop("test-echo", None)


def test_formatter_for_model_precedence() -> None:
    meta = {"tokenizer.chat_template": "{{ 'gguf:' ~ messages[0].content }}"}
    assert formatter_for_model(meta).render(CONVERSATION) == "gguf:S"
    assert formatter_for_model(meta, chat_format="vicuna").name == "vicuna"
    assert formatter_for_model(meta, chat_template="{{ 'own' }}", chat_format="vicuna").render(CONVERSATION) == "own"
    # No template in the GGUF: llama.cpp's default, chatml.
    assert formatter_for_model({}).name == "chatml"
    assert formatter_for_model({"tokenizer.chat_template": "  "}).name == "chatml"


# --- tool-call recognition -----------------------------------------------------------------------------------

from llamarcp.chat.tools import parse_tool_calls  # noqa: E402

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        (
            'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
            "Let me check.",
            [("get_weather", {"city": "Paris"})],
        ),
        (
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>\n'
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
            "",
            [("get_weather", {"city": "Oslo"}), ("get_time", {})],
        ),
        ('[TOOL_CALLS][{"name": "get_time", "arguments": {"tz": "UTC"}}]', "", [("get_time", {"tz": "UTC"})]),
        ('[TOOL_CALLS]get_weather[ARGS]{"city": "Rome"}', "", [("get_weather", {"city": "Rome"})]),
        ('{"name": "get_weather", "parameters": {"city": "Lima"}}', "", [("get_weather", {"city": "Lima"})]),
        ('<|python_tag|>{"name": "get_time", "parameters": {}}', "", [("get_time", {})]),
        ('functools[{"name": "get_time", "arguments": {}}]', "", [("get_time", {})]),
        ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Bern\\"}"}', "", [("get_weather", {"city": "Bern"})]),
    ],
)
def test_tool_calls_are_recognised(text: str, content: str, calls: list[tuple[str, dict]]) -> None:
    got_content, got_calls = parse_tool_calls(text, TOOLS)
    assert got_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got_calls] == calls
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in got_calls)
    assert len({c["id"] for c in got_calls}) == len(got_calls)


@pytest.mark.parametrize(
    "text",
    [
        "Just an answer.",
        '{"name": "unknown_tool", "arguments": {}}',  # not one of the offered tools
        '{"city": "Paris"}',
        "<tool_call>not json</tool_call>",
        '{"name": "get_time", "arguments": {}} and some trailing words',
    ],
)
def test_text_without_a_valid_call_stays_content(text: str) -> None:
    assert parse_tool_calls(text, TOOLS) == (text, [])


def test_no_tools_means_no_calls() -> None:
    text = '{"name": "get_time", "arguments": {}}'
    assert parse_tool_calls(text, None) == (text, [])


# --- create_chat_completion on a real (tiny, random-weight) model ---------------------------------------------

from llamarcp.chat import chat_formatter, create_chat_completion  # noqa: E402

CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]


def _copy_gguf_with(src: Path, dst: Path, extra: dict[str, str]) -> Path:
    """Rewrite `src` with extra string metadata (e.g. a chat template), tensors copied as they are."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in extra:
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, field.contents())
        else:
            writer.add_key_value(key, field.contents(), field.types[0])
    for key, value in extra.items():
        writer.add_string(key, value)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def test_chat_completion_shape_and_determinism(tiny_llama: Any) -> None:
    first = create_chat_completion(tiny_llama, CHAT, max_tokens=12, temperature=0)
    second = create_chat_completion(tiny_llama, CHAT, max_tokens=12, temperature=0)
    assert first["object"] == "chat.completion" and first["id"].startswith("chatcmpl-")
    choice = first["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = first["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 0 < usage["completion_tokens"] <= 12
    assert second["choices"][0]["message"] == choice["message"]


def test_chat_prompt_is_the_rendered_template(tiny_llama: Any) -> None:
    formatter = chat_formatter(tiny_llama)
    assert formatter.name == "chatml"  # the tiny model has no tokenizer.chat_template
    prompt = formatter.render(CHAT)
    expected = tiny_llama.tokenize(prompt.encode(), add_bos=True, special=True)
    result = create_chat_completion(tiny_llama, CHAT, max_tokens=1, temperature=0)
    assert result["usage"]["prompt_tokens"] == len(expected)
    other = create_chat_completion(tiny_llama, CHAT, max_tokens=1, temperature=0, chat_format="vicuna")
    vicuna = ChatFormatter.from_format("vicuna", "<s>", "</s>").render(CHAT)
    assert other["usage"]["prompt_tokens"] == len(tiny_llama.tokenize(vicuna.encode(), add_bos=True, special=True))


def test_template_bos_is_not_doubled(tiny_llama: Any) -> None:
    template = "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
    result = create_chat_completion(tiny_llama, CHAT, max_tokens=1, temperature=0, chat_template=template)
    body = ChatFormatter(template, "", "").render(CHAT)
    # One BOS (the template's), not the template's plus the tokenizer's.
    assert result["usage"]["prompt_tokens"] == len(tiny_llama.tokenize(body.encode(), add_bos=True, special=True))


def test_chat_stream_matches_non_stream(tiny_llama: Any) -> None:
    whole = create_chat_completion(tiny_llama, CHAT, max_tokens=10, temperature=0)
    chunks = list(create_chat_completion(tiny_llama, CHAT, max_tokens=10, temperature=0, stream=True))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_schema_response_is_valid(tiny_llama: Any, seed: int) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "level": {"enum": ["low", "high"]}, "n": {"type": "integer"}},
        "required": ["ok", "level", "n"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    result = create_chat_completion(tiny_llama, CHAT, max_tokens=256, seed=seed, temperature=1.0, response_format=fmt)
    choice = result["choices"][0]
    assert choice["finish_reason"] == "stop"
    data = json.loads(choice["message"]["content"])
    assert list(data) == ["ok", "level", "n"]
    assert isinstance(data["ok"], bool) and data["level"] in ("low", "high") and isinstance(data["n"], int)


def test_json_object_response_starts_an_object(tiny_llama: Any) -> None:
    # Random weights wander inside strings, so only the start is checked here; the gemma test parses it whole.
    result = create_chat_completion(tiny_llama, CHAT, max_tokens=8, response_format={"type": "json_object"}, seed=4)
    assert result["choices"][0]["message"]["content"].startswith("{")


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_call(tiny_llama: Any, choice: Any) -> None:
    result = create_chat_completion(tiny_llama, CHAT, tools=[WEATHER_TOOL], tool_choice=choice, max_tokens=256, seed=7)
    out = result["choices"][0]
    assert out["finish_reason"] == "tool_calls"
    assert out["message"]["content"] is None
    (call,) = out["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    args = json.loads(call["function"]["arguments"])
    assert isinstance(args["city"], str) and args["unit"] in ("C", "F")


def test_forced_tool_call_streamed(tiny_llama: Any) -> None:
    chunks = list(
        create_chat_completion(
            tiny_llama, CHAT, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=256, seed=7, stream=True
        )
    )
    last = chunks[-1]["choices"][0]
    assert last["finish_reason"] == "tool_calls"
    (call,) = last["delta"]["tool_calls"]
    assert call["index"] == 0 and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"])["unit"] in ("C", "F")


def test_legacy_functions_become_function_call(tiny_llama: Any) -> None:
    result = create_chat_completion(
        tiny_llama,
        CHAT,
        functions=[WEATHER_TOOL["function"]],
        function_call={"name": "get_weather"},
        max_tokens=256,
        seed=7,
    )
    out = result["choices"][0]
    assert out["finish_reason"] == "function_call"
    assert out["message"]["function_call"]["name"] == "get_weather"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"tool_choice": "required"}, "tool_choice needs tools"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "x"}}}, "not one of"),
        ({"tools": [{"type": "function"}]}, "tools must be"),
        ({"tools": ["get_weather"]}, "tools must be"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice must be"),
        ({"response_format": {"type": "yaml"}}, "response_format type"),
        ({"response_format": {"type": "json_schema"}}, "json_schema needs"),
        ({"response_format": {"type": "json_object"}, "grammar": 'root ::= "x"'}, "either grammar"),
        ({"messages": []}, "must not be empty"),
        ({"messages": [{"role": "user", "content": 3}]}, "content must be"),
    ],
)
def test_bad_chat_arguments_raise_clear_errors(tiny_llama: Any, kwargs: dict, fragment: str) -> None:
    messages = kwargs.pop("messages", CHAT)
    with pytest.raises(ChatMessageError, match=fragment):
        create_chat_completion(tiny_llama, messages, max_tokens=4, **kwargs)


def test_malicious_gguf_chat_template_cannot_run_code(tiny_model_path: Path, tmp_path: Path) -> None:
    from llamarcp import Llama

    sentinel = tmp_path / "pwned"
    payload = _payloads(sentinel)["cve_2024_34359_poc"]
    model = _copy_gguf_with(tiny_model_path, tmp_path / "evil.gguf", {"tokenizer.chat_template": payload})
    with Llama(str(model), n_ctx=128, n_threads=1) as llm:
        assert llm.chat_template() == payload
        with pytest.raises(ChatTemplateSecurityError):
            create_chat_completion(llm, CHAT, max_tokens=2)
    assert not sentinel.exists()


def test_gguf_chat_template_is_used(tiny_model_path: Path, tmp_path: Path) -> None:
    from llamarcp import Llama

    template = "{% for m in messages %}<<{{ m.role }}>>{{ m.content }}{% endfor %}<<assistant>>"
    model = _copy_gguf_with(tiny_model_path, tmp_path / "templated.gguf", {"tokenizer.chat_template": template})
    with Llama(str(model), n_ctx=128, n_threads=1) as llm:
        formatter = chat_formatter(llm)
        assert formatter.name == "tokenizer.chat_template"
        assert formatter.render(CHAT) == "<<system>>You are terse.<<user>>Say hello.<<assistant>>"
        result = create_chat_completion(llm, CHAT, max_tokens=2, temperature=0)
        expected = llm.tokenize(formatter.render(CHAT).encode(), add_bos=True, special=True)
        assert result["usage"]["prompt_tokens"] == len(expected)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"general.architecture": "gemma3"}, "gemma3"),
        ({"general.architecture": "gemma2"}, "gemma3"),
        ({"general.architecture": "phi3"}, "phi-3"),
        ({"general.architecture": "qwen2"}, "chatml"),
        ({"general.architecture": "llama", "tokenizer.ggml.pre": "llama-bpe"}, "llama-3"),
        ({"general.architecture": "llama", "tokenizer.ggml.pre": "default"}, "chatml"),  # Llama 2 or Mistral: unknown
        ({}, "chatml"),
    ],
)
def test_format_guessed_from_architecture_when_gguf_has_no_template(metadata: dict, expected: str) -> None:
    assert formatter_for_model(metadata).name == expected
    # A template in the file always wins over the guess.
    assert formatter_for_model({**metadata, "tokenizer.chat_template": "{{ 'x' }}"}).name == "tokenizer.chat_template"


# --- the real default model (gemma-3-270m, no chat template in its GGUF) -------------------------------------


@pytest.fixture(scope="module")
def gemma(default_model_path: Path) -> Any:
    from llamarcp import Llama

    with Llama(str(default_model_path), n_ctx=1024) as llm:
        yield llm


@pytest.mark.slow
def test_gemma_prompt_uses_gemma_turns_and_one_bos(gemma: Any) -> None:
    formatter = chat_formatter(gemma)
    assert formatter.name == "gemma3" and formatter.bos_token == "<bos>"
    prompt = formatter.render(CHAT)
    tokens = gemma.tokenize(prompt.encode(), add_bos=False, special=True)
    start, end, bos = (
        gemma.tokenize(t.encode(), add_bos=False, special=True) for t in ("<start_of_turn>", "<end_of_turn>", "<bos>")
    )
    assert len(start) == len(end) == len(bos) == 1  # real special tokens, not text
    assert tokens.count(bos[0]) == 1 and tokens[0] == bos[0]
    assert tokens.count(start[0]) == 2 and tokens.count(end[0]) == 1
    result = create_chat_completion(gemma, CHAT, max_tokens=8, temperature=0)
    assert result["usage"]["prompt_tokens"] == len(tokens)
    assert result["choices"][0]["message"]["content"]


@pytest.mark.slow
def test_gemma_json_schema_reply_parses(gemma: Any) -> None:
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 24}}, "required": ["capital"]}
    messages = [{"role": "user", "content": "What is the capital of France? Reply in JSON."}]
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    result = create_chat_completion(gemma, messages, max_tokens=40, temperature=0, response_format=fmt)
    choice = result["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert isinstance(json.loads(choice["message"]["content"])["capital"], str)


# --- tools in "auto" mode: the model's own tool-call syntax is recognised ----------------------------------------
# A grammar makes the tiny model write exactly the reply under test, so the real generation path is exercised.

HERMES_CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}</tool_call>'


def _literal_grammar(text: str) -> str:
    return "root ::= " + json.dumps(text)


def test_auto_tool_call_is_parsed(tiny_llama: Any) -> None:
    result = create_chat_completion(
        tiny_llama, CHAT, tools=[WEATHER_TOOL], max_tokens=256, grammar=_literal_grammar(HERMES_CALL)
    )
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "unit": "C"}


def test_auto_tool_call_streamed_is_held_back_and_parsed(tiny_llama: Any) -> None:
    chunks = list(
        create_chat_completion(
            tiny_llama, CHAT, tools=[WEATHER_TOOL], max_tokens=256, grammar=_literal_grammar(HERMES_CALL), stream=True
        )
    )
    # No fragment of the raw call leaks out as content.
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == ""
    last = chunks[-1]["choices"][0]
    assert last["finish_reason"] == "tool_calls"
    assert json.loads(last["delta"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris", "unit": "C"}


def test_plain_answer_with_tools_streams_as_content(tiny_llama: Any) -> None:
    answer = "It is sunny in Paris today, no tool needed."
    chunks = list(
        create_chat_completion(
            tiny_llama, CHAT, tools=[WEATHER_TOOL], max_tokens=256, grammar=_literal_grammar(answer), stream=True
        )
    )
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert "".join(contents) == answer
    assert len(contents) > 3  # streamed as it was generated, not held to the end
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    whole = create_chat_completion(
        tiny_llama, CHAT, tools=[WEATHER_TOOL], max_tokens=256, grammar=_literal_grammar(answer)
    )
    assert whole["choices"][0]["message"] == {"role": "assistant", "content": answer}


def test_tool_choice_none_hides_tools(tiny_llama: Any) -> None:
    result = create_chat_completion(
        tiny_llama,
        CHAT,
        tools=[WEATHER_TOOL],
        tool_choice="none",
        max_tokens=256,
        grammar=_literal_grammar(HERMES_CALL),
    )
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["choices"][0]["message"]["content"] == HERMES_CALL


def test_chat_logprobs(tiny_llama: Any) -> None:
    result = create_chat_completion(tiny_llama, CHAT, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
    content = result["choices"][0]["logprobs"]["content"]
    assert len(content) == result["usage"]["completion_tokens"]
    assert "".join(item["token"] for item in content) == result["choices"][0]["message"]["content"]
    for item in content:
        assert item["logprob"] <= 0 and len(item["top_logprobs"]) == 2
        assert item["top_logprobs"][0]["logprob"] >= item["top_logprobs"][1]["logprob"]
        assert bytes(item["bytes"]).decode() == item["token"]


def test_template_kwargs_reach_the_template(tiny_llama: Any) -> None:
    template = "{% if enable_thinking %}THINK {% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"
    on = create_chat_completion(
        tiny_llama, CHAT, max_tokens=1, chat_template=template, template_kwargs={"enable_thinking": True}
    )
    off = create_chat_completion(tiny_llama, CHAT, max_tokens=1, chat_template=template)
    think = len(tiny_llama.tokenize(b"THINK ", add_bos=False))
    assert on["usage"]["prompt_tokens"] - off["usage"]["prompt_tokens"] in (think - 1, think, think + 1)
    assert on["usage"]["prompt_tokens"] > off["usage"]["prompt_tokens"]


def test_llama_method_delegates_to_chat_module(tiny_llama: Any, tiny_model_path: Path) -> None:
    from llamarcp import Llama

    via_method = tiny_llama.create_chat_completion(CHAT, max_tokens=4, temperature=0)
    via_module = create_chat_completion(tiny_llama, CHAT, max_tokens=4, temperature=0)
    assert via_method["choices"][0]["message"] == via_module["choices"][0]["message"]
    with Llama(str(tiny_model_path), n_ctx=256, n_threads=1, chat_format="vicuna") as llm:
        assert chat_formatter(llm).name == "vicuna"
        result = llm.create_chat_completion(CHAT, max_tokens=1)
        vicuna = ChatFormatter.from_format("vicuna", "<s>", "</s>").render(CHAT)
        assert result["usage"]["prompt_tokens"] == len(llm.tokenize(vicuna.encode(), add_bos=True, special=True))


def test_tools_are_described_when_the_template_ignores_them(tiny_llama: Any) -> None:
    from llamarcp.chat.completion import render_chat_prompt

    formatter = chat_formatter(tiny_llama)  # chatml: no notion of tools
    assert not formatter.supports_tools
    prompt = render_chat_prompt(formatter, CHAT, [WEATHER_TOOL])
    assert prompt.startswith("<|im_start|>system\nYou are terse.\n\nYou can call these tools")
    assert '"name": "get_weather"' in prompt and "<tool_call>" in prompt
    result = create_chat_completion(tiny_llama, CHAT, tools=[WEATHER_TOOL], max_tokens=1)
    expected = tiny_llama.tokenize(prompt.encode(), add_bos=True, special=True)
    assert result["usage"]["prompt_tokens"] == len(expected)
    # Without a system message one is added for the tools.
    alone = render_chat_prompt(formatter, CHAT[1:], [WEATHER_TOOL])
    assert alone.startswith("<|im_start|>system\nYou can call these tools")


def test_tojson_accepts_map_results_like_llama_cpp() -> None:
    assert render("{{ tools | map(attribute='function') | tojson }}", tools=[{"function": {"name": "f"}}]) == (
        '[{"name": "f"}]'
    )
    assert render("{{ range(3) | tojson }}") == "[0, 1, 2]"
    with pytest.raises(ChatTemplateError, match="not JSON serializable"):
        render("{{ cycler | tojson }}")


CALL_MESSAGES = [
    {"role": "user", "content": "hi"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "abc123def", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
    },
]


def test_arguments_parsed_for_templates_that_apply_tojson() -> None:
    template = (
        "{% for m in messages %}{% for c in m.tool_calls or [] %}{{ c.function.arguments | tojson }}"
        "{% endfor %}{% endfor %}"
    )
    formatter = ChatFormatter(template)
    assert formatter.wants_object_arguments
    assert formatter.render(CALL_MESSAGES) == '{"a": 1}'


def test_arguments_kept_as_text_for_templates_that_print_them() -> None:
    template = (
        "{% for m in messages %}{% for c in m.tool_calls or [] %}{{ c.function.arguments }}{% endfor %}{% endfor %}"
    )
    formatter = ChatFormatter(template)
    assert not formatter.wants_object_arguments
    assert formatter.render(CALL_MESSAGES) == '{"a": 1}'
    # An object handed in by the caller is turned into the JSON text such a template expects.
    as_object = json.loads(json.dumps(CALL_MESSAGES))
    as_object[1]["tool_calls"][0]["function"]["arguments"] = {"a": 1}
    assert formatter.render(as_object) == '{"a": 1}'


def test_from_json_filter() -> None:
    assert render("{{ ('{\"k\": [1, 2]}' | from_json).k[1] }}") == "2"
    with pytest.raises(ChatTemplateError, match="JSONDecodeError|Expecting"):
        render("{{ 'nope' | from_json }}")


# --- <think> reasoning is split from the answer ------------------------------------------------------------------

from llamarcp.chat.completion import ThinkSplitter  # noqa: E402


def _split_all(text: str, pieces: int, in_reasoning: bool = False) -> tuple[str, str]:
    splitter = ThinkSplitter(in_reasoning)
    size = max(1, len(text) // pieces)
    parts = []
    for i in range(0, len(text), size):
        parts += splitter.push(text[i : i + size])
    parts += splitter.finish()
    return (
        "".join(t for k, t in parts if k == "reasoning"),
        "".join(t for k, t in parts if k == "content"),
    )


@pytest.mark.parametrize("pieces", [1, 3, 1000])  # whole, in thirds, character by character
@pytest.mark.parametrize(
    ("text", "in_reasoning", "reasoning", "content"),
    [
        ("<think>\nplan it\n</think>\n\nThe answer.", False, "\nplan it\n", "The answer."),
        ("  <think>a</think>b", False, "a", "b"),
        ("plan</think>\nanswer", True, "plan", "answer"),
        ("no thinking here", False, "", "no thinking here"),
        ("<thinking is fine>", False, "", "<thinking is fine>"),
        ("<think>never closed", False, "never closed", ""),
        ("a < b </think", True, "a < b </think", ""),
    ],
)
def test_think_splitter(text: str, in_reasoning: bool, reasoning: str, content: str, pieces: int) -> None:
    assert _split_all(text, pieces, in_reasoning) == (reasoning, content)


THINK_TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant: <think>\n"


def test_reasoning_content_in_chat_completion(tiny_llama: Any) -> None:
    grammar = _literal_grammar("I should greet.\n</think>\n\nHello!")
    result = create_chat_completion(tiny_llama, CHAT, chat_template=THINK_TEMPLATE, grammar=grammar, max_tokens=128)
    message = result["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Hello!", "reasoning_content": "I should greet."}
    raw = create_chat_completion(
        tiny_llama, CHAT, chat_template=THINK_TEMPLATE, grammar=grammar, max_tokens=128, reasoning_format="none"
    )
    assert raw["choices"][0]["message"]["content"] == "I should greet.\n</think>\n\nHello!"
    with pytest.raises(ChatMessageError, match="reasoning_format"):
        create_chat_completion(tiny_llama, CHAT, max_tokens=1, reasoning_format="xml")


def test_reasoning_content_streamed(tiny_llama: Any) -> None:
    grammar = _literal_grammar("I should greet.\n</think>\n\nHello!")
    chunks = list(
        create_chat_completion(
            tiny_llama, CHAT, chat_template=THINK_TEMPLATE, grammar=grammar, max_tokens=128, stream=True
        )
    )
    deltas = [c["choices"][0]["delta"] for c in chunks]
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    assert reasoning == "I should greet.\n" and content == "Hello!"
    first_answer = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all("reasoning_content" not in d for d in deltas[first_answer:])


def test_templates_without_think_are_not_split(tiny_llama: Any) -> None:
    text = "<think>x</think>y"
    result = create_chat_completion(tiny_llama, CHAT, grammar=_literal_grammar(text), max_tokens=64)
    assert result["choices"][0]["message"] == {"role": "assistant", "content": text}
