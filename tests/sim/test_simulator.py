"""The simulator drives policies exactly as the contract says, counts what it should,
refuses impossible capacities, and models prefetch timing."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from tierstore.errors import InvalidArgument, UnknownPolicy
from tierstore.policy.base import MAX_LOOK_AHEAD_BYTES, Key, PrefetchBudget
from tierstore.policy.lru import LruPolicy
from tierstore.policy.registry import make_policy
from tierstore.sim.events import PlanClosed, PlanDeclared, PositionReported, Read, Trace
from tierstore.sim.simulator import PrefetchModel, SimResult, simulate, simulate_offline


class Recording(LruPolicy):
    """LRU that logs every call the driver makes."""

    name = "lru"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[object, ...]] = []

    def record_access(self, key: Key, size: int, now: float, hit: bool) -> None:
        self.calls.append(("access", key, hit))
        super().record_access(key, size, now, hit)

    def admit(self, key: Key, size: int, now: float, free_bytes: int) -> bool:
        self.calls.append(("admit", key, free_bytes))
        return True

    def victims(
        self, bytes_to_free: int, now: float, evictable: Callable[[Key], bool]
    ) -> list[Key]:
        self.calls.append(("victims", bytes_to_free))
        return super().victims(bytes_to_free, now, evictable)

    def inserted(self, key: Key, size: int, now: float) -> None:
        self.calls.append(("inserted", key))
        super().inserted(key, size, now)

    def removed(self, key: Key) -> None:
        self.calls.append(("removed", key))
        super().removed(key)

    def declare_plan(self, job: str, keys: Sequence[Key], sizes: Sequence[int], now: float) -> None:
        self.calls.append(("declare", job, tuple(keys), tuple(sizes)))

    def report_position(self, job: str, position: int, now: float) -> None:
        self.calls.append(("report", job, position))

    def close_plan(self, job: str) -> None:
        self.calls.append(("close", job))


def reads(keys: list[int], sizes: tuple[int, ...] = (10, 10, 10, 10)) -> Trace:
    return Trace("t", sizes, [Read(float(t), key) for t, key in enumerate(keys)])


def test_drives_the_policy_in_contract_order() -> None:
    policy = Recording()
    trace = Trace(
        "t",
        (10, 10, 10),
        [
            PlanDeclared(0.0, "job", (0, 1)),
            Read(1.0, 0, "job"),
            Read(2.0, 1, "job"),
            PositionReported(2.0, "job", 2),
            Read(3.0, 2),
            Read(4.0, 2),
            PlanClosed(5.0, "job"),
        ],
    )
    result = simulate(trace, policy, 20)
    assert policy.calls == [
        ("declare", "job", (0, 1), (10, 10)),
        ("access", 0, False),
        ("admit", 0, 20),
        ("inserted", 0),
        ("access", 1, False),
        ("admit", 1, 10),
        ("inserted", 1),
        ("report", "job", 2),
        ("access", 2, False),
        ("admit", 2, 0),
        ("victims", 10),
        ("removed", 0),
        ("inserted", 2),
        ("access", 2, True),
        ("close", "job"),
    ]
    assert result == SimResult("lru", 20, reads=4, hits=1, read_bytes=40, hit_bytes=10)


def test_ratios_and_warmup() -> None:
    result = simulate(reads([0, 1, 0, 1, 2, 0]), LruPolicy(), 20, warmup_reads=2)
    assert (result.reads, result.hits) == (4, 2)
    assert result.hit_ratio == 0.5 == result.miss_ratio
    assert result.byte_hit_ratio == 0.5
    empty = simulate(reads([]), LruPolicy(), 20)
    assert empty.hit_ratio == 0.0 == empty.byte_hit_ratio


def test_capacity_smaller_than_the_largest_shard_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="largest shard"):
        simulate(reads([0], sizes=(10, 50)), LruPolicy(), 49)
    with pytest.raises(InvalidArgument, match="warmup"):
        simulate(reads([0]), LruPolicy(), 10, warmup_reads=-1)


def test_plans_naming_shards_never_read_and_reads_off_the_plan() -> None:
    events = [
        PlanDeclared(0.0, "job", (3, 2, 3, 2)),  # never read: the job reads 0 and 1
        *(Read(1.0 + t, key, "job") for t, key in enumerate([0, 1] * 10)),
        PositionReported(30.0, "job", 2),
    ]
    for name in ("clairvoyant", "epoch-pin", "s3fifo"):
        result = simulate(Trace("t", (10, 10, 10, 10), events), make_policy(name), 20)
        assert result.reads == 20


def test_plans_naming_shards_outside_the_trace_are_a_malformed_trace() -> None:
    trace = Trace("t", (10, 10), [PlanDeclared(0.0, "job", (0, 5)), Read(1.0, 0)])
    with pytest.raises(InvalidArgument, match="does not have"):
        simulate(trace, make_policy("clairvoyant"), 20)


@pytest.mark.parametrize("key", [-1, 2, 2**70])
def test_reads_of_shards_outside_the_trace_are_a_malformed_trace(key: int) -> None:
    # -1 was read as shard 1 by the tier and as another key by the policy: wrong hits.
    trace = Trace("t", (10, 10), [Read(0.0, key), Read(1.0, key), Read(2.0, 1)])
    with pytest.raises(InvalidArgument, match="does not have"):
        simulate(trace, make_policy("lru"), 20)


def test_victims_that_are_not_hot_are_a_broken_policy() -> None:
    class Liar(LruPolicy):
        def victims(self, b: int, now: float, e: Callable[[Key], bool]) -> list[Key]:
            return [3]

    with pytest.raises(RuntimeError, match="not hot"):
        simulate(reads([0, 1, 2]), Liar(), 20)


def test_only_as_many_victims_as_needed_are_evicted() -> None:
    class Generous(LruPolicy):
        def victims(self, b: int, now: float, e: Callable[[Key], bool]) -> list[Key]:
            return super().victims(10**9, now, e)  # every hot key

    result = simulate(reads([0, 1, 2, 1]), Generous(), 20)
    assert result.hits == 1  # 1 survived: only 0 had to go


def test_offline_helper() -> None:
    loop = reads([0, 1, 2] * 5)
    assert simulate_offline(loop, 20).hits == 8  # keeps 0 and 1 (and 2 once)
    assert simulate_offline(loop, 20, policy="belady-size").policy == "belady-size"
    with pytest.raises(UnknownPolicy):
        simulate_offline(loop, 20, policy="nope")
    with pytest.raises(InvalidArgument):
        simulate_offline(loop, 20, policy="lru")  # a live policy takes no future


def test_deterministic() -> None:
    trace = reads([(k * 7) % 4 for k in range(50)])
    assert simulate(trace, make_policy("s3fifo"), 20) == simulate(trace, make_policy("s3fifo"), 20)


class Prefetching(LruPolicy):
    """Asks for the keys of a fixed list, in order, as the budget allows (from ``after`` on)."""

    def __init__(self, wanted: list[int], after: float = 0.0) -> None:
        super().__init__()
        self.wanted = wanted
        self.after = after
        self.budgets: list[PrefetchBudget] = []

    def prefetch(
        self, now: float, budget: PrefetchBudget, is_hot: Callable[[Key], bool]
    ) -> list[Key]:
        self.budgets.append(budget)
        if now < self.after:
            return []
        return [key for key in self.wanted if not is_hot(key)][: budget.requests]


def test_completed_prefetches_are_hits_and_late_ones_stall() -> None:
    # 100 bytes/s per channel: a 10-byte shard takes 0.1 s.
    model = PrefetchModel(bandwidth_bytes_per_s=100.0, io_depth=2, horizon_s=1.0)
    trace = Trace("t", (10, 10, 10), [Read(0.0, 0), Read(0.15, 1), Read(0.17, 2)])
    result = simulate(trace, Prefetching([1, 2]), 30, prefetch=model)
    # The miss of 0 is promoted on one channel while 1 is fetched on the other, from
    # 0.0 to 0.1: the read of 1 at 0.15 hits. 2 starts when they land, at 0.1 (the
    # engine's prefetch loop wakes when a promotion finishes), and lands at 0.2: the
    # read at 0.17 waits 0.03 s and is no hit.
    assert result.hits == 1
    assert result.prefetches == 2
    assert result.stall_s == pytest.approx(0.03)


def test_prefetch_budget_counts_what_is_in_flight() -> None:
    model = PrefetchModel(bandwidth_bytes_per_s=10.0, io_depth=2, horizon_s=1.0)
    policy = Prefetching([1, 2, 3])
    simulate(Trace("t", (10, 10, 10, 10), [Read(0.0, 0)]), policy, 40, prefetch=model)
    # The missed read's promotion takes a request and its bytes, as the engine counts it.
    assert policy.budgets[0] == PrefetchBudget(requests=1, bytes=10)
    # After starting 1 (1 s), nothing is left to offer.
    assert len(policy.budgets) == 1


def test_a_shared_link_splits_its_rate_among_the_fetches_on_it() -> None:
    # One link of 100 bytes/s, up to 3 fetches in flight, 10-byte shards.
    model = PrefetchModel(bandwidth_bytes_per_s=100.0, io_depth=3, horizon_s=1.0, shared_link=True)
    policy = Prefetching([1, 2, 3])
    trace = Trace("t", (10, 10, 10, 10), [Read(0.0, 0), Read(0.25, 1), Read(0.35, 2), Read(1.0, 3)])
    result = simulate(trace, policy, 40, prefetch=model)
    # The budget is the link's, 100 bytes/s x 1 s (not x 3 channels), less the missed
    # read's promotion in flight.
    assert policy.budgets[0] == PrefetchBudget(requests=2, bytes=90)
    # 0 (the promotion), 1 and 2 share the link from 0.0 and all land at 0.3: the read
    # of 1 at 0.25 waits 0.05 s, the read of 2 at 0.35 hits. 3 starts alone at 0.35 and
    # gets the whole link: it lands at 0.45, a hit at 1.0.
    assert result.hits == 2
    assert result.stall_s == pytest.approx(0.05)
    channels = PrefetchModel(bandwidth_bytes_per_s=100.0, io_depth=3, horizon_s=1.0)
    assert simulate(trace, Prefetching([1, 2, 3]), 40, prefetch=channels).hits == 3


def test_a_shared_link_stays_busy_with_a_fetch_a_read_waited_for() -> None:
    # Two requests on a link of 10 bytes/s: the promotion of 0 and the prefetch of 1
    # share it from 0 to 2 s. The read of 1 at 0.1 waits for it (it lands for that
    # read), but the link is busy with it until 2.0: no fetch of 2 may start
    # meanwhile, so the read of 2 at 0.2 is a plain miss.
    model = PrefetchModel(bandwidth_bytes_per_s=10.0, io_depth=2, horizon_s=10.0, shared_link=True)
    trace = Trace("t", (10, 10, 10), [Read(0.0, 0), Read(0.1, 1), Read(0.2, 2)])
    result = simulate(trace, Prefetching([1, 2]), 30, prefetch=model)
    assert result.stall_s == pytest.approx(1.9)
    assert result.prefetches == 1


def test_a_fetched_shard_takes_its_room_when_it_lands() -> None:
    # Room for two 10-byte shards; one request; 0.1 s a fetch; the policy prefetches 2
    # from 0.5 on. 0 and 1 are missed and promoted; the read of 0 at 0.5 makes 1 the
    # least recently used, and the prefetch of 2 starts. 1 stays hot until 2 lands at
    # 0.6 (the engine evicts when it writes a promotion), so its read at 0.55 hits and
    # moves it ahead of 0, and 0 is the one evicted: the read of 2 hits, the read of 0
    # at 0.8 misses.
    model = PrefetchModel(bandwidth_bytes_per_s=100.0, io_depth=1, horizon_s=1.0)
    events = [Read(0.0, 0), Read(0.2, 1), Read(0.5, 0), Read(0.55, 1), Read(0.7, 2), Read(0.8, 0)]
    policy = Prefetching([2], after=0.5)
    result = simulate(Trace("t", (10, 10, 10), events), policy, 20, prefetch=model)
    assert result.hits == 3
    assert result.prefetches == 1


@pytest.mark.parametrize("shared_link", [True, False])
def test_a_fetch_waits_for_its_first_byte(shared_link: bool) -> None:
    # 100 bytes/s, 50 ms to first byte. On a shared link the promotion of 0 and the
    # prefetch of 1 join it at 0.05 and share it: both land at 0.25. On channels of
    # their own they land at 0.15. The read of 1 at 0.2 waits (shared) or hits.
    model = PrefetchModel(100.0, 2, 1.0, shared_link=shared_link, latency_s=0.05)
    trace = Trace("t", (10, 10), [Read(0.0, 0), Read(0.2, 1)])
    result = simulate(trace, Prefetching([1]), 20, prefetch=model)
    assert result.stall_s == pytest.approx(0.05 if shared_link else 0.0)
    assert result.hits == (0 if shared_link else 1)
    no_latency = PrefetchModel(100.0, 2, 1.0, shared_link=shared_link)
    assert simulate(trace, Prefetching([1]), 20, prefetch=no_latency).hits == 1


class RefusingPrefetcher(Prefetching):
    """Asks for its list, and admits no missed read."""

    def admit(self, key: Key, size: int, now: float, free_bytes: int) -> bool:
        return False


@pytest.mark.parametrize("admitted", [True, False])
def test_a_missed_read_takes_the_shared_link(admitted: bool) -> None:
    # A link of 10 bytes/s. The miss of 0 moves its bytes over the link whether or
    # not it is promoted, so the prefetch of 1 shares the link with it and lands at
    # 2.0, not 1.0: the read of 1 at 1.5 waits 0.5 s.
    model = PrefetchModel(bandwidth_bytes_per_s=10.0, io_depth=2, horizon_s=10.0, shared_link=True)
    trace = Trace("t", (10, 10), [Read(0.0, 0), Read(1.5, 1), Read(3.0, 0)])
    policy = Prefetching([1]) if admitted else RefusingPrefetcher([1])
    result = simulate(trace, policy, 20, prefetch=model)
    assert result.stall_s == pytest.approx(0.5)
    # Promoted, 0 lands at 2.0 and its read at 3.0 hits; streamed, it never lands.
    assert result.hits == (1 if admitted else 0)


def test_prefetch_model_validation() -> None:
    with pytest.raises(InvalidArgument):
        PrefetchModel(0.0, 1, 1.0)
    with pytest.raises(InvalidArgument):
        PrefetchModel(1.0, 0, 1.0)
    with pytest.raises(InvalidArgument):
        PrefetchModel(1.0, 1, 1.0, shared_link=True, burst_bytes=-1)
    with pytest.raises(InvalidArgument):
        PrefetchModel(1.0, 1, 1.0, latency_s=-0.1)
    with pytest.raises(InvalidArgument):
        PrefetchModel(1.0, 1, 1.0, latency_s=float("nan"))
    # Not finite: an infinite budget was an OverflowError at the first prefetch, and a
    # bandwidth that is not a number made every fetch time one too.
    for bandwidth, horizon in [(float("nan"), 1.0), (float("inf"), 1.0), (1.0, float("inf"))]:
        with pytest.raises(InvalidArgument):
            PrefetchModel(bandwidth, 1, horizon)


def test_a_look_ahead_too_large_for_a_float_is_capped() -> None:
    # Each finite, the product overflowed to infinity: OverflowError at the first offer.
    model = PrefetchModel(bandwidth_bytes_per_s=1e300, io_depth=2, horizon_s=1e10)
    policy = Prefetching([1])
    trace = Trace("t", (10, 10), [Read(0.0, 0), Read(1.0, 1)])
    result = simulate(trace, policy, 30, prefetch=model)
    assert result.hits == 1
    # Offered first with the missed read of 0 on its way in (a request, 10 bytes).
    assert policy.budgets[0] == PrefetchBudget(requests=1, bytes=MAX_LOOK_AHEAD_BYTES - 10)


def test_clairvoyant_prefetch_turns_planned_misses_into_hits() -> None:
    keys = tuple(range(20))
    events: list[PlanDeclared | Read | PositionReported] = [PlanDeclared(0.0, "job", keys)]
    for position, key in enumerate(keys):
        events.append(Read(1.0 + position, key, "job"))
        events.append(PositionReported(1.0 + position, "job", position + 1))
    trace = Trace("planned", (10,) * 20, events)
    model = PrefetchModel(bandwidth_bytes_per_s=100.0, io_depth=2, horizon_s=2.0)
    with_prefetch = simulate(trace, make_policy("clairvoyant"), 50, prefetch=model)
    without = simulate(trace, make_policy("clairvoyant"), 50)
    assert without.hits == 0
    assert with_prefetch.hits >= 18
