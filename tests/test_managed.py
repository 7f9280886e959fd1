"""The pointer-owning base class: free once, children before parents, use-after-close raises."""

from __future__ import annotations

import gc
import threading

import pytest

from llamarcp._managed import Managed
from llamarcp.errors import ClosedError, LlamaError


class Recorder(Managed):
    """A Managed whose "pointer" is a plain token and whose free call is recorded, to test the ownership rules."""

    kind = "thing"

    def __init__(self, ptr: object, log: list[object], parent: Managed | None = None) -> None:
        self.log = log
        super().__init__(ptr, parent=parent)

    def _free(self, ptr: object) -> None:
        self.log.append(ptr)


def test_close_frees_once() -> None:
    log: list[object] = []
    thing = Recorder("p", log)
    assert not thing.closed
    thing.close()
    thing.close()
    assert log == ["p"]
    assert thing.closed


def test_use_after_close_raises_closed_error() -> None:
    thing = Recorder("p", [])
    assert thing.ptr == "p"
    thing.close()
    with pytest.raises(ClosedError, match="thing is closed"):
        _ = thing.ptr
    assert issubclass(ClosedError, LlamaError)


def test_context_manager_closes() -> None:
    log: list[object] = []
    with Recorder("p", log) as thing:
        assert thing.ptr == "p"
    assert log == ["p"]
    with pytest.raises(ClosedError):
        thing.__enter__()


def test_del_frees_unclosed() -> None:
    log: list[object] = []
    Recorder("p", log)
    gc.collect()
    assert log == ["p"]


def test_children_close_before_parent() -> None:
    log: list[object] = []
    parent = Recorder("model", log)
    child_a = Recorder("ctx-a", log, parent=parent)
    child_b = Recorder("ctx-b", log, parent=child_a)
    parent.close()
    assert log[-1] == "model"
    assert log.index("ctx-b") < log.index("ctx-a") < log.index("model")
    assert child_a.closed and child_b.closed


def test_child_keeps_parent_alive() -> None:
    log: list[object] = []
    parent = Recorder("model", log)
    child = Recorder("ctx", log, parent=parent)
    del parent
    gc.collect()
    assert log == []  # the child still needs the model
    child.close()
    del child
    gc.collect()
    assert log == ["ctx", "model"]


def test_child_of_closed_parent_is_refused() -> None:
    parent = Recorder("model", [])
    parent.close()
    with pytest.raises(ClosedError):
        Recorder("ctx", [], parent=parent)


def test_null_pointer_is_refused() -> None:
    with pytest.raises(ValueError, match="NULL"):
        Recorder(None, [])


def test_release_gives_up_ownership() -> None:
    log: list[object] = []
    thing = Recorder("p", log)
    assert thing.release() == "p"
    thing.close()
    gc.collect()
    assert log == []
    with pytest.raises(ClosedError):
        thing.release()


def test_concurrent_close_frees_once() -> None:
    log: list[object] = []
    things = [Recorder(i, log) for i in range(200)]
    barrier = threading.Barrier(4)

    def close_all() -> None:
        barrier.wait()
        for thing in things:
            thing.close()

    threads = [threading.Thread(target=close_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(log) == list(range(200))  # type: ignore[type-var]


def test_free_error_still_marks_closed() -> None:
    class Failing(Managed):
        def _free(self, ptr: object) -> None:
            raise RuntimeError("free failed")

    thing = Failing("p")
    with pytest.raises(RuntimeError):
        thing.close()
    assert thing.closed
    thing.close()  # no second attempt


def test_parent_finalized_first_waits_for_child() -> None:
    """The GC may finalize a parent before its child (weakrefs cleared first): the free order must still hold."""
    log: list[object] = []
    parent = Recorder("model", log)
    child = Recorder("ctx", log, parent=parent)
    parent._children.clear()  # what the collector does to weak references before running finalizers
    parent.close()
    assert parent.closed and log == []  # marked closed for users, memory kept for the child
    child.close()
    assert log == ["ctx", "model"]


def test_cycle_collection_frees_child_first() -> None:
    log: list[object] = []

    class Holder:
        pass

    holder = Holder()
    holder.self = holder  # type: ignore[attr-defined]  # a reference cycle, like a Llama kept by a generator
    holder.model = Recorder("model", log)  # type: ignore[attr-defined]
    holder.ctx = Recorder("ctx", log, parent=holder.model)  # type: ignore[attr-defined]
    del holder
    gc.collect()
    assert log == ["ctx", "model"]
