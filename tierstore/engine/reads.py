"""Read-side building blocks: range planning, read leases and :class:`ShardData`.

Buffer lifetime rule (hot reads)
--------------------------------
A plaintext hot read hands out ``pyarrow.Buffer`` views straight into the LMDB
map. Each view keeps a :class:`ReadLease` alive — one LMDB read transaction —
and the lease ends (the transaction is aborted) when the last buffer that uses
it is garbage-collected, so a view can never outlive the snapshot it points
into and can never show other bytes.

What a slow reader can pin is bounded: at most ``max_read_leases`` leases exist
at once; a hot read that finds the pool full gets private copies instead and
pins nothing. Leases older than ``read_lease_warn_s`` are counted as slow
readers in the store's stats. The server (and anything that holds data for
long) copies out of the view and drops it; a consumer in the same process that
needs the bytes for long should call :meth:`ShardData.detach`.

Encrypted reads never lease: each frame is decrypted once into its own
64-byte-aligned buffer and the transaction ends at once.

Fork safety: a lease ends its transaction only in the process that opened it. A
forked child inherits the parent's leases as plain memory; aborting one there would
release the *parent's* slot in LMDB's shared reader table (and let the writer reuse
pages the parent still reads), so in a child a lease just lets go of its objects
(py-lmdb itself never ends an inherited transaction when it is collected). The
client's local read path shares these leases (:mod:`tierstore.client.hotmap`).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pyarrow as pa

from tierstore.errors import InvalidRange, RangePastEnd
from tierstore.types import ShardInfo, whole_number

__all__ = ["FrameSlice", "LeasePool", "ReadLease", "ShardData", "plan_reads"]


@dataclass(frozen=True, slots=True)
class FrameSlice:
    """Bytes ``[start, stop)`` of frame ``index``'s payload."""

    index: int
    start: int
    stop: int


def plan_reads(
    frame_sizes: Sequence[int],
    byte_range: tuple[int, int] | None = None,
    frame_range: tuple[int, int] | None = None,
) -> list[FrameSlice]:
    """Which frames (and which bytes of them) a read needs.

    ``byte_range`` is ``(offset, length)`` over the shard's logical bytes (cut at
    the end); ``frame_range`` is ``(first, count)``. At most one may be given; with
    neither, the read is of every frame (empty ones included).
    Raises :class:`RangePastEnd` for a start past the end, :class:`InvalidRange` for
    negative values or both ranges.
    """
    if byte_range is not None and frame_range is not None:
        raise InvalidRange("give a byte range or a frame range, not both")
    count = len(frame_sizes)
    if frame_range is not None:
        first, wanted = _int_pair("frame range", frame_range)
        if first < 0 or wanted < 0:
            raise InvalidRange(f"frame range ({first}, {wanted}) has a negative first or count")
        if first > count:
            raise RangePastEnd(
                f"frame range ({first}, {wanted}) starts past the end of a {count}-frame shard"
            )
        return [FrameSlice(i, 0, frame_sizes[i]) for i in range(first, min(count, first + wanted))]
    if byte_range is None:
        # A whole read is every frame, the empty ones at the edges included, so that
        # it hands back the shard exactly as it was framed.
        return [FrameSlice(i, 0, size) for i, size in enumerate(frame_sizes)]
    total = sum(frame_sizes)
    offset, length = _int_pair("byte range", byte_range)
    if offset < 0 or length < 0:
        raise InvalidRange(f"byte range ({offset}, {length}) has a negative offset or length")
    if offset > total:
        raise RangePastEnd(f"byte offset {offset} is past the end of a {total}-byte shard")
    stop = min(total, offset + length)
    if stop == offset:
        return []  # an empty read touches no frame
    slices: list[FrameSlice] = []
    position = 0
    for index, size in enumerate(frame_sizes):
        frame_start, frame_stop = position, position + size
        position = frame_stop
        if frame_stop <= offset or frame_start >= stop:
            continue
        slices.append(
            FrameSlice(
                index, max(offset, frame_start) - frame_start, min(stop, frame_stop) - frame_start
            )
        )
    return slices


