"""The declared access plans of live jobs, indexed for next-use lookups.

A :class:`JobPlan` is one job's plan over dense slots: the slot of each entry, a
flag marking each slot's last entry in the plan, the job's position (how many entries
it has read), its read rate, and the time of its last report. :class:`PlanBook` holds
the live jobs and the flat arrays the :func:`~tierstore.policy.kernels.next_use_times`
kernel searches (rebuilt when a job is declared, closed or expires; O(plan length),
which a declaration costs anyway).

Positions only go forward: a report behind the known position is ignored (a reader
that restarts declares again). Besides reports, a job's position advances when the
next read is exactly its next entry (:meth:`PlanBook.observe`), so lookups stay
right between reports, however rarely the reader reports.

The index is CSR per job: ``offsets[slot]:offsets[slot + 1]`` delimit the slot's
entry positions (ascending) in ``positions``; a lookup reads two adjacent offsets and
binary-searches a few positions (one per epoch the plan spans), which touches a
couple of cache lines even with millions of shards — a binary search over the whole
plan would miss the cache some twenty times.

Per plan entry: slot (4 bytes) + last-entry flag (1) + position (4) = 9 bytes; per
job and shard: an offset (4 bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tierstore.policy.kernels import next_use_times

__all__ = ["JobPlan", "PlanBook"]

#: weight of the newest rate sample in the job's smoothed rate.
_RATE_SMOOTHING = 0.3
#: entries per second assumed for a job before two reports measured it.
_DEFAULT_RATE = 1.0


@dataclass(slots=True, eq=False)
class JobPlan:
    """One job's plan and progress (mutable; owned by a :class:`PlanBook`)."""

    name: str
    slots: npt.NDArray[np.int32]
    last: npt.NDArray[np.bool_]
    offsets: npt.NDArray[np.uint32]  # CSR over slots 0 .. len(offsets) - 2
    positions: npt.NDArray[np.uint32]
    reported_at: float
    position: int = 0
    reported: int = 0
    rate: float = 0.0  # 0: not measured yet
    index: int = 0  # in the book's per-job arrays
    slot_view: memoryview = field(init=False)
    last_view: memoryview = field(init=False)

    def __post_init__(self) -> None:
        self.slot_view = self.slots.data
        self.last_view = self.last.data

    def __len__(self) -> int:
        return len(self.slots)

    def remaining(self) -> npt.NDArray[np.int32]:
        """The distinct slots the job will still read (each exactly once)."""
        tail = slice(self.position, None)
        remaining: npt.NDArray[np.int32] = self.slots[tail][self.last[tail]]
        return remaining


