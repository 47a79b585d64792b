"""``even_ranks``: every rank yields the same number of samples and batches in an epoch.

Shards are split between readers (rank x worker) whole, so without it ranks of uneven
shards run different numbers of steps, and a DDP rank that runs out first leaves the
others waiting in a collective. Checked with real DataLoader workers and ranks named by
``RANK``/``WORLD_SIZE``, against the row counts written.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from tests.server.conftest import ServerProcess
from tierstore.client.client import Client
from tierstore.errors import InvalidArgument
from tierstore.torch import IterableDataset
from tierstore.torch.order import Slot, even_share, worker_shards

from .conftest import Samples, write_samples

pytestmark = pytest.mark.timeout(120)

#: Uneven shards, none empty: 4 readers (2 ranks x 2 workers) get different row totals.
ROWS = (40, 57, 12, 33, 61, 48, 5)
WORLD, WORKERS, SEED, EPOCH = 2, 2, 3, 1


@pytest.fixture(scope="module")
def uneven(server: ServerProcess, admin: Client) -> Samples:
    return write_samples(server, admin, rows=ROWS)


def reader_rows(samples: Samples, slot: Slot) -> int:
    shards = worker_shards(samples.shards, True, SEED, EPOCH, slot)
    return sum(samples.rows[name] for name in shards)


def rank_items(
    samples: Samples, monkeypatch: pytest.MonkeyPatch, rank: int, batch_size: int | None
) -> list[dict[str, torch.Tensor]]:
    """What rank ``rank`` of ``WORLD`` reads in ``EPOCH``, from ``WORKERS`` forked workers:
    batches of 4 made by the DataLoader, or in-worker batches of ``batch_size``."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(WORLD))
    dataset = IterableDataset(
        samples.dataset,
        seed=SEED,
        batch_size=batch_size,
        drop_last=batch_size is not None,
        even_ranks=True,
        num_workers=WORKERS,
        **samples.connection,
    )
    dataset.set_epoch(EPOCH)
    loader = DataLoader(
        dataset,
        batch_size=None if batch_size else 4,
        num_workers=WORKERS,
        multiprocessing_context="fork",
    )
    items = list(loader)
    if batch_size:  # the loader's len() is the dataset's: exact for in-worker batches
        assert len(loader) == len(items)
    else:
        assert len(dataset) == sum(len(item["id"]) for item in items)
    return items


@pytest.mark.parametrize("batch_size", [None, 8])
def test_every_rank_runs_the_same_number_of_batches(
    uneven: Samples, monkeypatch: pytest.MonkeyPatch, batch_size: int | None
) -> None:
    readers = [Slot(r, WORLD, w, WORKERS) for r in range(WORLD) for w in range(WORKERS)]
    totals = [reader_rows(uneven, slot) for slot in readers]
    assert len(set(totals)) > 1  # without even_ranks the readers' shares differ
    share = even_share(ROWS, True, SEED, EPOCH, readers[0])
    assert share == min(totals) > 0

    per_rank = [rank_items(uneven, monkeypatch, rank, batch_size) for rank in range(WORLD)]
    assert len({len(items) for items in per_rank}) == 1, [len(items) for items in per_rank]
    ids = [int(i) for items in per_rank for item in items for i in item["id"].reshape(-1)]
    assert len(ids) == len(set(ids))  # nothing twice
    if batch_size is None:
        assert len(ids) == share * WORLD * WORKERS  # each reader yields exactly its share
    else:
        assert len(ids) == (share // batch_size) * batch_size * WORLD * WORKERS
    written = {shard * 1000 + row for shard, count in enumerate(ROWS) for row in range(count)}
    assert set(ids) <= written


def test_a_resumed_reader_still_stops_at_its_share(uneven: Samples) -> None:
    def dataset() -> IterableDataset:
        made = IterableDataset(uneven.dataset, seed=SEED, even_ranks=True, **uneven.connection)
        made.set_epoch(EPOCH)
        return made

    whole = [int(sample["id"]) for sample in dataset()]
    assert len(whole) == sum(ROWS)  # one reader: its share is everything
    first = dataset()
    iterator = iter(first)
    head = [int(next(iterator)["id"]) for _ in range(100)]  # into the third shard or so
    state = first.state_dict()
    resumed = dataset()
    resumed.load_state_dict(state)
    assert head + [int(sample["id"]) for sample in resumed] == whole


def test_a_reader_without_rows_is_refused_with_even_ranks(
    samples: Samples, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The session dataset has an empty shard: with one reader per shard, one gets no rows
    # and the share of every reader would be zero.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(len(samples.shards)))
    dataset = IterableDataset(samples.dataset, even_ranks=True, **samples.connection)
    with pytest.raises(InvalidArgument, match="some reader gets no rows"):
        list(dataset)


def test_empty_shards_are_left_out_of_the_partition(
    server: ServerProcess, admin: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two non-empty shards for two readers: whole shards go to readers, so in some
    # epochs the shuffle handed one reader the empty shard alone, and that epoch (the
    # sixth, here) refused to start mid-training though the first five ran.
    empty_between = write_samples(server, admin, rows=(10, 0, 10))
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        dataset = IterableDataset(
            empty_between.dataset,
            seed=SEED,
            even_ranks=True,
            num_workers=0,
            **empty_between.connection,
        )
        assert dataset.shards.names == ("part-000", "part-002")
        for epoch in range(8):
            dataset.set_epoch(epoch)
            assert len(dataset) == 10
            assert len([sample["id"] for sample in dataset]) == 10, (rank, epoch)


def test_row_counts_come_from_the_frame_headers(uneven: Samples) -> None:
    dataset = IterableDataset(uneven.dataset, even_ranks=True, **uneven.connection)
    assert dataset.shards.rows == ROWS
    assert IterableDataset(uneven.dataset, **uneven.connection).shards.rows is None
