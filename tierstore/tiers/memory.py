"""An in-process ``Tier`` backed by a dict: the reference model for the conformance suite.

:class:`MemoryTier` keeps an immutable ``bytes`` copy of every value, so a
caller may reuse or mutate its buffer as soon as ``put`` returns, and every
``memoryview`` handed out stays valid (and unchanged) for as long as the caller
holds it, even after the key is overwritten or deleted.

It is useful for tests, for benchmarks that want a ceiling without I/O, and as
the plain model that other tiers are checked against.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence

from tierstore.errors import InvalidArgument, StoreClosed
from tierstore.tiers.base import BytesLike, ListPage, ObjectStat, resolve_range, value_chunks

__all__ = ["MemoryTier"]


def _join_value(value: BytesLike | Iterable[BytesLike]) -> bytes:
    """Copy one buffer, or the buffers of an iterable written back to back, into ``bytes``."""
    return b"".join(value_chunks(value))


class MemoryTier:
    """A dict-backed ``Tier``. Thread-safe; values are immutable ``bytes`` copies.

    Not fork-aware: a child process gets a private snapshot of the parent's
    values (the tier holds no OS resources, so nothing breaks; nothing is shared).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, bytes] = {}
        # Sorted mirror of ``_values``' keys, kept in step under ``_lock``, so that
        # ``list`` is a bisect and a scan rather than a sort per call.
        self._keys: list[str] = []
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("memory tier is closed")

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> memoryview | None:
        """Return a read-only view of the value (or of ``byte_range`` = ``(offset, length)``).

        Returns ``None`` if ``key`` is absent. Raises :class:`InvalidRange` as
        :func:`resolve_range` does and :class:`StoreClosed` after ``close``.
        """
        with self._lock:
            self._check_open()
            value = self._values.get(key)
        if value is None:
            return None
        start, stop = resolve_range(len(value), byte_range)
        # Slicing a memoryview of immutable bytes copies nothing; the view keeps
        # the bytes object alive after an overwrite or delete.
        return memoryview(value)[start:stop]

    def put(self, key: str, value: BytesLike | Iterable[BytesLike]) -> None:
        """Store a copy of ``value`` (one buffer or an iterable of buffers) under ``key``.

        Raises :class:`TypeError` for a value that is not made of buffers and
        :class:`StoreClosed` after ``close``.
        """
        self._check_open()
        data = _join_value(value)  # copy outside the lock: it may be large
        with self._lock:
            self._check_open()
            if key not in self._values:
                bisect.insort(self._keys, key)
            self._values[key] = data

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error. Raises :class:`StoreClosed` if closed."""
        with self._lock:
            self._check_open()
            if self._values.pop(key, None) is not None:
                index = bisect.bisect_left(self._keys, key)
                del self._keys[index]

    def delete_many(self, keys: Sequence[str]) -> None:
        """:meth:`delete` of each key in turn (there is no request to save)."""
        for key in keys:
            self.delete(key)

    def stat(self, key: str) -> ObjectStat | None:
        """Return the value's size, or ``None`` if absent. Raises :class:`StoreClosed` if closed."""
        with self._lock:
            self._check_open()
            value = self._values.get(key)
        return None if value is None else ObjectStat(key=key, size=len(value))

    def list(self, prefix: str = "", start_after: str | None = None, limit: int = 1000) -> ListPage:
        """List up to ``limit`` keys with ``prefix`` after ``start_after``, in code point order.

        ``next_start_after`` is set only when more matching keys exist. Raises
        :class:`InvalidArgument` for ``limit < 1`` and :class:`StoreClosed` after close.
        """
        if limit < 1:
            raise InvalidArgument(f"list limit must be at least 1, got {limit}")
        with self._lock:
            self._check_open()
            if start_after is not None and start_after >= prefix:
                index = bisect.bisect_right(self._keys, start_after)
            else:
                index = bisect.bisect_left(self._keys, prefix)
            found: list[str] = []
            while index < len(self._keys) and self._keys[index].startswith(prefix):
                if len(found) == limit:
                    return ListPage(tuple(found), found[-1])
                found.append(self._keys[index])
                index += 1
        return ListPage(tuple(found), None)

    def close(self) -> None:
        """Drop every value; later calls raise :class:`StoreClosed`. Idempotent."""
        with self._lock:
            self._closed = True
            self._values.clear()
            self._keys.clear()
