"""Placement-policy report: decision latency, and every workload's hit ratios, as tables.

Usage::

    python benchmarks/policy_report.py [--full] [--seeds 3] [--workloads a,b]
                                       [--skip-latency] [--latency-shards 1000000]
                                       [--decisions 3000] [--json PATH] [--strict]

Part 1 times the clairvoyant policy's decisions with 8 jobs, each with a declared
plan over ``--latency-shards`` shards (a quarter hot): ``victims()`` alone (the
eviction decision; target p99 <= 100 us) and ``record_access()`` + ``admit()`` on a
miss, with LRU's ``victims()`` on the same hot set as the same-run reference.

Part 2 replays every built-in workload (small, or ``--full``) against every policy at
the capacities of :data:`CAPACITIES`, mean of ``--seeds`` seeds in the steady state,
with each figure's ratio to Belady's and to LRU's; then the issue's targets, each
PASS or MISS. ``--strict`` exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from statistics import fmean

from bench_policy import JOBS, TARGET_P99_US, build, latencies

from tierstore.policy.clairvoyant import ClairvoyantPolicy
from tierstore.policy.lru import LruPolicy
from tierstore.policy.registry import OFFLINE_POLICY_NAMES, POLICY_NAMES, make_driven_policy
from tierstore.sim.simulator import SimResult, simulate, simulate_offline
from tierstore.sim.workloads import NAMES, generate, warmup_reads

#: capacity fractions (of the dataset's bytes) each workload is replayed at.
CAPACITIES: dict[str, tuple[float, ...]] = {
    **{name: (0.01, 0.1) for name in NAMES if name.startswith("zipf-")},
    "epochs": (0.1, 0.25, 0.5),
    "epochs-planned": (0.1, 0.25, 0.5),
    "epochs-sequential": (0.1, 0.25, 0.5),
    "ddp": (0.1, 0.25),
    "scan": (0.025, 0.05),
    "scan-churn": (0.025, 0.05),
    "multi-job": (0.1, 0.25),
    "replacement": (0.1,),
    "varsize": (0.01, 0.1),
}


@dataclass(frozen=True, slots=True)
class Row:
    """One (workload, capacity, policy): mean figures over the seeds."""

    workload: str
    fraction: float
    policy: str
    hit_ratio: float
    byte_hit_ratio: float
    hit_vs_belady: float
    miss_vs_belady: float
    hit_vs_lru: float


@dataclass(frozen=True, slots=True)
class Target:
    """One of the issue's figures: ``policy``'s hit ratio against ``factor`` times a
    reference (a policy's hit ratio, ``"C/N"``, or ``"belady-miss"`` for a bound on
    the miss-ratio ratio)."""

    label: str
    workload: str
    fraction: float
    policy: str
    reference: str
    factor: float

    def check(self, rows: dict[tuple[str, float, str], Row]) -> tuple[float, bool]:
        row = rows[self.workload, self.fraction, self.policy]
        if self.reference == "belady-miss":
            return row.miss_vs_belady, row.miss_vs_belady <= self.factor
        if self.reference == "C/N":
            value = row.hit_ratio / self.fraction
        else:
            value = row.hit_ratio / rows[self.workload, self.fraction, self.reference].hit_ratio
        return value, value >= self.factor


def _targets() -> list[Target]:
    targets = []
    for alpha in ("0.6", "0.8", "1.0", "1.2"):
        for fraction, bound in ((0.01, 1.25), (0.1, 1.45)):
            targets.append(
                Target(
                    "zipf miss <= x Belady",
                    f"zipf-{alpha}",
                    fraction,
                    "s3fifo",
                    "belady-miss",
                    bound,
                )
            )
    for alpha in ("0", "0.6", "0.8"):
        targets.append(Target("zipf hit >= x LRU", f"zipf-{alpha}", 0.01, "s3fifo", "lru", 1.15))
    targets += [
        Target("scans: hit >= x Belady", "scan", 0.05, "s3fifo", "belady", 0.90),
        Target("scans: hit >= x LRU", "scan", 0.05, "s3fifo", "lru", 1.10),
        Target("scans, churn: hit >= x LRU", "scan-churn", 0.05, "s3fifo", "lru", 0.97),
    ]
    for fraction in (0.1, 0.25, 0.5):
        targets += [
            Target("epochs, no plan: >= x C/N", "epochs", fraction, "s3fifo", "C/N", 0.85),
            Target("epochs, no plan: >= x C/N", "epochs", fraction, "clairvoyant", "C/N", 0.85),
            Target(
                "epochs, plan: >= x C/N", "epochs-planned", fraction, "clairvoyant", "C/N", 0.99
            ),
            Target("epochs, plan: >= x LRU", "epochs-planned", fraction, "clairvoyant", "lru", 3.0),
            Target("epochs: Belady = C/N", "epochs", fraction, "belady", "C/N", 1.0),
        ]
    for fraction in (0.1, 0.25):
        targets += [
            Target("multi-job: >= x Belady", "multi-job", fraction, "clairvoyant", "belady", 0.95),
            Target(
                "multi-job: >= x epoch-pin", "multi-job", fraction, "clairvoyant", "epoch-pin", 2.0
            ),
            Target("ddp: >= x Belady", "ddp", fraction, "clairvoyant", "belady", 0.95),
        ]
    targets += [
        Target("replacement: >= x Belady", "replacement", 0.1, "clairvoyant", "belady", 0.95),
        Target("replacement: >= x LRU", "replacement", 0.1, "clairvoyant", "lru", 3.0),
    ]
    return targets


def replay(workload: str, seeds: int, full: bool) -> list[Row]:
    """Every policy at every capacity of ``workload``, mean over ``seeds`` seeds."""
    offline = ("belady", "belady-size") if workload == "varsize" else ("belady",)
    policies = (*POLICY_NAMES, *offline)
    fractions = CAPACITIES[workload]
    results: dict[tuple[float, str], list[SimResult]] = {
        (f, p): [] for f in fractions for p in policies
    }
    for seed in range(seeds):
        trace = generate(workload, seed=seed, full=full)
        warmup = warmup_reads(workload, trace)
        for fraction in fractions:
            capacity = int(fraction * trace.dataset_bytes)
            for policy in policies:
                if policy in OFFLINE_POLICY_NAMES:
                    result = simulate_offline(trace, capacity, policy=policy, warmup_reads=warmup)
                else:
                    result = simulate(
                        trace, make_driven_policy(policy), capacity, warmup_reads=warmup
                    )
                results[fraction, policy].append(result)
    rows = []
    for fraction in fractions:
        hit = {p: fmean(r.hit_ratio for r in results[fraction, p]) for p in policies}
        byte_hit = {p: fmean(r.byte_hit_ratio for r in results[fraction, p]) for p in policies}
        for policy in policies:
            rows.append(
                Row(
                    workload,
                    fraction,
                    policy,
                    hit[policy],
                    byte_hit[policy],
                    _ratio(hit[policy], hit["belady"]),
                    _ratio(1 - hit[policy], 1 - hit["belady"]),
                    _ratio(hit[policy], hit["lru"]),
                )
            )
    return rows


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference else float("inf")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the big workload sizes")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workloads", default=",".join(NAMES))
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--latency-shards", type=int, default=1_000_000)
    parser.add_argument("--decisions", type=int, default=3000)
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    report: dict[str, object] = {}
    missed = 0
    if not args.skip_latency:
        log(f"latency: building {JOBS} plans over {args.latency_shards:,} shards")
        evict, admit = latencies(build(ClairvoyantPolicy(), args.latency_shards), args.decisions)
        lru, _ = latencies(build(LruPolicy(), args.latency_shards, jobs=0), args.decisions)
        print(f"\nDecision latency, {JOBS} jobs, {args.latency_shards:,} shards, 1/4 hot (us)")
        print(f"{'call':36s} {'p50':>8s} {'p99':>8s}  {'p99 / LRU':>9s}")
        for label, latency in (
            ("clairvoyant victims()", evict),
            ("clairvoyant record_access()+admit()", admit),
            ("lru victims() (reference)", lru),
        ):
            relative = latency.p99_us / lru.p99_us
            print(f"{label:36s} {latency.p50_us:8.1f} {latency.p99_us:8.1f}  {relative:9.1f}")
        verdict = "PASS" if evict.p99_us <= TARGET_P99_US else "MISS"
        missed += verdict == "MISS"
        print(f"target: victims() p99 <= {TARGET_P99_US:.0f} us: {verdict}")
        report["latency"] = {"victims": asdict(evict), "admit": asdict(admit), "lru": asdict(lru)}
    rows: dict[tuple[str, float, str], Row] = {}
    for workload in args.workloads.split(","):
        log(f"replaying {workload} ({args.seeds} seeds{', full' if args.full else ''})")
        for row in replay(workload, args.seeds, args.full):
            rows[row.workload, row.fraction, row.policy] = row
    size = "full" if args.full else "small"
    print(f"\nHit ratios, steady state, mean of {args.seeds} seeds ({size} workloads)")
    print(
        f"{'workload':18s} {'C/N':>6s} {'policy':12s} {'hit':>7s} {'byte hit':>8s} "
        f"{'/Belady':>8s} {'miss/B':>7s} {'/LRU':>7s}"
    )
    for row in rows.values():
        print(
            f"{row.workload:18s} {row.fraction:6.3f} {row.policy:12s} {row.hit_ratio:7.4f} "
            f"{row.byte_hit_ratio:8.4f} {row.hit_vs_belady:8.3f} {row.miss_vs_belady:7.3f} "
            f"{row.hit_vs_lru:7.2f}"
        )
    print("\nTargets")
    checked = []
    for target in _targets():
        if (target.workload, target.fraction, target.policy) not in rows:
            continue
        value, met = target.check(rows)
        missed += not met
        bound = "<=" if target.reference == "belady-miss" else ">="
        checked.append({**asdict(target), "value": value, "met": met})
        print(
            f"{target.label:28s} {target.workload:15s} C/N={target.fraction:<5g} "
            f"{target.policy:12s} {value:6.3f} {bound} {target.factor:<5g} "
            f"{'PASS' if met else 'MISS'}"
        )
    report["rows"] = [asdict(row) for row in rows.values()]
    report["targets"] = checked
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
