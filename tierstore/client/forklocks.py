"""A lock that a forked child gets back unlocked.

``fork()`` copies a process with one thread; a ``threading.Lock`` that another thread
held at that moment stays held in the child for ever, and the child's first use of it
hangs. The client is made to be inherited by DataLoader workers, so the locks it
takes on the read path are :class:`ForkSafeLock`: after a fork the child replaces
each with a fresh one. The data such a lock guards is changed in single
dictionary or integer operations, which the GIL keeps whole, so a child finds it
consistent.

Thread safety: a :class:`ForkSafeLock` is a lock. Use it as a context manager.
"""

from __future__ import annotations

import os
import threading
import weakref
from types import TracebackType

__all__ = ["ForkSafeLock"]


class ForkSafeLock:
    """A ``threading.Lock`` made anew (unlocked) in every forked child."""

    __slots__ = ("__weakref__", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _LOCKS.add(self)

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._lock.release()


_LOCKS: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for lock in list(_LOCKS):
        lock._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
