"""Access statistics, counted in memory on the read path and flushed in batches.

Recording an access must not cost a write transaction (an fsync) per read, so
statistics collect here and :meth:`AccessRecorder.drain` hands them to the mover,
which merges them into the catalog in one transaction every
``access_flush_interval_s``. A crash loses at most that interval's reads; nothing
else depends on them. Per shard the catalog keeps 24 bytes
(:class:`~tierstore.engine.records.AccessStats`): the read count, the last read,
and a decayed frequency (each read counts 1, halved every ``access_half_life_s``).

Statistics belong to one shard *generation*: an overwrite starts from zero, so the
pending statistics carry the generation they were taken on and a flush drops those
of a generation the catalog no longer holds. Readers of the statistics (``stat``,
seeding policies) hold :attr:`AccessRecorder.flush_lock` while they read the
catalog and the pending statistics, and a flush holds it from :meth:`drain` to its
commit, so no read is ever seen twice or missed in between.
"""

from __future__ import annotations

import math
import threading

from tierstore.engine.records import AccessStats

__all__ = ["AccessRecorder"]

_Generation = tuple[str, str, int]
#: (count, last read, decayed frequency as of the last read): AccessStats' fields, kept
#: as a plain tuple on the read path (no object to build per read).
_Pending = tuple[int, float, float]
_NONE: _Pending = (0, 0.0, 0.0)


class AccessRecorder:
    """Pending :class:`AccessStats` per shard generation. Thread-safe; O(1) per access."""

    def __init__(self, half_life_s: float) -> None:
        self.half_life_s = half_life_s
        self._lock = threading.Lock()
        self._pending: dict[_Generation, _Pending] = {}
        #: Held by a flush from drain() to commit, and by readers of catalog + pending stats.
        self.flush_lock = threading.Lock()

    def record(self, dataset: str, name: str, generation: int, now: float, reads: int = 1) -> None:
        """Count ``reads`` reads of a generation at ``now`` (seconds since the epoch).

        The same arithmetic as :meth:`AccessStats.with_read` (``reads`` times, at one
        instant), inlined for the read path.
        """
        key = (dataset, name, generation)
        with self._lock:
            count, last, frequency = self._pending.get(key, _NONE)
            if now > last:
                frequency *= math.exp2((last - now) / self.half_life_s)
                last = now
            self._pending[key] = (count + reads, last, frequency + reads)

    def pending(self, dataset: str, name: str, generation: int) -> AccessStats:
        """Statistics not yet flushed for one shard generation."""
        with self._lock:
            return AccessStats(*self._pending.get((dataset, name, generation), _NONE))

    def drain(self) -> dict[_Generation, AccessStats]:
        """Take every pending statistic (the caller merges them into the catalog)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return {key: AccessStats(*reads) for key, reads in pending.items()}
