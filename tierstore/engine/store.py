"""The storage engine: datasets and shards over an LMDB hot tier and an archive tier.

Write path: validate → cut into frames → seal (checksum or AES-GCM) → one LMDB
transaction holding frames + catalog record + upload-journal entry, fsynced on
commit → acknowledge (``write-back``), or upload first and then acknowledge
(``write-through``). Read path: catalog → hot hit served from the LMDB map
(zero-copy for plaintext, see :mod:`tierstore.engine.reads`) or, on a miss,
parallel ranged GETs of just the needed frames from the archive, verified,
returned, and queued for promotion. Every read records an access.

Thread safety: a :class:`Store` is safe to share between threads of one process.
Fork safety: do not use a store across ``fork()``; open one per process.
"""

from __future__ import annotations

import builtins
import gc
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from tierstore import arrowio
from tierstore.config import EngineSettings
from tierstore.crypto import (
    TAG_BYTES,
    FrameCipher,
    MasterKeyProvider,
    new_data_key,
    new_nonce_prefix,
)
from tierstore.engine.access import AccessRecorder
from tierstore.engine.catalog import DB_NAMES, FRAMES_DB, Catalog
from tierstore.engine.ingest import FramedValue, frame_prepared, frame_value
from tierstore.engine.mover import Mover
from tierstore.engine.reads import FrameSlice, LeasePool, ShardData, plan_reads
from tierstore.engine.rebuild import scan_archive
from tierstore.engine.records import (
    Envelope,
    JournalOp,
    ShardRecord,
    archive_frames_key,
    frame_key,
)
from tierstore.errors import (
    AlreadyExists,
    ArchiveUnavailable,
    BacklogFull,
    DataLoss,
    DatasetNotFound,
    EncryptionUnavailable,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    InvalidRange,
    ShardNotFound,
    StoreClosed,
    Unavailable,
    WrongShardKind,
)
from tierstore.frames import CHECKSUM_BYTES, FrameSealer, shard_context
from tierstore.naming import validate_dataset_name, validate_shard_name
from tierstore.policy.base import EvictionPolicy
from tierstore.policy.lru import LruPolicy
from tierstore.tiers.base import Tier
from tierstore.tiers.lmdb import LmdbEnvironment, LmdbTier
from tierstore.types import DatasetSettings, Durability, ShardInfo, ShardKind

__all__ = ["Store", "StoreStats"]

log = logging.getLogger(__name__)

#: Reads retried when the shard is overwritten or deleted during a cold read.
_READ_ATTEMPTS = 4


def _overhead(record: ShardRecord) -> int:
    """Stored bytes per frame beyond the payload. Needs no key: deleting, evicting and
    sizing a shard must work when its data key cannot be unwrapped."""
    return TAG_BYTES if record.envelope is not None else CHECKSUM_BYTES


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A snapshot of the engine's state."""

    hot_bytes: int
    hot_capacity_bytes: int
    backlog_bytes: int
    journal_entries: int
    lmdb_file_bytes: int
    live_read_leases: int
    slow_read_leases: int
    mover_error: str | None
    #: shards the mover could not archive because their hot copy failed verification.
    data_loss: tuple[str, ...] = ()