class PlanBook:
    """Live jobs' plans; ``on_done(slots)`` is told, on every advance, close or
    expiry, which slots some job will no longer read (so its reference counts stay
    right: each distinct slot of a plan is one reference until the job passes its
    last entry)."""

    def __init__(self, on_done: Callable[[npt.NDArray[np.int32]], None]) -> None:
        self._jobs: dict[str, JobPlan] = {}
        self._on_done = on_done
        # All live jobs' CSR arrays end to end, and where each job's part starts.
        self._offsets, self._offset_starts = _concatenated([])
        self._entries, self._entry_starts = _concatenated([])
        self._positions = np.zeros(0, dtype=np.int64)
        self._rates = np.zeros(0, dtype=np.float64)

    def __iter__(self) -> Iterator[JobPlan]:
        return iter(self._jobs.values())

    def __len__(self) -> int:
        return len(self._jobs)

    def declare(self, name: str, slots: npt.NDArray[np.int32], now: float) -> JobPlan:
        """Add ``name``'s plan (closing its previous one); returns it."""
        self.close(name)
        count = len(slots)
        # A stable sort groups each slot's entries in position order: the CSR positions,
        # and the last of each group is the slot's last entry.
        order = np.argsort(slots, kind="stable")
        grouped = slots[order]
        last = np.zeros(count, dtype=np.bool_)
        if count:
            ends = np.append(grouped[1:] != grouped[:-1], True)
            last[order[ends]] = True
        span = int(slots.max()) + 1 if count else 0
        offsets = np.zeros(span + 1, dtype=np.uint32)
        np.cumsum(np.bincount(slots, minlength=span), out=offsets[1:])
        job = JobPlan(name, slots, last, offsets, order.astype(np.uint32), reported_at=now)
        self._jobs[name] = job
        self._rebuild()
        return job

    def close(self, name: str) -> None:
        """Forget ``name``'s plan, if any."""
        job = self._jobs.pop(name, None)
        if job is not None:
            self._on_done(job.remaining())
            self._rebuild()

    def expire(self, now: float, ttl: float) -> None:
        """Close every job whose last report (or declaration) is more than ``ttl`` ago."""
        for job in [job for job in self._jobs.values() if now - job.reported_at > ttl]:
            self.close(job.name)

    def report(self, name: str, position: int, now: float) -> None:
        """``name`` has read ``position`` entries (unknown jobs are ignored)."""
        job = self._jobs.get(name)
        if job is None:
            return
        position = min(position, len(job))
        if now > job.reported_at and position > job.reported:
            sample = (position - job.reported) / (now - job.reported_at)
            job.rate = (
                sample
                if job.rate == 0.0
                else (_RATE_SMOOTHING * sample + (1.0 - _RATE_SMOOTHING) * job.rate)
            )
        job.reported, job.reported_at = max(job.reported, position), now
        self._refresh_rates()
        self._advance(job, position)

    def observe(self, slot: int) -> None:
        """A read of ``slot``: the first job whose next entry it is moves past it (one
        read is one job's; when two jobs are due to read it, the other's report will
        tell)."""
        for job in self._jobs.values():
            if job.position < len(job.slots) and job.slot_view[job.position] == slot:
                self._advance(job, job.position + 1)
                return

    def _advance(self, job: JobPlan, position: int) -> None:
        if position <= job.position:
            return
        if position == job.position + 1:
            # One read (the common case): no array slicing.
            if job.last_view[job.position]:
                self._on_done(job.slots[job.position : position])
        else:
            passed = slice(job.position, position)
            done = job.slots[passed][job.last[passed]]
            if len(done):
                self._on_done(done)
        job.position = position
        self._positions[job.index] = position

    def rate(self, job: JobPlan) -> float:
        """``job``'s entries per second: measured, else the mean of the measured jobs
        (a job not measured yet is assumed as fast as the others), else 1. O(1): read
        from the rates kept since the last declare, close or report."""
        return float(self._rates[job.index])

    def next_use(self, slots: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """Estimated seconds until each slot's next planned read (inf: none)."""
        times: npt.NDArray[np.float64] = next_use_times(
            self._offsets,
            self._offset_starts,
            self._entries,
            self._entry_starts,
            self._positions,
            self._rates,
            slots,
        )
        return times

    def _rebuild(self) -> None:
        jobs = list(self._jobs.values())
        for index, job in enumerate(jobs):
            job.index = index
        self._offsets, self._offset_starts = _concatenated([job.offsets for job in jobs])
        self._entries, self._entry_starts = _concatenated([job.positions for job in jobs])
        self._positions = np.array([job.position for job in jobs], dtype=np.int64)
        self._refresh_rates()

    def _refresh_rates(self) -> None:
        # One pass for the mean, one for the rates: asking each job for the mean of all
        # made every report cost O(jobs²) (64 ms with 2,000 plans open).
        measured = [job.rate for job in self._jobs.values() if job.rate > 0.0]
        fallback = sum(measured) / len(measured) if measured else _DEFAULT_RATE
        self._rates = np.array(
            [job.rate if job.rate > 0.0 else fallback for job in self._jobs.values()],
            dtype=np.float64,
        )


def _concatenated(
    parts: list[npt.NDArray[np.uint32]],
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64]]:
    """The parts end to end, and the index where each starts (plus the total)."""
    lengths = np.array([len(part) for part in parts], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths)))
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
    return joined, starts
