"""Per-request `chat_template_kwargs` and `reasoning_format` over HTTP with the `openai` client: the variables
reach the chat template (the prompt changes, and so does what the answer is parsed into), and the reasoning
is returned apart (`reasoning_content`, llama-server's field) unless `reasoning_format` is "none"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server import Server, start_server

KEY = "reasoning-key"
CHAT = [{"role": "user", "content": "Hi"}]
#: Opens a <think> block unless the request says enable_thinking=false (as Qwen3's template does).
TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if enable_thinking is defined and not enable_thinking %}assistant: {% else %}assistant: <think>\n{% endif %}"
)
ANSWER = "I should greet.\n</think>\n\nHello!"


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("reasoning")
    template = tmp / "think.jinja"
    template.write_text(TEMPLATE)
    args = ("--model", str(tiny_model_path), "--alias", "tiny", "-t", "1", "-c", "256", "-np", "1")
    yield from start_server(tmp, *args, "--chat-template-file", str(template), api_key=KEY)


def _chat(server: Server, answer: str, **extra: Any) -> Any:
    grammar = "root ::= " + json.dumps(answer)  # the tiny random model says exactly this
    return server.client().chat.completions.create(
        model="tiny",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=64,
        temperature=0,
        extra_body={"grammar": grammar, **extra},
    )


def test_template_kwargs_reach_the_template(server: Server) -> None:
    def prompt(kwargs: dict[str, Any] | None) -> str:
        body: dict[str, Any] = {"messages": CHAT}
        if kwargs is not None:
            body["chat_template_kwargs"] = kwargs
        response = httpx.post(server.url + "/apply-template", json=body, headers=server.headers(), timeout=30)
        assert response.status_code == 200, response.text
        return str(response.json()["prompt"])

    assert prompt(None).endswith("assistant: <think>\n")
    assert prompt({"enable_thinking": False}).endswith("assistant: ")
    assert prompt({"enable_thinking": True}) == prompt(None)


def test_reasoning_is_returned_apart(server: Server) -> None:
    message = _chat(server, ANSWER).choices[0].message
    assert message.content == "Hello!"
    assert (message.model_extra or {}).get("reasoning_content") == "I should greet."
    raw = _chat(server, ANSWER, reasoning_format="none").choices[0].message
    assert raw.content == ANSWER and not (raw.model_extra or {}).get("reasoning_content")


def test_reasoning_streamed_apart(server: Server) -> None:
    grammar = "root ::= " + json.dumps(ANSWER)
    stream = server.client().chat.completions.create(
        model="tiny",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=64,
        temperature=0,
        stream=True,
        extra_body={"grammar": grammar},
    )
    reasoning, content = "", ""
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        content += delta.content or ""
    assert (reasoning.strip(), content) == ("I should greet.", "Hello!")


def test_thinking_off_by_template_kwargs(server: Server) -> None:
    # The template opens no <think> block, so a plain answer is all content.
    message = _chat(server, "Hello!", chat_template_kwargs={"enable_thinking": False}).choices[0].message
    assert message.content == "Hello!" and not (message.model_extra or {}).get("reasoning_content")
