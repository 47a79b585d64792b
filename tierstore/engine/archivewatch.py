"""Whether the archive answers: the last request of any kind that failed for want of it.

The mover reports its own failures (:meth:`Mover.archive_failure
<tierstore.engine.mover.Mover.archive_failure>`), but with nothing to upload it makes no
request, and an archive gone away showed nowhere while cold reads and promotions failed
against it. Every archive request of a store goes through a :class:`WatchedTier`, which
tells its :class:`ArchiveWatch` of each that raised :class:`ArchiveUnavailable` (the
archive unreachable, answering 5xx through its retries, timing out, refusing the keys)
and of each that returned. Stats and /metrics show the last failure, with when it
happened, until a later request of any kind returns: the archive answers again.

A missing object or a damaged one is an answer (the tier returns None, or bytes the
caller finds wrong: DataLoss of one shard), not an outage. Nothing here makes a request
of its own; a request costs a clock read and an uncontended lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tierstore.errors import ArchiveUnavailable
from tierstore.tiers.base import Tier
from tierstore.tiers.forwarding import ForwardingTier

__all__ = ["ArchiveWatch", "WatchedTier"]

_T = TypeVar("_T")


class ArchiveWatch:
    """The last archive request that failed for want of the archive, until one that
    began after it answers. Thread-safe.

    Requests are ordered by when they began, not when they ended: one that began
    before an outage and answers after a failure was recorded does not clear it (the
    archive may have failed since it was sent), and one that hung through an outage
    and fails after newer requests have answered is not recorded (the archive answers
    again; on an idle node it stayed shown until the next request)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: the failure's message, when it was recorded (``time.time()``) and when its
        #: request began (``time.monotonic()``); None while the archive answers.
        self._failure: tuple[str, float, float] | None = None
        #: when the latest-begun request that answered began (``time.monotonic()``)
        self._answered_began = float("-inf")

    def failed(self, error: ArchiveUnavailable, began: float) -> None:
        """A request begun at ``began`` (``time.monotonic()``) raised ``error``: shown
        until a request begun later answers; not if one begun later has answered."""
        with self._lock:
            if began < self._answered_began:
                return
            self._failure = (str(error), time.time(), began)

    def answered(self, began: float) -> None:
        """A request begun at ``began`` returned: the archive answers, and a failure of
        a request begun before it is over."""
        with self._lock:
            if began > self._answered_began:
                self._answered_began = began
            if self._failure is not None and began > self._failure[2]:
                self._failure = None

    def failure(self) -> str | None:
        """The last failure with when it happened, or None when the archive answered
        since (or never failed). May name a shard's archive object: for callers with a
        role on every dataset only."""
        with self._lock:
            failure = self._failure
        if failure is None:
            return None
        message, at, _ = failure
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
        ago = max(time.time() - at, 0.0)
        return f"{message} (last archive request failed at {when}, {ago:.0f} s ago)"


class WatchedTier(ForwardingTier):
    """Delegates to ``inner``, telling ``watch`` of each request's outcome (composition,
    no I/O of its own)."""

    def __init__(self, inner: Tier, watch: ArchiveWatch) -> None:
        super().__init__(inner)
        self._watch = watch

    def _request(self, operation: str, call: Callable[[], _T]) -> _T:
        began = time.monotonic()
        try:
            result = call()
        except ArchiveUnavailable as exc:
            self._watch.failed(exc, began)
            raise
        self._watch.answered(began)
        return result
