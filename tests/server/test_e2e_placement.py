"""Placement end to end: policies, pins with TTLs, access plans, traces and sizing.

The real ``tierstore serve`` (session server, embedded SeaweedFS) and the client
library: every new call, its bad input (the class the engine raised comes back),
and the effect a declared plan has — its shards turn hot ahead of the reader.
"""

from __future__ import annotations

import pytest

from tierstore import errors
from tierstore.client.client import Client
from tierstore.plans import SamplerKind, SamplerPlan, rank_order, shard_list_digest
from tierstore.policy.registry import DEFAULT_POLICY, make_policy
from tierstore.types import Grant, Role, TracedClose, TracedPlan, TracedPosition, TracedRead

from .conftest import ServerProcess, poll, unique


def cold_dataset(admin: Client, names: list[str], policy: str = "lru") -> str:
    """A write-through dataset holding ``names`` (a few KB each), every one evicted."""
    dataset = unique()
    admin.create_dataset(dataset, encrypted=False, durability="write-through", policy=policy)
    for index, name in enumerate(names):
        admin.put(dataset, name, bytes([index]) * 5000)
        assert admin.evict(dataset, name) > 0
    return dataset


def test_policies_are_set_shown_and_kept(admin: Client) -> None:
    dataset = unique()
    created = admin.create_dataset(dataset, encrypted=False, policy="lru")
    assert created.policy == "lru" == admin.get_dataset(dataset).policy
    assert admin.stats(dataset)["datasets"][dataset]["policy"] == "lru"
    assert admin.set_policy(dataset, "s3fifo").policy == "s3fifo"
    assert admin.get_dataset(dataset).policy == "s3fifo"
    assert admin.stats(dataset)["datasets"][dataset]["policy"] == "s3fifo"
    assert dict(admin.list_datasets())[dataset].policy == "s3fifo"
    other = unique()
    assert admin.create_dataset(other, encrypted=False).policy == DEFAULT_POLICY
    for bad in ("no-such-policy", "belady", ""):  # belady needs the future: offline only
        with pytest.raises(errors.InvalidArgument):
            admin.set_policy(dataset, bad)
    with pytest.raises(errors.UnknownPolicy):
        admin.create_dataset(unique(), encrypted=False, policy="no-such-policy")
    assert admin.get_dataset(dataset).policy == "s3fifo"
    with pytest.raises(errors.DatasetNotFound):
        admin.set_policy(unique(), "lru")


def test_a_pin_with_a_ttl_runs_out(admin: Client) -> None:
    dataset = cold_dataset(admin, ["a"])
    assert admin.pin(dataset, "a", ttl_s=3600) == 5000 + 8  # cold: promoted
    poll(lambda: admin.stat(dataset, "a").hot, 20, "the pinned shard to turn hot")
    info = admin.stat(dataset, "a")
    assert info.pinned and info.pinned_until > info.created_at + 3000
    assert admin.evict(dataset, "a") == 0
    admin.pin(dataset, "a", ttl_s=0.05)
    poll(lambda: not admin.stat(dataset, "a").pinned, 20, "the short pin to run out")
    assert admin.evict(dataset, "a") > 0
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(errors.InvalidArgument):
            admin.pin(dataset, "a", ttl_s=bad)


def test_access_plans_declare_report_close(admin: Client) -> None:
    names = [f"s{i}" for i in range(6)]
    dataset = cold_dataset(admin, names)
    sampler = SamplerPlan(SamplerKind.SHUFFLE, seed=3, rank=0, world_size=2, epochs=2)
    job = admin.declare_plan(dataset, sampler=sampler)
    admin.report_position(job, 3)
    admin.report_position(job, 6)  # the whole plan: 2 epochs x 3 shards
    with pytest.raises(errors.InvalidArgument):
        admin.report_position(job, 7)
    with pytest.raises(errors.InvalidArgument):
        admin.report_position(job, -1)
    # Past what the wire carries: it said "must be a whole number >= 0" of a positive one.
    with pytest.raises(errors.InvalidArgument, match="from 0 to the plan's length"):
        admin.report_position(job, 2**70)
    admin.close_plan(job)
    with pytest.raises(errors.PlanNotFound):
        admin.report_position(job, 1)
    with pytest.raises(errors.PlanNotFound):
        admin.close_plan(job)

    # My own job id, an explicit list, a prefix for samplers.
    assert admin.declare_plan(dataset, shards=["s5", "s0", "s5"], job="mine") == "mine"
    admin.report_position("mine", 3)
    admin.declare_plan(dataset, sampler=SamplerPlan(SamplerKind.SEQUENTIAL), prefix="s1", job="p")
    admin.report_position("p", 1)
    with pytest.raises(errors.InvalidArgument):
        admin.report_position("p", 2)  # the prefix left one shard
    for job_id in ("mine", "p"):
        admin.close_plan(job_id)

    # What the trace recorded of the first plan is the order rank_order gives.
    plans = [e for e in admin.export_trace(dataset) if isinstance(e, TracedPlan)]
    assert plans[0].shards == tuple(rank_order(sampler, names))
    assert plans[0].sizes == (5008,) * 6
    assert plans[0].job.endswith(job)  # the server keeps plans per principal


