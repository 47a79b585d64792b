"""The prefetch loop: asks the placement policies what to fetch ahead of readers.

A thread of its own wakes when a plan is declared or a position reported, when a
promotion finishes, and at least every ``prefetch_interval_s``. Each pass ends
expired plans, queues again the promotions of pinned shards that failed (the
archive down, say), then offers the policies a budget and queues a promotion of every
cold shard they name (a prefetch bypasses admission: the policy itself asked).

The budget: ``requests`` = ``prefetch_depth`` minus the promotions queued or
running (the free I/O depth); ``bytes`` = what the archive can deliver within the
look-ahead horizon (``archive_bandwidth_bytes_per_s`` times ``prefetch_horizon_s``,
capped by :func:`~tierstore.policy.base.look_ahead_bytes`) minus the bytes already on
their way — the whole horizon when nothing is, which is when one shard larger than it
is taken (alone) if a policy names it first.

No pass asks the policies while the hot tier is above its high watermark: a
promotion there would be skipped anyway (see :mod:`tierstore.engine.promotion`), and a
skipped promotion does not wake this loop, so nothing spins while, say, writes the
archive has not taken yet fill the tier. Below it, a shard named is not queued when
eviction could make it no room (too few bytes hot that the archive holds and no pin
keeps): its promotion makes that room only once it has fetched the shard whole, and
would drop it, at every pass.

Thread safety: :meth:`Prefetcher.run_once` may run from any thread; the loop is
one thread (:meth:`start` / :meth:`stop`).
"""

from __future__ import annotations

import logging
import threading

from tierstore.config import EngineSettings
from tierstore.engine.catalog import Catalog
from tierstore.engine.eviction import HotRoom
from tierstore.engine.planbook import PlanBook
from tierstore.engine.policies import PolicyDriver, shard_of
from tierstore.engine.promotion import Promoter
from tierstore.engine.records import ShardRecord
from tierstore.engine.sealing import stored_size
from tierstore.policy.base import Key, PrefetchBudget, look_ahead_bytes
from tierstore.tiers.lmdb import LmdbEnvironment

__all__ = ["Prefetcher"]

log = logging.getLogger(__name__)


class Prefetcher:
    """Queues the promotions the policies ask for, within the archive's budget."""

    def __init__(
        self,
        settings: EngineSettings,
        environment: LmdbEnvironment,
        catalog: Catalog,
        policies: PolicyDriver,
        plans: PlanBook,
        promoter: Promoter,
        hot_room: HotRoom,
    ) -> None:
        self._settings = settings
        self._env = environment
        self._catalog = catalog
        self._policies = policies
        self._plans = plans
        self._promoter = promoter
        self._hot_room = hot_room
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: promotions this prefetcher queued since start (those a full queue dropped
        #: not counted).
        self.queued = 0

    def start(self) -> None:
        """Start the loop thread."""
        self._thread = threading.Thread(target=self._run, name="tierstore-prefetch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop thread (promotions already queued are the promoter's)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Ask for a pass soon (a plan or the hot set changed)."""
        self._wake.set()

    def budget(self) -> PrefetchBudget:
        """What may be fetched now (see the module docstring)."""
        return self._budget(*self._promoter.in_flight())

    def _budget(self, count: int, in_flight: int) -> PrefetchBudget:
        """The budget with ``count`` fetching promotions of ``in_flight`` bytes on their way."""
        settings = self._settings
        horizon = look_ahead_bytes(
            settings.archive_bandwidth_bytes_per_s, settings.prefetch_horizon_s
        )
        return PrefetchBudget(
            requests=max(0, settings.prefetch_depth - count),
            bytes=horizon if count == 0 else max(0, horizon - in_flight),
        )

    def run_once(self) -> int:
        """One pass: end expired plans, ask the policies, queue promotions. Returns how
        many promotions were queued (pins whose promotion failed not counted, nor
        promotions a full queue dropped)."""
        self._plans.expire()
        self._promoter.pins.retry()
        count, in_flight = self._promoter.in_flight()
        budget = self._budget(count, in_flight)
        if budget.requests <= 0 or budget.bytes <= 0 or self._hot_room.over_high_watermark():
            return 0
        records: dict[Key, ShardRecord] = {}
        #: keys found to be nothing to fetch, each saying whether it is on its way in.
        settled: dict[Key, bool] = {}
        quotas: dict[str, int] = {}
        with self._env.read() as txn:

            def quota(dataset: str) -> int:
                if dataset not in quotas:
                    settings = self._catalog.get_dataset(txn, dataset)
                    quotas[dataset] = 0 if settings is None else settings.hot_quota_bytes
                return quotas[dataset]

            def is_hot(key: Key) -> bool:
                # "Hot" to a policy means: nothing to fetch. A shard that is gone, not
                # archived (so hot anyway), unreadable or already on its way counts as
                # hot, and so does one larger than the hot tier or its dataset's quota
                # takes (its promotion would be skipped, at every pass).
                if key in records or key in settled:
                    return key in settled
                record = self._catalog.readable_shard(txn, *shard_of(key))
                if record is None or record.hot or not record.archived:
                    settled[key] = False
                elif self._promoter.is_promoting(record):
                    settled[key] = True
                elif not self._promoter.fits_hot_tier(record, quota(record.dataset)):
                    settled[key] = False
                else:
                    records[key] = record
                return key in settled

            def arriving(key: Key) -> bool:
                # Of the keys above, only a queued or running promotion brings one in: a
                # shard too large never comes, and must take no room in a policy's sums.
                return is_hot(key) and settled[key]

            def size_of(key: Key) -> int:
                record = records.get(key)
                if record is None and not is_hot(key):
                    record = records[key]
                return 0 if record is None else stored_size(record)

            wanted = self._policies.prefetch(
                budget, is_hot, size_of, idle=count == 0, arriving=arriving
            )
        queued = 0
        for key in wanted:
            record = records.get(key)
            if record is None:
                continue
            # Nor one eviction could make no room for (the rest of the tier pinned or
            # not archived yet): its promotion would fetch it whole, then drop it, at
            # every pass. Probed without asking the policies for victims (see
            # HotRoom.could_make_room_for_promotion), and outside their lock.
            if not self._hot_room.could_make_room_for_promotion(stored_size(record)):
                continue
            # One a full promotion queue drops is not counted: a later pass asks again.
            if self._promoter.promote(record, None):
                queued += 1
        self.queued += queued
        return queued

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._settings.prefetch_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except Exception:  # nothing may end this thread but stop()
                log.exception("prefetch pass failed")
