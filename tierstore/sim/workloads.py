"""Built-in synthetic workloads: seeded, deterministic access traces.

Each workload is a function of ``(seed, full)``; ``full=False`` (the default) gives
small traces that replay in well under a second each, so the target tests stay
fast; ``full=True`` gives the sizes the report uses. Shards are ``0 .. n-1``; where
shards differ in popularity, popularity ranks are scattered over the keys by a seeded
permutation, so no policy can profit from key order.

* ``zipf-A`` — independent reads, Zipf(A) popularity over 10k (full: 100k) shards.
* ``epochs`` / ``epochs-planned`` / ``epochs-sequential`` — one job reading every
  shard once per epoch, reshuffled each epoch (``-sequential``: the same order every
  epoch); ``-planned`` declares the plan and reports its position.
* ``ddp`` — DistributedSampler: 4 ranks, each a job with its plan, reading their
  interleaved share of each epoch's global order at slightly different speeds.
* ``scan`` / ``scan-churn`` — a hot set read at Zipf(0.8) popularity, interrupted by
  bursts of one-pass sequential scans over the cold rest; ``-churn``: the hot set
  drifts (a tenth of it is replaced every phase).
* ``multi-job`` — 4 jobs sharing one dataset, each with its own shuffled plan, at
  different speeds that drift over time (sinusoidally, ±50%).
* ``replacement`` — one planned job sampling shards uniformly with replacement.
* ``varsize`` — Zipf(0.8) over shards of lognormal sizes (median 64 MiB).

Planned jobs emit :class:`PlanDeclared` at their start, :class:`PositionReported`
every ``REPORT_EVERY`` reads and :class:`PlanClosed` at the end; orders come from
:mod:`tierstore.plans`, so they are the orders a real loader would declare.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tierstore.errors import InvalidArgument
from tierstore.plans import SamplerKind, SamplerPlan, plan_indices
from tierstore.sim.events import Event, PlanClosed, PlanDeclared, PositionReported, Read, Trace

__all__ = ["NAMES", "REPORT_EVERY", "SHARD_BYTES", "generate", "warmup_reads"]

#: the size of every shard of the fixed-size workloads.
SHARD_BYTES = 64 * 1024 * 1024
#: a planned job reports its position after every this many reads.
REPORT_EVERY = 4

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class _Job:
    """One reader: its name, the shards it reads in order, and when it reads each."""

    name: str
    keys: IntArray
    times: npt.NDArray[np.float64]
    planned: bool


def _job_events(job: _Job) -> Iterator[tuple[float, int, Event]]:
    """The job's events as (time, tiebreak, event), in time order."""
    if job.planned:
        yield float(job.times[0]), 0, PlanDeclared(job.times[0], job.name, tuple(job.keys.tolist()))
    count = len(job.keys)
    for i, (t, key) in enumerate(zip(job.times.tolist(), job.keys.tolist(), strict=True)):
        yield t, 1, Read(t, key, job.name)
        if job.planned and ((i + 1) % REPORT_EVERY == 0 or i + 1 == count):
            yield t, 2, PositionReported(t, job.name, i + 1)
    if job.planned:
        yield float(job.times[-1]), 3, PlanClosed(float(job.times[-1]), job.name)


def _trace(name: str, sizes: Sequence[int], jobs: Sequence[_Job]) -> Trace:
    """Merge the jobs' events by time (ties: declare < read < report < close)."""
    if len(jobs) == 1 and not jobs[0].planned:
        # Nothing to merge: the reads alone, built directly (the big traces are these).
        job = jobs[0]
        reads = zip(job.times.tolist(), job.keys.tolist(), strict=True)
        direct: list[Event] = [Read(t, key, job.name) for t, key in reads]
        return Trace(name=name, sizes=tuple(int(size) for size in sizes), events=direct)
    streams = [
        ((t, order, index, event) for t, order, event in _job_events(job))
        for index, job in enumerate(jobs)
    ]
    events = [event for *_, event in heapq.merge(*streams, key=lambda item: item[:3])]
    return Trace(name=name, sizes=tuple(int(size) for size in sizes), events=events)


