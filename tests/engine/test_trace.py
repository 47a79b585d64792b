"""The access trace and the access statistics (tierstore/engine/trace.py, access.py).

The ring keeps the last N reads and plan events in order, with times that never go
back; the sizing curve made from it matches an exact LRU simulation of the same
reads; per-shard statistics (count, last read, decayed frequency) survive a restart.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.engine.stores import FRAME, StoreFactory, payload
from tierstore.engine import trace
from tierstore.engine.access import AccessRecorder
from tierstore.engine.records import AccessStats
from tierstore.engine.trace import SIZING_FACTORS, TraceRing
from tierstore.errors import DatasetNotFound
from tierstore.tiers.memory import MemoryTier
from tierstore.types import (
    DatasetSettings,
    TracedClose,
    TracedPlan,
    TracedPosition,
    TracedRead,
)

STORED = FRAME + 8
LRU = {"d": DatasetSettings(policy="lru"), "e": DatasetSettings(policy="lru")}


def test_reads_and_plan_events_are_traced_in_order(open_store: StoreFactory) -> None:
    store = open_store(datasets=LRU)
    store.put("d", "a", payload(FRAME))
    store.put("e", "b", payload(2 * FRAME))
    assert store.drain(10)
    store.evict("e", "b")
    store.get("d", "a")
    store.get("e", "b", byte_range=(0, 10))  # a miss (a partial read counts as one)
    job = store.declare_plan("d", shards=["a", "a"], job="j")
    store.report_position(job, 1)
    store.close_plan(job)
    events = list(store.trace_events())
    assert [type(e) for e in events] == [
        TracedRead,
        TracedRead,
        TracedPlan,
        TracedPosition,
        TracedClose,
    ]
    first, second, plan, position, close = events
    assert (first.dataset, first.shard, first.size, first.hit) == ("d", "a", STORED, True)  # type: ignore[union-attr]
    assert (second.dataset, second.shard, second.hit) == ("e", "b", False)  # type: ignore[union-attr]
    assert second.size == 2 * STORED  # type: ignore[union-attr]
    assert plan == TracedPlan(plan.t, "j", "d", ("a", "a"), (STORED, STORED))
    assert position == TracedPosition(position.t, "j", "d", 1)
    assert close == TracedClose(close.t, "j", "d")
    times = [event.t for event in events]
    assert times == sorted(times) and times[0] > 0
    assert [type(e) for e in store.trace_events("e")] == [TracedRead]
    with pytest.raises(DatasetNotFound, match="no dataset 'nope'"):
        store.trace_events("nope")


def test_a_declared_position_is_traced_at_the_declarations_instant(
    open_store: StoreFactory,
) -> None:
    # The simulator replays the trace: a position a moment after the declaration is a
    # rate of entries read in that moment, as the node's policy would have had it.
    store = open_store(datasets=LRU)
    store.put("d", "a", payload(FRAME))
    store.declare_plan("d", shards=["a", "a", "a"], job="j", position=2)
    store.declare_plan("d", shards=["a"], job="k")  # from its start: no position
    events = list(store.trace_events("d"))
    assert [type(e) for e in events] == [TracedPlan, TracedPosition, TracedPlan]
    plan, position, _ = events
    assert position == TracedPosition(plan.t, "j", "d", 2)


def test_a_deleted_datasets_events_stay_exportable_and_an_empty_one_has_none(
    open_store: StoreFactory,
) -> None:
    store = open_store(datasets=LRU)
    store.put("d", "a", payload(FRAME))
    store.get("d", "a")
    store.delete_dataset("d", force=True)
    assert [(e.dataset, e.shard) for e in store.trace_events("d")] == [("d", "a")]  # type: ignore[union-attr]
    assert list(store.trace_events("e")) == []  # made, never read


def test_the_ring_keeps_the_last_events(open_store: StoreFactory) -> None:
    store = open_store(datasets=LRU, trace_capacity=5)
    store.put("d", "a", b"x")
    job = store.declare_plan("d", shards=["a"], job="j")
    for _ in range(3):
        store.get("d", "a")
    store.report_position(job, 1)
    store.get("d", "a")
    kinds = [type(e).__name__ for e in store.trace_events()]
    assert kinds == ["TracedRead", "TracedRead", "TracedRead", "TracedPosition", "TracedRead"]
    assert len(store._trace) == 5


def test_no_trace_when_its_capacity_is_zero(open_store: StoreFactory) -> None:
    store = open_store(datasets=LRU, trace_capacity=0)
    store.put("d", "a", b"x")
    store.get("d", "a")
    store.declare_plan("d", shards=["a"])
    assert list(store.trace_events()) == []
    assert store.sizing_curve()[1] == 0


def test_interned_names_are_compacted_without_losing_any() -> None:
    ring = TraceRing(4)
    for index in range(100):  # 100 distinct names through a ring of 4: compacts often
        ring.read("d", f"s{index}", index, index % 2 == 0)
    events = list(ring.events())
    assert [(e.shard, e.size, e.hit) for e in events] == [  # type: ignore[union-attr]
        (f"s{index}", index, index % 2 == 0) for index in range(96, 100)
    ]
    assert len(ring._names) <= 2 * 4 + 1024


def test_the_names_a_ring_keeps_are_bounded_near_its_capacity_and_share_datasets() -> None:
    # Names were compacted only past twice the ring (2,001,024 by default, 587 MB of
    # 36-character names), each holding its own copy of its dataset's name.
    ring = TraceRing(10_000)
    for index in range(50_000):  # every read a new name, each with a fresh dataset string
        ring.read("".join(["data", "set"]), f"shard-{index:030d}", 1, True)
        assert len(ring._names) <= 10_000 + 2_500
    assert len({id(dataset) for dataset, _ in ring._names}) == 1
    assert [e.shard for e in ring.events()][-1] == f"shard-{49_999:030d}"  # type: ignore[union-attr]


def test_plan_declarations_hold_a_bounded_number_of_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Declared-then-closed plans would otherwise stay in the ring, entries and all, for
    # a million events: a caller with the reader role could fill memory with them. The
    # bound is in bytes: one of entries let long names hold 20 GB.
    entry = 10  # a one-letter name, its separator and its 8-byte size
    monkeypatch.setattr(trace, "MAX_TRACED_PLAN_BYTES", 10 * entry)
    ring = TraceRing(100)

    def plan(job: str, entries: int, name: str = "s") -> TracedPlan:
        return TracedPlan(0.0, job, "d", (name,) * entries, (1,) * entries)

    ring.plan_event(plan("a", 4))
    ring.read("d", "s", 1, True)
    ring.plan_event(plan("b", 4))
    ring.plan_event(TracedClose(0.0, "a", "d"))
    ring.plan_event(plan("c", 4))  # 12 entries' bytes: a's declaration leaves early
    kept = [(type(e).__name__, getattr(e, "job", None)) for e in ring.events()]
    assert kept == [
        ("TracedRead", None),
        ("TracedPlan", "b"),
        ("TracedClose", "a"),
        ("TracedPlan", "c"),
    ]
    assert ring._declared_bytes == 2 * (4 * entry - 1)  # no separator after the last name
    ring.plan_event(plan("long", 2, "x" * 40))  # two entries, but long names: c leaves
    assert [e.job for e in ring.events() if isinstance(e, TracedPlan)] == ["long"]
    # Larger than the bound alone: not kept (it was, whatever its size: a 64-epoch plan
    # over 1 KiB names held 10 GB), and nothing else leaves for it.
    ring.plan_event(plan("big", 30))
    assert [e.job for e in ring.events() if isinstance(e, TracedPlan)] == ["long"]
    assert ring._declared_bytes == 97  # long's 2 x 40-byte names, separator, sizes
    # A job declared again past the bound loses its older declaration too: its later
    # positions were read against the old plan.
    ring.plan_event(plan("long", 30))
    ring.plan_event(TracedPosition(0.0, "long", "d", 20))
    assert not [e for e in ring.events() if isinstance(e, TracedPlan)]
    assert ring._declared_bytes == 0
    for index in range(200):  # the slots of every declaration are overwritten
        ring.read("d", f"s{index}", 1, False)
    assert ring._declared_bytes == 0 and not ring._others


def test_the_sizing_curve_is_the_lru_miss_ratio_of_the_traced_reads(
    open_store: StoreFactory,
) -> None:
    capacity = 8 * STORED
    store = open_store(datasets=LRU, hot_capacity_bytes=capacity)
    names = [f"s{i}" for i in range(4)]  # 4 shards: fit in 1/2 of the capacity
    for name in names:
        store.put("d", name, payload(FRAME))
    for _ in range(5):  # a cyclic scan: LRU hits all of it, or nothing
        for name in names:
            store.get("d", name)
    points, reads = store.sizing_curve()
    assert reads == 20
    assert [p.capacity_bytes for p in points] == [int(capacity * f) for f in SIZING_FACTORS]
    ratios = {p.capacity_bytes / capacity: p.miss_ratio for p in points}
    assert ratios[0.125] == ratios[0.25] == 1.0  # 1 and 2 shards: a scan of 4 always misses
    for factor in (0.5, 1.0, 2.0, 4.0):
        assert ratios[factor] == pytest.approx(4 / 20)  # only the first pass misses
    # No reads: no curve (it said 100 % misses at every size, as if a tier of any
    # size would miss every read).
    assert store.sizing_curve({"e"}) == ([], 0)
    # Any iterable of names: a generator was used up by the curve's cache key, and
    # the curve counted no reads.
    assert store.sizing_curve(name for name in ["d", "e"]) == (points, 20)
    assert store.sizing_curve(["d"]) == (points, 20)


def test_a_dataset_made_again_starts_its_sizing_curve_with_no_reads(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its statistics start at zero (docs/service.md), and the service shows a caller
    # the curve of the datasets it can see: the old dataset's reads are not the new
    # one's, and were another team's. Within the curve's reuse period, too.
    store = open_store(datasets=LRU)
    for name in ("a", "b"):
        store.put("d", name, payload(FRAME))
        store.get("d", name)
    assert store.sizing_curve({"d"})[1] == 2
    store.delete_dataset("d", force=True)
    store.create_dataset("d", LRU["d"])
    assert store.sizing_curve({"d"})[1] == 0
    assert store.sizing_curve()[1] == 0
    store.put("d", "a", payload(FRAME))
    store.get("d", "a")
    monkeypatch.setattr(trace, "SIZING_REUSE_S", 0.0)  # else the curve above, again
    assert store.sizing_curve({"d"})[1] == 1
    # The trace itself is history: the old dataset's reads stay exportable.
    reads = [e for e in store.trace_events("d") if isinstance(e, TracedRead)]
    assert len(reads) == 3


def test_a_retired_datasets_reads_leave_only_its_sizing_curves() -> None:
    ring = TraceRing(4)
    ring.read("d", "a", 10, False)
    ring.read("e", "a", 10, False)
    ring.retire_dataset("d")
    ring.read("d", "b", 10, False)
    assert ring.sizing_curve(100, {"d"})[1] == 1
    assert ring.sizing_curve(100, {"d", "e"})[1] == 2
    assert len(list(ring.events("d"))) == 2
    for index in range(4):  # the retired read leaves the ring: nothing left to leave out
        ring.read("e", f"s{index}", 10, False)
    ring.retire_dataset("e")
    assert set(ring._counted_from) == {"e"}


# Access statistics.


def test_access_statistics_survive_a_restart(open_store: StoreFactory) -> None:
    archive = MemoryTier()
    half_life = 3600.0
    store = open_store(
        archive, datasets=LRU, access_flush_interval_s=3600, access_half_life_s=half_life
    )
    store.put("d", "s", b"x")
    store.put("d", "never", b"y")
    for _ in range(3):
        store.get("d", "s")
    store.mover.flush_access()  # some flushed, some pending at close
    store.get("d", "s", byte_range=(0, 1))
    before = store.stat("d", "s")
    assert before.access_count == 4
    assert 3.99 < before.access_frequency <= 4.0
    store = open_store.reopen(store, archive)
    after = store.stat("d", "s")
    assert after.access_count == 4
    assert after.last_access == before.last_access
    assert after.access_frequency <= before.access_frequency
    assert after.access_frequency == pytest.approx(before.access_frequency, rel=1e-3)
    untouched = store.stat("d", "never")
    assert (untouched.access_count, untouched.last_access, untouched.access_frequency) == (
        0,
        0.0,
        0.0,
    )


def test_decayed_frequency_halves_every_half_life() -> None:
    reads = AccessStats()
    for t in (0.0, 10.0, 10.0):
        reads = reads.with_read(t, half_life_s=10.0)
    assert (reads.count, reads.last) == (3, 10.0)
    assert reads.frequency == pytest.approx(0.5 + 2)
    assert reads.frequency_at(30.0, 10.0) == pytest.approx(2.5 / 4)
    assert reads.frequency_at(5.0, 10.0) == reads.frequency  # never more than at the last read
    # Merging flushed and pending reads is the same as counting them in one go.
    early = AccessStats().with_read(0.0, 10.0)
    late = AccessStats().with_read(10.0, 10.0).with_read(10.0, 10.0)
    for merged in (early.merged(late, 10.0), late.merged(early, 10.0)):
        assert (merged.count, merged.last) == (reads.count, reads.last)
        assert merged.frequency == pytest.approx(reads.frequency)
    recorder = AccessRecorder(half_life_s=10.0)  # the read path's inlined arithmetic
    for t in (0.0, 10.0, 10.0):
        recorder.record("d", "s", 1, t)
    pending = recorder.pending("d", "s", 1)
    assert (pending.count, pending.last) == (3, 10.0)
    assert pending.frequency == pytest.approx(reads.frequency)
    assert recorder.drain() == {("d", "s", 1): pending} and recorder.drain() == {}
    packed = reads.pack()
    assert len(packed) == 24 <= 64 and AccessStats.unpack(packed) == reads
    assert AccessStats.unpack(packed[:8] + packed[8:16]) == AccessStats(3, 10.0, 0.0)
    assert math.isclose(AccessStats().frequency_at(100.0, 1.0), 0.0)


@pytest.mark.parametrize("entries", [0, 1, 5000])
def test_a_declaration_comes_back_from_the_ring_exactly_and_is_kept_packed(entries: int) -> None:
    # Kept as tuples of objects, a traced declaration cost ~110 bytes an entry, up to
    # 20 million entries node-wide: about 2 GB that one reader's plans could hold.
    names = tuple(f"train/ü-{index:05}.arrow" for index in range(entries))
    sizes = tuple(range(10**9, 10**9 + entries))
    ring = TraceRing(10)
    ring.plan_event(TracedPlan(0.0, "job", "d", names, sizes))
    (event,) = ring.events()
    assert isinstance(event, TracedPlan)
    assert (event.job, event.dataset, event.shards, event.sizes) == ("job", "d", names, sizes)
    (kept,) = ring._others.values()
    assert not isinstance(kept, TracedPlan)  # names in one bytes object, sizes in an array


def test_a_sizing_curve_is_made_at_most_once_per_reuse_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Any reader may ask for the curve, and a full ring takes seconds of CPU under the
    # GIL: four callers in a loop slowed every other call of the node a hundredfold.
    made: list[int] = []
    real = trace.miss_ratio_curve

    def counting(accesses: Any, capacities: Any, sample_rate: float) -> Any:
        made.append(len(accesses))
        return real(accesses, capacities, sample_rate=sample_rate)

    monkeypatch.setattr(trace, "miss_ratio_curve", counting)
    ring = TraceRing(100)
    ring.read("d", "a", 10, False)
    first = ring.sizing_curve(100, {"d"})
    ring.read("d", "b", 10, False)  # within the period: the same curve again
    assert ring.sizing_curve(100, {"d"}) == first and made == [1]
    assert ring.sizing_curve(100, None)[1] == 2 and made == [1, 2]  # other datasets: made
    monkeypatch.setattr(trace, "SIZING_REUSE_S", 0.0)
    assert ring.sizing_curve(100, {"d"})[1] == 2 and made == [1, 2, 2]  # period over
    assert ring.sizing_curve(100, {"d"})[1] == 2 and made == [1, 2, 2]  # nothing new
