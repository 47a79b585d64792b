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
reads of the hot tier go on while a frozen archive holds them); finding none free,
it fails at once with ServerBusy (an Unavailable), which clients retry after a pause,
a put too (nothing of it was done), and so do the torch plugin's reads, for their
``retry_s``. The workers left over serve stats, listings, stat and the admin calls.

Not done: fairness between callers. One process's streams may still hold every slot
(for a stalled reader, until its calls end), and other callers' streams then wait in
their retries; only the calls that stream no shard are kept from the wait.
"""

from __future__ import annotations

from typing import Self

from tierstore.errors import ServerBusy
from tierstore.server.archivecalls import ArchiveCalls, stream_slots_for

__all__ = ["ShardStreams"]


class ShardStreams(ArchiveCalls):
    """At most ``slots`` shard streams at once (a slot per get or put stream, held to its
    end); ServerBusy (an Unavailable) at once, saying so, when none is free. Thread-safe."""

    @classmethod
    def for_workers(cls, workers: int) -> Self:
        """The bound for a server of ``workers`` handler threads (:func:`stream_slots_for`)."""
        return cls(stream_slots_for(workers))

    def _refuse(self, what: str) -> None:
        raise ServerBusy(
            f"{what}: the node is serving {self.slots} shard streams already, the most "
            "it serves at once (it keeps its other workers for stats, listings and admin "
            "calls); retry shortly. Streams that are opened and not read hold their "
            "places until the node ends them"
        )
