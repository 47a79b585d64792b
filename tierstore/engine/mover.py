"""The mover: drains the upload journal to the archive, runs eviction, and starts and
stops the promoter (:mod:`tierstore.engine.promotion`).

One background thread works the journal in sequence order: ``upload`` copies a
generation's stored frames to ``<dataset>/<generation>.frames`` and then writes
its manifest (the manifest is the commit marker), and only then removes the
journal entry and marks the record archived — so a crash at any point leaves the
entry in place and the upload is simply redone on restart. While the archive
fails, the thread backs off exponentially and keeps every entry: nothing
acknowledged is dropped.

Between passes the journal thread merges pending access statistics into the catalog
and runs eviction (:mod:`tierstore.engine.eviction`) whenever the hot tier passes its
high watermark, down to the low one, and trims datasets over their quotas.

The journal thread runs ``background_niceness`` below the threads serving callers
(:mod:`tierstore.engine.background`): on busy cores, reads and puts come first.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import TypeGuard, TypeVar

from tierstore.config import EngineSettings
from tierstore.engine.access import AccessRecorder
from tierstore.engine.background import lower_this_thread
from tierstore.engine.catalog import Catalog
from tierstore.engine.eviction import HotRoom
from tierstore.engine.outdated import back_to_the_older
from tierstore.engine.promotion import FrameVerifier, Promoter
from tierstore.engine.rebuild import archive_keys
from tierstore.engine.records import (
    JournalOp,
    ShardRecord,
    archive_dataset_key,
    archive_frames_key,
    archive_manifest_key,
    catalog_key,
    frame_digest_of,
    frame_key,
)
from tierstore.engine.sealing import stored_size
from tierstore.engine.stallwatch import StallWatch
from tierstore.errors import (
    IntegrityError,
    KeyUnwrapError,
    NewerFormat,
    TierstoreError,
    Unavailable,
    UnknownKeyId,
)
from tierstore.tiers.base import SizedStream, Tier
from tierstore.tiers.lmdb import LmdbEnvironment, LmdbTier

__all__ = ["Mover"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: a dataset's journal entries looked through for an upload that would free room in
#: its quota (a put waiting for that room).
_UPLOADS_SCANNED = 10_000
#: the most consecutive shard deletes done together (:meth:`Mover.run_entries`): their
#: archive objects go in a few requests (S3's DeleteObjects takes 1,000 keys), and their
#: entries in one commit. A forced delete of a 50,000-shard dataset journals 50,000
#: of them; one at a time, each with two requests and a commit, they held every later
#: upload back for minutes.
DELETES_PER_BATCH = 1000
#: how often a write-through put overtaken by newer ones runs their entries before it
#: gives up waiting for one of them to reach the archive.
_CATCH_UP_ATTEMPTS = 4
#: how long a write-through caller waits, for the journal while another holds it or
#: for its own entry's attempt, before it gives up, if the entry in progress has
#: meanwhile stalled (stallwatch): an attempt on a frozen archive may take minutes
#: (its time-outs and retries), and the caller's put or delete is committed locally
#: either way.
JOURNAL_TURN_GRACE_S = 10.0


#: how often a write-through caller looks whether to give up its wait (see above).
_CALLER_POLL_S = 0.5


def _batches(entries: list[tuple[int, JournalOp]]) -> Iterator[list[int]]:
    """The sequence numbers of ``entries``, in order: each run of consecutive shard
    deletes as batches of at most :data:`DELETES_PER_BATCH`, every other entry alone."""
    deletes: list[int] = []
    for seq, op in entries:
        if op.op == "delete":
            deletes.append(seq)
            if len(deletes) < DELETES_PER_BATCH:
                continue
        if deletes:
            yield deletes
            deletes = []
        if op.op != "delete":
            yield [seq]
    if deletes:
        yield deletes


class _CallerAttempt:
    """A write-through caller's attempt at a journal entry (``attempt()``, which says
    whether it did it), on a thread of its own that holds the journal lock from the
    caller's turn until the attempt ends, then calls ``ended()`` (which releases it).
    The caller may give up waiting for it (:meth:`abandon`) on a frozen archive, whose
    requests end only with their time-outs and retries."""

    def __init__(self, what: str, attempt: Callable[[], bool], ended: Callable[[], None]) -> None:
        self._what = what
        self._attempt = attempt
        self._ended = ended
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False
        self._result = False
        self._error: BaseException | None = None

    def run(self) -> None:
        """The attempt, on its thread."""
        result, error = False, None
        try:
            result = self._attempt()
        except BaseException as exc:  # the caller's to hear, if it still waits
            error = exc
        finally:
            # Its outcome first: a caller looking in the moment before would give up on
            # an attempt already done. Then the journal, for the next entry.
            with self._lock:
                self._result, self._error, abandoned = result, error, self._abandoned
                self.done.set()
            self._ended()
        if abandoned and error is not None:
            # The caller was told NotArchivedYet; the entry stays for the mover.
            log.warning("%s, left to the mover by its caller, failed: %r", self._what, error)

    def abandon(self) -> bool:
        """The caller stops waiting (True), unless the attempt has ended (False: its
        :meth:`outcome` is known)."""
        with self._lock:
            if self.done.is_set():
                return False
            self._abandoned = True
            return True

    def outcome(self) -> bool:
        """Whether the ended attempt did the entry; raises what it raised."""
        with self._lock:
            error, result = self._error, self._result
        if error is not None:
            raise error
        return result


class _NewerDamaged(IntegrityError):
    """A ``supersede`` entry's newer generation failed its check before its upload:
    it can never be archived, so the overwritten one need not wait for it."""


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
    """The upload journal's thread, which also runs eviction, and the lifecycle of the
    promoter's threads, for one store."""

    def __init__(
        self,
        settings: EngineSettings,
        environment: LmdbEnvironment,
        catalog: Catalog,
        frames: LmdbTier,
        archive: Tier,
        access: AccessRecorder,
        hot_room: HotRoom,
        promoter: Promoter,
        verify: FrameVerifier,
        seal: Callable[[str, bytes], bytes],
        check_object: Callable[[str, bytes | memoryview], None],
        under_current: Callable[[ShardRecord, bytes | memoryview], ShardRecord | None],
    ) -> None:
        self._settings = settings
        self._env = environment
        self._catalog = catalog
        self._frames = frames
        self._archive = archive
        self._access = access
        self._hot_room = hot_room
        self._promoter = promoter
        self._verify = verify
        #: seals a metadata object for its archive key (see archiveseal).
        self._seal = seal
        #: checks a metadata object read at an archive key (raises IntegrityError,
        #: UnknownKeyId; see archiveseal).
        self._check_object = check_object
        #: an older generation made a shard's again, under the current master key (see
        #: outdated.back_to_the_older).
        self._under_current = under_current
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._journal_lock = threading.Lock()  # one journal entry is worked at a time
        #: journal entries tried so far (done or failed) and dataset settings changed,
        #: notified on each: puts waiting for room in their quota wait on it.
        self._progress = 0
        self._progressed = threading.Condition()
        self._journal_thread: threading.Thread | None = None
        self._stall_thread: threading.Thread | None = None
        self._retry_delay = settings.mover_retry_initial_s
        self.last_error: str | None = None
        #: whether the journal entry in progress hands the archive data: see
        #: archive_failure.
        self.stall_watch = StallWatch(settings.mover_threads)
        #: why journal entries may not run now (None: they may): see hold_archive.
        self._archive_hold: str | None = None
        #: Uploads given up because the local copy failed verification (newest last).
        self.data_loss: collections.deque[str] = collections.deque(maxlen=100)
        #: called after a hot, unpinned shard was archived: eviction may take it now,
        #: so pins waiting for room may find it (the store wakes them).
        self.after_archive: Callable[[], None] = lambda: None
        #: called after each pass of the journal thread (the store makes its disk
        #: reserve again there, once the disk has room).
        self.after_pass: Callable[[], object] = lambda: None
        #: called after each archive operation: an upload copies frames and part
        #: buffers into the heap, and the server owes the OS their freed memory once
        #: idle (tierstore.engine.allocator.IdleTrim.owe).
        self.after_heap_work: Callable[[], object] = lambda: None
        #: the start's abort of the uploads an earlier run left open in the archive,
        #: while it has not gone through: see abort_left_behind_later.
        self._left_behind: Callable[[], object] | None = None
        self._left_behind_retry_at = 0.0
        self._left_behind_delay = settings.mover_retry_initial_s

    def start(self) -> None:
        """Start the journal thread (it resumes any journal left by a crash) and the
        promotion threads."""
        self._journal_thread = threading.Thread(
            target=self._run_journal, name="tierstore-journal", daemon=True
        )
        self._journal_thread.start()
        self._stall_thread = threading.Thread(
            target=self.stall_watch.log_stalls,
            args=(self._stop,),
            name="tierstore-stall-watch",
            daemon=True,
        )
        self._stall_thread.start()
        self._promoter.start()

    @property
    def running(self) -> bool:
        """Whether any of its threads or the promoter's is still alive (after
        :meth:`stop`: one that did not end in time, inside an archive request, say), or
        a journal entry is still being worked (a write-through caller's attempt, left to
        end in the background on a frozen archive, holds the journal until it ends)."""
        journal = self._journal_thread
        return (
            (journal is not None and journal.is_alive())
            or self._promoter.running
            or self._journal_lock.locked()
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the journal and promotion threads, waiting at most ``timeout`` seconds
        for all of them together (a thread inside an archive request ends when it does);
        pending journal entries stay for the next start."""
        deadline = time.monotonic() + timeout  # one wait for all: not 10 s per thread
        self._stop.set()
        self._wake.set()
        with self._progressed:
            self._progressed.notify_all()  # puts waiting for uploads stop waiting
        self._promoter.stop(deadline)
        for thread in (self._journal_thread, self._stall_thread):
            if thread is not None:
                thread.join(max(deadline - time.monotonic(), 0.0))
        try:
            self.flush_access()  # a clean stop keeps every access counted so far
        except TierstoreError as exc:  # e.g. a full hot tier: counts are only statistics
            log.warning("access counts not flushed at stop: %s", exc)

    def wake(self) -> None:
        """Tell the journal thread that there is new work."""
        self._wake.set()

    def abort_left_behind_later(self, abort: Callable[[], object]) -> None:
        """Have the journal thread call ``abort()`` (which aborts the multipart uploads
        an earlier run left open in the archive, raising ArchiveUnavailable when the
        archive fails) once the journal is empty or a batch of its entries has gone
        through (a journal under a steady write load is never empty), until a call goes
        through: for a store whose start could not reach the archive. It runs with the
        journal held, so no upload of this store is in flight meanwhile (each runs as a
        journal entry, a write-through put's too)."""
        self._left_behind = abort
        self.wake()

    def abort_left_behind_now(self) -> None:
        """Call the pending :meth:`abort_left_behind_later` now: for a start that has
        found the archive its own (``tierstore serve`` checks its claim first), before
        the journal thread runs. A failure leaves it to that thread."""
        self._abort_left_behind()

    def _abort_left_behind(self) -> None:
        """Call the pending :meth:`abort_left_behind_later`, if any, its back-off has
        passed and the archive is not held (:meth:`hold_archive`); a failure is tried
        again later (the mover's retry delays)."""
        abort = self._left_behind
        if abort is None or time.monotonic() < self._left_behind_retry_at:
            return
        if self._archive_hold is not None:
            # Held: not checked against the archive yet, or another node holds it now
            # (tierstore.cli.claimwatch), whose uploads in flight those may be.
            return
        # The journal held: none of this store's uploads is in flight, only an earlier
        # run's (or one of its own whose abort failed) can be open.
        with self._journal_lock:
            if self._stop.is_set():  # the store closed: its claim may be released now
                return
            self.stall_watch.begin()  # a write-through caller need not wait on a frozen one
            try:
                abort()
            except TierstoreError as exc:
                if self._stop.is_set():
                    return
                # The start said so: an archive refusing it for good (no right to list
                # uploads) would fill the log at every retry.
                log.debug("could not abort the archive's incomplete uploads yet: %s", exc)
                self._left_behind_retry_at = time.monotonic() + self._left_behind_delay
                self._left_behind_delay = min(
                    self._left_behind_delay * 2, self._settings.mover_retry_max_s
                )
                return
            finally:
                self.stall_watch.end()
        self._left_behind = None

    def after_entries(self, then: Callable[[], object]) -> None:
        """Call ``then()`` once no journal entry is under way: at once when none is,
        else on a thread of its own when the one under way ends. For a store whose hot
        tier is closed (no entry starts then: each reads the journal first), so that
        nothing of it writes to the archive after ``then()``: an entry past the stop's
        wait, in a request to a frozen archive, still writes there once it is answered
        (a generation's frames, then its manifest)."""
        if self._journal_lock.acquire(blocking=False):
            try:
                then()
            finally:
                self._journal_lock.release()
            return

        def when_done() -> None:
            with self._journal_lock:
                then()

        threading.Thread(target=when_done, name="tierstore-after-journal", daemon=True).start()

    # The journal.

    def _run_journal(self) -> None:
        lower_this_thread(self._settings.background_niceness)
        last_flush = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(timeout=self._settings.access_flush_interval_s)
            self._wake.clear()
            try:
                progressed = self.drain_once()
                if progressed and not self._stop.is_set():
                    self._abort_left_behind()  # the journal empty: nothing of ours in flight
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
                self.after_pass()
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
            entries = self._catalog.dataset_journal(txn, dataset)
            for _, op in itertools.islice(entries, _UPLOADS_SCANNED):
                if op.op != "upload":
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
                entries = self._catalog.journal_entries(txn, limit=DELETES_PER_BATCH)
            if not entries:
                return True
            if not self.run_entries(entries):
                return False
            # The batch went through (the archive answers): between entries, none of
            # ours in flight.
            self._abort_left_behind()
        return False

    def archive_failure(self) -> str | None:
        """Why the archive is failing, or None: the last journal entry's error (or the
        hold), else an entry in progress that has stalled
        (:mod:`~tierstore.engine.stallwatch`: a frozen archive's requests take minutes
        to fail): stats and /metrics say so meanwhile. May name a shard: for
        callers with a role on every dataset only."""
        if self.last_error is not None:
            return self.last_error
        return self.stall_watch.describe()

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
        with the entry left to the mover, once the caller has waited
        :data:`JOURNAL_TURN_GRACE_S` while the entry that holds the journal, another's
        or its own, has handed the archive no data for ``stallwatch.STALL_REPORT_S`` (a
        frozen archive), and at once once the store closes: see
        :meth:`_run_for_caller`. An earlier failure
        (``last_error``) is not enough: the archive may be back, and the entry in
        progress going well.
        """
        return self._run_locked(f"journal entry {seq}", lambda: self._run_entry(seq), caller_waits)

    def run_entries(
        self, entries: list[tuple[int, JournalOp]], *, caller_waits: bool = False
    ) -> bool:
        """Do ``entries`` (sequence numbers with their operations, in journal order) as
        :meth:`run_entry` does each, until one fails (False), but a run of consecutive
        shard deletes together, up to :data:`DELETES_PER_BATCH` at a time: their archive
        objects in :meth:`Tier.delete_many` requests, their entries in one commit. A
        batch is done whole or stays whole for a retry. False, the rest left, once the
        mover stops (the store closing gives it 10 s)."""
        for batch in _batches(entries):
            if self._stop.is_set():
                return False
            if len(batch) == 1:
                done = self.run_entry(batch[0], caller_waits=caller_waits)
            else:
                what = f"journal entries {batch[0]}..{batch[-1]} (deletes)"
                done = self._run_locked(what, partial(self._run_deletes, batch), caller_waits)
            if not done:
                return False
        return True

    def _run_locked(self, what: str, work: Callable[[], bool], caller_waits: bool) -> bool:
        """``work()``, which does journal entries (``what``), with the journal lock held,
        then wake those waiting for progress: for a caller as
        :meth:`_run_for_caller` says."""
        if caller_waits:
            return self._run_for_caller(what, work)
        try:
            with self._journal_lock:
                return work()
        finally:
            self.progressed()

    def _run_for_caller(self, what: str, work: Callable[[], bool]) -> bool:
        """:meth:`run_entry` for a waiting caller. The entry runs on a thread of its own
        (:class:`_CallerAttempt`), which holds the journal lock from the caller's turn
        until the attempt ends, done or failed, and releases it then: a caller that gave
        up on a frozen archive leaves the attempt to end in the background (with the
        archive's time-outs and retries, minutes), meanwhile the mover and later callers
        wait for the journal as they would behind the mover's own attempt, and the
        entry, still journaled, is never run twice at once."""
        waiting_since = time.monotonic()

        def give_up() -> bool:
            if self._stop.is_set():
                # The store is closing (a node stopping): its entry stays journaled for
                # the next start, and the caller's thread, which the process joins as
                # it exits, must not wait on a frozen archive for minutes.
                return True
            waited = time.monotonic() - waiting_since
            return waited >= JOURNAL_TURN_GRACE_S and self.stall_watch.stalled_for() is not None

        while not self._journal_lock.acquire(timeout=_CALLER_POLL_S):
            if give_up():
                self.progressed()
                return False

        def ended() -> None:
            self._journal_lock.release()
            self.progressed()

        attempt = _CallerAttempt(what, work, ended)
        try:
            threading.Thread(
                target=attempt.run, name="tierstore-write-through", daemon=True
            ).start()
        except BaseException:
            ended()
            raise
        while not attempt.done.wait(_CALLER_POLL_S):
            if give_up() and attempt.abandon():
                return False
        return attempt.outcome()

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
            earlier = self._catalog.journal_entries_of(txn, dataset, shard, seq)
            own = self._catalog.journal_entry(txn, seq)
        entries = earlier if own is None else [*earlier, (seq, own)]  # None: done already
        return self.run_entries(entries, caller_waits=True)

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
                pending = self._catalog.journal_entries_of(txn, dataset, shard, newest + 1)
            if not self.run_entries(pending, caller_waits=True):
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
        evictable = False
        with self._env.write() as txn:
            if uploaded is not None:
                record = self._catalog.get_shard(txn, op.dataset, op.name)
                if record is not None and record.generation == uploaded.generation:
                    archived = record.with_state(
                        archived=True, frame_digests=uploaded.frame_digests
                    )
                    self._catalog.put_shard(txn, archived)
                    evictable = archived.evictable(time.time())
                if op.op != "upload":
                    # Uploaded ahead of its turn: its own entry, still pending, holds
                    # bytes the archive has (a delete or overwrite of the archived
                    # record forgoes nothing, and the count outlived the shard).
                    self._catalog.forgo_upload(txn, uploaded.generation)
            self._catalog.remove_journal(txn, seq)
        self._retry_delay = self._settings.mover_retry_initial_s
        self.last_error = None
        if evictable:
            self.after_archive()
        return True

    def _run_deletes(self, seqs: list[int]) -> bool:
        """Entries ``seqs``, all shard deletes, done together with the journal lock held:
        their manifests in one :meth:`Tier.delete_many`, then their frames objects (the
        order of a single delete's), then one commit that removes the entries. False,
        with every entry kept for a retry, when the archive failed or is held."""
        hold = self._archive_hold
        if hold is not None:
            self.last_error = hold
            return False
        with self._env.read() as txn:
            entries = [(seq, self._catalog.journal_entry(txn, seq)) for seq in seqs]
        ops = [(seq, op) for seq, op in entries if op is not None]  # None: done already
        if not ops:
            return True
        manifests = [archive_manifest_key(op.dataset, op.generation) for _, op in ops]
        frames = [archive_frames_key(op.dataset, op.generation) for _, op in ops]
        try:
            self._watched(lambda: self._archive.delete_many(manifests))
            self._watched(lambda: self._archive.delete_many(frames))
        except TierstoreError as exc:
            first = ops[0][1]
            self.last_error = (
                f"delete of {len(ops)} shards, from {first.dataset}/{first.name}@"
                f"{first.generation} on: {exc}"
            )
            log.warning("archive operation failed, will retry: %s", self.last_error)
            return False
        with self._env.write() as txn:
            for seq, _ in ops:
                self._catalog.remove_journal(txn, seq)
        self._retry_delay = self._settings.mover_retry_initial_s
        self.last_error = None
        return True

    def _apply_watched(self, op: JournalOp) -> ShardRecord | None:
        """:meth:`_apply`, its progress watched by :meth:`archive_failure`."""
        return self._watched(lambda: self._apply(op))

    def _watched(self, request: Callable[[], _T]) -> _T:
        """``request()``, archive work whose progress :meth:`archive_failure` watches;
        the heap is trimmed after it, if owed."""
        self.stall_watch.begin()
        try:
            return request()
        finally:
            self.stall_watch.end()
            try:
                self.after_heap_work()
            except Exception:  # never mask the operation's outcome
                log.exception("owing the heap trim after an archive operation failed")

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
        elif op.op in ("delete", "supersede", "outdated"):
            if op.op == "outdated" and back_to_the_older(
                self._env,
                self._catalog,
                self._archive,
                self._check_object,
                self._under_current,
                op,
                self.stall_watch.progressed,
                self.data_loss.append,
            ):
                return None  # the older generation is the shard's again: it stays
            if op.op in ("supersede", "outdated"):
                try:
                    uploaded = self._archive_newer_first(op)
                except _NewerDamaged as exc:
                    # The newer generation can never be archived: keeping the old one
                    # for it would keep it for good, past a delete of the shard (a
                    # rebuild from the archive brought the deleted shard back). Reads
                    # of the shard raise the data loss, not the old bytes.
                    log.error(
                        "deleting overwritten %s/%s@%d from the archive: %s",
                        op.dataset,
                        op.name,
                        op.generation,
                        exc,
                    )
            self._archive.delete(archive_manifest_key(op.dataset, op.generation))
            self._archive.delete(archive_frames_key(op.dataset, op.generation))
        elif op.op == "purge":
            self._purge(op)
        elif op.op == "dataset":
            with self._env.read() as txn:
                settings = self._catalog.dataset_object(txn, op.dataset)
            if settings is None:
                self._archive.delete(archive_dataset_key(op.dataset))
            else:
                key = archive_dataset_key(op.dataset)
                self._archive.put(key, self._seal(key, settings))
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
            self.stall_watch.progressed()  # a purge reading many manifests is no stall
            if raw is None:
                continue  # deleted since the listing
            try:
                self._check_object(object_key, raw)
                record = ShardRecord.decode(raw)
            except (IntegrityError, UnknownKeyId, NewerFormat):
                continue
            if record.generation != generation or catalog_key(op.dataset, record.name) != key:
                continue
            # The frames first: the manifest is how a retry of this entry (after a
            # failed delete or a crash between the two) finds them again. A manifest
            # left without its frames is believed by no rebuild.
            self._archive.delete(archive_frames_key(op.dataset, generation))
            self._archive.delete(object_key)

    def _archive_newer_first(self, op: JournalOp) -> ShardRecord | None:
        """For a ``supersede`` entry: an overwritten archived generation goes only once a
        newer one of its shard is in the archive. When the next put was itself
        overwritten before its upload (which is then skipped), the shard's current
        generation is uploaded here, ahead of its turn; returns it (None if nothing
        had to be). So the archive always holds a generation of a shard that exists,
        once one was archived. Raises :class:`_NewerDamaged` when the current
        generation's hot copy is damaged, KeyUnwrapError when its data key does not
        unwrap, and Unavailable (the entry is retried) when it kept being overwritten
        during its upload."""
        for _ in range(_CATCH_UP_ATTEMPTS):
            with self._env.read() as txn:
                current = self._catalog.get_shard(txn, op.dataset, op.name)
            if not _newer_waits(current, op.generation):
                return None
            try:
                return self._upload(current)
            except KeyUnwrapError:
                # Most often the wrong master key, the frames intact: the entry is kept
                # (see _run_entry), and the archived generation with it. Taken for a
                # damaged one, it was deleted, and the archive held no copy at all.
                raise
            except IntegrityError as exc:
                with self._env.read() as txn:
                    now = self._catalog.get_shard(txn, op.dataset, op.name)
                if now is not None and now.generation == current.generation:
                    # Its hot copy is damaged (Mover.data_loss hears it at its upload).
                    raise _NewerDamaged(
                        f"its newer generation {current.generation} is damaged: {exc}"
                    ) from exc
                # Overwritten during its upload (its frames went): archive the newer one.
        raise Unavailable(
            f"{op.dataset}/{op.name} kept being overwritten while a newer generation was "
            "uploaded; retried later"
        )

    def _upload(self, record: ShardRecord) -> ShardRecord:
        """Put ``record``'s frames and then its manifest into the archive; returns the
        record with the frames' digests (:attr:`ShardRecord.frame_digests`), which the
        manifest holds too."""
        digests: list[bytes] = []
        size = stored_size(record)
        # Its length up front: the S3 tier sizes every part by it, one size for all.
        frames = SizedStream(self._stored_frames(record, digests), size)
        self.stall_watch.uploading(size)  # a larger part takes longer to send
        try:
            self._archive.put(archive_frames_key(record.dataset, record.generation), frames)
        finally:
            self.stall_watch.uploading(0)
        record = record.with_state(frame_digests=b"".join(digests))
        self._put_manifest(record)  # after the frames: a manifest means they are whole
        return record

    def _put_manifest(self, record: ShardRecord) -> None:
        key = archive_manifest_key(record.dataset, record.generation)
        self._archive.put(key, self._seal(key, record.encode(manifest=True)))

    def _stored_frames(self, record: ShardRecord, digests: list[bytes]) -> Iterator[bytes]:
        """The verified stored frames of ``record``, read from the hot tier; the digest
        of each is added to ``digests`` as it is handed on."""
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
            digests.append(frame_digest_of(frame))
            # The archive asks for the next frame only as it takes the ones before.
            self.stall_watch.progressed()
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
