"""Where and how one generation runs in the batching scheduler, set per request without new keywords on every
call: `with slot_request(SlotRequest(slot=1, cache_prompt=False)):` around the call that starts the generation
(the server sets llama-server's `id_slot`, `cache_prompt`, `lora` and `speculative.n_max` this way)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["SlotRequest", "current_slot_request", "slot_request"]


@dataclass(frozen=True)
class SlotRequest:
    """`slot` None lets the scheduler pick (the longest cached prefix, else an empty or the least recently used
    slot); `cache_prompt` False decodes the whole prompt again instead of reusing a cached prefix."""

    slot: int | None = None
    cache_prompt: bool = True
    #: LoRA scales by adapter id for this generation, over the Llama's defaults (llamarcp.lora).
    lora: tuple[tuple[int, float], ...] | None = None
    #: Most drafts per step for speculative decoding (None: the draft model's own; 0: off).
    draft_max: int | None = None


_SLOT_REQUEST: contextvars.ContextVar[SlotRequest] = contextvars.ContextVar("llamarcp_slot_request")


def current_slot_request() -> SlotRequest:
    """The `SlotRequest` in force on this thread (the default one outside `slot_request`)."""
    return _SLOT_REQUEST.get(SlotRequest())


@contextlib.contextmanager
def slot_request(request: SlotRequest) -> Iterator[None]:
    """Generations started in this block (on this thread) run as `request` says."""
    token = _SLOT_REQUEST.set(request)
    try:
        yield
    finally:
        _SLOT_REQUEST.reset(token)
