"""Reads that hand out frames as stored, for a reader that verifies and decrypts them itself.

The service streams shards this way: the server sends each stored frame (payload
and checksum, or ciphertext and tag) and, in the header, what the client needs to
open them — the generation's identity and, for an encrypted shard, its data key
(only to callers the server authorized to read it). Readers decrypt, so the
shared server spends no CPU on it and the one copy lands where the data is used;
the client verifies every frame, so nothing the server or the wire damaged is
ever returned.

Frames are read lazily, one per short LMDB transaction, as the consumer asks for
them: a slow consumer holds one frame and no LMDB pages. A frame evicted while a
stream is under way is fetched from the archive instead. Cold frames are fetched
with a bounded read-ahead of parallel ranged GETs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Protocol

from tierstore.engine.archived import ArchivedFrames, fetch_result, submit_fetch
from tierstore.engine.catalog import Catalog
from tierstore.engine.promotion import Promoter
from tierstore.engine.readlog import ReadLog
from tierstore.engine.reads import FrameSlice, plan_reads
from tierstore.engine.records import ShardRecord, frame_key
from tierstore.engine.sealing import ShardSealers
from tierstore.errors import IntegrityError, Unavailable
from tierstore.tiers.base import Tier
from tierstore.tiers.lmdb import LmdbEnvironment, LmdbTier
from tierstore.tiers.pages import release_pages
from tierstore.types import ShardInfo

__all__ = ["ArchiveUse", "SealedRead", "SealedReader"]

#: Cold frames fetched ahead of the consumer.
_READ_AHEAD = 8
#: How long a whole-shard read of a shard being promoted waits for the promotion
#: before it reads the archive itself (a second fetch, but a bounded first byte).
_PROMOTION_WAIT_S = 30.0


class ArchiveUse(Protocol):
    """Told when a stream starts and stops waiting on the archive (the server bounds
    how many calls may: :mod:`tierstore.server.archivecalls`)."""

    def take(self) -> None:
        """Before the stream waits on the archive; a no-op if it already does. What it
        raises ends the stream."""

    def give_back(self) -> None:
        """Once the stream no longer waits on the archive; a no-op if it does not."""


class _NoArchiveUse:
    def take(self) -> None:
        pass

    def give_back(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class SealedRead:
    """An opened read: what the reader needs to open the frames, and the frames themselves."""

    info: ShardInfo
    context: bytes
    frame_count: int
    data_key: bytes | None = field(repr=False)  # never in a traceback's locals
    nonce_prefix: bytes | None
    slices: tuple[FrameSlice, ...]
    _reader: SealedReader = field(repr=False)
    _record: ShardRecord = field(repr=False)
    #: the policy admitted this whole-shard miss: the stream promotes it, then reads hot.
    _promote: bool = field(default=False, repr=False)

    @property
    def first_frame(self) -> int:
        return self.slices[0].index if self.slices else 0

    def frames(self, archive_use: ArchiveUse | None = None) -> Iterator[tuple[int, bytes]]:
        """``(index, stored bytes)`` of each selected frame, in order, read as consumed;
        ``archive_use`` is told while the stream waits on the archive (from its first
        archive read, or promotion, until it reads hot or ends).

        Raises IntegrityError when a frame is gone from both tiers, Unavailable when the
        shard was overwritten or deleted during the stream, ArchiveUnavailable, and what
        ``archive_use.take`` raises.
        """
        return self._reader.stream(self._record, self.slices, self._promote, archive_use)

    def abandon(self) -> None:
        """Say that :meth:`frames` will not be read (the caller went away). A miss the
        policy admitted, which the stream would have promoted, is promoted in the
        background instead; a caller who retries then finds it hot or on its way."""
        if self._promote:
            self._reader.promote_later(self._record)


class SealedReader:
    """Opens sealed reads for a store."""

    def __init__(
        self,
        environment: LmdbEnvironment,
        catalog: Catalog,
        frames: LmdbTier,
        archive: Tier,
        sealers: ShardSealers,
        reads: ReadLog,
        promoter: Promoter,
        fetch_pool: Executor,
    ) -> None:
        self._env = environment
        self._catalog = catalog
        self._frames = frames
        self._archive = archive
        self._sealers = sealers
        self._reads = reads
        self._promoter = promoter
        self._pool = fetch_pool

    def open(
        self,
        dataset: str,
        shard: str,
        byte_range: tuple[int, int] | None,
        frame_range: tuple[int, int] | None,
    ) -> SealedRead:
        """Plan a read (names already validated). Raises DatasetNotFound, ShardNotFound,
        InvalidRange, UnknownKeyId, IntegrityError (the data key does not unwrap)."""
        with self._env.read() as txn:
            record = self._catalog.require_shard(txn, dataset, shard)
        slices = tuple(plan_reads(record.frame_sizes, byte_range, frame_range))
        sealer = self._sealers.sealer(record)
        promote = False
        if self._reads.observe(record, record.hot) and not record.hot:
            if len(slices) == len(record.frame_sizes):
                promote = True  # the stream waits for it: it runs on the reader's thread
            else:
                self._promoter.promote(record, None)  # fetched whole in the background
        return SealedRead(
            info=record.to_info(time.time()),
            context=sealer.context,
            frame_count=sealer.frame_count,
            data_key=None if sealer.cipher is None else sealer.cipher.key,
            nonce_prefix=None if record.envelope is None else record.envelope.nonce_prefix,
            slices=slices,
            _reader=self,
            _record=record,
            _promote=promote,
        )

    def promote_later(self, record: ShardRecord) -> None:
        """Queue ``record``'s promotion for the promoter's threads."""
        self._promoter.promote(record, None)

    def stream(
        self,
        record: ShardRecord,
        slices: tuple[FrameSlice, ...],
        promote: bool = False,
        archive_use: ArchiveUse | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        """The stored bytes of ``slices``' frames, hot where present, else from the archive.

        A whole-shard read of a cold shard first promotes it when ``promote`` (the
        policy admitted the miss), on this thread so that it runs at the reader's
        priority, or waits for a promotion already in flight (a prefetch), and then
        reads hot: the archive is read once, not twice. When ``promotion_threads``
        readers promote already, the promotion is queued instead and this read streams
        from the archive at once. Ranged reads do not wait. ``archive_use`` is told
        while this stream waits on the archive (see :meth:`SealedRead.frames`).
        """
        use = archive_use or _NoArchiveUse()
        try:
            yield from self._stream(record, slices, promote, use)
        finally:
            use.give_back()

    def _stream(
        self,
        record: ShardRecord,
        slices: tuple[FrameSlice, ...],
        promote: bool,
        use: ArchiveUse,
    ) -> Iterator[tuple[int, bytes]]:
        whole_cold = not record.hot and len(slices) == len(record.frame_sizes)
        if whole_cold:
            use.take()
            if not promote or self._promoter.promote_here(record, self._pool):
                record = self._after_promotion(record)
            if record.hot:
                use.give_back()  # promoted: the rest is read hot
        archived = ArchivedFrames(self._archive, record)

        def fetch(index: int) -> bytes:
            try:
                return bytes(archived.fetch(index))
            except IntegrityError:
                self._still_current(record)  # a superseded generation is no data loss
                raise

        # Read-ahead is for the archive only: a hot frame is read when the consumer
        # asks for it, so a slow consumer holds one frame, not a window of them.
        ahead: deque[tuple[int, Future[bytes] | None]] = deque()
        pending = iter(slices)
        while True:
            while len(ahead) < _READ_AHEAD:
                piece = next(pending, None)
                if piece is None:
                    break
                cold = not record.hot
                if cold:
                    use.take()
                future = submit_fetch(self._pool, fetch, piece.index) if cold else None
                ahead.append((piece.index, future))
                if not cold:
                    break  # stop at a hot frame: nothing is read ahead of it
            if not ahead:
                return
            index, future = ahead.popleft()
            if future is not None:
                yield index, fetch_result(future)
                continue
            hot = self._hot_frame(record, index)
            if hot is None:  # evicted since the stream began
                if not record.archived:
                    # Archived since the stream began, then evicted? Only eviction of
                    # an archived shard drops hot frames of a current generation.
                    record = self._still_current(record)
                    if not record.archived:
                        raise IntegrityError(
                            f"frame {index} of {record.dataset}/{record.name} is in no tier"
                        )
                    # The archived record holds the digests the upload took: the frames
                    # fetched from here on are checked against them (fetch uses this).
                    archived = ArchivedFrames(self._archive, record)
                use.take()
                hot = fetch(index)
            yield index, hot

    def _after_promotion(self, record: ShardRecord) -> ShardRecord:
        """``record`` as the catalog has it once any promotion fetching it is over (hot
        if it succeeded; a queued cache fill is not waited for); ``record`` itself if
        it is still promoting after ``_PROMOTION_WAIT_S`` or was superseded."""
        if self._promoter.is_fetching(record) and not self._promoter.wait_promoted(
            record, _PROMOTION_WAIT_S
        ):
            return record
        with self._env.read() as txn:
            current = self._catalog.get_shard(txn, record.dataset, record.name)
        if current is None or current.generation != record.generation:
            return record
        return current

    def _hot_frame(self, record: ShardRecord, index: int) -> bytes | None:
        with self._env.read() as txn:
            view = self._frames.view_in(txn, frame_key(record.generation, index))
            if view is None:
                return None
            frame = bytes(view)
            # The copy is what the stream sends: let the kernel drop the mapped pages
            # from this process (they stay in the page cache), so streaming a large
            # hot shard does not grow the server's resident memory by the shard's size.
            release_pages(view)
            return frame

    def _still_current(self, record: ShardRecord) -> ShardRecord:
        """The catalog's record of ``record``'s generation now; raises Unavailable if the
        shard was overwritten or deleted since."""
        with self._env.read() as txn:
            current = self._catalog.get_shard(txn, record.dataset, record.name)
        if current is None or current.generation != record.generation:
            raise Unavailable(f"{record.dataset}/{record.name} changed during the read; retry")
        return current


def _done(value: bytes) -> Future[bytes]:
    future: Future[bytes] = Future()
    future.set_result(value)
    return future
