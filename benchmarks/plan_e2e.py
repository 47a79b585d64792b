"""End to end on the live server: a reader that declares its plan, against a throttled archive.

What it measures (the placement-policy issue's target): a reader — this script, through
``tierstore.connect`` — declares its access plan over a dataset twice the hot tier's size
(N = 2C) and reads it at ``r`` shards/s while the archive delivers at most ``b`` bytes/s,
with ``b >= (1 - C/N) * r * shard size``. For the ``clairvoyant`` policy (plan used) and
for ``lru`` (same dataset, same plan declared, same order) it reports:

* **hit ratio, measured** — per read, whether the server served it from the hot tier:
  the ``hit`` flag of the server's own trace, exported after the run (cross-checked
  against the per-dataset hit/miss counters). With ``--local-reads`` (hot shards read in
  place by the client, docs/local-reads.md) a read served in place is a hit and one that
  went through the service a miss;
* **hit ratio, predicted** — the simulator (:func:`tierstore.sim.simulator.simulate`) on
  the run itself: the exported trace (the plan, the reads and position reports at the
  times the server saw them, the stored sizes; with ``--local-reads``, the reader's own
  record, because local hits reach the server's trace in batches), the same policy, a hot
  tier of C, and ``PrefetchModel(b, depth, horizon, shared_link=True)``: the engine's
  prefetch budget (``depth`` requests, ``b x horizon`` bytes) on one link of ``b`` that
  the transfers on it split evenly, as the proxy's token bucket does, each after the
  proxy's time to first byte (missed reads cross it too, fetched shards take their
  room when they land and the policy is asked again then, as in the engine;
  docs/policies.md, "The simulator"). For reference also with
  ``depth`` channels of ``b / depth`` and of ``b`` each, and the a-priori prediction: the
  plan read exactly every ``1/r`` s;
* **stall fraction** — the loader's compute per shard is fixed at ``1/r`` minus a hot
  read; a read's stall is its wall time beyond the median hot read (measured before each
  run, on promoted shards), at least 0; the fraction is the stalls' sum over the wall time
  of the measured reads' steps (read + compute).

Targets (clairvoyant): stall fraction <= 5 %, ``|measured - predicted| <= 0.02``.

How: :mod:`plan_e2e_cases` starts SeaweedFS, a throttling proxy (``b`` over all
connections, 20 ms to first byte) and ``tierstore serve`` on loopback, with a hot tier of
C (whole shards; watermarks set so that it evicts one shard per shard in, as the simulator
does) and the prefetcher's bandwidth estimate set to ``b``. The dataset is written through
the client and archived. Per policy: every shard is evicted (the run starts cold), the
policy is set (a fresh policy object), the plan declared (``SamplerPlan(SHUFFLE, seed,
epochs=E)``) and read. The first epoch warms the hot tier and is not counted: from cold,
any policy must fetch all N at ``b < r``.

Run: ``python benchmarks/plan_e2e.py [--full] [--json OUT]`` (about 2.5 minutes by default
on a 2-core machine; ``--full`` is 4x the data, and LRU then takes about 8 minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from plan_e2e_cases import (
    MiB,
    NodeSettings,
    Testbed,
    live_trace,
    predict,
    reader_trace,
    run_events,
    save_trace,
    schedule_trace,
    stored_bytes,
)

from tierstore.client.client import DEFAULT_FRAME_BYTES
from tierstore.plans import SamplerKind, SamplerPlan, rank_order
from tierstore.types import TracedRead

DATASET = "plan-e2e"
STALL_TARGET = 0.05
DIFF_TARGET = 0.02


@dataclass(frozen=True, slots=True)
class Sample:
    """One read of the reader (``perf_counter`` times): when it started, how long it
    took, when its position was reported, when the loader's step (read + compute) ended,
    and whether the client served it in place (local read path)."""

    shard: str
    start: float
    read_s: float
    reported: float
    end: float
    local: bool


@dataclass(frozen=True, slots=True)
class PolicyRun:
    """The figures of one policy's run (measured epochs only, unless said otherwise)."""

    policy: str
    reads: int
    hits: int
    hit_ratio: float
    predicted: float
    predicted_split: float
    predicted_unshared: float
    predicted_schedule: float
    diff: float
    stall_fraction: float
    stall_s: float
    stall_on_misses_s: float
    wall_s: float
    hot_read_s: float
    median_hit_read_s: float
    median_miss_read_s: float
    #: the warm-up epochs (from a cold hot tier): hit ratio and stall fraction.
    warmup_hit_ratio: float
    warmup_stall_fraction: float
    #: the simulator's stall (reads waiting for prefetches in flight) and prefetches over
    #: the whole run, warm-up included (the simulator does not split them).
    predicted_stall_s_all: float
    predicted_prefetches_all: int
    #: server counters over the whole run: promotions, evictions, archive GETs, bytes.
    counters: dict[str, float]
    counter_hits: int
    counter_misses: int
    local_reads: int
    run_wall_s: float
    #: per measured read: its wall time and whether it was a hit.
    read_s: tuple[float, ...]
    hit: tuple[bool, ...]
    #: per warm-up read: its wall time and whether it was a hit.
    warmup_read_s: tuple[float, ...]
    warmup_hit: tuple[bool, ...]

    @property
    def stall_met(self) -> bool:
        return self.stall_fraction <= STALL_TARGET

    @property
    def diff_met(self) -> bool:
        return abs(self.diff) <= DIFF_TARGET


