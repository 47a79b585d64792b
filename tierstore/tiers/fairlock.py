"""A lock taken in the order it was asked for."""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType

__all__ = ["FairLock"]


class FairLock:
    """A mutual-exclusion lock handed to its waiters first come, first served.

    A ``threading.Lock`` lets the thread that releases it take it straight back while
    the threads woken for it are still being scheduled: a loop that commits a write
    transaction at a time (an eviction pass of thousands of shards) kept every other
    writer waiting to its end. Here ``release`` hands the lock to the longest waiter,
    so a thread asking again queues behind it. Not reentrant."""

    def __init__(self) -> None:
        self._state = threading.Lock()  # guards _held and _waiters
        self._held = False
        #: one locked gate per waiter, oldest first; released to hand the lock over
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self) -> None:
        with self._state:
            if not self._held:
                self._held = True
                return
            gate = threading.Lock()
            gate.acquire()
            self._waiters.append(gate)
        try:
            gate.acquire()  # the holder's release() hands the lock over with it held
        except BaseException:  # interrupted (Ctrl-C): leave the queue, or pass it on
            with self._state:
                if gate in self._waiters:
                    self._waiters.remove(gate)
                    raise
            self.release()  # handed over meanwhile: the next waiter's
            raise

    def release(self) -> None:
        with self._state:
            if not self._held:
                raise RuntimeError("release of a FairLock that is not held")
            if self._waiters:
                self._waiters.popleft().release()  # still held: now by that waiter
            else:
                self._held = False

    def waiting(self) -> int:
        """How many threads wait for the lock now."""
        with self._state:
            return len(self._waiters)

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
