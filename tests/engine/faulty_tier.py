"""A ``Tier`` wrapper (by composition) whose failures and timing a test controls.

* ``failing = True``: every call raises :class:`ArchiveUnavailable`, as an
  archive that is down does after its retries; set it back and the archive is
  "back up", with everything it held before.
* ``hold_reads(key)``: a ``get`` of ``key`` waits at a gate until released, so a
  test can change the store while a cold read is in flight (``whole_only``: only
  a ``get`` of the whole object waits, as a promotion's does; ranged reads pass).
* ``gets``: every ``(key, byte_range)`` asked for, to check what a read fetched.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from tierstore.errors import ArchiveUnavailable
from tierstore.tiers.base import BytesLike, ListPage, ObjectStat, Tier

__all__ = ["FaultyTier"]


class FaultyTier:
    """Delegates to ``inner`` unless told to fail or wait. Thread-safe."""

    def __init__(self, inner: Tier) -> None:
        self.inner = inner
        self.failing = False
        self.gets: list[tuple[str, tuple[int, int] | None]] = []
        #: every get as ``(key, range, thread name)``, never cleared (``gets`` is, by tests).
        self.get_log: list[tuple[str, tuple[int, int] | None, str]] = []
        self._lock = threading.Lock()
        self._held_key: str | None = None
        self._thread_prefix = ""
        self._held_from = 0
        self.read_waiting = threading.Event()
        self._release = threading.Event()
        #: set while a put is held by :meth:`hold_writes`.
        self.write_waiting = threading.Event()
        #: set when a held put gave up waiting for release_writes (a test waited too long).
        self.hold_timed_out = False
        self._writes_held = False
        self._release_writes = threading.Event()

    def _check(self, what: str) -> None:
        if self.failing:
            raise ArchiveUnavailable(f"{what}: the archive is down (test switch)")

    def hold_reads(self, key: str, threads_named: str = "", from_offset: int = 0) -> None:
        """Make every ``get`` of ``key`` wait until :meth:`release_reads` — only those made
        on threads whose name starts with ``threads_named``, if given, and only ranged
        ones that start at ``from_offset`` or later, if given."""
        self._release.clear()
        self.read_waiting.clear()
        self._thread_prefix = threads_named
        self._held_from = from_offset
        self._held_key = key

    def gets_by(self, thread_prefix: str) -> list[tuple[str, tuple[int, int] | None]]:
        """Every get (since the tier was made) on threads named ``thread_prefix``…"""
        with self._lock:
            log = list(self.get_log)
        return [(key, span) for key, span, thread in log if thread.startswith(thread_prefix)]

    def release_reads(self) -> None:
        self._held_key = None
        self._release.set()

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> memoryview | None:
        with self._lock:
            self.gets.append((key, byte_range))
            self.get_log.append((key, byte_range, threading.current_thread().name))
        held = key == self._held_key and (
            self._held_from == 0 or (byte_range is not None and byte_range[0] >= self._held_from)
        )
        if held and threading.current_thread().name.startswith(self._thread_prefix):
            self.read_waiting.set()
            if not self._release.wait(timeout=30):
                raise AssertionError("a held archive read was never released")
        self._check(f"GET {key}")
        return self.inner.get(key, byte_range)

    def hold_writes(self) -> None:
        """Make every ``put`` wait until :meth:`release_writes` (at most 30 s, then it
        raises AssertionError)."""
        self._release_writes.clear()
        self.write_waiting.clear()
        self._writes_held = True

    def release_writes(self) -> None:
        self._writes_held = False
        self._release_writes.set()

    def put(self, key: str, value: BytesLike | Iterable[BytesLike]) -> None:
        if self._writes_held:
            self.write_waiting.set()
            if not self._release_writes.wait(timeout=30):
                self.hold_timed_out = True
                raise AssertionError("a held archive write was never released")
        self._check(f"PUT {key}")
        self.inner.put(key, value)

    def delete(self, key: str) -> None:
        self._check(f"DELETE {key}")
        self.inner.delete(key)

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:  # each key checked as a delete of it is
            self.delete(key)

    def stat(self, key: str) -> ObjectStat | None:
        self._check(f"HEAD {key}")
        return self.inner.stat(key)

    def list(self, prefix: str = "", start_after: str | None = None, limit: int = 1000) -> ListPage:
        self._check(f"LIST {prefix}")
        return self.inner.list(prefix, start_after, limit)

    def close(self) -> None:
        self.inner.close()


class FramesDeleteFailsOnce(FaultyTier):
    """An archive whose first delete of a frames object fails, as one down for a moment
    (or a node killed between the two deletes) leaves it."""

    def __init__(self, inner: Tier) -> None:
        super().__init__(inner)
        self.failed: list[str] = []

    def delete(self, key: str) -> None:
        if key.endswith(".frames") and not self.failed:
            self.failed.append(key)
            raise ArchiveUnavailable(f"DELETE {key}: the archive is down (test)")
        super().delete(key)
