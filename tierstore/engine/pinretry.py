"""Pinned shards whose promotion failed, tried again until they are hot.

A pin promises a hot shard, where a read's promotion is best effort. So a pinned
shard's promotion that failed for want of the archive (ArchiveUnavailable), was skipped
for want of room (its quota, or the high watermark: the tier full of pinned or
un-archived shards), or found the promotion queue full is remembered here, and the
prefetch loop queues it again (:meth:`PinRetries.retry`) after a back-off of 1 s,
doubling per failure up to :data:`PIN_RETRY_MAX_S`, while the shard is pinned, cold and
of the generation that failed. A damaged archive copy is not tried again: it would only
fail again.

A pin skipped for want of room has its room made before it is queued again, and is not
queued, so not fetched, while that room cannot be made: a promotion makes its room
below the high watermark only once its frames are in hand, so a tier full of pinned
shards had each pin that did not fit fetched whole from the archive at every try, once
a minute, only to be skipped again. One such pin is queued at a time, since two would
count the same freed room. Room that may have come (a quota raised, a hot shard
unpinned, evicted, deleted or archived) makes them due at once
(:meth:`PinRetries.due_now`), and a TTL pin that runs out before their back-off ends
makes them due then (:meth:`PinRetries.note_pin_end`).

The pins skipped for want of room and still cold are counted for stats and metrics
(:meth:`PinRetries.waiting_for_room`), and the first skip of each is logged, at most
once a minute a dataset: an operator who pinned more than the tier or the quota holds
saw pins stay cold with no reason given.

Thread-safe. Its lock is never held while it calls the promoter or the hot room, and
the promoter calls in here holding none of its own.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tierstore.engine.catalog import Catalog
from tierstore.engine.eviction import HotRoom
from tierstore.engine.records import ShardRecord
from tierstore.engine.sealing import stored_size
from tierstore.tiers.lmdb import LmdbEnvironment

__all__ = ["MAX_PIN_ENDS", "PIN_RETRY_MAX_S", "PinRetries", "PinsWaiting"]

log = logging.getLogger(__name__)

#: the longest pause between two tries of a failed pin's promotion (seconds).
PIN_RETRY_MAX_S = 60.0

#: the most TTL pin ends kept (see :meth:`PinRetries.note_pin_end`): past it, a pin
#: waiting for room may wait out its back-off when a TTL pin runs out.
MAX_PIN_ENDS = 4096

#: (dataset, shard name) of a pin.
_PinKey = tuple[str, str]

#: The least time between two warnings of a dataset's pins skipped for want of room.
ROOM_WARNING_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class PinsWaiting:
    """The pinned shards that are cold because their promotion was skipped for want of
    room (their dataset's quota, or the high watermark: the tier full of pinned or
    un-archived shards), and their stored bytes (as ``hot_bytes`` counts them)."""

    shards: int = 0
    bytes: int = 0


@dataclass(slots=True)
class FailedPin:
    """A pinned shard's generation whose promotion failed ``failures`` times in a
    row (0: it found the promotion queue full), for want of the archive or, if
    ``for_room``, skipped for want of room; tried again at ``due`` (a
    ``time.monotonic()`` reading)."""

    generation: int
    failures: int
    due: float
    for_room: bool = False

    def backoff(self) -> float:
        return min(PIN_RETRY_MAX_S, 2.0 ** max(0, self.failures - 1))


class PinRetries:
    """The pins whose promotion is to be tried again, and their tries."""

    def __init__(
        self,
        environment: LmdbEnvironment,
        catalog: Catalog,
        hot_room: HotRoom,
        queue_promotion: Callable[[ShardRecord, None], bool],
        is_promoting: Callable[[ShardRecord], bool],
    ) -> None:
        """``queue_promotion(record, None)`` queues a promotion that fetches (False: the
        queue is full); ``is_promoting(record)`` says whether one of ``record``'s
        generation is queued or running."""
        self._env = environment
        self._catalog = catalog
        self._hot_room = hot_room
        self._queue_promotion = queue_promotion
        self._is_promoting = is_promoting
        self._lock = threading.Lock()
        #: the pins to try again, by (dataset, shard name); guarded by ``_lock``.
        self._waiting: dict[_PinKey, FailedPin] = {}
        #: the last pin skipped for want of room that was queued once its room was
        #: made; guarded by ``_lock``.
        self._room_pin: ShardRecord | None = None
        #: when TTL pins set since the store opened run out (``time.time()``
        #: readings, a heap); guarded by ``_lock``.
        self._pin_ends: list[float] = []
        #: per dataset: when a pin of it skipped for room was last logged, and how many
        #: were skipped since; guarded by ``_lock``.
        self._room_warned: dict[str, tuple[float, int]] = {}

    def note_pin_end(self, until: float) -> None:
        """Note that a TTL pin runs out at ``until`` (a ``time.time()`` reading): a pin
        waiting for room is tried again then, if its back-off would end later, since
        eviction may take that shard once its pin ran out: the pins waiting now, and
        those whose back-off is worked out before then."""
        self._hot_room.evictables_may_have_come()  # an end sooner, or past already
        wall, now = time.time(), time.monotonic()
        due = now + until - wall
        with self._lock:
            self._drop_past_ends(wall)  # ends past count against no bound
            if until <= wall:
                return  # run out already: nothing to wait for
            if len(self._pin_ends) < MAX_PIN_ENDS:
                heapq.heappush(self._pin_ends, until)
            for pin in self._waiting.values():
                if pin.for_room and due < pin.due:
                    pin.due = due

    def _room_backoff(self, pin: FailedPin, now: float) -> float:
        """When a pin waiting for room is next due: after its back-off, or once the
        next TTL pin runs out if that comes first. Call with ``_lock`` held."""
        due = now + pin.backoff()
        wall = time.time()
        self._drop_past_ends(wall)
        if self._pin_ends:
            due = min(due, now + self._pin_ends[0] - wall)
        return due

    def _drop_past_ends(self, wall: float) -> None:
        """Forget the TTL pin ends before ``wall`` (``time.time()``). Call with ``_lock``
        held."""
        while self._pin_ends and self._pin_ends[0] <= wall:
            heapq.heappop(self._pin_ends)

    def remember(self, record: ShardRecord, *, for_room: bool = False) -> None:
        """Note that the promotion of pinned ``record`` failed for want of the archive
        (or, ``for_room``, was skipped for want of room): tried again after a back-off
        that grows with each failure."""
        key = (record.dataset, record.name)
        with self._lock:
            prior = self._waiting.get(key)
            failures = 1
            if prior is not None and prior.generation == record.generation:
                failures = prior.failures + 1
            pin = FailedPin(record.generation, failures, 0.0, for_room)
            now = time.monotonic()
            pin.due = self._room_backoff(pin, now) if for_room else now + pin.backoff()
            self._waiting[key] = pin
        if for_room and failures == 1:
            self._warn_skipped_for_room(record)

    def _warn_skipped_for_room(self, record: ShardRecord) -> None:
        """Log that pinned ``record`` stays cold for want of room: an operator who pinned
        more than the tier or the quota holds was told nothing. At most once a minute a
        dataset, with how many more of its pins were skipped since (a line a shard,
        for a whole dataset pinned past its quota, flooded the log)."""
        now = time.monotonic()
        with self._lock:
            last, unsaid = self._room_warned.get(record.dataset, (-math.inf, 0))
            if now - last < ROOM_WARNING_EVERY_S:
                self._room_warned[record.dataset] = (last, unsaid + 1)
                return
            # Those whose minute has passed with nothing left unsaid are done with:
            # deleted datasets, a run's short-lived names, would stay for good.
            self._room_warned = {
                dataset: (at, count)
                for dataset, (at, count) in self._room_warned.items()
                if count or now - at < ROOM_WARNING_EVERY_S
            }
            self._room_warned[record.dataset] = (now, 0)
        more = f" ({unsaid} more of its pins skipped so since the last such warning)"
        log.warning(
            "pinned %s/%s (%d stored bytes) stays cold: no room below the hot tier's "
            "high watermark or in its dataset's quota (the rest is pinned or not yet "
            "archived); tried again when room may have come (a pin ended, a shard "
            "evicted, a quota raised)%s; tierstore stats counts the pins waiting so",
            record.dataset,
            record.name,
            stored_size(record),
            more if unsaid else "",
        )

    def waits_for_archive(self) -> bool:
        """Whether a pin's promotion failed for want of the archive and waits to be
        tried again."""
        with self._lock:
            return any(pin.failures and not pin.for_room for pin in self._waiting.values())

    def remember_unqueued(self, record: ShardRecord) -> None:
        """Note that the promotion of ``record``, just pinned, found the queue full, or
        its generation's promotion under way (on a copy of the record without the pin):
        the next pass queues it, once that one has ended if the shard is still cold."""
        with self._lock:
            self._waiting[(record.dataset, record.name)] = FailedPin(
                record.generation, 0, time.monotonic()
            )

    def retry(self) -> int:
        """Queue again the promotion of each pin whose back-off is over, while it is
        pinned, cold and of the generation that failed (others are forgotten); returns
        how many were queued. A pin that waits for room is queued only once its room
        is made (:meth:`_make_room_for`), and one such pin at a time. The prefetch loop
        calls this each pass."""
        now = time.monotonic()
        with self._lock:
            due = [(key, pin, pin.due) for key, pin in self._waiting.items() if pin.due <= now]
        if not due:
            return 0
        with self._env.read() as txn:
            records = [self._catalog.readable_shard(txn, *key) for key, _, _ in due]
        queued = 0
        wall = time.time()
        for (key, pin, seen_due), record in zip(due, records, strict=True):
            if (
                record is None
                or not record.pin_holds(wall)
                or record.hot
                or record.generation != pin.generation
            ):
                with self._lock:
                    if self._waiting.get(key) is pin:
                        del self._waiting[key]
                continue
            # Its own promotion may still be ending (the pin is remembered just before
            # that promotion lets go of it); a room pin waits for the one in flight.
            busy = self._is_promoting(record) or (pin.for_room and self._room_pin_in_flight())
            roomless = pin.for_room and not busy and not self._make_room_for(record)
            taken = not busy and not roomless and self._queue_promotion(record, None)
            queued += taken
            with self._lock:
                if taken and pin.for_room:
                    self._room_pin = record
                if self._waiting.get(key) is not pin:
                    continue  # failed again meanwhile: its own back-off stands
                if roomless:
                    if pin.due == seen_due:  # not made due at once meanwhile (a quota)
                        pin.failures += 1
                        pin.due = self._room_backoff(pin, now)
                elif taken:
                    # Not due again until its back-off is over; one that turns hot is
                    # dropped when next due.
                    pin.due = now + pin.backoff()
                else:
                    pin.due = now  # the queue is full, or a promotion is in flight: next pass
        return queued

    def waits_for_room(self, record: ShardRecord) -> bool:
        """Whether ``record``'s generation was skipped for want of room while pinned and
        waits to be tried again (the caller checks it is still pinned and cold). O(1)."""
        with self._lock:
            pin = self._waiting.get((record.dataset, record.name))
            return pin is not None and pin.for_room and pin.generation == record.generation

    def waiting_for_room(self) -> PinsWaiting:
        """The pins skipped for want of room that are still pinned, cold and of the
        generation skipped: one catalog lookup per pin remembered so (none per shard of
        the catalog), for stats and metrics. A pin whose room was made and whose
        promotion is under way counts until it is hot."""
        with self._lock:
            room = [(key, pin.generation) for key, pin in self._waiting.items() if pin.for_room]
        if not room:
            return PinsWaiting()
        shards = nbytes = 0
        wall = time.time()
        with self._env.read() as txn:
            for (dataset, name), generation in room:
                record = self._catalog.readable_shard(txn, dataset, name)
                if (
                    record is not None
                    and record.generation == generation
                    and record.pin_holds(wall)
                    and not record.hot
                ):
                    shards += 1
                    nbytes += stored_size(record)
        return PinsWaiting(shards, nbytes)

    def due_now(self, dataset: str | None = None) -> bool:
        """Make the pins skipped for want of room due at once — of ``dataset``, or of
        every dataset: room may have come (a quota raised or removed; a hot shard
        unpinned, evicted, deleted or archived). The next prefetch pass tries them;
        pins that failed for want of the archive keep their back-off. Whether any was
        made due."""
        now = time.monotonic()
        made_due = False
        with self._lock:
            for (pinned_dataset, _), pin in self._waiting.items():
                if pin.for_room and dataset in (None, pinned_dataset):
                    pin.due = now
                    made_due = True
        return made_due

    def _room_pin_in_flight(self) -> bool:
        """Whether the last pin queued once its room was made is queued or running."""
        with self._lock:
            room_pin = self._room_pin
        return room_pin is not None and self._is_promoting(room_pin)

    def _make_room_for(self, record: ShardRecord) -> bool:
        """Make the room of pinned ``record`` now, within its dataset's quota and below
        the high watermark, evicting as a promotion does; False, evicting nothing below
        the watermark, when that room cannot be made (or making it failed: logged)."""
        total = stored_size(record)
        try:
            quota = self._hot_room.quota(record.dataset)
            return self._hot_room.make_quota_room_for_promotion(
                record.dataset, quota, total
            ) and self._hot_room.make_room_for_promotion(total)
        except Exception:  # the retry pass goes on: the other pins, then the prefetches
            log.exception("making room for pinned %s/%s failed", record.dataset, record.name)
            return False
