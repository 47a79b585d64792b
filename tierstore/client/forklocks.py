"""Fork-safety primitives: a lock a forked child gets back unlocked, and a gate that
holds ``fork()`` until the calls in flight have ended.

``fork()`` copies a process with one thread; a ``threading.Lock`` that another thread
held at that moment stays held in the child for ever, and the child's first use of it
hangs. The client is made to be inherited by DataLoader workers, so the locks it
takes on the read path are :class:`ForkSafeLock`: after a fork the child replaces
each with a fresh one. The data such a lock guards is changed in single
dictionary or integer operations, which the GIL keeps whole, so a child finds it
consistent.

Thread safety: a :class:`ForkSafeLock` is a lock; a :class:`ForkGate` is thread-safe.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

__all__ = ["ForkGate", "ForkSafeLock"]


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


#: how often :meth:`ForkGate.run_or_defer` looks again whether a fork holds the gate
_RECHECK_S = 0.005


class ForkGate:
    """Counts calls in flight; :meth:`hold` (a ``before`` fork handler) waits for them to
    end and keeps new ones out until :meth:`release` (parent) or :meth:`reset` (child).

    Calls nest: a call made inside another on the same thread is part of it and never
    waits (waiting would deadlock a hold that waits for the outer call). Nor does a call
    made by the holding thread itself (a channel torn down by garbage collection while
    its ``before`` handlers run): it ends before the thread forks. A thread must not
    fork while inside the gate (it would wait for itself until the hold's deadline).

    Work that must never wait for a fork — a channel closed by garbage collection,
    which may run on a thread that holds a lock a fork handler takes — goes through
    :meth:`run_or_defer`.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._inside = 0
        self._holding = False
        self._holder: int | None = None
        self._thread = threading.local()
        #: actions :meth:`run_or_defer` could not run at once; see :meth:`run_deferred`
        self._deferred: list[Callable[[], None]] = []
        #: holds that gave up waiting at their deadline (a call in flight that did not
        #: end in time: stalled, or waiting for something the forking thread held).
        self.expired_holds = 0

    @contextmanager
    def call(self) -> Iterator[None]:
        """Run the body as a call in flight (waits while a fork is being prepared, unless
        this thread is already inside a call)."""
        depth: int = getattr(self._thread, "depth", 0)
        if depth:
            self._thread.depth = depth + 1
            try:
                yield
            finally:
                self._thread.depth = depth
            return
        try:
            with self._outermost_call():
                yield
        finally:
            if self._deferred:  # kept by a moment's contention, not a fork
                self.run_deferred()

    @contextmanager
    def _outermost_call(self) -> Iterator[None]:
        with self._condition:
            while self._holding and self._holder != threading.get_ident():
                self._condition.wait()
            self._inside += 1
        # Inside only once let in: a finalizer that garbage collection runs on this
        # thread while it waits above is no nested call, and must wait for the fork
        # (run_or_defer keeps it): run at once, it would close a channel mid-fork.
        self._thread.depth = 1
        try:
            yield
        finally:
            self._thread.depth = 0
            self._leave()

    def _leave(self) -> None:
        """A call in flight has ended (a hold may be waiting for it)."""
        with self._condition:
            self._inside -= 1
            self._condition.notify_all()

    def run_or_defer(self, action: Callable[[], None]) -> None:
        """Run ``action`` as a call if that needs no wait; else keep it for
        :meth:`run_deferred` (after the fork being prepared). Never waits.

        For work done by garbage collection (a finalizer), which runs on whatever thread
        allocates at that moment, inside whatever locks it holds: in
        ``ThreadPoolExecutor.submit``, say, which holds ``concurrent.futures``' global
        lock. Waiting there for the gate deadlocked a fork: its handler for that lock
        runs after ours, and waited for the thread that waited for the fork.
        """
        if getattr(self._thread, "depth", 0) or self._holder == threading.get_ident():
            action()  # inside a call already, or the forking thread itself
            return
        # Another call's bookkeeping holds the lock for a moment; hold() keeps it until
        # the fork is done. Wait only while no fork is being prepared.
        while not self._condition.acquire(timeout=_RECHECK_S):
            if self._holding:
                self._deferred.append(action)
                return
        try:
            if self._holding:
                self._deferred.append(action)
                return
            self._inside += 1
        finally:
            self._condition.release()
        self._thread.depth = 1
        try:
            action()
        finally:
            self._thread.depth = 0
            self._leave()

    def run_deferred(self) -> None:
        """Run (through :meth:`run_or_defer`) the actions kept while the gate was held:
        the parent calls it once a fork is done, and every outermost call on its way
        out. An action that raises is dropped."""
        for _ in range(len(self._deferred)):  # one pass: one kept again waits for the next
            try:
                action = self._deferred.pop(0)
            except IndexError:  # another thread ran the rest
                return
            try:
                self.run_or_defer(action)
            except Exception:  # a channel that fails to close is no reason to stop here
                continue

    @property
    def idle(self) -> bool:
        """No call is in flight (meaningful while held)."""
        return self._inside == 0

    def hold(self, max_wait_s: float) -> int:
        """Wait (up to ``max_wait_s``) until no call is in flight, then keep new calls out
        until :meth:`release`. The condition's lock stays held until then. Returns how
        many calls are still in flight: 0 unless the wait expired."""
        self._condition.acquire()
        self._holding = True
        self._holder = threading.get_ident()
        deadline = time.monotonic() + max_wait_s
        while self._inside and (left := deadline - time.monotonic()) > 0:
            self._condition.wait(left)
        if self._inside:
            self.expired_holds += 1
        return self._inside

    def try_hold(self) -> bool:
        """Hold as :meth:`hold` does if no call is in flight now (then :meth:`release`);
        otherwise False, and nothing held. Never waits."""
        if not self._condition.acquire(blocking=False):
            return False
        if self._inside or self._holding:
            self._condition.release()
            return False
        self._holding = True
        self._holder = threading.get_ident()
        return True

    def release(self) -> None:
        """Let calls in again (the parent, after the fork)."""
        self._holding = False
        self._holder = None
        self._condition.notify_all()
        self._condition.release()

    def reset(self) -> None:
        """A fresh, open gate (the child, after the fork: the callers are gone)."""
        self._condition = threading.Condition()
        self._inside = 0
        self._holding = False
        self._holder = None
        self._thread = threading.local()
        self._deferred = []  # the parent's work: not this process's to do
