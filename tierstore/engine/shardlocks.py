"""One lock per shard being written, so a shard's puts commit in generation order.

A put takes its generation when it starts staging frames (:mod:`tierstore.engine.spool`)
and commits it transactions later; a put of the same shard that took a newer generation
meanwhile must not commit first, or the shard's current generation would be older than
one committed before it (a rebuild from the archive takes the newest). Every put holds
its shard's lock from taking its generation until it commits: puts of one shard run one
after another, puts of different shards as before.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager

__all__ = ["KeyedLocks"]


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: threads that hold or wait for ``lock``
        self.users = 0


class KeyedLocks:
    """A lock per key, kept only while someone holds or waits for it. Thread-safe."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[Hashable, _Entry] = {}

    @contextmanager
    def held(self, key: Hashable) -> Iterator[None]:
        """Hold ``key``'s lock for the ``with`` block (waiting for it if held)."""
        with self._guard:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.users += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._guard:
                entry.users -= 1
                if not entry.users:
                    del self._entries[key]

    def __len__(self) -> int:
        """Keys held or waited for now."""
        with self._guard:
            return len(self._entries)
