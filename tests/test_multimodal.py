"""llamarcp.multimodal through Llama: images encoded by libmtmd and decoded into the sequence, on random projectors.

The tiny llama (n_embd 64) with the `mlp` projector of tests/tiny_mmproj.py: one image is 36 image tokens.
Gemma-3-270m with a random `gemma3` projector: 9 tokens wrapped in <start_of_image>/<end_of_image> (slow).
"""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from media_files import png
from tiny_mmproj import GEMMA3_IMAGE_TOKENS, MLP_IMAGE_TOKENS, write_tiny_mmproj

from llamarcp import Llama
from llamarcp.errors import ClosedError, MediaError, PromptTooLongError
from llamarcp.multimodal import Media, MediaPrompt


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mmproj(tmp_path_factory.mktemp("mmproj") / "mlp.gguf", "mlp", 64)


@pytest.fixture(scope="module")
def vision(tiny_model_path: Path, mlp_path: Path) -> Any:
    llm = Llama(str(tiny_model_path), mmproj=mlp_path, n_ctx=512, n_threads=1, seed=7)
    yield llm
    llm.close()


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _image_message(*images: bytes, text: str = "Describe.") -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": _uri(i)}} for i in images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def _logits_after(llm: Llama, prompt: MediaPrompt) -> np.ndarray:
    llm.reset()
    llm.create_completion(prompt, max_tokens=1, temperature=0)
    return np.array(llm._engine_or_raise().logits(), copy=True)


def test_one_image_is_36_tokens_between_the_text(vision: Llama) -> None:
    projector = vision.projector
    assert projector is not None and projector.modalities == ["text", "image"]
    text = "hello world"
    prompt = vision.media_prompt(f"{text} {projector.marker} there", [Media("image", png(40, 30, seed=1))])
    n_text = len(vision.tokenize(f"{text}  there".encode()))
    assert len(prompt) - len(prompt.text_tokens()) == MLP_IMAGE_TOKENS
    assert abs(len(prompt.text_tokens()) - n_text) <= 1  # the marker splits the text into two tokenizations
    assert [s.kind for s in prompt.spans] == [0, 1, 0] and prompt.n_media == 1
    assert all(t < 0 for t in prompt[prompt.spans[1].start : prompt.spans[2].start])


def test_different_images_give_different_logits_the_same_image_identical(vision: Llama) -> None:
    marker = vision.projector.marker  # type: ignore[union-attr]
    one, two = png(32, 32, seed=1), png(32, 32, seed=2)
    a = _logits_after(vision, vision.media_prompt(f"look {marker} now", [Media("image", one)]))
    b = _logits_after(vision, vision.media_prompt(f"look {marker} now", [Media("image", two)]))
    a_again = _logits_after(vision, vision.media_prompt(f"look {marker} now", [Media("image", one)]))
    assert not np.allclose(a, b)
    assert np.array_equal(a, a_again)


def test_the_same_image_in_a_follow_up_turn_is_not_encoded_again(vision: Llama) -> None:
    vision.reset()
    projector = vision.projector
    assert projector is not None
    image = png(24, 24, seed=11)
    first = _image_message(image)
    reply = vision.create_chat_completion(first, max_tokens=4, temperature=0)
    encoded = projector.n_encoded
    follow_up = [*first, {"role": "assistant", "content": reply["choices"][0]["message"]["content"]},
                 {"role": "user", "content": "And the colours?"}]  # fmt: skip
    again = vision.create_chat_completion(follow_up, max_tokens=4, temperature=0)
    assert projector.n_encoded == encoded  # the KV of the image was reused: not encoded, not decoded
    engine = vision._engine_or_raise()
    assert engine.n_prompt_tokens_evaluated < again["usage"]["prompt_tokens"] - MLP_IMAGE_TOKENS
    # Another conversation with the same image: its KV is gone, its embeddings come from the cache.
    other = [{"role": "system", "content": "You are terse."}, *first]
    vision.create_chat_completion(other, max_tokens=2, temperature=0)
    assert projector.n_encoded == encoded


