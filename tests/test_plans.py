"""Access plans (tierstore.plans): orders are deterministic, ranks partition each
epoch's global order, and plans are validated."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierstore.errors import InvalidArgument
from tierstore.plans import (
    MAX_PLAN_EPOCHS,
    MAX_PLAN_TTL_S,
    SamplerKind,
    SamplerPlan,
    check_plan_ttl,
    epoch_order,
    plan_indices,
    rank_order,
)

KINDS = st.sampled_from(list(SamplerKind))


def test_orders_are_deterministic_and_seeded() -> None:
    first = epoch_order(1000, SamplerKind.SHUFFLE, seed=7, epoch=3)
    assert np.array_equal(first, epoch_order(1000, SamplerKind.SHUFFLE, seed=7, epoch=3))
    assert not np.array_equal(first, epoch_order(1000, SamplerKind.SHUFFLE, seed=8, epoch=3))
    assert not np.array_equal(first, epoch_order(1000, SamplerKind.SHUFFLE, seed=7, epoch=4))
    assert sorted(first.tolist()) == list(range(1000))


def test_orders_are_pinned_across_versions() -> None:
    # The server regenerates a loader's order: it must never change. These are the
    # SplitMix64 orders as first released (golden values); a change breaks clients.
    shuffle = SamplerKind.SHUFFLE
    assert epoch_order(8, shuffle, seed=0, epoch=0).tolist() == [0, 7, 2, 5, 4, 6, 3, 1]
    assert epoch_order(8, shuffle, seed=42, epoch=3).tolist() == [0, 3, 7, 1, 4, 2, 6, 5]
    draws = epoch_order(6, SamplerKind.REPLACEMENT, seed=1, epoch=2)
    assert draws.tolist() == [4, 2, 3, 3, 3, 5]
    assert epoch_order(5, SamplerKind.SEQUENTIAL, seed=3, epoch=9).tolist() == [0, 1, 2, 3, 4]


def test_replacement_draws() -> None:
    draws = epoch_order(10, SamplerKind.REPLACEMENT, seed=1, epoch=0, samples=500)
    assert len(draws) == 500
    assert set(draws.tolist()) <= set(range(10))
    assert len(set(draws.tolist())) == 10  # 500 draws over 10 shards hit them all
    assert len(epoch_order(10, SamplerKind.REPLACEMENT, seed=1, epoch=0)) == 10
    assert len(epoch_order(0, SamplerKind.REPLACEMENT, seed=1, epoch=0)) == 0


@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(0, 50),
    samples=st.integers(0, 400),
    world=st.integers(1, 9),
    seed=st.integers(0, 2**63),
)
def test_a_rank_draws_its_share_of_the_epochs_draws(
    count: int, samples: int, world: int, seed: int
) -> None:
    draws = epoch_order(count, SamplerKind.REPLACEMENT, seed, 3, samples).tolist()
    for rank in range(world):
        plan = SamplerPlan(SamplerKind.REPLACEMENT, seed, 3, rank, world, samples_per_epoch=samples)
        assert plan_indices(plan, count).tolist() == draws[rank::world]


def test_a_ranks_draws_cost_its_share_not_the_epochs() -> None:
    # 37 bytes asked for 40 million draws of which a rank kept 64: the server made
    # them all first (a GiB). Now only the rank's are made.
    draws, world = 10**9, 10**9 // 64
    plan = SamplerPlan(SamplerKind.REPLACEMENT, 1, 0, 5, world, samples_per_epoch=draws)
    tracemalloc.start()
    try:
        indices = plan_indices(plan, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(indices) == 64 and set(indices.tolist()) <= {0, 1, 2}
    assert peak < 1 << 20


@settings(max_examples=60, deadline=None)
@given(
    kind=KINDS,
    count=st.integers(0, 200),
    world=st.integers(1, 9),
    seed=st.integers(0, 2**63),
    epoch=st.integers(0, 1000),
)
def test_ranks_partition_the_global_order(
    kind: SamplerKind, count: int, world: int, seed: int, epoch: int
) -> None:
    global_order = epoch_order(count, kind, seed, epoch).tolist()
    parts = [
        plan_indices(SamplerPlan(kind, seed, epoch, rank, world), count).tolist()
        for rank in range(world)
    ]
    # Every entry exactly once, each in its rank: entry i goes to rank i % world.
    assert sorted(entry for part in parts for entry in part) == sorted(global_order)
    for rank, part in enumerate(parts):
        assert part == global_order[rank::world]


@settings(max_examples=40, deadline=None)
@given(kind=KINDS, count=st.integers(1, 100), seed=st.integers(0, 10**6), epochs=st.integers(1, 4))
def test_interleaving_ranks_gives_the_same_order_for_any_world_size(
    kind: SamplerKind, count: int, seed: int, epochs: int
) -> None:
    def interleaved(world: int) -> list[int]:
        merged: list[int] = []
        for epoch in range(epochs):
            ranks = [
                plan_indices(SamplerPlan(kind, seed, epoch, rank, world), count).tolist()
                for rank in range(world)
            ]
            length = len(epoch_order(count, kind, seed, epoch))
            merged += [ranks[i % world][i // world] for i in range(length)]
        return merged

    single = plan_indices(SamplerPlan(kind, seed, 0, 0, 1, epochs), count).tolist()
    assert interleaved(1) == interleaved(3) == interleaved(8) == single


def test_multi_epoch_plans_concatenate_epochs() -> None:
    plan = SamplerPlan(SamplerKind.SHUFFLE, seed=5, epoch=2, rank=1, world_size=2, epochs=3)
    expected = np.concatenate([epoch_order(30, SamplerKind.SHUFFLE, 5, e)[1::2] for e in (2, 3, 4)])
    assert np.array_equal(plan_indices(plan, 30), expected)


def test_rank_order_names_shards() -> None:
    names = [f"shard-{i:03d}" for i in range(10)]
    plan = SamplerPlan(SamplerKind.SHUFFLE, seed=1)
    order = rank_order(plan, names)
    assert sorted(order) == names
    assert order == [names[i] for i in plan_indices(plan, 10)]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"world_size": 0}, "world_size"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"rank": -1}, "rank"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": MAX_PLAN_EPOCHS + 1}, "epochs"),
        ({"seed": -1}, "negative"),
        ({"epoch": -1}, "negative"),
        # Past uint64 (the wire's), a seed or an epoch ordered as another one: 2**64 as 0.
        ({"seed": 1 << 64}, "seed must be below 2\\*\\*64"),
        ({"epoch": 1 << 64}, "epoch"),
        ({"epoch": (1 << 64) - 1, "epochs": 2}, "epoch"),
        ({"samples_per_epoch": -1}, "samples_per_epoch"),
        ({"samples_per_epoch": 5}, "replacement"),
    ],
)
def test_validation(fields: dict[str, int], message: str) -> None:
    plan = SamplerPlan(SamplerKind.SHUFFLE, **fields)
    with pytest.raises(InvalidArgument, match=message):
        plan.validate()
    with pytest.raises(InvalidArgument):
        plan_indices(plan, 10)


def test_a_valid_replacement_plan() -> None:
    plan = SamplerPlan(SamplerKind.REPLACEMENT, samples_per_epoch=7, epochs=2)
    plan.validate()
    assert len(plan_indices(plan, 3)) == 14


@pytest.mark.parametrize(
    "ttl", [0, -1, float("nan"), float("inf"), 7 * 86400 + 1, 10**400, "5", True]
)
def test_a_plan_ttl_outside_a_week_is_refused_naming_the_argument(ttl: object) -> None:
    with pytest.raises(InvalidArgument, match=r"^plan_ttl_s must be a number of seconds"):
        check_plan_ttl(ttl, "plan_ttl_s")
    assert check_plan_ttl(0.5) == 0.5 and check_plan_ttl(MAX_PLAN_TTL_S) == MAX_PLAN_TTL_S


def test_a_kind_given_by_its_name_orders_as_the_kind() -> None:
    # The wire maps "shuffle" to the shuffle sampler (a StrEnum is its value), so an
    # embedded store's caller writing the name must get the same order, not draws.
    names = [f"shard-{i:03d}" for i in range(10)]
    for kind in SamplerKind:
        by_name = SamplerPlan(kind.value, seed=3, epochs=2)  # type: ignore[arg-type]
        assert by_name.kind is kind
        assert rank_order(by_name, names) == rank_order(SamplerPlan(kind, seed=3, epochs=2), names)
        assert epoch_order(10, kind.value, 3, 0).tolist() == epoch_order(10, kind, 3, 0).tolist()  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["bogus", 1, None])
def test_an_unknown_kind_is_refused(kind: object) -> None:
    with pytest.raises(InvalidArgument, match="sampler kind"):
        SamplerPlan(kind).validate()  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="sampler kind"):
        epoch_order(10, kind, 0, 0)  # type: ignore[arg-type]


def test_numpy_integers_order_as_the_same_python_integers() -> None:
    # A seed or epoch from numpy (a generator's draw, an np.arange loop) raised
    # OverflowError in the SplitMix64 mask, where the wire took it as the int it is.
    names = [f"shard-{i:03d}" for i in range(10)]
    for kind in SamplerKind:
        fields = {"seed": 5, "epoch": 3, "rank": 1, "world_size": 2, "epochs": 2}
        as_numpy = {name: np.int64(value) for name, value in fields.items()}
        plan = SamplerPlan(kind, **as_numpy)  # type: ignore[arg-type]
        assert rank_order(plan, names) == rank_order(SamplerPlan(kind, **fields), names)
        assert type(plan.seed) is int
    shuffle = SamplerKind.SHUFFLE
    assert epoch_order(10, shuffle, np.uint64(7), np.int32(2)).tolist() == (  # type: ignore[arg-type]
        epoch_order(10, shuffle, 7, 2).tolist()
    )


@pytest.mark.parametrize(
    "fields", [{"seed": 1.5}, {"epoch": "1"}, {"epochs": 2.0}, {"world_size": 2.0}, {"rank": True}]
)
def test_fields_that_are_not_whole_numbers_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument, match="whole number"):
        SamplerPlan(SamplerKind.SHUFFLE, **fields).validate()  # type: ignore[arg-type]
