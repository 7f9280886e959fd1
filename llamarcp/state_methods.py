"""`Llama`'s state methods (snapshots and session files), a mixin over llamarcp.state."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from llamarcp import state
from llamarcp.state import LlamaState

if TYPE_CHECKING:
    from llamarcp.engine import Engine
    from llamarcp.turns import Turns


class StateMethods:
    """save_state / load_state / save_state_file / load_state_file of `Llama`."""

    _turns: Turns
    _seed: Any

    def _engine_or_raise(self) -> Engine:
        raise NotImplementedError

    def save_state(self) -> LlamaState:
        """Snapshot of the context (memory, logits) and its token history."""
        with self._turns.exclusive():
            return state.save(self._engine_or_raise(), self._seed)

    def load_state(self, snapshot: LlamaState) -> None:
        """Restore a snapshot taken from a Llama with the same model and context size."""
        with self._turns.exclusive():
            state.load(self._engine_or_raise(), snapshot)
            self._seed = snapshot.seed

    def save_state_file(self, path: str | os.PathLike[str]) -> None:
        """Write the context state and its tokens to a session file: llama.cpp's session behind a header with its
        sha256 and model identity, written atomically onto a regular file or a new name (see llamarcp.state)."""
        with self._turns.exclusive():
            state.save_file(self._engine_or_raise(), path)

    def load_state_file(self, path: str | os.PathLike[str]) -> None:
        """Restore a session file written by `save_state_file` (same model; its tokens must fit this context); a
        plain llama.cpp session loads with a `StateFileWarning`. Refusals raise `StateError`."""
        with self._turns.exclusive():
            state.load_file(self._engine_or_raise(), path)