# The reader.


def read_plan(bed: Testbed, job: str, order: list[str], rate: float, hot_s: float) -> list[Sample]:
    """Read ``order`` like a loader whose compute takes ``1/rate - hot_s`` per shard:
    read, report the position, compute (sleep), next. A slow read delays everything after
    it (no read-ahead in the loader: prefetching is the server's job)."""
    client = bed.client
    compute_s = 1.0 / rate - hot_s
    samples = []
    for position, name in enumerate(order, start=1):
        local_before = client.read_counts.local if bed.local_reads else 0
        start = time.perf_counter()
        client.get(DATASET, name)
        read_s = time.perf_counter() - start
        local = bed.local_reads and client.read_counts.local > local_before
        client.report_position(job, position)
        reported = time.perf_counter()
        pause = start + read_s + compute_s - reported
        if pause > 0:
            time.sleep(pause)
        samples.append(Sample(name, start, read_s, reported, time.perf_counter(), local))
    return samples


def stall_fraction(samples: list[Sample], hot_s: float) -> float:
    """Time the reads took beyond a hot read, over the wall time of their steps."""
    if not samples:
        return 0.0
    stalled = sum(max(0.0, s.read_s - hot_s) for s in samples)
    return stalled / (samples[-1].end - samples[0].start)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


# One policy's run.


