"""Puts waiting for room in their dataset's hot-tier quota: for how long, and how many.

A put at its dataset's quota may wait for the mover to archive shards that eviction
can then take (:mod:`tierstore.engine.writepath`). A waiting put holds its caller's
thread, in the service one of the RPC workers, so the wait is bounded four ways:

* by time: ``quota_wait_s``, or less if the caller says so (the service passes its
  RPC's deadline less a second);
* by number: at most ``max_quota_waiters`` puts wait at once in a store, so that puts
  into full quotas cannot take every worker from the other callers;
* by dataset: no dataset takes more than half of those places (rounded up), so that
  one tenant pouring puts into its full quota leaves room for the others to wait;
* by the caller: a put whose caller has gone (a cancelled RPC) stops waiting within
  :data:`CANCEL_POLL_S`.

A put holds its place only while it waits, not while it commits afterwards.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

__all__ = ["CANCEL_POLL_S", "QuotaWait", "WaitingPlaces"]

#: how often a waiting put checks that its caller is still there.
CANCEL_POLL_S = 0.25


class WaitingPlaces:
    """The places for puts waiting for quota room in one store. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: the most places one dataset may hold at once.
        self.per_dataset = (limit + 1) // 2
        self._lock = threading.Lock()
        self._taken: Counter[str] = Counter()

    @property
    def taken(self) -> int:
        """Puts waiting now."""
        with self._lock:
            return sum(self._taken.values())

    def take(self, dataset: str) -> str | None:
        """Take a place for a put into ``dataset``: None if taken, else why not."""
        with self._lock:
            if self.limit == 0:
                return "waiting for room is off (max_quota_waiters = 0)"
            if self._taken[dataset] >= self.per_dataset:
                return (
                    f"{self._taken[dataset]} puts into {dataset} wait for room already, "
                    "the most one dataset may (half of max_quota_waiters)"
                )
            if sum(self._taken.values()) >= self.limit:
                return (
                    "the most puts allowed to wait for room "
                    f"(max_quota_waiters = {self.limit}) wait already"
                )
            self._taken[dataset] += 1
            return None

    def give_back(self, dataset: str) -> None:
        with self._lock:
            self._taken[dataset] -= 1
            if self._taken[dataset] <= 0:
                del self._taken[dataset]


class QuotaWait:
    """One put's allowance to wait for room in ``dataset``'s quota. Used by the put's
    own thread only; call :meth:`release` when the put is done waiting."""

    def __init__(
        self,
        places: WaitingPlaces,
        dataset: str,
        seconds: float,
        caller_gone: Callable[[], bool] | None = None,
    ) -> None:
        self._places = places
        self._dataset = dataset
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds
        self._caller_gone = caller_gone
        self._holding = False
        #: why the put may not wait, from the last check that said no.
        self._refusal = ""

    def may_wait(self) -> bool:
        """Whether time is left and the caller is still there (takes no place)."""
        if self._caller_gone is not None and self._caller_gone():
            return self.refuse("its caller has gone")
        if self._deadline <= time.monotonic():
            return self.refuse(f"the time it may wait, quota_wait_s ({self._seconds:g} s), is over")
        return True

    def take_place(self) -> bool:
        """Whether the put holds a waiting place (taking one if it can)."""
        if not self._holding:
            refused = self._places.take(self._dataset)
            if refused is not None:
                return self.refuse(refused)
            self._holding = True
        return True

    def refuse(self, reason: str) -> bool:
        """Record why the put may not wait; returns False."""
        self._refusal = reason
        return False

    def next_wait_s(self) -> float:
        """How long the next wait may be: what time is left, in steps short enough to
        notice a caller that has gone."""
        left = self._deadline - time.monotonic()
        return left if self._caller_gone is None else min(left, CANCEL_POLL_S)

    def release(self) -> None:
        """Give the place back (if held): the put is done waiting, for now."""
        if self._holding:
            self._holding = False
            self._places.give_back(self._dataset)

    def refusal(self) -> str:
        """Why the put may not wait, as the last check found, for its QuotaExceeded."""
        return self._refusal or "no check refused it"
