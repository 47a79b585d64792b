"""Promotion: copying shards from the archive into the hot tier.

Promotion threads (``promotion_threads``) copy shards from the archive into the
hot tier, fetching a shard's frames with parallel ranged GETs: ranged misses the
policy admitted, pinned shards, and those the prefetcher
(:mod:`tierstore.engine.prefetch`) or an operator asked for. One fill thread writes
in the shards a read already fetched whole (a cache fill). A reader that waits for
a promotion anyway runs it on its own thread (:meth:`Promoter.promote_here`).

A promotion is optional work, unlike a put: it evicts only what it needs to fit
below the high watermark and within its dataset's quota (never more than its own
size; :mod:`tierstore.engine.eviction`), and is skipped, evicting nothing, when
that room cannot be made (the rest is not archived yet, or pinned). It never
writes past the high watermark or a quota; the shard is read from the archive
meanwhile. A pinned shard's promotion that failed (the archive down, or no room) is
tried again with a back-off (:mod:`tierstore.engine.pinretry`).

The fill thread runs ``background_niceness`` below the threads serving callers
(:mod:`tierstore.engine.background`): nobody waits for it. The promotion threads
that fetch from the archive do not: a reader is about to need what they fetch.

Every change of the hot set is told to the policies inside the write transaction
that makes it (lock order: room lock → eviction lock → LMDB write transaction →
policy driver lock). The :class:`~tierstore.engine.mover.Mover` starts and stops the
promoter's threads with its own.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Literal, TypeVar

from tierstore.config import EngineSettings
from tierstore.engine.archived import ArchivedFrames, fetch_all
from tierstore.engine.background import lower_this_thread
from tierstore.engine.catalog import Catalog
from tierstore.engine.eviction import HotRoom
from tierstore.engine.fetchpool import FetchPool
from tierstore.engine.pinretry import PinRetries
from tierstore.engine.policies import PolicyDriver
from tierstore.engine.records import ShardRecord, frame_key
from tierstore.engine.spool import Spooler, Staged
from tierstore.errors import (
    ArchiveUnavailable,
    HotTierFull,
    IntegrityError,
    QuotaExceeded,
    ResourceExhausted,
    StoreClosed,
)
from tierstore.tiers.base import Tier
from tierstore.tiers.lmdb import LmdbEnvironment, LmdbTier

__all__ = ["FrameVerifier", "Promoter"]

log = logging.getLogger(__name__)

#: Verifies one stored frame of a record (raises IntegrityError).
FrameVerifier = Callable[[ShardRecord, int, memoryview], None]
_Promotion = tuple[ShardRecord, list[memoryview] | None]
_T = TypeVar("_T")
_STOP = None


class Promoter:
    """The promotions of one store: queued, on its threads, or on a caller's."""

    def __init__(
        self,
        settings: EngineSettings,
        environment: LmdbEnvironment,
        catalog: Catalog,
        frames: LmdbTier,
        archive: Tier,
        policies: PolicyDriver,
        hot_room: HotRoom,
        overhead: Callable[[ShardRecord], int],
        verify: FrameVerifier,
    ) -> None:
        self._settings = settings
        self._env = environment
        self._catalog = catalog
        self._frames = frames
        self._archive = archive
        self._policies = policies
        self._hot_room = hot_room
        self._overhead = overhead
        self._verify = verify
        self._stop = threading.Event()
        #: held by a promotion from making its room to its commit (lock order: room lock
        #: → eviction lock → LMDB write transaction).
        self._room_lock = threading.Lock()
        #: promotions that fetch from the archive (prefetches, pins, ranged misses): at
        #: the callers' priority, since a reader is about to need what they fetch.
        self._promotions: queue.Queue[_Promotion | None] = queue.Queue(maxsize=64)
        #: cache fills: shards a read already fetched whole, written into the hot tier
        #: by one lowered thread (nobody waits for them).
        self._fills: queue.Queue[_Promotion | None] = queue.Queue(maxsize=64)
        #: ranged GETs of the frames of shards promoted from the archive (apart from the
        #: readers' pool, so a queue of prefetches never delays a reader's frames; a
        #: stop does not wait for them: see fetchpool).
        self._fetch_pool = FetchPool(settings.cold_read_parallelism, "tierstore-promote-fetch")
        # Promotions queued or running: (dataset, generation) -> stored bytes.
        self._promoting: dict[tuple[str, int], int] = {}
        #: the keys of ``_promoting`` that are cache fills (they fetch nothing).
        self._filling: set[tuple[str, int]] = set()
        #: guards ``_promoting``; notified whenever a promotion leaves it.
        self._promoting_lock = threading.Condition()
        #: pinned shards whose promotion failed or was skipped, tried again by the
        #: prefetch loop until they are hot.
        self.pins = PinRetries(environment, catalog, hot_room, self.promote, self.is_promoting)
        #: promotions running on callers' threads (:meth:`promote_here`) at once, at most:
        #: each holds a chunk of a shard (``promotion_chunk_bytes``) and LMDB's copy of
        #: it in memory, as a promotion thread does.
        self._caller_slots = threading.BoundedSemaphore(settings.promotion_threads)
        #: stages the frames of large promotions a chunk at a time (see spool); its
        #: ``give_room`` is set by the store, as the writer's is.
        self.spooler = Spooler(
            environment, catalog, frames, verify, self._stop, settings.promotion_chunk_bytes
        )
        #: called after each promotion that turned a shard hot (the prefetcher's wake-up;
        #: not after a skipped one, which would only have the prefetcher ask again).
        self.after_promotion: Callable[[], None] = lambda: None
        #: wraps each promotion and cache fill: the server counts them as work whose
        #: freed heap goes back to the OS once idle (tierstore.engine.allocator.IdleTrim).
        self.work_in_flight: Callable[[], contextlib.AbstractContextManager[object]] = (
            contextlib.nullcontext
        )
        self._threads: list[threading.Thread] = []
        #: shards promoted into the hot tier since start (for metrics).
        self.promotions = 0
        #: promotions skipped since start because eviction could not make room for them
        #: below the high watermark, within the dataset's quota or in the LMDB map.
        self.promotions_skipped = 0
        #: why the last pinned shard's promotion failed for want of the archive, until a
        #: promotion succeeds (see :meth:`archive_failure`).
        self._archive_error: str | None = None

    def archive_failure(self) -> str | None:
        """Why pinned shards stay cold for want of the archive, or None: the last such
        failure while a pin waits to be tried again. With nothing to upload, the
        mover's error says nothing of an archive gone away, and stats showed no reason.
        Names a shard: for callers with a role on every dataset only."""
        error = self._archive_error
        return error if error is not None and self.pins.waits_for_archive() else None

    def start(self) -> None:
        """Start the promotion threads and the fill thread."""
        workers = [(self._promotions, "promote", False)] * self._settings.promotion_threads
        for jobs, name, lowered in [*workers, (self._fills, "fill", True)]:
            thread = threading.Thread(
                target=self._run_promotions,
                args=(jobs, lowered),
                name=f"tierstore-{name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    @property
    def running(self) -> bool:
        """Whether any of its threads is still alive."""
        return any(thread.is_alive() for thread in self._threads)

    def stop(self, deadline: float) -> None:
        """Stop the threads, waiting for them until ``deadline`` (a
        ``time.monotonic()`` reading) at most; what is still queued is forgotten."""
        self._stop.set()
        # Fetches in flight fail (StoreClosed) at once: a promotion waiting on a frozen
        # archive ends now, not after its requests' time-outs and retries.
        self._fetch_pool.shutdown()
        # One stop mark per promotion thread; if the queue is full, the threads see the
        # stop flag after their current item (and wait for items with a timeout).
        marks = [self._promotions] * self._settings.promotion_threads + [self._fills]
        for jobs in marks:
            with contextlib.suppress(queue.Full):
                jobs.put_nowait(_STOP)
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        # What is still queued will not run: unmark it, so that no reader waits for it.
        for jobs in (self._promotions, self._fills):
            while True:
                try:
                    item = jobs.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    self._forget_promotion((item[0].dataset, item[0].generation))

    def promote(self, record: ShardRecord, stored: list[memoryview] | None) -> bool:
        """Queue ``record`` for promotion; ``stored`` = all its stored frames, if at hand.

        ``stored`` frames must already be verified (the cold read that fetched them
        did); frames fetched here are verified before they enter the hot tier. With
        ``stored`` it is a cache fill, done by the lowered fill thread; without, the
        fetch is done at the callers' priority (see :mod:`tierstore.engine.background`).
        Best effort: a full queue or a duplicate request is dropped (the next read
        asks again). Returns whether it is queued or in flight (False: dropped for a
        full queue, or the promoter is stopping).
        """
        return self._enqueue(record, stored) != "dropped"

    def _enqueue(
        self, record: ShardRecord, stored: list[memoryview] | None
    ) -> Literal["queued", "in flight", "dropped"]:
        """:meth:`promote`, saying whether it queued ``record``, found its generation
        queued or running already, or dropped it (a full queue, or stopping)."""
        if self._stop.is_set():
            return "dropped"
        # Marked before it is queued: a promotion thread may finish it at once.
        if not self._mark_promotion(record, fill=stored is not None):
            return "in flight"
        jobs = self._promotions if stored is None else self._fills
        try:
            jobs.put_nowait((record, stored))
        except queue.Full:
            self._forget_promotion((record.dataset, record.generation))
            return "dropped"
        return "queued"

    def _mark_promotion(self, record: ShardRecord, fill: bool) -> bool:
        """Mark ``record``'s generation as promoting (a cache fill if ``fill``); False,
        and nothing marked, if it already is."""
        key = (record.dataset, record.generation)
        with self._promoting_lock:
            if key in self._promoting:
                return False
            self._promoting[key] = sum(record.stored_sizes(self._overhead(record)))
            if fill:
                self._filling.add(key)
            return True

    def _forget_promotion(self, key: tuple[str, int]) -> None:
        with self._promoting_lock:
            self._promoting.pop(key, None)
            self._filling.discard(key)
            self._promoting_lock.notify_all()

    def in_flight(self) -> tuple[int, int]:
        """Promotions that fetch from the archive, queued or running, and their stored
        bytes (cache fills fetch nothing: they take none of the prefetch budget)."""
        with self._promoting_lock:
            fetching = [size for key, size in self._promoting.items() if key not in self._filling]
            return len(fetching), sum(fetching)

    def promotions_pending(self) -> int:
        """Promotions queued or running, cache fills included."""
        with self._promoting_lock:
            return len(self._promoting)

    def is_promoting(self, record: ShardRecord) -> bool:
        """Whether ``record``'s generation is queued or being promoted."""
        with self._promoting_lock:
            return (record.dataset, record.generation) in self._promoting

    def is_fetching(self, record: ShardRecord) -> bool:
        """Whether ``record``'s generation is queued or being promoted by a promotion
        that fetches it (not a cache fill, which the lowered fill thread may hold)."""
        key = (record.dataset, record.generation)
        with self._promoting_lock:
            return key in self._promoting and key not in self._filling

    def wait_promoted(self, record: ShardRecord, timeout: float) -> bool:
        """Wait until ``record``'s generation is neither queued nor being promoted (at
        once if it is not); False if it still is after ``timeout`` seconds.

        Whether it is hot afterwards is the catalog's to say (a promotion may fail or
        find the generation superseded).
        """
        key = (record.dataset, record.generation)
        with self._promoting_lock:
            return self._promoting_lock.wait_for(lambda: key not in self._promoting, timeout)

    def fits_hot_tier(self, record: ShardRecord, quota: int = 0) -> bool:
        """Whether ``record``'s generation stores no more bytes than the hot tier takes
        below its high watermark, nor than ``quota`` (its dataset's hot-tier quota, 0:
        none): else no promotion of it could ever go in (:meth:`promote_now` skips it),
        and one asked for again and again (a pin's, a policy's prefetch each pass) would
        be skipped each time."""
        total = sum(record.stored_sizes(self._overhead(record)))
        return total <= self._hot_room.high_watermark_bytes() and not 0 < quota < total

    def refuse_too_large(
        self, records: Sequence[ShardRecord], outcome: str, quota: int = 0
    ) -> None:
        """Raise, naming those of ``records`` (the first five) that are not
        :meth:`fits_hot_tier`, if any: HotTierFull for those larger than the hot tier
        takes, else QuotaExceeded for those larger than ``quota`` (their dataset's
        hot-tier quota, 0: none). ``outcome`` says what the caller did not do."""
        limit = self._hot_room.high_watermark_bytes()
        what = f"the hot tier takes ({limit:,} bytes, its high watermark)"
        self._refuse(records, limit, what, outcome, "a larger --hot-capacity", HotTierFull)
        if quota > 0:
            what = f"the hot-tier quota of its dataset ({quota:,} bytes)"
            self._refuse(records, quota, what, outcome, "a larger --hot-quota", QuotaExceeded)

    def _refuse(
        self,
        records: Sequence[ShardRecord],
        limit: int,
        what: str,
        outcome: str,
        remedy: str,
        error: type[ResourceExhausted],
    ) -> None:
        """Raise ``error`` naming those of ``records`` (the first five) that store more
        than ``limit`` bytes, what ``what`` takes, if any."""
        sized = [(record, sum(record.stored_sizes(self._overhead(record)))) for record in records]
        too_large = [(record, size) for record, size in sized if size > limit]
        if not too_large:
            return
        named = ", ".join(
            f"{record.dataset}/{record.name} stores {size:,} bytes"
            for record, size in too_large[:5]
        )
        if len(too_large) > 5:
            named += f", and {len(too_large) - 5} more shards as large"
        it, could = ("it", "it could") if len(too_large) == 1 else ("them", "they could")
        raise error(
            f"{named}, more than {what}: {could} never be made hot, and {outcome} "
            f"({remedy} would hold {it})"
        )

    def promote_pinned(self, record: ShardRecord) -> None:
        """Queue the promotion of ``record``, just pinned; if the queue is full, a later
        prefetch pass queues it (:attr:`pins`): a pin promises a hot shard, where a
        read's promotion is best effort. So does one whose generation is being promoted
        already, should that fail: it runs on a copy of the record taken before the pin,
        and would not be tried again (the pass waits for it to end, and forgets the pin
        once its shard is hot)."""
        if self._enqueue(record, None) == "queued" or self._stop.is_set():
            return
        self.pins.remember_unqueued(record)

    def _run_promotions(self, jobs: queue.Queue[_Promotion | None], lowered: bool) -> None:
        """A promotion thread (``lowered``: the fill thread): runs ``jobs`` until stopped."""
        if lowered:
            lower_this_thread(self._settings.background_niceness)
        while not self._stop.is_set():
            try:
                item = jobs.get(timeout=1.0)
            except queue.Empty:
                continue
            if item is None:
                return
            record, stored = item
            self._promote_registered(record, stored, self._fetch_pool)

    def promote_here(self, record: ShardRecord, fetch_pool: Executor) -> bool:
        """Promote ``record`` on the calling thread, fetching on ``fetch_pool``, for a
        caller that waits for the promotion anyway: it then runs at the caller's
        priority, not a promotion thread's. If the shard is already queued or being promoted,
        returns at once (wait with :meth:`wait_promoted`). A failure is logged, not
        raised: the caller reads the archive instead. Except ArchiveUnavailable, which
        is raised: the archive has just failed through all its retries, and reading it
        again would only make the caller wait as long once more.

        At most ``promotion_threads`` callers promote at once, since each holds up to
        two to three times ``promotion_chunk_bytes`` in memory until it is written (a
        chunk fetched and LMDB's copy of it; a shard smaller than a chunk, held whole).
        Beyond that the promotion is queued for the promotion threads and False is
        returned: the caller should read the archive itself rather than wait behind
        the queue."""
        if not self._caller_slots.acquire(blocking=False):
            self.promote(record, None)
            return False
        try:
            if self._mark_promotion(record, fill=False):
                self._promote_registered(record, None, fetch_pool, raise_unavailable=True)
        finally:
            self._caller_slots.release()
        return True

    def _promote_registered(
        self,
        record: ShardRecord,
        stored: list[memoryview] | None,
        fetch_pool: Executor,
        *,
        raise_unavailable: bool = False,
    ) -> None:
        """Run a promotion marked in ``_promoting``, then unmark it (whatever happens).
        Failures are logged; ArchiveUnavailable is raised if ``raise_unavailable``."""
        promoted = False
        try:
            with self.work_in_flight():
                promoted = self.promote_now(record, stored, fetch_pool)
            if not promoted and record.pin_holds(time.time()):
                # Skipped for want of room (a quota or the hot tier full of pinned or
                # unarchived shards): a pin promises a hot shard, so it is tried again,
                # with the back-off, once room may have come (a quota raised, shards
                # archived or unpinned). It stayed cold until pinned again. (Not hot
                # for another reason, promoted or superseded meanwhile: the retry pass
                # finds it so and forgets it.)
                self.pins.remember(record, for_room=True)
        except Exception as exc:
            if isinstance(exc, ArchiveUnavailable) and record.pin_holds(time.time()):
                # A pin promises a hot shard: it is tried again once the archive may be
                # back (PinRetries.retry), not left cold until someone pins it again.
                # (A damaged archive copy is not: trying again would only fail again.)
                self.pins.remember(record)
                where = f"{record.dataset}/{record.name}@{record.generation}"
                self._archive_error = f"promote pinned {where}: {exc}"
            if raise_unavailable and isinstance(exc, ArchiveUnavailable):
                raise
            if isinstance(exc, ArchiveUnavailable):  # said in stats too: no traceback
                log.warning("promotion of %s/%s failed: %s", record.dataset, record.name, exc)
            elif isinstance(exc, StoreClosed):  # cut short by a close: nothing went wrong
                log.info("promotion of %s/%s stopped: %s", record.dataset, record.name, exc)
            else:
                log.exception("promotion of %s/%s failed", record.dataset, record.name)
        finally:
            self._forget_promotion((record.dataset, record.generation))
            if promoted:
                self._archive_error = None  # the archive answers again
                self.after_promotion()

    def promote_now(
        self,
        record: ShardRecord,
        stored: list[memoryview] | None,
        fetch_pool: Executor | None = None,
    ) -> bool:
        """Copy a generation's stored frames into the hot tier (fetching them if needed,
        on ``fetch_pool``, by default the promoter's). Returns whether it turned hot.

        Frames passed in ``stored`` were verified by the caller; frames fetched here
        are verified before they are written. Optional work (see the module
        docstring): it evicts at most its own size, to fit within the dataset's quota
        (before fetching) and below the high watermark (once the frames are in hand),
        and is skipped, counted in :attr:`promotions_skipped`, when that room cannot
        be made; the room is checked again in the write transaction. Thread-safe.
        """
        if not self._still_cold(record):
            return False  # promoted, superseded or deleted meanwhile: evict and fetch nothing
        total = sum(record.stored_sizes(self._overhead(record)))
        quota = self._hot_room.quota(record.dataset)
        # Above the high watermark already, it could not fit by evicting its own size:
        # the tier is the mover's to trim (or holds only what eviction may not take).
        # Nor can a shard larger than the high watermark or its quota: skipped before
        # anything is fetched (or staged on disk, only to be dropped).
        if (
            self._hot_room.over_high_watermark()
            or total > self._hot_room.high_watermark_bytes()
            or 0 < quota < total
        ):
            return self._skipped()
        # Room in the dataset's quota is made before fetching (and checked again after),
        # room below the high watermark once the frames are in hand (when the simulator
        # makes it, too).
        if not self._hot_room.make_quota_room_for_promotion(record.dataset, quota, total):
            return self._skipped()
        pool = fetch_pool or self._fetch_pool
        if self.spooler.spools(record):
            return self._promote_spooled(record, total, pool, stored)
        if stored is None:
            stored = self._unless_superseded(record, lambda: fetch_all(self._archive, record, pool))
            if stored is None:
                return False
            for index, frame in enumerate(stored):
                self._verify(record, index, frame)
        return self._commit_promotion(record, total, stored)

    def _unless_superseded(self, record: ShardRecord, fetch: Callable[[], _T]) -> _T | None:
        """``fetch()`` (which fetches ``record``'s archive object), or None when it
        raised IntegrityError because the generation was superseded meanwhile: its
        archive object may be gone. Any other IntegrityError is raised."""
        try:
            return fetch()
        except IntegrityError:
            with self._env.read() as txn:
                current = self._catalog.get_shard(txn, record.dataset, record.name)
            if current is not None and current.generation == record.generation:
                raise
            return None

    def _promote_spooled(
        self,
        record: ShardRecord,
        total: int,
        pool: Executor,
        stored: list[memoryview] | None,
    ) -> bool:
        """:meth:`promote_now` for a shard larger than one chunk: its frames (``stored``,
        verified, when a cold read has them in hand; else fetched) are staged a chunk a
        transaction (:mod:`tierstore.engine.spool`), then committed. So LMDB's copy of
        a large cache fill is one chunk in memory, not the shard again."""
        promoted = False
        try:
            if stored is not None:
                staged: Staged | None = self.spooler.stage_held(record, stored)
            else:
                fetcher = ArchivedFrames(self._archive, record)
                staged = self._unless_superseded(
                    record, lambda: self.spooler.stage(record, fetcher, pool)
                )
            if staged in (None, Staged.SUPERSEDED, Staged.STOPPED):
                return False
            if staged is Staged.NO_ROOM:
                return self._skipped()
            # Its room below the high watermark is made now, as for any promotion:
            # staged frames are not hot bytes, so none was reserved meanwhile.
            promoted = self._commit_promotion(record, total, None)
            return promoted
        finally:
            if not promoted:
                self.spooler.drop(record.generation)

    def _commit_promotion(
        self, record: ShardRecord, total: int, stored: list[memoryview] | None
    ) -> bool:
        """Make room for ``record``'s generation and turn it hot, writing its verified
        ``stored`` frames (None: they are staged already). Returns whether it turned
        hot: False when superseded meanwhile, or skipped (counted) for want of room.

        The dataset's quota is read again here, and in the write transaction: one
        lowered during the fetch was passed (a shard larger than the new quota turned
        hot, and stayed so until the mover's next pass)."""
        # Promotions make their room and commit one at a time: two at once would both
        # count the same free room, and one would be skipped after evicting for it.
        with self._room_lock:
            quota = self._hot_room.quota(record.dataset)
            if 0 < quota < total or not (
                self._hot_room.make_quota_room_for_promotion(record.dataset, quota, total)
                and self._hot_room.make_room_for_promotion(total)
            ):
                return self._skipped()
            with self._policies.undone_on_failure(), self._env.write() as txn:
                current = self._catalog.get_shard(txn, record.dataset, record.name)
                if current is None or current.generation != record.generation or current.hot:
                    return False
                settings = self._catalog.get_dataset(txn, record.dataset)
                quota = 0 if settings is None else settings.hot_quota_bytes
                # Checked again here, where it is exact: a put may have taken the room
                # meanwhile, and the map may be nearly full.
                needed, free = self._env.room_for(txn, (len(frame) for frame in stored or ()))
                hot = self._catalog.counter(txn, "hot_bytes")
                fits = (
                    self._hot_room.fits_quota(record.dataset, quota, total)
                    and hot + total <= self._hot_room.high_watermark_bytes()
                    and needed <= free
                )
                if fits:
                    # Always: a marker left by a staging whose drop failed must not
                    # outlive the generation turning hot (a cache fill, say), or the next
                    # open would drop the frames of a hot shard.
                    self._catalog.unmark_staging(txn, record.generation)
                    for index, frame in enumerate(stored or ()):
                        self._frames.put_in(txn, frame_key(record.generation, index), frame)
                    self._catalog.put_shard(txn, current.with_state(hot=True))
                    self._catalog.add_counter(txn, "hot_bytes", total)
                    self._policies.inserted((record.dataset, record.name), total)
        if not fits:
            return self._skipped()
        with self._promoting_lock:  # also run on readers' threads (promote_here)
            self.promotions += 1
        return True

    def _skipped(self) -> bool:
        """Count a promotion skipped for want of room; returns False (it is not hot)."""
        with self._promoting_lock:  # also run on readers' threads (promote_here)
            self.promotions_skipped += 1
        return False

    def _still_cold(self, record: ShardRecord) -> bool:
        """Whether ``record``'s generation is still the shard's, and not hot."""
        with self._env.read() as txn:
            current = self._catalog.get_shard(txn, record.dataset, record.name)
        return current is not None and current.generation == record.generation and not current.hot