def run_policy(
    bed: Testbed, policy: str, names: list[str], args: argparse.Namespace, shard_bytes: int
) -> PolicyRun:
    """Evict everything, set ``policy``, declare the plan and read it; the figures."""
    client = bed.client
    bed.evict_all(DATASET, names)
    hot_s = bed.hot_read_s(DATASET, names[:4])
    bed.evict_all(DATASET, names)
    client.set_policy(DATASET, policy)  # a fresh policy object, seeded with no hot shard
    plan = SamplerPlan(SamplerKind.SHUFFLE, seed=args.seed, epochs=args.epochs)
    order = rank_order(plan, sorted(names))
    warmup = args.warmup_epochs * len(names)
    before, stats_before = bed.counters(), client.stats(DATASET)["datasets"][DATASET]
    declared = time.perf_counter()
    job = client.declare_plan(DATASET, sampler=plan, ttl_s=600.0)
    samples = read_plan(bed, job, order, args.rate, hot_s)
    client.close_plan(job)
    run_wall = time.perf_counter() - declared
    stats_after = client.stats(DATASET)["datasets"][DATASET]  # sends local-read reports
    after = bed.counters()

    window = run_events(list(client.export_trace(DATASET)), job)
    if args.save_traces is not None:
        save_trace(window, args.save_traces / f"{policy}.trace.jsonl")
    if bed.local_reads:
        hits_per_read = [s.local for s in samples]
        reads = [(s.start, s.reported) for s in samples]
        trace = reader_trace(order, shard_bytes, declared, reads)
    else:
        traced = [e for e in window if isinstance(e, TracedRead)]
        if [e.shard for e in traced] != order:
            raise RuntimeError(
                f"the server traced {len(traced)} reads, not the {len(order)} made in order "
                "(is the client reading in place? see --local-reads)"
            )
        hits_per_read = [e.hit for e in traced]
        trace = live_trace(window)
    replay = predict(trace, policy, bed.node, warmup)
    split = predict(trace, policy, bed.node, warmup, link="split")
    unshared = predict(trace, policy, bed.node, warmup, link="per-fetch")
    ahead = predict(schedule_trace(order, shard_bytes, args.rate, hot_s), policy, bed.node, warmup)

    kept, hit = samples[warmup:], hits_per_read[warmup:]
    stalls = [max(0.0, s.read_s - hot_s) for s in kept]
    hits = sum(hit)
    return PolicyRun(
        policy=policy,
        reads=len(kept),
        hits=hits,
        hit_ratio=hits / len(kept),
        predicted=replay.hit_ratio,
        predicted_split=split.hit_ratio,
        predicted_unshared=unshared.hit_ratio,
        predicted_schedule=ahead.hit_ratio,
        diff=hits / len(kept) - replay.hit_ratio,
        stall_fraction=stall_fraction(kept, hot_s),
        stall_s=sum(stalls),
        stall_on_misses_s=sum(st for st, h in zip(stalls, hit, strict=True) if not h),
        wall_s=kept[-1].end - kept[0].start,
        hot_read_s=hot_s,
        median_hit_read_s=_median([s.read_s for s, h in zip(kept, hit, strict=True) if h]),
        median_miss_read_s=_median([s.read_s for s, h in zip(kept, hit, strict=True) if not h]),
        warmup_hit_ratio=sum(hits_per_read[:warmup]) / max(1, warmup),
        warmup_stall_fraction=stall_fraction(samples[:warmup], hot_s),
        predicted_stall_s_all=replay.stall_s,
        predicted_prefetches_all=replay.prefetches,
        counters={name: after[name] - before[name] for name in after},
        counter_hits=stats_after["hits"] - stats_before["hits"],
        counter_misses=stats_after["misses"] - stats_before["misses"],
        local_reads=sum(s.local for s in samples),
        run_wall_s=run_wall,
        read_s=tuple(s.read_s for s in kept),
        hit=tuple(hit),
        warmup_read_s=tuple(s.read_s for s in samples[:warmup]),
        warmup_hit=tuple(hits_per_read[:warmup]),
    )


# Report.


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{1e3 * seconds:.1f}"


