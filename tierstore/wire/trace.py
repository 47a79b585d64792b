"""Access-trace events and sizing curves ⇄ tierstore.v1 messages.

A trace is sent as a stream of :class:`ExportTraceResponse` batches of at most
about 4 MiB (far below the message limit). A plan event can be longer than that
(millions of entries): it is cut into pieces, the later ones marked
``continued``, and put together again by :func:`trace_events_from_pb`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from tierstore.errors import InvalidArgument
from tierstore.types import (
    SizingPoint,
    TracedClose,
    TracedPlan,
    TracedPosition,
    TracedRead,
    TraceEvent,
)
from tierstore.v1 import admin_pb2, placement_pb2

__all__ = [
    "sizing_from_pb",
    "sizing_to_pb",
    "trace_events_from_pb",
    "trace_events_to_pb",
]

#: bytes of events a batch holds at most (roughly: names' UTF-8 bytes plus a fixed cost
#: an entry).
BATCH_BYTES = 4 << 20
_ENTRY_BYTES = 24


def trace_events_to_pb(
    events: Iterable[TraceEvent], batch_bytes: int = BATCH_BYTES
) -> Iterator[admin_pb2.ExportTraceResponse]:
    """``events`` as response batches, in order; no batch is much over ``batch_bytes``."""
    batch = admin_pb2.ExportTraceResponse()
    size = 0
    for event in events:
        for message, cost in _messages(event, batch_bytes):
            if size and size + cost > batch_bytes:
                yield batch
                batch, size = admin_pb2.ExportTraceResponse(), 0
            batch.events.append(message)
            size += cost
    if size:
        yield batch


def _messages(event: TraceEvent, batch_bytes: int) -> Iterator[tuple[admin_pb2.TraceEvent, int]]:
    """One event as messages (several for a long plan) with their rough sizes."""
    if isinstance(event, TracedRead):
        read = admin_pb2.TracedRead(
            dataset=event.dataset,
            shard=event.shard,
            size=event.size,
            hit=event.hit,
            reported=event.reported,
        )
        yield admin_pb2.TraceEvent(t=event.t, read=read), _cost(event.dataset, event.shard)
    elif isinstance(event, TracedPosition):
        position = admin_pb2.TracedPosition(
            job=event.job, dataset=event.dataset, position=event.position
        )
        yield admin_pb2.TraceEvent(t=event.t, position=position), _cost(event.job)
    elif isinstance(event, TracedClose):
        close = admin_pb2.TracedClose(job=event.job, dataset=event.dataset)
        yield admin_pb2.TraceEvent(t=event.t, close=close), _cost(event.job)
    else:
        for index, (start, stop, cost) in enumerate(_pieces(event.shards, batch_bytes)):
            plan = admin_pb2.TracedPlan(
                job=event.job,
                dataset=event.dataset,
                shards=event.shards[start:stop],
                sizes=event.sizes[start:stop],
                continued=index > 0,
            )
            yield admin_pb2.TraceEvent(t=event.t, plan=plan), cost + _cost(event.job)


def _pieces(shards: Sequence[str], limit: int) -> Iterator[tuple[int, int, int]]:
    """``(start, stop, bytes)`` of consecutive pieces of at most ``limit`` bytes each
    (one piece, maybe empty, at least)."""
    start = cost = 0
    for index, name in enumerate(shards):
        entry = _cost(name)
        if cost and cost + entry > limit:
            yield start, index, cost
            start, cost = index, 0
        cost += entry
    yield start, len(shards), cost


def _cost(*names: str) -> int:
    # In bytes, as the message holds them: a CJK name takes 3 a character, and counted
    # in characters made batches of 11 MiB. (isascii is a flag look-up, and nearly
    # every name is ASCII: no copy is made for those.)
    return sum(len(n) if n.isascii() else len(n.encode()) for n in names) + _ENTRY_BYTES


def trace_events_from_pb(
    responses: Iterable[admin_pb2.ExportTraceResponse],
) -> Iterator[TraceEvent]:
    """The events of a stream of batches, plan pieces put together again.

    Raises InvalidArgument for an event of no known kind, a plan piece whose shards
    and sizes differ in length, or a ``continued`` piece that follows no plan of its
    job and dataset.
    """
    plan: admin_pb2.TraceEvent | None = None  # a plan whose pieces may still come
    shards: list[str] = []
    sizes: list[int] = []
    for response in responses:
        for message in response.events:
            which = message.WhichOneof("event")
            if which == "plan" and _piece_continues(plan, message.plan):
                shards.extend(message.plan.shards)
                sizes.extend(message.plan.sizes)
                continue
            if plan is not None:
                yield TracedPlan(plan.t, plan.plan.job, plan.plan.dataset, (*shards,), (*sizes,))
                plan = None
            if which == "plan":
                plan = message
                shards, sizes = list(message.plan.shards), list(message.plan.sizes)
            elif which == "read":
                r = message.read
                yield TracedRead(message.t, r.dataset, r.shard, r.size, r.hit, r.reported)
            elif which == "position":
                pos = message.position
                yield TracedPosition(message.t, pos.job, pos.dataset, pos.position)
            elif which == "close":
                yield TracedClose(message.t, message.close.job, message.close.dataset)
            else:
                raise InvalidArgument(f"a trace event of no known kind ({which})")
    if plan is not None:
        yield TracedPlan(plan.t, plan.plan.job, plan.plan.dataset, (*shards,), (*sizes,))


def _piece_continues(plan: admin_pb2.TraceEvent | None, piece: admin_pb2.TracedPlan) -> bool:
    """Whether ``piece`` continues ``plan`` (the plan whose pieces may still come) rather
    than starting a plan; InvalidArgument if it is not a piece of one."""
    if len(piece.shards) != len(piece.sizes):
        raise InvalidArgument(
            f"a plan piece has {len(piece.shards):,} shards but {len(piece.sizes):,} sizes"
        )
    if not piece.continued:
        return False
    # Job and dataset: one job's plans of two datasets must not run together.
    if plan is None or (plan.plan.job, plan.plan.dataset) != (piece.job, piece.dataset):
        raise InvalidArgument("a continued plan piece follows no plan of its job and dataset")
    return True


def sizing_to_pb(points: Iterable[SizingPoint]) -> list[placement_pb2.SizingPoint]:
    return [
        placement_pb2.SizingPoint(capacity_bytes=p.capacity_bytes, miss_ratio=p.miss_ratio)
        for p in points
    ]


def sizing_from_pb(points: Iterable[placement_pb2.SizingPoint]) -> list[SizingPoint]:
    return [SizingPoint(p.capacity_bytes, p.miss_ratio) for p in points]
