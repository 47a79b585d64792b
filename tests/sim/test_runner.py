"""The policy sweep (tierstore.sim.runner) on small hand-made traces, checked against
direct replays with tierstore.sim.simulator."""

from __future__ import annotations

from collections.abc import Callable
from statistics import fmean

import pytest

from tierstore.errors import InvalidArgument, UnknownPolicy
from tierstore.policy.registry import make_policy
from tierstore.sim.events import PlanClosed, PlanDeclared, Read, Trace
from tierstore.sim.report import ratio
from tierstore.sim.runner import sweep, sweep_policies
from tierstore.sim.simulator import SimResult, simulate

SIZES = (10, 20, 30, 40)  # 100 bytes in all


def trace(keys: list[int], name: str = "tiny") -> Trace:
    return Trace(name, SIZES, [Read(float(t), k) for t, k in enumerate(keys)])


# A loop over three shards plus a one-off: LRU thrashes where Belady keeps two.
LOOP = trace([0, 1, 2] * 10 + [3, 0, 1])
OTHER = trace([0, 0, 1, 3, 2, 1, 0, 3, 3, 2, 1, 0], name="other")


def replay(t: Trace, policy: str, fraction: float) -> SimResult:
    future = [r.key for r in t.reads()] if policy == "belady" else None
    return simulate(t, make_policy(policy, future=future), int(fraction * t.dataset_bytes))


def test_rows_match_direct_replays_and_carry_both_references() -> None:
    rows = sweep([LOOP], ["s3fifo"], [0.4, 1.0])
    assert [(r.capacity_fraction, r.policy) for r in rows] == [
        (0.4, "s3fifo"),
        (0.4, "lru"),
        (0.4, "belady"),
        (1.0, "s3fifo"),
        (1.0, "lru"),
        (1.0, "belady"),
    ]
    for r in rows:
        direct = replay(LOOP, r.policy, r.capacity_fraction)
        lru = replay(LOOP, "lru", r.capacity_fraction)
        belady = replay(LOOP, "belady", r.capacity_fraction)
        assert r.workload == "tiny"
        assert r.seeds == 1
        assert r.capacity_bytes == direct.capacity_bytes
        assert (r.hit_ratio, r.byte_hit_ratio, r.miss_ratio) == (
            direct.hit_ratio,
            direct.byte_hit_ratio,
            direct.miss_ratio,
        )
        # ratio() (tested with the report) settles the zero denominators.
        assert r.miss_ratio_vs_belady == ratio(direct.miss_ratio, belady.miss_ratio)
        assert r.miss_ratio_vs_lru == ratio(direct.miss_ratio, lru.miss_ratio)
        assert r.hit_ratio_vs_lru == ratio(direct.hit_ratio, lru.hit_ratio)
    at_40 = {r.policy: r for r in rows if r.capacity_fraction == 0.4}
    assert at_40["lru"].hit_ratio == 0.0  # the loop of 60 bytes never fits in 40
    assert at_40["belady"].miss_ratio < at_40["lru"].miss_ratio
    assert at_40["lru"].hit_ratio_vs_lru == 1.0  # 0 / 0: as good as itself
    assert at_40["belady"].hit_ratio_vs_lru is None  # x / 0: no finite ratio
    assert at_40["belady"].miss_ratio_vs_belady == 1.0


def test_a_plan_lives_until_the_trace_ends_it_as_on_the_node() -> None:
    # The node ends plans itself, and its trace says when; the sweep's clairvoyant
    # dropped a plan after its own default of 300 s without a report, and its figures
    # disagreed with the node's. Here a plan of a and b, declared before a burst of
    # reads of c 400 s later, keeps a and b hot through it: the last four reads hit.
    events = [
        Read(0.0, 0),
        Read(1.0, 1),
        PlanDeclared(2.0, "job", (0, 1, 0, 1)),
        *(Read(400.0 + t, 2) for t in range(3)),
        *(Read(410.0 + t, key) for t, key in enumerate((0, 1, 0, 1))),
        PlanClosed(420.0, "job"),
    ]
    planned = Trace("planned", (10, 10, 10), events)
    (row,) = [r for r in sweep([planned], ["clairvoyant"], [2 / 3]) if r.policy == "clairvoyant"]
    assert row.capacity_bytes == 20 and row.hit_ratio == 4 / 9