def _scatter(rng: np.random.Generator, count: int) -> IntArray:
    """A random relabelling of shards, so popularity rank says nothing of the key."""
    labels: IntArray = rng.permutation(count).astype(np.int64)
    return labels


def _zipf_ranks(rng: np.random.Generator, count: int, alpha: float, draws: int) -> IntArray:
    weights = np.arange(1, count + 1, dtype=np.float64) ** -alpha
    cdf = np.cumsum(weights)
    ranks: IntArray = np.searchsorted(cdf, rng.random(draws) * cdf[-1], side="right")
    return np.minimum(ranks, count - 1).astype(np.int64)


def _steady(count: int, rate: float, start: float = 0.0) -> npt.NDArray[np.float64]:
    return start + np.arange(count, dtype=np.float64) / rate


def _zipf(alpha: float) -> Callable[[int, bool], Trace]:
    def make(seed: int, full: bool) -> Trace:
        shards, draws = (100_000, 2_000_000) if full else (10_000, 150_000)
        rng = np.random.default_rng([seed, 1])
        keys = _scatter(rng, shards)[_zipf_ranks(rng, shards, alpha, draws)]
        job = _Job("", keys, _steady(draws, 1000.0), planned=False)
        return _trace(f"zipf-{alpha:g}(seed={seed})", [SHARD_BYTES] * shards, [job])

    return make


def _epochs(planned: bool, kind: SamplerKind) -> Callable[[int, bool], Trace]:
    def make(seed: int, full: bool) -> Trace:
        shards, epochs = (20_000, 8) if full else (2_000, 5)
        plan = SamplerPlan(kind, seed=seed, epochs=epochs)
        keys = plan_indices(plan, shards)
        job = _Job("trainer", keys, _steady(len(keys), 100.0), planned)
        label = "planned, " if planned else ""
        return _trace(f"epochs({label}{kind}, seed={seed})", [SHARD_BYTES] * shards, [job])

    return make


def _ddp(seed: int, full: bool) -> Trace:
    shards, epochs = (20_000, 6) if full else (2_000, 4)
    ranks = 4
    jobs = []
    for rank in range(ranks):
        plan = SamplerPlan(
            SamplerKind.SHUFFLE, seed=seed, rank=rank, world_size=ranks, epochs=epochs
        )
        keys = plan_indices(plan, shards)
        # Ranks run in near lockstep; the slowest sets the pace, the rest are ~1-3% faster.
        times = _steady(len(keys), 25.0 * (1.0 + 0.01 * rank), start=0.001 * rank)
        jobs.append(_Job(f"rank-{rank}", keys, times, planned=True))
    return _trace(f"ddp(ranks={ranks}, seed={seed})", [SHARD_BYTES] * shards, jobs)


