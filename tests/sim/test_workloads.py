"""The built-in workloads: deterministic, well-formed, planned jobs consistent with
their plans, and the shapes the target tests rely on."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from tierstore.errors import InvalidArgument
from tierstore.sim.events import PlanClosed, PlanDeclared, PositionReported, Read, Trace
from tierstore.sim.workloads import NAMES, REPORT_EVERY, generate, warmup_reads

PLANNED = ("epochs-planned", "ddp", "multi-job", "replacement")


@pytest.fixture(scope="module", params=NAMES)
def workload(request: pytest.FixtureRequest) -> tuple[str, Trace]:
    name: str = request.param
    return name, generate(name, seed=1)


def test_names() -> None:
    expected = {"zipf-0", "zipf-0.6", "zipf-0.8", "zipf-1.0", "zipf-1.2", "epochs"}
    expected |= {"epochs-planned", "ddp", "scan", "scan-churn", "multi-job", "replacement"}
    assert expected | {"varsize"} <= set(NAMES)


def test_unknown_name_or_bad_seed() -> None:
    with pytest.raises(InvalidArgument, match="valid names: zipf-0"):
        generate("zipf-7", seed=0)
    with pytest.raises(InvalidArgument, match=r"seed must not be negative \(the CLI's --seed\)"):
        generate("epochs", seed=-1)
    with pytest.raises(InvalidArgument):
        warmup_reads("nope", generate("epochs", seed=0))


def test_well_formed(workload: tuple[str, Trace]) -> None:
    name, trace = workload
    times = [event.t for event in trace.events]
    assert times == sorted(times)
    assert all(0 <= read.key < len(trace.sizes) for read in trace.reads())
    assert all(size > 0 for size in trace.sizes)
    assert 0 < warmup_reads(name, trace) < len(trace.reads())


@pytest.mark.parametrize("name", ["zipf-0.8", "epochs", "ddp", "scan-churn", "multi-job"])
def test_deterministic_per_seed(name: str) -> None:
    trace = generate(name, seed=1)
    assert generate(name, seed=1) == trace
    assert generate(name, seed=2).events != trace.events


def test_planned_jobs_read_their_plans_and_report(workload: tuple[str, Trace]) -> None:
    name, trace = workload
    plans: dict[str, tuple[int, ...]] = {}
    read_by: defaultdict[str, list[int]] = defaultdict(list)
    last_report: dict[str, int] = {}
    closed = set()
    for event in trace.events:
        if isinstance(event, PlanDeclared):
            assert event.job not in plans
            plans[event.job] = event.keys
        elif isinstance(event, Read):
            assert event.job not in closed
            read_by[event.job].append(event.key)
        elif isinstance(event, PositionReported):
            assert event.position == len(read_by[event.job])
            assert event.position > last_report.get(event.job, 0)
            assert event.position - last_report.get(event.job, 0) <= REPORT_EVERY
            last_report[event.job] = event.position
        elif isinstance(event, PlanClosed):
            closed.add(event.job)
    assert (name in PLANNED) == bool(plans)
    for job, keys in plans.items():
        assert tuple(read_by[job]) == keys
        assert last_report[job] == len(keys)
        assert job in closed


def test_zipf_is_skewed_over_ten_thousand_shards() -> None:
    flat_trace = generate("zipf-0", seed=0)
    flat = Counter(read.key for read in flat_trace.reads())
    skewed = Counter(read.key for read in generate("zipf-1.2", seed=0).reads())
    assert len(flat_trace.sizes) == 10_000
    assert max(flat.values()) < 40
    assert skewed.most_common(1)[0][1] > 0.1 * sum(skewed.values())


def test_epochs_read_every_shard_once_per_epoch() -> None:
    trace = generate("epochs", seed=3)
    keys = [read.key for read in trace.reads()]
    shards = len(trace.sizes)
    epochs = [keys[i : i + shards] for i in range(0, len(keys), shards)]
    assert all(sorted(epoch) == list(range(shards)) for epoch in epochs)
    assert epochs[0] != epochs[1]
    sequential = [read.key for read in generate("epochs-sequential", seed=3).reads()]
    assert sequential[:shards] == sequential[shards : 2 * shards] == list(range(shards))
    assert warmup_reads("epochs", trace) == shards


def test_ddp_ranks_partition_each_epoch() -> None:
    trace = generate("ddp", seed=0)
    declared = [event for event in trace.events if isinstance(event, PlanDeclared)]
    shards = len(trace.sizes)
    first_epoch = [key for plan in declared for key in plan.keys[: shards // len(declared)]]
    assert sorted(first_epoch) == list(range(shards))


def test_scan_churn_moves_the_hot_set() -> None:
    def hot(trace: Trace, part: slice) -> set[int]:
        counts = Counter(read.key for read in trace.reads()[part])
        return {key for key, count in counts.items() if count > 2}

    stationary, churn = generate("scan", seed=0), generate("scan-churn", seed=0)
    quarter = len(stationary.reads()) // 4
    early, late = slice(0, quarter), slice(3 * quarter, None)
    assert len(hot(stationary, early) & hot(stationary, late)) > 0.8 * len(hot(stationary, early))
    assert len(hot(churn, early) & hot(churn, late)) < 0.6 * len(hot(churn, early))


def test_multi_job_speeds_differ_and_drift() -> None:
    trace = generate("multi-job", seed=0)
    times: defaultdict[str, list[float]] = defaultdict(list)
    for read in trace.reads():
        times[read.job].append(read.t)
    rates = {job: len(t) / (t[-1] - t[0]) for job, t in times.items()}
    assert len(rates) == 4 and max(rates.values()) > 2 * min(rates.values())
    gaps = [b - a for a, b in zip(times["job-0"], times["job-0"][1:], strict=False)]
    assert max(gaps) > 2 * min(gaps)


def test_varsize_sizes_vary() -> None:
    sizes = generate("varsize", seed=0).sizes
    assert max(sizes) > 10 * min(sizes)


def test_full_is_bigger() -> None:
    assert len(generate("epochs", seed=0, full=True).sizes) > len(generate("epochs", seed=0).sizes)
