"""The write path: framed payloads become a committed shard generation, and back out.

seal (checksum or AES-GCM, see :mod:`tierstore.engine.sealing`; the next frame on a
helper thread while this one is stored, :mod:`tierstore.engine.sealahead`) → one LMDB
transaction holding frames + catalog record + upload-journal entry, fsynced on
commit → acknowledge (``write-back``), or upload first and then acknowledge
(``write-through``). A put of more than ``put_chunk_bytes`` of payload writes its
frames first, staged a chunk per transaction (as large promotions do,
:mod:`tierstore.engine.spool`), and commits the record and journal entry last.
A new generation replaces the previous one in the record's transaction; deleting a
generation drops its hot frames and catalog record and journals the deletion for the
archive. The placement policies hear of both inside the same transaction (an
overwrite is a removal, then an insertion).

Thread safety: a :class:`ShardWriter` is safe to share between threads.
Generations are handed out under a lock; each record commits in one write
transaction, and never after a newer generation of its shard.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tierstore.config import EngineSettings
from tierstore.engine.catalog import Catalog
from tierstore.engine.eviction import HotRoom
from tierstore.engine.mover import Mover
from tierstore.engine.policies import PolicyDriver
from tierstore.engine.quotawait import QuotaWait, WaitingPlaces
from tierstore.engine.records import JournalOp, ShardRecord, frame_key
from tierstore.engine.schemas import schema_check
from tierstore.engine.sealahead import sealed_ahead
from tierstore.engine.sealing import ShardSealers, sealing_overhead, stored_size
from tierstore.engine.spool import chunks, drop_staged, stage_in
from tierstore.errors import (
    ArchiveUnavailable,
    BacklogFull,
    FailedPrecondition,
    HotTierFull,
    IntegrityError,
    InvalidArgument,
    NotArchivedYet,
    QuotaExceeded,
)
from tierstore.frames import FrameSealer
from tierstore.framing import FramedValue, FramesOnDemand
from tierstore.tiers.lmdb import DiskFull, LmdbEnvironment, LmdbTier, MapFullOfDeadReaders
from tierstore.types import DatasetSettings, Durability, ShardInfo

__all__ = ["ShardWriter"]

#: A put that found its room taken by concurrent puts goes in past the high watermark
#: after this many rounds of eviction, rather than wait on them forever.
_ROOM_ROUNDS = 3


class _RoomTaken(Exception):
    """Inside the write transaction: the put would pass the high watermark, and
    eviction may still make room (puts committed since this one made room)."""


def _stored_sizes(framed: FramedValue, encrypted: bool) -> tuple[int, ...]:
    """The hot-tier size of each of ``framed``'s frames once sealed as ``encrypted`` says."""
    overhead = sealing_overhead(encrypted)
    return tuple(size + overhead for size in framed.sizes)


def _check_sealed(index: int, frame: bytes | bytearray, sizes: tuple[int, ...]) -> None:
    """Raise RuntimeError unless sealed ``frame`` is the size the quota and hot-bytes
    counters assumed for it."""
    if len(frame) != sizes[index]:
        raise RuntimeError(f"frame {index} sealed to {len(frame)} bytes, not {sizes[index]}")


class _Overtaken(Exception):
    """Inside the write transaction: a staged put's shard has a newer generation."""


@dataclass(frozen=True, slots=True)
class _StagedPut:
    """A generation whose frames are staged: its record, its data key (encrypted), and
    the first generation of its dataset as the put found it (each dataset made has
    its own: one made again since is not the one the put was for)."""

    record: ShardRecord
    data_key: bytes | None = field(repr=False)  # never in a traceback's locals
    dataset_first: int

    @property
    def generation(self) -> int:
        return self.record.generation


