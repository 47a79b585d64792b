"""Trace events in batches and back (tierstore/wire/trace.py)."""

from __future__ import annotations

import pytest

from tierstore.errors import InvalidArgument
from tierstore.types import TracedClose, TracedPlan, TracedPosition, TracedRead, TraceEvent
from tierstore.v1 import admin_pb2
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


def plan_message(
    dataset: str, shards: list[str], sizes: list[int], *, continued: bool
) -> admin_pb2.TraceEvent:
    plan = admin_pb2.TracedPlan(
        job="j", dataset=dataset, shards=shards, sizes=sizes, continued=continued
    )
    return admin_pb2.TraceEvent(t=1.0, plan=plan)


def test_a_continued_piece_of_another_dataset_is_refused() -> None:
    # Joined by job alone: dataset B's shards were made dataset A's.
    first = plan_message("a", ["x"], [1], continued=False)
    other = plan_message("b", ["y"], [2], continued=True)
    batch = admin_pb2.ExportTraceResponse(events=[first, other])
    with pytest.raises(InvalidArgument, match="no plan of its job and dataset"):
        list(trace_events_from_pb([batch]))


@pytest.mark.parametrize("continued", [False, True], ids=["first", "continued"])
def test_a_piece_whose_shards_and_sizes_differ_in_length_is_refused(continued: bool) -> None:
    # It passed through: export_trace yielded a plan of 2 shards and 1 size.
    bad = plan_message("a", ["y", "z"], [2], continued=continued)
    events = [plan_message("a", ["x"], [1], continued=False), bad] if continued else [bad]
    batch = admin_pb2.ExportTraceResponse(events=events)
    with pytest.raises(InvalidArgument, match="a plan piece has 2 shards but 1 sizes"):
        list(trace_events_from_pb([batch]))
