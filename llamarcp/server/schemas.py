"""Request bodies of the OpenAI-compatible endpoints (pydantic); unknown fields are ignored like OpenAI does.

No `from __future__ import annotations` here: pydantic evaluates these at runtime, and Python 3.9 has no `X | Y`.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Field bounds follow OpenAI's documented ranges so the same client code gets the same 400s.
_Stop = str | list[str] | None


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.95, ge=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    typical_p: float = Field(1.0, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, ge=0.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = None
    stop: _Stop = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="only one choice per request is supported")
    logit_bias: dict[str, float] | None = None
    grammar: str | None = Field(None, description="llama.cpp extension: GBNF grammar constraining the output")


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] = ""
    max_tokens: int | None = 16
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")


class ChatCompletionRequest(_Request):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = False
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="llama.cpp extension: extra chat template variables, e.g. {'enable_thinking': false}"
    )
    reasoning_format: Literal["auto", "deepseek", "none"] = Field(
        "auto", description="llama.cpp extension: split <think> reasoning into reasoning_content"
    )
    top_logprobs: int | None = Field(None, ge=0, le=20)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