def _int_pair(what: str, pair: object) -> tuple[int, int]:
    """``pair`` as two integers, or :class:`InvalidRange` (a bool too: True is no count,
    as the client says of an offset or length)."""
    try:
        first, second = (whole_number(n) for n in cast("tuple[Any, Any]", pair))
    except (TypeError, ValueError):
        first = second = None
    if first is None or second is None:
        raise InvalidRange(f"a {what} is a pair of integers, not {pair!r:.80}")
    return first, second


class ReadLease:
    """One LMDB read transaction that zero-copy buffers point into.

    Ends (aborts its transaction) when the lease object is garbage-collected,
    which happens once no buffer refers to it any more.
    """

    __slots__ = ("__weakref__", "_views", "opened_at", "txn")

    def __init__(self, txn: Any, pool: LeasePool) -> None:
        self.txn = txn
        self.opened_at = time.monotonic()
        self._views: list[memoryview] = []
        weakref.finalize(self, pool._release, txn, os.getpid())

    def keep(self, view: memoryview) -> pa.Buffer:
        """A ``pyarrow.Buffer`` over ``view`` that keeps this lease alive."""
        self._views.append(view)
        address = pa.py_buffer(view).address
        return pa.foreign_buffer(address, len(view), base=self)


class LeasePool:
    """Counts live leases and refuses new ones past the limit. Thread-safe."""

    def __init__(self, limit: int, end: Callable[[Any], None]) -> None:
        """At most ``limit`` leases at once; a lease's transaction is ended with
        ``end(txn)``: the hot tier's
        :meth:`~tierstore.tiers.lmdb.LmdbEnvironment.end_read` for a transaction of its
        ``begin_read``, or :meth:`~tierstore.tiers.endedreads.EndedReads.end` (a bare
        ``abort()`` would let py-lmdb 1.x free it while a close unmaps the map)."""
        self._limit = limit
        self._end = end
        self._lock = threading.Lock()
        self._live: weakref.WeakSet[ReadLease] = weakref.WeakSet()
        self._count = 0

    def try_open(self, txn: Any) -> ReadLease | None:
        """A lease over ``txn``, or ``None`` when the pool is full (then copy instead)."""
        with self._lock:
            if self._count >= self._limit:
                return None
            self._count += 1
        lease = ReadLease(txn, self)
        self._live.add(lease)
        return lease

    def _release(self, txn: Any, owner_pid: int) -> None:
        if os.getpid() != owner_pid:
            # A forked child: the transaction and this pool are the parent's (see the
            # module docstring); its lock may even be held by a thread gone with the fork.
            return
        try:
            self._end(txn)
        except Exception:
            pass
        finally:
            with self._lock:
                self._count -= 1

    @property
    def live(self) -> int:
        """Leases open now."""
        return self._count

    def older_than(self, seconds: float) -> int:
        """How many live leases were opened more than ``seconds`` ago."""
        cutoff = time.monotonic() - seconds
        return sum(1 for lease in list(self._live) if lease.opened_at < cutoff)


@dataclass(frozen=True, slots=True)
class ShardData:
    """The payload of a read: the selected frames (trimmed to the byte range), in order.

    ``source`` is ``"hot"`` or ``"archive"``. Buffers of a plaintext hot read point
    into the LMDB map (see the lifetime rule in this module's docstring).
    """

    info: ShardInfo
    first_frame: int
    frames: tuple[pa.Buffer, ...]
    source: str

    @property
    def nbytes(self) -> int:
        return sum(frame.size for frame in self.frames)

    def to_buffer(self) -> pa.Buffer:
        """All bytes as one buffer: the frame itself when there is one, else a joined copy."""
        if len(self.frames) == 1:
            return self.frames[0]
        return pa.py_buffer(b"".join(memoryview(frame) for frame in self.frames))

    def to_bytes(self) -> bytes:
        """All bytes, copied into one ``bytes`` object."""
        return b"".join(memoryview(frame) for frame in self.frames)

    def detach(self) -> ShardData:
        """A copy that owns its memory (releases any read lease once this object is dropped)."""
        copies = tuple(pa.py_buffer(bytearray(memoryview(frame))) for frame in self.frames)
        return ShardData(self.info, self.first_frame, copies, self.source)
