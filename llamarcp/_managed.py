"""The one owner of C pointers: every llama.cpp object llamarcp allocates lives in a `Managed` subclass.

Rules it enforces (and nothing else in the package calls a `*_free`):
- `close()` frees exactly once; later calls do nothing (no double free).
- using the pointer after `close()` raises `ClosedError` instead of touching freed memory.
- children (a context of a model, a sampler of a context) are closed before their parent, and a child keeps
  its parent alive, so freeing in the wrong order cannot happen even when only the parent is closed. When the
  garbage collector finalizes a parent before a child of the same cycle (weak references are cleared first,
  so the parent cannot reach the child), the parent's free waits until its last open child is freed.
- `__del__` frees what was not closed, and never raises (also at interpreter shutdown).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, ClassVar

from llamarcp.errors import ClosedError

__all__ = ["Managed", "abandon", "close_all"]

#: Every open Managed object, so interpreter exit can free them while Python (and the log callback) still work.
_live: weakref.WeakSet[Managed] = weakref.WeakSet()


class Managed:
    """Base class owning one C pointer; subclasses implement `_free(ptr)` with the matching `*_free` call."""

    #: Used in error messages ("model", "context", ...).
    kind: ClassVar[str] = "object"

    _ptr: Any
    _parent: Managed | None
    _children: weakref.WeakSet[Managed]
    _open_children: int
    _deferred_ptr: Any
    _close_lock: threading.Lock

    def __init__(self, ptr: Any, *, parent: Managed | None = None) -> None:
        self._close_lock = threading.Lock()
        self._children = weakref.WeakSet()
        self._open_children = 0
        self._deferred_ptr = None
        self._parent = None
        self._ptr = None
        if ptr is None or _is_null(ptr):
            raise ValueError(f"cannot manage a NULL {self.kind} pointer")
        if parent is not None:
            parent._check_open()
            with parent._close_lock:
                parent._open_children += 1
            parent._children.add(self)
            self._parent = parent  # a strong reference: the parent is freed after the child
        self._ptr = ptr
        _live.add(self)

    def _free(self, ptr: Any) -> None:
        raise NotImplementedError

    @property
    def ptr(self) -> Any:
        """The raw C pointer; raises ClosedError after `close()`."""
        ptr = self._ptr
        if ptr is None:
            raise ClosedError(f"this {self.kind} is closed")
        return ptr

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def _check_open(self) -> None:
        if self._ptr is None:
            raise ClosedError(f"this {self.kind} is closed")

    def close(self) -> None:
        """Free the C object (children first). Idempotent."""
        with self._close_lock:
            ptr, self._ptr = self._ptr, None
        if ptr is None:
            return
        _live.discard(self)
        for child in list(self._children):
            child.close()
        with self._close_lock:
            if self._open_children > 0:  # children we can no longer reach (GC finalization): free after them
                self._deferred_ptr = ptr
                return
        self._free_and_detach(ptr)

    def _free_and_detach(self, ptr: Any) -> None:
        try:
            self._free(ptr)
        finally:
            self._detach_from_parent()

    def _detach_from_parent(self) -> None:
        parent, self._parent = self._parent, None
        if parent is None:
            return
        parent._children.discard(self)
        with parent._close_lock:
            parent._open_children -= 1
            deferred = parent._deferred_ptr if parent._open_children == 0 else None
            if deferred is not None:
                parent._deferred_ptr = None
        if deferred is not None:
            parent._free_and_detach(deferred)

    def release(self) -> Any:
        """Give up ownership without freeing (e.g. a sampler handed to a chain that frees it) and return the pointer."""
        with self._close_lock:
            ptr, self._ptr = self._ptr, None
        if ptr is None:
            raise ClosedError(f"this {self.kind} is closed")
        _live.discard(self)
        self._detach_from_parent()
        return ptr

    def __enter__(self) -> Managed:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Attributes may be missing if __init__ failed early; anything may be half torn down at interpreter exit.
        try:
            if getattr(self, "_ptr", None) is not None and not getattr(self, "_abandoned", False):
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._ptr is None else "open"
        return f"<{type(self).__name__} {self.kind} {state}>"


def _is_null(ptr: Any) -> bool:
    """True for a cffi NULL pointer; other objects (struct values, test doubles) are never NULL."""
    try:
        from llamarcp._ffi import ffi
    except ImportError:  # the generated module is absent only in a broken checkout; let the caller fail later
        return False
    if isinstance(ptr, ffi.CData) and ffi.typeof(ptr).kind == "pointer":
        return bool(ptr == ffi.NULL)
    return False


def abandon(obj: Managed) -> None:
    """Never free `obj` and its descendants: a thread is still inside C with them at interpreter exit, and
    freeing memory under it would crash the process; the operating system reclaims it when the process ends."""
    stack = [obj]
    while stack:
        item = stack.pop()
        item._abandoned = True  # type: ignore[attr-defined]
        _live.discard(item)
        stack.extend(item._children)


def close_all() -> None:
    """Close every open Managed object, children before parents (called at interpreter exit)."""
    for obj in list(_live):
        if obj._parent is None:  # closing a root closes its whole tree
            try:
                obj.close()
            except Exception:  # exit path: one failure must not keep the rest allocated
                continue
    for obj in list(_live):
        try:
            obj.close()
        except Exception:
            continue
