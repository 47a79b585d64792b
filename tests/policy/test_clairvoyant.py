"""The clairvoyant policy: plans, estimated next uses, bypass, prefetch, expiry, and
graceful degradation when jobs do not do what they declared."""

from __future__ import annotations

from tests.policy.conformance import HotModel, PolicyConformance
from tierstore.policy.base import Policy, PrefetchBudget
from tierstore.policy.clairvoyant import (
    _PREFETCH_SCAN,
    _PREFETCH_SCAN_TOTAL,
    ClairvoyantPolicy,
)
from tierstore.policy.s3fifo import S3FifoPolicy


class TestClairvoyantConformance(PolicyConformance):
    def make(self) -> Policy:
        return ClairvoyantPolicy()


def always(_: object) -> bool:
    return True


def never(_: object) -> bool:
    return False


def declare(policy: ClairvoyantPolicy, job: str, keys: list[int], now: float = 0.0) -> None:
    policy.declare_plan(job, keys, [1] * len(keys), now)


def test_evicts_the_farthest_next_use() -> None:
    policy = ClairvoyantPolicy()
    declare(policy, "job", [5, 3, 1, 4, 2])
    for key in range(1, 6):
        policy.inserted(key, 1, 0.0)
    assert policy.victims(2, 0.0, always) == [2, 4]


def test_unplanned_shards_go_first() -> None:
    policy = ClairvoyantPolicy()
    declare(policy, "job", [1, 2])
    for key in (1, 2, 8, 9):
        policy.inserted(key, 1, 0.0)
    assert set(policy.victims(2, 0.0, always)) == {8, 9}


def test_bypasses_a_shard_needed_later_than_its_victim() -> None:
    policy = ClairvoyantPolicy()
    declare(policy, "job", [1, 2, 9, 3])
    model = HotModel(policy, 2)
    model.read(1, 1)
    model.read(2, 1)
    policy.report_position("job", 2, 2.0)
    model.read(9, 1)  # 9's next use: never; residents 1, 2: never either -> bypass
    assert 9 not in model.hot


def test_admits_a_shard_needed_sooner_than_its_victim() -> None:
    policy = ClairvoyantPolicy()
    declare(policy, "job", [1, 2, 3, 3, 1, 2])
    model = HotModel(policy, 2)
    for key in (1, 2, 3):
        model.read(key, 1)
    # 3 is next needed at position 3, before 1 (4) and 2 (5): 2 makes room.
    assert set(model.hot) == {1, 3}


def test_bypass_weighs_a_shard_against_a_victim_eviction_may_take() -> None:
    policy = ClairvoyantPolicy()
    declare(policy, "job", [1, 2, 3])  # 1 is due first, then 2, then 3
    model = HotModel(policy, 2)
    model.insert(1, 1)
    model.insert(3, 1)
    model.pinned.add(3)
    assert model.victims(1) == [1]  # the driver said 3 may not go
    # Admitting 2 would evict 1, due before it: 3, due after it, is not the victim.
    model.read(2, 1)
    assert set(model.hot) == {1, 3}


def test_positions_advance_with_reads_between_reports() -> None:
    policy = ClairvoyantPolicy()
    declare(policy, "job", [1, 2, 1, 2])
    model = HotModel(policy, 10)
    model.read(1, 1)
    model.read(2, 1)  # no report: the reads themselves move the position to 2
    model.insert(7, 1)
    # 7 is unplanned (first out); then 2 (next at 3) before 1 (next at 2).
    assert policy.victims(3, model.now, always) == [7, 2, 1]


def test_faster_job_needs_its_shards_sooner() -> None:
    policy = ClairvoyantPolicy()
    declare(policy, "slow", [10] * 10 + [1])
    declare(policy, "fast", [20] * 30 + [2])
    for t in (1.0, 2.0):
        policy.report_position("slow", int(t), t)  # 1 entry per second
        policy.report_position("fast", int(8 * t), t)  # 8 entries per second
    policy.inserted(1, 1, 2.0)
    policy.inserted(2, 1, 2.0)
    # slow, at 2: 1 is 8 entries away at 1/s = 8 s; fast, at 16: 2 is 14 away at 8/s.
    assert policy.victims(1, 2.0, always) == [1]


def test_prefetch_returns_cold_planned_shards_by_urgency_within_budget() -> None:
    policy = ClairvoyantPolicy()
    policy.declare_plan("a", [1, 2, 3, 4], [10, 10, 10, 10], 0.0)
    policy.declare_plan("b", [5, 6], [50, 10], 0.0)
    hot = {2}
    wanted = policy.prefetch(0.0, PrefetchBudget(requests=3, bytes=40), hot.__contains__)
    # due: 1 and 5 now, 3 and 6 one entry later; 5 does not fit in the bytes left.
    assert wanted == [1, 6, 3]
    assert policy.prefetch(0.0, PrefetchBudget(requests=0, bytes=40), hot.__contains__) == []