def test_a_reused_prefix_is_never_cut_inside_an_image(vision: Llama) -> None:
    marker = vision.projector.marker  # type: ignore[union-attr]
    image = Media("image", png(20, 20, seed=5))
    full = vision.media_prompt(f"a {marker} b", [image])
    start = full.spans[1].start
    assert full.safe_prefix(start + 5) == start and full.safe_prefix(start) == start
    assert full.safe_prefix(len(full) - 1) == len(full) - 1
    ref = _logits_after(vision, full)
    vision.reset()
    # Only part of the image's placeholders in memory (as if an earlier prompt ended inside it): decoded again.
    engine = vision._engine_or_raise()
    vision.create_completion(vision.media_prompt(f"a {marker} b", [image]), max_tokens=1, temperature=0)
    engine.truncate(start + 10)
    vision.create_completion(full, max_tokens=1, temperature=0)
    assert engine.n_prompt_tokens_evaluated == len(full) - start
    assert np.array_equal(np.array(engine.logits()), ref)


def test_several_images_per_message_and_chat_reply(vision: Llama, tmp_path: Path) -> None:
    file_image = tmp_path / "three.png"
    file_image.write_bytes(png(16, 48, seed=3))
    messages = _image_message(png(30, 30, seed=1), png(64, 16, seed=2))
    messages[0]["content"].append({"type": "image_url", "image_url": {"url": str(file_image)}})
    reply = vision.create_chat_completion(messages, max_tokens=3, temperature=0)
    assert reply["usage"]["prompt_tokens"] > 3 * MLP_IMAGE_TOKENS
    assert reply["choices"][0]["finish_reason"] in ("length", "stop")
    chunks = list(vision.create_chat_completion(messages, max_tokens=3, temperature=0, stream=True))
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert streamed == reply["choices"][0]["message"]["content"]
    with pytest.raises(MediaError, match="not local files"):
        vision.create_chat_completion(messages, max_tokens=1, allow_local_media=False)


