"""llama-server's per-request fields, with its meaning, for every generating route: `ignore_eos` (end-of-generation
tokens banned), `cache_prompt` (reuse a cached prefix), `id_slot` (run in that slot), `chat_template_kwargs`,
`reasoning_format`; `n_probs` on the OpenAI routes (the top-n log-probabilities of each token).

`id_slot` and `cache_prompt` reach the batching scheduler through `llamarcp.batching.slot_request`, set on the
thread that starts the generation (`in_slot`).
"""

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import Field

from llamarcp.placement import SlotRequest, slot_request
from llamarcp.server.errors import ApiError
from llamarcp.server.pool import ModelEntry
from llamarcp.server.routes_lora import lora_overrides
from llamarcp.server.schemas import LlamaServerFields

if TYPE_CHECKING:
    from fastapi import Request

    from llamarcp.server.dispatch import Dispatcher, StreamEncoder

__all__ = ["LlamaServerOptions", "call_in_slot", "generate_in_slot", "generation_options", "in_slot", "slot_options"]

T = TypeVar("T")


class LlamaServerOptions(LlamaServerFields):
    seed: int | None = Field(None, description="sampling seed (-1 or null: the server's)")
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="llama.cpp extension: extra chat template variables, e.g. {'enable_thinking': false}"
    )
    reasoning_format: Literal["auto", "deepseek", "none"] = Field(
        "auto", description="llama.cpp extension: split <think> reasoning into its own field ('none': keep it)"
    )


def ignore_eos_bias(entry: ModelEntry) -> dict[int, float]:
    """A logit bias of -inf on every end-of-generation token (llama-server's ignore_eos)."""
    return dict.fromkeys(sorted(entry.end_of_generation_tokens()), float("-inf"))


def generation_options(body: Any, entry: ModelEntry, logit_bias: dict[int, float] | None = None) -> dict[str, Any]:
    """Keywords for the chat/text completion from llama-server's fields (on a model thread: the EOG scan)."""
    bias = dict(logit_bias or {})
    if getattr(body, "ignore_eos", False):
        bias.update(ignore_eos_bias(entry))
    kwargs: dict[str, Any] = {"seed": body.seed}
    if bias:
        kwargs["logit_bias"] = bias
    return kwargs


def chat_kwargs(
    body: Any,
    entry: ModelEntry,
    *,
    max_tokens: int | None,
    tools: Any,
    tool_choice: Any,
    response_format: Any,
    template_kwargs: Any,
    stop: Any = None,
) -> dict[str, Any]:
    """`create_chat_completion` keywords of a translated request (Anthropic messages, OpenAI responses): the
    sampling fields both APIs share, the server's chat format and template, and what the route translated."""
    config = entry.config
    return dict(
        generation_options(body, entry),
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        stop=stop,
        max_tokens=max_tokens,
        tools=tools,
        tool_choice=tool_choice if tools else None,
        response_format=response_format,
        template_kwargs=template_kwargs,
        reasoning_format=body.reasoning_format,
        chat_format=config.chat_format,
        chat_template=config.chat_template,
        model=entry.model_id,
    )


def slot_options(body: Any, entry: ModelEntry) -> SlotRequest:
    """`id_slot` and `cache_prompt` checked against the model's slots (400 naming the field)."""
    slot = getattr(body, "id_slot", -1)
    n_slots = entry.runner.n_parallel
    if slot >= n_slots:
        raise ApiError(400, f"id_slot must be in -1..{n_slots - 1} (this model has {n_slots} slots)", param="id_slot")
    lora = getattr(body, "lora", None)
    overrides = None
    if lora is not None:
        llama = entry.llama
        overrides = lora_overrides(lora, len(llama.lora_adapters()) if llama is not None else None)
    return SlotRequest(
        slot=None if slot < 0 else slot,
        cache_prompt=getattr(body, "cache_prompt", True),
        lora=overrides,
        draft_max=getattr(body, "speculative_n_max", None),
    )


def in_slot(options: SlotRequest, make: Callable[[], Iterator[T]]) -> Iterator[T]:
    """`make()`'s items, with the generation it starts placed by `options` (a generator: the generation starts
    at the first item, on the thread that iterates)."""
    with slot_request(options):
        yield from make()


def call_in_slot(options: SlotRequest, job: Callable[[], T]) -> T:
    with slot_request(options):
        return job()


async def generate_in_slot(
    dispatcher: "Dispatcher",
    request: "Request",
    entry: ModelEntry,
    options: SlotRequest,
    generation: Callable[..., Any],
    *,
    stream: bool,
    encoder: "StreamEncoder | None" = None,
) -> Any:
    """One generation placed by `options`: streamed as server-sent events (shaped by `encoder`, OpenAI's chunks by
    default) when `stream`, else run to completion and its result returned (stopped early when the client leaves).
    `generation(**extra)` starts it with `stream=True` or with `stopping_criteria=`."""
    if stream:
        return await dispatcher.run_stream(entry, lambda: in_slot(options, lambda: generation(stream=True)), encoder)
    return await dispatcher.run_blocking(
        request, entry, lambda stop: call_in_slot(options, lambda: generation(stopping_criteria=stop))
    )
