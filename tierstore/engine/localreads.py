"""The engine's part in local reads: readers that read the hot tier in place.

A reader on the server's own host may map the hot tier's LMDB environment
read-only in its own process (docs/local-reads.md); the service grants that
after authorization. What the engine provides for it:

* :meth:`LocalReadSupport.location` — where the environment lies, for the grant;
* :meth:`LocalReadSupport.data_key` — the data key of an encrypted shard generation,
  *without* recording a read (the reader reports its reads on its own);
* :meth:`LocalReadSupport.record` — reads a reader served itself, recorded as hot
  reads through the same :class:`~tierstore.engine.readlog.ReadLog` as every other
  read (statistics, hit counts, trace, placement policy); the trace and the policy
  hear of a few reads per shard generation reported, whatever its count
  (:meth:`~tierstore.engine.readlog.ReadLog.observe_reported`);
* :meth:`LocalReadSupport.clear_stale_readers` — frees LMDB reader-table slots left
  by reader processes that died: LMDB tells live readers by pid and reclaims their
  slots only when asked, and a stale slot pins an old snapshot (the file grows);
* :meth:`LocalReadSupport.reader_table` — how many of those slots are taken, so the
  service can keep some back for the server's own reads.

:class:`LocalReadCount` is shared with the client (it builds the reports).

Thread safety: a :class:`LocalReadSupport` is safe to share between threads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tierstore.engine.catalog import Catalog
from tierstore.engine.readlog import ReadLog
from tierstore.engine.sealing import ShardSealers
from tierstore.errors import FailedPrecondition
from tierstore.tiers.lmdb import LmdbEnvironment

__all__ = ["DataKey", "HotLocation", "LocalReadCount", "LocalReadSupport", "ReaderTable"]


@dataclass(frozen=True, slots=True)
class HotLocation:
    """Where the hot tier's LMDB environment is, and which data file it is."""

    path: Path
    map_size: int
    #: ``st_dev`` and ``st_ino`` of ``data.mdb``: a reader checks it opened this very file.
    device: int
    inode: int


@dataclass(frozen=True, slots=True)
class DataKey:
    """The data key and nonce prefix of one encrypted shard generation."""

    key: bytes = field(repr=False)
    nonce_prefix: bytes


@dataclass(frozen=True, slots=True)
class ReaderTable:
    """LMDB's reader table of the hot tier: ``used`` of its ``size`` slots are taken
    (by live transactions, by processes' idle cached ones, and by dead processes until
    they are cleared)."""

    used: int
    size: int


@dataclass(frozen=True, slots=True)
class LocalReadCount:
    """``count`` reads of generation ``generation`` of ``shard`` served in place."""

    shard: str
    generation: int
    count: int


class LocalReadSupport:
    """Grant material and read recording for local readers of one store."""

    def __init__(
        self,
        environment: LmdbEnvironment,
        catalog: Catalog,
        sealers: ShardSealers,
        reads: ReadLog,
    ) -> None:
        self._env = environment
        self._catalog = catalog
        self._sealers = sealers
        self._reads = reads

    def location(self) -> HotLocation:
        """The environment's directory (absolute), map size and data file identity."""
        path = self._env.path.resolve()
        stat = (path / "data.mdb").stat()
        return HotLocation(path, self._env.map_size, stat.st_dev, stat.st_ino)

    def data_key(self, dataset: str, shard: str, generation: int) -> DataKey:
        """The data key of ``generation`` of ``dataset/shard`` (names already validated).

        Only the current generation's key is handed out: a superseded generation's
        record (and so its wrapped key) is gone from the catalog, and the reader then
        reads through the service. Hand the key only to callers allowed to read the
        dataset. Raises DatasetNotFound, ShardNotFound, FailedPrecondition (not the
        current generation, or a plaintext shard), UnknownKeyId, IntegrityError,
        EncryptionUnavailable.
        """
        with self._env.read() as txn:
            record = self._catalog.require_shard(txn, dataset, shard)
        if record.generation != generation:
            raise FailedPrecondition(
                f"generation {generation} of {dataset}/{shard} is not current (the "
                f"current one is {record.generation})"
            )
        if record.envelope is None:
            raise FailedPrecondition(f"{dataset}/{shard} is not encrypted: it has no data key")
        cipher = self._sealers.sealer(record).cipher
        assert cipher is not None  # the record has an envelope
        return DataKey(cipher.key, record.envelope.nonce_prefix)

    def record(self, dataset: str, reads: Iterable[LocalReadCount]) -> int:
        """Record reads a local reader served from the hot tier; returns how many counted.

        Reads of a generation that is no longer current are dropped: statistics belong
        to one generation. Those of a shard evicted since count as the hits they were,
        but the placement policy (and the trace) hear only of shards still hot: a
        policy hears hits only of shards it holds. Entries of the same
        generation are added up first, then each is one
        :meth:`~tierstore.engine.readlog.ReadLog.observe_reported`: the trace and the
        policy hear of a bounded number of reads per entry, whatever its count. Costs
        one read transaction and O(entries) work. Raises DatasetNotFound.
        """
        counts: dict[tuple[str, int], int] = {}
        for read in reads:
            key = (read.shard, read.generation)
            counts[key] = counts.get(key, 0) + read.count
        with self._env.read() as txn:
            self._catalog.require_dataset(txn, dataset)
            found = [
                (self._catalog.readable_shard(txn, dataset, shard), generation, count)
                for (shard, generation), count in counts.items()
            ]
        recorded = 0
        for record, generation, count in found:
            if record is None or record.generation != generation:
                continue
            self._reads.observe_reported(record, count)
            recorded += count
        return recorded

    def clear_stale_readers(self, force: bool = False) -> int:
        """Free reader slots of dead processes (at most every few seconds unless
        ``force``; cheap otherwise). Returns how many slots were freed now."""
        return self._env.clear_dead_readers(force)

    def reader_table(self) -> ReaderTable:
        """How many slots of the reader table are taken, by every process on this host
        (read from the lock file: py-lmdb's own count leaked at every grant)."""
        return ReaderTable(*self._env.reader_slots())
