"""Operator steering of placement: pins, prefetches, and per-dataset usage with hit ratios.

Pinned shards stay in the hot tier whatever the placement policy says: eviction
never picks them, a read of a cold one promotes it without asking the policy, and
pinning a cold shard queues its promotion. A pin with a TTL runs out by itself
(the shard is then the policy's again); pinning again replaces the TTL.
Prefetching queues promotions of the named shards. Hit and miss counts are kept
in memory per dataset (since the process started); every read path counts through
:meth:`Placement.count_read`.

Thread safety: a :class:`Placement` is safe to share between threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tierstore.engine.catalog import Catalog
from tierstore.engine.promotion import Promoter
from tierstore.engine.records import ShardRecord
from tierstore.engine.sealing import stored_size
from tierstore.tiers.lmdb import LmdbEnvironment
from tierstore.types import check_pin_ttl

__all__ = ["DatasetUsage", "Placement"]


@dataclass(frozen=True, slots=True)
class DatasetUsage:
    """One dataset's footprint and read outcomes (hits and misses since start)."""

    shards: int
    #: the shards' own bytes.
    bytes: int
    hot_shards: int
    #: what the hot tier stores for them, each frame's checksum or AEAD tag included:
    #: what a quota and the hot tier's counters count (more than ``bytes`` when all hot).
    hot_bytes: int
    hits: int
    misses: int
    #: shards whose current generation the archive holds, and their frames' stored
    #: bytes there (as ``hot_bytes`` counts them; each object's small index aside).
    archived_shards: int = 0
    archived_bytes: int = 0
    #: the pending uploads of its shards and their stored bytes (as ``hot_bytes``
    #: counts them): its share of the node's backlog.
    backlog_shards: int = 0
    backlog_bytes: int = 0
    #: its shards whose pin holds, and their stored bytes (as ``hot_bytes`` counts
    #: them); of those, the ones that are cold (queued for promotion, or waiting for
    #: room or for the archive), and theirs.
    pinned_shards: int = 0
    pinned_bytes: int = 0
    pinned_cold_shards: int = 0
    pinned_cold_bytes: int = 0
    #: the stored bytes of its largest shard (as ``hot_bytes`` counts them; 0: none): a
    #: hot-tier quota below it keeps that shard cold for good.
    largest_shard_bytes: int = 0

    @property
    def hit_ratio(self) -> float:
        reads = self.hits + self.misses
        return self.hits / reads if reads else 0.0


