"""A bound on the calls that wait on the archive, so that they cannot take every worker.

Cold reads, and write-through puts and deletes, wait on the archive; a frozen one
(a stopped process, a link dropping packets) keeps each of them for minutes (its
time-outs and retries). The server has a fixed pool of workers: 32 such calls took
them all, and hot reads, stats and every admin call then waited behind them (a review
measured 41 s and a deadline for a hot read). So such a call first takes one of
``slots`` places (fewer than the workers); finding none free, it fails at once with
:class:`Unavailable`, which clients retry after a pause. The workers left over serve
the hot tier and the admin.

Thread safety: one :class:`ArchiveCalls` serves every handler thread of a server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tierstore.errors import InvalidArgument, Unavailable

__all__ = ["ARCHIVE_CALL_SHARE", "ArchiveCalls"]

#: of the server's workers, the share that calls waiting on the archive may hold.
ARCHIVE_CALL_SHARE = 0.75


class ArchiveCalls:
    """At most ``slots`` calls that wait on the archive at once."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise InvalidArgument(f"archive call slots must be at least 1, got {slots}")
        self.slots = slots
        self._free = threading.BoundedSemaphore(slots)

    @classmethod
    def for_workers(cls, workers: int) -> ArchiveCalls:
        """The bound for a server of ``workers`` handler threads: a share of them."""
        return cls(max(1, int(workers * ARCHIVE_CALL_SHARE)))

    @contextmanager
    def slot(self, what: str) -> Iterator[None]:
        """Hold a slot while the block runs ``what`` (for the error: "a cold read of
        d/s"); Unavailable at once if none is free."""
        if not self._free.acquire(blocking=False):
            raise Unavailable(
                f"{what} needs the archive, and {self.slots} calls are waiting on it "
                "already (it may be slow or down): the node keeps its other workers for "
                "hot reads and admin calls; retry shortly"
            )
        try:
            yield
        finally:
            self._free.release()