def test_bad_image_inputs_are_clear_errors(vision: Llama) -> None:
    with pytest.raises(MediaError, match="truncated"):
        vision.create_chat_completion(_image_message(png(10, 10)[:-30]), max_tokens=1)
    with pytest.raises(MediaError, match="not a PNG"):
        vision.create_chat_completion(_image_message(b"garbage" * 10), max_tokens=1)
    huge = b"\x89PNG\r\n\x1a\n" + png(2, 2)[8:33]  # IHDR of 2x2 ...
    huge = huge[:16] + (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big") + huge[24:]
    with pytest.raises(MediaError):  # CRC or size: refused before stb_image allocates 10 GB
        vision.create_chat_completion(_image_message(huge), max_tokens=1)
    marker = vision.projector.marker  # type: ignore[union-attr]
    with pytest.raises(MediaError, match="2 media markers"):
        vision.media_prompt(f"{marker}{marker} x", [Media("image", png(4, 4))])
    with pytest.raises(MediaError, match="must end with text"):
        vision.media_prompt(f"x {marker}", [Media("image", png(4, 4))])
    with pytest.raises(ValueError, match="echo"):
        vision.create_completion(vision.media_prompt(f"{marker} x", [Media("image", png(4, 4))]), echo=True)
    # The Llama still works afterwards.
    assert vision.create_chat_completion(_image_message(png(8, 8)), max_tokens=1)["choices"]


def test_prompts_longer_than_the_context_are_refused(tiny_model_path: Path, mlp_path: Path) -> None:
    with Llama(str(tiny_model_path), mmproj=mlp_path, n_ctx=64, n_threads=1) as small:
        images = [png(8, 8, seed) for seed in range(1 + small.n_ctx() // MLP_IMAGE_TOKENS)]
        with pytest.raises(PromptTooLongError):
            small.create_chat_completion(_image_message(*images), max_tokens=1)


def test_a_small_n_batch_decodes_the_image_in_pieces(tiny_model_path: Path, mlp_path: Path, vision: Llama) -> None:
    """libmtmd aborts on an n_batch above the context's; the context's own (here 8 < 36 tokens) is always used."""
    marker = vision.projector.marker  # type: ignore[union-attr]
    image = Media("image", png(12, 12, seed=9))
    ref = _logits_after(vision, vision.media_prompt(f"x {marker} y", [image]))
    with Llama(str(tiny_model_path), mmproj=mlp_path, n_ctx=512, n_batch=8, n_threads=1) as llm:
        got = _logits_after(llm, llm.media_prompt(f"x {marker} y", [image]))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_a_text_only_model_refuses_images(tiny_llama: Llama) -> None:
    assert tiny_llama.projector is None
    with pytest.raises(MediaError, match="takes no images"):
        tiny_llama.create_chat_completion(_image_message(png(4, 4)), max_tokens=1)


def test_close_frees_the_projector_with_the_model(tiny_model_path: Path, mlp_path: Path) -> None:
    llm = Llama(str(tiny_model_path), mmproj=mlp_path, n_ctx=128, n_threads=1)
    projector = llm.projector
    assert projector is not None and not projector.closed
    llm.close()
    assert projector.closed
    with pytest.raises(ClosedError):
        llm.create_chat_completion(_image_message(png(4, 4)), max_tokens=1)


def test_threads_share_one_vision_llama(vision: Llama) -> None:
    images = [png(16, 16, seed=s) for s in range(4)]
    expected = [vision.create_chat_completion(_image_message(i), max_tokens=3, temperature=0) for i in images]
    results: dict[int, Any] = {}

    def run(k: int) -> None:
        results[k] = vision.create_chat_completion(_image_message(images[k]), max_tokens=3, temperature=0)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert results[k]["choices"][0]["message"]["content"] == expected[k]["choices"][0]["message"]["content"]


def test_image_requests_join_continuous_batching(tiny_model_path: Path, mlp_path: Path, vision: Llama) -> None:
    images = [png(20, 20, seed=s) for s in range(3)]
    single = [vision.create_chat_completion(_image_message(i), max_tokens=4, temperature=0) for i in images]
    with Llama(str(tiny_model_path), mmproj=mlp_path, n_ctx=256, n_threads=1, n_parallel=3) as batched:
        streams = [
            batched.create_chat_completion(_image_message(i), max_tokens=4, temperature=0, stream=True) for i in images
        ]
        texts = ["".join(c["choices"][0]["delta"].get("content") or "" for c in s) for s in streams]
        assert texts == [r["choices"][0]["message"]["content"] for r in single]
        # A follow-up of a finished conversation reuses its slot's image KV.
        projector = batched.projector
        assert projector is not None
        encoded = projector.n_encoded
        follow = [*_image_message(images[0]), {"role": "assistant", "content": texts[0]},
                  {"role": "user", "content": "more"}]  # fmt: skip
        batched.create_chat_completion(follow, max_tokens=2, temperature=0)
        assert projector.n_encoded == encoded


@pytest.mark.slow
def test_gemma3_projector_on_gemma_3_270m(default_model_path: Path, tmp_path: Path) -> None:
    mmproj = write_tiny_mmproj(tmp_path / "gemma3.gguf", "gemma3", 640)
    with Llama(str(default_model_path), mmproj=mmproj, n_ctx=512, n_threads=2) as llm:
        marker = llm.projector.marker  # type: ignore[union-attr]
        prompt = llm.media_prompt(f"<start_of_turn>user\n{marker}What?<end_of_turn>\n", [Media("image", png(32, 32))])
        assert len(prompt) - len(prompt.text_tokens()) == GEMMA3_IMAGE_TOKENS
        boundary = llm.tokenize(b"<start_of_image>", add_bos=False, special=True)
        assert boundary[0] in prompt.text_tokens()
        a = _logits_after(llm, prompt)
        b = _logits_after(llm, llm.media_prompt(f"<start_of_turn>user\n{marker}What?<end_of_turn>\n",
                                                [Media("image", png(32, 32, seed=9))]))  # fmt: skip
        assert not np.allclose(a, b)
        reply = llm.create_chat_completion(_image_message(png(32, 32)), max_tokens=4, temperature=0)
        assert reply["usage"]["prompt_tokens"] > GEMMA3_IMAGE_TOKENS


def test_cli_describes_an_image(tiny_model_path: Path, mlp_path: Path, tmp_path: Path) -> None:
    import io

    from llamarcp.__main__ import main

    image = tmp_path / "cat.png"
    image.write_bytes(png(20, 20, seed=8))
    out, err = io.StringIO(), io.StringIO()
    argv = ["-m", str(tiny_model_path), "--mmproj", str(mlp_path), "--image", str(image), "-p", "What is it?"]
    assert main([*argv, "-n", "4", "--temp", "0", "-t", "1"], stdout=out, stderr=err) == 0, err.getvalue()
    assert out.getvalue().strip()
    err = io.StringIO()
    assert main(["-m", str(tiny_model_path), "--image", str(image), "-p", "x"], stdout=io.StringIO(), stderr=err) == 1
    assert "--mmproj" in err.getvalue()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    err = io.StringIO()
    code = main([*argv[:4], "--image", str(bad), "-p", "x", "-n", "1"], stdout=io.StringIO(), stderr=err)
    assert code == 1 and "truncated or corrupt PNG" in err.getvalue()


def test_audio_to_a_vision_only_projector_is_refused(vision: Llama) -> None:
    wav = b"RIFF" + (36).to_bytes(4, "little") + b"WAVEfmt " + b"\0" * 28
    messages = [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}},
        {"type": "text", "text": "What is said?"},
    ]}]  # fmt: skip
    with pytest.raises(MediaError, match="no audio encoder"):
        vision.create_chat_completion(messages, max_tokens=1)