def report(runs: list[PolicyRun], setup: dict[str, Any]) -> str:
    """The table and the verdicts, as printed."""
    lines = [
        f"dataset: {setup['shards']} shards x {setup['shard_mib']} MiB "
        f"(N = {setup['dataset_mib']:.1f} MiB stored), hot tier C = {setup['capacity_mib']:.1f} "
        f"MiB (C/N = {setup['c_over_n']:.3f}); reader r = {setup['rate']} shards/s "
        f"= {setup['consumption_mib_s']:.2f} MiB/s; archive b = {setup['b_mib_s']:.2f} MiB/s "
        f"= {setup['b_over_consumption']:.2f} x consumption (bound (1 - C/N) = "
        f"{1 - setup['c_over_n']:.2f}); {setup['epochs']} epochs, first "
        f"{setup['warmup_epochs']} not counted; local reads "
        f"{'on' if setup['local_reads'] else 'off'}",
        "",
        "| policy | reads | hit ratio | predicted (replay, shared link) | diff "
        "| predicted, b / depth per fetch | predicted, b per fetch "
        "| predicted (schedule) | stall fraction | stall s (on misses) | wall s | hot read ms "
        "| promotions | archive GETs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        lines.append(
            f"| {run.policy} | {run.reads} | {run.hit_ratio:.3f} | {run.predicted:.3f} "
            f"| {run.diff:+.3f} | {run.predicted_split:.3f} | {run.predicted_unshared:.3f} "
            f"| {run.predicted_schedule:.3f} "
            f"| {run.stall_fraction:.3f} | {run.stall_s:.2f} ({run.stall_on_misses_s:.2f}) "
            f"| {run.wall_s:.1f} | {1e3 * run.hot_read_s:.1f} "
            f"| {run.counters['promotions']:.0f} | {run.counters['archive_gets']:.0f} |"
        )
    lines.append("")
    for run in runs:
        lines.append(
            f"{run.policy}: warm-up (from cold, not counted) hit ratio "
            f"{run.warmup_hit_ratio:.3f}, stall fraction {run.warmup_stall_fraction:.3f}; "
            f"median read ms (measured): hit {_ms(run.median_hit_read_s)}, miss "
            f"{_ms(run.median_miss_read_s)}; server counted {run.counter_hits} hits, "
            f"{run.counter_misses} misses (whole run); {run.local_reads} reads in place"
        )
    lines.append("")
    for run in runs:
        role = "target" if run.policy == "clairvoyant" else "comparison"
        lines.append(
            f"{run.policy} ({role}): stall {run.stall_fraction:.3f} <= {STALL_TARGET}: "
            f"{'met' if run.stall_met else 'NOT MET'}; |diff| {abs(run.diff):.3f} <= "
            f"{DIFF_TARGET}: {'met' if run.diff_met else 'NOT MET'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="128 shards of 8 MiB at 4/s")
    parser.add_argument("--shards", type=int, default=64, help="N, in shards (even)")
    parser.add_argument("--shard-mib", type=int, default=4)
    parser.add_argument("--rate", type=float, default=8.0, help="r: shards read per second")
    parser.add_argument(
        "--bandwidth-fraction", type=float, default=0.6, help="b / (r x stored shard size)"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument(
        "--prefetch-depth", type=int, default=4, help="prefetch depth = promotion threads"
    )
    parser.add_argument("--policies", default="clairvoyant,lru")
    parser.add_argument("--local-reads", action="store_true", help="client reads hot in place")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the work dir")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT")
    parser.add_argument(
        "--save-traces", type=Path, default=None, metavar="DIR", help="each run's trace file"
    )
    args = parser.parse_args(argv)
    if args.full:
        args.shards, args.shard_mib, args.rate = 128, 8, 4.0
    if args.shards % 2 or args.epochs <= args.warmup_epochs:
        parser.error("--shards must be even (C = N / 2), --epochs above --warmup-epochs")

    payload_bytes = args.shard_mib * MiB
    shard_bytes = stored_bytes(payload_bytes, DEFAULT_FRAME_BYTES)
    b = args.bandwidth_fraction * args.rate * shard_bytes
    node = NodeSettings(
        archive_bytes_per_s=b,
        capacity_bytes=args.shards // 2 * shard_bytes,
        shard_bytes=shard_bytes,
        prefetch_depth=args.prefetch_depth,
        promotion_threads=args.prefetch_depth,
    )
    names = [f"shard-{i:04d}" for i in range(args.shards)]
    block = np.random.default_rng(args.seed).integers(0, 256, payload_bytes, np.uint8).tobytes()
    setup: dict[str, Any] = {
        "shards": args.shards,
        "shard_mib": args.shard_mib,
        "dataset_mib": args.shards * shard_bytes / MiB,
        "capacity_mib": node.capacity_bytes / MiB,
        "c_over_n": node.capacity_bytes / (args.shards * shard_bytes),
        "rate": args.rate,
        "consumption_mib_s": args.rate * shard_bytes / MiB,
        "b_mib_s": b / MiB,
        "b_over_consumption": args.bandwidth_fraction,
        "epochs": args.epochs,
        "warmup_epochs": args.warmup_epochs,
        "local_reads": args.local_reads,
        "seed": args.seed,
        "node": asdict(node),
        "hot_capacity_bytes": node.hot_capacity_bytes,
    }
    started = time.perf_counter()
    runs = []
    with Testbed(node, args.workdir, local_reads=args.local_reads) as bed:
        # Distinct bytes per shard: its index stamped over a shared random block.
        bed.load(DATASET, names, lambda i: i.to_bytes(8, "little") + block[8:])
        setup["load_s"] = time.perf_counter() - started
        for policy in args.policies.split(","):
            print(f"running {policy} ...", file=sys.stderr, flush=True)
            runs.append(run_policy(bed, policy, names, args, shard_bytes))
    setup["total_s"] = time.perf_counter() - started
    print(report(runs, setup))
    if args.json is not None:
        entries = [
            {**asdict(run), "stall_met": run.stall_met, "diff_met": run.diff_met} for run in runs
        ]
        args.json.write_text(json.dumps({"setup": setup, "runs": entries}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