def test_a_sampler_plan_over_shards_the_prefix_no_longer_has_is_refused(admin: Client) -> None:
    listed = ["s0", "s1", "s2"]
    dataset = cold_dataset(admin, listed)
    sampler = SamplerPlan(SamplerKind.SHUFFLE, seed=3, shards_digest=shard_list_digest(listed))
    admin.close_plan(admin.declare_plan(dataset, sampler=sampler))  # the digest travels
    admin.put(dataset, "s3", b"x")
    # The engine's class comes back: a reader tells it from other refusals by it.
    with pytest.raises(errors.PlanShardsChanged, match="changed since the reader listed"):
        admin.declare_plan(dataset, sampler=sampler, prefix="s")
    older = SamplerPlan(SamplerKind.SHUFFLE, seed=3)  # no digest: as a client older than it
    admin.close_plan(admin.declare_plan(dataset, sampler=older, prefix="s"))
    plans = [e.shards for e in admin.export_trace(dataset) if isinstance(e, TracedPlan)]
    assert plans == [
        tuple(rank_order(sampler, listed)),
        tuple(rank_order(older, [*listed, "s3"])),
    ]


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"shards": ["s0", "nope"]}, errors.InvalidPlan),
        ({"shards": ["s0"] * (64 * 2 + 1)}, errors.InvalidPlan),
        (
            {"sampler": SamplerPlan(SamplerKind.REPLACEMENT, samples_per_epoch=10**12)},
            errors.InvalidPlan,
        ),
        ({}, errors.InvalidPlan),
        ({"shards": ["s0"], "ttl_s": -5.0}, errors.InvalidArgument),
        ({"shards": ["s0"], "job": "x" * 300}, errors.InvalidArgument),
        ({"shards": ["../s0"]}, errors.InvalidName),
        (
            {"sampler": SamplerPlan(SamplerKind.SHUFFLE, rank=3, world_size=2)},
            errors.InvalidArgument,
        ),
    ],
    ids=repr,
)
def test_bad_plans_get_the_engines_error(
    admin: Client, arguments: dict[str, object], error: type[Exception]
) -> None:
    dataset = cold_dataset(admin, ["s0", "s1"])
    with pytest.raises(error):
        admin.declare_plan(dataset, **arguments)  # type: ignore[arg-type]


def test_unknown_datasets_and_jobs_are_not_found(admin: Client) -> None:
    with pytest.raises(errors.DatasetNotFound):
        admin.declare_plan(unique(), shards=["a"])
    for call in (lambda: admin.report_position("never", 0), lambda: admin.close_plan("never")):
        with pytest.raises(errors.PlanNotFound):
            call()
    # A ttl in the range but shorter than the call: said in the caller's words.
    with pytest.raises(errors.PlanNotFound) as caught:
        admin.declare_plan(cold_dataset(admin, ["s0"]), shards=["s0"], job="brief", ttl_s=1e-9)
    assert "job 'brief'" in str(caught.value) and "ttl_s" in str(caught.value)


def test_a_plan_expires_without_reports(admin: Client) -> None:
    dataset = cold_dataset(admin, ["s0"])
    job = admin.declare_plan(dataset, shards=["s0"], ttl_s=0.2)

    def closed() -> bool:
        return any(
            isinstance(event, TracedClose) and event.job.endswith("/" + job)
            for event in admin.export_trace(dataset)
        )

    poll(closed, 20, "the server to end the plan")
    for call in (lambda: admin.report_position(job, 1), lambda: admin.close_plan(job)):
        with pytest.raises(errors.PlanNotFound):
            call()


def test_a_readers_plan_brings_its_shards_hot_ahead_of_it(
    server: ServerProcess, admin: Client
) -> None:
    try:
        make_policy("clairvoyant")
    except errors.UnknownPolicy as exc:
        pytest.skip(str(exc))
    names = [f"s{i:02d}" for i in range(12)]
    dataset = cold_dataset(admin, names, policy="clairvoyant")
    _, token = admin.create_token("loader", [Grant(dataset, Role.READER)])
    with server.connect(token=token) as reader:
        order = names[::-1]
        job = reader.declare_plan(dataset, shards=order)
        poll(lambda: admin.stat(dataset, order[0]).hot, 20, "the first shard to be prefetched")
        for position, name in enumerate(order):
            poll(lambda name=name: admin.stat(dataset, name).hot, 20, f"{name} ahead of reader")
            assert reader.get(dataset, name).to_pybytes() == bytes([names.index(name)]) * 5000
            reader.report_position(job, position + 1)
        reader.close_plan(job)
    figures = admin.stats(dataset)["datasets"][dataset]
    assert (figures["hits"], figures["misses"]) == (12, 0)


def test_trace_export_and_sizing(admin: Client, server: ServerProcess) -> None:
    dataset = cold_dataset(admin, ["a", "b"])
    admin.get(dataset, "a")  # a miss
    poll(lambda: admin.stat(dataset, "a").hot, 20, "the promotion")
    admin.get(dataset, "a")  # a hit
    job = admin.declare_plan(dataset, shards=["b"])
    admin.report_position(job, 1)
    admin.close_plan(job)
    events = list(admin.export_trace(dataset))
    assert [type(e) for e in events] == [
        TracedRead,
        TracedRead,
        TracedPlan,
        TracedPosition,
        TracedClose,
    ]
    assert [(e.shard, e.hit) for e in events[:2]] == [("a", False), ("a", True)]  # type: ignore[union-attr]
    assert [e.t for e in events] == sorted(e.t for e in events)
    everything = list(admin.export_trace())
    assert len(everything) >= len(events)

    figures = admin.stats(dataset, sizing=True)
    assert figures["traced_reads"] == 2
    capacity = figures["hot_capacity_bytes"]
    sizes = [point["capacity_bytes"] for point in figures["sizing"]]
    assert sizes == [int(capacity * f) for f in (0.125, 0.25, 0.5, 1, 2, 4)]
    assert [point["miss_ratio"] for point in figures["sizing"]] == [0.5] * 6
    assert "sizing" not in admin.stats(dataset)  # only when asked

    # Only server admins may export.
    _, token = admin.create_token("owner", [Grant(dataset, Role.ADMIN)])
    with server.connect(token=token) as owner, pytest.raises(errors.PermissionDenied):
        list(owner.export_trace(dataset))
