"""Access statistics, counted in memory on the read path and flushed in batches.

Recording an access must not cost a write transaction (an fsync) per read, so
counts collect here and :meth:`AccessRecorder.drain` hands them to the mover,
which writes them in one transaction every ``access_flush_interval_s``. A crash
loses at most that interval's counts; nothing else depends on them.

Counts belong to one shard *generation*: an overwrite starts from zero, so the
pending counts carry the generation they were taken on and a flush drops those
of a generation the catalog no longer holds. Readers of the counts (``stat``,
eviction) hold :attr:`AccessRecorder.flush_lock` while they read the catalog and
the pending counts, and a flush holds it from :meth:`drain` to its commit, so
no count is ever seen twice or missed in between.
"""

from __future__ import annotations

import threading
import time

__all__ = ["AccessRecorder"]


class AccessRecorder:
    """Pending (count, last time) per shard generation. Thread-safe; O(1) per access."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, int], tuple[int, float]] = {}
        #: Held by a flush from drain() to commit, and by readers of catalog + pending counts.
        self.flush_lock = threading.Lock()

    def record(self, dataset: str, name: str, generation: int) -> None:
        now = time.time()
        key = (dataset, name, generation)
        with self._lock:
            count, _ = self._pending.get(key, (0, 0.0))
            self._pending[key] = (count + 1, now)

    def pending(self, dataset: str, name: str, generation: int) -> tuple[int, float]:
        """Counts not yet flushed for one shard generation."""
        with self._lock:
            return self._pending.get((dataset, name, generation), (0, 0.0))

    def drain(self) -> dict[tuple[str, str, int], tuple[int, float]]:
        """Take every pending count (the caller writes them to the catalog)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending
