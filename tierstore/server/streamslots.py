"""A bound on the shard streams served at once, so that they cannot take every worker.

A get or put stream holds its worker for as long as its caller takes: a reader that
stops reading holds it until ``stream_message_s`` (60 s) ends the call, and one
process may open hundreds of streams on its one connection. The server has a fixed
pool of workers (32): a review opened 300 streams of a large shard on one connection
and read nothing, and for minutes every other caller, the admin's ``stats`` and
listings included, was refused ("Concurrent RPC limit exceeded!") or timed out, with
nothing in the node's log. So each get and put stream first takes one of ``slots``
places (all workers but an eighth, at least one: 28 of 32; the calls waiting on the
archive, :mod:`tierstore.server.archivecalls`, may hold three quarters of those, so
reads of the hot tier go on while a frozen archive holds them), one caller at most
three quarters of them by default (21; ``serve --caller-share``),
:mod:`tierstore.server.places`; past either, it fails at
once with ServerBusy, which clients retry after a pause, a put too (nothing of it was
done), and so do the torch plugin's reads, for their ``retry_s``. The workers left
over serve stats, listings, stat and the admin calls. (A frozen client's 28 unread
streams kept another caller's 8 MiB read waiting 59.5 s, until the node ended them;
with one caller's share bounded it took 0.05 s.)
"""

from __future__ import annotations

from typing import Self

from tierstore.server.archivecalls import stream_slots_for
from tierstore.server.places import CALLER_SHARE, Places

__all__ = ["ShardStreams"]


class ShardStreams(Places):
    """At most ``slots`` shard streams at once, ``per_caller`` of them for one caller (a
    place per get or put stream, held to its end)."""

    calls = "shard streams"

    @classmethod
    def for_workers(cls, workers: int, share: float = CALLER_SHARE) -> Self:
        """The bound for a server of ``workers`` handler threads (:func:`stream_slots_for`),
        one caller holding ``share`` of it."""
        return cls(stream_slots_for(workers), share)

    def _all_taken(self) -> str:
        return (
            f"the node is serving {self.slots} shard streams already, the most it serves "
            "at once (it keeps its other workers for stats, listings and admin calls; "
            "streams that are opened and not read hold their places until the node "
            "ends them)"
        )
