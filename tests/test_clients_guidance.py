"""guidance with llguidance (unchanged from PyPI) on llamarcp via install_as_llama_cpp(): `models.LlamaCpp` from a
path and from a `Llama`, with gen, select, regex and json, as guidance's docs use them, on gemma-3-270m.
guidance decodes its own `llama_batch` through the ctypes face and reads the logits with numpy; llguidance
takes `llama_tokenize`'s address from `llama_cpp.llama_cpp._lib`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llamarcp

pytestmark = pytest.mark.slow

llamarcp.install_as_llama_cpp()  # before guidance imports llama_cpp

import guidance  # noqa: E402
import llama_cpp  # noqa: E402
from guidance import assistant, gen, models, select, user  # noqa: E402
from pydantic import BaseModel, ConfigDict  # noqa: E402


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ok: bool


@pytest.fixture(scope="module")
def lm(default_model_path: Path) -> Iterator[Any]:
    model = models.LlamaCpp(str(default_model_path), n_ctx=1024, echo=False)
    yield model


def test_gen_is_greedy_and_matches_llamarcp(lm: Any, default_model_path: Path) -> None:
    out = lm + "The capital of France is" + gen("city", max_tokens=5, temperature=0)
    assert isinstance(out["city"], str) and out["city"]
    with llama_cpp.Llama(model_path=str(default_model_path), n_ctx=1024, verbose=False) as llm:
        ours = llm.create_completion("The capital of France is", max_tokens=5, temperature=0)["choices"][0]["text"]
    assert ours.startswith(out["city"]) or out["city"].startswith(ours)


def test_select(lm: Any) -> None:
    out = lm + "Is water wet? Answer: " + select(["yes", "no"], name="answer")
    assert out["answer"] in ("yes", "no")


def test_regex(lm: Any) -> None:
    out = lm + "A two digit number: " + gen("n", regex=r"[0-9]{2}", temperature=0)
    assert re.fullmatch(r"[0-9]{2}", out["n"])


def test_json(lm: Any) -> None:
    out = lm + "Reply in JSON: " + guidance.json(name="reply", schema=Answer, temperature=0)
    assert isinstance(Answer.model_validate_json(out["reply"]).ok, bool)
    assert json.loads(out["reply"]).keys() == {"ok"}


def test_chat_on_an_existing_llama(default_model_path: Path) -> None:
    llm = llama_cpp.Llama(model_path=str(default_model_path), n_ctx=1024, verbose=False)
    try:
        chat = models.LlamaCpp(llm, echo=False)
        with user():
            chat += "Say hello."
        with assistant():
            chat += gen("reply", max_tokens=8, temperature=0)
        assert isinstance(chat["reply"], str) and chat["reply"]
    finally:
        llm.close()
