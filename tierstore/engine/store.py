"""The storage engine's façade: datasets and shards over an LMDB hot tier and an archive tier.

:class:`Store` validates names, checks that it is open and owns the parts: writes
(validate → cut into frames → :mod:`tierstore.engine.writepath`: seal, commit,
acknowledge by durability), reads (:mod:`tierstore.engine.readpath`: hot hit or
ranged GETs from the archive), sealing and data keys
(:mod:`tierstore.engine.sealing`), the background work (the upload journal,
:mod:`tierstore.engine.mover`; promotions, :mod:`tierstore.engine.promotion`;
eviction, :mod:`tierstore.engine.eviction`), and placement: one policy per
dataset (:mod:`tierstore.engine.policies`), access plans
(:mod:`tierstore.engine.planbook`), the prefetch loop
(:mod:`tierstore.engine.prefetch`) and the access trace
(:mod:`tierstore.engine.trace`). It also answers metadata and administration
requests (stat, list, evict, key rotation through
:mod:`tierstore.engine.masterkeys`, rebuild, stats), and supports readers
that read the hot tier in place (:attr:`Store.local_reads`,
:mod:`tierstore.engine.localreads`).

Thread safety: a :class:`Store` is safe to share between threads of one process.
Fork safety: do not use a store across ``fork()``; open one per process.
"""

from __future__ import annotations

import builtins
import dataclasses
import gc
import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

import pyarrow as pa

from tierstore import arrowio, tensors
from tierstore.arrowio import schema_of_message
from tierstore.config import EngineSettings
from tierstore.crypto import MasterKeyProvider
from tierstore.engine.access import AccessRecorder
from tierstore.engine.archiveclaim import (
    CLAIM_KEY,
    ArchiveClaim,
    check_claim,
    claim_archive,
    read_claim,
)
from tierstore.engine.archivewatch import ArchiveProbe, ArchiveWatch, WatchedTier
from tierstore.engine.catalog import DB_NAMES, FRAMES_DB, Catalog
from tierstore.engine.claim import StoreClaim, hot_tier_dir
from tierstore.engine.damaged import delete_damaged_in
from tierstore.engine.diskreserve import DiskReserve, once_more_with_room
from tierstore.engine.eviction import HotRoom
from tierstore.engine.localreads import LocalReadSupport
from tierstore.engine.masterkeys import MasterKeys, SealFailure
from tierstore.engine.mover import Mover
from tierstore.engine.pages import take_page
from tierstore.engine.placement import DatasetUsage, Placement
from tierstore.engine.planbook import PlanBook, PlanInfo
from tierstore.engine.policies import PolicyDriver, hot_shards
from tierstore.engine.prefetch import Prefetcher
from tierstore.engine.promotion import Promoter
from tierstore.engine.readlog import ReadLog
from tierstore.engine.readpath import ShardReader, copy_frames_into, writable_view
from tierstore.engine.reads import ShardData
from tierstore.engine.rearchive import Rearchived, archive_again_in
from tierstore.engine.rebuild import (
    believe_any_seal,
    refuse_encrypted_without_keys,
    restore_catalog,
    scan_archive,
)
from tierstore.engine.records import JournalOp, ShardRecord, archive_dataset_key, catalog_key
from tierstore.engine.sealedpath import SealedRead, SealedReader
from tierstore.engine.sealing import (
    ShardSealers,
    UnwrapFailure,
    stored_overhead,
)
from tierstore.engine.spool import drop_abandoned
from tierstore.engine.trace import TraceRing
from tierstore.engine.writepath import ShardWriter
from tierstore.errors import (
    AlreadyExists,
    DataLoss,
    DatasetNotFound,
    EncryptionUnavailable,
    FailedPrecondition,
    HotTierFull,
    IntegrityError,
    InvalidArgument,
    QuotaExceeded,
    StoreClosed,
    WrongShardKind,
)
from tierstore.framing import frame_prepared, frame_value
from tierstore.naming import given_names, validate_dataset_name, validate_shard_name
from tierstore.plans import DEFAULT_PLAN_TTL_S, SamplerPlan
from tierstore.policy.base import Policy
from tierstore.tiers.base import Tier
from tierstore.tiers.lmdb import LmdbEnvironment, LmdbTier
from tierstore.types import (
    MAX_TTL_S,
    DatasetSettings,
    Durability,
    ShardInfo,
    ShardKind,
    SizingPoint,
    TraceEvent,
    check_policy_name,
    seconds_up_to,
)

__all__ = ["Store", "StoreStats", "hot_tier_dir"]

log = logging.getLogger(__name__)

#: The catalog note holding the hot tier's node id (its claim on an archive).
NODE_ID_NOTE = "node-id"

_Result = TypeVar("_Result")

#: the most shards a forced dataset delete drops in one commit (see
#: ``Store._drop_shards_ahead``).
SHARDS_DROPPED_PER_COMMIT = 1_000


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A snapshot of the engine's state."""

    hot_bytes: int
    hot_capacity_bytes: int
    #: where eviction starts, and where it stops (the watermarks times the capacity)
    high_watermark_bytes: int
    low_watermark_bytes: int
    #: since the store opened: shards promoted, promotions skipped for want of room
    #: (eviction could not make it below the high watermark or the quota), evictions
    promotions: int
    promotions_skipped: int
    evictions: int
    backlog_bytes: int
    journal_entries: int
    lmdb_file_bytes: int
    live_read_leases: int
    slow_read_leases: int
    #: why the archive fails: the mover's last error, else a pinned shard's promotion's,
    #: else the last archive request of any kind (a cold read's, a promotion's) that
    #: failed for want of the archive, until a later one answers (engine/archivewatch.py)
    mover_error: str | None
    #: shards the mover could not archive because their hot copy failed verification,
    #: then shards whose catalog record is unreadable (until deleted; at most 1,000).
    data_loss: tuple[str, ...] = ()
    #: puts waiting for room in their dataset's hot-tier quota (``max_quota_waiters`` at most).
    quota_waiting_puts: int = 0
    #: by dataset, the shards whose catalog record is unreadable beyond those named in
    #: ``data_loss`` (which names at most 1,000; the log names every one).
    data_loss_unnamed: dict[str, int] = dataclasses.field(default_factory=dict)
    #: seconds since the oldest pending journal entry committed (0: the journal is empty).
    oldest_journal_age_s: float = 0.0
    #: pinned shards left cold because their promotion was skipped for want of room (a
    #: quota, or the high watermark), and their stored bytes: tried again when room may
    #: have come (:meth:`PinRetries.waiting_for_room`).
    pins_waiting_for_room: int = 0
    pins_waiting_for_room_bytes: int = 0


def _check_listing(prefix: object, start_after: object, limit: object) -> None:
    """InvalidArgument for a listing's ``prefix`` or ``start_after`` that is no str
    (``start_after`` may be None), or a ``limit`` that is no whole number."""
    if not isinstance(prefix, str):
        raise InvalidArgument(f"prefix must be a str, not {prefix!r:.40}")
    if start_after is not None and not isinstance(start_after, str):
        raise InvalidArgument(f"start_after must be a shard name or None, not {start_after!r:.40}")
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidArgument(f"limit must be a whole number of shards, not {limit!r:.40}")


def _name_set(datasets: object) -> frozenset[str] | None:
    """``datasets`` (None, or an iterable of dataset names) as a set, taken once: a
    generator has nothing left for a second pass. InvalidArgument for a str (the names
    of its one-letter datasets), a non-iterable or a name that is no str."""
    if datasets is None:
        return None
    names = given_names(datasets, "datasets must be a collection of dataset names or None")
    for name in names:
        if not isinstance(name, str):  # an unhashable one was a raw TypeError
            raise InvalidArgument(
                f"datasets must be a collection of dataset names (str), not one of {name!r:.40}"
            )
    return frozenset(cast(tuple[str, ...], names))


