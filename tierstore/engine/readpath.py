"""The read path: a shard's frames, from the hot tier or, on a miss, from the archive.

catalog → hot hit served from the LMDB map (zero-copy for plaintext under a read
lease, see :mod:`tierstore.engine.reads`) or, on a miss, parallel ranged GETs of
just the needed frames from the archive, verified, returned, and queued for
promotion if the placement policy admits the shard. Every read is recorded
(:mod:`tierstore.engine.readlog`). Nothing unverified is ever returned.

A cold read runs outside any LMDB snapshot, so the shard may be overwritten or
deleted while its frames are fetched; the read then starts over from the
catalog (a few times, then :class:`Unavailable`).

Thread safety: a :class:`ShardReader` is safe to share between threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from tierstore.engine.archived import ArchivedFrames, fetch_each
from tierstore.engine.catalog import Catalog
from tierstore.engine.fetchpool import FetchPool
from tierstore.engine.promotion import Promoter
from tierstore.engine.readlog import ReadLog
from tierstore.engine.reads import FrameSlice, LeasePool, ShardData, plan_reads
from tierstore.engine.records import ShardRecord, frame_key
from tierstore.engine.sealing import ShardSealers
from tierstore.errors import IntegrityError, InvalidArgument, Unavailable
from tierstore.frames import FrameSealer
from tierstore.tiers.base import Tier
from tierstore.tiers.lmdb import LmdbEnvironment, LmdbTier
from tierstore.verifyahead import VerifyAhead

__all__ = ["ShardReader", "copy_frames_into", "writable_view"]

#: Reads retried when the shard is overwritten or deleted during a cold read.
_READ_ATTEMPTS = 4


class ShardReader:
    """Reads verified frames of shards for a store; owns its read leases and fetch pool."""

    def __init__(
        self,
        environment: LmdbEnvironment,
        catalog: Catalog,
        frames: LmdbTier,
        archive: Tier,
        sealers: ShardSealers,
        reads: ReadLog,
        promoter: Promoter,
        *,
        max_read_leases: int,
        cold_read_parallelism: int,
    ) -> None:
        self._env = environment
        self._catalog = catalog
        self._frames = frames
        self._archive = archive
        self._sealers = sealers
        self._reads = reads
        self._promoter = promoter
        self.leases = LeasePool(max_read_leases, environment.end_read)
        #: parallel ranged GETs of cold frames, shared with the store's sealed reads
        #: (a close does not wait for them: see fetchpool).
        self.fetch_pool = FetchPool(cold_read_parallelism, "tierstore-fetch")
        #: checks the next frames of streaming hot reads (:meth:`iter_frames`) ahead of
        #: their consumers; one thread, since a reader that finds it busy verifies itself.
        self.verify_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tierstore-verify")

    def close(self) -> None:
        """Stop the fetch and verify pools: archive fetches in flight fail with
        StoreClosed, not waited for (a frozen archive holds each for minutes); hot
        frames being verified are. Leases may outlive it."""
        self.fetch_pool.shutdown()
        self.verify_pool.shutdown(wait=True, cancel_futures=True)

    def read(
        self,
        dataset: str,
        shard: str,
        byte_range: tuple[int, int] | None,
        frame_range: tuple[int, int] | None,
    ) -> ShardData:
        """Read a shard (names already validated): whole, a byte range or a frame range.

        Raises DatasetNotFound, ShardNotFound, InvalidRange, IntegrityError,
        ArchiveUnavailable, UnknownKeyId, EncryptionUnavailable, and Unavailable
        when the shard kept changing during the read.
        """
        whole: list[memoryview] | None = None  # a cold read's stored frames, if all read
        for _ in range(_READ_ATTEMPTS):
            txn = self._env.begin_read()
            try:
                record = self._catalog.require_shard(txn, dataset, shard)
                slices = plan_reads(record.frame_sizes, byte_range, frame_range)
                sealer = self._sealers.sealer(record)
                if record.hot:
                    # _read_hot owns it from here (leases or ends it), whether it returns
                    # or raises: ended here too, a failed check ended it twice, and the
                    # count close() waits on went below zero (close unmapped live reads).
                    owned, txn = txn, None
                    frames = self._read_hot(owned, record, slices, sealer)
                    source = "hot"
            finally:
                if txn is not None:
                    self._env.end_read(txn)
            if record.hot:
                break
            try:
                frames, whole = self._read_cold(record, slices, sealer)
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
        if self._reads.observe(record, record.hot) and not record.hot:
            self._promoter.promote(record, whole)
        first = slices[0].index if slices else 0
        return ShardData(record.to_info(time.time()), first, frames, source)

    def iter_frames(
        self, dataset: str, shard: str, frame_range: tuple[int, int] | None
    ) -> Iterator[pa.Buffer]:
        """Verified frames one at a time; none is handed out before it is verified.

        For a plaintext hot shard the next frames are verified on a helper thread
        while the consumer reads the current one (:mod:`tierstore.verifyahead`),
        and the frames are zero-copy views under one read lease (held while the
        iterator or any frame is alive). Encrypted and cold shards are read as by
        :meth:`read`. Raises as :meth:`read`; a frame failing its check raises
        IntegrityError when the consumer reaches it.
        """
        txn = self._env.begin_read()
        try:
            record = self._catalog.require_shard(txn, dataset, shard)
            slices = plan_reads(record.frame_sizes, None, frame_range)
            sealer = self._sealers.sealer(record)
            lease = self.leases.try_open(txn) if record.hot and sealer.cipher is None else None
        except BaseException:
            self._env.end_read(txn)
            raise
        if lease is None:
            self._env.end_read(txn)
            yield from self.read(dataset, shard, None, frame_range).frames
            return
        self._reads.observe(record, True)

        def verify(k: int, stored: memoryview) -> memoryview:
            piece = slices[k]
            return sealer.open(piece.index, stored)[piece.start : piece.stop]

        lookup = self._frame_lookup(lease.txn, record, slices)
        for payload in VerifyAhead[memoryview](len(slices)).frames(
            self.verify_pool, lookup, verify
        ):
            yield lease.keep(payload)

    def _frame_lookup(
        self, txn: Any, record: ShardRecord, slices: Sequence[FrameSlice]
    ) -> Callable[[int], memoryview]:
        """``lookup(k)``: the stored bytes of the ``k``-th slice's hot frame, in ``txn``."""

        def lookup(k: int) -> memoryview:
            index = slices[k].index
            view = self._frames.view_in(txn, frame_key(record.generation, index))
            if view is None:
                raise IntegrityError(
                    f"hot frame {index} of {record.dataset}/{record.name} is missing"
                )
            return view

        return lookup

    def _read_hot(
        self, txn: Any, record: ShardRecord, slices: Sequence[FrameSlice], sealer: FrameSealer
    ) -> tuple[pa.Buffer, ...]:
        """Verified (decrypted) hot frames, checked on two threads (see
        :mod:`tierstore.verifyahead`). Takes ownership of ``txn`` (leases it or
        aborts it)."""
        lease = None if sealer.cipher is not None else self.leases.try_open(txn)
        try:
            lookup = self._frame_lookup(txn, record, slices)
            ahead = VerifyAhead[pa.Buffer](len(slices))
            return tuple(
                ahead.frames(
                    self.verify_pool,
                    lookup,
                    lambda k, stored: self._open_frame(sealer, slices[k], stored, lease),
                    collect=True,
                )
            )
        finally:
            if lease is None:
                self._env.end_read(txn)

    def _open_frame(
        self, sealer: FrameSealer, piece: FrameSlice, stored: memoryview, lease: Any
    ) -> pa.Buffer:
        if sealer.cipher is None:
            payload = sealer.open(piece.index, stored)[piece.start : piece.stop]
            if lease is not None:
                return lease.keep(payload)
            return pa.py_buffer(bytes(payload))
        out = pa.allocate_buffer(sealer.payload_size(piece.index, stored))  # 64-byte aligned
        sealer.open_into(piece.index, stored, memoryview(out))
        if piece.start == 0 and piece.stop == out.size:
            return out
        return out.slice(piece.start, piece.stop - piece.start)

    def _read_cold(
        self, record: ShardRecord, slices: Sequence[FrameSlice], sealer: FrameSealer
    ) -> tuple[tuple[pa.Buffer, ...], list[memoryview] | None]:
        """Verified frames from the archive, and every stored frame when the read
        covered the whole shard (a promotion then needs no second fetch)."""
        if not record.archived:
            raise IntegrityError(
                f"{record.dataset}/{record.name} is neither in the hot tier nor archived"
            )
        fetcher = ArchivedFrames(self._archive, record)
        blobs = fetch_each(self.fetch_pool, fetcher.fetch, [piece.index for piece in slices])
        frames = tuple(
            self._open_frame(sealer, piece, blob, None)
            if sealer.cipher is not None
            else pa.py_buffer(sealer.open(piece.index, blob)[piece.start : piece.stop])
            for piece, blob in zip(slices, blobs, strict=True)
        )
        whole = len(slices) == len(record.frame_sizes) and all(
            p.start == 0 and p.stop == record.frame_sizes[p.index] for p in slices
        )
        return frames, blobs if whole else None

    def _superseded(self, record: ShardRecord) -> bool:
        """Whether the catalog no longer holds ``record``'s generation of its shard."""
        with self._env.read() as txn:
            return not self._catalog.holds(txn, record)


def writable_view(out: memoryview) -> memoryview:
    """``out`` as a writable, C-contiguous byte view. Raises InvalidArgument otherwise."""
    try:
        target = memoryview(out).cast("B")
    except TypeError as exc:
        raise InvalidArgument(f"out must be a C-contiguous buffer: {exc}") from exc
    if target.readonly:
        raise InvalidArgument("out is a read-only buffer")
    return target


def copy_frames_into(data: ShardData, target: memoryview) -> int:
    """Copy ``data``'s frames back to back into ``target``; returns the bytes written.

    Raises InvalidArgument, writing nothing, when ``target`` is too small.
    """
    if data.nbytes > target.nbytes:
        raise InvalidArgument(f"the read is {data.nbytes} bytes but out holds only {target.nbytes}")
    position = 0
    for frame in data.frames:
        # pyarrow exports some buffers as signed bytes ('b'): copy them as unsigned.
        target[position : position + frame.size] = memoryview(frame).cast("B")
        position += frame.size
    return position
