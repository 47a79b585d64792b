"""A bound on the calls that wait on the archive, so that they cannot take every worker.

Cold reads, and write-through puts and deletes, wait on the archive; a frozen one
(a stopped process, a link dropping packets) keeps each of them for minutes (its
time-outs and retries). The server has a fixed pool of workers: 32 such calls took
them all, and hot reads, stats and every admin call then waited behind them (a review
measured 41 s and a deadline for a hot read). So such a call first takes one of
``slots`` places (three quarters of the shard streams the server serves at once,
:func:`stream_slots_for`: 21 of 28 for 32 workers); finding none free, it fails at
once with :class:`Unavailable`, which clients retry after a pause. The workers left over serve
the hot tier and the admin. Dataset deletes take one too (a write-through one waits
on the archive, the others behind it). A read holds its slot only while it waits on
the archive: from its start if it starts cold, from the frame it falls to the archive
at if its shard is evicted under it, until it is promoted or ends.

Thread safety: one :class:`ArchiveCalls` serves every handler thread of a server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

from tierstore.errors import InvalidArgument, Unavailable

__all__ = ["ARCHIVE_CALL_SHARE", "ArchiveCalls", "HeldSlot", "stream_slots_for"]

#: of the shard streams a server serves at once, the share that calls waiting on the
#: archive may hold.
ARCHIVE_CALL_SHARE = 0.75


def stream_slots_for(workers: int) -> int:
    """The shard streams a server of ``workers`` handler threads serves at once: all
    but an eighth of its workers (at least one), which are kept for the calls that
    stream no shard (:mod:`tierstore.server.streamslots`)."""
    return max(1, workers - max(1, workers // 8))


class ArchiveCalls:
    """At most ``slots`` calls that wait on the archive at once."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise InvalidArgument(f"archive call slots must be at least 1, got {slots}")
        self.slots = slots
        self._lock = threading.Lock()
        self._taken = 0

    @classmethod
    def for_workers(cls, workers: int) -> Self:
        """The bound for a server of ``workers`` handler threads: a share of the shard
        streams it serves at once (:func:`stream_slots_for`), so that streams of the
        hot tier are served while the archive holds these."""
        return cls(max(1, int(stream_slots_for(workers) * ARCHIVE_CALL_SHARE)))

    @property
    def in_use(self) -> int:
        """The slots held now (for the node's metrics)."""
        return self._taken

    @contextmanager
    def slot(self, what: str) -> Iterator[None]:
        """Hold a slot while the block runs ``what`` (for the error: "a cold read of
        d/s"); Unavailable at once if none is free."""
        held = self.held(what)
        held.take()
        try:
            yield
        finally:
            held.give_back()

    def refuse_if_none_free(self, what: str) -> None:
        """Unavailable at once if no slot is free now; takes none. For a call that will
        need one only after a long wait of its own (a write-through put, before its
        stream is received): a sure refusal then comes before that wait, not after.
        (Looked at, not taken and given back: a call needing the last slot in that
        instant was refused.)"""
        with self._lock:
            free = self._taken < self.slots
        if not free:
            self._refuse(what)

    def held(self, what: str) -> HeldSlot:
        """A slot for one call that takes it only while it waits on the archive (a
        read that turns hot, or falls to the archive, part way): see :class:`HeldSlot`."""
        return HeldSlot(self, what)

    def _take(self, what: str) -> None:
        with self._lock:
            taken = self._taken < self.slots
            if taken:
                self._taken += 1
        if not taken:
            self._refuse(what)

    def _refuse(self, what: str) -> None:
        raise Unavailable(
            f"{what} needs the archive, and {self.slots} calls are waiting on it "
            "already (it may be slow or down): the node keeps its other workers for "
            "hot reads and admin calls; retry shortly"
        )

    def _give_back(self) -> None:
        with self._lock:
            assert self._taken > 0, "a slot given back that was not taken"
            self._taken -= 1


class HeldSlot:
    """One call's slot, taken when it starts waiting on the archive and given back when
    it stops (an :class:`~tierstore.engine.sealedpath.ArchiveUse`). Used by the call's
    own thread only."""

    def __init__(self, calls: ArchiveCalls, what: str) -> None:
        self._calls = calls
        self._what = what
        self._held = False

    def take(self) -> None:
        """Take a slot unless held; Unavailable at once if none is free."""
        if not self._held:
            self._calls._take(self._what)
            self._held = True

    def give_back(self) -> None:
        """Give the slot back if held."""
        if self._held:
            self._held = False
            self._calls._give_back()
