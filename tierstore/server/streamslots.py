"""A bound on the shard streams served at once, so that they cannot take every worker,
and on one caller's share of them, so that one caller cannot take every stream.

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

One caller (a principal, by name: every process holding its token counts as one) holds
at most ``per_caller`` of the places (three quarters, at least one: 21 of 28), so that
the streams of one that opens many and reads none (or just many) leave the rest to the
node's other callers; its next stream is refused the same way, saying so. A caller on
a node of its own is bounded by that share too: more streams at once wait in their
retries (``max_workers`` raises both). Not done: a share that shrinks as callers come,
so two callers that each take their share can still hold every place between them.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

from tierstore.errors import InvalidArgument, ServerBusy
from tierstore.server.archivecalls import stream_slots_for

__all__ = ["CALLER_SHARE", "ShardStreams"]

#: of the shard streams a server serves at once, the share that one caller's may hold.
CALLER_SHARE = 0.75


class ShardStreams:
    """At most ``slots`` shard streams at once, and ``per_caller`` of them for any one
    caller (a place per get or put stream, held to its end); ServerBusy (an Unavailable)
    at once, saying which bound, when the stream would pass one. Thread-safe."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise InvalidArgument(f"shard stream places must be at least 1, got {slots}")
        self.slots = slots
        self.per_caller = max(1, int(slots * CALLER_SHARE))
        self._lock = threading.Lock()
        self._taken = 0
        self._by_caller: Counter[str] = Counter()

    @classmethod
    def for_workers(cls, workers: int) -> Self:
        """The bound for a server of ``workers`` handler threads (:func:`stream_slots_for`)."""
        return cls(stream_slots_for(workers))

    @property
    def in_use(self) -> int:
        """The places held now (for the node's metrics)."""
        return self._taken

    @contextmanager
    def slot(self, what: str, who: str) -> Iterator[None]:
        """Hold a place while the block runs ``what`` (for the error: "a shard read") for
        the caller named ``who``; ServerBusy at once if none is free to it."""
        with self._lock:
            held = self._by_caller[who]
            free = self._taken < self.slots and held < self.per_caller
            if free:
                self._taken += 1
                self._by_caller[who] += 1
        if not free:
            self._refuse(what, who, held)
        try:
            yield
        finally:
            with self._lock:
                self._taken -= 1
                self._by_caller[who] -= 1
                if not self._by_caller[who]:
                    del self._by_caller[who]

    def _refuse(self, what: str, who: str, held: int) -> None:
        if held >= self.per_caller:
            bound = (
                f"{who} holds {held} of the node's {self.slots} shard streams already, "
                "the most one caller holds (the rest are kept for its other callers)"
            )
        else:
            bound = (
                f"the node is serving {self.slots} shard streams already, the most it "
                "serves at once (it keeps its other workers for stats, listings and "
                "admin calls)"
            )
        raise ServerBusy(
            f"{what}: {bound}; retry shortly. Streams that are opened and not read hold "
            "their places until the node ends them"
        )