class Placement:
    """Pins, prefetches and usage figures over one store's catalog."""

    def __init__(self, environment: LmdbEnvironment, catalog: Catalog, promoter: Promoter) -> None:
        self._env = environment
        self._catalog = catalog
        self._promoter = promoter
        self._lock = threading.Lock()
        self._reads: dict[str, list[int]] = {}
        #: hits and misses of datasets deleted since start: the node's totals keep them.
        self._retired = [0, 0]

    def count_read(self, dataset: str, hit: bool, reads: int = 1) -> None:
        """Count ``reads`` reads of ``dataset`` served from the hot tier (hit) or the archive."""
        with self._lock:
            counts = self._reads.setdefault(dataset, [0, 0])
            counts[0 if hit else 1] += reads

    def read_counts(self) -> dict[str, tuple[int, int]]:
        """Hits and misses since start (or since it was made) by dataset, from memory
        (datasets not read since, and only those, are absent). O(datasets)."""
        with self._lock:
            return {dataset: (hits, misses) for dataset, (hits, misses) in self._reads.items()}

    def read_totals(self) -> tuple[int, int]:
        """The node's hits and misses since start, deleted datasets' included: they
        never go down. O(datasets)."""
        with self._lock:
            hits, misses = self._retired
            for dataset_hits, dataset_misses in self._reads.values():
                hits += dataset_hits
                misses += dataset_misses
            return hits, misses

    def retire_reads(self, dataset: str) -> None:
        """A dataset of this name was deleted or made: its counts so far belong to a
        dataset that is gone, so they leave its name and stay only in the node's
        totals (a dataset made again under the name starts at zero)."""
        with self._lock:
            counts = self._reads.pop(dataset, None)
            if counts is not None:
                self._retired[0] += counts[0]
                self._retired[1] += counts[1]

    def pin(self, dataset: str, shard: str, ttl_s: float | None = None) -> int:
        """Pin a shard (for ``ttl_s`` seconds, or until unpinned); returns the bytes
        queued for promotion (pinning a cold one).

        Raises DatasetNotFound, ShardNotFound, InvalidArgument for a ``ttl_s`` that is
        not a number of seconds in (0, ten years] (:func:`~tierstore.types.check_pin_ttl`),
        HotTierFull for a cold shard larger than the hot tier takes, QuotaExceeded for
        one larger than its dataset's hot-tier quota (nothing pinned: it could never be
        made hot, and would be tried again, and skipped, for as long as the pin held).
        """
        ttl_s = check_pin_ttl(ttl_s)
        until = time.time() + ttl_s if ttl_s is not None else 0.0
        record, updated = self._set_pin(dataset, shard, True, until, refuse_too_large=True)
        if until:
            self._promoter.pins.note_pin_end(until)
        # A pin run out already (a TTL of a nanosecond) fetches nothing (a review).
        if not record.hot and (not until or until > time.time()):
            self._promoter.promote_pinned(updated)  # now, or by a later prefetch pass
            return stored_size(record)
        return 0

    def unpin(self, dataset: str, shard: str) -> bool:
        """Unpin a shard; returns whether a pin of a hot shard ended (eviction may take
        it now). Raises DatasetNotFound, ShardNotFound."""
        record, _ = self._set_pin(dataset, shard, False, 0.0)
        return record.hot and record.pin_holds(time.time())

    def _set_pin(
        self,
        dataset: str,
        shard: str,
        pinned: bool,
        until: float,
        *,
        refuse_too_large: bool = False,
    ) -> tuple[ShardRecord, ShardRecord]:
        """Set the shard's pin; returns its record before and after. With
        ``refuse_too_large``, a cold shard that could never be made hot is refused
        (:meth:`Promoter.refuse_too_large`), its pin left as it was."""
        with self._env.write() as txn:
            record = self._catalog.require_shard(txn, dataset, shard)
            if refuse_too_large and not record.hot:
                quota = self._catalog.require_dataset(txn, dataset).hot_quota_bytes
                self._promoter.refuse_too_large([record], "is not pinned", quota)
            updated = record.with_state(pinned=pinned, pinned_until=until)
            if updated != record:
                self._catalog.put_shard(txn, updated)
        return record, updated

    def prefetch(self, dataset: str, shards: Sequence[str]) -> int:
        """Queue promotion of every named shard that is not hot; returns how many shards
        were queued or were being promoted already (a name given twice counts once; one
        a full queue dropped does not count: a prefetch is a hint, asked again later).

        Unknown names and unreadable records are skipped (a prefetch is a hint).
        Raises DatasetNotFound; HotTierFull or QuotaExceeded (nothing queued) when a
        cold shard named is larger than the hot tier takes below its high watermark or
        than the dataset's hot-tier quota: it was said to be queued, and its promotion
        was skipped, so it never turned hot.
        """
        queued = 0
        with self._env.read() as txn:
            quota = self._catalog.require_dataset(txn, dataset).hot_quota_bytes
            records = [
                self._catalog.readable_shard(txn, dataset, name) for name in dict.fromkeys(shards)
            ]
        cold = [
            record
            for record in records
            if record is not None and not record.hot and record.archived
        ]
        self._promoter.refuse_too_large(
            cold, "nothing was queued: prefetch the others alone", quota
        )
        for record in cold:
            queued += self._promoter.promote(record, None)
        return queued

    def usage(self, dataset: str) -> DatasetUsage:
        """Shards and bytes of ``dataset`` in total, in the hot tier and in the archive,
        pinned (and of those, cold), its largest shard's stored size, with read counts.

        Raises DatasetNotFound. Walks the dataset's records: O(shards).
        """
        shards = size = hot_shards = hot_bytes = archived_shards = archived_bytes = 0
        pinned_shards = pinned_bytes = pinned_cold_shards = pinned_cold_bytes = largest = 0
        now = time.time()
        with self._env.read() as txn:
            self._catalog.require_dataset(txn, dataset)
            for record in self._catalog.iter_shards(txn, dataset):
                shards += 1
                size += record.size
                stored = stored_size(record)
                largest = max(largest, stored)
                if record.hot:
                    hot_shards += 1
                    hot_bytes += stored
                if record.archived:
                    archived_shards += 1
                    archived_bytes += stored
                if record.pin_holds(now):
                    pinned_shards += 1
                    pinned_bytes += stored
                    if not record.hot:
                        pinned_cold_shards += 1
                        pinned_cold_bytes += stored
            backlog_bytes, backlog_shards = self._catalog.dataset_backlog(txn, dataset)
        with self._lock:
            hits, misses = self._reads.get(dataset, (0, 0))
        return DatasetUsage(
            shards,
            size,
            hot_shards,
            hot_bytes,
            hits,
            misses,
            archived_shards,
            archived_bytes,
            backlog_shards,
            backlog_bytes,
            pinned_shards=pinned_shards,
            pinned_bytes=pinned_bytes,
            pinned_cold_shards=pinned_cold_shards,
            pinned_cold_bytes=pinned_cold_bytes,
            largest_shard_bytes=largest,
        )
