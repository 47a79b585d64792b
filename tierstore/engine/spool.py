"""Promotions of large shards, written into the hot tier a chunk at a time.

LMDB is opened without ``writemap`` (a full disk must be an error, not a SIGBUS), so
a write transaction's dirty pages are heap memory until it commits. A promotion that
fetched a whole shard and wrote it in one transaction held the shard twice over: a
cold one-byte read of a 400 MiB shard took its process up by 801 MiB.

So a promotion whose frames' payload adds up to more than ``promotion_chunk_bytes``
(64 MiB) fetches, verifies and writes them a chunk of about that size at a time, each
chunk in a transaction of its own. Payload, not stored bytes: a shard of exactly 64 MiB
of 4 MiB frames is one chunk, though its checksums (or tags) take it a little past.
A cache fill, which has every frame of a cold whole read in hand (verified), stages
them the same way (:meth:`Spooler.stage_held`): LMDB's copy then adds one chunk to the
frames the reader holds, not the shard again. Those frames are *staged*: they belong
to a generation whose record still says cold, and no read looks for the frames of a
cold generation. The shard turns hot in one last
transaction, which writes its record (the promoter's, like any promotion's), so no reader
ever sees part of a shard.

A marker in the catalog's ``meta`` sub-database (generation → frame count), written
with the first chunk and dropped with the record's last transaction, keeps every
staged frame accounted for:

* a promotion that fails, is stopped, finds no room or finds its generation
  superseded drops the frames it staged (:meth:`Spooler.drop`);
* a store opened after a crash drops the frames of every marker left
  (:func:`drop_abandoned`);
* the repair of damaged records counts staged generations as claimed
  (:mod:`tierstore.engine.damaged`).

Staged frames are not in the ``hot_bytes`` counter until the shard turns hot: the
promotion makes its room below the high watermark when it commits, as one that held
its frames in memory does (and is skipped, dropping them, if none can be made). Each
chunk checks that the LMDB map has room for it.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from typing import Any

from tierstore.engine.archived import ArchivedFrames, fetch_each
from tierstore.engine.catalog import Catalog
from tierstore.engine.diskreserve import once_more_with_room
from tierstore.engine.records import ShardRecord, frame_key
from tierstore.tiers.lmdb import LmdbEnvironment, LmdbTier

__all__ = [
    "Spooler",
    "Staged",
    "chunks",
    "drop_abandoned",
    "drop_staged",
    "drop_staged_in",
    "stage_in",
]

log = logging.getLogger(__name__)


class Staged(enum.Enum):
    """How staging a generation's frames ended."""

    #: every frame is staged: the promotion may commit the record.
    DONE = "done"
    #: the generation is no longer the shard's, or is hot already.
    SUPERSEDED = "superseded"
    #: the LMDB map has no room for the next chunk.
    NO_ROOM = "no room"
    #: the promoter is stopping.
    STOPPED = "stopped"


def chunks(sizes: Sequence[int], limit: int) -> list[range]:
    """Consecutive runs of frame indices whose ``sizes`` add up to at most ``limit``
    each (a frame larger than ``limit`` makes a run alone); they cover every index."""
    runs: list[range] = []
    start, filled = 0, 0
    for index, size in enumerate(sizes):
        if index > start and filled + size > limit:
            runs.append(range(start, index))
            start, filled = index, 0
        filled += size
    if start < len(sizes):
        runs.append(range(start, len(sizes)))
    return runs


