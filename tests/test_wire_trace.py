"""Trace events in batches and back (tierstore/wire/trace.py)."""

from __future__ import annotations

import pytest

from tierstore.types import TracedClose, TracedPlan, TracedPosition, TracedRead, TraceEvent
from tierstore.wire.trace import trace_events_from_pb, trace_events_to_pb


def round_trip(events: list[TraceEvent], batch_bytes: int) -> list[TraceEvent]:
    return list(trace_events_from_pb(trace_events_to_pb(events, batch_bytes)))


def test_events_come_back_as_they_went_a_long_plan_in_pieces() -> None:
    plan = TracedPlan(1.0, "j", "d", tuple(f"s{i}" for i in range(300)), tuple(range(300)))
    again = TracedPlan(2.0, "j", "d", ("b", "a"), (2, 1))  # the same job's next plan
    events: list[TraceEvent] = [
        plan,
        again,
        TracedRead(3.0, "d", "é☃", 2**64 - 1, True, False),
        TracedPosition(4.0, "j", "d", 1),
        TracedClose(5.0, "j", "d"),
    ]
    batches = list(trace_events_to_pb(events, 500))
    assert len(batches) > 5  # the first plan went in pieces
    assert list(trace_events_from_pb(batches)) == events


@pytest.mark.parametrize("name", ["数据集分片" * 40, "\U0001f600" * 100], ids=["cjk", "emoji"])
def test_a_batch_is_sized_in_bytes_not_characters(name: str) -> None:
    # A CJK name is 3 bytes a character and an emoji 4: batches of them were 2.7 and
    # 3.5 times their size (11 MiB against the documented ~4 MiB).
    limit = 64 << 10
    shards = tuple(f"{name}{i}" for i in range(1000))
    plan = TracedPlan(1.0, "j", "d", shards, (1,) * len(shards))
    reads = [TracedRead(2.0, "d", shard, 1, False) for shard in shards]
    batches = list(trace_events_to_pb([plan, *reads], limit))
    entry = len(shards[0].encode()) + 64  # one more name and its fields at most
    assert max(batch.ByteSize() for batch in batches) <= limit + entry
    assert list(trace_events_from_pb(batches)) == [plan, *reads]