class Store:
    """One node's storage engine. Use :meth:`close` (or ``with``) when done."""

    def __init__(
        self,
        settings: EngineSettings,
        archive: Tier,
        keyring: MasterKeyProvider | None = None,
        *,
        start_mover: bool = True,
        claim: StoreClaim | None = None,
    ) -> None:
        """Open the store in ``settings.data_dir``, claiming its hot tier (``claim``, when
        the caller claimed it first) for as long as the store is open. Raises
        FailedPrecondition when another open store holds it; a store that fails to open
        lets go of the claim."""
        self.settings = settings
        #: the last archive request that failed for want of the archive, whatever made it
        #: (a cold read, a promotion, the mover), until one answers: every request of
        #: this store goes through ``_archive``, which tells it.
        self.archive_watch = ArchiveWatch()
        archive = WatchedTier(archive, self.archive_watch)
        self._archive = archive
        self._archive_probe = ArchiveProbe(
            archive, self.archive_watch, self._probe_key, settings.archive_probe_s
        )
        #: the process that opened it: its threads, pools and accounts are that process's
        self._pid = os.getpid()
        self._claim = claim or StoreClaim(settings.data_dir)  # before the hot tier opens
        self._node = ""  # the hot tier's node id, once read (_node_id)
        self._env = LmdbEnvironment(  # opened at its first use, in _open
            hot_tier_dir(settings.data_dir), settings.effective_map_size, DB_NAMES
        )
        try:
            self._open(settings, archive, keyring)
        except BaseException:
            # A retry may open it at once (nothing of this store has started to run).
            self._env.close()
            self._claim.release()
            raise
        if start_mover:
            self.start_background()

    def _open(
        self, settings: EngineSettings, archive: Tier, keyring: MasterKeyProvider | None
    ) -> None:
        self._frames = LmdbTier(self._env, FRAMES_DB)
        self._catalog = Catalog(self._env)
        self.archive_watch.still_archived = self._still_archived
        # Before anything else is written: a newer release's hot tier is refused.
        with self._env.write() as txn:
            self._catalog.mark_format(txn)
        # Before any promotion runs: frames a crash left half-promoted are nobody's.
        drop_abandoned(self._env, self._catalog, self._frames)
        with self._env.write() as txn:
            self._catalog.count_backlog(txn)
            self._catalog.index_journal(txn)
        self._access = AccessRecorder(settings.access_half_life_s)
        self._sealers = ShardSealers(keyring, self._current_record)
        self._policies = PolicyDriver()
        self._trace = TraceRing(settings.trace_capacity)
        self._closed = False
        #: the hot tier's watermarks and quotas, and the eviction that keeps to them.
        self.hot_room = HotRoom(
            settings,
            self._env,
            self._catalog,
            self._frames,
            self._policies,
            stored_overhead,
            held=self.archive_watch.missing_objects,
        )
        #: promotions from the archive into the hot tier (threads started by the mover).
        self.promoter = Promoter(
            settings,
            self._env,
            self._catalog,
            self._frames,
            archive,
            self._policies,
            self.hot_room,
            overhead=stored_overhead,
            verify=self._sealers.verify_stored,
        )
        self.mover = Mover(
            settings,
            self._env,
            self._catalog,
            self._frames,
            archive,
            self._access,
            self.hot_room,
            self.promoter,
            verify=self._sealers.verify_stored,
            seal=self._sealers.seal_object,
            check_object=self._sealers.check_object,
            under_current=self._sealers.restored_under_current,
        )
        self._writer = ShardWriter(
            settings,
            self._env,
            self._catalog,
            self._frames,
            self._sealers,
            self.mover,
            self.hot_room,
            self._policies,
        )
        self._placement = Placement(self._env, self._catalog, self.promoter)
        reads = ReadLog(
            settings,
            self._env,
            self._catalog,
            self._access,
            self._policies,
            self._trace,
            self._placement.count_read,
        )
        self._reader = ShardReader(
            self._env,
            self._catalog,
            self._frames,
            archive,
            self._sealers,
            reads,
            self.promoter,
            max_read_leases=settings.max_read_leases,
            cold_read_parallelism=settings.cold_read_parallelism,
        )
        self._sealed = SealedReader(
            self._env,
            self._catalog,
            self._frames,
            archive,
            self._sealers,
            reads,
            self.promoter,
            self._reader.fetch_pool,
        )
        #: grant material and read recording for readers that map the hot tier themselves.
        self.local_reads = LocalReadSupport(self._env, self._catalog, self._sealers, reads)
        self._plans = PlanBook(self._env, self._catalog, self._policies, self._trace)
        #: the prefetch loop (started with the mover).
        self.prefetcher = Prefetcher(
            settings,
            self._env,
            self._catalog,
            self._policies,
            self._plans,
            self.promoter,
            self.hot_room,
        )
        self.promoter.after_promotion = self._promoted
        self.mover.after_archive = self._room_may_have_come
        #: master-key rotation and the checks on keys and on the archive's seals.
        self.master_keys = MasterKeys(
            self._env, self._catalog, archive, self._sealers, keyring, self.mover.wake
        )
        #: bytes set aside on the disk for deletes and evictions to commit when it is
        #: full (engine/diskreserve.py): made now, and again by the mover's passes.
        self.disk_reserve = DiskReserve(settings.data_dir, settings.disk_reserve_bytes)
        self.disk_reserve.ensure()
        self.mover.after_pass = self._after_mover_pass
        self._writer.give_room = self.promoter.spooler.give_room = self.disk_reserve.release
        self._open_policies()
        if self._catalog.unreadable.recount:
            # The walk of every record just made met more unreadable ones than are named
            # (tierstore.engine.unreadable): counted exactly once, before anything runs.
            with self._env.read() as txn:
                self._catalog.count_unreadable(txn)

    def _after_mover_pass(self) -> None:
        """The mover's housekeeping after each pass: the disk reserve made again, and
        the deletes of unreadable records that no read is older than let go
        (tierstore.engine.unreadable)."""
        self.disk_reserve.ensure()
        self._catalog.unreadable.prune()

    def start_background(self) -> None:
        """Start the mover and the prefetcher, and the resumption of a key rotation a
        stop cut short (:meth:`MasterKeys.resume_rotation`), for a store made with
        ``start_mover=False`` (once its caller has checked what it must before the
        journal runs: the master keys, say). Call it once. Not thread-safe."""
        self.mover.start()
        self.prefetcher.start()
        self._archive_probe.start()
        self.master_keys.resume_rotation()

    def _probe_key(self) -> str | None:
        """The archive object an idle node's probe asks for: the settings of its first
        dataset (None: it has none, and nothing to lose to an outage)."""
        with self._env.read() as txn:
            name = self._catalog.first_dataset(txn)
        return None if name is None else archive_dataset_key(name)

    def _current_record(self, record: ShardRecord) -> ShardRecord | None:
        """The catalog's record of ``record``'s shard now (``None``: none, or unreadable):
        for the sealers to unwrap a data key a rotation rewrapped since ``record`` was
        read, its old master key retired meanwhile (a read, a promotion or an upload
        that read the record before the rotation)."""
        with self._env.read() as txn:
            return self._catalog.readable_shard(txn, record.dataset, record.name)

    def _open_policies(self) -> None:
        """Give every dataset its policy, told of the dataset's hot shards (oldest first);
        and have the prefetch loop's first pass queue the promotion of every cold shard a
        pin holds: the pins a run left waiting for room or for the archive were in its
        memory alone, and stayed cold for good."""
        cold_pins: list[ShardRecord] = []
        with self._env.read() as txn:
            datasets = self._catalog.list_datasets(txn)
            hot = hot_shards(txn, self._catalog, self._access, cold_pins=cold_pins)
        for name, dataset_settings in datasets:
            self._policies.open_dataset(name, dataset_settings.policy, hot.get(name, ()))
        for record in cold_pins:
            self.promoter.pins.remember_unqueued(record)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop background work and close the hot tier. Pending uploads resume on next open.
        In a child forked from the process that opened it, only marks it closed there:
        what it would stop and close is the parent's."""
        if self._closed:
            return
        if self._pid != os.getpid():
            self._closed = True
            return
        self._closed = True
        self.master_keys.stop()  # a rotation under way: the rest on next start
        self._archive_probe.stop()
        self.prefetcher.stop()
        self.mover.stop()
        self._reader.close()
        self._writer.close()
        if self._reader.leases.live:
            gc.collect()  # leases end when their buffers are collected
        if self._reader.leases.live:
            # Zero-copy buffers still point into the map: unmapping it would turn
            # them into dangling pointers. Leave it mapped until the process exits.
            log.warning(
                "store closed with %d live read leases; LMDB map left open",
                self._reader.leases.live,
            )
            if not self.mover.running:  # the leases only read
                self._claim.release()
            return  # else its claim too, until this store is freed: a mover thread lives
        if not self._env.close():
            log.warning(
                "store closed while hot-tier transactions were under way; LMDB map left open"
            )
            return  # its claim too, until this store is freed: a writer may be at work
        # Nothing of this store writes to the hot tier any more, but a journal entry past
        # the mover's stop (a frozen archive's request) may still write to the archive:
        # another store must not work the same journal (a delete of that generation,
        # say) before it is done, or its upload lands after the delete.
        self.mover.after_entries(self._claim.release)

    def _check_open(self) -> None:
        if self._pid != os.getpid():
            # A forked child: the background threads and pools it would wait on are the
            # parent's (a cold read hung for good), and its writes would go past the
            # parent's accounting of the hot tier.
            raise FailedPrecondition(
                f"this store was opened in process {self._pid}, and this is process "
                f"{os.getpid()}, forked from it: a store is used only in the process that "
                "opened it (read through a tierstore client instead, or open the store "
                "after the fork)"
            )
        if self._closed:
            raise StoreClosed("the store is closed")

    # Datasets.

    def create_dataset(self, name: str, settings: DatasetSettings | None = None) -> None:
        """Create a dataset with ``settings`` (None: the defaults). Raises InvalidName,
        InvalidArgument (``settings`` is no DatasetSettings), MalformedArrow (an
        ``arrow_schema`` that is no Arrow IPC schema message), AlreadyExists,
        EncryptionUnavailable, UnknownPolicy (``settings.policy`` names no placement
        policy)."""
        self._check_open()
        validate_dataset_name(name)
        if settings is None:
            settings = DatasetSettings()
        elif not isinstance(settings, DatasetSettings):  # a str was a raw AttributeError
            raise InvalidArgument(
                f"settings must be a tierstore.types.DatasetSettings or None, not {settings!r:.40}"
            )
        self._policies.check(settings.policy)  # UnknownPolicy before anything is written
        if settings.arrow_schema:
            schema_of_message(settings.arrow_schema)  # MalformedArrow for anything else
        if settings.encrypted and self.master_keys.keyring is None:
            raise EncryptionUnavailable(
                f"dataset {name!r} asks for encryption but no master key is configured "
                "(configure one, or create the dataset plaintext: encrypted=False, "
                "--no-encrypted)"
            )
        with self._env.write() as txn:
            if self._catalog.get_dataset(txn, name) is not None:
                raise AlreadyExists(f"dataset {name!r} already exists")
            # Taken in the transaction, which a put takes its generation in: every
            # generation the dataset holds is newer, every one an earlier namesake held
            # older, and a rebuild from the archive tells the two apart by it. Taken,
            # not read: each dataset made has its own, so a staged put that read its
            # dataset's before a delete and a make again is refused at its commit.
            first = self._writer.take_generation()
            if self._catalog.counter(txn, "next_generation") <= first:
                self._catalog.set_counter(txn, "next_generation", first + 1)  # past restarts
            self._catalog.put_dataset(txn, name, settings, first)
            self._catalog.append_journal(txn, JournalOp("dataset", name))
            # In the transaction: a put that follows its commit finds the policy. (A
            # failed commit leaves it to a name without a dataset, where nothing reads it
            # and a create replaces it.)
            self._policies.open_dataset(name, settings.policy)
        # Also here: a read still under way as its namesake was deleted counted there.
        self._retire_reads(name)
        self.mover.wake()

    def get_dataset(self, name: str) -> DatasetSettings:
        """A dataset's settings. Raises InvalidName, DatasetNotFound."""
        self._check_open()
        validate_dataset_name(name)
        with self._env.read() as txn:
            return self._catalog.require_dataset(txn, name)

    def has_dataset(self, name: str) -> bool:
        """Whether a dataset of that name exists. Raises InvalidName."""
        return self.dataset_incarnation(name) is not None

    def dataset_incarnation(self, name: str) -> int | None:
        """Which dataset of that name exists: the first generation it may hold, which
        no earlier or later namesake shares (0 for one made before these were
        recorded), or None when there is none. Raises InvalidName."""
        self._check_open()
        validate_dataset_name(name)
        with self._env.read() as txn:
            if self._catalog.get_dataset(txn, name) is None:
                return None
            return self._catalog.dataset_first_generation(txn, name)

    def list_datasets(self) -> list[tuple[str, DatasetSettings]]:
        """All datasets, sorted by name."""
        self._check_open()
        with self._env.read() as txn:
            return self._catalog.list_datasets(txn)

    def dataset_names(self) -> builtins.list[str]:
        """Every dataset's name, sorted (their settings are not read: each holds its
        Arrow schema, and a metrics scrape of 1,500 wide ones decoded 84 MB)."""
        self._check_open()
        with self._env.read() as txn:
            return self._catalog.dataset_names(txn)

    def dataset_page(
        self,
        start_after: str | None,
        limit: int,
        *,
        shown: Callable[[str], bool],
        max_bytes: int = 0,
        size_of: Callable[[tuple[str, DatasetSettings]], int] | None = None,
    ) -> tuple[builtins.list[tuple[str, DatasetSettings]], str | None]:
        """Up to ``limit`` of the datasets whose names ``shown`` takes, by name, after
        ``start_after``: a page as :meth:`list` cuts one (``max_bytes``, ``size_of``).
        Returns the page and the ``start_after`` of the next page (``None`` at the end).
        """
        self._check_open()
        with self._env.read() as txn:
            entries = self._catalog.iter_datasets(txn, start_after, shown)
            return take_page(
                entries, limit, lambda entry: entry[0], max_bytes=max_bytes, size_of=size_of
            )

    def update_dataset(
        self,
        name: str,
        durability: Durability | None = None,
        hot_quota_bytes: int | None = None,
        policy: str | None = None,
        *,
        backlog_quota_bytes: int | None = None,
        still_allowed: Callable[[], None] | None = None,
    ) -> DatasetSettings:
        """Change the settings that may change after creation; returns the new settings.
        A backlog quota takes effect with the next put (one below the dataset's
        backlog refuses its puts until the mover brings the backlog under it).

        A new ``policy`` takes over at once: a fresh policy object, told of the
        dataset's hot shards (oldest read first) and of its live plans. Encryption is
        fixed at creation (existing shards could not follow). ``still_allowed`` is
        called in the write transaction, before anything changes, and what it raises
        ends the update with nothing changed (a caller's authority, checked again after
        the wait for another update). Raises InvalidName, DatasetNotFound,
        InvalidArgument, UnknownPolicy.
        """
        self._check_open()
        validate_dataset_name(name)
        # DatasetSettings checks every value (InvalidArgument), the changed ones included.
        if policy is not None:
            self._policies.check(check_policy_name(policy))  # before anything is written
        # The flush lock through both transactions: an update that commits after this
        # one cannot give the dataset its policy before this one does.
        with self._access.flush_lock:
            with self._env.write() as txn:
                if still_allowed is not None:
                    still_allowed()
                settings = self._catalog.require_dataset(txn, name)
                old_quota = settings.hot_quota_bytes
                if durability is not None:
                    settings = dataclasses.replace(settings, durability=durability)
                if hot_quota_bytes is not None:
                    settings = dataclasses.replace(settings, hot_quota_bytes=hot_quota_bytes)
                if policy is not None:
                    settings = dataclasses.replace(settings, policy=policy)
                if backlog_quota_bytes is not None:
                    settings = dataclasses.replace(
                        settings, backlog_quota_bytes=backlog_quota_bytes
                    )
                self._catalog.put_dataset(txn, name, settings)
                self._catalog.append_journal(txn, JournalOp("dataset", name))
            if policy is not None:
                # Once the setting is committed (a failed commit left the new policy in
                # force while the catalog named the old one), and under the write
                # transaction's lock again: no shard turns hot or cold between the scan
                # and the new policy (every hot-set change takes it). It writes nothing:
                # its commit cannot fail. A dataset deleted (and made again, with a
                # policy of its own) in between keeps what its catalog says.
                with self._env.write() as txn:
                    now = self._catalog.get_dataset(txn, name)
                    if now is not None and now.policy == policy:
                        hot = hot_shards(txn, self._catalog, self._access, name).get(name, [])
                        self._policies.set_policy(name, policy, hot)
        if policy is not None:
            self._plans.redeclare(name)
        # A quota raised or removed (0) has room for pins skipped for want of it.
        room_grew = hot_quota_bytes is not None and (
            hot_quota_bytes == 0 < old_quota or 0 < old_quota < hot_quota_bytes
        )
        if room_grew:
            self.promoter.pins.due_now(name)
        if policy is not None or room_grew:
            self.prefetcher.wake()
        try:
            if hot_quota_bytes:
                # At once, as far as archived shards allow: the mover would trim it only
                # after working through the whole journal.
                self.hot_room.make_room_in_quota(name, hot_quota_bytes, 0, all_or_nothing=False)
        finally:
            self.mover.progressed()  # puts waiting for room in the quota read it again
            self.mover.wake()
        return settings

    def delete_dataset(
        self,
        name: str,
        *,
        force: bool = False,
        committed: Callable[[], None] | None = None,
        admit: Callable[[DatasetSettings], None] | None = None,
    ) -> None:
        """Delete a dataset; with shards in it only when ``force`` (they are deleted too).
        Write-through: returns once the archive holds none of it, else ArchiveUnavailable
        (deleted here; the mover keeps trying the archive). ``committed`` is called once
        the delete is committed here, before a write-through one waits for the archive:
        an error after it leaves the dataset deleted (and its name free to reuse).
        ``admit(settings)`` runs inside the write transaction, before anything is
        deleted: what it raises ends the delete with nothing changed (the service checks
        there that its caller is still waiting for the answer)."""
        self._check_open()
        validate_dataset_name(name)
        dropped: builtins.list[ShardRecord] = []
        try:
            first_generation = self._drop_shards_ahead(name, admit, dropped) if force else None
            if first_generation is not None:
                admit = None  # admitted by the first commit: the delete goes on to its end
            settings, records, seq = self._with_reserve(
                lambda: self._drop_dataset(name, force, admit, first_generation)
            )
        except BaseException:
            if dropped:  # some of its shards went before the failure
                self._shards_went(dropped)
            raise
        self._plans.close_dataset(name)
        self._retire_reads(name)
        self.mover.progressed()  # puts waiting for room in its quota stop (DatasetNotFound)
        if committed is not None:
            committed()
        if any(record.hot for record in [*dropped, *records]):
            self._room_may_have_come()
        if settings.durability is Durability.WRITE_THROUGH:
            self._writer.archive_delete(seq, name, f"dataset {name!r}")
        self.mover.wake()

    def _shards_went(self, records: builtins.list[ShardRecord]) -> None:
        """Tell those who wait that ``records`` were deleted: puts waiting for room (in
        the hot tier, or their quota) look again, and the mover finds their deletes."""
        self.mover.progressed()
        if any(record.hot for record in records):
            self._room_may_have_come()
        self.mover.wake()

    def _drop_shards_ahead(
        self,
        name: str,
        admit: Callable[[DatasetSettings], None] | None,
        dropped: builtins.list[ShardRecord],
    ) -> int | None:
        """For a forced delete of dataset ``name``: while it holds more than
        :data:`SHARDS_DROPPED_PER_COMMIT` shards, delete that many a commit, adding
        their records to ``dropped``, so that the hot tier's write lock is let go
        between them (one transaction of 50,000 held every writer of every dataset for
        8 s). The last of them go with the dataset, in :meth:`_drop_dataset`'s one
        transaction. Returns None when no commit was made here (a dataset of fewer
        shards, or whose record does not read, is deleted in that one transaction
        alone, as before); else the dataset's first generation, by which
        :meth:`_drop_dataset` tells it from a namesake another caller made between
        two commits (DatasetNotFound then), and ``admit`` ran in the first commit.
        Raises what :meth:`_drop_dataset` would."""
        with self._env.read() as txn:
            many = self._catalog.count_shards(txn, name, at_most=SHARDS_DROPPED_PER_COMMIT + 1)
            first_generation = self._identity(txn, name)
        if many <= SHARDS_DROPPED_PER_COMMIT or first_generation is None:
            return None
        while True:
            drop = partial(self._drop_shard_chunk, name, admit, first_generation)
            admit = None
            chunk, more = self._with_reserve(drop)
            dropped += chunk
            if not more:
                return first_generation

    def _identity(self, txn: Any, name: str) -> int | None:
        """Dataset ``name``'s first generation, which tells it from a namesake made after
        it was deleted; None when its record does not read (or it does not exist)."""
        try:
            return self._catalog.dataset_first_generation(txn, name)
        except IntegrityError:
            return None

    def _drop_shard_chunk(
        self,
        name: str,
        admit: Callable[[DatasetSettings], None] | None,
        first_generation: int,
    ) -> tuple[builtins.list[ShardRecord], bool]:
        """One commit of :meth:`_drop_shards_ahead`: the first
        :data:`SHARDS_DROPPED_PER_COMMIT` shards of dataset ``name``, the one of
        ``first_generation``, if it holds more (else none: the rest go with it), and
        whether it still holds more than that many after them (counted by key: a commit
        that found none to drop was one write-lock turn for nothing)."""
        with self._policies.undone_on_failure(), self._env.write() as txn:
            settings = self._catalog.require_dataset(txn, name)
            _check_same_dataset(name, first_generation, self._identity(txn, name))
            if admit is not None:
                admit(settings)
            shards = self._catalog.iter_shards(txn, name)
            records = list(itertools.islice(shards, SHARDS_DROPPED_PER_COMMIT + 1))
            if len(records) <= SHARDS_DROPPED_PER_COMMIT:
                return [], False
            records.pop()
            for record in records:
                self._writer.delete_in(txn, record)
            left = self._catalog.count_shards(txn, name, at_most=SHARDS_DROPPED_PER_COMMIT + 1)
            return records, left > SHARDS_DROPPED_PER_COMMIT

    def _retire_reads(self, name: str) -> None:
        """Count no read so far of dataset ``name`` as its namesake's: in its statistics
        and in its sizing curves (both start at zero for a dataset made again)."""
        self._placement.retire_reads(name)
        self._trace.retire_dataset(name)

    def check_deletable(self, name: str) -> None:
        """Raise what :meth:`delete_dataset` without force would, before anything is
        done: DatasetNotFound, or FailedPrecondition while ``name`` holds shards. A
        read, so a put may still land before a delete (which checks again), but a
        delete sure to be refused is refused without a write transaction, and before
        the service takes the dataset's grants."""
        self._check_open()
        validate_dataset_name(name)
        with self._env.read() as txn:
            self._catalog.require_dataset(txn, name)
            self._shards_held(txn, name, force=False)

    def _shards_held(
        self, txn: Any, name: str, force: bool
    ) -> tuple[builtins.list[ShardRecord], builtins.list[bytes]]:
        """Dataset ``name``'s shard records and damaged records' keys, in ``txn``;
        without ``force``, FailedPrecondition when there is any (a delete refused),
        counted without decoding them (decoding 50,000 took 1.6 s)."""
        if not force:
            held = self._catalog.count_shards(txn, name)
            if held:
                raise FailedPrecondition(
                    f"dataset {name!r} holds {held} shard{'' if held == 1 else 's'}; "
                    "delete them, or delete it with force (the CLI's --force)"
                )
            return [], []
        return list(self._catalog.iter_shards(txn, name)), self._catalog.damaged_keys_of(txn, name)

    def _drop_dataset(
        self,
        name: str,
        force: bool,
        admit: Callable[[DatasetSettings], None] | None,
        first_generation: int | None,
    ) -> tuple[DatasetSettings, builtins.list[ShardRecord], int]:
        """Commit the delete of dataset ``name`` (see :meth:`delete_dataset`); returns its
        settings, the shards it held and the journal entry that deletes it from the
        archive. ``first_generation``: the dataset's as :meth:`_drop_shards_ahead`
        found it, if that ran."""
        with self._policies.undone_on_failure():
            dropped: Policy | None = None
            try:
                with self._env.write() as txn:
                    settings = self._catalog.require_dataset(txn, name)
                    if first_generation is not None:
                        _check_same_dataset(name, first_generation, self._identity(txn, name))
                    if admit is not None:
                        admit(settings)
                    records, damaged = self._shards_held(txn, name, force)
                    for record in records:
                        self._writer.delete_in(txn, record)
                    self._delete_damaged_in(txn, damaged)
                    self._catalog.delete_dataset(txn, name)
                    seq = self._catalog.append_journal(txn, JournalOp("dataset", name))
                    # Inside the transaction: nobody can create the dataset again before
                    # its policy is gone, and lose the new one's state to this drop.
                    dropped = self._policies.drop_dataset(name)
            except BaseException:
                # A failed commit (a full map) keeps the dataset: its policy comes back
                # before the enclosing undo tells it of the shards it still holds.
                self._policies.restore_dataset(name, dropped)
                raise
        return settings, records, seq

    # Writes.

    def put(
        self, dataset: str, shard: str, value: Any, *, quota_wait_s: float | None = None
    ) -> ShardInfo:
        """Store ``value`` as the new generation of ``dataset/shard``.

        ``value``: bytes-like (raw), a pyarrow Table or RecordBatch (arrow), a pyarrow
        RecordBatchReader or a list, tuple or iterator of RecordBatches (arrow: the
        table of its batches, framed as they are read, every frame held until the
        commit), or a numpy array / torch tensor (tensor). Returns once the dataset's durability
        is met. At its dataset's hot-tier quota a put evicts the dataset's archived
        shards to make room, and waits for uploads that would make more for at most
        ``quota_wait_s`` (the setting, or this argument if shorter). Raises
        InvalidName, DatasetNotFound, UnsupportedData, OversizeFrame, BacklogFull,
        QuotaExceeded, HotTierFull, ArchiveUnavailable (write-through only: the
        shard is then committed locally and the mover keeps trying); MalformedArrow
        for a reader that fails as it is read, or an invalid record batch (an offset
        past its data, bad UTF-8: nothing is stored).
        """
        self._check_shard_call(dataset, shard)
        framed = frame_value(value, self.settings.max_frame_bytes)
        return self._writer.commit(dataset, shard, framed, quota_wait_s)

    def put_frames(
        self,
        dataset: str,
        shard: str,
        kind: ShardKind,
        frames: Sequence[bytes | memoryview],
        *,
        quota_wait_s: float | None = None,
        caller_gone: Callable[[], bool] | None = None,
        admit: Callable[[DatasetSettings], None] | None = None,
    ) -> ShardInfo:
        """Store frames cut by a client (each at most ``max_frame_bytes``; Arrow ones validated).

        A put waiting for quota room stops waiting once ``caller_gone()`` is true.
        ``admit(settings)`` runs inside the write transaction, with the dataset's
        settings there, before anything is written: what it raises ends the put with
        nothing stored. Raises as :meth:`put`, and MalformedArrow.
        """
        self._check_shard_call(dataset, shard)
        framed = frame_prepared(kind, frames, self.settings.max_frame_bytes)
        return self._writer.commit(dataset, shard, framed, quota_wait_s, caller_gone, admit)

    def largest_put(self, dataset: str) -> int:
        """The most bytes (before sealing) a put into ``dataset`` could ever commit,
        whatever were evicted: its hot-tier quota, or what the hot tier takes below its
        high watermark or its map holds, whichever is less. For
        a caller that collects a put's frames before handing them over (the service
        spools them to disk), so that it stops collecting at once (see
        :meth:`check_put_size`). Raises DatasetNotFound."""
        quota, usable = self._put_limits(dataset)
        most = min(usable, self.hot_room.high_watermark_bytes())
        return min(quota, most) if quota else most

    def check_put_size(self, dataset: str, shard: str, nbytes: int) -> None:
        """Refuse a put of ``nbytes`` into ``dataset`` past :meth:`largest_put`: more
        than the dataset's hot-tier quota (QuotaExceeded), than the hot tier takes below
        its high watermark or than its map holds (HotTierFull). Raises DatasetNotFound
        too."""
        quota, usable = self._put_limits(dataset)
        if quota and nbytes > quota:
            raise QuotaExceeded(
                f"{dataset}/{shard} is more than {dataset}'s whole hot-tier quota "
                f"({quota} bytes): it could never be stored"
            )
        high = self.hot_room.high_watermark_bytes()
        if high < nbytes <= usable:
            raise HotTierFull(
                f"{dataset}/{shard} is more than the hot tier takes ({high:,} bytes, its "
                "high watermark): it could never be stored (a larger --hot-capacity would "
                "hold it)"
            )
        if nbytes > usable:
            raise HotTierFull(
                f"{dataset}/{shard} is more than the hot tier at {self._env.path} can ever "
                f"hold ({usable} bytes; map_size_bytes sets it): it could never be stored"
            )

    def _put_limits(self, dataset: str) -> tuple[int, int]:
        """``dataset``'s hot-tier quota (0: none) and the bytes the hot tier's map can
        ever hold. Raises DatasetNotFound."""
        with self._env.read() as txn:
            quota = self._catalog.require_dataset(txn, dataset).hot_quota_bytes
        return quota, self._env.usable_bytes()

    def delete(
        self,
        dataset: str,
        shard: str,
        *,
        admit: Callable[[DatasetSettings], None] | None = None,
    ) -> None:
        """Delete a shard (every tier). In a write-through dataset it returns once the
        archive has deleted it too. Raises InvalidName, DatasetNotFound, ShardNotFound,
        ArchiveUnavailable (write-through only: deleted here, and the mover keeps
        trying the archive), and what ``admit(settings)`` raises: it runs inside the
        write transaction, before anything is deleted (see :meth:`delete_dataset`)."""
        self._check_shard_call(dataset, shard)
        settings, seq, was_hot = self._with_reserve(lambda: self._drop_shard(dataset, shard, admit))
        if was_hot:  # before a write-through delete waits for the archive
            self._room_may_have_come()
        if seq is not None and settings.durability is Durability.WRITE_THROUGH:
            self._writer.archive_delete(seq, dataset, f"{dataset}/{shard}", shard)
        self.mover.wake()

    def _drop_shard(
        self, dataset: str, shard: str, admit: Callable[[DatasetSettings], None] | None
    ) -> tuple[DatasetSettings, int | None, bool]:
        """Commit the delete of ``dataset/shard`` (see :meth:`delete`); returns its
        dataset's settings, the journal entry that deletes it from the archive (for a
        shard whose record was unreadable, the purge of its archived generations) and
        whether it was hot."""
        was_hot = False
        with self._policies.undone_on_failure(), self._env.write() as txn:
            settings = self._catalog.require_dataset(txn, dataset)
            if admit is not None:
                admit(settings)
            try:
                record = self._catalog.require_shard(txn, dataset, shard)
            except IntegrityError:  # its record is unreadable: see tierstore.engine.damaged
                seq = self._delete_damaged_in(txn, [catalog_key(dataset, shard)])
                self._policies.removed((dataset, shard))
            else:
                seq = self._writer.delete_in(txn, record)
                was_hot = record.hot
        return settings, seq, was_hot

    def _with_reserve(self, commit: Callable[[], _Result]) -> _Result:
        """``commit()``, run once more on a full disk with the reserve given back
        (:func:`~tierstore.engine.diskreserve.once_more_with_room`)."""
        return once_more_with_room(commit, self.disk_reserve.release)

    def _delete_damaged_in(self, txn: Any, keys: builtins.list[bytes]) -> int | None:
        """:func:`delete_damaged_in`, in a write transaction (where the generations that
        may still commit are exactly those from the writer's first uncommitted one on:
        a staged put's, taken before, or the next to be handed out)."""
        first_open = self._writer.first_uncommitted_generation()
        return delete_damaged_in(txn, self._catalog, self._frames, keys, first_open)

    # Metadata.

    def stat(self, dataset: str, shard: str) -> ShardInfo:
        """What the catalog knows of a shard. Raises InvalidName, DatasetNotFound, ShardNotFound."""
        self._check_shard_call(dataset, shard)
        now = time.time()
        # Under the flush lock: a flush in progress has reads in neither place.
        with self._access.flush_lock, self._env.read() as txn:
            record = self._catalog.require_shard(txn, dataset, shard)
            return self._info_with_reads(txn, record, now)

    def _info_with_reads(self, txn: Any, record: ShardRecord, now: float) -> ShardInfo:
        """``record``'s public view with its reads, flushed and pending, valued at
        ``now``: exact under the access flush lock (a flush in progress has reads in
        neither place), else possibly short by the reads of a flush under way."""
        half_life = self.settings.access_half_life_s
        flushed = self._catalog.get_access(txn, record.dataset, record.name)
        pending = self._access.pending(record.dataset, record.name, record.generation)
        info = record.to_info(now, flushed.merged(pending, half_life).valued_at(now, half_life))
        if info.pinned and not info.hot and self.promoter.pins.waits_for_room(record):
            return dataclasses.replace(info, waiting_for_room=True)
        return info

    def list(
        self,
        dataset: str,
        prefix: str = "",
        start_after: str | None = None,
        limit: int = 1000,
        *,
        max_bytes: int = 0,
        size_of: Callable[[ShardInfo], int] | None = None,
    ) -> tuple[builtins.list[ShardInfo], str | None]:
        """Up to ``limit`` shards whose names start with ``prefix``, after ``start_after``,
        each with its reads as :meth:`stat` gives them (a page read while the mover
        flushes reads may miss those being flushed: it does not wait for the flush).
        With ``size_of``, the page also ends before the shard whose ``size_of`` takes the
        page's total past ``max_bytes`` (never before its first shard), and nothing past
        that shard is read: ``size_of`` is called once for each shard of the page, in
        order, and for at most one more.

        Returns the page and the ``start_after`` of the next page (``None`` at the end).
        """
        self._check_open()
        validate_dataset_name(dataset)
        _check_listing(prefix, start_after, limit)
        now = time.time()
        # Not under the flush lock: listings would queue behind each other and hold up
        # stat and the flush, for figures that are only for show.
        with self._env.read() as txn:
            self._catalog.require_dataset(txn, dataset)
            # Sized as they are read, not cut after a page of ``limit`` shards was built:
            # each holds every frame's size.
            infos = (
                self._info_with_reads(txn, record, now)
                for record in self._catalog.iter_shards(txn, dataset, prefix, start_after)
            )
            return take_page(
                infos, limit, lambda info: info.name, max_bytes=max_bytes, size_of=size_of
            )

    # Reads.

    def get(
        self,
        dataset: str,
        shard: str,
        *,
        byte_range: tuple[int, int] | None = None,
        frame_range: tuple[int, int] | None = None,
    ) -> ShardData:
        """Read a shard: whole, a byte range ``(offset, length)`` or frames ``(first, count)``.

        Raises InvalidName, DatasetNotFound, ShardNotFound, InvalidRange,
        IntegrityError (a frame failed verification; nothing unverified is
        returned), ArchiveUnavailable, UnknownKeyId, EncryptionUnavailable.
        """
        self._check_shard_call(dataset, shard)
        return self._reader.read(dataset, shard, byte_range, frame_range)

    def iter_frames(
        self, dataset: str, shard: str, *, frame_range: tuple[int, int] | None = None
    ) -> Iterator[pa.Buffer]:
        """A shard's verified frames one at a time (zero-copy for plaintext hot shards).

        No frame is yielded before it is verified; for plaintext hot shards the next
        frames are verified on a helper thread while the consumer reads the current
        one — the fastest way to stream a hot shard in-process. Raises as :meth:`get`.
        """
        self._check_shard_call(dataset, shard)
        return self._reader.iter_frames(dataset, shard, frame_range)

    def open_sealed(
        self,
        dataset: str,
        shard: str,
        *,
        byte_range: tuple[int, int] | None = None,
        frame_range: tuple[int, int] | None = None,
    ) -> SealedRead:
        """Open a read whose frames come as stored, for a reader that verifies (and
        decrypts) them itself — the service's path (:mod:`tierstore.engine.sealedpath`).

        The result carries the data key of an encrypted shard: hand it only to callers
        allowed to read the shard. Raises as :meth:`get`.
        """
        self._check_shard_call(dataset, shard)
        return self._sealed.open(dataset, shard, byte_range, frame_range)

    def get_into(
        self,
        dataset: str,
        shard: str,
        out: memoryview,
        *,
        byte_range: tuple[int, int] | None = None,
    ) -> int:
        """Read into ``out`` (at least as large as the read); returns the bytes written.

        On a DataLoss error the whole of ``out`` is zeroed before raising. Raises as
        :meth:`get`, and InvalidArgument when ``out`` is read-only, not contiguous or
        too small (then nothing is written).
        """
        target = writable_view(out)
        try:
            data = self.get(dataset, shard, byte_range=byte_range)
        except DataLoss:
            target[:] = bytes(target.nbytes)
            raise
        return copy_frames_into(data, target)

    def read_table(
        self, dataset: str, shard: str, columns: Sequence[str] | None = None
    ) -> pa.Table:
        """An Arrow shard as a table (zero-copy over the frames). Raises WrongShardKind for raw."""
        data = self.get(dataset, shard)
        if data.info.kind is ShardKind.RAW:
            raise WrongShardKind(f"{dataset}/{shard} holds raw bytes, not Arrow data")
        return arrowio.frames_to_table(data.frames, columns)

    def read_tensor(self, dataset: str, shard: str) -> Any:
        """A tensor shard as a numpy array (or torch tensor if it was stored from torch)."""
        table = self.read_table(dataset, shard)
        if not tensors.is_tensor_schema(table.schema):
            raise WrongShardKind(f"{dataset}/{shard} holds a table, not a tensor")
        return tensors.table_to_tensor(table)

    # Placement and administration.

    def evict(self, dataset: str, shard: str) -> int:
        """Drop a shard from the hot tier if the archive holds it; returns bytes freed.

        Raises InvalidName, DatasetNotFound, ShardNotFound, FailedPrecondition while
        eviction is held (archived shards' objects were found missing in the archive:
        `ArchiveWatch.missing_objects`).
        """
        self._check_shard_call(dataset, shard)
        with self._env.read() as txn:
            self._catalog.require_shard(txn, dataset, shard)
        freed = self._with_reserve(lambda: self.hot_room.evict_shard(dataset, shard))
        if freed:
            self._room_may_have_come()
        return freed

    def pin(self, dataset: str, shard: str, ttl_s: float | None = None) -> int:
        """Keep a shard in the hot tier whatever its policy says (eviction skips it; a
        cold one is promoted), for ``ttl_s`` seconds or until unpinned.

        Returns the bytes queued for promotion. Raises InvalidName, DatasetNotFound,
        ShardNotFound, InvalidArgument (``ttl_s`` not a positive number), HotTierFull
        or QuotaExceeded (a cold shard larger than the hot tier takes below its high
        watermark, or than its dataset's hot-tier quota, which could never be promoted:
        nothing is pinned).
        """
        self._check_shard_call(dataset, shard)
        return self._placement.pin(dataset, shard, ttl_s)

    def unpin(self, dataset: str, shard: str) -> None:
        """Let the policy evict a shard again. Raises as :meth:`pin`."""
        self._check_shard_call(dataset, shard)
        if self._placement.unpin(dataset, shard):
            self._room_may_have_come()

    def _promoted(self) -> None:
        """After a promotion: the prefetch loop looks for more to fetch, and eviction
        may take the shard (archived) that went hot."""
        self.hot_room.evictables_may_have_come()
        self.prefetcher.wake()

    def _room_may_have_come(self) -> None:
        """After a hot shard's pin ended, it was evicted or deleted (or its dataset),
        or the mover archived it unpinned (eviction may take it now): pins skipped for
        want of room are tried at once, not after their back-off (up to a minute). Not
        after a cold shard's: a bulk delete would have the prefetch loop try them, and
        find no room, at every delete."""
        self.hot_room.room_may_have_come()
        if self.promoter.pins.due_now():
            self.prefetcher.wake()

    def prefetch(self, dataset: str, shards: Iterable[str]) -> int:
        """Queue promotion of the named shards that are cold; returns how many were queued
        (or were being promoted already; not those a full queue dropped).

        Unknown shard names are skipped. Raises InvalidName, DatasetNotFound,
        InvalidArgument (``shards`` is no iterable of names), HotTierFull or
        QuotaExceeded (nothing queued) when a cold shard named is larger than the hot
        tier takes below its high watermark or than the dataset's hot-tier quota, which
        could never be promoted.
        """
        self._check_open()
        validate_dataset_name(dataset)
        # A str is a sequence of its characters; None was a raw TypeError.
        names = given_names(shards, "shards must be a list of shard names")
        return self._placement.prefetch(dataset, [validate_shard_name(n) for n in names])

    def dataset_usage(self, dataset: str) -> DatasetUsage:
        """Shards and bytes per tier, and hits and misses since start. Raises DatasetNotFound."""
        self._check_open()
        validate_dataset_name(dataset)
        return self._placement.usage(dataset)

    def read_counts(self) -> dict[str, tuple[int, int]]:
        """Hits and misses since start of every dataset (zeros for one never read),
        from memory: what :meth:`dataset_usage` counts, without walking any shard
        record — for a metrics scrape. O(datasets)."""
        counts = self._placement.read_counts()
        return {name: counts.get(name, (0, 0)) for name in self.dataset_names()}

    def read_totals(self) -> tuple[int, int]:
        """The node's hits and misses since start, from memory; deleted datasets'
        reads stay in them, so they never go down. O(datasets)."""
        return self._placement.read_totals()

    # Access plans and the access trace.

    def declare_plan(
        self,
        dataset: str,
        *,
        sampler: SamplerPlan | None = None,
        shards: Iterable[str] | None = None,
        prefix: str = "",
        job: str | None = None,
        ttl_s: float = DEFAULT_PLAN_TTL_S,
        owner: str = "",
        keeper: str = "",
        keeper_left_s: float | None = None,
        position: int = 0,
    ) -> str:
        """Declare the order in which ``job`` will read ``dataset``; returns the job id
        (a new one when ``job`` is None; declaring a job again replaces its plan).
        ``owner`` (the declaring principal, in the service) is counted against the plan
        book's per-owner bounds (:mod:`tierstore.engine.planbook`); ``keeper`` (the
        declaring token, in the service) keeps it (:meth:`close_plans_kept_by`), for
        ``keeper_left_s`` seconds more (None: for good; the token's time left, in the
        service): the plan expires then at the latest.

        Exactly one of ``sampler`` (regenerated with :func:`tierstore.plans.rank_order`
        over the dataset's shard names under ``prefix``, in catalog order; refused when
        its ``shards_digest`` is not theirs) and ``shards`` (explicit names: any iterable
        of them, a generator too, but not one str). The plan steers the dataset's policy
        (prefetch, eviction); it lives ``ttl_s`` seconds past the last
        :meth:`report_position`. ``position``: entries of it already read (a resumed
        epoch; 0: none), set at the declaration's instant: the policy measures no read
        rate from them, as it did from a start reported a moment after the declaration.
        Raises InvalidName, DatasetNotFound, PlanShardsChanged (the sampler was made
        over other shard names than ``prefix`` lists now), InvalidPlan (unknown shard,
        too long, not exactly one of sampler and shards, ``shards`` no iterable of
        names), InvalidArgument (bad sampler, job id, ttl, a position below 0 or past
        the plan's end), PlanLimitReached; a refused declaration leaves the job's
        earlier plan as it was.
        """
        self._check_open()
        validate_dataset_name(dataset)
        job = self._plans.declare(
            dataset,
            sampler=sampler,
            shards=shards,
            prefix=prefix,
            job=job,
            ttl_s=ttl_s,
            owner=owner,
            keeper=keeper,
            keeper_left_s=keeper_left_s,
            position=position,
        )
        self.prefetcher.wake()
        return job

    def report_position(
        self, job: str, position: int, keeper: str = "", keeper_left_s: float | None = None
    ) -> None:
        """``job`` has read the first ``position`` entries of its plan (keeps it alive,
        kept by ``keeper`` from now on, for ``keeper_left_s``: see :meth:`declare_plan`).

        Raises PlanNotFound (unknown, closed or expired job), InvalidArgument
        (``position`` negative or past the plan's end).
        """
        self._check_open()
        self._plans.report(job, position, keeper, keeper_left_s)
        self.prefetcher.wake()

    def close_plans_kept_by(self, keeper: str) -> int:
        """End every plan ``keeper`` (not "") declared or last reported on (the service:
        a revoked token's), so they steer placement no more; returns how many."""
        self._check_open()
        return self._plans.close_kept_by(keeper)

    def close_plan(self, job: str) -> None:
        """End ``job``'s plan. Raises PlanNotFound (unknown, closed or expired job)."""
        self._check_open()
        self._plans.close(job)

    def plan_info(self, job: str) -> PlanInfo:
        """``job``'s live plan: its dataset, length and position. Raises PlanNotFound."""
        self._check_open()
        return self._plans.info(job)

    def trace_events(self, dataset: str | None = None) -> Iterator[TraceEvent]:
        """The traced reads and plan events (of ``dataset``, or all), oldest first: the
        last ``trace_capacity`` of them, as they are at the call. Raises InvalidName, and
        DatasetNotFound for a dataset that neither exists nor has events in the ring (a
        deleted dataset's reads stay exportable while the ring holds them; a typo is an
        error, not an empty trace)."""
        self._check_open()
        if dataset is None:
            return self._trace.events()
        validate_dataset_name(dataset)
        events = self._trace.events(dataset)
        first = next(events, None)
        if first is None:
            self.get_dataset(dataset)  # raises DatasetNotFound for a name never made
            return iter(())
        return itertools.chain((first,), events)

    def sizing_curve(
        self, datasets: Iterable[str] | None = None
    ) -> tuple[builtins.list[SizingPoint], int]:
        """The LRU miss ratio the traced reads (of ``datasets``: any iterable of dataset
        names, a generator too, but not one str; None: all) would have had at 1/8 to 4
        times the hot tier's capacity, and how many reads that is (none: no points). Raises
        InvalidArgument for a ``datasets`` that is no iterable of str."""
        self._check_open()
        return self._trace.sizing_curve(self.settings.hot_capacity_bytes, _name_set(datasets))

    def policy_name(self, dataset: str) -> str:
        """The placement policy in force for ``dataset`` (its setting, unless that policy
        is not available in this release: then the default)."""
        return self._policies.policy_name(dataset)

    def _check_shard_call(self, dataset: str, shard: str) -> None:
        """The checks every call naming one shard starts with: open store, valid names."""
        self._check_open()
        validate_dataset_name(dataset)
        validate_shard_name(shard)

    def _still_archived(self, record: ShardRecord) -> bool:
        """Whether ``record``'s generation is its shard's current one, archived."""
        with self._env.read() as txn:
            current = self._catalog.readable_shard(txn, record.dataset, record.name)
        return current is not None and current.generation == record.generation and current.archived

    def _archive_failure(self) -> str | None:
        """Why the archive fails, for stats: the mover's last error, else a pinned
        shard's promotion's, else the last archive request that failed. Uploads held
        (keys not yet checked against an archive down at the start) say why too: the
        archive's own failure, which the checks meet, was hidden behind the hold. Then
        archived shards' objects found missing, which hold eviction."""
        failure = self.mover.archive_failure() or self.promoter.archive_failure()
        request = self.archive_watch.failure()
        if failure is None:
            failure = request
        elif request is not None and failure == self.mover.archive_hold:
            failure = f"{request}; {failure}"
        missing = self.archive_watch.missing_objects()  # eviction held: shown until a start
        return "; ".join(text for text in (failure, missing) if text) or None

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait (polling) up to ``timeout`` seconds (a number from 0, which only looks,
        to ten years) until the upload journal is empty; False on timeout. Raises
        InvalidArgument for any other ``timeout``."""
        # 0 looks once, as before the check; None was a raw TypeError; NaN returned at
        # once and infinity waited for good.
        looks_only = type(timeout) in (int, float) and timeout == 0
        seconds = 0.0 if looks_only else seconds_up_to(timeout, MAX_TTL_S)
        if seconds is None:
            raise InvalidArgument(
                f"timeout must be a number of seconds from 0 to ten years, got {timeout!r:.40}"
            )
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.mover.pending() == 0:
                return True
            self.mover.wake()
            time.sleep(0.02)
        return self.mover.pending() == 0

    # Master keys (tierstore.engine.masterkeys).

    @property
    def master_key_id(self) -> str:
        """The id of the master key new data keys are wrapped with ("" without a keyring)."""
        return self.master_keys.current_key_id

    def rotate_master_key(self, keyring: MasterKeyProvider | None = None) -> int:
        """:meth:`MasterKeys.rotate`: rewrap every data key not under the current master
        key (switching to ``keyring`` first, if given); returns how many were."""
        self._check_open()
        return self.master_keys.rotate(keyring)

    def check_keyring(self, keyring: MasterKeyProvider) -> None:
        """:meth:`MasterKeys.check_keyring`: KeyRotationRefused unless ``keyring``
        unwraps a data key of each master key id in use."""
        self._check_open()
        self.master_keys.check_keyring(keyring)

    def check_key_retirement(self, key_id: str, keyring: MasterKeyProvider) -> None:
        """:meth:`MasterKeys.check_retirement`: KeyRotationRefused unless ``key_id`` may
        go, ``keyring`` (the keys less ``key_id``) taking this store's keys' place."""
        self._check_open()
        self.master_keys.check_retirement(key_id, keyring)

    def use_retired_keys(self, key_id: str, keyring: MasterKeyProvider) -> None:
        """:meth:`MasterKeys.use_retired`: switch to ``keyring``, the keys less ``key_id``,
        after :meth:`check_key_retirement` passed (no pass over the catalog)."""
        self._check_open()
        self.master_keys.use_retired(key_id, keyring)

    def master_key_use(self) -> dict[str, int]:
        """:meth:`MasterKeys.key_use`: how many shards' data keys each master key id
        wraps (a walk of the catalog)."""
        self._check_open()
        return self.master_keys.key_use()

    def master_key_failure(self) -> UnwrapFailure | None:
        """:meth:`MasterKeys.unwrap_failure`: the first master key id in use whose data
        keys this store's keyring does not unwrap, else None."""
        self._check_open()
        return self.master_keys.unwrap_failure()

    def archive_seal_failure(self) -> SealFailure | None:
        """:meth:`MasterKeys.archive_seal_failure`: None when the archive's metadata was
        sealed under this store's keys (or nothing tells), else the first object that
        did not verify. Raises ArchiveUnavailable."""
        self._check_open()
        return self.master_keys.archive_seal_failure()

    def reseal_archive(self) -> None:
        """:meth:`MasterKeys.reseal_archive`: have the mover reseal all the archive's
        metadata under the current master key. EncryptionUnavailable without a keyring."""
        self._check_open()
        self.master_keys.reseal_archive()

    def archive_holds_objects(self) -> bool:
        """Whether the archive (its bucket and prefix) holds any object but a node's claim
        on it (:mod:`tierstore.engine.archiveclaim`): at most two keys listed. Raises
        ArchiveUnavailable when it cannot be listed."""
        self._check_open()
        return any(key != CLAIM_KEY for key in self._archive.list(limit=2).keys)

    def check_archive_claim(self) -> None:
        """:func:`~tierstore.engine.archiveclaim.check_claim` for this store's hot tier,
        writing nothing to the archive: FailedPrecondition when another node holds it;
        ArchiveUnavailable."""
        self._check_open()
        check_claim(self._archive, self._claim_of_this_node(), take_over=False)

    def archive_claimed_by_another(self) -> ArchiveClaim | None:
        """The claim on the archive when it is another node's (or one this release
        cannot read: :data:`~tierstore.engine.archiveclaim.UNREADABLE`), else None.
        Raises ArchiveUnavailable."""
        self._check_open()
        theirs = read_claim(self._archive)
        return None if theirs is None or theirs.node == self._node_id() else theirs

    def claim_archive(self, *, take_over: bool = False) -> ArchiveClaim | None:
        """:func:`~tierstore.engine.archiveclaim.claim_archive` for this store's hot tier:
        the claim taken over, or None. FailedPrecondition when another node holds it and
        ``take_over`` is false; ArchiveUnavailable."""
        self._check_open()
        return claim_archive(self._archive, self._claim_of_this_node(), take_over=take_over)

    def _claim_of_this_node(self) -> ArchiveClaim:
        return ArchiveClaim.for_this_host(self._node_id(), self.settings.data_dir)

    def has_node_id(self) -> bool:
        """Whether the hot tier has its node id: made by its first check or claim of the
        archive (a hot tier a rebuild filled has none until its claim)."""
        self._check_open()
        if self._node:
            return True
        with self._env.read() as txn:
            return bool(self._catalog.note(txn, NODE_ID_NOTE))

    def _node_id(self) -> str:
        """The hot tier's node id, made at its first use and kept in the catalog (read
        once: a serving node's claim watch asks for it every minute)."""
        if not self._node:
            with self._env.write() as txn:
                node = self._catalog.note(txn, NODE_ID_NOTE)
                if not node:
                    node = secrets.token_hex(16)
                    self._catalog.set_note(txn, NODE_ID_NOTE, node)
            self._node = node
        return self._node

    def archive_missing_datasets(self) -> builtins.list[str]:
        """The datasets whose settings object the archive should hold but does not, when
        it holds none of them: this node was given an archive that is not its own (its
        bucket, prefix or endpoint changed; an embedded archive's directory deleted).
        Empty when some dataset's object is there (one GET, for a node on its own
        archive), and when none is due yet (every dataset's object still on the journal:
        made while the archive was down). Raises ArchiveUnavailable."""
        self._check_open()
        with self._env.read() as txn:
            names = [name for name, _ in self._catalog.list_datasets(txn)]
        for name in names:
            if self._archive.get(archive_dataset_key(name)) is not None:
                return []
        with self._env.read() as txn:
            pending = self._catalog.datasets_on_the_journal(txn)
        return [name for name in names if name not in pending]

    def archive_again(self) -> Rearchived:
        """For a node whose archive was lost for good (``serve --archive-lost``): in one
        write transaction, journal the upload of every hot shard again (marked not
        archived, so not evicted before it is in the new archive) and the writing of
        every dataset's settings object, and drop every shard only the lost archive
        held (reads of it then raise ShardNotFound); see :mod:`tierstore.engine.rearchive`.
        Call it before the mover starts."""
        self._check_open()
        with self._env.write() as txn:
            return archive_again_in(txn, self._catalog)

    def rebuild_from_archive(
        self,
        *,
        believe_unsealed: bool = False,
        on_skipped: Callable[[Mapping[str, str], int], None] | None = None,
    ) -> int:
        """Fill an empty catalog from the archive alone; returns the shards recovered.

        ``on_skipped``, when some archive objects are not believed (damaged, or sealed
        under keys this store lacks), is called with them (key: why) and the number of
        datasets that would be restored, before anything is: what it raises ends the
        rebuild with nothing changed. A rebuild
        without those objects leaves their datasets or shards out, and a dataset left
        out and made again under its name has its archived generations taken for an
        earlier namesake's (deleted) by a later rebuild: the node refuses a partial
        rebuild unless told otherwise.

        Every dataset and the newest generation of every shard come back as
        archived and not hot (reads fetch and promote them); the older generations
        of those shards are journaled for deletion from the archive. Only metadata objects
        sealed under this store's master keys are believed; with ``believe_unsealed``
        (the key file they were sealed with is lost for good) their seals are not
        checked, the archive is taken at its word, and an archive that holds any
        encrypted dataset or shard is refused: nothing reads those without the lost
        keys. The caller then seals the metadata again (:meth:`reseal_archive`).
        Raises FailedPrecondition if the catalog is not empty, its journal still holds
        entries for the archive (drain it first), or (``believe_unsealed``) the archive
        holds encrypted data; ArchiveUnavailable if the archive cannot be listed.
        """
        self._check_open()
        with self._env.read() as txn:
            self._require_empty_catalog(txn)
        check = believe_any_seal if believe_unsealed else self._sealers.check_object
        contents = scan_archive(self._archive, check)
        if believe_unsealed:
            refuse_encrypted_without_keys(contents)
            log.warning(
                "rebuilding from the archive without checking its seals (the key file "
                "they were made with is lost): %d datasets and %d shards taken at the "
                "archive's word",
                len(contents.datasets),
                len(contents.shards),
            )
        for key, why in contents.unreadable.items():
            log.warning("archive object %s is not believed, skipped: %s", key, why)
        if contents.unreadable and on_skipped is not None:
            on_skipped(contents.unreadable, len(contents.datasets))
        if contents.former:
            log.warning(
                "%d shard generations in the archive belong to datasets deleted before "
                "a namesake was made: not restored, and deleted from the archive",
                len(contents.former),
            )
        with self.master_keys.restoring() as forget_seals, self._env.write() as txn:
            # Again, in the transaction that restores: a dataset created while the
            # archive was scanned would otherwise be overwritten by older state.
            self._require_empty_catalog(txn)
            recovered, newest = restore_catalog(txn, self._catalog, contents)
            forget_seals(txn)  # the archive may be under an older key: a rotation reseals
            # Before the commit: a put numbers its generation in its own write
            # transaction, so none can take a restored generation's number.
            self._writer.skip_generations_through(newest)
            for name, dataset_settings in contents.datasets.items():
                self._policies.open_dataset(name, dataset_settings.policy)
        self.mover.wake()  # the older generations' deletes
        return recovered

    def _require_empty_catalog(self, txn: Any) -> None:
        if self._catalog.list_datasets(txn):
            raise FailedPrecondition(
                "the catalog is not empty (or datasets were created during the rebuild); "
                "rebuild only into a new store"
            )
        pending = self._catalog.journal_length(txn)
        if pending:
            # E.g. the deletes of a dataset deleted just before a crash: the archive
            # still holds its objects, and a rebuild would bring it back.
            raise FailedPrecondition(
                f"the journal holds {pending} entries the archive has not seen yet; "
                "let the mover finish them (Store.drain) before a rebuild"
            )

    def stats(self) -> StoreStats:
        """Counters of the hot tier, the journal and the read leases."""
        self._check_open()
        with self._env.read() as txn:
            hot = self._catalog.counter(txn, "hot_bytes")
            backlog = self._catalog.counter(txn, "backlog_bytes")
            journal = self._catalog.journal_length(txn)
            oldest = self._catalog.oldest_journaled_at(txn)
        waiting = self.promoter.pins.waiting_for_room()
        return StoreStats(
            hot_bytes=hot,
            hot_capacity_bytes=self.settings.hot_capacity_bytes,
            high_watermark_bytes=self.hot_room.high_watermark_bytes(),
            low_watermark_bytes=self.hot_room.low_watermark_bytes(),
            promotions=self.promoter.promotions,
            promotions_skipped=self.promoter.promotions_skipped,
            evictions=self.hot_room.evictions,
            backlog_bytes=backlog,
            journal_entries=journal,
            lmdb_file_bytes=self._env.file_size(),
            live_read_leases=self._reader.leases.live,
            slow_read_leases=self._reader.leases.older_than(self.settings.read_lease_warn_s),
            mover_error=self._archive_failure(),
            data_loss=(*self.mover.data_loss, *self._catalog.damaged_records()),
            quota_waiting_puts=self._writer.quota_waiting(),
            data_loss_unnamed=self._catalog.unreadable.unnamed(),
            # A clock stepped back reads 0, not a negative wait.
            oldest_journal_age_s=0.0 if oldest is None else max(0.0, time.time() - oldest),
            pins_waiting_for_room=waiting.shards,
            pins_waiting_for_room_bytes=waiting.bytes,
        )


def _check_same_dataset(name: str, first_generation: int, current: int | None) -> None:
    """Raise DatasetNotFound unless dataset ``name``, whose first generation is now
    ``current``, is the one a delete in several commits began on (``first_generation``):
    another caller may have deleted it between two commits, and made a namesake, whose
    shards are not this delete's."""
    if current != first_generation:
        raise DatasetNotFound(f"dataset {name!r} was deleted by another caller meanwhile")
