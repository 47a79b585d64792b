"""A bound on the calls that wait on the archive, so that they cannot take every worker.

Cold reads, and write-through puts and deletes, wait on the archive; a frozen one
(a stopped process, a link dropping packets) keeps each of them for up to its retry
budget (its time-outs and retries). The server has a fixed pool of workers: 32 such
calls took them all, and hot reads, stats and every admin call then waited behind them
(a review measured 41 s and a deadline for a hot read). So such a call first takes one
of ``slots`` places (three quarters of the shard streams the server serves at once,
:func:`stream_slots_for`: 21 of 28 for 32 workers), one caller at most three quarters
of them by default (15; ``serve --caller-share``), :mod:`tierstore.server.places`;
past either, it fails at once with ServerBusy, which clients retry after a pause, for
up to two minutes: a refusal is a queue, for an archive busy with other reads
(refused as a plain Unavailable, a read was retried for 1.5 s and failed). The
workers left over serve the hot tier and the admin. Dataset deletes take one too (a
write-through one waits on the archive, the others behind it). A read holds its slot
only while it waits on the archive: from its start if it starts cold, from the frame
it falls to the archive at if its shard is evicted under it, until it is promoted or
ends.

Thread safety: one :class:`ArchiveCalls` serves every handler thread of a server.
"""

from __future__ import annotations

from typing import Self

from tierstore.server.places import CALLER_SHARE, Places

__all__ = ["ARCHIVE_CALL_SHARE", "ArchiveCalls", "HeldSlot", "stream_slots_for"]

#: of the shard streams a server serves at once, the share that calls waiting on the
#: archive may hold.
ARCHIVE_CALL_SHARE = 0.75


def stream_slots_for(workers: int) -> int:
    """The shard streams a server of ``workers`` handler threads serves at once: all
    but an eighth of its workers (at least one), which are kept for the calls that
    stream no shard (:mod:`tierstore.server.streamslots`)."""
    return max(1, workers - max(1, workers // 8))


class ArchiveCalls(Places):
    """At most ``slots`` calls that wait on the archive at once, ``per_caller`` of them
    for one caller."""

    calls = "calls waiting on the archive"

    @classmethod
    def for_workers(cls, workers: int, share: float = CALLER_SHARE) -> Self:
        """The bound for a server of ``workers`` handler threads: a share of the shard
        streams it serves at once (:func:`stream_slots_for`), so that streams of the
        hot tier are served while the archive holds these; one caller holding ``share``
        of it."""
        return cls(max(1, int(stream_slots_for(workers) * ARCHIVE_CALL_SHARE)), share)

    def refuse_if_none_free(self, what: str, who: str) -> None:
        """ServerBusy at once if no slot is free to ``who`` now; takes none. For a call
        that will need one only after a long wait of its own (a write-through put, before
        its stream is received): a sure refusal then comes before that wait, not after.
        (Looked at, not taken and given back: a call needing the last slot in that
        instant was refused.)"""
        self._take(what, who, keep=False)

    def held(self, what: str, who: str) -> HeldSlot:
        """A slot for one call of ``who``'s that takes it only while it waits on the
        archive (a read that turns hot, or falls to the archive, part way): see
        :class:`HeldSlot`."""
        return HeldSlot(self, what, who)

    def _all_taken(self) -> str:
        return (
            f"{self.slots} calls are waiting on the archive already, the most the node "
            "lets wait (it may be slow or down; the node keeps its other workers for hot "
            "reads and admin calls)"
        )


class HeldSlot:
    """One call's slot, taken when it starts waiting on the archive and given back when
    it stops (an :class:`~tierstore.engine.sealedpath.ArchiveUse`). Used by the call's
    own thread only."""

    def __init__(self, calls: ArchiveCalls, what: str, who: str) -> None:
        self._calls = calls
        self._what = what
        self._who = who
        self._held = False

    def take(self) -> None:
        """Take a slot unless held; ServerBusy at once if none is free."""
        if not self._held:
            self._calls.take(self._what, self._who)
            self._held = True

    def give_back(self) -> None:
        """Give the slot back if held."""
        if self._held:
            self._held = False
            self._calls.give_back(self._who)