def test_several_choices_of_one_image_prompt(vision: Llama) -> None:
    projector = vision.projector
    assert projector is not None
    image = png(18, 18, seed=21)
    reply = vision.create_chat_completion(_image_message(image), n=3, max_tokens=3, seed=5, temperature=1.0)
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2]
    encoded = projector.n_encoded
    vision.create_chat_completion(_image_message(image), n=2, max_tokens=2, seed=5)
    assert projector.n_encoded == encoded


def test_the_same_image_gives_the_same_logits_at_other_thread_counts(tiny_model_path: Path, mlp_path: Path) -> None:
    image = Media("image", png(26, 26, seed=13))
    rows = []
    for threads in (1, 2):
        with Llama(str(tiny_model_path), mmproj=mlp_path, n_ctx=256, n_threads=threads) as llm:
            marker = llm.projector.marker  # type: ignore[union-attr]
            rows.append(_logits_after(llm, llm.media_prompt(f"see {marker} here", [image])))
    np.testing.assert_allclose(rows[0], rows[1], rtol=1e-5, atol=1e-5)


def test_audio_in_through_a_whisper_projector(tiny_model_path: Path, tmp_path: Path) -> None:
    from media_files import wav
    from tiny_mmproj import AUDIO_TOKENS, write_tiny_audio_mmproj

    mmproj = write_tiny_audio_mmproj(tmp_path / "audio.gguf")
    with Llama(str(tiny_model_path), mmproj=mmproj, n_ctx=1024, n_threads=1) as llm:
        projector = llm.projector
        assert projector is not None and projector.modalities == ["text", "audio"]

        def clip(seed: int) -> list[dict[str, Any]]:
            audio = {"data": base64.b64encode(wav(0.4, seed)).decode(), "format": "wav"}
            return [{"role": "user", "content": [{"type": "input_audio", "input_audio": audio},
                                                 {"type": "text", "text": "What is said?"}]}]  # fmt: skip

        reply = llm.create_chat_completion(clip(1), max_tokens=3, temperature=0)
        assert reply["usage"]["prompt_tokens"] > AUDIO_TOKENS
        marker = projector.marker
        a = _logits_after(llm, llm.media_prompt(f"hear {marker} now", [Media("audio", wav(0.4, 1))]))
        b = _logits_after(llm, llm.media_prompt(f"hear {marker} now", [Media("audio", wav(0.4, 2))]))
        assert not np.allclose(a, b)
        with pytest.raises(MediaError, match="no vision encoder"):
            llm.create_chat_completion(_image_message(png(8, 8)), max_tokens=1)


def test_the_embedding_cache_is_bounded_in_bytes(vision: Llama, monkeypatch: pytest.MonkeyPatch) -> None:
    from llamarcp import multimodal

    projector = vision.projector
    assert projector is not None
    one_image = MLP_IMAGE_TOKENS * projector.n_embd_inp * 4
    monkeypatch.setattr(multimodal, "MAX_CACHED_EMBEDDING_BYTES", 2 * one_image)
    marker = projector.marker
    for seed in range(100, 104):
        vision.create_completion(vision.media_prompt(f"x {marker} y", [Media("image", png(6, 6, seed))]), max_tokens=1)
    assert len(projector._embeddings) == 2
