"""The mover: drains the upload journal to the archive, promotes, and runs eviction.

One background thread works the journal in sequence order: ``upload`` copies a
generation's stored frames to ``<dataset>/<generation>.frames`` and then writes
its manifest (the manifest is the commit marker), and only then removes the
journal entry and marks the record archived — so a crash at any point leaves the
entry in place and the upload is simply redone on restart. While the archive
fails, the thread backs off exponentially and keeps every entry: nothing
acknowledged is dropped.

Promotion threads (``promotion_threads``) copy shards from the archive into the
hot tier, fetching a shard's frames with parallel ranged GETs: ranged misses the
policy admitted, pinned shards, and those the prefetcher
(:mod:`tierstore.engine.prefetch`) or an operator asked for. One fill thread writes
in the shards a read already fetched whole (a cache fill).
The journal thread runs eviction (:mod:`tierstore.engine.eviction`) whenever the hot
tier passes its high watermark, down to the low one, and trims datasets over their
quotas.

A promotion is optional work, unlike a put: it evicts only what it needs to fit
below the high watermark and within its dataset's quota (never more than its own
size), and is skipped, evicting nothing, when that room cannot be made (the rest is
not archived yet, or pinned). It never writes past the high watermark or a quota;
the shard is read from the archive meanwhile.

The journal thread and the fill thread (writing shards a read already fetched whole)
run ``background_niceness`` below the threads serving callers
(:mod:`tierstore.engine.background`): on busy cores, reads and puts come first. The
promotion threads that fetch from the archive do not: a reader is about to need what
they fetch.

Every change of the hot set is told to the policies inside the write transaction
that makes it (lock order: LMDB write transaction → policy driver lock).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeGuard, TypeVar

from tierstore.config import EngineSettings
from tierstore.engine.access import AccessRecorder
from tierstore.engine.archived import ArchivedFrames, fetch_all
from tierstore.engine.background import lower_this_thread
from tierstore.engine.catalog import Catalog
from tierstore.engine.eviction import HotRoom
from tierstore.engine.policies import PolicyDriver
from tierstore.engine.rebuild import archive_keys
from tierstore.engine.records import (
    JournalOp,
    ShardRecord,
    archive_dataset_key,
    archive_frames_key,
    archive_manifest_key,
    catalog_key,
    encode_dataset,
    frame_key,
)
from tierstore.engine.spool import Spooler, Staged
from tierstore.errors import (
    ArchiveUnavailable,
    IntegrityError,
    KeyUnwrapError,
    TierstoreError,
    Unavailable,
    UnknownKeyId,
)
from tierstore.tiers.base import Tier
from tierstore.tiers.lmdb import LmdbEnvironment, LmdbTier

__all__ = ["Mover"]

log = logging.getLogger(__name__)

#: Verifies one stored frame of a record (raises IntegrityError).
FrameVerifier = Callable[[ShardRecord, int, memoryview], None]
_Promotion = tuple[ShardRecord, list[memoryview] | None]
_T = TypeVar("_T")
#: journal entries looked through for a dataset's operations (quota waits, write-through).
_UPLOADS_SCANNED = 10_000
#: how often a write-through put overtaken by newer ones runs their entries before it
#: gives up waiting for one of them to reach the archive.
_CATCH_UP_ATTEMPTS = 4
_STOP = None
#: seconds a journal entry may hand the archive no data before archive_failure says so,
#: per part in flight (mover_threads): a part of 8 MiB slower than that, about 280 KB/s,
#: is as good as no answer
STALL_REPORT_S = 30.0
#: how long a write-through caller waits for the journal while another holds it
#: before it gives up, if that entry has meanwhile stalled (STALL_REPORT_S): the mover's
#: attempt on a frozen archive may keep the journal for minutes (its time-outs and
#: retries), and the caller's put or delete is committed locally either way.
JOURNAL_TURN_GRACE_S = 10.0


#: the longest pause between two tries of a failed pin's promotion (seconds).
PIN_RETRY_MAX_S = 60.0


@dataclass(slots=True)
class _FailedPin:
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


def _manifest_generation(key: str, prefix: str) -> int | None:
    """The generation of manifest ``key`` directly under ``prefix`` (None for any other
    object: frames, settings, another dataset's keys under a longer name)."""
    name = key[len(prefix) :]
    if not name.endswith(".manifest") or "/" in name:
        return None
    try:
        return int(name.removesuffix(".manifest"), 16)
    except ValueError:
        return None


def _newer_waits(current: ShardRecord | None, generation: int) -> TypeGuard[ShardRecord]:
    """Whether ``current``, the record of a shard, is a generation newer than
    ``generation`` that the archive does not hold yet (False when the shard is gone,
    ``generation`` or an older one is current, or the newer one is archived)."""
    return current is not None and current.generation > generation and not current.archived


class Mover:
    """Background archive uploads, promotions and evictions of one store."""

    def __init__(
        self,
        settings: EngineSettings,
        environment: LmdbEnvironment,
        catalog: Catalog,
        frames: LmdbTier,
        archive: Tier,
        access: AccessRecorder,
        policies: PolicyDriver,
        hot_room: HotRoom,
        overhead: Callable[[ShardRecord], int],
        verify: FrameVerifier,
        seal: Callable[[str, bytes], bytes],
        check_object: Callable[[str, bytes | memoryview], None],
    ) -> None:
        self._settings = settings
        self._env = environment
        self._catalog = catalog
        self._frames = frames
        self._archive = archive
        self._access = access
        self._policies = policies
        self._hot_room = hot_room
        self._overhead = overhead
        self._verify = verify
        #: seals a metadata object for its archive key (see archiveseal).
        self._seal = seal
        #: checks a metadata object read at an archive key (raises IntegrityError,
        #: UnknownKeyId; see archiveseal).
        self._check_object = check_object
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._journal_lock = threading.Lock()  # one journal entry is worked at a time
        #: journal entries tried so far (done or failed) and dataset settings changed,
        #: notified on each: puts waiting for room in their quota wait on it.
        self._progress = 0
        self._progressed = threading.Condition()
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
        #: readers' pool, so a queue of prefetches never delays a reader's frames).
        self._fetch_pool = ThreadPoolExecutor(
            settings.cold_read_parallelism, thread_name_prefix="tierstore-promote-fetch"
        )
        # Promotions queued or running: (dataset, generation) -> stored bytes.
        self._promoting: dict[tuple[str, int], int] = {}
        #: the keys of ``_promoting`` that are cache fills (they fetch nothing).
        self._filling: set[tuple[str, int]] = set()
        #: guards ``_promoting``; notified whenever a promotion leaves it.
        self._promoting_lock = threading.Condition()
        #: pinned shards whose promotion failed for want of the archive, to be tried
        #: again (:meth:`retry_failed_pins`); guarded by ``_promoting_lock``.
        self._failed_pins: dict[tuple[str, str], _FailedPin] = {}
        #: promotions running on callers' threads (:meth:`promote_here`) at once, at most:
        #: each holds a chunk of a shard (``promotion_chunk_bytes``) and LMDB's copy of
        #: it in memory, as a promotion thread does.
        self._caller_slots = threading.BoundedSemaphore(settings.promotion_threads)
        #: stages the frames of large promotions a chunk at a time (see spool).
        self._spooler = Spooler(
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
        self._journal_thread: threading.Thread | None = None
        self._retry_delay = settings.mover_retry_initial_s
        self.last_error: str | None = None
        #: when the journal entry being carried out last handed the archive data (or
        #: began), None between entries: see archive_failure.
        self._archive_progress: float | None = None
        #: why journal entries may not run now (None: they may): see hold_archive.
        self._archive_hold: str | None = None
        #: shards promoted into the hot tier since start (for metrics).
        self.promotions = 0
        #: promotions skipped since start because eviction could not make room for them
        #: below the high watermark, within the dataset's quota or in the LMDB map.
        self.promotions_skipped = 0
        #: Uploads given up because the local copy failed verification (newest last).
        self.data_loss: collections.deque[str] = collections.deque(maxlen=100)

    def start(self) -> None:
        """Start the background threads (resumes any journal left by a crash)."""
        workers: list[tuple[queue.Queue[_Promotion | None] | None, str, bool]] = [
            (None, "journal", True),
            *[(self._promotions, "promote", False)] * self._settings.promotion_threads,
            (self._fills, "fill", True),
        ]
        for jobs, name, lowered in workers:
            thread = threading.Thread(
                target=self._run, args=(jobs, lowered), name=f"tierstore-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
            if jobs is None:
                self._journal_thread = thread

    def _run(self, jobs: queue.Queue[_Promotion | None] | None, lowered: bool) -> None:
        """A mover thread: the journal's (``jobs`` None) or a promotion queue's."""
        if lowered:
            lower_this_thread(self._settings.background_niceness)
        if jobs is None:
            self._run_journal()
        else:
            self._run_promotions(jobs)

    @property
    def running(self) -> bool:
        """Whether any of its threads is still alive (after :meth:`stop`: one that did
        not end in time, inside an archive request, say)."""
        return any(thread.is_alive() for thread in self._threads)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the threads, waiting at most ``timeout`` seconds for all of them (a
        thread inside an archive request ends when it does); pending journal entries
        stay for the next start."""
        self._stop.set()
        self._wake.set()
        with self._progressed:
            self._progressed.notify_all()  # puts waiting for uploads stop waiting
        # One stop mark per promotion thread; if the queue is full, the threads see the
        # stop flag after their current item (and wait for items with a timeout).
        marks = [self._promotions] * self._settings.promotion_threads + [self._fills]
        for jobs in marks:
            with contextlib.suppress(queue.Full):
                jobs.put_nowait(_STOP)
        deadline = time.monotonic() + timeout  # one wait for all: not 10 s per thread
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
        self._fetch_pool.shutdown(wait=False, cancel_futures=True)
        try:
            self.flush_access()  # a clean stop keeps every access counted so far
        except TierstoreError as exc:  # e.g. a full hot tier: counts are only statistics
            log.warning("access counts not flushed at stop: %s", exc)

    def wake(self) -> None:
        """Tell the journal thread that there is new work."""
        self._wake.set()

    # The journal.

    def _run_journal(self) -> None:
        last_flush = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(timeout=self._settings.access_flush_interval_s)
            self._wake.clear()
            try:
                progressed = self.drain_once()
            except Exception as exc:
                if self._stop.is_set():  # the store closed under a pass: it resumes next start
                    log.info("journal pass ended by the stop: %s", exc)
                    return
                log.exception("journal pass failed")
                self.last_error = str(exc)
                progressed = False
            # Nothing may end this thread but stop(): it is the only one draining the journal.
            try:
                if not progressed and self.pending() and not self._stop.is_set():
                    self._stop.wait(self._retry_delay)
                    self._retry_delay = min(self._retry_delay * 2, self._settings.mover_retry_max_s)
                if time.monotonic() - last_flush >= self._settings.access_flush_interval_s:
                    last_flush = time.monotonic()
                    self.flush_access()
                self._hot_room.evict_if_needed()
            except Exception as exc:  # e.g. HotTierFull while flushing access counts
                if self._stop.is_set():
                    log.info("mover housekeeping ended by the stop: %s", exc)
                    return
                log.exception("mover housekeeping failed")
                self.last_error = str(exc)

    def pending(self) -> int:
        """Journal entries not yet done."""
        with self._env.read() as txn:
            return self._catalog.journal_length(txn)

    def progress(self) -> int:
        """A count of the journal entries tried so far (done or failed) and the dataset
        settings changed: what may give a put waiting for quota room its room (see
        :meth:`wait_for_progress`)."""
        with self._progressed:
            return self._progress

    def wait_for_progress(self, seen: int, timeout: float) -> bool:
        """Wait until an entry has been tried or a dataset's settings changed since
        :meth:`progress` returned ``seen``, or the mover stops (True), or ``timeout``
        seconds pass (False)."""
        with self._progressed:
            return self._progressed.wait_for(
                lambda: self._progress != seen or self._stop.is_set(), timeout
            )

    def progressed(self) -> None:
        """A journal entry was tried, or a dataset's settings changed (its quota raised,
        the dataset deleted): puts waiting for quota room look again."""
        with self._progressed:
            self._progress += 1
            self._progressed.notify_all()

    def uploads_would_free(self, dataset: str) -> bool:
        """Whether the journal holds an upload that, once done, lets eviction take a hot
        shard of ``dataset`` (its current generation, not pinned). False when waiting
        for it is in vain: the mover is not running, or its last try failed (the
        archive is down or refusing)."""
        journal = self._journal_thread
        running = journal is not None and journal.is_alive()
        if not running or self._stop.is_set() or self.archive_failure() is not None:
            return False
        now = time.time()
        with self._env.read() as txn:
            for _, op in self._catalog.journal_entries(txn, limit=_UPLOADS_SCANNED):
                if op.op != "upload" or op.dataset != dataset:
                    continue
                record = self._catalog.readable_shard(txn, dataset, op.name)
                if record is None or record.generation != op.generation:
                    continue  # superseded or unreadable: its upload frees nothing
                if record.hot and not record.pin_holds(now):
                    return True
        return False

    def drain_once(self) -> bool:
        """Work the journal in order until it is empty or an entry fails.

        Returns True when every entry was done. Raises nothing: a failing entry is
        kept (and retried later with back-off).
        """
        while not self._stop.is_set():
            with self._env.read() as txn:
                entries = self._catalog.journal_entries(txn, limit=64)
            if not entries:
                return True
            for seq, _ in entries:
                if not self.run_entry(seq):
                    return False
        return False

    def archive_failure(self) -> str | None:
        """Why the archive is failing, or None: the last journal entry's error (or the
        hold), else an entry in progress that has handed the archive no data for
        ``STALL_REPORT_S`` per part it sends at once (``mover_threads``). A frozen
        archive (a process stopped, a link dropping packets) answers nothing, and its
        requests' time-outs and retries take minutes to end (read_timeout_s x
        max_attempts): stats and /metrics say so meanwhile. May name a shard: for
        callers with a role on every dataset only."""
        if self.last_error is not None:
            return self.last_error
        idle = self._stalled_for()
        if idle is None:
            return None
        return (
            f"the archive has taken no data of the current journal entry for {idle:.0f} s "
            "(no answer yet; the mover is still trying)"
        )

    def _stalled_for(self) -> float | None:
        """Seconds the journal entry in progress has handed the archive no data, once
        that is ``STALL_REPORT_S`` per part it sends at once; None before, or with no
        entry in progress."""
        since = self._archive_progress
        if since is None:
            return None
        idle = time.monotonic() - since
        # The next frame is asked for as a part completes, and the parts in flight share
        # the link: at mover_threads parts, completions come that many times apart.
        return idle if idle >= STALL_REPORT_S * self._settings.mover_threads else None

    def hold_archive(self, reason: str | None) -> None:
        """While ``reason`` is set, no journal entry runs, the mover's or a write-through
        caller's: each stays on the journal and fails with ``reason`` as ``last_error``.
        For a node whose master keys are not yet checked against the archive: nothing
        may be written there, sealed under keys it was not written with. ``None`` lets
        them run again (and wakes the mover)."""
        previous, self._archive_hold = self._archive_hold, reason
        # Shown at once (stats, /metrics), not only once an entry waits on it.
        if reason is not None:
            self.last_error = reason
        elif previous is not None and self.last_error == previous:
            self.last_error = None
        if reason is None:
            self.wake()

    @property
    def archive_hold(self) -> str | None:
        """The reason :meth:`hold_archive` set, or None: node-wide, naming no shard."""
        return self._archive_hold

    def run_entry(self, seq: int, *, caller_waits: bool = False) -> bool:
        """Do journal entry ``seq`` now (used by write-through puts too).

        Returns True when the entry is done (or was already done by someone else),
        False when the archive failed (or is held: :meth:`hold_archive`) and the entry
        stays for a retry. ``caller_waits`` (a write-through put or delete): also False,
        with the entry left to the mover, when another holds the journal for over
        :data:`JOURNAL_TURN_GRACE_S` while its entry has handed the archive no data for
        ``STALL_REPORT_S`` (a frozen archive). An earlier failure (``last_error``) is
        not enough: the archive may be back, and the entry in progress going well.
        """
        try:
            with self._journal_turn(caller_waits) as turn:
                return turn and self._run_entry(seq)
        finally:
            self.progressed()

    @contextlib.contextmanager
    def _journal_turn(self, caller_waits: bool) -> Iterator[bool]:
        """Hold the journal lock (True), or, for a waiting caller, give up (False) as
        :meth:`run_entry` says."""
        if not caller_waits:
            self._journal_lock.acquire()
        else:
            waiting_since = time.monotonic()
            while not self._journal_lock.acquire(timeout=0.5):
                waited = time.monotonic() - waiting_since
                if waited >= JOURNAL_TURN_GRACE_S and self._stalled_for() is not None:
                    yield False
                    return
        try:
            yield True
        finally:
            self._journal_lock.release()

    def run_entry_in_order(self, seq: int, dataset: str, shard: str) -> bool:
        """Do the earlier journal entries on ``dataset``'s settings object, its deletes
        and those on ``dataset/shard``, in order, then entry ``seq`` (a write-through
        put's own upload). Its dataset's settings object and its shard's older operations thus
        reach the archive first: a rebuild never finds a shard without its dataset,
        nor a newer state without what came before it. Other shards' entries are left
        to the mover. False when one of them failed (it stays for a retry, and so do
        the rest).
        """
        with self._env.read() as txn:
            earlier = self._catalog.journal_seqs_of(txn, dataset, shard, seq)
        return all(self.run_entry(entry, caller_waits=True) for entry in [*earlier, seq])

    def archive_holds_since(self, dataset: str, shard: str, generation: int) -> bool:
        """Whether the archive holds ``generation`` of ``dataset/shard`` or a newer one
        (or the shard is gone), for a write-through put whose own upload may have been
        skipped because a newer put overtook it: then the newer generation's entries
        are run, in order, until it is archived. False when the archive failed, or the
        shard kept changing for ``_CATCH_UP_ATTEMPTS`` tries."""
        for _ in range(_CATCH_UP_ATTEMPTS):
            with self._env.read() as txn:
                current = self._catalog.get_shard(txn, dataset, shard)
                if not _newer_waits(current, generation):
                    return True
                newest = self._catalog.counter(txn, "journal_seq")
                pending = self._catalog.journal_seqs_of(txn, dataset, shard, newest + 1)
            if not all(self.run_entry(entry, caller_waits=True) for entry in pending):
                return False
        return False

    def _run_entry(self, seq: int) -> bool:
        """Entry ``seq``, done with the journal lock held: see :meth:`run_entry`."""
        hold = self._archive_hold
        if hold is not None:
            self.last_error = hold
            return False
        with self._env.read() as txn:
            op = self._catalog.journal_entry(txn, seq)
        if op is None:
            return True
        try:
            uploaded = self._apply_watched(op)
        except KeyUnwrapError as exc:
            # Most often the wrong master key: the frames are likely intact, and
            # dropping the entry would leave the shard unarchived for good. Keep it
            # (the journal waits, with last_error saying why) until the right key
            # is configured; a shard whose key record is damaged must be deleted.
            self.last_error = (
                f"{op.op} {op.dataset}/{op.name}@{op.generation}: {exc}; kept until "
                "the master key that wrapped it is configured"
            )
            log.error("archive operation cannot proceed: %s", self.last_error)
            return False
        except IntegrityError as exc:
            with self._env.write() as txn:
                unreadable = False
                try:
                    current = self._catalog.get_shard(txn, op.dataset, op.name)
                    superseded = current is None or current.generation != op.generation
                except IntegrityError:  # the shard's record itself is damaged
                    superseded, unreadable = False, True
                self._catalog.remove_journal(txn, seq)
            if superseded:
                # Overwritten or deleted while it was being uploaded: its frames went
                # with it, and the later entries of the journal clean up the archive.
                return True
            if unreadable:
                # The catalog reports the record (Catalog.damaged_records) until the
                # shard is deleted: not reported twice, nor after the delete.
                log.error("not archiving %s/%s: %s", op.dataset, op.name, exc)
                return True
            # The only copy is damaged: retrying cannot help, and holding the entry
            # would stall every later upload. Reads of it raise DataLoss.
            log.error("not archiving %s/%s: %s", op.dataset, op.name, exc)
            self.data_loss.append(f"{op.dataset}/{op.name}@{op.generation}: {exc}")
            return True
        except TierstoreError as exc:
            self.last_error = f"{op.op} {op.dataset}/{op.name}@{op.generation}: {exc}"
            log.warning("archive operation failed, will retry: %s", self.last_error)
            return False
        with self._env.write() as txn:
            if uploaded is not None:
                record = self._catalog.get_shard(txn, op.dataset, op.name)
                if record is not None and record.generation == uploaded.generation:
                    self._catalog.put_shard(txn, record.with_state(archived=True))
            self._catalog.remove_journal(txn, seq)
        self._retry_delay = self._settings.mover_retry_initial_s
        self.last_error = None
        return True

    def _apply_watched(self, op: JournalOp) -> ShardRecord | None:
        """:meth:`_apply`, its progress watched by :meth:`archive_failure`."""
        self._archive_progress = time.monotonic()
        try:
            return self._apply(op)
        finally:
            self._archive_progress = None

    def _apply(self, op: JournalOp) -> ShardRecord | None:
        """Carry ``op`` out in the archive; returns the generation it put there, if any
        (its record is then marked archived)."""
        uploaded = None
        if op.op == "upload":
            with self._env.read() as txn:
                record = self._catalog.get_shard(txn, op.dataset, op.name)
            if record is None or record.generation != op.generation or record.archived:
                # Superseded or deleted (a later delete entry cleans the archive), or
                # uploaded already, ahead of its turn (below).
                return None
            uploaded = self._upload(record)
        elif op.op == "manifest":
            with self._env.read() as txn:
                record = self._catalog.get_shard(txn, op.dataset, op.name)
            if record is not None and record.generation == op.generation and record.archived:
                self._put_manifest(record)
        elif op.op in ("delete", "supersede"):
            if op.op == "supersede":
                uploaded = self._archive_newer_first(op)
            self._archive.delete(archive_manifest_key(op.dataset, op.generation))
            self._archive.delete(archive_frames_key(op.dataset, op.generation))
        elif op.op == "purge":
            self._purge(op)
        elif op.op == "dataset":
            with self._env.read() as txn:
                settings = self._catalog.get_dataset(txn, op.dataset)
            if settings is None:
                self._archive.delete(archive_dataset_key(op.dataset))
            else:
                key = archive_dataset_key(op.dataset)
                self._archive.put(key, self._seal(key, encode_dataset(settings)))
        else:
            raise TierstoreError(f"unknown journal operation {op.op!r}")
        return uploaded

    def _purge(self, op: JournalOp) -> None:
        """For a ``purge`` entry: delete every archived generation older than
        ``op.generation`` whose manifest names the shard of catalog key
        ``op.dataset \\0 bytes.fromhex(op.name)``. Lists and reads the dataset's
        manifests under the journal's lock (a repair after a damaged record, not the
        data path: it holds up later entries, write-through puts' own included, for as
        long). A manifest that is not believed (no valid seal under a master key, not
        decoding, or not at its own generation's key) is left alone."""
        key = op.dataset.encode() + b"\x00" + bytes.fromhex(op.name)
        prefix = f"{op.dataset}/"
        for object_key in archive_keys(self._archive, prefix):
            generation = _manifest_generation(object_key, prefix)
            if generation is None or generation >= op.generation:
                continue
            raw = self._archive.get(object_key)
            if raw is None:
                continue  # deleted since the listing
            try:
                self._check_object(object_key, raw)
                record = ShardRecord.decode(raw)
            except (IntegrityError, UnknownKeyId):
                continue
            if record.generation != generation or catalog_key(op.dataset, record.name) != key:
                continue
            # The manifest first: frames without one are no generation (as for a delete).
            self._archive.delete(object_key)
            self._archive.delete(archive_frames_key(op.dataset, generation))

    def _archive_newer_first(self, op: JournalOp) -> ShardRecord | None:
        """For a ``supersede`` entry: an overwritten archived generation goes only once a
        newer one of its shard is in the archive. When the next put was itself
        overwritten before its upload (which is then skipped), the shard's current
        generation is uploaded here, ahead of its turn; returns it (None if nothing
        had to be). So the archive always holds a generation of a shard that exists,
        once one was archived. Raises IntegrityError when the current generation's hot
        copy is damaged, and Unavailable (the entry is retried) when it kept being
        overwritten during its upload."""
        for _ in range(_CATCH_UP_ATTEMPTS):
            with self._env.read() as txn:
                current = self._catalog.get_shard(txn, op.dataset, op.name)
            if not _newer_waits(current, op.generation):
                return None
            try:
                return self._upload(current)
            except IntegrityError:
                with self._env.read() as txn:
                    now = self._catalog.get_shard(txn, op.dataset, op.name)
                if now is not None and now.generation == current.generation:
                    raise  # its hot copy is damaged (Mover.data_loss hears it at its upload)
                # Overwritten during its upload (its frames went): archive the newer one.
        raise Unavailable(
            f"{op.dataset}/{op.name} kept being overwritten while a newer generation was "
            "uploaded; retried later"
        )

    def _upload(self, record: ShardRecord) -> ShardRecord:
        """Put ``record``'s frames and then its manifest into the archive."""
        self._archive.put(
            archive_frames_key(record.dataset, record.generation), self._stored_frames(record)
        )
        self._put_manifest(record)  # after the frames: a manifest means they are whole
        return record

    def _put_manifest(self, record: ShardRecord) -> None:
        key = archive_manifest_key(record.dataset, record.generation)
        self._archive.put(key, self._seal(key, record.encode(manifest=True)))

    def _stored_frames(self, record: ShardRecord) -> Iterator[bytes]:
        # One short read transaction per frame, ended before the frame is handed on:
        # an upload never pins LMDB pages while the archive is slow. A generation's
        # frames never change, so reading them in separate transactions is safe.
        for index in range(len(record.frame_sizes)):
            with self._env.read() as txn:
                view = self._frames.view_in(txn, frame_key(record.generation, index))
                frame = None if view is None else bytes(view)
            if frame is None:
                raise IntegrityError(
                    f"hot frame {index} of {record.dataset}/{record.name} is missing"
                )
            # A frame damaged on local disk must not become the archive's copy too.
            self._verify(record, index, memoryview(frame))
            # The archive asks for the next frame only as it takes the ones before.
            self._archive_progress = time.monotonic()
            yield frame

    # Access statistics.

    def flush_access(self) -> None:
        """Merge pending access statistics into the catalog in one transaction."""
        with self._access.flush_lock:
            pending = self._access.drain()
            if not pending:
                return
            half_life = self._access.half_life_s
            with self._env.write() as txn:
                for (dataset, name, generation), reads in pending.items():
                    record = self._catalog.readable_shard(txn, dataset, name)
                    # Statistics of a deleted, overwritten or unreadable generation die
                    # with it.
                    if record is not None and record.generation == generation:
                        self._catalog.add_access(txn, dataset, name, reads, half_life)

    # Promotion.

    def promote(self, record: ShardRecord, stored: list[memoryview] | None) -> bool:
        """Queue ``record`` for promotion; ``stored`` = all its stored frames, if at hand.

        ``stored`` frames must already be verified (the cold read that fetched them
        did); frames fetched here are verified before they enter the hot tier. With
        ``stored`` it is a cache fill, done by the lowered fill thread; without, the
        fetch is done at the callers' priority (see :mod:`tierstore.engine.background`).
        Best effort: a full queue or a duplicate request is dropped (the next read
        asks again). Returns whether it is queued or in flight (False: dropped for a
        full queue, or the mover is stopping).
        """
        if self._stop.is_set():
            return False
        # Marked before it is queued: a promotion thread may finish it at once.
        if not self._mark_promotion(record, fill=stored is not None):
            return True  # queued or running already
        jobs = self._promotions if stored is None else self._fills
        try:
            jobs.put_nowait((record, stored))
        except queue.Full:
            self._forget_promotion((record.dataset, record.generation))
            return False
        return True

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

    def retry_failed_pins(self) -> int:
        """Queue again the promotion of each pinned shard whose promotion failed for
        want of the archive or of room, once its back-off is over (1 s, doubling per failure to
        :data:`PIN_RETRY_MAX_S`), while it is pinned, cold and of the generation that
        failed; returns how many were queued. The prefetch loop calls this each pass."""
        now = time.monotonic()
        with self._promoting_lock:
            due = [(key, pin) for key, pin in self._failed_pins.items() if pin.due <= now]
        if not due:
            return 0
        with self._env.read() as txn:
            records = [self._catalog.readable_shard(txn, *key) for key, _ in due]
        queued = 0
        wall = time.time()
        for (key, pin), record in zip(due, records, strict=True):
            current = (
                record is not None
                and record.pin_holds(wall)
                and not record.hot
                and record.generation == pin.generation
            )
            taken = current and record is not None and self.promote(record, None)
            queued += taken
            with self._promoting_lock:
                if self._failed_pins.get(key) is not pin:
                    continue  # failed again meanwhile: its own back-off stands
                if not current:
                    del self._failed_pins[key]
                elif taken:
                    # Not due again until its back-off is over; one that turns hot is
                    # dropped when next due.
                    pin.due = now + pin.backoff()
                else:
                    pin.due = now  # the queue is full: the next pass tries again
        return queued

    def retry_pins_soon(self, dataset: str) -> None:
        """Make the pins of ``dataset`` skipped for want of room due at once: room has
        come (its quota was raised or removed). The next prefetch pass tries them; pins
        that failed for want of the archive keep their back-off."""
        now = time.monotonic()
        with self._promoting_lock:
            for (pinned_dataset, _), pin in self._failed_pins.items():
                if pinned_dataset == dataset and pin.for_room:
                    pin.due = now

    def promote_pinned(self, record: ShardRecord) -> None:
        """Queue the promotion of ``record``, just pinned; if the queue is full, a later
        prefetch pass queues it (:meth:`retry_failed_pins`): a pin promises a hot
        shard, where a read's promotion is best effort."""
        if self.promote(record, None) or self._stop.is_set():
            return
        with self._promoting_lock:
            self._failed_pins[(record.dataset, record.name)] = _FailedPin(
                record.generation, 0, time.monotonic()
            )

    def _remember_failed_pin(self, record: ShardRecord, *, for_room: bool = False) -> None:
        """Note that the promotion of pinned ``record`` failed for want of the archive
        (or, ``for_room``, was skipped for want of room): tried again after a back-off
        that grows with each failure."""
        key = (record.dataset, record.name)
        with self._promoting_lock:
            prior = self._failed_pins.get(key)
            failures = 1
            if prior is not None and prior.generation == record.generation:
                failures = prior.failures + 1
            pin = _FailedPin(record.generation, failures, 0.0, for_room)
            pin.due = time.monotonic() + pin.backoff()
            self._failed_pins[key] = pin

    def _run_promotions(self, jobs: queue.Queue[_Promotion | None]) -> None:
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
        priority, not the mover's. If the shard is already queued or being promoted,
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
                self._remember_failed_pin(record, for_room=True)
        except Exception as exc:
            if isinstance(exc, ArchiveUnavailable) and record.pin_holds(time.time()):
                # A pin promises a hot shard: it is tried again once the archive may be
                # back (retry_failed_pins), not left cold until someone pins it again.
                # (A damaged archive copy is not: trying again would only fail again.)
                self._remember_failed_pin(record)
            if raise_unavailable and isinstance(exc, ArchiveUnavailable):
                raise
            if isinstance(exc, ArchiveUnavailable):  # said in stats too: no traceback
                log.warning("promotion of %s/%s failed: %s", record.dataset, record.name, exc)
            else:
                log.exception("promotion of %s/%s failed", record.dataset, record.name)
        finally:
            self._forget_promotion((record.dataset, record.generation))
            if promoted:
                self.after_promotion()

    def promote_now(
        self,
        record: ShardRecord,
        stored: list[memoryview] | None,
        fetch_pool: Executor | None = None,
    ) -> bool:
        """Copy a generation's stored frames into the hot tier (fetching them if needed,
        on ``fetch_pool``, by default the mover's). Returns whether it turned hot.

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
        if self._spooler.spools(record):
            return self._promote_spooled(record, quota, total, pool, stored)
        if stored is None:
            stored = self._unless_superseded(record, lambda: fetch_all(self._archive, record, pool))
            if stored is None:
                return False
            for index, frame in enumerate(stored):
                self._verify(record, index, frame)
        return self._commit_promotion(record, quota, total, stored)

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
        quota: int,
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
                staged: Staged | None = self._spooler.stage_held(record, stored)
            else:
                fetcher = ArchivedFrames(self._archive, record)
                staged = self._unless_superseded(
                    record, lambda: self._spooler.stage(record, fetcher, pool)
                )
            if staged in (None, Staged.SUPERSEDED, Staged.STOPPED):
                return False
            if staged is Staged.NO_ROOM:
                return self._skipped()
            # Its room below the high watermark is made now, as for any promotion:
            # staged frames are not hot bytes, so none was reserved meanwhile.
            promoted = self._commit_promotion(record, quota, total, None)
            return promoted
        finally:
            if not promoted:
                self._spooler.drop(record.generation)

    def _commit_promotion(
        self, record: ShardRecord, quota: int, total: int, stored: list[memoryview] | None
    ) -> bool:
        """Make room for ``record``'s generation and turn it hot, writing its verified
        ``stored`` frames (None: they are staged already). Returns whether it turned
        hot: False when superseded meanwhile, or skipped (counted) for want of room."""
        # Promotions make their room and commit one at a time: two at once would both
        # count the same free room, and one would be skipped after evicting for it.
        with self._room_lock:
            if not (
                self._hot_room.make_quota_room_for_promotion(record.dataset, quota, total)
                and self._hot_room.make_room_for_promotion(total)
            ):
                return self._skipped()
            with self._policies.undone_on_failure(), self._env.write() as txn:
                current = self._catalog.get_shard(txn, record.dataset, record.name)
                if current is None or current.generation != record.generation or current.hot:
                    return False
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
