"""The events of an access trace, as the simulator replays them.

A trace is a time-ordered sequence of these events over shards named by small
integer ids (``0 .. len(sizes) - 1``) with a size each. Recorded traces name shards
``(dataset, shard)``; :mod:`tierstore.sim.tracefile` maps them to ids when it loads one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Event", "PlanClosed", "PlanDeclared", "PositionReported", "Read", "Trace"]


@dataclass(frozen=True, slots=True)
class Read:
    """A read of shard ``key`` at time ``t``; ``job`` names the reader ("" if unknown).
    ``reported``: a local reader's read, reported later with others as a count (the node
    traces at most 3 of each shard a report, one after the other, at the report's time:
    :class:`~tierstore.types.TracedRead`)."""

    t: float
    key: int
    job: str = ""
    reported: bool = False


@dataclass(frozen=True, slots=True)
class PlanDeclared:
    """``job`` declares it will read ``keys`` in this order, from position 0 (a plan
    declared partway, as a resumed epoch's, is followed by its position at the same
    ``t``: no read rate is measured over no time)."""

    t: float
    job: str
    keys: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PositionReported:
    """``job`` has read the first ``position`` entries of its plan."""

    t: float
    job: str
    position: int


@dataclass(frozen=True, slots=True)
class PlanClosed:
    """``job`` is done with its plan."""

    t: float
    job: str


Event = Read | PlanDeclared | PositionReported | PlanClosed


@dataclass(frozen=True, slots=True)
class Trace:
    """Events in time order over shards ``0 .. len(sizes) - 1`` of the given sizes.

    ``name`` says where it came from (a workload and its parameters, or a file).
    """

    name: str
    sizes: tuple[int, ...]
    events: Sequence[Event]

    @property
    def dataset_bytes(self) -> int:
        return sum(self.sizes)

    def reads(self) -> list[Read]:
        """The read events alone, in order."""
        return [event for event in self.events if isinstance(event, Read)]
