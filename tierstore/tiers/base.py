"""The ``Tier`` contract: a small key/value blob store that every tier implements.

Keys are ``str`` (UTF-8, ``/``-separated by convention); values are bytes-like.
A missing key is ``None`` (``get``/``stat``), never an exception. Backend errors
are translated into the :mod:`tierstore.errors` tree inside each tier.

Thread safety: every tier is safe to call from many threads of one process.
Fork safety: a tier must not be used across ``fork()``; tiers reopen their
backend lazily when they find themselves in a new process.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tierstore.buffers import BytesLike, byte_view, value_chunks
from tierstore.errors import InvalidRange, RangePastEnd

__all__ = [
    "BytesLike",
    "ListPage",
    "ObjectStat",
    "SizedStream",
    "Tier",
    "byte_view",
    "resolve_range",
    "value_chunks",
]


@dataclass(frozen=True, slots=True)
class ObjectStat:
    """What a tier knows about one stored value."""

    key: str
    size: int


@dataclass(frozen=True, slots=True)
class SizedStream:
    """A tier value of many buffers whose total length is known before they are read:
    ``chunks``, back to back, hold ``size`` bytes. Any tier takes it as the iterable it
    is; one that writes in pieces may size them by it (the S3 tier's multipart parts:
    one size for every part, though the object is too large for its set part size).
    A tier may refuse a stream that does not hold ``size`` bytes."""

    chunks: Iterable[BytesLike]
    size: int

    def __iter__(self) -> Iterator[BytesLike]:
        return iter(self.chunks)


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a listing, keys in the store's listing order (ascending for LMDB and memory).

    ``next_start_after`` is the key to pass as ``start_after`` for the next
    page, or ``None`` when the listing is complete.
    """

    keys: tuple[str, ...]
    next_start_after: str | None


@runtime_checkable
class Tier(Protocol):
    """A store of immutable-per-write blobs under string keys."""

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> memoryview | None:
        """Return the value (or ``byte_range`` = ``(offset, length)`` of it), or ``None`` if absent.

        A range that starts past the end raises :class:`RangePastEnd`; one that
        runs past the end is cut at the end (like HTTP ranges).
        """
        ...

    def put(self, key: str, value: BytesLike | Iterable[BytesLike]) -> None:
        """Store ``value`` under ``key``, replacing what was there.

        ``value`` may be one buffer or an iterable of buffers written back to
        back, so large objects need not be joined in memory first. The write is
        durable when ``put`` returns.
        """
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error (idempotent)."""
        ...

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove every key of ``keys``, as :meth:`delete` does each, in as few requests
        as the backend takes (the S3 tier: one per 1,000 keys). Not atomic: when it
        raises, some of them may be gone already; the same call again finishes the job."""
        ...

    def stat(self, key: str) -> ObjectStat | None:
        """Return the size of ``key``'s value, or ``None`` if absent."""
        ...

    def list(self, prefix: str = "", start_after: str | None = None, limit: int = 1000) -> ListPage:
        """List up to ``limit`` keys starting with ``prefix`` and greater than ``start_after``."""
        ...

    def close(self) -> None:
        """Release the backend; further calls are errors. Closing twice is allowed."""
        ...


def resolve_range(total: int, byte_range: tuple[int, int] | None) -> tuple[int, int]:
    """Turn an optional ``(offset, length)`` into a concrete ``(start, stop)`` within ``total``.

    Raises :class:`InvalidRange` for negative numbers or an offset past the end
    (an offset equal to the end of a non-empty value is also past the end; a
    zero-length read at offset 0 of an empty value is allowed).
    """
    if byte_range is None:
        return 0, total
    offset, length = byte_range
    if offset < 0 or length < 0:
        raise InvalidRange(f"range ({offset}, {length}) has a negative offset or length")
    if offset > total or (offset == total and total > 0 and length > 0):
        raise RangePastEnd(f"range offset {offset} is past the end of a {total}-byte value")
    return offset, min(total, offset + length)
