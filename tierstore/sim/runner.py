"""The sweep behind ``tierstore simulate``: every policy at every capacity, per seed.

:func:`sweep` replays each trace against each policy at each capacity (a fraction
of the trace's dataset bytes), always including the LRU baseline and the offline
optimum (Belady) so every row can be compared with both, and averages over the
traces (one per seed). Names and fractions are checked before the first trace is
built, capacities against the shards before the first replay, so a mistake fails
at once rather than after a long run.

Thread-safe: each call makes its own policies and shares nothing; its replays
run one after another.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import fmean

from tierstore.errors import InvalidArgument
from tierstore.policy.registry import (
    OFFLINE_POLICY_NAMES,
    check_policy_name,
    make_driven_policy,
    make_policy,
)
from tierstore.sim.events import Trace
from tierstore.sim.report import SweepRow, ratio
from tierstore.sim.simulator import SimResult, simulate

__all__ = ["BASELINE", "OPTIMUM", "Progress", "TraceSource", "sweep", "sweep_policies"]

#: the baseline every row is compared with.
BASELINE = "lru"
#: the offline optimum every row is compared with.
OPTIMUM = "belady"

#: one trace per seed (a workload generator), or the traces themselves.
TraceSource = Callable[[int], Trace] | Sequence[Trace]
#: called after each replay with (replays done, replays in all).
Progress = Callable[[int, int], None]


def sweep_policies(policies: Sequence[str]) -> list[str]:
    """The policies a sweep of ``policies`` runs: those asked for, in order and without
    repeats, then the baseline and the optimum if they were not asked for.

    Raises UnknownPolicy (listing the valid names) for a name no policy answers to.
    """
    for name in policies:
        check_policy_name(name)
    return list(dict.fromkeys([*policies, BASELINE, OPTIMUM]))


def sweep(
    source: TraceSource,
    policies: Sequence[str],
    capacity_fractions: Sequence[float],
    seeds: Sequence[int] | None = None,
    *,
    workload: str | None = None,
    progress: Progress | None = None,
    warmup: Callable[[Trace], int] | None = None,
) -> list[SweepRow]:
    """Rows for every (capacity fraction, policy), averaged over the traces.

    ``source`` is either a function from a seed to a trace, called once for each of
    ``seeds`` (default ``[0]``), or a sequence of traces (then ``seeds`` must be
    None; each trace counts as one seed). Rows come ordered by capacity fraction,
    then policy as :func:`sweep_policies` orders them. ``workload`` names the rows
    (default: the first trace's name). ``warmup(trace)``: how many of a trace's first
    reads to replay without counting them (default: none; the tier starts cold, so the
    figures then include filling it).

    Raises UnknownPolicy for an unknown policy name; InvalidArgument for no
    policies, no capacities, a fraction outside (0, 1], no seeds or traces, seeds
    given with a sequence of traces, a trace without reads (checked before its
    capacities) or a warm-up that leaves none to count, or a capacity smaller than
    the trace's largest shard (such a tier could never hold that shard).
    """
    if not policies:
        raise InvalidArgument("no policies to simulate")
    names = sweep_policies(policies)
    fractions = _checked_fractions(capacity_fractions)
    traces = _traces(source, seeds)
    # Reads first: a trace without any (plan events alone) needs no other capacity.
    skips = [_warmup_reads(trace, warmup) for trace in traces]
    # capacities[trace index][fraction index], all checked before the first replay.
    capacities = [[_capacity(trace, f) for f in fractions] for trace in traces]
    runs = len(traces) * len(fractions) * len(names)
    done = 0
    # results[fraction index][policy]: one result per trace
    results: list[dict[str, list[SimResult]]] = [{n: [] for n in names} for _ in fractions]
    for trace, trace_capacities, skip in zip(traces, capacities, skips, strict=True):
        future = [read.key for read in trace.reads()]
        for index, capacity in enumerate(trace_capacities):
            for name in names:
                policy = (
                    make_policy(name, future=future)
                    if name in OFFLINE_POLICY_NAMES
                    else make_driven_policy(name)  # as the node runs it
                )
                results[index][name].append(simulate(trace, policy, capacity, warmup_reads=skip))
                done += 1
                if progress is not None:
                    progress(done, runs)
    label = workload if workload is not None else traces[0].name
    rows: list[SweepRow] = []
    for index, fraction in enumerate(fractions):
        means = {name: _Means.of(results[index][name]) for name in names}
        lru, belady = means[BASELINE], means[OPTIMUM]
        for name in names:
            mean = means[name]
            rows.append(
                SweepRow(
                    workload=label,
                    policy=name,
                    capacity_fraction=fraction,
                    capacity_bytes=round(fmean(c[index] for c in capacities)),
                    seeds=len(traces),
                    hit_ratio=mean.hit_ratio,
                    byte_hit_ratio=mean.byte_hit_ratio,
                    miss_ratio=mean.miss_ratio,
                    miss_ratio_vs_belady=ratio(mean.miss_ratio, belady.miss_ratio),
                    miss_ratio_vs_lru=ratio(mean.miss_ratio, lru.miss_ratio),
                    hit_ratio_vs_lru=ratio(mean.hit_ratio, lru.hit_ratio),
                    warmup_reads=round(fmean(skips)),
                )
            )
    return rows


@dataclass(frozen=True, slots=True)
class _Means:
    """The mean ratios of one policy's runs at one capacity."""

    hit_ratio: float
    byte_hit_ratio: float
    miss_ratio: float

    @classmethod
    def of(cls, results: Sequence[SimResult]) -> _Means:
        return cls(
            fmean(r.hit_ratio for r in results),
            fmean(r.byte_hit_ratio for r in results),
            fmean(r.miss_ratio for r in results),
        )


def _capacity(trace: Trace, fraction: float) -> int:
    capacity = int(fraction * trace.dataset_bytes)
    largest = max(trace.sizes, default=0)
    if capacity < largest:
        least = math.ceil(largest / trace.dataset_bytes * 1e4) / 1e4  # rounded up
        raise InvalidArgument(
            f"capacity {fraction:g} of {trace.name} ({trace.dataset_bytes:,} bytes) "
            f"is {capacity:,} bytes, smaller than its largest shard ({largest:,} bytes): "
            f"give capacities of at least {least:g} of it (the CLI's --capacity)"
        )
    return capacity


def _checked_fractions(fractions: Sequence[float]) -> list[float]:
    if not fractions:
        raise InvalidArgument("no capacities to simulate")
    for fraction in fractions:
        # `not (0 < f <= 1)` rather than `f <= 0 or f > 1`: also refuses NaN.
        if not 0.0 < fraction <= 1.0:
            raise InvalidArgument(
                f"capacity {fraction:g} is not a fraction of the dataset in (0, 1]"
            )
    return list(dict.fromkeys(fractions))


def _traces(source: TraceSource, seeds: Sequence[int] | None) -> list[Trace]:
    if callable(source):
        seed_list = [0] if seeds is None else list(seeds)
        if not seed_list:
            raise InvalidArgument("no seeds to simulate")
        return [source(seed) for seed in seed_list]
    if seeds is not None:
        raise InvalidArgument("seeds go with a trace factory, not with a list of traces")
    traces = list(source)
    if not traces:
        raise InvalidArgument("no traces to simulate")
    return traces


def _warmup_reads(trace: Trace, warmup: Callable[[Trace], int] | None) -> int:
    """How many of ``trace``'s first reads ``warmup`` leaves uncounted (0 without it).
    InvalidArgument for a trace without reads, a negative count, or one that leaves no
    read to count."""
    skip = 0 if warmup is None else warmup(trace)
    reads = len(trace.reads())
    if not reads:  # its ratios would be 0 hits of 0: a miss ratio of 1.000, for nothing
        raise InvalidArgument(
            f"{trace.name!r} holds no reads (plan events alone, say): nothing to simulate"
        )
    if skip < 0:
        raise InvalidArgument(f"the warm-up must not be negative, got {skip} reads")
    if skip and skip >= reads:
        raise InvalidArgument(
            f"a warm-up of {skip:,} reads leaves none of {trace.name!r}'s {reads:,} to count"
        )
    return skip
