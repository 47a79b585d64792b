"""Properties of the epoch order (tierstore.torch.order), as pure functions: no server.

What "the order does not depend on the worker count" means here, and what is checked:
the global shard order and every shard's row order are the same for any number of ranks
and workers — reassembling all slots' streams by global shard position gives the one
global sequence. Which slot reads a shard does depend on the counts, and so does the
DataLoader's round-robin interleaving of its workers (not modelled here).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierstore.errors import InvalidArgument
from tierstore.plans import plan_indices, rank_order
from tierstore.torch.arguments import check_int
from tierstore.torch.order import (
    Layout,
    Position,
    ResumeState,
    Slot,
    even_share,
    global_samples,
    position_after,
    row_order,
    sampler_plan,
    worker_samples,
    worker_shards,
)


@st.composite
def layouts(draw: st.DrawFn) -> dict[str, object]:
    count = draw(st.integers(0, 14))
    return {
        "shards": [f"s{i:03d}" for i in range(count)],
        "rows": {f"s{i:03d}": draw(st.integers(0, 7)) for i in range(count)},
        "world": draw(st.integers(1, 4)),
        "workers": draw(st.integers(1, 4)),
        "seed": draw(st.integers(0, 2**63 - 1)),
        "epoch": draw(st.integers(0, 1000)),
        "shuffle": draw(st.booleans()),
    }


def slots(world: int, workers: int) -> list[Slot]:
    return [Slot(r, world, w, workers) for r in range(world) for w in range(workers)]


def stream(layout: dict, slot: Slot, start: Position | None = None) -> list[tuple[str, int]]:
    shards = worker_shards(
        layout["shards"], layout["shuffle"], layout["seed"], layout["epoch"], slot
    )
    begin = start or Position(layout["epoch"])
    walk = worker_samples(shards, layout["rows"], layout["shuffle"], layout["seed"], begin)
    return [(shard, row) for shard, row, _ in walk]


@settings(max_examples=300, deadline=None)
@given(layouts())
def test_every_sample_is_read_exactly_once_per_epoch(layout: dict) -> None:
    read = Counter(
        sample
        for slot in slots(layout["world"], layout["workers"])
        for sample in stream(layout, slot)
    )
    expected = {(shard, row) for shard, n in layout["rows"].items() for row in range(n)}
    assert set(read) == expected
    assert all(times == 1 for times in read.values())


@settings(max_examples=300, deadline=None)
@given(layouts())
def test_global_order_and_row_orders_do_not_depend_on_ranks_or_workers(layout: dict) -> None:
    world, workers = layout["world"], layout["workers"]
    count = world * workers
    # Slot s reads global shard positions s, s + count, s + 2*count, ...: put every shard's
    # rows (in the order the slot yielded them) back at its global position.
    placed: dict[int, list[tuple[str, int]]] = {}
    for slot in slots(world, workers):
        shards = worker_shards(
            layout["shards"], layout["shuffle"], layout["seed"], layout["epoch"], slot
        )
        samples = stream(layout, slot)
        for i, shard in enumerate(shards):
            placed[slot.index + count * i] = [s for s in samples if s[0] == shard]
    reassembled = [sample for position in sorted(placed) for sample in placed[position]]
    args = (layout["shards"], layout["rows"], layout["shuffle"], layout["seed"], layout["epoch"])
    assert reassembled == global_samples(*args)


@settings(max_examples=200, deadline=None)
@given(layouts())
def test_a_workers_slice_is_what_the_server_regenerates(layout: dict) -> None:
    shards, shuffle = layout["shards"], layout["shuffle"]
    seed, epoch, world, workers = (
        layout["seed"],
        layout["epoch"],
        layout["world"],
        layout["workers"],
    )
    for slot in slots(world, workers):
        mine = worker_shards(shards, shuffle, seed, epoch, slot)
        plan = sampler_plan(shuffle, seed, epoch, slot)
        assert mine == rank_order(plan, shards)
        # rank r's order, then every workers-th of it from worker w
        rank_plan = sampler_plan(shuffle, seed, epoch, Slot(slot.rank, world))
        rank_slice = [shards[int(i)] for i in plan_indices(rank_plan, len(shards))]
        assert mine == rank_slice[slot.worker :: workers]


@settings(max_examples=300, deadline=None)
@given(layouts(), st.data())
def test_resuming_from_any_position_yields_exactly_the_rest(
    layout: dict, data: st.DataObject
) -> None:
    slot = data.draw(st.sampled_from(slots(layout["world"], layout["workers"])))
    shards = worker_shards(
        layout["shards"], layout["shuffle"], layout["seed"], layout["epoch"], slot
    )
    walk = list(
        worker_samples(
            shards, layout["rows"], layout["shuffle"], layout["seed"], Position(layout["epoch"])
        )
    )
    cut = data.draw(st.integers(0, len(walk)))
    start = walk[cut - 1][2] if cut else Position(layout["epoch"])
    rest = worker_samples(shards, layout["rows"], layout["shuffle"], layout["seed"], start)
    assert [(s, r) for s, r, _ in rest] == [(s, r) for s, r, _ in walk[cut:]]


@given(layouts())
def test_the_even_share_is_the_fewest_rows_any_slot_reads(layout: dict) -> None:
    rows = [layout["rows"][name] for name in layout["shards"]]
    totals = [
        sum(
            layout["rows"][name]
            for name in worker_shards(
                layout["shards"], layout["shuffle"], layout["seed"], layout["epoch"], slot
            )
        )
        for slot in slots(layout["world"], layout["workers"])
    ]
    for slot in slots(layout["world"], layout["workers"]):
        share = even_share(rows, layout["shuffle"], layout["seed"], layout["epoch"], slot)
        assert share == min(totals)


@given(st.integers(0, 50), st.integers(0, 2**63 - 1), st.integers(0, 100), st.booleans())
def test_row_order_is_a_permutation_fixed_by_seed_epoch_and_name(
    rows: int, seed: int, epoch: int, shuffle: bool
) -> None:
    order = row_order(rows, "a/b", shuffle, seed, epoch)
    assert sorted(order.tolist()) == list(range(rows))
    assert order.tolist() == row_order(rows, "a/b", shuffle, seed, epoch).tolist()
    if not shuffle:
        assert order.tolist() == list(range(rows))


def test_shuffled_rows_differ_by_shard_name_and_epoch() -> None:
    base = row_order(100, "a", True, 7, 0).tolist()
    assert row_order(100, "b", True, 7, 0).tolist() != base
    assert row_order(100, "a", True, 7, 1).tolist() != base
    assert row_order(100, "a", True, 8, 0).tolist() != base


def test_a_finished_shard_points_at_the_next() -> None:
    assert position_after(3, 2, 5, 5) == Position(3, 3, 0)
    assert position_after(3, 2, 4, 5) == Position(3, 2, 4)


def test_fewer_shards_than_slots_leaves_slots_empty() -> None:
    names = ["a", "b"]
    got = [worker_shards(names, True, 1, 0, slot) for slot in slots(2, 2)]
    assert sorted(name for part in got for name in part) == names
    assert sum(1 for part in got if not part) == 2


@pytest.mark.parametrize("args", [(0, 0), (2, 2, 0, 1), (0, 1, 1, 1), (0, 1, -1, 2), (-1, 1)])
def test_bad_slots_are_refused(args: tuple[int, ...]) -> None:
    with pytest.raises(InvalidArgument):
        Slot(*args)


def test_negative_positions_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        Position(0, -1, 0)


def test_a_state_whose_counts_are_not_whole_numbers_is_malformed() -> None:
    # int() read an epoch of 1.9 as epoch 1 and a seed of "0" as seed 0.
    state = ResumeState(Position(1, 2, 3), Layout(4, "digest", True, 0)).to_dict()
    for field, bad in [("epoch", 1.9), ("shard", 0.5), ("seed", "0"), ("row", -1)]:
        with pytest.raises(InvalidArgument, match="malformed"):
            ResumeState.from_dict({**state, field: bad})
    numpy_counts = {**state, "epoch": np.int64(1), "seed": np.uint64(0)}
    assert ResumeState.from_dict(numpy_counts) == ResumeState.from_dict(state)


def test_counts_may_be_numpy_integers_but_not_bools() -> None:
    assert check_int("epoch", np.int64(3), 0) == 3
    assert type(check_int("epoch", np.uint8(3), 0)) is int
    for bad in (True, np.True_, 3.0, "3", None):
        with pytest.raises(InvalidArgument, match="epoch must be an int >= 0"):
            check_int("epoch", bad, 0)
