"""Images through the OpenAI-compatible server, driven by the official `openai` client.

A server with `--mmproj` (llamarcp's flag, two slots of continuous batching), one started the llama-cpp-python
way (`--chat_format llava-1-5 --clip_model_path`), and a text-only one that answers image requests with 400.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from media_files import png
from test_server import Server, start_server
from tiny_mmproj import MLP_IMAGE_TOKENS, write_tiny_mmproj


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _messages(*images: bytes, text: str = "What is in the picture?") -> list[Any]:
    parts: list[Any] = [{"type": "image_url", "image_url": {"url": _uri(i)}} for i in images]
    return [{"role": "user", "content": [{"type": "text", "text": text}, *parts]}]


@pytest.fixture(scope="module")
def mmproj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mmproj(tmp_path_factory.mktemp("mmproj") / "mmproj.gguf")


@pytest.fixture(scope="module")
def vision_server(tiny_model_path: Path, mmproj: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("vision")
    yield from start_server(tmp, "-m", str(tiny_model_path), "--alias", "tiny-vision", "-t", "1", "-c", "1024",
                            "--mmproj", str(mmproj), "--parallel", "2")  # fmt: skip


@pytest.fixture(scope="module")
def llava_server(tiny_model_path: Path, mmproj: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("llava")
    args = ["--model", str(tiny_model_path), "--n_ctx", "1024", "--n_threads", "1", "--parallel", "1"]
    yield from start_server(tmp, *args, "--chat_format", "llava-1-5", "--clip_model_path", str(mmproj))


@pytest.fixture(scope="module")
def text_server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("text")
    yield from start_server(tmp, "-m", str(tiny_model_path), "-t", "1", "-c", "512", "--parallel", "1")


def test_models_report_input_modalities(vision_server: Server, text_server: Server) -> None:
    (card,) = vision_server.client().models.list().data
    assert card.id == "tiny-vision" and card.model_extra == {"input_modalities": ["text", "image"]}
    (plain,) = text_server.client().models.list().data
    assert plain.model_extra == {"input_modalities": ["text"]}


def test_chat_with_images_through_the_openai_client(vision_server: Server) -> None:
    client = vision_server.client()
    one = client.chat.completions.create(model="tiny-vision", messages=_messages(png(20, 20, 1)), max_tokens=4,
                                         temperature=0)  # fmt: skip
    assert one.choices[0].message.role == "assistant"
    assert one.usage is not None and one.usage.prompt_tokens > MLP_IMAGE_TOKENS
    two = client.chat.completions.create(model="tiny-vision", messages=_messages(png(20, 20, 1), png(9, 30, 2)),
                                         max_tokens=4, temperature=0)  # fmt: skip
    assert two.usage is not None and two.usage.prompt_tokens >= one.usage.prompt_tokens + MLP_IMAGE_TOKENS
    stream = client.chat.completions.create(model="tiny-vision", messages=_messages(png(20, 20, 1)), max_tokens=4,
                                            temperature=0, stream=True)  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == one.choices[0].message.content


def test_concurrent_image_requests_share_the_batch(vision_server: Server) -> None:
    client = vision_server.client()
    images = [png(16, 16, seed) for seed in range(4)]

    def ask(image: bytes) -> str:
        reply = client.chat.completions.create(model="tiny-vision", messages=_messages(image), max_tokens=4,
                                               temperature=0)  # fmt: skip
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(ask, images))
    alone = [ask(image) for image in images]
    assert together == alone


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (_uri(png(10, 10)[:-25]), "truncated"),
        (_uri(b"not an image at all"), "not a PNG"),
        ("data:image/png;base64,%%%", "base64"),
        (_uri(b"\x89PNG\r\n\x1a\n" + png(2, 2)[8:33].replace((2).to_bytes(4, "big"), (60000).to_bytes(4, "big"))), ""),
        ("/etc/hostname", "not local files"),
        ("file:///etc/passwd", "not local files"),
    ],
    ids=["truncated", "garbage", "bad-base64", "giant-header", "local-path", "file-url"],
)
def test_bad_images_are_400_and_the_server_keeps_serving(vision_server: Server, url: str, words: str) -> None:
    client = vision_server.client()
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]
    messages = [{"role": "user", "content": parts}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-vision", messages=messages, max_tokens=2)  # type: ignore[arg-type]
    assert words in str(info.value)
    assert vision_server.proc.poll() is None
    ok = client.chat.completions.create(model="tiny-vision", messages=_messages(png(8, 8)), max_tokens=1)
    assert ok.choices


def test_too_many_images_are_refused(vision_server: Server) -> None:
    from llamarcp.validate.media import MAX_IMAGES_PER_REQUEST

    many = _messages(*[png(2, 2, seed) for seed in range(MAX_IMAGES_PER_REQUEST + 1)])
    with pytest.raises(openai.BadRequestError, match="MAX_IMAGES_PER_REQUEST"):
        vision_server.client().chat.completions.create(model="tiny-vision", messages=many, max_tokens=1)


def test_a_text_only_model_answers_400_to_images(text_server: Server) -> None:
    with pytest.raises(openai.BadRequestError, match="takes no images"):
        text_server.client().chat.completions.create(model="tiny", messages=_messages(png(8, 8)), max_tokens=1)
    assert (
        text_server.client()
        .chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        .choices
    )


def test_llama_cpp_python_settings_serve_the_llava_format(llava_server: Server) -> None:
    client = llava_server.client()
    reply = client.chat.completions.create(model="x", messages=_messages(png(12, 12)), max_tokens=3, temperature=0)
    assert reply.usage is not None and reply.usage.prompt_tokens > MLP_IMAGE_TOKENS
    (card,) = client.models.list().data
    assert card.model_extra == {"input_modalities": ["text", "image"]}


def test_a_vision_chat_format_without_a_projector_is_a_usage_error(tiny_model_path: Path) -> None:
    from llamarcp.server.__main__ import UsageError, build_parser, resolve

    args = build_parser().parse_args(["-m", str(tiny_model_path), "--chat_format", "llava-1-5"])
    with pytest.raises(UsageError, match="needs a projector"):
        resolve(args, environ={})


def test_a_config_file_names_the_projector(tiny_model_path: Path, mmproj: Path, tmp_path: Path) -> None:
    import json

    from llamarcp.server.__main__ import build_parser, resolve

    config = tmp_path / "models.json"
    vision_entry = {"model": str(tiny_model_path), "model_alias": "v", "clip_model_path": str(mmproj)}
    models = [{**vision_entry, "chat_format": "qwen2.5-vl"}, {"model": str(tiny_model_path), "model_alias": "t"}]
    config.write_text(json.dumps({"models": models}))
    settings, _ = resolve(build_parser().parse_args(["--config_file", str(config)]), environ={})
    vision, text = settings.model_configs()
    assert (vision.mmproj, vision.vision_format, vision.chat_format) == (str(mmproj), "qwen2.5-vl", None)
    arguments = vision.llama_arguments()
    assert arguments["mmproj"] == str(mmproj) and type(arguments["chat_handler"]).__name__ == "Qwen25VLChatHandler"
    assert text.mmproj is None and "chat_handler" not in text.llama_arguments()


def test_create_app_with_llama_cpp_python_settings_serves_images(tiny_model_path: Path, mmproj: Path) -> None:
    from fastapi.testclient import TestClient

    from llamarcp.server import create_app
    from llamarcp.server.compat_settings import ModelSettings, ServerSettings

    settings = ModelSettings(model=str(tiny_model_path), model_alias="v", n_ctx=512, n_threads=1,
                             chat_format="llava-1-5", clip_model_path=str(mmproj))  # fmt: skip
    with TestClient(create_app(server_settings=ServerSettings(), model_settings=[settings])) as client:
        assert client.get("/v1/models").json()["data"][0]["input_modalities"] == ["text", "image"]
        body = {"model": "v", "messages": _messages(png(10, 10)), "max_tokens": 2, "temperature": 0}
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200 and reply.json()["usage"]["prompt_tokens"] > MLP_IMAGE_TOKENS
        bad = {**body, "messages": _messages(b"garbage bytes")}
        assert client.post("/v1/chat/completions", json=bad).status_code == 400
