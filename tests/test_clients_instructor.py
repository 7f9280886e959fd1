"""instructor (unchanged from PyPI) on llamarcp via install_as_llama_cpp(): `instructor.patch` over
`Llama.create_chat_completion_openai_v1` in JSON_SCHEMA mode, as instructor's llama-cpp-python page shows it,
on gemma-3-270m."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

import llamarcp

pytestmark = pytest.mark.slow

llamarcp.install_as_llama_cpp()

import instructor  # noqa: E402
import llama_cpp  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402


class UserDetail(BaseModel):
    name: str = Field(max_length=20)
    age: int


class Mood(BaseModel):
    mood: Literal["happy", "sad"]


@pytest.fixture(scope="module")
def llm(default_model_path: Path) -> Iterator[Any]:
    model = llama_cpp.Llama(model_path=str(default_model_path), n_ctx=1024, chat_format="gemma", verbose=False)
    yield model
    model.close()


def test_structured_extraction(llm: Any) -> None:
    create = instructor.patch(create=llm.create_chat_completion_openai_v1, mode=instructor.Mode.JSON_SCHEMA)
    user = create(
        messages=[{"role": "user", "content": "Extract: Jason is 30 years old."}],
        response_model=UserDetail,
        max_tokens=60,
        temperature=0,
    )
    assert isinstance(user, UserDetail) and isinstance(user.age, int) and "Jason" in user.name


def test_literal_field(llm: Any) -> None:
    create = instructor.patch(create=llm.create_chat_completion_openai_v1, mode=instructor.Mode.JSON_SCHEMA)
    mood = create(
        messages=[{"role": "user", "content": "I won the lottery! How do I feel?"}],
        response_model=Mood,
        max_tokens=30,
        temperature=0,
    )
    assert mood.mood in ("happy", "sad")
