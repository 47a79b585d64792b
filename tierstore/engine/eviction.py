"""Room in the hot tier: its watermarks, each dataset's quota, and eviction.

The hot tier holds at most ``hot_capacity_bytes``; eviction starts when it passes
the high watermark and, for a put or the mover's pass, frees down to the low one. A
dataset with a hot-tier quota is trimmed to it by evicting its own shards. The
placement policies choose the victims (:mod:`tierstore.engine.policies`), among hot
shards the archive holds and no pin keeps (:meth:`ShardRecord.evictable`).

Every figure here is best effort outside a write transaction: the writer (a put, a
promotion) checks its room again inside the transaction that takes it
(:meth:`HotRoom.passes_high_watermark`, :meth:`HotRoom.fits_quota`).

Thread safety: every method may be called from any thread. Evictions run one at a
time (the eviction lock); lock order: eviction lock → LMDB write transaction →
policy driver lock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tierstore.config import EngineSettings
from tierstore.engine.catalog import Catalog
from tierstore.engine.policies import PolicyDriver, shard_of
from tierstore.engine.records import ShardRecord, frame_key
from tierstore.errors import FailedPrecondition
from tierstore.policy.base import Key
from tierstore.tiers.lmdb import LmdbEnvironment, LmdbTier

__all__ = ["HotRoom"]

#: How long a probe's "enough" (or "gave up") stands, whatever happens meanwhile: a
#: pin set, or an overwrite of an evictable shard, costs at most a fetch that finds no
#: room, as before the probe.
_ENOUGH_REUSE_S = 1.0
#: How long a probe's "too few" stands unless room may have come (see
#: HotRoom.room_may_have_come): with nothing evictable, every prefetch pass asks.
_TOO_FEW_REUSE_S = 5.0
#: How long an eviction walk that found too little stands for its scope (a dataset, or
#: the whole tier) unless evictable shards may have come (room_may_have_come,
#: evictables_may_have_come, the end of a TTL pin that held a shard it walked): a
#: change not told is seen at most this late.
_BARE_WALK_REUSE_S = 10.0
#: Hot shards one probe looks at, at most (each a catalog lookup, some 10 µs): past
#: them it gives up, and takes room to be there (the promotion finds out, as before).
PROBE_SHARDS_AT_MOST = 1_000
#: The most shards one write transaction of an eviction drops (about 0.15 s of the
#: hot tier's write lock); a pass of more commits as it goes.
EVICTED_PER_COMMIT = 1_000


class _TooLittle(Exception):
    """Aborts an all-or-nothing eviction whose victims no longer free enough."""


@dataclass(frozen=True, slots=True)
class _Probe:
    """A count of the bytes eviction may take, at ``at`` (monotonic): ``found`` bytes;
    ``complete`` if every hot shard was looked at, ``gave_up`` if it stopped at
    :data:`PROBE_SHARDS_AT_MOST` short of what it was asked for (neither: it stopped
    once it had that)."""

    at: float
    found: int
    complete: bool
    gave_up: bool


@dataclass(frozen=True, slots=True)
class _BareWalk:
    """An eviction walk that found fewer evictable bytes than it was asked for (so it
    looked at every hot shard of its scope), at ``at`` (monotonic), begun after
    ``events`` evictable-shard events: ``left`` evictable bytes it did not evict;
    ``pins_end``: when the first TTL pin that held back a shard it walked runs out
    (``time.time()``; infinity: none)."""

    at: float
    events: int
    left: int
    pins_end: float


class HotRoom:
    """The hot tier's room (watermarks, quotas) and the eviction that makes it.

    An eviction walks the policies' hot shards and reads each one's record to see if
    it may go (archived, no pin holding it). Shards that may not are walked again at
    every eviction: with a few thousand not archived yet (the archive lagging an
    ingest) or pinned, each put past the high watermark took 40-120 ms, and the
    mover's pass every second held the policy lock, and with it every read, for up
    to 0.4 s (a policy review). So a walk that found too little is remembered for its
    scope, and the next eviction there that it could not help is not walked, until an
    evictable shard may have come (:meth:`room_may_have_come`,
    :meth:`evictables_may_have_come`, a TTL pin that held one back running out) or
    :data:`_BARE_WALK_REUSE_S` has passed.
    """

    def __init__(
        self,
        settings: EngineSettings,
        environment: LmdbEnvironment,
        catalog: Catalog,
        frames: LmdbTier,
        policies: PolicyDriver,
        overhead: Callable[[ShardRecord], int],
        held: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._settings = settings
        #: why eviction is held (the archive lost objects it had acknowledged), or None
        self._held = held
        self._env = environment
        self._catalog = catalog
        self._frames = frames
        self._policies = policies
        self._overhead = overhead
        self._lock = threading.Lock()  # one eviction at a time: see _evicting
        #: notified, under it, as an eviction commits victims and as _lock is let go:
        #: a put waiting for _lock goes on once an eviction under way made its room.
        self._room_changed = threading.Condition()
        #: the last count of evictable bytes (see _could_free), under _probe_lock.
        self._probe: _Probe | None = None
        #: calls of room_may_have_come so far, under _probe_lock: a count begun before
        #: one is not kept after it.
        self._room_events = 0
        self._probe_lock = threading.Lock()
        #: events after which a shard may be evictable that was not (room_may_have_come,
        #: evictables_may_have_come), under _probe_lock
        self._evictable_events = 0
        #: by scope (a dataset, None: every dataset), the last walk that found too
        #: little, under _lock
        self._bare_walks: dict[str | None, _BareWalk] = {}
        #: shards evicted from the hot tier since start (for metrics).
        self.evictions = 0

    def make_quota_room_for_promotion(self, dataset: str, quota: int, incoming: int) -> bool:
        """Evict ``dataset``'s own shards so that a promotion of ``incoming`` bytes fits
        its ``quota`` (0: none): at most ``incoming`` bytes, and only if that is enough
        (a dataset already over its quota is the mover's to trim). Whether it fits."""
        if quota <= 0:
            return True
        over = self._policies.hot_bytes(dataset) + incoming - quota
        if over <= 0:
            return True
        if over > incoming:
            return False
        self.evict(over, dataset=dataset, only_if_enough=True)
        return self.fits_quota(dataset, quota, incoming)

    def make_room_for_promotion(self, incoming: int) -> bool:
        """Evict so that a promotion of ``incoming`` bytes fits below the high watermark:
        what it needs (at most ``incoming`` bytes), and only if that is enough. Whether
        it fits now. Unlike :meth:`make_room` (a put's), it never frees down to the
        low watermark: one optional promotion must not flush the hot set."""
        need = self.hot_bytes() + incoming - self.high_watermark_bytes()
        if need <= 0:
            return True
        if need > incoming:
            return False
        return self.evict(need, only_if_enough=True, spread=False) >= need

    def could_make_room_for_promotion(self, incoming: int) -> bool:
        """Whether :meth:`make_room_for_promotion` could make room for ``incoming`` bytes:
        there is room below the high watermark, or hot shards eviction may take
        (archived, no pin holding) hold enough bytes. A probe, for before a fetch: it
        evicts nothing and asks no policy for victims (which would use up the victim an
        admission chose, and age a policy's statistics), only the catalog. Best effort,
        as every figure here: see :meth:`_could_free`."""
        with self._env.read() as txn:
            hot = self._catalog.counter(txn, "hot_bytes")
        need = hot + incoming - self.high_watermark_bytes()
        if need <= 0:
            return True
        if need > incoming:
            return False  # above the high watermark already: no promotion goes in
        return self._could_free(need)

    def _could_free(self, wanted: int) -> bool:
        """Whether the hot shards eviction may take hold ``wanted`` bytes, counted in
        the order they went hot (the oldest, most often archived, first) until that
        many are found, at most :data:`PROBE_SHARDS_AT_MOST` of them (past those: taken
        to, unknown). An answer is reused for a while (:data:`_ENOUGH_REUSE_S`,
        :data:`_TOO_FEW_REUSE_S`; a "too few" until room may have come): a review
        measured a walk per pass, 10-15 µs a hot shard, where writes went on."""
        now = time.monotonic()
        with self._probe_lock:
            last = self._probe
        if last is not None:
            age = now - last.at
            if last.found >= wanted or last.gave_up:
                if age < _ENOUGH_REUSE_S:
                    return True
            elif last.complete and age < _TOO_FEW_REUSE_S:
                return False
            # (else it stopped at a smaller need than this one's: count again)
        with self._probe_lock:
            events = self._room_events
        found = 0
        wall = time.time()
        keys = self._policies.hot_keys(PROBE_SHARDS_AT_MOST)
        with self._env.read() as txn:
            for key in keys:
                record = self._catalog.readable_shard(txn, *shard_of(key))
                if record is not None and record.hot and record.evictable(wall):
                    found += sum(record.stored_sizes(self._overhead(record)))
                    if found >= wanted:
                        break
        enough = found >= wanted
        looked_at_all = len(keys) < PROBE_SHARDS_AT_MOST
        complete, gave_up = not enough and looked_at_all, not enough and not looked_at_all
        with self._probe_lock:
            if self._room_events == events:  # else it may be stale already
                self._probe = _Probe(now, found, complete, gave_up)
        return enough or gave_up

    def room_may_have_come(self) -> None:
        """A hot shard's pin ended, or one was evicted, deleted or archived: the next
        :meth:`could_make_room_for_promotion` counts the evictable bytes afresh."""
        with self._probe_lock:
            self._room_events += 1
            self._evictable_events += 1
            self._probe = None

    def evictables_may_have_come(self) -> None:
        """A shard went hot that eviction may take (a promotion: archived already), or a
        pin got an end (a TTL, perhaps past already): the next eviction walks its scope
        again."""
        with self._probe_lock:
            self._evictable_events += 1

    def over_high_watermark(self) -> bool:
        """Whether the hot tier holds more than its high watermark: no promotion fits
        until eviction (or archiving, then eviction) brings it down."""
        return self.hot_bytes() > self.high_watermark_bytes()

    def hot_bytes(self) -> int:
        """The bytes the hot tier holds now (frames and their overhead)."""
        with self._env.read() as txn:
            return self._catalog.counter(txn, "hot_bytes")

    def high_watermark_bytes(self) -> int:
        """Where eviction starts: no put or promotion is written past it while
        eviction can make room."""
        return int(self._settings.hot_capacity_bytes * self._settings.high_watermark)

    def low_watermark_bytes(self) -> int:
        """Where eviction for a put or the mover's pass stops."""
        return int(self._settings.hot_capacity_bytes * self._settings.low_watermark)

    def quota(self, dataset: str) -> int:
        """``dataset``'s hot-tier quota in bytes (0: none, or the dataset is gone)."""
        with self._env.read() as txn:
            settings = self._catalog.get_dataset(txn, dataset)
        return 0 if settings is None else settings.hot_quota_bytes

    def evict_if_needed(self) -> int:
        """Evict down to the low watermark if the hot tier is above the high one, and
        each dataset down to its hot-tier quota if it is above it."""
        with self._env.read() as txn:
            hot = self._catalog.counter(txn, "hot_bytes")
            quotas = [
                (name, settings.hot_quota_bytes)
                for name, settings in self._catalog.list_datasets(txn)
                if settings.hot_quota_bytes > 0
            ]
        # Quotas first: what they free counts towards the watermark too.
        # As far as archived shards allow, even when pins keep it above the quota.
        freed = sum(
            self.make_room_in_quota(name, quota, 0, all_or_nothing=False) for name, quota in quotas
        )
        if hot - freed <= self.high_watermark_bytes():
            return freed
        return freed + self.evict(hot - freed - self.low_watermark_bytes())

    def make_room_in_quota(
        self, dataset: str, quota: int, incoming: int, *, all_or_nothing: bool = True
    ) -> int:
        """Before ``dataset`` takes ``incoming`` more hot bytes: evict its own shards
        (archived, unpinned, as its policy chooses) if it would pass its ``quota``
        (0: none). ``all_or_nothing`` (for a put): all the room at once or none, so a put
        refused for its quota has evicted nothing; without it (a lowered quota), as much
        as archived shards allow. Returns bytes freed. Best effort: the writer checks the
        quota again in its write transaction."""
        if quota <= 0:
            return 0
        over = self._policies.hot_bytes(dataset) + incoming - quota
        if over <= 0:
            return 0
        return self.evict(over, dataset=dataset, only_if_enough=all_or_nothing)

    def fits_quota(self, dataset: str, quota: int, incoming: int, leaving: int = 0) -> bool:
        """Whether ``dataset`` may hold ``incoming`` more hot bytes while ``leaving`` of
        its own go (an overwritten generation) under ``quota`` (0: none). Exact when
        called inside the write transaction that adds them."""
        if quota <= 0:
            return True
        return self._policies.hot_bytes(dataset) - leaving + incoming <= quota

    def make_room(self, incoming: int) -> bool:
        """Before a put writes ``incoming`` hot bytes: if they would pass the high
        watermark, evict down to the low one. Returns whether eviction could do no
        more: room was needed and too little was evictable (the put is then written
        past the watermark). Best effort: puts committed meanwhile may take the room,
        which the put's transaction checks (:meth:`passes_high_watermark`)."""
        if not self._passes_high_watermark(self.hot_bytes(), incoming):
            return False  # the usual case, without queueing behind an eviction
        # Read again under the eviction lock: puts making room at once each evicted down
        # to the low watermark from the same figure, together far below it.
        if not self._take_lock(room_for=incoming):
            return False  # an eviction under way made the room
        try:
            hot = self.hot_bytes()
            if not self._passes_high_watermark(hot, incoming):
                return False
            need = hot + incoming - self.low_watermark_bytes()
            return self._evict_locked(need) < need
        finally:
            self._let_go()

    def _take_lock(self, room_for: int | None = None) -> bool:
        """Take the eviction lock (True). With ``room_for``, give up waiting for it
        (False) as soon as an eviction under way has brought the hot tier low enough
        for ``room_for`` more bytes below the high watermark: a put that came during
        a pass waited for all of it, though its room was made by the first commit."""
        with self._room_changed:
            while not self._lock.acquire(blocking=False):
                if room_for is not None and not self._passes_high_watermark(
                    self.hot_bytes(), room_for
                ):
                    return False
                self._room_changed.wait()
        return True

    def _let_go(self) -> None:
        """Release the eviction lock, waking those waiting in :meth:`_take_lock`."""
        with self._room_changed:
            self._lock.release()
            self._room_changed.notify_all()

    @contextmanager
    def _evicting(self) -> Iterator[None]:
        """The eviction lock, held: one eviction at a time."""
        self._take_lock()
        try:
            yield
        finally:
            self._let_go()

    def passes_high_watermark(self, txn: Any, incoming: int) -> bool:
        """Whether ``incoming`` more hot bytes pass the high watermark, as of ``txn``
        (exact inside the write transaction that adds them)."""
        return self._passes_high_watermark(self._catalog.counter(txn, "hot_bytes"), incoming)

    def _passes_high_watermark(self, hot: int, incoming: int) -> bool:
        return hot + incoming > self.high_watermark_bytes()

    def evict(
        self,
        bytes_to_free: int,
        dataset: str | None = None,
        *,
        only_if_enough: bool = False,
        spread: bool = True,
    ) -> int:
        """Evict hot shards the policies choose (archived, no pin holding) — of
        ``dataset`` only, if given; returns bytes freed. With ``only_if_enough``, evict
        none unless the victims add up to ``bytes_to_free``; ``spread``: see
        :meth:`PolicyDriver.victims`. A key the policies hold hot
        that the catalog does not (it can drift after a failed commit) is forgotten on
        the way."""
        with self._evicting():
            return self._evict_locked(bytes_to_free, dataset, only_if_enough, spread)

    def _evict_locked(
        self,
        bytes_to_free: int,
        dataset: str | None = None,
        only_if_enough: bool = False,
        spread: bool = True,
    ) -> int:
        """:meth:`evict`, with the eviction lock held."""
        if self._walk_would_find_too_little(dataset, bytes_to_free, only_if_enough):
            return 0
        with self._probe_lock:
            events = self._evictable_events
        now = time.time()
        stale: list[Key] = []
        sizes: dict[Key, int] = {}
        pins_end = math.inf  # the first TTL pin's end of the shards it held back
        with self._env.read() as txn:

            def evictable(key: Key) -> bool:
                nonlocal pins_end
                dataset, name = shard_of(key)
                # An unreadable record cannot be evicted: the policy forgets it.
                record = self._catalog.readable_shard(txn, dataset, name)
                if record is None or not record.hot:
                    stale.append(key)
                    return False
                if not record.evictable(now):
                    if record.archived and record.pinned_until:
                        pins_end = min(pins_end, record.pinned_until)
                    return False
                sizes[key] = sum(record.stored_sizes(self._overhead(record)))
                return True

            if dataset is None:
                victims = self._policies.victims(bytes_to_free, evictable, spread=spread)
            else:
                victims = self._policies.dataset_victims(dataset, bytes_to_free, evictable)
        chosen = sum(sizes.get(key, 0) for key in victims)
        if only_if_enough and chosen < bytes_to_free:
            victims = []
        gone: list[int] = []
        # A commit every EVICTED_PER_COMMIT victims: one transaction held the hot tier's
        # write lock for all of them, and a pass of 3,370 1 KiB shards kept every other
        # put waiting 0.5 s (one at the default capacity, minutes). All or nothing stays
        # one transaction: a failed commit then evicted none (only a put's room, at most).
        per_commit = max(len(victims), 1) if only_if_enough else EVICTED_PER_COMMIT
        for start in range(0, max(len(victims), 1), per_commit):
            try:
                with self._policies.undone_on_failure(), self._env.write() as txn:
                    freed_here = [
                        freed
                        for key in victims[start : start + per_commit]
                        if (freed := self._evict_in(txn, *shard_of(key), now)) is not None
                    ]
                    if only_if_enough and victims and sum(freed_here) < bytes_to_free:
                        # A victim pinned, deleted or overwritten since the walk: the
                        # rest would not make the room, so none goes.
                        raise _TooLittle
                    if start + per_commit >= len(victims):
                        for key in stale:
                            record = self._catalog.readable_shard(txn, *shard_of(key))
                            if record is None or not record.hot:
                                self._policies.removed(key)
            except _TooLittle:
                return 0
            gone.extend(freed_here)
            self.evictions += len(freed_here)  # committed; under the eviction lock
            with self._room_changed:  # puts waiting for this pass may have their room
                self._room_changed.notify_all()
        # Walks of other scopes that events have voided go too (a dataset deleted).
        self._bare_walks = {k: w for k, w in self._bare_walks.items() if w.events == events}
        if chosen < bytes_to_free:
            left = sum(sizes.values()) - sum(gone)
            self._bare_walks[dataset] = _BareWalk(time.monotonic(), events, left, pins_end)
        else:
            self._bare_walks.pop(dataset, None)
        return sum(gone)

    def _walk_would_find_too_little(
        self, dataset: str | None, bytes_to_free: int, only_if_enough: bool
    ) -> bool:
        """Whether the last walk of ``dataset``'s scope found too little to free
        ``bytes_to_free`` (all or nothing when ``only_if_enough``), and nothing that
        may be evictable has come since (with the eviction lock held)."""
        last = self._bare_walks.get(dataset)
        if last is None or time.monotonic() - last.at >= _BARE_WALK_REUSE_S:
            return False
        if time.time() >= last.pins_end:
            return False  # a pin that held a shard back has run out
        with self._probe_lock:
            if self._evictable_events != last.events:
                return False
        return last.left == 0 or (only_if_enough and bytes_to_free > last.left)

    def evict_shard(self, dataset: str, name: str) -> int:
        """Evict one shard if the archive holds it and no pin holds it; returns bytes freed
        (0 if it is not evictable). Raises FailedPrecondition while eviction is held."""
        held = self._held()
        if held is not None:
            raise FailedPrecondition(f"{dataset}/{name} was not evicted: {held}")
        with self._evicting():
            with self._policies.undone_on_failure(), self._env.write() as txn:
                freed = self._evict_in(txn, dataset, name, time.time())
            if freed is None:
                return 0
            self.evictions += 1  # committed: a commit that failed evicted nothing
            return freed

    def _evict_in(self, txn: Any, dataset: str, name: str, now: float) -> int | None:
        """Evict ``dataset/name`` in the write transaction ``txn`` if it is evictable;
        the bytes it frees, None if it is not. The caller counts it in
        :attr:`evictions` once ``txn`` has committed."""
        record = self._catalog.get_shard(txn, dataset, name)
        if record is None or not record.evictable(now) or self._held() is not None:
            return None
        for index in range(len(record.frame_sizes)):
            self._frames.delete_in(txn, frame_key(record.generation, index))
        self._catalog.put_shard(txn, record.with_state(hot=False))
        freed = sum(record.stored_sizes(self._overhead(record)))
        self._catalog.add_counter(txn, "hot_bytes", -freed)
        self._policies.removed((dataset, name))
        return freed
