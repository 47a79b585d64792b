"""Ranged GETs of the stored frames of one shard generation's archive object.

The archive holds a generation's stored frames back to back in one object
(:func:`tierstore.engine.records.archive_frames_key`); the catalog record gives every
frame's stored size, so any frame can be fetched alone. Cold reads fetch the frames
they need this way, in parallel; promotions fetch every frame of a shard the same way
(:func:`fetch_all`), so that one slow connection does not hold a whole shard up.

A store that closes does not wait for the archive: its fetch pools
(:mod:`tierstore.engine.fetchpool`) fail every GET not yet done, queued or under way,
with :class:`StoreClosed` at once (a frozen archive's take minutes: each waits out its
read time-out, then is retried), and so does a read or promotion that needed one
(:func:`submit_fetch`, :func:`fetch_result`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Executor, Future
from typing import TypeVar

from tierstore.engine.archivewatch import report_missing
from tierstore.engine.records import ShardRecord, archive_frames_key, frame_digest_of
from tierstore.engine.sealing import stored_overhead
from tierstore.errors import IntegrityError, InvalidRange, StoreClosed
from tierstore.tiers.base import Tier

__all__ = [
    "ArchivedFrames",
    "damage_in_archive",
    "fetch_all",
    "fetch_each",
    "fetch_result",
    "submit_fetch",
]

_T = TypeVar("_T")


class ArchivedFrames:
    """Ranged GETs of single stored frames of one generation's archive object."""

    def __init__(self, archive: Tier, record: ShardRecord) -> None:
        overhead = stored_overhead(record)
        self._archive = archive
        #: every frame's stored size, by index.
        self.sizes = record.stored_sizes(overhead)
        self._offsets = record.stored_offsets(overhead)
        self.key = archive_frames_key(record.dataset, record.generation)
        #: what the object holds, for messages: the key alone names no shard
        self._holds = f"{record.dataset}/{record.name} generation {record.generation}"
        self._record = record

    def fetch(self, index: int) -> memoryview:
        """Stored frame ``index``, exactly its stored size.

        Raises IntegrityError when the object is missing or too short (a short answer
        is asked for once more first: a body cut short on the way looks the same),
        ArchiveUnavailable when the archive fails. Thread-safe.
        """
        size = self.sizes[index]
        blob = self._get(index, size)
        if blob is not None and len(blob) != size:
            blob = self._get(index, size)
        if blob is None:
            missing = f"archive object {self.key} ({self._holds}) is missing"
            report_missing(self._archive, self._record, missing)  # holds eviction
            raise IntegrityError(missing)
        if len(blob) != size:
            raise IntegrityError(
                f"archive object {self.key} ({self._holds}) is truncated at frame {index} "
                f"({len(blob)} of {size} bytes)"
            )
        expected = self._record.frame_digest(index)
        if expected is not None and frame_digest_of(blob) != expected:
            # Not what was uploaded, though perhaps with a valid checksum: a plaintext
            # frame's is no key's, so whoever may write to the archive could forge one.
            raise IntegrityError(
                f"archive object {self.key} ({self._holds}) holds other bytes at frame "
                f"{index} than were uploaded (its SHA-256 differs from the catalog's)"
            )
        return blob

    def _get(self, index: int, size: int) -> memoryview | None:
        try:
            return self._archive.get(self.key, (self._offsets[index], size))
        except InvalidRange as exc:  # the frame starts past the end of the object
            raise IntegrityError(
                f"archive object {self.key} ({self._holds}) is truncated before frame {index}"
            ) from exc


def fetch_all(archive: Tier, record: ShardRecord, pool: Executor) -> list[memoryview]:
    """Every stored frame of ``record``'s archive object, fetched by parallel ranged GETs
    on ``pool``, unverified. Raises as :meth:`ArchivedFrames.fetch`, and StoreClosed."""
    fetcher = ArchivedFrames(archive, record)
    return fetch_each(pool, fetcher.fetch, range(len(record.frame_sizes)))


def submit_fetch(pool: Executor, fetch: Callable[[int], _T], index: int) -> Future[_T]:
    """``fetch(index)`` submitted to a store's fetch ``pool``. Raises StoreClosed when
    the pool is shut down (the store closed)."""
    try:
        return pool.submit(fetch, index)
    except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
        raise StoreClosed("the store was closed during the read") from exc


def fetch_result(future: Future[_T]) -> _T:
    """What a fetch of :func:`submit_fetch` returned, or raised: IntegrityError and
    ArchiveUnavailable as :meth:`ArchivedFrames.fetch`, StoreClosed when the store
    closed before it was done (a :class:`~tierstore.engine.fetchpool.FetchPool`'s
    shutdown fails it so)."""
    try:
        return future.result()
    except CancelledError as exc:
        # Not a FetchPool's close, which fails the fetch with StoreClosed itself, nor
        # this module's own cancels (fetch_each drops the fetches it no longer waits
        # for): another executor's shutdown(cancel_futures=True) dropped it unrun.
        raise StoreClosed("the store was closed during the read") from exc


def fetch_each(pool: Executor, fetch: Callable[[int], _T], indices: Iterable[int]) -> list[_T]:
    """``fetch(index)`` of each of ``indices``, in parallel on ``pool``, in order (as
    ``pool.map``). Raises what a fetch raised (the fetches not begun are dropped then),
    and StoreClosed as :func:`submit_fetch` and :func:`fetch_result`."""
    futures = [submit_fetch(pool, fetch, index) for index in indices]
    try:
        return [fetch_result(future) for future in futures]
    finally:
        for future in futures:
            future.cancel()


def damage_in_archive(
    archive: Tier, record: ShardRecord, progressed: Callable[[], None]
) -> str | None:
    """Why ``record``'s archive object cannot be trusted as the shard's copy: a frame
    missing, cut short or other than uploaded (its SHA-256), or no digests to check
    against (a generation archived before digests were kept); None when every frame
    matches. Fetches the frames one at a time, calling ``progressed()`` after each.
    Raises ArchiveUnavailable."""
    if record.frame_digests is None:
        return "its manifest holds no frame digests to check it against"
    fetcher = ArchivedFrames(archive, record)
    try:
        for index in range(len(record.frame_sizes)):
            fetcher.fetch(index)
            progressed()
    except IntegrityError as exc:
        return str(exc)
    return None