class Spooler:
    """Stages the frames of cold generations in the hot tier, a chunk a transaction."""

    def __init__(
        self,
        environment: LmdbEnvironment,
        catalog: Catalog,
        frames: LmdbTier,
        verify: Callable[[ShardRecord, int, memoryview], None],
        stop: threading.Event,
        chunk_bytes: int,
    ) -> None:
        self._env = environment
        self._catalog = catalog
        self._frames = frames
        #: raises IntegrityError for a stored frame (of a record, by index) that is bad.
        self._verify = verify
        self._stop = stop
        #: promotions of more stored bytes are spooled, this much at a time (in memory
        #: at once: the chunk fetched and LMDB's uncommitted copy of it, 2-3x this).
        self.chunk_bytes = chunk_bytes
        #: gives the disk reserve back (whether there was one), so that dropping a
        #: failed promotion's staged frames commits on a full disk (set by the store).
        self.give_room: Callable[[], bool] = lambda: False

    def spools(self, record: ShardRecord) -> bool:
        """Whether a promotion of ``record`` is spooled (see the module docstring)."""
        return sum(record.frame_sizes) > self.chunk_bytes

    def stage(self, record: ShardRecord, fetcher: ArchivedFrames, pool: Executor) -> Staged:
        """Fetch (with ``fetcher``, on ``pool``), verify and write every stored frame of
        ``record``'s generation, :attr:`chunk_bytes` at a time.

        Anything but DONE leaves frames staged: the caller drops them (:meth:`drop`),
        as it does when this raises (as :meth:`ArchivedFrames.fetch`, or
        IntegrityError for a frame that fails verification).
        """
        return self._stage(record, lambda run: self._fetched(record, fetcher, run, pool))

    def stage_held(self, record: ShardRecord, stored: Sequence[memoryview]) -> Staged:
        """:meth:`stage` for frames already in hand and verified (a cold read's cache
        fill): only LMDB's copy of one chunk is added to them."""
        return self._stage(record, lambda run: [stored[index] for index in run])

    def _fetched(
        self, record: ShardRecord, fetcher: ArchivedFrames, run: range, pool: Executor
    ) -> list[memoryview]:
        """Stored frames ``run`` of ``record``, fetched on ``pool`` and verified."""
        fetched = fetch_each(pool, fetcher.fetch, run)
        for index, frame in zip(run, fetched, strict=True):
            self._verify(record, index, frame)
        return fetched

    def _stage(self, record: ShardRecord, chunk_of: Callable[[range], list[memoryview]]) -> Staged:
        """Write ``record``'s stored frames a chunk a transaction, each chunk (frame
        indices) as ``chunk_of`` gives it."""
        for run in chunks(record.frame_sizes, self.chunk_bytes):
            if self._stop.is_set():
                return Staged.STOPPED
            fetched = chunk_of(run)
            with self._env.write() as txn:
                current = self._catalog.get_shard(txn, record.dataset, record.name)
                if current is None or current.generation != record.generation or current.hot:
                    return Staged.SUPERSEDED
                needed, free = self._env.room_for(txn, (len(frame) for frame in fetched))
                if needed > free:
                    return Staged.NO_ROOM
                stage_in(
                    txn,
                    self._catalog,
                    self._frames,
                    record.generation,
                    len(record.frame_sizes),
                    zip(run, fetched, strict=True),
                )
            del fetched  # before the next chunk is fetched: one chunk in memory at a time
        return Staged.DONE

    def drop(self, generation: int) -> None:
        """Delete the frames staged for ``generation`` and its marker (see :func:`drop_staged`)."""
        drop_staged(self._env, self._catalog, self._frames, generation, self.give_room)


def drop_staged(
    environment: LmdbEnvironment,
    catalog: Catalog,
    frames: LmdbTier,
    generation: int,
    give_room: Callable[[], bool],
) -> None:
    """Delete the frames staged for ``generation`` and its marker, in a write
    transaction of their own; on a full disk once more after ``give_room()`` (the disk
    reserve given back: :func:`~tierstore.engine.diskreserve.once_more_with_room`).
    Best effort, for a ``finally``: if the hot tier fails now (or is closed), they are
    dropped when a store next opens it (the caller's error comes first)."""

    def drop() -> None:
        with environment.write() as txn:
            drop_staged_in(txn, catalog, frames, generation)

    try:
        with environment.read() as txn:
            if not catalog.staged_frame_count(txn, generation):
                return  # nothing was staged (the marker comes with the first chunk)
        once_more_with_room(drop, give_room)
    except Exception as exc:
        log.warning(
            "could not drop the frames staged for generation %d (the next open will): %s",
            generation,
            exc,
        )


def stage_in(
    txn: Any,
    catalog: Catalog,
    frames: LmdbTier,
    generation: int,
    frame_count: int,
    chunk: Iterable[tuple[int, bytes | bytearray | memoryview]],
) -> None:
    """Write ``chunk``'s ``(index, stored frame)`` pairs of ``generation`` (of
    ``frame_count`` frames) in the caller's write transaction, staged: the marker comes
    with frame 0, so every staged frame is accounted for."""
    for index, frame in chunk:
        if index == 0:
            catalog.mark_staging(txn, generation, frame_count)
        frames.put_in(txn, frame_key(generation, index), frame)


def drop_staged_in(txn: Any, catalog: Catalog, frames: LmdbTier, generation: int) -> None:
    """Delete, in the caller's write transaction, the frames staged for ``generation``
    and its marker (none: nothing to do)."""
    for index in range(catalog.staged_frame_count(txn, generation)):
        frames.delete_in(txn, frame_key(generation, index))
    catalog.unmark_staging(txn, generation)


def drop_abandoned(environment: LmdbEnvironment, catalog: Catalog, frames: LmdbTier) -> int:
    """At open, before any promotion or put runs: drop the frames of every promotion or
    put a crash cut short while it staged them; returns how many there were.

    A generation a hot record holds keeps its frames (only its marker goes): the
    commit that turns a generation hot drops its marker, but a store written before
    that rule, or a marker whose drop failed, must not cost a hot shard its frames.
    """
    with environment.read() as txn:
        staged = catalog.staged(txn)
    if not staged:
        return 0
    with environment.write() as txn:
        hot = {record.generation for record in catalog.iter_shards(txn) if record.hot}
        for generation in staged:
            if generation in hot:
                catalog.unmark_staging(txn, generation)
            else:
                drop_staged_in(txn, catalog, frames, generation)
    log.info(
        "dropped the staged frames of %d promotions or puts cut short by an earlier stop",
        len(staged),
    )
    return len(staged)