def test_a_prefetch_call_looks_at_a_bounded_number_of_entries_and_jobs_take_turns() -> None:
    # With thousands of plans open every call walked 256 entries of each, under the
    # lock that reports wait on: 64 ms a report with 2,000 plans, and a busy idle node.
    policy = ClairvoyantPolicy()
    jobs, per_job = 200, 300
    for job in range(jobs):
        declare(policy, f"job-{job}", list(range(job * per_job, (job + 1) * per_job)))
    asked: list[int] = []

    def all_hot(key: object) -> bool:
        asked.append(int(key))  # type: ignore[call-overload]
        return True

    budget = PrefetchBudget(requests=8, bytes=1 << 30)
    calls = -(-jobs * _PREFETCH_SCAN // _PREFETCH_SCAN_TOTAL)  # enough turns for all jobs
    for _ in range(calls):
        before = len(asked)
        assert policy.prefetch(0.0, budget, all_hot) == []
        assert len(asked) - before <= _PREFETCH_SCAN_TOTAL
    first_entries = {job * per_job for job in range(jobs)}
    assert first_entries <= set(asked)  # every job was looked at within those turns


def test_the_scan_bound_counts_entries_looked_at_so_urgent_shards_of_later_jobs_count() -> None:
    # Each job was charged 256 entries however few it looked at: past 64 jobs, jobs
    # with a shard due now were not looked at while others' shards due later were taken.
    policy = ClairvoyantPolicy()
    jobs, per_job = 100, 300
    hot: set[int] = set()
    for job in range(jobs):
        keys = list(range(job * per_job, (job + 1) * per_job))
        declare(policy, f"job-{job}", keys)
        if job < 64:
            hot.update(keys[:5])  # these jobs' next cold shard is five entries away
    wanted = policy.prefetch(0.0, PrefetchBudget(requests=8, bytes=1 << 30), hot.__contains__)
    assert len(wanted) == 8
    assert all(key % per_job == 0 and key // per_job >= 64 for key in wanted), wanted


def test_a_shard_two_jobs_plan_is_as_urgent_as_the_sooner_of_them() -> None:
    policy = ClairvoyantPolicy()
    declare(policy, "a", [*range(100, 110), 7])  # 7 is ten entries away for a...
    declare(policy, "b", [7])  # ...and next for b
    declare(policy, "c", [200, 201, 202])
    hot = set(range(100, 110)) | {200, 201}  # c's next cold shard, 202, is two away
    for _ in range(3):  # whichever job is looked at first
        budget = PrefetchBudget(requests=1, bytes=1 << 30)
        assert policy.prefetch(0.0, budget, hot.__contains__) == [7]


def test_a_shard_planned_by_many_jobs_is_asked_about_once_a_call() -> None:
    policy = ClairvoyantPolicy()
    for job in range(50):
        declare(policy, f"job-{job}", [1, 2, 3])
    asked: list[object] = []

    def all_hot(key: object) -> bool:
        asked.append(key)
        return True

    policy.prefetch(0.0, PrefetchBudget(requests=8, bytes=1 << 30), all_hot)
    assert sorted(asked) == [1, 2, 3]  # type: ignore[type-var]


def test_prefetch_names_the_most_urgent_shard_however_large_and_fills_the_rest() -> None:
    policy = ClairvoyantPolicy()
    policy.declare_plan("a", [1, 2, 3, 4], [50, 10, 10, 10], 0.0)
    # 1 is larger than the bytes: named first (the driver takes it alone when nothing
    # is in flight, else passes it over), not counted; 2 and 3 fill the 25 bytes.
    assert policy.prefetch(0.0, PrefetchBudget(requests=4, bytes=25), never) == [1, 2, 3]
    assert policy.prefetch(0.0, PrefetchBudget(requests=4, bytes=5), never) == [1]
    assert policy.prefetch(0.0, PrefetchBudget(requests=1, bytes=25), never) == [1]
    # Not the most urgent: a shard that does not fit waits for a later call.
    assert policy.prefetch(0.0, PrefetchBudget(requests=4, bytes=60), never) == [1, 2]


def test_prefetch_stops_at_shards_due_after_the_farthest_resident() -> None:
    policy = ClairvoyantPolicy()
    declare(policy, "job", [1, 2, 3, 4, 5, 6])
    policy.inserted(2, 1, 0.0)
    policy.inserted(4, 1, 0.0)
    wanted = policy.prefetch(0.0, PrefetchBudget(10, 10), lambda key: key in (2, 4))
    assert wanted == [1, 3]  # 5 and 6 are due after 4, the farthest resident


def test_plans_expire_without_reports() -> None:
    policy = ClairvoyantPolicy(plan_ttl_s=10.0)
    declare(policy, "job", [1, 2, 3])
    for key in (1, 2, 3, 9):
        policy.inserted(key, 1, 0.0)
    policy.report_position("job", 0, 5.0)
    assert policy.victims(1, 14.0, always) == [9]  # still live at 14 s
    # At 16 s nothing was reported for 11 s: no shard is planned; the fallback's order.
    assert set(policy.victims(4, 16.0, always)) == {1, 2, 3, 9}
    policy.report_position("job", 1, 17.0)  # too late: ignored, no error


def test_a_job_reading_other_things_never_stalls_or_raises() -> None:
    policy = ClairvoyantPolicy()
    declare(policy, "job", list(range(100)))
    model = HotModel(policy, 10)
    for key in range(1000, 1200):  # nothing of the plan
        model.read(key, 1)
    policy.report_position("job", 500, model.now)  # beyond the plan: clamped
    policy.report_position("job", -3, model.now)  # backwards: ignored
    for key in range(100):
        model.read(key, 1)
    assert model.used <= 10


def test_plan_keys_outside_any_read_are_harmless() -> None:
    policy = ClairvoyantPolicy()
    declare(policy, "job", [("other", "x"), ("other", "y")])  # type: ignore[list-item]
    model = HotModel(policy, 3)
    for key in range(10):
        model.read(key, 1)
    policy.close_plan("job")
    assert len(model.hot) == 3


def test_redeclaring_replaces_the_plan() -> None:
    policy = ClairvoyantPolicy()
    declare(policy, "job", [1, 2])
    policy.inserted(1, 1, 0.0)
    policy.inserted(2, 1, 0.0)
    declare(policy, "job", [2])
    assert policy.victims(1, 0.0, always) == [1]


def test_an_unplanned_shard_with_no_shard_hot_at_all_goes_to_the_fallbacks_gate() -> None:
    # Nothing hot of its own (the tier full of other datasets' shards): no planned shard
    # would be displaced, yet every unplanned miss was refused, however often read.
    policy = ClairvoyantPolicy()
    declare(policy, "job", [1, 2])  # planned, not hot
    admitted = []
    for now in range(1, 5):
        policy.record_access(9, 1, float(now), False)
        admitted.append(policy.admit(9, 1, float(now), 0))
    assert admitted[:2] == [False, False]  # no reuse yet: a scan still bypasses
    assert admitted[-1]
    policy.inserted(1, 1, 5.0)  # a planned shard hot: it is not displaced for 9
    policy.record_access(9, 1, 6.0, False)
    assert not policy.admit(9, 1, 6.0, 0)


def test_without_plans_it_behaves_as_its_s3fifo_fallback() -> None:
    clairvoyant = HotModel(ClairvoyantPolicy(), 10)
    s3fifo = HotModel(S3FifoPolicy(), 10)
    keys = [(k * 7919) % 37 for k in range(400)]
    assert [clairvoyant.read(k, 1) for k in keys] == [s3fifo.read(k, 1) for k in keys]


def test_prefetch_goes_on_when_no_planned_resident_may_be_evicted() -> None:
    # The horizon is the next use of the farthest planned resident eviction may take;
    # with every one held (pinned, say) there was none, the horizon was -inf and no
    # pass named anything again, however much room the tier had. A fetch then evicts
    # no planned shard at all, as when none is hot.
    policy = ClairvoyantPolicy()
    declare(policy, "job", [1, 2, 3, 4])
    model = HotModel(policy, 10)
    model.insert(2, 1)
    model.pinned.add(2)
    assert model.victims(1) == []  # the driver said 2 may not go
    wanted = policy.prefetch(0.0, PrefetchBudget(10, 10), model.hot.__contains__)
    assert wanted == [1, 3, 4]


def test_prefetch_counts_only_shards_on_their_way_in_against_the_unplanned_room() -> None:
    # Shard 1 is nothing to fetch, yet not on its way in (larger than the tier takes:
    # it never comes). It was counted as coming all the same, and its 50 bytes took
    # the room that evicting the unplanned 8 and 9 makes from shards that can come.
    policy = ClairvoyantPolicy()
    policy.inserted(8, 10, 0.0)
    policy.inserted(9, 10, 0.0)  # unplanned: 20 bytes of room
    policy.declare_plan("job", [1, 2, 3, 4, 5], [50, 10, 10, 10, 10], 0.0)
    policy.inserted(3, 10, 0.0)  # the farthest planned resident: 4 and 5 are due after it
    budget = PrefetchBudget(requests=10, bytes=1000)

    def nothing_to_fetch(key: object) -> bool:
        return key == 1

    never_comes = policy.prefetch(0.0, budget, nothing_to_fetch, arriving=never)
    assert never_comes == [2, 4]
    coming = policy.prefetch(0.0, budget, nothing_to_fetch, arriving=nothing_to_fetch)
    assert coming == [2]  # 1 on its way in fills the room
    assert policy.prefetch(0.0, budget, nothing_to_fetch) == [2]  # untold: taken as coming
