"""The access trace: the last N reads and plan events of a node, kept in memory.

Every read (dataset, shard, stored size, hit or miss) and every plan event
(declared, position reported, closed or expired) goes into one ring of
``trace_capacity`` events, stamped with the wall clock as it enters (never
earlier than the event before it, so a trace's times never go back, even when the
system clock does); the oldest drop out. The ring feeds two things: trace
export (``tierstore trace export``, replayed by the simulator) and the sizing
curve in the tier statistics (the LRU miss ratio the recent reads would have had
at other hot-tier sizes, :func:`tierstore.sim.sizing.miss_ratio_curve`).

Reads are stored column-wise in preallocated arrays (8 + 8 + 8 + 1 bytes a slot,
25 MB for a million events) with (dataset, shard) names interned to small ids, so
recording one costs a lock, a dict look-up and four array stores: no allocation
on the read path. The rarer plan events are kept as objects beside the arrays; a
declared plan holds its entries, so the plan events in the ring hold at most
:data:`MAX_TRACED_PLAN_BYTES` bytes of entries together, and past that the oldest
declarations leave the ring early (as events older than the ring do: a trace may
start with positions of a plan it does not show). Closed plans cannot pile up there.

Thread safety: a :class:`TraceRing` is safe to share; every method takes its lock
briefly (a snapshot copies the arrays under it and builds events outside it).
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import threading
import time
from array import array
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from tierstore.sim.sizing import miss_ratio_curve
from tierstore.types import (
    SizingPoint,
    TracedClose,
    TracedPlan,
    TracedPosition,
    TracedRead,
    TraceEvent,
)

__all__ = ["MAX_TRACED_PLAN_BYTES", "SIZING_FACTORS", "TraceRing"]

#: the most bytes of entries (names and sizes) the ring's plan declarations may hold
#: together: counted in bytes, as names run up to 1 KiB (a count of entries let 20
#: million entries of long names hold 20 GB).
MAX_TRACED_PLAN_BYTES = 512 << 20

#: how long a sizing curve is answered again rather than made anew (seconds).
SIZING_REUSE_S = 5.0

#: the hot-tier sizes of a sizing curve, as multiples of the current capacity.
SIZING_FACTORS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
#: sampled accesses a sizing curve aims for (the rate is 1 for shorter traces).
_SIZING_SAMPLES = 50_000
_MIN_SAMPLE_RATE = 0.001

#: a slot's event: none yet, a read (a miss, a hit, a hit a local reader reported in a
#: batch), or a plan event (kept in ``_others``)
_EMPTY, _MISS, _HIT, _OTHER, _REPORTED = 0, 1, 2, 3, 4
_READS = (_MISS, _HIT, _REPORTED)
_Name = tuple[str, str]


@dataclass(frozen=True, slots=True)
class _PackedPlan:
    """A declaration as the ring keeps it: its shard names joined by NUL (no name holds
    one) and its sizes in an array, about 30 bytes an entry where the
    :class:`TracedPlan`'s tuples of objects took about 110."""

    t: float
    job: str
    dataset: str
    names: bytes
    sizes: array[int]

    @classmethod
    def of(cls, event: TracedPlan, t: float) -> _PackedPlan:
        names = "\0".join(event.shards).encode()
        return cls(t, event.job, event.dataset, names, array("q", event.sizes))

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def nbytes(self) -> int:
        """The memory its entries hold (names and sizes)."""
        return len(self.names) + self.sizes.itemsize * len(self.sizes)

    def unpacked(self) -> TracedPlan:
        shards = tuple(self.names.decode().split("\0")) if len(self.sizes) else ()
        return TracedPlan(self.t, self.job, self.dataset, shards, tuple(self.sizes))


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The ring's contents at one moment, oldest first from ``start``."""

    start: int
    count: int
    capacity: int
    times: array[float]
    refs: array[int]
    sizes: array[int]
    kinds: bytearray
    names: list[_Name]
    others: dict[int, TraceEvent | _PackedPlan]
    counted_from: dict[str, int]

    def slots(self) -> Iterator[tuple[int, int]]:
        """``(sequence number, slot)`` of every event, oldest first."""
        for seq in range(self.start, self.start + self.count):
            yield seq, seq % self.capacity