class ShardWriter:
    """Commits and deletes shard generations for a store."""

    def __init__(
        self,
        settings: EngineSettings,
        environment: LmdbEnvironment,
        catalog: Catalog,
        frames: LmdbTier,
        sealers: ShardSealers,
        mover: Mover,
        hot_room: HotRoom,
        policies: PolicyDriver,
    ) -> None:
        self._settings = settings
        self._policies = policies
        self._env = environment
        self._catalog = catalog
        self._frames = frames
        self._sealers = sealers
        self._mover = mover
        self._hot_room = hot_room
        self._generation_lock = threading.Lock()
        #: generations of staged puts not yet committed or dropped (under the lock)
        self._staging: set[int] = set()
        #: gives the disk reserve back (whether there was one), so that dropping a failed
        #: put's staged frames commits on a full disk (set by the store).
        self.give_room: Callable[[], bool] = lambda: False
        #: places for puts waiting for quota room (see :mod:`tierstore.engine.quotawait`).
        self._quota_waiters = WaitingPlaces(settings.max_quota_waiters)
        #: seals a put's next frame while the writer stores the current one.
        self._seal_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tierstore-seal")
        with self._env.read() as txn:
            stored_next = self._catalog.counter(txn, "next_generation")
        self._next_generation = max(stored_next, time.time_ns() // 1000)

    def close(self) -> None:
        """Stop the sealing helper (puts still running seal inline)."""
        self._seal_pool.shutdown(wait=True, cancel_futures=True)

    def quota_waiting(self) -> int:
        """Puts waiting for room in their dataset's quota now."""
        return self._quota_waiters.taken

    def _new_generation(self, staging: bool = False) -> int:
        """The next generation; ``staging``: one a staged put commits transactions
        later (:meth:`first_uncommitted_generation` counts it until
        :meth:`_done_staging`)."""
        with self._generation_lock:
            generation = self._next_generation
            self._next_generation += 1
            if staging:
                self._staging.add(generation)
            return generation

    def _done_staging(self, generation: int) -> None:
        with self._generation_lock:
            self._staging.discard(generation)

    def first_uncommitted_generation(self) -> int:
        """The oldest generation that may still be committed: a staged put's taken
        before now, else the next one to be handed out. Read in a write transaction,
        every generation older than it is committed, or never will be."""
        with self._generation_lock:
            return min(self._staging, default=self._next_generation)

    def take_generation(self) -> int:
        """A generation no put will take (a dataset's first: see Store.create_dataset)."""
        return self._new_generation()

    def next_generation(self) -> int:
        """The generation the next put will take (every one taken is older)."""
        with self._generation_lock:
            return self._next_generation

    def skip_generations_through(self, newest: int) -> None:
        """Never hand out ``newest`` or an older generation (after a rebuild)."""
        with self._generation_lock:
            self._next_generation = max(self._next_generation, newest + 1)

    def commit(
        self,
        dataset: str,
        shard: str,
        framed: FramedValue,
        quota_wait_s: float | None = None,
        caller_gone: Callable[[], bool] | None = None,
        admit: Callable[[DatasetSettings], None] | None = None,
    ) -> ShardInfo:
        """Store ``framed`` as the new generation of ``dataset/shard`` (names validated).

        Returns once the dataset's durability is met. A dataset at its hot-tier quota
        makes room by evicting its own archived shards; when only uploads still on the
        journal could make that room, the put waits for them, up to the setting
        ``quota_wait_s`` or the argument, whichever is shorter, while
        ``caller_gone()`` is false and a waiting place is free
        (:mod:`tierstore.engine.quotawait`). ``admit(settings)`` is called as the put
        starts and again inside the write transaction, with the dataset's settings as
        each sees them, before anything is written: whatever it raises ends the put
        with nothing stored (the service checks there that the caller may still write,
        and that the dataset was not made again with encryption while its frames were
        spooled in plaintext).
        Raises DatasetNotFound, SchemaMismatch (a dataset with an Arrow schema the
        frames do not have: :mod:`tierstore.engine.schemas`), EncryptionUnavailable,
        BacklogFull, QuotaExceeded,
        HotTierFull (at once, nothing evicted, for a put larger than the hot tier takes
        below its high watermark), ArchiveUnavailable (write-through only: the shard is then
        committed locally and the mover keeps trying), FailedPrecondition (a staged
        put whose dataset was deleted and made again meanwhile).

        A put of more payload than ``put_chunk_bytes`` is *staged*: its frames are
        written a chunk per transaction (:meth:`_stage`), invisible until the record
        commits, so it holds neither its whole shard in memory as LMDB's uncommitted
        copy nor the writer from other puts meanwhile. Its generation is taken before
        its first chunk: a put of the same shard that took a newer one and committed
        first overtakes it, and it never becomes current (see :meth:`_overtaken`).
        """
        with self._env.read() as txn:
            settings = self._catalog.require_dataset(txn, dataset)
            dataset_first = self._catalog.dataset_first_generation(txn, dataset)
        # Before anything is staged, and again in the commit's transaction, against the
        # settings read there (the dataset may be made again meanwhile). The caller's
        # own check first: a caller who may no longer write is told so, not the schema.
        admit = _also(admit, schema_check(dataset, shard, framed.kind, lambda: framed.frames[0]))
        admit(settings)
        if settings.encrypted:
            self._sealers.require_keyring(dataset)
        stored_total = sum(_stored_sizes(framed, settings.encrypted))
        self._check_fits_hot_tier(dataset, shard, stored_total)
        wait_s = self._settings.quota_wait_s
        if quota_wait_s is not None:
            if isinstance(quota_wait_s, bool) or not isinstance(quota_wait_s, int | float):
                raise InvalidArgument(f"quota_wait_s must be seconds, not {quota_wait_s!r:.40}")
            wait_s = max(0.0, min(wait_s, quota_wait_s))
        wait = QuotaWait(self._quota_waiters, dataset, wait_s, caller_gone)
        staged: _StagedPut | None = None
        committed = overtaken = False
        try:
            # Payload bytes, from the stored total: no second pass over every frame.
            overhead = len(framed.frames) * sealing_overhead(settings.encrypted)
            if stored_total - overhead > self._settings.put_chunk_bytes:
                # What is sure to fail at the commit fails before anything is staged.
                self._quota_now(dataset, shard, stored_total)
                with self._env.read() as txn:
                    previous = self._catalog.get_shard(txn, dataset, shard)
                    self._check_backlog(txn, dataset, settings, stored_total, previous)
                self._hot_room.make_room(stored_total)  # best effort, before staging
                staged = self._stage(dataset, shard, framed, settings.encrypted, dataset_first)
            elif isinstance(framed.frames, FramesOnDemand) and framed.frames.costly:
                # Made now (a chunk at most), not while the transaction holds the writer
                # (an encrypted spool's frames are read from disk and decrypted).
                framed = dataclasses.replace(framed, frames=tuple(framed.frames))
            try:
                settings, record, seq = self._commit_with_room(
                    dataset, shard, framed, stored_total, wait, admit, staged
                )
                committed = True
            except _Overtaken:
                overtaken = True
        finally:
            wait.release()
            if staged is not None:
                if not committed:
                    self._drop_staged(staged.generation)
                self._done_staging(staged.generation)
        if overtaken:
            assert staged is not None
            return self._overtaken(staged.record, settings)
        if settings.durability is Durability.WRITE_THROUGH:
            if not self._mover.run_entry_in_order(seq, dataset, shard):
                raise NotArchivedYet(
                    f"{dataset}/{shard} is committed locally but the archive did not take it "
                    f"({self._archive_trouble()}); the mover keeps retrying"
                )
            if not self._mover.archive_holds_since(dataset, shard, record.generation):
                raise self._newer_not_archived(dataset, shard, committed=True)
            with self._env.read() as txn:
                current = self._catalog.get_shard(txn, dataset, shard)
            if (
                current is not None
                and current.generation == record.generation
                and not current.archived
            ):
                # The entry is done but the shard not archived: the mover gave up on it
                # because its hot copy failed verification (see Mover.data_loss).
                raise IntegrityError(
                    f"{dataset}/{shard} is committed locally, but its hot copy failed "
                    "verification before it reached the archive, so it was not archived"
                )
            record = record.with_state(archived=True)
        else:
            self._mover.wake()
        return record.to_info(record.created_at)

    def _newer_not_archived(
        self, dataset: str, shard: str, *, committed: bool
    ) -> ArchiveUnavailable:
        """The error of a write-through put overtaken by newer puts of its shard, none
        of them archived yet: NotArchivedYet for one ``committed`` locally."""
        failing = self._mover.archive_failure() is not None
        error, state = (
            (NotArchivedYet, "is committed locally, but")
            if committed
            else (ArchiveUnavailable, "was not stored:")
        )
        return error(
            f"{dataset}/{shard} {state} newer puts of it overtook this one and none of them "
            f"has reached the archive yet "
            f"({self._archive_trouble() if failing else 'they kept coming'}); the mover "
            "keeps trying"
        )

    def _overtaken(self, record: ShardRecord, settings: DatasetSettings) -> ShardInfo:
        """The answer to a staged put of ``record`` overtaken by a put of its shard that
        took a newer generation and committed first. Its frames are dropped and it never
        became current, as if it had committed just before the newer one (the two ran
        at once): acknowledged, in a write-through dataset once the archive holds the
        newer one. Raises ArchiveUnavailable (write-through) when it does not."""
        if settings.durability is Durability.WRITE_THROUGH and not (
            self._mover.archive_holds_since(record.dataset, record.name, record.generation)
        ):
            raise self._newer_not_archived(record.dataset, record.name, committed=False)
        # Held by neither tier: the newer generation replaced it before anyone saw it.
        return record.with_state(hot=False, archived=False).to_info(record.created_at)

    def _commit_with_room(
        self,
        dataset: str,
        shard: str,
        framed: FramedValue,
        stored_total: int,
        wait: QuotaWait,
        admit: Callable[[DatasetSettings], None] | None,
        staged: _StagedPut | None,
    ) -> tuple[DatasetSettings, ShardRecord, int]:
        """:meth:`_commit_locally`, after making room for ``stored_total`` bytes in the
        dataset's quota and below the high watermark, again while concurrent puts take
        it first (waiting as ``wait`` allows). Raises as :meth:`commit`."""
        refused_once = False
        dead_readers_freed = False
        room_rounds = 0
        map_rounds = 1
        while True:
            self._make_quota_room(dataset, shard, stored_total, wait)
            wait.release()  # done waiting, for now: the commit holds no place
            room_rounds += 1
            evicted_all = self._hot_room.make_room(stored_total)
            tries = self._mover.progress()
            try:
                return self._commit_locally(
                    dataset,
                    shard,
                    framed,
                    evicted_all or room_rounds >= _ROOM_ROUNDS,
                    admit,
                    staged,
                )
            except _RoomTaken:
                continue  # concurrent puts took the room: evict again
            except MapFullOfDeadReaders as full:
                # Dead processes' snapshots held the pages; their slots are free
                # now. Once more, and only once: full again is full.
                if dead_readers_freed:
                    raise HotTierFull(str(full)) from full
                dead_readers_freed = True
            except DiskFull:
                raise  # the disk, not the map: see tierstore.engine.diskreserve
            except HotTierFull:
                # The map has no room below the watermark: pages the hot-bytes count
                # leaves out (staged frames, a small frame's page and a half) filled it.
                # Evict archived shards for the put, as a staged chunk does (none for a
                # put the map could never hold).
                if (
                    map_rounds == _ROOM_ROUNDS
                    or stored_total > self._env.usable_bytes()
                    or not self._evict_for(stored_total)
                ):
                    raise
                map_rounds += 1
            except QuotaExceeded as refused:
                # Another put took the room meanwhile. Evict again at once (a shard
                # may have been archived since), then only while waiting can help.
                if refused_once:
                    if not self._quota_wait_helps(dataset, wait):
                        raise QuotaExceeded(
                            f"{refused}; it may wait no longer: {wait.refusal()}; retry "
                            "when the mover has archived more, or raise the quota"
                        ) from None
                    self._wait_for_progress(tries, wait)
                refused_once = True

    def _stage(
        self, dataset: str, shard: str, framed: FramedValue, encrypted: bool, dataset_first: int
    ) -> _StagedPut:
        """Write the sealed frames of a new generation of ``dataset/shard`` (whose
        dataset had first generation ``dataset_first`` when the put read its settings)
        into the hot
        tier, ``put_chunk_bytes`` of payload per transaction, as *staged* frames (see
        :mod:`tierstore.engine.spool`): no record names them yet, and a marker accounts
        for them until :meth:`_commit_locally` commits the record (or they are dropped).
        Returns that record (not in the catalog) and its data key. Raises HotTierFull,
        with nothing left staged, when the map has no room for a chunk. The caller calls
        :meth:`_done_staging` once the generation is committed or dropped.
        """
        record, sealer, data_key = self._new_generation_of(
            dataset, shard, framed, encrypted, staging=True
        )
        sizes = _stored_sizes(framed, encrypted)
        payloads = framed.sizes
        try:
            with closing(sealed_ahead(sealer.seal, framed.frames, self._seal_pool)) as sealed:
                for run in chunks(payloads, self._settings.put_chunk_bytes):
                    # Sealed before the transaction: the writer is held to copy them in.
                    frames = [next(sealed) for _ in run]
                    self._with_room(
                        partial(
                            self._write_chunk, dataset, shard, record.generation, run, frames, sizes
                        ),
                        sum(len(frame) for frame in frames),
                    )
                    del frames  # one chunk in memory at a time
        except BaseException:
            self._drop_staged(record.generation)
            self._done_staging(record.generation)
            raise
        return _StagedPut(record, data_key, dataset_first)

    def _drop_staged(self, generation: int) -> None:
        """Drop the frames staged for ``generation`` (see :func:`drop_staged`)."""
        drop_staged(self._env, self._catalog, self._frames, generation, self.give_room)

    def _with_room(self, write: Callable[[], None], nbytes: int) -> None:
        """``write()`` staged frames of ``nbytes`` (one chunk, in one transaction).

        Staged frames (this put's, others', spooled promotions') are in no hot-bytes
        count, so the watermark made no room for them: a chunk the map has no room for
        evicts a chunk's worth of archived shards and tries again, up to three rounds.
        Raises HotTierFull, with nothing of the chunk written, when eviction frees
        nothing or the last round finds no room either."""
        dead_readers_freed = False
        room_round = 1
        while True:
            try:
                write()
                return
            except MapFullOfDeadReaders as full:
                # Dead processes' snapshots held the pages; their slots are free now.
                # Once more as it is, and only once: full again is full.
                if dead_readers_freed:
                    raise HotTierFull(str(full)) from full
                dead_readers_freed = True
            except HotTierFull:
                if room_round == _ROOM_ROUNDS or not self._evict_for(nbytes):
                    raise
                room_round += 1

    def _evict_for(self, nbytes: int) -> bool:
        """Evict archived shards for ``nbytes`` of frames, their pages reusable by the
        next transaction; whether anything was evicted."""
        if not self._hot_room.evict(nbytes):
            return False
        # LMDB reuses the pages a transaction freed only from the second transaction
        # after it (a reader may still start on the snapshot before it): one commit
        # more, rewriting a counter as it is, so that the chunk's next try can use them.
        with self._env.write() as txn:
            self._catalog.set_counter(txn, "hot_bytes", self._catalog.counter(txn, "hot_bytes"))
        return True

    def _write_chunk(
        self,
        dataset: str,
        shard: str,
        generation: int,
        run: range,
        frames: list[bytes | bytearray],
        sizes: tuple[int, ...],
    ) -> None:
        """Write sealed ``frames`` (indices ``run``, of stored ``sizes``) of
        ``dataset/shard``'s staged ``generation`` in one transaction, marking the
        generation staged with the first. Raises HotTierFull, writing nothing, when
        the map has no room for them."""
        with self._env.write() as txn:
            needed, free = self._env.room_for(txn, (len(f) for f in frames))
            if needed > free:
                raise HotTierFull(self._full(dataset, shard, needed, free))
            for index, frame in zip(run, frames, strict=True):
                _check_sealed(index, frame, sizes)
            chunk = zip(run, frames, strict=True)
            stage_in(txn, self._catalog, self._frames, generation, len(sizes), chunk)

    def _check_backlog(
        self,
        txn: Any,
        dataset: str,
        settings: DatasetSettings,
        stored_total: int,
        previous: ShardRecord | None,
    ) -> None:
        """Raise BacklogFull if a put of ``stored_total`` bytes into ``dataset``,
        replacing ``previous`` (its upload, if pending, never runs then), would take the
        bytes waiting for the archive past the node's cap, or the dataset's own past
        its backlog quota (one put always goes in when none wait, in the node or the
        dataset: a shard larger than the cap is not refused for good)."""
        replaced = 0
        if previous is not None and not previous.archived:
            replaced = self._catalog.pending_upload_bytes(txn, previous.generation)
        backlog = self._catalog.counter(txn, "backlog_bytes") - replaced
        cap = self._settings.backlog_cap_bytes
        if backlog + stored_total > cap and backlog > 0:
            raise BacklogFull(
                f"this put's {stored_total:,} bytes would take the bytes waiting for the "
                f"archive, {backlog:,}, past the cap ({cap:,}); " + self._backlog_advice()
            )
        quota = settings.backlog_quota_bytes
        if not quota:
            return
        own = self._catalog.dataset_backlog(txn, dataset)[0] - replaced
        if own + stored_total > quota and own > 0:
            raise BacklogFull(
                f"this put's {stored_total:,} bytes would take {dataset}'s bytes waiting "
                f"for the archive, {own:,}, past its backlog quota ({quota:,}); "
                + self._backlog_advice()
            )

    def _backlog_advice(self) -> str:
        """What a put refused for the backlog should do next, and why the backlog stands."""
        if self._mover.archive_failure():
            return (
                f"the mover is failing ({self._archive_trouble()}): retry once the archive "
                "is back and the mover has caught up"
            )
        return "retry when the mover has caught up"

    def _full(self, dataset: str, shard: str, needed: int, free: int) -> str:
        """HotTierFull's message for a put that needs ``needed`` pages, ``free`` free."""
        return (
            f"hot tier at {self._env.path} is full: {dataset}/{shard} needs about "
            f"{needed} pages and {max(free, 0)} are free beyond the "
            f"{self._env.reserve_pages()} kept for deletes and evictions; delete or "
            "evict shards, retry once the mover has archived shards that eviction may "
            "then take, or give the hot tier more room (hot_capacity_bytes, serve's "
            "--hot-capacity; the map is 1.5 times it and 256 MiB, or map_size_bytes)"
        )

    def _check_fits_hot_tier(self, dataset: str, shard: str, stored_total: int) -> None:
        """Raise HotTierFull, before anything is staged or evicted, when a put of
        ``stored_total`` bytes is more than the hot tier takes below its high watermark:
        it alone would pass the watermark, so it evicted every evictable shard to make
        room it could never have, went in past the capacity, and was the mover's to
        evict once archived."""
        limit = self._hot_room.high_watermark_bytes()
        if stored_total > limit:
            raise HotTierFull(
                f"{dataset}/{shard} stores {stored_total:,} bytes, more than the hot tier "
                f"takes ({limit:,} bytes, its high watermark): it could never be stored, "
                "and nothing was (a larger --hot-capacity would hold it)"
            )

    def _quota_now(self, dataset: str, shard: str, stored_total: int) -> int:
        """``dataset``'s hot-tier quota as it is now (0: none). Raises DatasetNotFound,
        QuotaExceeded (``stored_total`` alone is more than the whole quota)."""
        with self._env.read() as txn:
            quota = self._catalog.require_dataset(txn, dataset).hot_quota_bytes
        if stored_total > quota > 0:
            raise QuotaExceeded(
                f"{dataset}/{shard} takes {stored_total} bytes in the hot tier, more than "
                f"the dataset's whole quota of {quota} bytes"
            )
        return quota

    def _make_quota_room(self, dataset: str, shard: str, incoming: int, wait: QuotaWait) -> None:
        """Evict ``dataset``'s own archived shards until a new generation of ``shard``
        of ``incoming`` bytes fits its quota; while it does not, and uploads on the
        journal would make evictable shards, wait for the mover as ``wait`` allows.
        The quota is read again each round: the admin may change it, or delete the
        dataset (DatasetNotFound), while the put waits. Raises QuotaExceeded for a
        shard larger than the whole quota. Best effort: the write transaction checks
        the quota again."""
        while True:
            tries = self._mover.progress()
            quota = self._quota_now(dataset, shard, incoming)
            if quota <= 0:
                return
            leaving = self._leaving(dataset, shard)
            self._hot_room.make_room_in_quota(dataset, quota, incoming - leaving)
            # Read again: eviction may have taken the generation being replaced.
            still_leaving = self._leaving(dataset, shard)
            if self._hot_room.fits_quota(dataset, quota, incoming, still_leaving):
                return
            if still_leaving < leaving:
                continue  # it did: evict again for the bytes it no longer frees
            if not self._quota_wait_helps(dataset, wait):
                return
            self._wait_for_progress(tries, wait)

    def _archive_trouble(self) -> str:
        """Why the archive did not take an entry, as any caller may be told: a hold's
        reason (node-wide), else where to look. Never the mover's last error itself: it
        may name another dataset's shard (``tierstore stats`` shows it to a caller with
        a role on every dataset)."""
        return self._mover.archive_hold or (
            "the archive failed: the node's log, and `tierstore stats` for an admin on '*', say why"
        )

    def _wait_for_progress(self, tries: int, wait: QuotaWait) -> None:
        """Wait, as long as ``wait`` allows, until the mover has tried a journal entry or
        a dataset's settings changed since :meth:`Mover.progress` returned ``tries`` (or
        it stops): only then can eviction find more room, or the quota have changed, so
        the room is not sought again before."""
        self._mover.wake()
        while wait.may_wait():
            if self._mover.wait_for_progress(tries, wait.next_wait_s()):
                return

    def _leaving(self, dataset: str, shard: str) -> int:
        """Hot bytes of ``shard``'s current generation: an overwrite's old generation
        leaves in the same transaction, so they count as room."""
        with self._env.read() as txn:
            previous = self._catalog.get_shard(txn, dataset, shard)
        return stored_size(previous) if previous is not None and previous.hot else 0

    def _quota_wait_helps(self, dataset: str, wait: QuotaWait) -> bool:
        """Whether the put may wait for uploads that would make room in its quota (if
        not, ``wait`` says why)."""
        if not wait.may_wait():
            return False
        if not self._mover.uploads_would_free(dataset):
            wait.refuse(
                "no upload on the journal would let eviction take one of its shards (the "
                "rest is pinned or on its way already, or the archive is failing)"
            )
            return False
        return wait.take_place()

    def _commit_locally(
        self,
        dataset: str,
        shard: str,
        framed: FramedValue,
        may_pass_watermark: bool,
        admit: Callable[[DatasetSettings], None] | None = None,
        staged: _StagedPut | None = None,
    ) -> tuple[DatasetSettings, ShardRecord, int]:
        """Seal and write a new generation's frames, catalog record and upload-journal
        entry in one write transaction, replacing the shard's previous generation;
        returns the dataset's settings, the new record and the journal entry's sequence
        number. Raises DatasetNotFound, EncryptionUnavailable, BacklogFull,
        QuotaExceeded, HotTierFull, and :class:`_RoomTaken` when the put would pass the
        high watermark and not ``may_pass_watermark``, and what ``admit`` raises;
        nothing is written then.

        The frames are sealed as the dataset says inside the transaction: it may have
        been deleted and made again, encrypted or not, since the caller looked.

        The generation is taken inside the transaction, so generations are committed
        in the order they are numbered: the newest generation of a shard is always
        the current one, which a rebuild from the archive relies on.

        ``staged``: a generation whose frames :meth:`_stage` wrote; its record is
        committed instead (its frames' marker goes). Its generation was taken before
        this transaction: raises :class:`_Overtaken`, nothing written, when the shard's
        current generation is newer, and FailedPrecondition when its dataset was deleted
        and made again meanwhile (its generation is older than the new dataset's first,
        and its frames may be sealed as the old one was).
        """
        with self._policies.undone_on_failure(), self._env.write() as txn:
            settings = self._catalog.require_dataset(txn, dataset)  # deleted meanwhile?
            if admit is not None:
                # In the transaction: no delete (it takes the writer) slips in after.
                admit(settings)
            previous = self._catalog.get_shard(txn, dataset, shard)
            if staged is not None:  # first: overtaken or resealed, no room is worth waiting for
                record = self._staged_record(txn, staged, settings, previous)
            sizes = _stored_sizes(framed, settings.encrypted)
            stored_total = sum(sizes)
            self._check_backlog(txn, dataset, settings, stored_total, previous)
            leaving = stored_size(previous) if previous is not None and previous.hot else 0
            quota = settings.hot_quota_bytes
            if not self._hot_room.fits_quota(dataset, quota, stored_total, leaving):
                raise QuotaExceeded(
                    f"{dataset} is at its hot-tier quota ({quota} bytes) and too little of "
                    f"it is archived and unpinned to make room for {dataset}/{shard} "
                    f"({stored_total} bytes)"
                )
            if not may_pass_watermark and self._hot_room.passes_high_watermark(
                txn, stored_total - leaving
            ):
                raise _RoomTaken
            if staged is None:
                needed, free = self._env.room_for(txn, sizes)
                if needed > free:
                    raise HotTierFull(self._full(dataset, shard, needed, free))
                record, sealer, _ = self._new_generation_of(
                    dataset, shard, framed, settings.encrypted
                )
            if previous is not None and previous.pinned:
                # Pins are set by name: a new generation stays pinned as the old one was.
                record = record.with_state(pinned=True, pinned_until=previous.pinned_until)
            generation = record.generation
            if previous is not None:
                # Its archive objects are deleted by an entry after this put's upload
                # (below): the archive always holds one generation or the other.
                self.delete_in(txn, previous, tell_policy=False, journal=False)
            if staged is None:
                # Sealed inside the transaction, so that sealing the next frame overlaps
                # storing this one; the commit (and its fsync) dominates the lock's time.
                with closing(sealed_ahead(sealer.seal, framed.frames, self._seal_pool)) as frames:
                    for index, frame in enumerate(frames):
                        _check_sealed(index, frame, sizes)
                        self._frames.put_in(txn, frame_key(generation, index), frame)
            else:
                self._catalog.unmark_staging(txn, generation)
            self._catalog.put_shard(txn, record)
            self._catalog.add_counter(txn, "hot_bytes", stored_total)
            seq = self._catalog.append_journal(
                txn, JournalOp("upload", dataset, shard, generation, stored_total)
            )
            if previous is not None:
                # An archived generation goes only once a newer one is archived (see
                # Mover._apply); one never archived can go at once.
                op = "supersede" if previous.archived else "delete"
                self._catalog.append_journal(
                    txn, JournalOp(op, dataset, shard, previous.generation)
                )
            if self._catalog.counter(txn, "next_generation") <= generation:
                self._catalog.set_counter(txn, "next_generation", generation + 1)
            # Last in the transaction: nothing but the commit can fail after it.
            if previous is not None:
                self._policies.removed((dataset, shard))
            self._policies.inserted((dataset, shard), stored_total)
        return settings, record, seq

    def _staged_record(
        self,
        txn: Any,
        staged: _StagedPut,
        settings: DatasetSettings,
        previous: ShardRecord | None,
    ) -> ShardRecord:
        """``staged``'s record, checked in the committing transaction ``txn`` against its
        dataset's ``settings`` and the shard's ``previous`` record, its data key wrapped
        again if the master key was rotated since it was made (from the key in hand: the
        old master key may be retired by now). Raises _Overtaken, FailedPrecondition."""
        record = staged.record
        where = f"{record.dataset}/{record.name}"
        other_encryption = (record.envelope is not None) != settings.encrypted
        if other_encryption or staged.dataset_first != self._catalog.dataset_first_generation(
            txn, record.dataset
        ):
            # It was for the dataset's namesake, deleted since (every dataset made takes
            # a first generation of its own): it must not land in a dataset made since
            # for someone else, nor, were its generation older than the new dataset's
            # first, be taken for the namesake's by a rebuild from the archive.
            how = f" {'with' if settings.encrypted else 'without'} encryption"
            raise FailedPrecondition(
                f"{record.dataset} was deleted and made again{how if other_encryption else ''} "
                f"while {where} was being written: nothing was stored; put it again"
            )
        if previous is not None and previous.generation > record.generation:
            raise _Overtaken()
        staged_frames = self._catalog.staged_frame_count(txn, record.generation)
        if staged_frames != len(record.frame_sizes):
            raise RuntimeError(
                f"{where}: {staged_frames} frames staged of {len(record.frame_sizes)}"
            )
        if record.envelope is None or staged.data_key is None:
            return record
        return self._sealers.rewrapped(record, staged.data_key) or record

    def _new_generation_of(
        self, dataset: str, shard: str, framed: FramedValue, encrypted: bool, staging: bool = False
    ) -> tuple[ShardRecord, FrameSealer, bytes | None]:
        """The record of a new generation of ``dataset/shard`` holding ``framed``, with a
        fresh data key if ``encrypted``, its sealer and the data key (``staging``: see
        :meth:`_new_generation`)."""
        generation = self._new_generation(staging)
        envelope, data_key = None, None
        if encrypted:
            envelope, data_key = self._sealers.new_envelope(dataset, shard, generation)
        record = ShardRecord(
            dataset=dataset,
            name=shard,
            generation=generation,
            kind=framed.kind,
            frame_sizes=framed.sizes,
            created_at=time.time(),
            envelope=envelope,
            rows=framed.rows,
        )
        return record, self._sealers.sealer(record, data_key), data_key

    def delete_in(
        self, txn: Any, record: ShardRecord, *, tell_policy: bool = True, journal: bool = True
    ) -> int | None:
        """Delete ``record``'s generation in the caller's write transaction (and tell
        the policy, unless the caller does so itself); ``journal``: append the entry
        that deletes its archive objects (unless the caller appends it later itself).
        Returns that entry's sequence number (None without ``journal``).

        Needs no data key, so shards whose key cannot be unwrapped can still go.
        """
        if record.hot:
            for index in range(len(record.frame_sizes)):
                self._frames.delete_in(txn, frame_key(record.generation, index))
            self._catalog.add_counter(txn, "hot_bytes", -stored_size(record))
        # Archived or not: one uploaded ahead of its turn may still have its entry.
        self._catalog.forgo_upload(txn, record.generation)
        self._catalog.delete_shard(txn, record.dataset, record.name)
        seq = None
        if journal:
            seq = self._catalog.append_journal(
                txn, JournalOp("delete", record.dataset, record.name, record.generation)
            )
        if tell_policy:
            self._policies.removed((record.dataset, record.name))
        return seq

    def archive_delete(self, seq: int, dataset: str, what: str, shard: str = "") -> None:
        """For a write-through dataset: carry out journal entry ``seq`` (a delete of
        ``what``, committed locally), after the earlier entries on ``dataset``'s settings
        object, its deletes and ``dataset/shard``, before the delete is acknowledged: a
        rebuild from the archive must not bring back what was deleted. Raises
        ArchiveUnavailable when the archive did not take it (the entry stays for the
        mover)."""
        if not self._mover.run_entry_in_order(seq, dataset, shard):
            raise NotArchivedYet(
                f"{what} is deleted here, but the archive has not deleted it yet "
                f"({self._archive_trouble()}); the mover keeps retrying, and until it has, "
                "a rebuild from the archive would bring it back"
            )


def _also(
    first: Callable[[DatasetSettings], None] | None, then: Callable[[DatasetSettings], None]
) -> Callable[[DatasetSettings], None]:
    """A check of a dataset's settings that runs ``first``, if any, and then ``then``."""

    def both(settings: DatasetSettings) -> None:
        if first is not None:
            first(settings)
        then(settings)

    return both
