"""Turns: many short uses, one turn at a time, and a close that never blocks and frees exactly once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from llamarcp.errors import ClosedError, LlamaError
from llamarcp.turns import Turns


class Memory:
    def __init__(self) -> None:
        self.frees = 0

    def free(self) -> None:
        self.frees += 1

    def freed(self) -> bool:
        return self.frees > 0


def test_close_frees_at_once_when_idle() -> None:
    memory = Memory()
    turns = Turns(memory.free, memory.freed)
    turns.close()
    turns.close()
    assert memory.frees == 1 and turns.closed
    with pytest.raises(ClosedError):
        turns.check_open()
    with pytest.raises(ClosedError), turns.using():
        pass


def test_close_waits_for_the_last_use_without_blocking() -> None:
    memory = Memory()
    turns = Turns(memory.free, memory.freed)
    turns.enter()
    with turns.using():
        turns.close()  # returns at once
        assert memory.frees == 0 and turns.closed
    assert memory.frees == 0  # the turn still holds it
    turns.leave()
    assert memory.frees == 1


def test_a_second_turn_in_the_same_thread_is_an_error() -> None:
    turns = Turns(Memory().free, lambda: False)
    turns.enter()
    with pytest.raises(LlamaError, match="still running in this thread"):
        turns.enter()
    turns.leave()
    with turns.exclusive():
        pass


def test_other_threads_wait_their_turn() -> None:
    turns = Turns(Memory().free, lambda: False)
    order: list[str] = []
    turns.enter()
    waiting = threading.Event()

    def other() -> None:
        waiting.set()
        with turns.exclusive():
            order.append("other")

    thread = threading.Thread(target=other)
    thread.start()
    waiting.wait(10)
    order.append("first")
    turns.leave()
    thread.join(10)
    assert order == ["first", "other"]


def test_a_waiting_thread_sees_the_close() -> None:
    memory = Memory()
    turns = Turns(memory.free, memory.freed)
    turns.enter()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            turns.enter()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    turns.close()
    turns.leave()
    thread.join(10)
    assert not thread.is_alive() and len(errors) == 1 and isinstance(errors[0], ClosedError)
    assert memory.frees == 1


def test_settle_at_exit_frees_the_idle_and_abandons_the_stuck() -> None:
    from llamarcp.turns import settle_at_exit

    idle, stuck, stopping = Memory(), Memory(), Memory()
    abandoned: list[str] = []
    asked: list[str] = []
    a = Turns(idle.free, idle.freed)
    b = Turns(stuck.free, stuck.freed, on_close=lambda: asked.append("b"), abandon=lambda: abandoned.append("b"))
    b.enter()  # a use that never lets go (a thread stuck in C)
    c = Turns(stopping.free, stopping.freed, on_close=lambda: threading.Timer(0.05, c.leave).start())
    c.enter()  # a use that stops when asked to
    settle_at_exit(timeout=2.0, only=[a, b, c])  # not every Turns of this process (other tests' Llamas)
    assert idle.frees == 1 and stopping.frees == 1
    assert stuck.frees == 0 and abandoned == ["b"] and asked == ["b"]
    assert a.closed and b.closed and c.closed


def test_interpreter_exit_while_a_daemon_thread_generates(tiny_model_path: Path) -> None:
    """The thread stops at its next token before the memory is freed: exit code 0, never a signal."""
    import subprocess
    import sys

    code = f"""
import threading
from llamarcp import Llama
llm = Llama({str(tiny_model_path)!r}, n_ctx=512, n_threads=1)
started = threading.Event()
def run():
    for _ in llm("a", max_tokens=400, temperature=0, stream=True):
        started.set()
threading.Thread(target=run, daemon=True).start()
started.wait(60)
print("exiting", flush=True)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exiting" in proc.stdout
