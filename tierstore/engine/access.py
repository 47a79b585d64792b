"""Access statistics, counted in memory on the read path and flushed in batches.

Recording an access must not cost a write transaction (an fsync) per read, so
counts collect here and :meth:`AccessRecorder.drain` hands them to the mover,
which writes them in one transaction every ``access_flush_interval_s``. A crash
loses at most that interval's counts; nothing else depends on them.
"""

from __future__ import annotations

import threading
import time

__all__ = ["AccessRecorder"]


class AccessRecorder:
    """Pending (count, last time) per shard. Thread-safe; O(1) per access."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], tuple[int, float]] = {}

    def record(self, dataset: str, name: str) -> None:
        now = time.time()
        key = (dataset, name)
        with self._lock:
            count, _ = self._pending.get(key, (0, 0.0))
            self._pending[key] = (count + 1, now)

    def pending(self, dataset: str, name: str) -> tuple[int, float]:
        """Counts not yet flushed for one shard."""
        with self._lock:
            return self._pending.get((dataset, name), (0, 0.0))

    def drain(self) -> dict[tuple[str, str], tuple[int, float]]:
        """Take every pending count (the caller writes them to the catalog)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def forget(self, dataset: str, name: str) -> None:
        with self._lock:
            self._pending.pop((dataset, name), None)