class Store:
    """One node's storage engine. Use :meth:`close` (or ``with``) when done."""

    def __init__(
        self,
        settings: EngineSettings,
        archive: Tier,
        keyring: MasterKeyProvider | None = None,
        *,
        policy: EvictionPolicy | None = None,
        start_mover: bool = True,
    ) -> None:
        self.settings = settings
        self._archive = archive
        self._keyring = keyring
        self._env = LmdbEnvironment(
            settings.data_dir / "hot", settings.effective_map_size, DB_NAMES
        )
        self._frames = LmdbTier(self._env, FRAMES_DB)
        self._catalog = Catalog(self._env)
        self._access = AccessRecorder()
        self._leases = LeasePool(settings.max_read_leases)
        self._fetch_pool = ThreadPoolExecutor(
            max_workers=settings.cold_read_parallelism, thread_name_prefix="tierstore-fetch"
        )
        self._generation_lock = threading.Lock()
        with self._env.read() as txn:
            stored_next = self._catalog.counter(txn, "next_generation")
        self._next_generation = max(stored_next, time.time_ns() // 1000)
        self._closed = False
        self.mover = Mover(
            settings,
            self._env,
            self._catalog,
            self._frames,
            archive,
            self._access,
            policy or LruPolicy(),
            overhead=_overhead,
            verify=self._verify_stored,
        )
        if start_mover:
            self.mover.start()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop background work and close the hot tier. Pending uploads resume on next open."""
        if self._closed:
            return
        self._closed = True
        self.mover.stop()
        self._fetch_pool.shutdown(wait=True)
        if self._leases.live:
            gc.collect()  # leases end when their buffers are collected
        if self._leases.live:
            # Zero-copy buffers still point into the map: unmapping it would turn
            # them into dangling pointers. Leave it mapped until the process exits.
            log.warning(
                "store closed with %d live read leases; LMDB map left open", self._leases.live
            )
            return
        self._env.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")

    # Datasets.

    def create_dataset(self, name: str, settings: DatasetSettings | None = None) -> None:
        """Create a dataset. Raises InvalidName, AlreadyExists, EncryptionUnavailable."""
        self._check_open()
        validate_dataset_name(name)
        settings = settings or DatasetSettings()
        if settings.encrypted and self._keyring is None:
            raise EncryptionUnavailable(
                f"dataset {name!r} asks for encryption but no master key is configured"
            )
        with self._env.write() as txn:
            if self._catalog.get_dataset(txn, name) is not None:
                raise AlreadyExists(f"dataset {name!r} already exists")
            self._catalog.put_dataset(txn, name, settings)
            self._catalog.append_journal(txn, JournalOp("dataset", name))
        self.mover.wake()

    def get_dataset(self, name: str) -> DatasetSettings:
        """A dataset's settings. Raises InvalidName, DatasetNotFound."""
        self._check_open()
        validate_dataset_name(name)
        with self._env.read() as txn:
            return self._dataset_in(txn, name)

    def _dataset_in(self, txn: Any, name: str) -> DatasetSettings:
        settings = self._catalog.get_dataset(txn, name)
        if settings is None:
            raise DatasetNotFound(f"no dataset {name!r}")
        return settings

    def list_datasets(self) -> list[tuple[str, DatasetSettings]]:
        """All datasets, sorted by name."""
        self._check_open()
        with self._env.read() as txn:
            return self._catalog.list_datasets(txn)

    def delete_dataset(self, name: str, *, force: bool = False) -> None:
        """Delete a dataset; with shards in it only when ``force`` (they are deleted too)."""
        self._check_open()
        validate_dataset_name(name)
        with self._env.write() as txn:
            self._dataset_in(txn, name)
            records = list(self._catalog.iter_shards(txn, name))
            if records and not force:
                raise FailedPrecondition(
                    f"dataset {name!r} holds {len(records)} shards; delete them or use force"
                )
            for record in records:
                self._delete_in(txn, record)
            self._catalog.delete_dataset(txn, name)
            self._catalog.append_journal(txn, JournalOp("dataset", name))
        self.mover.wake()

    # Writes.

    def put(self, dataset: str, shard: str, value: Any) -> ShardInfo:
        """Store ``value`` as the new generation of ``dataset/shard``.

        ``value``: bytes-like (raw), a pyarrow Table or RecordBatch (arrow), or a
        numpy array / torch tensor (tensor). Returns once the dataset's durability
        is met. Raises InvalidName, DatasetNotFound, UnsupportedData, OversizeFrame,
        BacklogFull, HotTierFull, ArchiveUnavailable (write-through only: the shard
        is then committed locally and the mover keeps trying).
        """
        self._check_open()
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        return self._commit(dataset, shard, frame_value(value, self.settings.max_frame_bytes))

    def put_frames(
        self, dataset: str, shard: str, kind: ShardKind, frames: Sequence[bytes | memoryview]
    ) -> ShardInfo:
        """Store frames cut by a client (each at most ``max_frame_bytes``; Arrow ones validated).

        Raises as :meth:`put`, and MalformedArrow.
        """
        self._check_open()
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        return self._commit(
            dataset, shard, frame_prepared(kind, frames, self.settings.max_frame_bytes)
        )

    def _new_generation(self) -> int:
        with self._generation_lock:
            generation = self._next_generation
            self._next_generation += 1
            return generation

    def _commit(self, dataset: str, shard: str, framed: FramedValue) -> ShardInfo:
        settings = self.get_dataset(dataset)
        generation = self._new_generation()
        envelope = None
        if settings.encrypted:
            if self._keyring is None:
                raise EncryptionUnavailable(f"dataset {dataset!r} is encrypted; no master key")
            data_key = new_data_key()
            context = shard_context(dataset, shard, generation)
            envelope = Envelope(self._keyring.wrap(data_key, context), new_nonce_prefix())
        record = ShardRecord(
            dataset=dataset,
            name=shard,
            generation=generation,
            kind=framed.kind,
            frame_sizes=tuple(frame.nbytes for frame in framed.frames),
            created_at=time.time(),
            envelope=envelope,
        )
        sealer = self._sealer(record, data_key if envelope is not None else None)
        stored = [sealer.seal(index, frame) for index, frame in enumerate(framed.frames)]
        stored_total = sum(len(frame) for frame in stored)
        self.mover.make_room(stored_total)
        with self._env.write() as txn:
            self._dataset_in(txn, dataset)  # deleted meanwhile?
            backlog = self._catalog.counter(txn, "backlog_bytes")
            if backlog + stored_total > self.settings.backlog_cap_bytes and backlog > 0:
                raise BacklogFull(
                    f"{backlog} bytes wait for the archive "
                    f"(cap {self.settings.backlog_cap_bytes}); "
                    "retry when the mover has caught up"
                )
            previous = self._catalog.get_shard(txn, dataset, shard)
            if previous is not None:
                self._delete_in(txn, previous)
            for index, frame in enumerate(stored):
                self._frames.put_in(txn, frame_key(generation, index), frame)
            self._catalog.put_shard(txn, record)
            self._catalog.add_counter(txn, "hot_bytes", stored_total)
            seq = self._catalog.append_journal(
                txn, JournalOp("upload", dataset, shard, generation, stored_total)
            )
            if self._catalog.counter(txn, "next_generation") <= generation:
                self._catalog.set_counter(txn, "next_generation", generation + 1)
        if settings.durability is Durability.WRITE_THROUGH:
            if not self.mover.run_entry(seq):
                raise ArchiveUnavailable(
                    f"{dataset}/{shard} is committed locally but the archive did not take it "
                    f"({self.mover.last_error}); the mover keeps retrying"
                )
            record = record.with_state(archived=True)
        else:
            self.mover.wake()
        return record.to_info()

    def _delete_in(self, txn: Any, record: ShardRecord) -> None:
        if record.hot:
            for index in range(len(record.frame_sizes)):
                self._frames.delete_in(txn, frame_key(record.generation, index))
            self._catalog.add_counter(
                txn, "hot_bytes", -sum(record.stored_sizes(_overhead(record)))
            )
        self._catalog.delete_shard(txn, record.dataset, record.name)
        self._catalog.append_journal(
            txn, JournalOp("delete", record.dataset, record.name, record.generation)
        )

    def delete(self, dataset: str, shard: str) -> None:
        """Delete a shard (every tier). Raises InvalidName, DatasetNotFound, ShardNotFound."""
        self._check_open()
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        with self._env.write() as txn:
            self._dataset_in(txn, dataset)
            record = self._catalog.get_shard(txn, dataset, shard)
            if record is None:
                raise ShardNotFound(f"no shard {shard!r} in dataset {dataset!r}")
            self._delete_in(txn, record)
        self.mover.wake()

    # Metadata.

    def stat(self, dataset: str, shard: str) -> ShardInfo:
        """What the catalog knows of a shard. Raises InvalidName, DatasetNotFound, ShardNotFound."""
        self._check_open()
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        # Under the flush lock: a flush in progress has counts in neither place.
        with self._access.flush_lock, self._env.read() as txn:
            record = self._record_in(txn, dataset, shard)
            count, last = self._catalog.get_access(txn, dataset, shard)
            extra_count, extra_last = self._access.pending(dataset, shard, record.generation)
        return record.to_info(count + extra_count, max(last, extra_last))

    def _record_in(self, txn: Any, dataset: str, shard: str) -> ShardRecord:
        self._dataset_in(txn, dataset)
        record = self._catalog.get_shard(txn, dataset, shard)
        if record is None:
            raise ShardNotFound(f"no shard {shard!r} in dataset {dataset!r}")
        return record

    def list(
        self, dataset: str, prefix: str = "", start_after: str | None = None, limit: int = 1000
    ) -> tuple[builtins.list[ShardInfo], str | None]:
        """Up to ``limit`` shards whose names start with ``prefix``, after ``start_after``.

        Returns the page and the ``start_after`` of the next page (``None`` at the end).
        """
        self._check_open()
        validate_dataset_name(dataset)
        limit = max(1, limit)
        with self._env.read() as txn:
            self._dataset_in(txn, dataset)
            page: builtins.list[ShardInfo] = []
            for record in self._catalog.iter_shards(txn, dataset, prefix, start_after):
                if len(page) == limit:
                    return page, page[-1].name
                page.append(record.to_info())
        return page, None

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
        self._check_open()
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        for _ in range(_READ_ATTEMPTS):
            txn = self._env.begin_read()
            try:
                record = self._record_in(txn, dataset, shard)
                slices = plan_reads(record.frame_sizes, byte_range, frame_range)
                sealer = self._sealer(record)
                if record.hot:
                    frames = self._read_hot(txn, record, slices, sealer)
                    txn = None  # owned by a lease now, or already ended
                    source = "hot"
            finally:
                if txn is not None:
                    txn.abort()
            if record.hot:
                break
            try:
                frames = self._read_cold(record, slices, sealer)
            except IntegrityError:
                # A cold read runs outside any snapshot: if the shard was overwritten or
                # deleted meanwhile, the mover may have removed this generation's archive
                # object. That is no data loss: read whatever the catalog holds now.
                if not self._superseded(record):
                    raise
                continue
            source = "archive"
            break
        else:
            raise Unavailable(f"{dataset}/{shard} kept changing during the read; retry")
        self._access.record(dataset, shard, record.generation)
        first = slices[0].index if slices else 0
        return ShardData(record.to_info(), first, frames, source)

    def _read_hot(
        self, txn: Any, record: ShardRecord, slices: Sequence[FrameSlice], sealer: FrameSealer
    ) -> tuple[pa.Buffer, ...]:
        """Verified hot frames. Takes ownership of ``txn`` (leases it or aborts it)."""
        lease = None if sealer.cipher is not None else self._leases.try_open(txn)
        try:
            out: list[pa.Buffer] = []
            for piece in slices:
                view = self._frames.view_in(txn, frame_key(record.generation, piece.index))
                if view is None:
                    raise IntegrityError(
                        f"hot frame {piece.index} of {record.dataset}/{record.name} is missing"
                    )
                out.append(self._open_frame(sealer, piece, view, lease))
            return tuple(out)
        finally:
            if lease is None:
                txn.abort()

    def _open_frame(
        self, sealer: FrameSealer, piece: FrameSlice, stored: memoryview, lease: Any
    ) -> pa.Buffer:
        if sealer.cipher is None:
            payload = sealer.open(piece.index, stored)[piece.start : piece.stop]
            if lease is not None:
                return lease.keep(payload)
            return pa.py_buffer(bytes(payload))
        out = pa.allocate_buffer(len(stored) - sealer.overhead)  # 64-byte aligned
        sealer.open_into(piece.index, stored, memoryview(out))
        if piece.start == 0 and piece.stop == out.size:
            return out
        return out.slice(piece.start, piece.stop - piece.start)

    def _read_cold(
        self, record: ShardRecord, slices: Sequence[FrameSlice], sealer: FrameSealer
    ) -> tuple[pa.Buffer, ...]:
        if not record.archived:
            raise IntegrityError(
                f"{record.dataset}/{record.name} is neither in the hot tier nor archived"
            )
        stored_sizes = record.stored_sizes(sealer.overhead)
        offsets = [0]
        for size in stored_sizes:
            offsets.append(offsets[-1] + size)
        key = archive_frames_key(record.dataset, record.generation)

        def fetch(piece: FrameSlice) -> memoryview:
            try:
                blob = self._archive.get(key, (offsets[piece.index], stored_sizes[piece.index]))
            except InvalidRange as exc:  # the frame starts past the end of the object
                raise IntegrityError(
                    f"archive object {key} is truncated before frame {piece.index}"
                ) from exc
            if blob is None:
                raise IntegrityError(f"archive object {key} is missing")
            if len(blob) != stored_sizes[piece.index]:
                raise IntegrityError(
                    f"archive object {key} is truncated at frame {piece.index} "
                    f"({len(blob)} of {stored_sizes[piece.index]} bytes)"
                )
            return blob

        blobs = list(self._fetch_pool.map(fetch, slices))
        frames = tuple(
            self._open_frame(sealer, piece, blob, None)
            if sealer.cipher is not None
            else pa.py_buffer(sealer.open(piece.index, blob)[piece.start : piece.stop])
            for piece, blob in zip(slices, blobs, strict=True)
        )
        whole = len(slices) == len(record.frame_sizes) and all(
            p.start == 0 and p.stop == record.frame_sizes[p.index] for p in slices
        )
        self.mover.promote(record, blobs if whole else None)
        return frames

    def _superseded(self, record: ShardRecord) -> bool:
        """Whether the catalog no longer holds ``record``'s generation of its shard."""
        with self._env.read() as txn:
            current = self._catalog.get_shard(txn, record.dataset, record.name)
        return current is None or current.generation != record.generation

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
        try:
            target = memoryview(out).cast("B")
        except TypeError as exc:
            raise InvalidArgument(f"out must be a C-contiguous buffer: {exc}") from exc
        if target.readonly:
            raise InvalidArgument("out is a read-only buffer")
        try:
            data = self.get(dataset, shard, byte_range=byte_range)
        except DataLoss:
            target[:] = bytes(target.nbytes)
            raise
        if data.nbytes > target.nbytes:
            raise InvalidArgument(
                f"the read is {data.nbytes} bytes but out holds only {target.nbytes}"
            )
        position = 0
        for frame in data.frames:
            # pyarrow exports some buffers as signed bytes ('b'): copy them as unsigned.
            target[position : position + frame.size] = memoryview(frame).cast("B")
            position += frame.size
        return position

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
        if not arrowio.is_tensor_schema(table.schema):
            raise WrongShardKind(f"{dataset}/{shard} holds a table, not a tensor")
        return arrowio.table_to_tensor(table)

    # Placement and administration.

    def evict(self, dataset: str, shard: str) -> int:
        """Drop a shard from the hot tier if the archive holds it; returns bytes freed.

        Raises InvalidName, DatasetNotFound, ShardNotFound.
        """
        self._check_open()
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        with self._env.read() as txn:
            self._record_in(txn, dataset, shard)
        return self.mover.evict_shard(dataset, shard)

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait (polling) until the upload journal is empty; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.mover.pending() == 0:
                return True
            self.mover.wake()
            time.sleep(0.02)
        return self.mover.pending() == 0

    def rotate_master_key(self) -> int:
        """Rewrap every data key not under the keyring's current master key.

        Frames are never rewritten: only catalog records and archive manifests.
        Returns how many generations were rewrapped.
        """
        self._check_open()
        if self._keyring is None:
            raise EncryptionUnavailable("no master key is configured")
        current = self._keyring.current_key_id
        rewrapped = 0
        with self._env.write() as txn:
            for record in list(self._catalog.iter_shards(txn)):
                if record.envelope is None or record.envelope.wrapped.key_id == current:
                    continue
                context = shard_context(record.dataset, record.name, record.generation)
                data_key = self._keyring.unwrap(record.envelope.wrapped, context)
                envelope = Envelope(
                    self._keyring.wrap(data_key, context), record.envelope.nonce_prefix
                )
                self._catalog.put_shard(txn, record.with_state(envelope=envelope))
                self._catalog.append_journal(
                    txn, JournalOp("manifest", record.dataset, record.name, record.generation)
                )
                rewrapped += 1
        self.mover.wake()
        return rewrapped

    def rebuild_from_archive(self) -> int:
        """Fill an empty catalog from the archive alone; returns the shards recovered.

        Every dataset and the newest generation of every shard come back as
        archived and not hot (reads fetch and promote them). Raises
        FailedPrecondition if the catalog is not empty, ArchiveUnavailable if the
        archive cannot be listed.
        """
        self._check_open()
        with self._env.read() as txn:
            if self._catalog.list_datasets(txn):
                raise FailedPrecondition("the catalog is not empty; rebuild only into a new store")
        contents = scan_archive(self._archive)
        for key in contents.unreadable:
            log.warning("archive object %s did not decode; skipped", key)
        with self._env.write() as txn:
            for name, settings in contents.datasets.items():
                self._catalog.put_dataset(txn, name, settings)
            for record in contents.shards.values():
                if record.dataset in contents.datasets:
                    self._catalog.put_shard(txn, record)
            newest = max((r.generation for r in contents.shards.values()), default=0)
            if self._catalog.counter(txn, "next_generation") <= newest:
                self._catalog.set_counter(txn, "next_generation", newest + 1)
        with self._generation_lock:
            self._next_generation = max(self._next_generation, newest + 1)
        return sum(1 for r in contents.shards.values() if r.dataset in contents.datasets)

    def stats(self) -> StoreStats:
        """Counters of the hot tier, the journal and the read leases."""
        self._check_open()
        with self._env.read() as txn:
            hot = self._catalog.counter(txn, "hot_bytes")
            backlog = self._catalog.counter(txn, "backlog_bytes")
            journal = self._catalog.journal_length(txn)
        return StoreStats(
            hot_bytes=hot,
            hot_capacity_bytes=self.settings.hot_capacity_bytes,
            backlog_bytes=backlog,
            journal_entries=journal,
            lmdb_file_bytes=self._env.file_size(),
            live_read_leases=self._leases.live,
            slow_read_leases=self._leases.older_than(self.settings.read_lease_warn_s),
            mover_error=self.mover.last_error,
            data_loss=tuple(self.mover.data_loss),
        )

    # Sealing.

    def _sealer(self, record: ShardRecord, data_key: bytes | None = None) -> FrameSealer:
        context = shard_context(record.dataset, record.name, record.generation)
        if record.envelope is None:
            return FrameSealer(context, len(record.frame_sizes))
        if data_key is None:
            if self._keyring is None:
                raise EncryptionUnavailable(
                    f"{record.dataset}/{record.name} is encrypted but no master key is configured"
                )
            data_key = self._keyring.unwrap(record.envelope.wrapped, context)
        cipher = FrameCipher(data_key, record.envelope.nonce_prefix)
        return FrameSealer(context, len(record.frame_sizes), cipher)

    def _verify_stored(self, record: ShardRecord, index: int, stored: memoryview) -> None:
        sealer = self._sealer(record)
        if sealer.cipher is None:
            sealer.open(index, stored)
        else:
            sealer.open_into(index, stored, memoryview(bytearray(len(stored) - sealer.overhead)))
