"""Turn-taking and lifetime for one Llama: who may use the context now, and when its memory may be freed.

Two kinds of use, neither tied to a thread for longer than it runs (a suspended stream may be resumed from
any thread):
- a *short use* (`using()`): tokenize, metadata, ... Many threads at once; only keeps the model alive.
- a *turn* (`exclusive()`, or `enter()`/`leave()` around a generator): owns the context (generation, eval,
  state, embeddings). Other threads wait for it; the same thread asking again while its own turn is suspended
  (a half-read stream) is an error instead of a deadlock.
`close()` never blocks: it marks the object closing and calls `free` once the last use has let go.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator

from llamarcp.errors import ClosedError, LlamaError

__all__ = ["Turns", "settle_at_exit"]


class Turns:
    """Counts the uses of one model/context and hands the context to one turn at a time."""

    def __init__(
        self,
        free: Callable[[], None],
        is_freed: Callable[[], bool],
        on_close: Callable[[], None] | None = None,
        abandon: Callable[[], None] | None = None,
    ) -> None:
        self._free = free
        self._is_freed = is_freed
        self._on_close = on_close  # asks running work to stop (the abort flag its loops look at)
        self._abandon = abandon  # at interpreter exit: give up the memory a stuck use still holds
        self._cond = threading.Condition()
        self._users = 0  # uses (short ones and turns) inside right now
        self._busy_thread: int | None = None  # the thread whose turn it is (None: nobody's)
        self._busy = False
        self._freed = False
        self.closing = False
        _live.add(self)

    @property
    def closed(self) -> bool:
        return self.closing or self._is_freed()

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError("this Llama is closed")

    def close(self) -> None:
        """Refuse new uses; free now if nothing is using the memory, else when the last use lets go."""
        if self._on_close is not None:
            self._on_close()
        with self._cond:
            self.closing = True
            if self._users == 0:
                self._free_once()

    @contextlib.contextmanager
    def using(self) -> Iterator[None]:
        """Keep the model alive for a short call that other threads may run meanwhile."""
        with self._cond:
            self.check_open()
            self._users += 1
        try:
            yield
        finally:
            self._let_go()

    def enter(self) -> None:
        """Take the context: wait while another thread's turn runs; refuse a second turn in this thread."""
        me = threading.get_ident()
        with self._cond:
            while True:
                self.check_open()
                if not self._busy:
                    break
                if self._busy_thread == me:
                    raise LlamaError(
                        "another generation of this Llama is still running in this thread; finish or close it"
                    )
                self._cond.wait()
            self._busy, self._busy_thread = True, me
            self._users += 1

    def leave(self) -> None:
        with self._cond:
            self._busy, self._busy_thread = False, None
        self._let_go()  # frees the memory here if close() was called meanwhile

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the context alone for the block."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def _let_go(self) -> None:
        with self._cond:
            self._users -= 1
            if self._users == 0 and self.closing:
                self._free_once()
            self._cond.notify_all()

    def _free_once(self) -> None:  # caller holds the condition's lock
        if not self._freed:
            self._freed = True
            self._free()

    def _wait_idle(self, deadline: float) -> bool:
        with self._cond:
            while self._users > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


#: Every Turns not yet garbage collected, for the interpreter-exit hook.
_live: weakref.WeakSet[Turns] = weakref.WeakSet()


def settle_at_exit(timeout: float = 3.0, only: Iterable[Turns] | None = None) -> None:
    """At interpreter exit: close every Llama, let running uses (daemon threads mid-generation) stop at their
    next token for up to `timeout` seconds, and abandon the memory of those that do not, so that freeing the
    rest can never happen under a thread still inside llama.cpp."""
    everyone = list(_live if only is None else only)
    for turns in everyone:
        turns.close()
    deadline = time.monotonic() + timeout
    for turns in everyone:
        if not turns._wait_idle(deadline) and turns._abandon is not None:
            turns._abandon()
