"""llama-cpp-python's multimodal chat handlers through the drop-in (llamarcp.compat.vision_handlers).

The expected prompts were rendered with llama-cpp-python 0.3.36's own `CHAT_FORMAT` templates (its sandboxed
jinja environment, trim_blocks and lstrip_blocks, the default system message prepended as its `__call__` does,
image URLs replaced by the media marker), for two conversations.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from hub_cache import fake_hub_cache
from media_files import png
from procs import run
from tiny_mmproj import MLP_IMAGE_TOKENS, write_tiny_mmproj

from llamarcp import Llama
from llamarcp.compat import vision_handlers
from llamarcp.errors import MediaError

ROOT = Path(__file__).resolve().parent.parent
U1, U2 = "data:image/png;base64,AAAA", "https://example.com/cat.png"
CONVERSATIONS: list[list[dict[str, Any]]] = [
    [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": U1}}],
        }
    ],
    [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": U1},
                {"type": "text", "text": "Compare"},
                {"type": "image_url", "image_url": {"url": U2}},
            ],
        },
        {"role": "assistant", "content": "Both are cats."},
        {"role": "user", "content": "Which is bigger?"},
    ],
]
EXPECTED: dict[str, list[str]] = json.loads(
    (Path(__file__).parent / "data" / "vision_prompts_llama_cpp_python_0.3.36.json").read_text()
)


@pytest.fixture(scope="module")
def mmproj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mmproj(tmp_path_factory.mktemp("mmproj") / "mmproj-tiny-f32.gguf", "mlp", 64)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_prompt_formats_match_llama_cpp_python(name: str, mmproj: Path) -> None:
    handler = getattr(vision_handlers, name)(clip_model_path=str(mmproj))
    for messages, expected in zip(CONVERSATIONS, EXPECTED[name]):
        assert handler.render_prompt(messages, "<__media__>") == expected
    assert handler.get_image_urls(CONVERSATIONS[1]) == [U1, U2]


def test_names_keywords_and_exports(mmproj: Path, tmp_path: Path) -> None:
    import llamarcp.llama_chat_format as chat_format

    for name in vision_handlers.__all__:
        if name != "VISION_CHAT_FORMATS":
            assert getattr(chat_format, name) is getattr(vision_handlers, name)
    assert chat_format.Llama3VisionAlpha is chat_format.Llama3VisionAlphaChatHandler
    handler = chat_format.MTMDChatHandler(clip_model_path=str(mmproj), verbose=False, use_gpu=False)
    assert (handler.clip_model_path, handler.verbose, handler.use_gpu) == (str(mmproj), False, False)
    with pytest.raises(ValueError, match="Clip model path does not exist"):
        chat_format.Llava15ChatHandler(clip_model_path=str(tmp_path / "missing.gguf"))
    assert set(vision_handlers.VISION_CHAT_FORMATS) == {
        "llava-1-5", "obsidian", "llava-1-6", "moondream", "nanollava", "llama-3-vision-alpha", "minicpm-v-2.6",
        "qwen2.5-vl", "mtmd", "gemma4",
    }  # fmt: skip
    image = png(5, 5)
    assert handler.load_image("data:image/png;base64," + base64.b64encode(image).decode()) == image
    with pytest.raises(MediaError):
        handler.load_image("data:image/png;base64," + base64.b64encode(b"nope").decode())


@pytest.mark.parametrize("name", ["Llava15ChatHandler", "Qwen25VLChatHandler", "MTMDChatHandler"])
def test_llama_with_a_chat_handler_answers_about_images(name: str, tiny_model_path: Path, mmproj: Path) -> None:
    handler = getattr(vision_handlers, name)(clip_model_path=str(mmproj))
    with Llama(str(tiny_model_path), chat_handler=handler, n_ctx=512, n_threads=1) as llm:
        assert llm.projector is None  # loaded on the first call, as llama-cpp-python does
        messages = [
            {"role": "user", "content": [
                {"type": "text", "text": "What's in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png(9, 9)).decode()}},  # noqa: E501
            ]},
        ]  # fmt: skip
        reply = llm.create_chat_completion(messages=messages, max_tokens=3, temperature=0)
        assert llm.projector is not None and llm.projector.n_encoded == 1
        assert reply["object"] == "chat.completion" and reply["usage"]["prompt_tokens"] > MLP_IMAGE_TOKENS
        again = llm.create_chat_completion(messages=messages, max_tokens=3, temperature=0)
        assert again["choices"][0]["message"] == reply["choices"][0]["message"]
        assert llm.projector.n_encoded == 1  # the second identical request reused the image
        chunks = list(llm.create_chat_completion(messages=messages, max_tokens=3, temperature=0, stream=True))
        assert (
            "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            == (reply["choices"][0]["message"]["content"])
        )


def test_llama_cpp_python_code_runs_unchanged_after_install(
    tiny_model_path: Path, mmproj: Path, tmp_path: Path
) -> None:
    """llama-cpp-python's README recipe, verbatim apart from paths, in a fresh process."""
    image = tmp_path / "picture.png"
    image.write_bytes(png(12, 12, seed=4))
    fake_hub_cache(tmp_path / "hub", "someone/tiny-vision", {"mmproj-tiny-f32.gguf": mmproj})
    code = f"""
import base64, json
import llamarcp
llamarcp.install_as_llama_cpp()
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Llava15ChatHandler, MoondreamChatHandler

def image_to_base64_data_uri(file_path):
    with open(file_path, "rb") as img_file:
        base64_data = base64.b64encode(img_file.read()).decode('utf-8')
        return f"data:image/png;base64,{{base64_data}}"

chat_handler = Llava15ChatHandler(clip_model_path={str(mmproj)!r})
llm = Llama(model_path={str(tiny_model_path)!r}, chat_handler=chat_handler, n_ctx=2048, verbose=False)
out = llm.create_chat_completion(
    messages=[
        {{"role": "system", "content": "You are an assistant who perfectly describes images."}},
        {{"role": "user", "content": [
            {{"type": "text", "text": "What's in this image?"}},
            {{"type": "image_url", "image_url": {{"url": image_to_base64_data_uri({str(image)!r})}}}},
        ]}},
    ],
    max_tokens=4,
)
print(json.dumps({{"object": out["object"], "prompt_tokens": out["usage"]["prompt_tokens"]}}))
handler = MoondreamChatHandler.from_pretrained(repo_id="someone/tiny-vision", filename="*tiny-f32.gguf")
print(json.dumps({{"from_pretrained": handler.clip_model_path.endswith("mmproj-tiny-f32.gguf")}}))
"""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = run([sys.executable, "-c", code], timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = (json.loads(line) for line in done.stdout.splitlines()[-2:])
    assert first["object"] == "chat.completion" and first["prompt_tokens"] > MLP_IMAGE_TOKENS
    assert second == {"from_pretrained": True}


def test_mtmd_cpp_names() -> None:
    from llamarcp.compat import LLAMA_CPP_MODULES, mtmd_module

    assert LLAMA_CPP_MODULES["llama_cpp.mtmd_cpp"] == "llamarcp.compat.mtmd_module"
    assert mtmd_module.mtmd_default_marker() == b"<__media__>"
    assert mtmd_module.MTMD_INPUT_CHUNK_TYPE_IMAGE == 1
    assert "mtmd_helper_eval_chunks" in dir(mtmd_module) and "mtmd_tokenize" in dir(mtmd_module)
    with pytest.raises(AttributeError, match="mtmd.h names only"):
        mtmd_module.llama_decode  # noqa: B018


@pytest.mark.slow
def test_drop_in_on_gemma_3_270m_with_a_gemma3_projector(default_model_path: Path, tmp_path: Path) -> None:
    mmproj = write_tiny_mmproj(tmp_path / "mmproj-gemma3.gguf", "gemma3", 640)
    image = tmp_path / "photo.png"
    image.write_bytes(png(32, 24, seed=6))
    code = f"""
import json
import llamarcp
llamarcp.install_as_llama_cpp()
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Gemma4ChatHandler
llm = Llama(model_path={str(default_model_path)!r}, chat_handler=Gemma4ChatHandler(clip_model_path={str(mmproj)!r}),
            n_ctx=1024, n_threads=2, verbose=False)
messages = [{{"role": "user", "content": [
    {{"type": "image_url", "image_url": {{"url": {str(image)!r}}}}},
    {{"type": "text", "text": "Describe the picture."}},
]}}]
out = llm.create_chat_completion(messages=messages, max_tokens=6, temperature=0)
print(json.dumps({{"prompt_tokens": out["usage"]["prompt_tokens"], "text": out["choices"][0]["message"]["content"]}}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = run([sys.executable, "-c", code], timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["prompt_tokens"] > 9 and isinstance(result["text"], str)
