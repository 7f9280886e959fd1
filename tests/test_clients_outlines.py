"""outlines (unchanged from PyPI) on llamarcp via install_as_llama_cpp(): `outlines.from_llamacpp(Llama(...))`
with a choice, a regex, a JSON schema, a Pydantic model and streaming, as outlines' docs use them, on
gemma-3-270m. outlines reads the vocabulary through `llama_cpp.llama_token_to_piece` (the ctypes face)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

import llamarcp

pytestmark = pytest.mark.slow

llamarcp.install_as_llama_cpp()  # before outlines imports llama_cpp

import llama_cpp  # noqa: E402
import outlines  # noqa: E402
from outlines.types import Regex  # noqa: E402
from pydantic import BaseModel, ConfigDict  # noqa: E402


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: Literal["yes", "no"]
    confident: bool


@pytest.fixture(scope="module")
def model(default_model_path: Path) -> Iterator[Any]:
    llm = llama_cpp.Llama(model_path=str(default_model_path), n_ctx=1024, chat_format="gemma", verbose=False)
    yield outlines.from_llamacpp(llm)
    llm.close()


def test_vocabulary_comes_through_the_ctypes_face(model: Any) -> None:
    tokenizer = model.tokenizer
    llm = model.model
    assert len(tokenizer.vocabulary) > 200_000  # gemma 3's 262k pieces, read with llama_token_to_piece
    assert tokenizer.eos_token_id == llm.token_eos()
    assert tokenizer.vocabulary["<start_of_turn>"] == llm.tokenize(b"<start_of_turn>", add_bos=False, special=True)[0]


def test_choice(model: Any) -> None:
    assert model("Is the sky blue? Answer yes or no.", Literal["yes", "no"], max_tokens=5) in ("yes", "no")


def test_regex(model: Any) -> None:
    result = model("Give a three digit number:", Regex(r"[0-9]{3}"), max_tokens=6)
    assert re.fullmatch(r"[0-9]{3}", result)


def test_json_schema(model: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}, "count": {"type": "boolean"}},
        "required": ["color", "count"],
        "additionalProperties": False,
    }
    result = model("Pick a color as JSON:", outlines.json_schema(json.dumps(schema)), max_tokens=40)
    data = json.loads(result)
    assert data["color"] in ("red", "green", "blue") and isinstance(data["count"], bool)


def test_pydantic_model(model: Any) -> None:
    result = model("Is water wet? Reply in JSON.", Verdict, max_tokens=40)
    verdict = Verdict.model_validate_json(result)
    assert verdict.answer in ("yes", "no")


def test_streaming_regex_and_chat(model: Any) -> None:
    chunks = list(model.stream("A year: ", Regex(r"(19|20)[0-9]{2}"), max_tokens=8))
    assert len(chunks) >= 1 and re.fullmatch(r"(19|20)[0-9]{2}", "".join(chunks))
    chat = outlines.inputs.Chat([{"role": "system", "content": "ignored by gemma"}, {"role": "user", "content": "Hi"}])
    reply = model(chat, Literal["Hello", "Hi"], max_tokens=4)
    assert reply in ("Hello", "Hi")
