"""What the batching scheduler does with its slots besides decoding them: work run between two steps (slot
save, restore, erase), the slots' states, and room made in a KV cache the slots share (`kv_unified`).

`SlotControls` is a mixin of `llamarcp.batching.Scheduler`; it uses the scheduler's slots, lock and queues.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from llamarcp._backend import get_lib

if TYPE_CHECKING:
    from llamarcp.batching import _Slot
    from llamarcp.engine import Engine

__all__ = ["SlotControls"]

T = TypeVar("T")


class SlotControls:
    engine: Engine
    _slots: list[_Slot]
    _cond: threading.Condition
    _controls: deque[tuple[Callable[[], Any], Future[Any]]]
    _thread: threading.Thread | None
    _planned_next: set[int]
    turns: Any

    if TYPE_CHECKING:  # the scheduler's own (llamarcp.batching)

        def _loop(self) -> None: ...

        def _finish(self, slot: _Slot, reason: str) -> None: ...

    def call_between_steps(self, fn: Callable[[], T]) -> T:
        """Run `fn()` on the scheduler thread between two decode steps, while the memory holds what the slots
        say (`slot_states`), and return its result (or raise its exception)."""
        future: Future[T] = Future()
        with self._cond:
            self.turns.check_open()
            self._controls.append((fn, future))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="llamarcp-batching", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return future.result()

    def slot(self, index: int) -> _Slot:
        """The slot of sequence `index` (only to be touched from `call_between_steps`)."""
        return self._slots[index]

    def slot_states(self) -> list[dict[str, Any]]:
        """Each slot now: its cached tokens, and the request it runs (counts only, no text)."""
        states = []
        for slot in self._slots:
            job = slot.job
            state: dict[str, Any] = {"id": slot.seq_id, "n_tokens": len(slot.tokens), "is_processing": job is not None}
            if job is not None:
                state["n_prompt_tokens"] = len(job.prompt)
                state["n_decoded"] = job.n_generated
                state["n_remain"] = max(0, job.max_tokens - job.n_generated)
            states.append(state)
        return states

    def _run_controls(self) -> None:
        while True:
            with self._cond:
                if not self._controls:
                    return
                fn, future = self._controls.popleft()
            try:
                future.set_result(fn())
            except Exception as exc:  # handed to the caller of call_between_steps
                future.set_exception(exc)

    def _make_room(self, entries: list[tuple[int, int, int, bool]]) -> bool:
        """The KV cache is full (sequences share it with `kv_unified`): give the step's tokens back to their
        jobs, then drop the least recently used idle prefix cache, or else end the running sequence that holds
        the most cells (finish_reason "length", as when one sequence fills its context). False if nothing
        could be freed."""
        lib = get_lib()
        memory = self.engine.memory
        for seq_id in {e[2] for e in entries}:
            lib.llama_memory_seq_rm(memory, seq_id, len(self._slots[seq_id].tokens), -1)
        for seq_id in {e[2] for e in entries}:
            job = self._slots[seq_id].job
            if job is None:
                continue
            tokens = [e[0] for e in entries if e[2] == seq_id]
            if seq_id in self._planned_next:
                job.next_token = tokens[0]
            else:
                job.todo = tokens + job.todo
        idle = [s for s in self._slots if s.job is None and s.tokens]
        if idle:
            victim = min(idle, key=lambda s: s.last_used)
            lib.llama_memory_seq_rm(memory, victim.seq_id, -1, -1)
            victim.tokens = []
            return True
        running = [s for s in self._slots if s.job is not None and s.tokens]
        if len(running) < 2:
            return False
        victim = max(running, key=lambda s: len(s.tokens))
        self._finish(victim, "length")
        lib.llama_memory_seq_rm(memory, victim.seq_id, -1, -1)
        victim.tokens = []
        return True
