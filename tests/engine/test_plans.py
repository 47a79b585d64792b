"""Access plans in the engine (tierstore/engine/planbook.py through the Store).

A plan reaches the dataset's policy as ``(dataset, name)`` keys with stored sizes; a
:class:`RecordingPolicy` shows what arrived. Bad input gets a specific error and
changes nothing; plans expire without reports; off-plan reads are served as usual.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest

from tests.engine.recording import policy_of
from tests.engine.stores import FRAME, StoreFactory, payload, wait_until
from tierstore.engine import planbook
from tierstore.engine.planbook import MAX_PLAN_ENTRIES
from tierstore.engine.store import Store
from tierstore.errors import (
    DatasetNotFound,
    InvalidArgument,
    InvalidName,
    InvalidPlan,
    PlanLimitReached,
    PlanNotFound,
    PlanShardsChanged,
)
from tierstore.plans import (
    MAX_PLAN_EPOCHS,
    SamplerKind,
    SamplerPlan,
    rank_order,
    shard_list_digest,
)
from tierstore.types import DatasetSettings, TracedClose, TracedPlan

pytestmark = pytest.mark.usefixtures("recording")

STORED = FRAME + 8
NAMES = ["a/0", "a/1", "a/2", "b/0", "b/1", "c"]


@pytest.fixture
def planned(open_store: StoreFactory) -> Store:
    """A store with dataset ``d`` (recording policy) holding the shards :data:`NAMES`."""
    store = open_store(datasets={"d": DatasetSettings(policy="recording")})
    for name in reversed(NAMES):
        store.put("d", name, payload(FRAME, len(name)))
    return store


def declared(store: Store) -> list[tuple[Any, ...]]:
    """What the policy of ``d`` was given: ``(job, keys, sizes)`` per declaration."""
    return policy_of(store, "d").names("declare_plan")


def test_a_sampler_plan_is_regenerated_over_the_sorted_shard_names(planned: Store) -> None:
    sampler = SamplerPlan(SamplerKind.SHUFFLE, seed=7, rank=1, world_size=2, epochs=3)
    job = planned.declare_plan("d", sampler=sampler)
    expected = rank_order(sampler, sorted(NAMES))
    ((got_job, keys, sizes),) = declared(planned)
    assert got_job == job
    assert keys == tuple(("d", name) for name in expected)
    assert sizes == (STORED,) * len(expected)
    info = planned.plan_info(job)
    assert (info.dataset, info.length, info.position) == ("d", len(expected), 0)

    under_a = planned.declare_plan("d", sampler=SamplerPlan(SamplerKind.SEQUENTIAL), prefix="a/")
    assert declared(planned)[-1][1] == (("d", "a/0"), ("d", "a/1"), ("d", "a/2"))
    assert under_a != job


def test_a_sampler_plan_over_other_shards_than_the_prefix_has_now_is_refused(
    planned: Store,
) -> None:
    # A reader lists its shards once, and the server regenerated its sampler's order over
    # the prefix's shards as they were at the declaration: with a shard added since, it
    # prepared a shard never read, and every position reported after it was off by one.
    listed = ["a/0", "a/1", "a/2"]
    sampler = SamplerPlan(SamplerKind.SHUFFLE, seed=7, shards_digest=shard_list_digest(listed))
    planned.declare_plan("d", sampler=sampler, prefix="a/")  # as listed: taken
    assert declared(planned)[-1][1] == tuple(("d", n) for n in rank_order(sampler, listed))
    planned.put("d", "a/3", payload(FRAME, 3))  # one more
    with pytest.raises(PlanShardsChanged, match=r"under prefix 'a/' .*changed since"):
        planned.declare_plan("d", sampler=sampler, prefix="a/", job="added")
    planned.delete("d", "a/1")  # as many as listed, but others
    with pytest.raises(PlanShardsChanged, match="not that of the 3 shards there now"):
        planned.declare_plan("d", sampler=sampler, prefix="a/", job="swapped")
    assert len(declared(planned)) == 1  # neither refused plan reached the policy
    with pytest.raises(PlanNotFound):
        planned.plan_info("added")
    # Without a digest (a client older than it), the order is the prefix's as it is now.
    now = ["a/0", "a/2", "a/3"]
    planned.declare_plan("d", sampler=replace(sampler, shards_digest=b""), prefix="a/")
    assert declared(planned)[-1][1] == tuple(("d", n) for n in rank_order(sampler, now))
    over_now = replace(sampler, shards_digest=shard_list_digest(now))
    planned.declare_plan("d", sampler=over_now, prefix="a/")
    assert declared(planned)[-1][1] == tuple(("d", n) for n in rank_order(sampler, now))


def test_the_shard_list_digest_tells_lists_apart() -> None:
    # Length-prefixed names: no two lists of names share one by where their joins fall.
    lists = [[], [""], ["", ""], ["a"], ["ab"], ["a", "b"], ["b", "a"], ["a\0b"], ["a", "\0b"]]
    digests = [shard_list_digest(names) for names in lists]
    assert len(set(digests)) == len(lists)
    assert all(len(digest) == 32 for digest in digests)
    assert shard_list_digest(("a", "b")) == shard_list_digest(iter(["a", "b"]))


def test_an_explicit_plan_keeps_its_order_and_repeats(planned: Store) -> None:
    order = ["c", "a/0", "c", "b/1"]
    job = planned.declare_plan("d", shards=order, job="my-job", ttl_s=60)
    assert job == "my-job"
    assert declared(planned) == [("my-job", tuple(("d", n) for n in order), (STORED,) * 4)]
    planned.report_position(job, 2)
    planned.report_position(job, 4)  # the end is a position too
    planned.report_position(job, 1)  # a reader may go back (a restarted epoch)
    assert policy_of(planned, "d").names("report_position") == [(job, 2), (job, 4), (job, 1)]
    planned.close_plan(job)
    assert policy_of(planned, "d").names("close_plan") == [(job,)]
    with pytest.raises(PlanNotFound):
        planned.report_position(job, 1)
    with pytest.raises(PlanNotFound):
        planned.close_plan(job)


def test_an_explicit_plan_may_be_any_iterable_of_names(planned: Store) -> None:
    # A generator was a raw TypeError (no len()); prefetch took one already.
    order = ["c", "a/0", "c"]
    job = planned.declare_plan("d", shards=(name for name in order))
    assert declared(planned) == [(job, tuple(("d", n) for n in order), (STORED,) * 3)]
    assert planned.plan_info(job).length == 3


def test_declaring_a_job_again_replaces_its_plan(open_store: StoreFactory) -> None:
    store = open_store(
        datasets={
            "d": DatasetSettings(policy="recording"),
            "e": DatasetSettings(policy="recording"),
        }
    )
    store.put("d", "x", b"x")
    store.put("e", "y", b"y")
    store.declare_plan("d", shards=["x"], job="j")
    store.report_position("j", 1)
    store.declare_plan("d", shards=["x", "x"], job="j")
    assert store.plan_info("j").position == 0 and store.plan_info("j").length == 2
    store.declare_plan("e", shards=["y"], job="j")  # moves to another dataset
    assert policy_of(store, "d").names("close_plan") == [("j",)]
    assert store.plan_info("j").dataset == "e"


# Bad input: a specific error, and nothing declared.


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"dataset": "nope", "shards": ["c"]}, DatasetNotFound, "nope"),
        ({"dataset": "Bad Name", "shards": ["c"]}, InvalidName, "Bad Name"),
        ({"shards": ["c", "zzz", "a/0"]}, InvalidPlan, "zzz"),
        ({"shards": ["c", "/abs"]}, InvalidName, "/abs"),
        ({"shards": ["c"] * (MAX_PLAN_EPOCHS * len(NAMES) + 1)}, InvalidPlan, "at most"),
        ({"shards": "c"}, InvalidPlan, "not one string"),
        # Raw TypeErrors: object of type 'int' has no len(), unhashable type: 'list'.
        ({"shards": 5}, InvalidPlan, "shards must be a sequence of shard names, not 5"),
        ({"shards": [["c"]]}, InvalidName, "must be a string"),
        ({"shards": itertools.repeat("c")}, InvalidPlan, "at most"),  # endless: not taken
        ({}, InvalidPlan, "exactly one"),
        (
            {"shards": ["c"], "sampler": SamplerPlan(SamplerKind.SEQUENTIAL)},
            InvalidPlan,
            "exactly one",
        ),
        ({"shards": ["c"], "prefix": "a/"}, InvalidPlan, "prefix"),
        # Taken (and kept for the plan's life), though no shard name is that long.
        (
            {"sampler": SamplerPlan(SamplerKind.SEQUENTIAL), "prefix": "a" * 100_000},
            InvalidPlan,
            "longer than any shard name",
        ),
        (
            {
                "sampler": SamplerPlan(
                    SamplerKind.REPLACEMENT, samples_per_epoch=MAX_PLAN_EPOCHS * len(NAMES) + 1
                )
            },
            InvalidPlan,
            "at most",
        ),
        (
            {"sampler": SamplerPlan(SamplerKind.REPLACEMENT, samples_per_epoch=(1 << 64) - 1)},
            InvalidPlan,
            "at most",
        ),
        (
            {"sampler": SamplerPlan(SamplerKind.SHUFFLE, epochs=MAX_PLAN_EPOCHS + 1)},
            InvalidArgument,
            "epochs",
        ),
        (
            {"sampler": SamplerPlan(SamplerKind.SHUFFLE, rank=2, world_size=2)},
            InvalidArgument,
            "rank",
        ),
        (
            {"sampler": SamplerPlan(SamplerKind.SHUFFLE, shards_digest=b"\x01" * 31)},
            InvalidArgument,
            "shards_digest",
        ),
        ({"shards": ["c"], "ttl_s": 0}, InvalidArgument, "ttl_s"),
        ({"shards": ["c"], "ttl_s": -1.0}, InvalidArgument, "ttl_s"),
        ({"shards": ["c"], "ttl_s": float("nan")}, InvalidArgument, "ttl_s"),
        ({"shards": ["c"], "ttl_s": float("inf")}, InvalidArgument, "ttl_s"),
        ({"shards": ["c"], "job": ""}, InvalidArgument, "job id"),
        ({"shards": ["c"], "job": "a\nb"}, InvalidArgument, "job id"),
        ({"shards": ["c"], "job": "j" * 513}, InvalidArgument, "job id"),
    ],
    ids=lambda value: repr(value)[:60] if not isinstance(value, type) else value.__name__,
)
def test_bad_plans_are_refused(
    planned: Store, arguments: dict[str, Any], error: type[Exception], match: str
) -> None:
    arguments = {"dataset": "d", **arguments}
    with pytest.raises(error, match=match):
        planned.declare_plan(**arguments)
    assert declared(planned) == []
    assert not [e for e in planned.trace_events() if isinstance(e, TracedPlan)]


class _Counted:
    """Shard names that say how many they are and may not be walked."""

    def __init__(self, length: int) -> None:
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Any:
        raise AssertionError("the names were taken in before their number was checked")


def test_a_plan_too_long_for_its_dataset_is_refused_before_its_names_are_taken_in(
    planned: Store,
) -> None:
    # A review's DeclarePlan of 9 million names, over a dataset of a few shards, grew
    # the server by 1.3 GB (a list, a tuple and a dict of them) before it was refused.
    longest = MAX_PLAN_EPOCHS * len(NAMES)
    with pytest.raises(InvalidPlan, match=f"at most {longest:,} are allowed"):
        planned.declare_plan("d", shards=_Counted(longest + 1))
    with pytest.raises(DatasetNotFound):
        planned.declare_plan("nope", shards=_Counted(1))
    assert declared(planned) == []


def test_the_longest_plans_allowed_are_accepted(planned: Store) -> None:
    longest = MAX_PLAN_EPOCHS * len(NAMES)
    planned.declare_plan("d", shards=["c"] * longest)
    sampler = SamplerPlan(SamplerKind.REPLACEMENT, samples_per_epoch=longest)
    job = planned.declare_plan("d", sampler=sampler)
    assert planned.plan_info(job).length == longest
    assert MAX_PLAN_ENTRIES == 10_000_000


@pytest.mark.parametrize("position", [-1, 7, 1 << 40, 1.5, True, "3"], ids=repr)
def test_bad_positions_are_refused(planned: Store, position: Any) -> None:
    job = planned.declare_plan("d", shards=["c"] * 6)
    with pytest.raises(InvalidArgument):
        planned.report_position(job, position)
    assert planned.plan_info(job).position == 0


def test_a_plan_declared_at_a_position_starts_there(planned: Store) -> None:
    # A resumed epoch declared its plan from the start and reported its position a
    # round trip later, which the clairvoyant policy rated as entries read in those
    # milliseconds (tests/engine/test_policies_live.py). Declared with its position,
    # the policy hears the plan and the position together.
    job = planned.declare_plan("d", shards=["c", "b/0", "a/0"], position=2)
    assert planned.plan_info(job).position == 2
    told = [c for c in policy_of(planned, "d").calls if c[0] in ("declare_plan", "report_position")]
    assert [c[0] for c in told] == ["declare_plan", "report_position"]
    assert told[1] == ("report_position", job, 2)
    # Position 0 is the start, as before: no position told.
    planned.declare_plan("d", shards=["c"], job=job)
    assert planned.plan_info(job).position == 0
    assert policy_of(planned, "d").names("report_position") == [(job, 2)]
    # The whole plan read already is a position too (an epoch resumed at its end).
    planned.declare_plan("d", shards=["c"], job=job, position=1)
    assert planned.plan_info(job).position == 1


@pytest.mark.parametrize("position", [-1, 4, 1 << 64, 1.5, True, "3", None], ids=repr)
def test_bad_declared_positions_are_refused_and_keep_the_plan(
    planned: Store, position: Any
) -> None:
    job = planned.declare_plan("d", shards=["c", "c"], position=1)
    with pytest.raises(InvalidArgument, match="position"):
        planned.declare_plan("d", shards=["c", "b/0", "a/0"], job=job, position=position)
    info = planned.plan_info(job)
    assert (info.length, info.position) == (2, 1)
    assert len(declared(planned)) == 1


def test_a_declared_position_past_the_end_says_so(planned: Store) -> None:
    with pytest.raises(InvalidArgument, match=r"position 4 is past the end of the plan \(3 "):
        planned.declare_plan("d", shards=["c", "b/0", "a/0"], position=4)
    assert declared(planned) == []


def test_a_position_behind_the_last_one_moves_the_plan_back_nowhere(planned: Store) -> None:
    # It moved the plan back: a change of policy then handed the new one the older
    # position, which counted the entries read since as still to come.
    job = planned.declare_plan("d", shards=["c", "b/0", "a/0"])
    planned.report_position(job, 2)
    planned.report_position(job, 1)  # late, from a reader that fell behind
    assert planned.plan_info(job).position == 2
    planned.update_dataset("d", policy="lru")
    planned.update_dataset("d", policy="recording")
    assert policy_of(planned, "d").names("report_position")[-1] == (job, 2)


@pytest.mark.parametrize("job", ["never-declared", "", "x" * 10_000, 5, None], ids=repr)
def test_unknown_jobs_are_not_found(planned: Store, job: Any) -> None:
    for call in (
        lambda: planned.report_position(job, 0),
        lambda: planned.close_plan(job),
        lambda: planned.plan_info(job),
    ):
        with pytest.raises(PlanNotFound):
            call()


# Expiry.


def test_a_plan_expires_without_reports(planned: Store) -> None:
    job = planned.declare_plan("d", shards=["c", "b/0"], ttl_s=0.5)
    kept = planned.declare_plan("d", shards=["c"], ttl_s=300)
    planned.report_position(job, 1)  # a report keeps it alive for another ttl_s

    def expired() -> bool:
        try:
            planned.plan_info(job)
        except PlanNotFound:
            return True
        return False

    wait_until(expired, "the plan to expire")
    with pytest.raises(PlanNotFound):
        planned.report_position(job, 2)
    assert (job,) in policy_of(planned, "d").names("close_plan")
    assert planned.plan_info(kept).length == 1
    closes = [e.job for e in planned.trace_events("d") if isinstance(e, TracedClose)]
    assert closes == [job]


def test_the_prefetch_loop_ends_expired_plans(planned: Store) -> None:
    job = planned.declare_plan("d", shards=["c"], ttl_s=0.05)
    policy = policy_of(planned, "d")
    wait_until(lambda: (job,) in policy.names("close_plan"), "the loop to end the plan")
    assert len(planned._plans) == 0


def test_deleting_a_dataset_ends_its_plans(planned: Store) -> None:
    job = planned.declare_plan("d", shards=["c"])
    planned.delete_dataset("d", force=True)
    with pytest.raises(PlanNotFound):
        planned.plan_info(job)


# Reading off the plan.


def test_a_job_reading_off_its_plan_is_served_and_stalls_nothing(open_store: StoreFactory) -> None:
    store = open_store(datasets={"d": DatasetSettings(policy="recording")})
    names = [f"s{i}" for i in range(8)]
    contents = {name: payload(2 * FRAME, index) for index, name in enumerate(names)}
    for name, data in contents.items():
        store.put("d", name, data)
    assert store.drain(10)
    for name in names:
        store.evict("d", name)
    job = store.declare_plan("d", shards=names[:4])
    for position, name in enumerate(reversed(names)):  # another order, other shards
        assert store.get("d", name).to_bytes() == contents[name]
        if position < 4:
            store.report_position(job, position)
    store.close_plan(job)
    assert store.drain(10)
    assert store.stats().mover_error is None
    for name, data in contents.items():
        assert store.get("d", name).to_bytes() == data


def test_the_plan_book_is_bounded_per_owner_and_per_node(
    planned: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Declaring needs only the reader role, and plans live in memory: bounded, with
    # the bounds made small here (6 shards, so explicit plans of 1 to 6 entries).
    monkeypatch.setattr(planbook, "MAX_OWNER_PLANS", 3)
    monkeypatch.setattr(planbook, "MAX_OWNER_PLAN_ENTRIES", 8)
    monkeypatch.setattr(planbook, "MAX_LIVE_PLANS", 5)
    monkeypatch.setattr(planbook, "MAX_LIVE_PLAN_ENTRIES", 12)
    a1 = planned.declare_plan("d", shards=NAMES[:4], job="a1", owner="alice")
    planned.declare_plan("d", shards=NAMES[:4], job="a2", owner="alice")
    with pytest.raises(PlanLimitReached, match="8 plan entries of this caller"):
        planned.declare_plan("d", shards=NAMES[:1], job="a3", owner="alice")
    planned.declare_plan("d", shards=NAMES[:1], job=a1, owner="alice")  # a1 replaced: 4 -> 1
    planned.declare_plan("d", shards=NAMES[:1], job="a3", owner="alice")
    with pytest.raises(PlanLimitReached, match="3 live plans of this caller"):
        planned.declare_plan("d", shards=NAMES[:1], job="a4", owner="alice")
    # Another owner has its own share, up to the node's bounds (alice holds 6 entries).
    planned.declare_plan("d", shards=NAMES, job="b1", owner="bob")
    with pytest.raises(PlanLimitReached, match="12 plan entries on this node"):
        planned.declare_plan("d", shards=NAMES[:1], job="b2", owner="bob")
    planned.close_plan("b1")
    planned.declare_plan("d", shards=NAMES[:1], job="b2", owner="bob")
    planned.declare_plan("d", shards=NAMES[:1], job="c1", owner="carol")
    with pytest.raises(PlanLimitReached, match="5 live plans on this node"):
        planned.declare_plan("d", shards=NAMES[:1], job="c2", owner="carol")
    refused = {"a4", "c2"}  # never declared (a3 and b2 were, once there was room)
    assert {job for job, *_ in declared(planned)}.isdisjoint(refused)
    for job in refused:
        with pytest.raises(PlanNotFound):
            planned.plan_info(job)
    assert planned.plan_info("a2").length == 4  # the refusals changed nothing


def test_expired_plans_do_not_count_against_the_bounds(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planbook, "MAX_OWNER_PLANS", 1)
    store = open_store(datasets={"d": DatasetSettings(policy="recording")})
    store.put("d", "s", payload(FRAME, 1))
    store.declare_plan("d", shards=["s"], job="old", ttl_s=0.05, owner="alice")
    with pytest.raises(PlanLimitReached):
        store.declare_plan("d", shards=["s"], job="new", owner="alice")

    def declared_once_expired() -> bool:
        try:
            store.declare_plan("d", shards=["s"], job="new", owner="alice")
        except PlanLimitReached:
            return False
        return True

    wait_until(declared_once_expired, "the expired plan to stop counting")
    with pytest.raises(PlanNotFound):
        store.plan_info("old")