class TraceRing:
    """The last ``capacity`` trace events (none at all for a capacity of 0)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._times = array("d", bytes(8 * capacity))
        self._refs = array("q", bytes(8 * capacity))  # name id (reads) or unused
        self._sizes = array("q", bytes(8 * capacity))
        self._kinds = bytearray(capacity)
        self._written = 0  # events ever recorded; the next one goes to written % capacity
        self._last_t = 0.0
        self._name_ids: dict[_Name, int] = {}
        self._names: list[_Name] = []
        # Plan events by sequence number; an entry goes when its slot is overwritten
        # (or, for a declaration, when newer ones need its share of the entries).
        self._others: dict[int, TraceEvent | _PackedPlan] = {}
        self._declarations: collections.deque[int] = collections.deque()  # oldest first
        self._declared_bytes = 0
        #: datasets made again under their name: the sequence number of the first event
        #: that counts in their sizing curves (see :meth:`retire_dataset`).
        self._counted_from: dict[str, int] = {}
        self._retirements = 0
        self._sizing_lock = threading.Lock()  # one curve made at a time
        #: curves made lately, by (datasets, capacity): (monotonic time, events
        #: written then, retirements then, the curve)
        self._sizing_made: dict[
            tuple[frozenset[str] | None, int],
            tuple[float, int, int, tuple[list[SizingPoint], int]],
        ] = {}

    def __len__(self) -> int:
        with self._lock:
            return min(self._written, self.capacity)

    def read(
        self, dataset: str, shard: str, size: int, hit: bool, *, reported: bool = False
    ) -> None:
        """Record a read, now; ``reported``: a hit a local reader reported in a batch,
        not seen as it happened (:class:`~tierstore.types.TracedRead`). O(1), no
        allocation for a name seen before."""
        if not self.capacity:
            return
        name = (dataset, shard)
        with self._lock:
            ident = self._name_ids.get(name)
            if ident is None:
                ident = self._intern(name)
            slot = self._claim()
            self._times[slot] = self._now()
            self._refs[slot] = ident
            self._sizes[slot] = size
            self._kinds[slot] = _REPORTED if reported else _HIT if hit else _MISS

    def plan_event(self, *events: TracedPlan | TracedPosition | TracedClose) -> None:
        """Record plan events, now: in this order, all at one instant (their ``t`` is
        replaced by the ring's clock), with no other event between them."""
        if not self.capacity:
            return
        with self._lock:
            now = self._now()
            for event in events:
                self._record_plan_event(event, now)

    def retire_dataset(self, dataset: str) -> None:
        """Leave ``dataset``'s reads so far out of sizing curves from now on: a dataset
        made again under its name starts with none, as its statistics do (the old
        one's reads were not its own, and may have been another team's). They stay in
        the trace (:meth:`events`): it is the node's history."""
        if not self.capacity:
            return
        with self._lock:
            oldest = self._written - self.capacity  # the first event still in the ring
            self._counted_from = {
                name: first for name, first in self._counted_from.items() if first > oldest
            }
            self._counted_from[dataset] = self._written
            self._retirements += 1

    def events(self, dataset: str | None = None) -> Iterator[TraceEvent]:
        """The events in the ring now, oldest first (of ``dataset`` only, if given).

        The ring is copied at the call (about 25 bytes an event); events recorded
        later are not included.
        """
        snapshot = self._snapshot()
        for seq, slot in snapshot.slots():
            kind = snapshot.kinds[slot]
            if kind == _OTHER:
                event = snapshot.others.get(seq)
                if event is None:
                    continue  # a declaration that left the ring early
                if dataset is None or event.dataset == dataset:
                    yield event.unpacked() if isinstance(event, _PackedPlan) else event
                continue
            name = snapshot.names[snapshot.refs[slot]]
            if dataset is None or name[0] == dataset:
                yield TracedRead(
                    snapshot.times[slot],
                    name[0],
                    name[1],
                    snapshot.sizes[slot],
                    kind != _MISS,
                    reported=kind == _REPORTED,
                )

    def sizing_curve(
        self, capacity_bytes: int, datasets: Collection[str] | None = None
    ) -> tuple[list[SizingPoint], int]:
        """The LRU miss ratio the traced reads (of ``datasets``, default all) would have
        had with hot tiers of :data:`SIZING_FACTORS` times ``capacity_bytes``, and how many
        reads that is (none: no points). Keys are sampled (SHARDS) above 50,000 reads. A
        dataset's reads before its :meth:`retire_dataset` do not count.

        A full ring takes seconds of CPU (under the GIL), and any reader may ask: one
        curve is made at a time, and one made in the last :data:`SIZING_REUSE_S` seconds
        for the same datasets and capacity (or since which nothing was recorded) is
        answered again.
        """
        key = (None if datasets is None else frozenset(datasets), capacity_bytes)
        with self._sizing_lock:
            now, written, retirements = time.monotonic(), self._written, self._retirements
            made = self._sizing_made.get(key)
            if (
                made is not None
                and made[2] == retirements
                and (made[1] == written or now - made[0] < SIZING_REUSE_S)
            ):
                return list(made[3][0]), made[3][1]
            curve = self._sizing_curve_now(capacity_bytes, datasets)
            self._sizing_made = {
                k: v for k, v in self._sizing_made.items() if now - v[0] < SIZING_REUSE_S
            }
            self._sizing_made[key] = (now, written, retirements, curve)
            return list(curve[0]), curve[1]

    def _sizing_curve_now(
        self, capacity_bytes: int, datasets: Collection[str] | None
    ) -> tuple[list[SizingPoint], int]:
        snapshot = self._snapshot()
        accesses: list[tuple[_Name, int]] = []
        counted_from = snapshot.counted_from
        for seq, slot in snapshot.slots():
            if snapshot.kinds[slot] in _READS:
                name = snapshot.names[snapshot.refs[slot]]
                if (datasets is None or name[0] in datasets) and seq >= counted_from.get(
                    name[0], 0
                ):
                    accesses.append((name, snapshot.sizes[slot]))
        if not accesses:
            return [], 0  # no reads, no curve: not a miss ratio of 1 at every size
        capacities = [int(capacity_bytes * factor) for factor in SIZING_FACTORS]
        rate = min(1.0, max(_MIN_SAMPLE_RATE, _SIZING_SAMPLES / max(1, len(accesses))))
        ratios = miss_ratio_curve(accesses, capacities, sample_rate=rate)
        points = [SizingPoint(c, r) for c, r in zip(capacities, ratios, strict=True)]
        return points, len(accesses)

    # Internals (called with the lock held).

    def _record_plan_event(
        self, event: TracedPlan | TracedPosition | TracedClose, now: float
    ) -> None:
        """Record one plan event at ``now`` (lock held)."""
        seq = self._written
        slot = self._claim()
        self._times[slot] = now
        self._kinds[slot] = _OTHER
        if isinstance(event, TracedPlan):
            # One declaration past the bound alone is not kept (its slot stays, as for
            # one that left early): packing it would copy every name, 10 GB for a
            # 64-epoch plan over 1 KiB names. (Its length is a lower bound of its
            # bytes, known before anything is copied.)
            if sum(map(len, event.shards)) + 8 * len(event.sizes) > MAX_TRACED_PLAN_BYTES:
                self._drop_job(event.job)
                return
            packed = _PackedPlan.of(event, now)
            if packed.nbytes > MAX_TRACED_PLAN_BYTES:
                self._drop_job(event.job)
                return
            self._others[seq] = packed
            self._declarations.append(seq)
            self._declared_bytes += packed.nbytes
            while self._declared_bytes > MAX_TRACED_PLAN_BYTES and len(self._declarations) > 1:
                self._forget(self._declarations.popleft())
        else:
            self._others[seq] = dataclasses.replace(event, t=now)

    def _now(self) -> float:
        self._last_t = max(self._last_t, time.time())
        return self._last_t

    def _claim(self) -> int:
        """The slot of the next event; forgets the plan event it overwrites."""
        seq = self._written
        slot = seq % self.capacity
        if self._kinds[slot] == _OTHER:
            self._forget(seq - self.capacity)
        self._written = seq + 1
        return slot

    def _drop_job(self, job: str) -> None:
        """Forget ``job``'s earlier declarations (lock held), as one of its that is not
        kept replaces them: its later positions must not be read against an old plan."""
        kept: collections.deque[int] = collections.deque()
        for seq in self._declarations:
            event = self._others.get(seq)
            if isinstance(event, _PackedPlan) and event.job == job:
                del self._others[seq]
                self._declared_bytes -= event.nbytes
            else:
                kept.append(seq)
        self._declarations = kept

    def _forget(self, seq: int) -> None:
        """Drop plan event ``seq`` (lock held; gone already is fine)."""
        event = self._others.pop(seq, None)
        if isinstance(event, _PackedPlan):
            self._declared_bytes -= event.nbytes
            if self._declarations and self._declarations[0] == seq:
                self._declarations.popleft()

    def _intern(self, name: _Name) -> int:
        if len(self._names) >= self.capacity + max(1024, self.capacity // 4):
            self._compact_names()
        ident = len(self._names)
        # One string per dataset, not one per name: each request brings its own.
        name = (sys.intern(name[0]), name[1])
        self._names.append(name)
        self._name_ids[name] = ident
        return ident

    def _compact_names(self) -> None:
        # Names of reads that left the ring pile up; keep only those still referenced.
        # Runs after at least a quarter of `capacity` new names (it walks the ring: O(4)
        # per name amortised), so names past the ring's hold at most a quarter more:
        # it waited for `capacity` more, and a ring of distinct names held twice them.
        live: dict[_Name, int] = {}
        names: list[_Name] = []
        for slot, kind in enumerate(self._kinds):
            if kind in _READS:
                name = self._names[self._refs[slot]]
                ident = live.get(name)
                if ident is None:
                    ident = live[name] = len(names)
                    names.append(name)
                self._refs[slot] = ident
        self._name_ids, self._names = live, names

    def _snapshot(self) -> _Snapshot:
        with self._lock:
            count = min(self._written, self.capacity)
            # Until the ring first fills, only its first `count` slots are in use.
            used = self.capacity if self._written >= self.capacity else count
            return _Snapshot(
                start=self._written - count,
                count=count,
                capacity=self.capacity,
                times=self._times[:used],
                refs=self._refs[:used],
                sizes=self._sizes[:used],
                kinds=self._kinds[:used],
                names=list(self._names),
                others=dict(self._others),
                counted_from=dict(self._counted_from),
            )