def _scan(churn: bool) -> Callable[[int, bool], Trace]:
    def make(seed: int, full: bool) -> Trace:
        shards, hot, phases = (100_000, 5_000, 60) if full else (20_000, 1_000, 24)
        rng = np.random.default_rng([seed, 2])
        labels = _scatter(rng, shards)
        hot_set = np.arange(hot, dtype=np.int64)  # ranks into labels; the rest is cold
        next_new, cursor = hot, hot
        parts: list[IntArray] = []
        for _ in range(phases):
            parts.append(hot_set[_zipf_ranks(rng, hot, 0.8, 3 * hot)])
            # A one-pass scan over the cold shards, continuing where the last one ended.
            span = (cursor + np.arange(hot, dtype=np.int64) - hot) % (shards - hot) + hot
            parts.append(span)
            cursor += hot
            if churn:
                # A tenth of the hot set cools off and is replaced by new shards.
                leaving = rng.choice(hot, size=hot // 10, replace=False)
                hot_set[leaving] = (next_new + np.arange(hot // 10)) % shards
                next_new += hot // 10
        keys = labels[np.concatenate(parts)]
        job = _Job("", keys, _steady(len(keys), 1000.0), planned=False)
        name = f"scan({'churn, ' if churn else ''}seed={seed})"
        return _trace(name, [SHARD_BYTES] * shards, [job])

    return make


def _multi_job(seed: int, full: bool) -> Trace:
    shards, epochs = (20_000, 4) if full else (2_000, 3)
    rng = np.random.default_rng([seed, 3])
    jobs = []
    for index, base_rate in enumerate((40.0, 60.0, 90.0, 130.0)):
        plan = SamplerPlan(SamplerKind.SHUFFLE, seed=seed * 16 + index, epochs=epochs)
        keys = plan_indices(plan, shards)
        jobs.append(_Job(f"job-{index}", keys, _drifting(rng, len(keys), base_rate), True))
    return _trace(f"multi-job(seed={seed})", [SHARD_BYTES] * shards, jobs)


def _drifting(rng: np.random.Generator, count: int, base_rate: float) -> npt.NDArray[np.float64]:
    """Read times of a job whose speed drifts ±50% around ``base_rate`` (reads/s)."""
    period = count / base_rate / rng.uniform(1.5, 3.0)  # 1.5-3 speed cycles per job
    phase = rng.uniform(0.0, 2.0 * math.pi)
    start = rng.uniform(0.0, 5.0)
    times = np.empty(count, dtype=np.float64)
    t = start
    for i in range(count):
        times[i] = t
        t += 1.0 / (base_rate * (1.0 + 0.5 * math.sin(2.0 * math.pi * t / period + phase)))
    return times


def _replacement(seed: int, full: bool) -> Trace:
    shards, epochs = (20_000, 5) if full else (2_000, 5)
    plan = SamplerPlan(SamplerKind.REPLACEMENT, seed=seed, epochs=epochs)
    keys = plan_indices(plan, shards)
    job = _Job("sampler", keys, _steady(len(keys), 100.0), planned=True)
    return _trace(f"replacement(seed={seed})", [SHARD_BYTES] * shards, [job])


def _varsize(seed: int, full: bool) -> Trace:
    shards, draws = (100_000, 1_000_000) if full else (10_000, 60_000)
    rng = np.random.default_rng([seed, 4])
    sizes = np.maximum(rng.lognormal(math.log(SHARD_BYTES), 1.0, shards), 1024).astype(np.int64)
    keys = _scatter(rng, shards)[_zipf_ranks(rng, shards, 0.8, draws)]
    job = _Job("", keys, _steady(draws, 1000.0), planned=False)
    return _trace(f"varsize(seed={seed})", sizes.tolist(), [job])


_WORKLOADS: dict[str, Callable[[int, bool], Trace]] = {
    **{f"zipf-{label}": _zipf(float(label)) for label in ("0", "0.6", "0.8", "1.0", "1.2")},
    "epochs": _epochs(False, SamplerKind.SHUFFLE),
    "epochs-planned": _epochs(True, SamplerKind.SHUFFLE),
    "epochs-sequential": _epochs(False, SamplerKind.SEQUENTIAL),
    "ddp": _ddp,
    "scan": _scan(churn=False),
    "scan-churn": _scan(churn=True),
    "multi-job": _multi_job,
    "replacement": _replacement,
    "varsize": _varsize,
}
NAMES: tuple[str, ...] = tuple(_WORKLOADS)


def generate(name: str, *, seed: int, full: bool = False) -> Trace:
    """The workload ``name`` for ``seed`` (same arguments, same trace, on any machine
    with the same numpy). Raises InvalidArgument for an unknown name or a negative seed."""
    make = _WORKLOADS.get(name)
    if make is None:
        raise InvalidArgument(f"no workload is called {name!r}; valid names: {', '.join(NAMES)}")
    if seed < 0:
        raise InvalidArgument(f"seed must not be negative (the CLI's --seed), got {seed}")
    return make(seed, full)


#: workloads whose reads are independent draws (no epochs): warm up on half of them.
_STATIONARY = ("zipf-", "scan", "varsize")


def warmup_reads(name: str, trace: Trace) -> int:
    """Reads of ``trace`` (made by workload ``name``) to leave out of steady-state
    figures: half of them for the stationary workloads (Zipf, scans, varsize: the
    frequency estimates of a policy need that long to settle on 10k shards), one pass
    over the dataset (the first epoch) for the others. Raises InvalidArgument for an
    unknown name."""
    if name not in _WORKLOADS:
        raise InvalidArgument(f"no workload is called {name!r}; valid names: {', '.join(NAMES)}")
    if name.startswith(_STATIONARY):
        return len(trace.reads()) // 2
    return len(trace.sizes)
