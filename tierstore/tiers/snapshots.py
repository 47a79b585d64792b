"""The snapshots that the read transactions of one process hold: the oldest of them.

LMDB names the snapshot a read transaction sees by the id of the last write
transaction committed when it began (py-lmdb's ``Transaction.id()``; a write
transaction's own id is one past the last committed). What a write changed is seen
by every read whose snapshot id is at least the write's id, and by no other. So
:meth:`ReadSnapshots.oldest`, a lower bound on the snapshot of every read of this
process under way or yet to begin, tells when no read can be older than a write:
the account of unreadable records (:mod:`tierstore.engine.unreadable`) keeps each
delete until then, so that a read older than it does not report the deleted record
again.

A read counts from before it begins: until its snapshot is known it counts at the
newest snapshot seen so far (one that begins later is never older, as commits only
add up), so :meth:`ReadSnapshots.oldest` cannot miss a read that begins while it
runs. Write transactions are not counted: a write sees every commit before it.

Thread safety: every method may be called from any thread. A read lease's read may
end in a garbage collection, which an allocation in any thread may start, the
thread perhaps inside :meth:`ReadSnapshots.oldest` (its ``last_committed()``
allocates): so :meth:`ReadSnapshots.ended` takes no lock, and each change of the
reads counted is one call on a list (atomic under the GIL).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

__all__ = ["ReadSnapshots"]


class ReadSnapshots:
    """The snapshot ids of one process's read transactions under way, counted."""

    def __init__(self) -> None:
        #: ordered with :meth:`oldest`: a read's placeholder and the bound it returns.
        self._lock = threading.Lock()
        #: the snapshot id of each read under way (its placeholder until it is known).
        #: Few: a read is short, or a read lease's, of which there are at most so many.
        self._held: list[int] = []
        #: the newest snapshot id seen: no read that begins from now on is older.
        self._newest_seen = 0

    def beginning(self) -> int:
        """Count a read about to begin; returns the placeholder it counts at, to pass
        to :meth:`began` once its snapshot is known (or to :meth:`ended` if it fails
        to begin)."""
        with self._lock:
            placeholder = self._newest_seen
            self._held.append(placeholder)
        return placeholder

    def began(self, placeholder: int, snapshot: int) -> None:
        """The read counted at ``placeholder`` (by :meth:`beginning`) began, at
        ``snapshot``."""
        self._held.append(snapshot)  # first: in between, counted twice, not missed
        self._forget(placeholder)
        # Unlocked: a newer value lost to a concurrent oldest() leaves a lower bound.
        self._newest_seen = max(self._newest_seen, snapshot)

    def ended(self, snapshot: int) -> None:
        """A read counted at ``snapshot`` ended (or failed to begin)."""
        self._forget(snapshot)

    def oldest(self, last_committed: Callable[[], int]) -> int:
        """The oldest snapshot a read of this process under way or yet to begin may
        see: the oldest held, or with none under way, ``last_committed()`` (the id of
        the last write committed; a read that begins after it is read is counted at it
        or later). Raises what ``last_committed`` raises."""
        with self._lock:
            held = min(self._held, default=None)
            if held is not None:
                return held
            self._newest_seen = max(self._newest_seen, last_committed())
            return self._newest_seen

    def _forget(self, snapshot: int) -> None:
        # Not counted here: a forked child's reads are counted anew.
        with contextlib.suppress(ValueError):
            self._held.remove(snapshot)
