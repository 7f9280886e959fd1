"""Request bodies of the OpenAI-compatible endpoints and llama-cpp-python's /extras (pydantic).

Every field llama-cpp-python's server honours is a field here; any other field is kept in `model_extra` and the
route refuses it with a 400 naming it, except the metadata in `IGNORED_FIELDS` (it does not change the answer).
Integers that reach C are bounded to what C holds; floats must be finite.

No `from __future__ import annotations` here: pydantic evaluates these at runtime, and Python 3.9 has no `X | Y`.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llamarcp.text_completion import MAX_CHOICES

#: Fields clients send that carry no generation setting: accepted and ignored.
IGNORED_FIELDS = frozenset({"user", "store", "metadata", "service_tier", "stream_options", "parallel_tool_calls"})

INT32_MAX = 2**31 - 1
#: llama-server's n_probs has no cap; the top-n list is sorted per token, so keep it bounded.
MAX_N_PROBS = 100
#: Slot ids a request may name (llamarcp.llama.MAX_PARALLEL slots at most; the route checks the model's count).
MAX_SLOT_ID = 63

#: Every stop string is checked after each token: bound how many there are and how long (OpenAI allows 4).
MAX_STOP_STRINGS = 64
MAX_STOP_CHARS = 4096

# Field bounds follow OpenAI's documented ranges (and llama-cpp-python's for its own fields).
_StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
_Stop = _StopString | Annotated[list[_StopString], Field(max_length=MAX_STOP_STRINGS)] | None


#: Fields where an explicit null has its own meaning (until the context is full), not "the default".
_NULL_IS_A_VALUE = frozenset({"max_tokens", "max_completion_tokens"})


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        """`"temperature": null` (clients send nulls for unset fields; OpenAI accepts them) is the default."""
        if isinstance(data, dict):
            fields = cls.model_fields
            return {
                k: v
                for k, v in data.items()
                if not (v is None and k in fields and k not in _NULL_IS_A_VALUE and fields[k].default is not None)
            }
        return data


class LlamaServerFields(BaseModel):
    """llama-server's per-request generation fields, the same on every generating route (OpenAI's, Anthropic's,
    the Responses API's and llama.cpp's own)."""

    ignore_eos: bool = Field(False, description="llama.cpp extension: never end at an end-of-generation token")
    cache_prompt: bool = Field(True, description="llama.cpp extension: reuse the longest cached prefix of the prompt")
    id_slot: int = Field(-1, ge=-1, le=MAX_SLOT_ID, description="llama.cpp extension: run in this slot (-1: any)")
    speculative_n_max: int | None = Field(
        None,
        alias="speculative.n_max",
        ge=0,
        le=256,
        description="llama.cpp extension: most draft tokens per step for speculative decoding (0: off)",
    )
    lora: list[Any] | None = Field(
        None, description="llama.cpp extension: [{id, scale}] LoRA scales for this request (others: the defaults)"
    )


class _Request(_Body, LlamaServerFields):
    max_tokens: int | None = None
    min_tokens: int = Field(0, ge=0, le=INT32_MAX, description="llama-cpp-python: no end of text before this many")
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.95, ge=0.0, le=1.0)
    top_k: int = Field(40, ge=0, le=INT32_MAX)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    typical_p: float = Field(1.0, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, ge=0.0, le=1e6)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    mirostat_mode: int = Field(0, ge=0, le=2, description="1 or 2: Mirostat v1/v2 instead of top-k/p sampling")
    mirostat_tau: float = Field(5.0, ge=0.0, le=10.0)
    mirostat_eta: float = Field(0.1, ge=0.001, le=1.0)
    seed: int | None = None
    stop: _Stop = None
    stream: bool = False
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="choices of the same prompt (each samples with seed + i)")
    logit_bias: dict[str, float] | None = None
    logit_bias_type: Literal["input_ids", "tokens"] | None = Field(
        None, description="llama-cpp-python: 'tokens' makes logit_bias keys text, biasing each of its tokens"
    )
    grammar: str | None = Field(None, description="llama.cpp extension: GBNF grammar constraining the output")
    n_probs: int = Field(
        0, ge=0, le=MAX_N_PROBS, description="llama.cpp extension: the top-n log-probabilities of each token"
    )


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] = ""
    max_tokens: int | None = 16
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(1, ge=1, le=1, description="only one candidate per request is supported")


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
    functions: list[dict[str, Any]] | None = Field(None, description="OpenAI's legacy form of tools")
    function_call: str | dict[str, Any] | None = Field(None, description="OpenAI's legacy tool_choice")
    response_format: ResponseFormat | None = None
    logprobs: bool | None = False
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="llama.cpp extension: extra chat template variables, e.g. {'enable_thinking': false}"
    )
    reasoning_format: Literal["auto", "deepseek", "none"] = Field(
        "auto", description="llama.cpp extension: split <think> reasoning into reasoning_content"
    )
    top_logprobs: int | None = Field(None, ge=0, le=20)


class EmbeddingRequest(_Body):
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class TokenizeRequest(_Body):
    """llama-cpp-python's /extras/tokenize and /extras/tokenize/count."""

    input: str = Field(description="text to tokenize (special tokens in it are parsed, a BOS is added)")


class DetokenizeRequest(_Body):
    """llama-cpp-python's /extras/detokenize."""

    tokens: list[int] = Field(description="token ids to turn back into text")
