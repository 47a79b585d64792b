"""What every read leaves behind, in one place: statistics, counts, trace, policy.

Each read of a shard, by any path (a whole or ranged :meth:`Store.get`, a frame
stream, the service's sealed reads), is told to :meth:`ReadLog.observe` once,
after the catalog said whether the shard is hot. It then

* counts the read in the shard's access statistics (flushed in batches, see
  :mod:`tierstore.engine.access`);
* counts a hit or a miss for the dataset's hit ratio;
* appends a read event to the trace ring (:mod:`tierstore.engine.trace`);
* tells the dataset's policy (``record_access``) and, on a miss, asks it whether
  the shard is worth promoting (``admit``). A pinned shard is promoted whatever
  the policy says: pins override policy.

The room offered to ``admit`` is what a promotion could take before it had to evict:
the room below the hot tier's high watermark and, for a dataset with a hot-tier
quota, no more than the room left in that quota (a promotion makes room in the
quota from the dataset's own shards, so a policy told only of the tier's room
would admit every miss and have the dataset evict its own shards for each one).

Costs per read: three short locks and a dict update or two, plus one LMDB read of
the hot-bytes counter and the dataset's settings on a miss (which already costs an
archive round trip).

Reads a local reader served itself arrive as counts per shard generation
(:meth:`ReadLog.observe_reported`). The access statistics and the dataset's hits
take every read; the trace and the policy hear of at most
:data:`REPORTED_READS_TOLD` of each count, as hits one after the other. So one report
cannot flood the node's trace ring (shared by every dataset) or hold the policies'
lock for long, and the trace holds exactly what the policy heard, so the simulator
replays what the engine saw. The policies lose little: LRU needs one read to know a
shard is recent, S3-FIFO tells apart up to three reads of a shard in its queues, the
clairvoyant policy moves one job's plan per read (the others report their
positions), epoch-pin ignores reads. What they lose is frequency beyond that, within
one report (at most a second of reads): S3-FIFO's decayed admission count of a shard
read in place grows by at most three a report.

Thread safety: a :class:`ReadLog` is safe to share between threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tierstore.config import EngineSettings
from tierstore.engine.access import AccessRecorder
from tierstore.engine.catalog import Catalog
from tierstore.engine.policies import PolicyDriver
from tierstore.engine.records import ShardRecord
from tierstore.engine.sealing import stored_size
from tierstore.engine.trace import TraceRing
from tierstore.tiers.lmdb import LmdbEnvironment

__all__ = ["REPORTED_READS_TOLD", "ReadLog"]

#: Of a count of reads reported by a local reader, how many the trace and the
#: placement policy hear of (see the module docstring).
REPORTED_READS_TOLD = 3


class ReadLog:
    """Records reads for statistics, hit ratios, the trace and the placement policies."""

    def __init__(
        self,
        settings: EngineSettings,
        environment: LmdbEnvironment,
        catalog: Catalog,
        access: AccessRecorder,
        policies: PolicyDriver,
        trace: TraceRing,
        count_read: Callable[[str, bool, int], None],
    ) -> None:
        self._room = int(settings.hot_capacity_bytes * settings.high_watermark)
        self._env = environment
        self._catalog = catalog
        self._access = access
        self._policies = policies
        self._trace = trace
        self._count_read = count_read

    def observe(self, record: ShardRecord, hit: bool) -> bool:
        """Record one read of ``record``'s generation, served hot (``hit``) or from the
        archive. Returns whether the shard should be promoted: always True for a hit;
        for a miss, the policy's admission decision, or True while a pin holds it."""
        now = time.time()
        size = stored_size(record)
        self._access.record(record.dataset, record.name, record.generation, now)
        self._count_read(record.dataset, hit, 1)
        self._trace.read(record.dataset, record.name, size, hit)
        free = 0 if hit else self._free_bytes(record.dataset)
        admitted = self._policies.read((record.dataset, record.name), size, hit, free)
        return admitted or record.pin_holds(now)

    def observe_reported(self, record: ShardRecord, count: int) -> None:
        """Record ``count`` reads of ``record``'s generation that a local reader served
        from the hot tier and reported together (see the module docstring): every one
        in the access statistics and the hit count, ``min(count, REPORTED_READS_TOLD)``
        in the trace and the policy — those only while the shard is still hot. One
        evicted since was still a hit when read (dropping its reads lost a fifth of a
        busy reader's, in a review), but a policy hears only of shards it holds, and
        the trace holds what the policy heard.

        Its cost does not grow with ``count``.
        """
        now = time.time()
        size = stored_size(record)
        dataset, name = record.dataset, record.name
        self._access.record(dataset, name, record.generation, now, count)
        self._count_read(dataset, True, count)
        if not record.hot:
            return
        for _ in range(min(count, REPORTED_READS_TOLD)):
            self._trace.read(dataset, name, size, True, reported=True)
            self._policies.read((dataset, name), size, True, 0)

    def _free_bytes(self, dataset: str) -> int:
        """Room a promotion into ``dataset`` could take without evicting: below the high
        watermark and, if the dataset has a hot-tier quota, within it (may be negative)."""
        with self._env.read() as txn:
            free = self._room - self._catalog.counter(txn, "hot_bytes")
            settings = self._catalog.get_dataset(txn, dataset)
        quota = 0 if settings is None else settings.hot_quota_bytes
        if quota > 0:
            free = min(free, quota - self._policies.hot_bytes(dataset))
        return free
