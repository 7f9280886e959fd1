"""llama-server's own routes on llamarcp's server: /tokenize (pieces, mixed content), /detokenize, /apply-template,
/props, /infill (on a copy of the tiny model given FIM tokens), and llama-server's per-request fields on the
OpenAI routes: ignore_eos, n_probs, cache_prompt, id_slot, chat_template_kwargs, reasoning_format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server import CHAT, Server, _error, start_server
from test_server_metrics import scrape

EOS_LIKELY = {"2": 100.0}  # the tiny vocab's EOS, pushed so it would end generation at once
FIM = {"pre": 32000 - 3, "suf": 32000 - 2, "mid": 32000 - 1}


@pytest.fixture(scope="module")
def fim_model(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with fill-in-the-middle token ids in its metadata (llama.cpp reads them from there)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    out = tmp_path_factory.mktemp("fim") / "tiny-fim.gguf"
    reader = gguf.GGUFReader(str(tiny_model_path))
    writer = gguf.GGUFWriter(str(out), "llama", endianess=reader.endianess)
    new = {
        gguf.Keys.Tokenizer.FIM_PRE_ID: MetadataDetails(gguf.GGUFValueType.UINT32, FIM["pre"]),
        gguf.Keys.Tokenizer.FIM_SUF_ID: MetadataDetails(gguf.GGUFValueType.UINT32, FIM["suf"]),
        gguf.Keys.Tokenizer.FIM_MID_ID: MetadataDetails(gguf.GGUFValueType.UINT32, FIM["mid"]),
    }
    copy_with_new_metadata(reader, writer, new, [])
    return out


@pytest.fixture(scope="module")
def server(fim_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("llama-routes")
    yield from start_server(tmp, "--model", str(fim_model), "--alias", "tiny", "-t", "1", "-c", "1024", "--metrics")


def test_tokenize_with_pieces_and_detokenize(server: Server, tiny_llama: Any) -> None:
    text = "Hello world, <s> naïve"
    plain = server.post("/tokenize", {"content": text}).json()["tokens"]
    assert plain == tiny_llama.tokenize(text.encode(), add_bos=False, special=True)
    with_bos = server.post("/tokenize", {"content": text, "add_special": True}).json()["tokens"]
    assert with_bos == [1, *plain]
    literal = server.post("/tokenize", {"content": "<s>", "parse_special": False}).json()["tokens"]
    assert 1 not in literal
    pieces = server.post("/tokenize", {"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == plain
    assert "".join(p["piece"] for p in pieces[:2]) == " Hello world"
    mixed = server.post("/tokenize", {"content": ["Hello", 13, " world"]}).json()["tokens"]
    assert 13 in mixed and mixed[0] != 1
    back = server.post("/detokenize", {"tokens": plain}).json()
    assert back["content"] == tiny_llama.detokenize(plain, special=True).decode()
    assert back["content"].startswith("Hello world, <s>") and back["content"].endswith("naïve")
    # A piece that is not valid UTF-8 on its own comes back as its bytes (llama-server's shape).
    byte_piece = server.post("/tokenize", {"content": [0x80 + 3], "with_pieces": True}).json()["tokens"][0]
    assert byte_piece["id"] == 0x83 and isinstance(byte_piece["piece"], (str, list))


def test_apply_template_matches_the_chat_prompt(server: Server) -> None:
    prompt = server.post("/apply-template", {"messages": CHAT}).json()["prompt"]
    assert isinstance(prompt, str) and CHAT[-1]["content"] in prompt
    chat = server.post("/v1/chat/completions", {"messages": CHAT, "max_tokens": 1}).json()
    tokens = server.post("/tokenize", {"content": prompt, "add_special": True}).json()["tokens"]
    assert chat["usage"]["prompt_tokens"] == len(tokens)


def test_props(server: Server) -> None:
    props = httpx.get(server.url + "/props", timeout=10).json()
    assert props["total_slots"] == 4 and props["model_alias"] == "tiny"
    assert props["default_generation_settings"]["n_ctx"] == 1024
    assert props["endpoint_metrics"] is True and props["endpoint_slots"] is True
    assert props["bos_token"] == "<s>" and props["eos_token"] == "</s>"
    assert _error(httpx.post(server.url + "/props", json={}, timeout=10), 501)["type"] == "not_supported_error"


def test_infill(server: Server) -> None:
    body = {
        "input_prefix": "def add(a, b):\n    ",
        "input_suffix": "\n    return c\n",
        "input_extra": [{"filename": "util.py", "text": "def sub(a, b): return a - b\n"}],
        "n_predict": 8,
        "temperature": 0,
        "ignore_eos": True,
    }
    result = server.post("/infill", body).json()
    assert result["stop"] is True and result["stop_type"] == "limit" and result["tokens_predicted"] == 8
    assert isinstance(result["content"], str) and result["tokens_evaluated"] > 10
    with httpx.stream("POST", server.url + "/infill", json={**body, "stream": True}, timeout=60) as response:
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    assert "".join(e["content"] for e in events) == result["content"]
    assert events[-1]["stop"] is True and all(e["stop"] is False for e in events[:-1])
    assert _error(server.post("/infill", {"input_prefix": "x"}), 400)["param"] == "input_suffix"
    bad_extra = {"input_prefix": "x", "input_suffix": "y", "input_extra": [{"name": "z"}]}
    assert "input_extra" in _error(server.post("/infill", bad_extra), 400)["message"]


def test_plain_model_has_no_infill_and_no_rerank(tiny_model_path: Path, tmp_path: Path) -> None:
    for plain in start_server(tmp_path, "--model", str(tiny_model_path), "-t", "1", "-c", "512", "-np", "1"):
        error = _error(plain.post("/infill", {"input_prefix": "a", "input_suffix": "b"}), 400)
        assert "Infill is not supported" in error["message"]
        error = _error(plain.post("/v1/rerank", {"query": "a", "documents": ["b"]}), 501)
        assert "--reranking" in error["message"]


def test_llama_server_request_fields(server: Server) -> None:
    client = server.client()
    ended = client.completions.create(model="tiny", prompt="Hi", max_tokens=10, logit_bias=EOS_LIKELY)
    assert ended.usage is not None and ended.usage.completion_tokens == 0
    kept = client.completions.create(
        model="tiny", prompt="Hi", max_tokens=10, logit_bias=EOS_LIKELY, extra_body={"ignore_eos": True}
    )
    assert kept.usage is not None and kept.usage.completion_tokens == 10 and kept.choices[0].finish_reason == "length"
    probs = client.completions.create(model="tiny", prompt="Hi", max_tokens=3, extra_body={"n_probs": 2})
    assert probs.choices[0].logprobs is not None
    assert all(len(top) == 2 for top in probs.choices[0].logprobs.top_logprobs or [])
    chat = client.chat.completions.create(
        model="tiny",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=3,
        extra_body={
            "n_probs": 2,
            "ignore_eos": True,
            "chat_template_kwargs": {"enable_thinking": False},
            "reasoning_format": "none",
            "id_slot": 2,
            "cache_prompt": False,
        },
    )
    assert chat.choices[0].logprobs is not None and chat.choices[0].logprobs.content is not None
    assert [len(t.top_logprobs) for t in chat.choices[0].logprobs.content] == [2, 2, 2]
    slots = httpx.get(server.url + "/slots", timeout=10).json()
    assert slots[2]["n_tokens"] > 0

    prompt = "A prompt long enough that reusing it from the cache is clearly visible in the counters."
    client.completions.create(model="tiny", prompt=prompt, max_tokens=1)
    before = scrape(server)
    client.completions.create(model="tiny", prompt=prompt, max_tokens=1, extra_body={"cache_prompt": False})
    after = scrape(server)
    assert after["llamacpp:prompt_tokens_cached_total"] == before["llamacpp:prompt_tokens_cached_total"]
    client.completions.create(model="tiny", prompt=prompt, max_tokens=1)
    again = scrape(server)
    assert again["llamacpp:prompt_tokens_cached_total"] > after["llamacpp:prompt_tokens_cached_total"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {}, "content"),
        ("/tokenize", {"content": "x", "with_pieces": "perhaps"}, "with_pieces"),
        ("/tokenize", {"content": [10**12]}, "outside the vocab"),
        ("/detokenize", {"tokens": [-5]}, "outside the vocab"),
        ("/apply-template", {"messages": []}, "messages"),
        ("/apply-template", {"messages": CHAT, "extra": 1}, "extra"),
        ("/v1/completions", {"prompt": "x", "n_probs": 1000}, "n_probs"),
        ("/v1/completions", {"prompt": "x", "id_slot": 4}, "id_slot"),
        ("/v1/chat/completions", {"messages": CHAT, "reasoning_format": "loud"}, "reasoning_format"),
    ],
)
def test_bad_requests(server: Server, path: str, body: dict[str, Any], param: str) -> None:
    error = _error(server.post(path, body), 400)
    assert error["param"] == param or param in error["message"], error