def test_with_a_factory_rows_are_means_over_the_seeds() -> None:
    made: list[int] = []

    def factory(seed: int) -> Trace:
        made.append(seed)
        return [LOOP, OTHER][seed % 2]

    rows = sweep(factory, ["lru"], [0.5], [4, 5], workload="mixed")
    assert made == [4, 5]
    assert [r.policy for r in rows] == ["lru", "belady"]
    for r in rows:
        runs = [replay(t, r.policy, 0.5) for t in (LOOP, OTHER)]
        assert r.workload == "mixed"
        assert r.seeds == 2
        assert r.miss_ratio == pytest.approx(fmean(x.miss_ratio for x in runs))
        assert r.hit_ratio == pytest.approx(fmean(x.hit_ratio for x in runs))
    lru, belady = rows
    assert lru.miss_ratio_vs_belady == pytest.approx(lru.miss_ratio / belady.miss_ratio)


def test_progress_counts_every_replay() -> None:
    seen: list[tuple[int, int]] = []
    sweep([LOOP, OTHER], ["lru", "s3fifo"], [0.5, 1.0], progress=lambda *a: seen.append(a))
    total = 2 * 2 * 3  # traces x capacities x (s3fifo, lru, belady)
    assert seen == [(done, total) for done in range(1, total + 1)]


def test_policies_keep_their_order_once_each_then_the_references() -> None:
    assert sweep_policies(["s3fifo", "lru", "s3fifo"]) == ["s3fifo", "lru", "belady"]
    assert sweep_policies(["belady"]) == ["belady", "lru"]


def never_called(seed: int) -> Trace:
    raise AssertionError("the sweep built a trace before checking its arguments")


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.01, float("nan")])
def test_a_capacity_outside_zero_to_one_is_refused_before_any_trace(fraction: float) -> None:
    with pytest.raises(InvalidArgument, match=r"not a fraction of the dataset in \(0, 1\]"):
        sweep(never_called, ["lru"], [0.5, fraction])


def test_an_unknown_policy_is_refused_before_any_trace() -> None:
    with pytest.raises(UnknownPolicy, match=r"'nope'.*valid names: lru"):
        sweep(never_called, ["lru", "nope"], [0.5])


def test_a_capacity_smaller_than_the_largest_shard_is_refused() -> None:
    # 30% of 100 bytes is 30, and shard 3 has 40.
    with pytest.raises(
        InvalidArgument, match=r"30 bytes, smaller than its largest shard .*: give capacities of"
    ):
        sweep([LOOP], ["lru"], [0.3])


def test_capacities_are_checked_on_every_trace_before_the_first_replay() -> None:
    # Half of LOOP's 100 bytes holds its shards; half of this one's 150 does not.
    lopsided = Trace("lopsided", (10, 20, 30, 90), [Read(0.0, 3)])
    replays: list[tuple[int, int]] = []
    with pytest.raises(InvalidArgument, match=r"lopsided .* smaller than its largest shard"):
        sweep([LOOP, lopsided], ["lru"], [0.5], progress=lambda *a: replays.append(a))
    assert replays == []


def test_a_trace_of_plans_alone_is_refused_for_its_reads_not_its_capacity() -> None:
    # A plan's shards have sizes but no read: 1% of 30 bytes is smaller than the
    # 20-byte shard, and the capacity was refused first, as if a larger one would do.
    plans = Trace("plans", (10, 20), [PlanDeclared(0.0, "j", (0, 1)), PlanClosed(1.0, "j")])
    with pytest.raises(InvalidArgument, match="'plans' holds no reads"):
        sweep([plans], ["lru"], [0.01])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: sweep([LOOP], [], [0.5]), "no policies"),
        (lambda: sweep([LOOP], ["lru"], []), "no capacities"),
        (lambda: sweep([], ["lru"], [0.5]), "no traces"),
        (lambda: sweep(never_called, ["lru"], [0.5], []), "no seeds"),
        (lambda: sweep([LOOP], ["lru"], [0.5], [1, 2]), "seeds go with a trace factory"),
        # A miss ratio of 1.000 over no reads: a plan's events alone, exported.
        (
            lambda: sweep([Trace("plans", (10,), [PlanClosed(0.0, "j")])], ["lru"], [1.0]),
            "'plans' holds no reads",
        ),
    ],
)
def test_empty_or_mismatched_arguments_are_refused(
    call: Callable[[], object], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        call()
