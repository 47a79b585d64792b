"""The datasets in real DataLoaders against the real server (tests/server/conftest.py).

Workers are started by fork, forkserver and spawn; their output is checked sample by sample
against the rows written and, in order, against the round-robin interleaving of the
workers' streams that tierstore.torch.order defines. Also: a parent that read before it
forked, StatefulDataLoader and plain-DataLoader resume, MapDataset with
DistributedSampler, pin_memory, connection settings from the environment, pickling.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
import uuid
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from tests.server.conftest import ServerProcess
from tierstore.client.client import Client
from tierstore.client.forkgate import GATE
from tierstore.errors import FailedPrecondition, InvalidArgument, UnsupportedData
from tierstore.torch import IterableDataset, MapDataset
from tierstore.torch.order import Position, Slot, worker_samples, worker_shards
from tierstore.types import TracedPlan

from .conftest import Samples, loader_batches, sample_table, write_samples

pytestmark = pytest.mark.timeout(120)


def rows_of(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batches (or samples) split into one dict per row, as Python values."""
    out = []
    for item in items:
        count = len(item["id"]) if item["id"].dim() else 1
        for i in range(count):
            out.append(
                {
                    k: (v[i] if item["id"].dim() else v).tolist() if torch.is_tensor(v) else v[i]
                    for k, v in item.items()
                }
            )
    return out


def ids_of(items: Iterable[dict[str, Any]]) -> list[int]:
    return [row["id"] for row in rows_of(items)]


def check_values(rows: list[dict[str, Any]], samples: Samples) -> None:
    """Every row equals the row written, and every written row came exactly once."""
    written = {}
    for index, count in enumerate(samples.rows.values()):
        for row in sample_table(index, count).to_pylist():
            row["x"] = np.asarray(row["x"], dtype=np.float32).reshape(2, 3).tolist()
            written[row["id"]] = row
    assert sorted(row["id"] for row in rows) == sorted(written)
    for row in rows:
        assert row == written[row["id"]]


def worker_batches(
    samples: Samples, workers: int, batch: int, seed: int, epoch: int = 0
) -> list[list[list[int]]]:
    """Each worker's stream of ids, cut into batches."""
    streams = []
    for worker in range(max(workers, 1)):
        slot = Slot(0, 1, worker, max(workers, 1))
        shards = worker_shards(samples.shards, True, seed, epoch, slot)
        walk = worker_samples(shards, samples.rows, True, seed, Position(epoch))
        ids = [samples.shards.index(shard) * 1000 + row for shard, row, _ in walk]
        streams.append([ids[i : i + batch] for i in range(0, len(ids), batch)])
    return streams


def loader_order(
    samples: Samples, workers: int, batch: int, seed: int, epoch: int = 0, first: int = 0
) -> list[list[int]]:
    """The ids a DataLoader yields, batch by batch: each worker's stream cut into batches,
    taken round-robin over the workers that still have one, from worker ``first`` on."""
    streams = worker_batches(samples, workers, batch, seed, epoch)
    streams = streams[first:] + streams[:first]
    order = []
    while any(streams):
        for stream in streams:
            if stream:
                order.append(stream.pop(0))
    return order


def batch_ids(batches: Iterable[dict[str, Any]]) -> list[list[int]]:
    return [batch["id"].tolist() for batch in loader_batches(batches)]


#: The client reads hot shards in place when the server is on this host (its local path),
#: else through the service: the fork tests run both ways.
READ_PATHS = pytest.mark.parametrize(
    "local_reads", ["0", "1"], ids=["service", "local-if-any"], indirect=True
)


@pytest.fixture
def local_reads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``TIERSTORE_LOCAL_READS`` for the test (read by ``connect()`` in every process)."""
    value: str = request.param
    monkeypatch.setenv("TIERSTORE_LOCAL_READS", value)
    return value


@READ_PATHS
@pytest.mark.parametrize("context", ["fork", "forkserver"])
@pytest.mark.usefixtures("local_reads")
def test_two_workers_read_the_same_tensors_as_one_process(samples: Samples, context: str) -> None:
    dataset = IterableDataset(samples.dataset, seed=11, **samples.connection)
    alone = list(DataLoader(dataset, batch_size=8, num_workers=0))
    loader = DataLoader(dataset, batch_size=8, num_workers=2, multiprocessing_context=context)
    together = list(loader)
    check_values(rows_of(alone), samples)
    assert sorted(rows_of(together), key=lambda r: r["id"]) == sorted(
        rows_of(alone), key=lambda r: r["id"]
    )
    assert batch_ids(alone) == loader_order(samples, 0, 8, seed=11)
    assert batch_ids(together) == loader_order(samples, 2, 8, seed=11)


def test_spawned_workers_with_in_worker_batches(samples: Samples) -> None:
    dataset = IterableDataset(samples.dataset, seed=5, batch_size=8, **samples.connection)
    loader = DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    batches = list(loader)
    check_values(rows_of(batches), samples)
    # In-worker batches span shard boundaries: each worker's stream is cut the same way.
    assert batch_ids(batches) == loader_order(samples, 2, 8, seed=5)


def _read_as_rank(
    rank: int, world: int, init_file: str, connection: dict[str, str], dataset: str, out: Any
) -> None:
    """One rank of a launch that gives each rank its process group and no ``RANK`` or
    ``WORLD_SIZE`` (``mp.spawn`` with ``init_process_group(rank=...)``): it reads its
    share through one spawned worker, which has no process group of its own."""
    for name in ("RANK", "WORLD_SIZE"):
        os.environ.pop(name, None)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        data = IterableDataset(dataset, seed=3, **connection)
        loader = DataLoader(data, batch_size=None, num_workers=1, multiprocessing_context="spawn")
        out.put((rank, [int(sample["id"]) for sample in loader]))
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_with_spawned_workers_split_the_samples(samples: Samples, tmp_path: Path) -> None:
    everything = ids_of(DataLoader(IterableDataset(samples.dataset, **samples.connection)))
    queue = torch.multiprocessing.get_context("spawn").SimpleQueue()
    arguments = (2, str(tmp_path / "rendezvous"), samples.connection, samples.dataset, queue)
    torch.multiprocessing.spawn(_read_as_rank, args=arguments, nprocs=2)
    read = dict(queue.get() for _ in range(2))
    assert read[0] and read[1] and not set(read[0]) & set(read[1])
    assert sorted(read[0] + read[1]) == sorted(everything)


def test_a_given_rank_reaches_spawned_workers(
    samples: Samples, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment names another rank (a global one, under tensor parallelism): a
    # worker that did not get the given rank would read rank 5's share of 6.
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "6")
    read = []
    for rank in range(2):
        dataset = IterableDataset(
            samples.dataset, seed=4, rank=rank, world_size=2, **samples.connection
        )
        loader = DataLoader(
            dataset, batch_size=None, num_workers=1, multiprocessing_context="spawn"
        )
        shards = worker_shards(samples.shards, True, 4, 0, Slot(rank, 2))
        walk = worker_samples(shards, samples.rows, True, 4, Position(0))
        expected = [samples.shards.index(shard) * 1000 + row for shard, row, _ in walk]
        read.append(ids_of(loader))
        assert read[-1] == expected
    assert sorted(read[0] + read[1]) == sorted(
        index * 1000 + row
        for index, count in enumerate(samples.rows.values())
        for row in range(count)
    )


@READ_PATHS
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.usefixtures("local_reads")
def test_batches_from_threads_in_the_process_or_in_workers(samples: Samples, workers: int) -> None:
    dataset = IterableDataset(
        samples.dataset, seed=5, batch_size=8, batch_threads=3, **samples.connection
    )
    context = "fork" if workers else None
    loader = DataLoader(
        dataset, batch_size=None, num_workers=workers, multiprocessing_context=context
    )
    batches = list(loader)
    check_values(rows_of(batches), samples)
    assert batch_ids(batches) == loader_order(samples, workers, 8, seed=5)


@contextlib.contextmanager
def reading_meanwhile(
    samples: Samples, fresh_dataset_each_pass: bool = False
) -> Iterator[list[int]]:
    """Another thread reads the dataset over and over (read-ahead on) inside the block,
    with one dataset object or a new one each pass; yields the list it appends each
    finished pass's sample count to."""
    passes: list[int] = []
    stop = threading.Event()

    def read() -> None:
        dataset = IterableDataset(samples.dataset, read_ahead=2, **samples.connection)
        while not stop.is_set():
            passes.append(len(list(dataset)))
            if fresh_dataset_each_pass:
                dataset = IterableDataset(samples.dataset, read_ahead=2, **samples.connection)

    reader = threading.Thread(target=read, name="reading-meanwhile")
    reader.start()
    try:
        yield passes
    finally:
        stop.set()
        reader.join(timeout=60)
    assert not reader.is_alive()


@READ_PATHS
@pytest.mark.parametrize("fresh", [False, True], ids=["one-dataset", "dataset-per-pass"])
def test_a_parent_that_read_before_forking(
    samples: Samples, capfd: pytest.CaptureFixture[str], local_reads: str, fresh: bool
) -> None:
    # dataset-per-pass: the reading thread drops a dataset (its client and channel) and
    # makes a new one on every pass, so channels are made and torn down as loaders fork.
    expired = GATE.expired_holds
    with reading_meanwhile(samples, fresh_dataset_each_pass=fresh) as passes:
        fork_loaders_while_the_parent_iterates(samples, local_reads)
    assert passes and set(passes) == {samples.total}  # reads were in flight at the forks
    # No fork waited out the gate's deadline for a call that could not end before it
    # (a local read once waited for the hot-tier map's fork lock: 30 s a fork).
    assert GATE.expired_holds == expired
    # The fork gate kept every fork clear of our gRPC calls (without it, gRPC skips its fork
    # handlers and a child can hang cancelling the calls it inherited).
    assert "skipping fork() handlers" not in capfd.readouterr().err


def fork_loaders_while_the_parent_iterates(samples: Samples, local_reads: str) -> None:
    for _ in range(3):
        dataset = IterableDataset(samples.dataset, seed=2, read_ahead=2, **samples.connection)
        parent = iter(dataset)
        # The parent now has a channel, and read-ahead streams in flight as it forks.
        head = [next(parent) for _ in range(5)]
        for epoch in range(4):  # many forks, not one (DESIGN.md 5)
            dataset.set_epoch(epoch)
            loader = DataLoader(
                dataset, batch_size=16, num_workers=2, multiprocessing_context="fork", timeout=60
            )
            assert batch_ids(loader) == loader_order(samples, 2, 16, seed=2, epoch=epoch)
        rest = list(parent)  # and the parent's own iterator was not disturbed
        assert ids_of(head + rest) == [i for b in loader_order(samples, 0, 1, seed=2) for i in b]
        counts = getattr(dataset._source.client(), "read_counts", None)
        if local_reads == "0" and counts is not None:
            assert counts.local == 0  # the parent's streams really went through the service


@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_resumes_mid_epoch(samples: Samples, workers: int) -> None:
    def loader() -> StatefulDataLoader:
        dataset = IterableDataset(samples.dataset, seed=4, **samples.connection)
        dataset.set_epoch(1)
        context = "fork" if workers else None
        return StatefulDataLoader(
            dataset, batch_size=8, num_workers=workers, multiprocessing_context=context
        )

    full = batch_ids(loader())
    first = loader()
    iterator = iter(first)
    head = [next(iterator)["id"].tolist() for _ in range(7)]
    state = pickle.loads(pickle.dumps(first.state_dict()))
    del iterator
    second = loader()
    second.load_state_dict(state)
    rest = batch_ids(second)
    assert head + rest == full
    assert full == loader_order(samples, workers, 8, seed=4, epoch=1)


def test_a_plain_dataloaders_state_inside_an_epoch_its_workers_read_is_warned_of(
    samples: Samples,
) -> None:
    # A review took the dataset's state_dict() after 10 batches of a plain DataLoader with
    # workers: it said "epoch 0, shard 0, row 0", silently, and a resume from it read the
    # first rows again.
    dataset = IterableDataset(samples.dataset, seed=4, **samples.connection)
    dataset.set_epoch(3)
    loader = DataLoader(dataset, batch_size=8, num_workers=2, multiprocessing_context="fork")

    def read_a_batch_then_state() -> dict[str, Any]:
        iterator = iter(loader)
        next(iterator)
        with pytest.warns(UserWarning, match="StatefulDataLoader") as told:
            state = dataset.state_dict()
        assert f"epoch {state['epoch']}" in str(told[0].message)
        del iterator
        return state

    state = read_a_batch_then_state()
    assert (state["epoch"], state["shard"], state["row"]) == (3, 0, 0)
    loaded = dict(state, epoch=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset.load_state_dict(loaded)  # a state loaded: nothing read of it yet
        assert dataset.state_dict() == loaded
    # The state loaded, read on by the workers, is all the main process knows: said too.
    assert read_a_batch_then_state() == loaded
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset.set_epoch(5)  # the same epoch named again: a boundary, nothing is said
        assert dataset.state_dict()["epoch"] == 5
        dataset.set_epoch(4)  # an epoch boundary: the state is whole
        assert dataset.state_dict()["epoch"] == 4
        head = iter(DataLoader(dataset, batch_size=8))  # no workers: the position is here
        next(head)
        moved = dataset.state_dict()
        assert (moved["shard"], moved["row"]) != (0, 0)
        del head


def test_stateful_dataloader_resumes_after_a_shard_no_worker_is_inside_was_rewritten(
    server: ServerProcess, admin: Client
) -> None:
    # A job over a dataset being rewritten: a rewrite of any shard refused every
    # mid-epoch state (the state held a digest of every shard's generation), though only
    # the shards the workers are inside count rows of one generation.
    samples = write_samples(server, admin)

    def loader() -> StatefulDataLoader:
        dataset = IterableDataset(samples.dataset, seed=4, **samples.connection)
        dataset.set_epoch(1)
        return StatefulDataLoader(
            dataset, batch_size=8, num_workers=2, multiprocessing_context="fork", timeout=60
        )

    first = loader()
    iterator = iter(first)
    head = [next(iterator)["id"].tolist() for _ in range(3)]  # each worker inside a shard
    state = pickle.loads(pickle.dumps(first.state_dict()))
    del iterator
    last = worker_shards(samples.shards, True, 4, 1, Slot(0, 1, 0, 2))[-1]
    admin.put(samples.dataset, last, sample_table(9, 20))  # worker 0 has not reached it
    second = loader()
    second.load_state_dict(state)
    assert head + batch_ids(second) == batch_ids(loader())


@pytest.mark.parametrize("saved", ["after-the-loop", "at-the-last-batch"])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_resume_from_an_epochs_end_goes_on_with_the_epoch_set(
    samples: Samples, workers: int, saved: str
) -> None:
    # StatefulDataLoader hands the dataset its state only at the next iter(), after
    # the set_epoch() that follows load_state_dict() in a training loop: the state's
    # epoch 0 overrode it, and epoch 0 was read again, in the same order.
    # A checkpoint taken inside the loop at the epoch's last batch is a mid-epoch state
    # whose readers are all at their end. The loader hands it to the dataset's new
    # iterator too, which went on with epoch 0's end: epoch 1 yielded no batch at all.
    def loader(dataset: IterableDataset) -> StatefulDataLoader:
        context = "fork" if workers else None
        return StatefulDataLoader(
            dataset, batch_size=None, num_workers=workers, multiprocessing_context=context
        )

    def dataset() -> IterableDataset:
        # Batches made in the dataset: with the loader batching and no workers, a short
        # last batch leaves torchdata's fetcher marked as ended in the state (docs/torch.md).
        return IterableDataset(samples.dataset, seed=4, batch_size=8, **samples.connection)

    epoch_0 = loader_order(samples, workers, 8, seed=4, epoch=0)
    first, batches = loader(dataset()), []
    for batch in first:
        batches.append(batch["id"].tolist())
        if saved == "at-the-last-batch" and len(batches) == len(epoch_0):
            state = pickle.loads(pickle.dumps(first.state_dict()))
    assert batches == epoch_0
    if saved == "after-the-loop":
        state = pickle.loads(pickle.dumps(first.state_dict()))
    resumed = dataset()
    second = loader(resumed)
    second.load_state_dict(state)
    resumed.set_epoch(1)
    read = batch_ids(second)
    if saved == "after-the-loop" or workers == 0:
        assert read == loader_order(samples, workers, 8, seed=4, epoch=1)
    else:
        # torchdata restores its round-robin with the state: it starts at the worker
        # after the one that gave the checkpoint's batch, not at worker 0 (docs/torch.md).
        streams = worker_batches(samples, workers, 8, seed=4, epoch=0)
        last = next(w for w, stream in enumerate(streams) if stream[-1] == epoch_0[-1])
        first = (last + 1) % workers
        assert first != 0  # else this case would not tell the two orders apart
        assert read == loader_order(samples, workers, 8, seed=4, epoch=1, first=first)
    assert resumed.state_dict()["epoch"] == 1


@pytest.mark.parametrize("batching", ["loader", "dataset"])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_checkpoint_near_an_epochs_end_resumed_in_its_epoch_reads_as_without_it(
    samples: Samples, workers: int, batching: str
) -> None:
    # A loop that starts again from the epoch its checkpoint was taken in (the state's)
    # gets every batch once, in the order of a run without the checkpoint, from a
    # checkpoint just before the epoch's short last batch or at it: the rest of the
    # epoch (the short batch, or none), then the next epoch from its start.
    def make() -> tuple[IterableDataset, StatefulDataLoader]:
        in_dataset = {"batch_size": 8} if batching == "dataset" else {}
        dataset = IterableDataset(samples.dataset, seed=4, **in_dataset, **samples.connection)
        context = "fork" if workers else None
        loader = StatefulDataLoader(
            dataset,
            batch_size=None if batching == "dataset" else 8,
            num_workers=workers,
            multiprocessing_context=context,
        )
        return dataset, loader

    epoch_0, epoch_1 = (loader_order(samples, workers, 8, seed=4, epoch=e) for e in (0, 1))
    assert len(epoch_0[-1]) < 8 and len(epoch_0) > 2
    _, first = make()
    states = {}
    for count, batch in enumerate(first, 1):
        assert batch["id"].tolist() == epoch_0[count - 1]
        if count >= len(epoch_0) - 1:
            states[count] = pickle.loads(pickle.dumps(first.state_dict()))
    for count, state in states.items():
        dataset, second = make()
        second.load_state_dict(state)
        dataset.set_epoch(0)
        assert epoch_0[:count] + batch_ids(second) == epoch_0
        dataset.set_epoch(1)
        assert batch_ids(second) == epoch_1


def test_torchdata_ends_a_resume_at_a_short_last_batch_batched_by_the_loader_alone(
    samples: Samples,
) -> None:
    # torchdata's behaviour, pinned so that a change of it is seen (docs/torch.md,
    # Resume): without workers, a loader that batches keeps its fetcher's end mark in
    # the state when the epoch's last batch is short, and restores it; the resumed
    # iteration then asks the dataset for nothing, though the dataset discards the
    # state for the epoch set since and would read that epoch whole. With workers,
    # torchdata clears the mark on resume, and the epoch set is read.
    def make() -> tuple[IterableDataset, StatefulDataLoader]:
        dataset = IterableDataset(samples.dataset, seed=4, **samples.connection)
        return dataset, StatefulDataLoader(dataset, batch_size=8, num_workers=0)

    epoch_0 = loader_order(samples, 0, 8, seed=4, epoch=0)
    assert len(epoch_0[-1]) < 8
    _, first = make()
    for batch in first:
        if batch["id"].tolist() == epoch_0[-1]:
            state = pickle.loads(pickle.dumps(first.state_dict()))
    assert state["fetcher_state"]["fetcher_ended"] is True
    dataset, second = make()
    second.load_state_dict(state)
    dataset.set_epoch(1)
    assert batch_ids(second) == []  # torchdata's end mark: epoch 1 is not asked for
    assert batch_ids(second) == loader_order(samples, 0, 8, seed=4, epoch=1)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_rollback_to_an_earlier_epoch_resumes_its_state(samples: Samples, workers: int) -> None:
    # A job that rolls back to a checkpoint of the epoch before (a loss spike) loads it
    # into its loader and reads on, naming no epoch: the set_epoch(1) that began the
    # epoch it leaves must not discard the state, though its DataLoader workers were the
    # only ones to iterate since (the main process's dataset never does).
    dataset = IterableDataset(samples.dataset, seed=4, batch_size=8, **samples.connection)
    context = "fork" if workers else None
    loader = StatefulDataLoader(
        dataset, batch_size=None, num_workers=workers, multiprocessing_context=context
    )
    iterator = iter(loader)
    head = [next(iterator)["id"].tolist() for _ in range(3)]
    state = pickle.loads(pickle.dumps(loader.state_dict()))
    del iterator
    dataset.set_epoch(1)
    iterator = iter(loader)
    next(iterator)
    del iterator
    loader.load_state_dict(state)
    assert head + batch_ids(loader) == loader_order(samples, workers, 8, seed=4, epoch=0)


def test_plain_dataloader_resumes_from_the_dataset_state_without_workers(
    samples: Samples,
) -> None:
    def make() -> IterableDataset:
        return IterableDataset(samples.dataset, seed=8, batch_size=10, **samples.connection)

    full = batch_ids(DataLoader(make(), batch_size=None))
    dataset = make()
    iterator = iter(DataLoader(dataset, batch_size=None))
    head = [next(iterator)["id"].tolist() for _ in range(9)]
    state = dataset.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    assert head + batch_ids(DataLoader(resumed, batch_size=None)) == full


def test_map_dataset_with_distributed_sampler(samples: Samples) -> None:
    dataset = MapDataset(samples.dataset, cache_shards=2, **samples.connection)
    assert len(dataset) == samples.total
    assert dataset.rows == samples.rows
    seen: list[int] = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=3)
        loader = DataLoader(
            dataset, batch_size=16, sampler=sampler, num_workers=2, multiprocessing_context="fork"
        )
        got = ids_of(loader)
        expected = []
        for index in sampler:
            shard, row = dataset.locate(index)
            expected.append(samples.shards.index(shard) * 1000 + row)
        assert got == expected
        seen += got
    assert set(seen) == {r["id"] for r in rows_of([dataset[i] for i in range(len(dataset))])}
    check_values(rows_of([dataset[i] for i in range(len(dataset))]), samples)
    assert len(dataset._cache) <= 2  # bounded per process
    # Row counts given up front skip the counting pass and give the same dataset.
    again = MapDataset(samples.dataset, rows=dataset.rows, **samples.connection)
    assert torch.equal(again[-1]["x"], dataset[len(dataset) - 1]["x"])
    with pytest.raises(IndexError, match=f"sample {len(dataset)} of"):
        dataset[len(dataset)]
    with pytest.raises(IndexError, match=f"sample {-len(dataset) - 1} of"):  # as asked
        dataset[-len(dataset) - 1]


def test_map_dataset_refuses_a_shard_rewritten_under_it(
    server: ServerProcess, admin: Client
) -> None:
    own = write_samples(server, admin, rows=(8, 8))
    dataset = MapDataset(own.dataset, cache_shards=1, **own.connection)
    admin.put(own.dataset, "part-001", sample_table(7, 8))  # as many rows, other values
    loader = DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context="fork")
    with pytest.raises(FailedPrecondition, match=r"part-001 was rewritten .*generation"):
        ids_of(loader)
    assert int(dataset[0]["id"]) == 0  # the shard left alone still reads


def test_pin_memory(samples: Samples) -> None:
    dataset = IterableDataset(samples.dataset, batch_size=8, **samples.connection)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU-only torch warns that it cannot pin
        loader = DataLoader(
            dataset, batch_size=None, num_workers=2, pin_memory=True, multiprocessing_context="fork"
        )
        batches = list(loader)
    check_values(rows_of(batches), samples)
    if torch.cuda.is_available():
        assert all(batch["x"].is_pinned() for batch in batches)


def test_connection_from_the_environment(samples: Samples, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERSTORE_ADDRESS", samples.address)
    monkeypatch.setenv("TIERSTORE_TOKEN", samples.token)
    monkeypatch.setenv("TIERSTORE_CA", samples.ca)
    dataset = IterableDataset(samples.dataset, shards=["part-001"], shuffle=False)
    assert ids_of(dataset) == [1000 + i for i in range(57)]


def token_piped_in(samples: Samples, monkeypatch: pytest.MonkeyPatch) -> int:
    """The read end of a pipe holding the token, which TIERSTORE_TOKEN_FILE names (with
    the server's address and CA in the environment and no TIERSTORE_TOKEN)."""
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as writer:
        writer.write(samples.token + "\n")
    monkeypatch.setenv("TIERSTORE_ADDRESS", samples.address)
    monkeypatch.setenv("TIERSTORE_CA", samples.ca)
    monkeypatch.delenv("TIERSTORE_TOKEN", raising=False)
    monkeypatch.setenv("TIERSTORE_TOKEN_FILE", f"/proc/self/fd/{read_end}")
    return read_end


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_token_piped_in_reaches_every_worker(
    samples: Samples, monkeypatch: pytest.MonkeyPatch, context: str
) -> None:
    # TIERSTORE_TOKEN_FILE naming a pipe (/dev/stdin with the token piped in, or <(...)),
    # as the README offers: a pipe is read once, and every worker's connect() read it
    # again, finding it drained (forked: "token file '/dev/stdin' is empty") or gone
    # (spawned: a pipe's descriptor is not passed on).
    read_end = token_piped_in(samples, monkeypatch)
    try:
        dataset = IterableDataset(samples.dataset, shards=["part-001"], shuffle=False)
        loader = DataLoader(
            dataset, batch_size=None, num_workers=1, multiprocessing_context=context
        )
        assert ids_of(loader_batches(loader)) == [1000 + i for i in range(57)]
    finally:
        os.close(read_end)


def test_a_piped_token_stays_out_of_reprs_and_of_pickles_but_a_workers(
    samples: Samples, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The token read from a pipe was carried as functools.partial(connect, ...,
    # token=...): its repr showed the token, and a dataset pickled to a file (torch.save)
    # stored the token that was piped in precisely to keep it out of every file. Only a
    # worker being started (spawn, forkserver) gets it now; test_a_token_piped_in_reaches_
    # every_worker[spawn] reads through one.
    read_end = token_piped_in(samples, monkeypatch)
    try:
        dataset = IterableDataset(samples.dataset, shards=["part-001"], shuffle=False)
    finally:
        os.close(read_end)
    connecting = dataset._source._connect  # type: ignore[attr-defined]
    for shown in (repr(connecting), str(connecting), repr(dataset._source), repr(dataset)):
        assert samples.token not in shown
    assert samples.token.encode() not in pickle.dumps(dataset)
    # A token given in code travels as it did: the dataset's pickle carries it.
    given = IterableDataset(
        samples.dataset, shards=["part-001"], shuffle=False, **samples.connection
    )
    assert samples.token not in repr(given._source._connect)  # type: ignore[attr-defined]
    assert ids_of(pickle.loads(pickle.dumps(given))) == [1000 + i for i in range(57)]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_token_file_given_reaches_every_worker_as_its_path(
    samples: Samples, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, context: str
) -> None:
    # Datasets took token= or TIERSTORE_TOKEN_FILE only: a script handed a Secret's path
    # had to read the token into its code, and the dataset pickled it.
    monkeypatch.delenv("TIERSTORE_TOKEN", raising=False)
    monkeypatch.delenv("TIERSTORE_TOKEN_FILE", raising=False)
    token_file = tmp_path / "reader.token"
    token_file.write_text(samples.token + "\n")
    token_file.chmod(0o600)
    where = {"address": samples.address, "ca": samples.ca, "token_file": token_file}
    dataset = IterableDataset(samples.dataset, shards=["part-001"], shuffle=False, **where)
    assert samples.token.encode() not in pickle.dumps(dataset)  # its path, read again
    loader = DataLoader(dataset, batch_size=None, num_workers=1, multiprocessing_context=context)
    assert ids_of(loader_batches(loader)) == [1000 + i for i in range(57)]
    mapped = MapDataset(samples.dataset, rows=samples.rows, **where)
    assert mapped[0]["id"].item() == 0


def test_a_pipe_given_as_token_file_reaches_a_spawned_worker(
    samples: Samples, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_end = token_piped_in(samples, monkeypatch)
    monkeypatch.delenv("TIERSTORE_TOKEN_FILE")
    try:
        dataset = IterableDataset(
            samples.dataset, shards=["part-001"], shuffle=False, token_file=f"/dev/fd/{read_end}"
        )
    finally:
        os.close(read_end)
    loader = DataLoader(dataset, batch_size=None, num_workers=1, multiprocessing_context="spawn")
    assert ids_of(loader_batches(loader)) == [1000 + i for i in range(57)]
    assert samples.token.encode() not in pickle.dumps(dataset)


def test_a_token_and_a_token_file_are_refused_together(samples: Samples, tmp_path: Path) -> None:
    token_file = tmp_path / "reader.token"
    token_file.write_text(samples.token)
    with pytest.raises(InvalidArgument, match="give token= or token_file=, not both"):
        IterableDataset(samples.dataset, token_file=token_file, **samples.connection)
    with pytest.raises(InvalidArgument, match="token_file= must be a path"):
        MapDataset(samples.dataset, token_file=3, address=samples.address)  # type: ignore[arg-type]


def test_pickles_without_client_threads_or_iterator(samples: Samples) -> None:
    dataset = IterableDataset(samples.dataset, **samples.connection)
    iterator = iter(dataset)
    next(iterator)  # a live iterator with read-ahead threads and a connected client
    state = pickle.dumps(dataset)
    for needle in (b"grpc", b"ThreadPool", b"_Epoch", b"ProcessChannel"):
        assert needle not in state
    copy = pickle.loads(state)
    assert copy.state_dict()["shard"] == 0  # a copy starts afresh
    assert sorted(ids_of(copy)) == sorted(ids_of(dataset))
    mapped = pickle.loads(
        pickle.dumps(MapDataset(samples.dataset, rows=samples.rows, **samples.connection))
    )
    assert len(mapped) == samples.total and mapped[0]["id"].item() == 0


def test_the_access_plan_reaches_the_service(samples: Samples) -> None:
    answers: list[tuple[str, object, object]] = []

    def recorded(name: str) -> Any:
        original = getattr(Client, name)

        def call(self: Client, *args: Any, **kwargs: Any) -> Any:
            job = args[0] if name != "declare_plan" else None
            try:
                result = original(self, *args, **kwargs)
            except Exception as exc:
                answers.append((name, exc, job))
                raise
            answers.append((name, result, job))
            return result

        return call

    with mock.patch.multiple(
        Client,
        **{name: recorded(name) for name in ("declare_plan", "report_position", "close_plan")},
    ):
        assert len(ids_of(IterableDataset(samples.dataset, **samples.connection))) == samples.total
        named = IterableDataset(
            samples.dataset, shards=["part-003", "part-000"], **samples.connection
        )
        assert len(ids_of(named)) == 73
    # Only this test's plans (an iterator another test abandoned may be collected meanwhile).
    jobs = {result for name, result, _ in answers if name == "declare_plan"}
    answers = [a for a in answers if a[0] == "declare_plan" or a[2] in jobs]
    assert not [answer for answer in answers if isinstance(answer[1], Exception)]
    kinds = [name for name, _, _ in answers]
    # Each epoch: declared, then its position reported (paced: at least the first shard,
    # at most once per shard), then closed.
    epochs = " ".join(kinds).split("close_plan")[:-1]
    assert len(epochs) == 2 and kinds[-1] == "close_plan"
    for epoch, shards in zip(epochs, (6, 2), strict=True):
        names = epoch.split()
        assert names[0] == "declare_plan" and set(names[1:]) == {"report_position"}
        assert 1 <= len(names) - 1 <= shards
    assert isinstance(answers[0][1], str) and answers[0][1]  # the server's job id


def test_the_declared_plan_is_what_each_reader_reads_after_the_prefix_gains_a_shard(
    server: ServerProcess, admin: Client
) -> None:
    # The server regenerated a reader's sampler plan over the prefix's shards as they
    # were at the declaration, while the reader reads those listed when its dataset
    # object was made: with part-100 added between, the server prepared a shard never
    # read, and every position reported after it was off by one.
    rows = (5, 7, 3, 6, 4, 2, 8)
    fresh = write_samples(server, admin, rows)
    made = IterableDataset(fresh.dataset, prefix="part-", seed=3, **fresh.connection)
    made.set_epoch(2)
    admin.put(fresh.dataset, "part-100", sample_table(100, 4))
    after = IterableDataset(fresh.dataset, prefix="part-", seed=3, **fresh.connection)
    after.set_epoch(2)  # made over the shards as they are: its sampler plan is taken
    declarations: list[dict[str, Any]] = []
    original = Client.declare_plan

    def declare(self: Client, dataset: str, **kwargs: Any) -> str:
        declarations.append(kwargs)
        return original(self, dataset, **kwargs)

    with mock.patch.object(Client, "declare_plan", declare):
        listed = sorted(
            1000 * shard + row for shard, count in enumerate(rows) for row in range(count)
        )
        assert sorted(ids_of(made)) == listed
        assert len(ids_of(after)) == len(listed) + 4
        made.set_epoch(3)
        loader = DataLoader(made, batch_size=None, num_workers=2, multiprocessing_context="fork")
        assert sorted(ids_of(loader)) == listed
    # In the main process: the sampler plan first, then (refused) the explicit list.
    kinds = [("sampler" if k.get("sampler") else "shards") for k in declarations]
    assert kinds == ["sampler", "shards", "sampler"]
    plans = [e.shards for e in admin.export_trace(fresh.dataset) if isinstance(e, TracedPlan)]
    names = made.shards.names
    assert "part-100" not in names and "part-100" in after.shards.names
    assert plans[:2] == [
        tuple(worker_shards(names, True, 3, 2, Slot())),
        tuple(worker_shards(after.shards.names, True, 3, 2, Slot())),
    ]
    # Each DataLoader worker declared the shards it reads, in its order.
    assert sorted(plans[2:]) == sorted(
        tuple(worker_shards(names, True, 3, 3, Slot(worker=w, workers=2))) for w in range(2)
    )


@pytest.mark.parametrize("context", ["fork", "forkserver", "spawn"])
def test_persistent_workers_read_each_epoch_set_in_the_main_process(
    samples: Samples, context: str
) -> None:
    # Persistent workers kept the dataset copy they were made with: every epoch was
    # epoch 0's order again, whatever set_epoch() said in the main process.
    dataset = IterableDataset(samples.dataset, seed=3, **samples.connection)
    loader = DataLoader(
        dataset,
        batch_size=16,
        num_workers=2,
        multiprocessing_context=context,
        persistent_workers=True,
        timeout=60,
    )
    orders = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        orders.append(batch_ids(loader))
        assert orders[-1] == loader_order(samples, 2, 16, seed=3, epoch=epoch)
    assert orders[0] != orders[1] != orders[2]


def test_workers_made_afresh_warn_that_an_epoch_is_read_again(samples: Samples) -> None:
    # Workers made afresh each epoch (the default) are new copies of the main process's
    # dataset, which finished no epoch: a loop without set_epoch() read epoch 0's order
    # every epoch, silently. The warning is made an error here, so that it reaches the
    # main process from the worker that warns.
    dataset = IterableDataset(samples.dataset, seed=3, **samples.connection)
    loader = DataLoader(
        dataset, batch_size=16, num_workers=2, multiprocessing_context="fork", timeout=60
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "epoch .* is read again", UserWarning)
        first = batch_ids(loader)  # a first read of the epoch: no warning
        with pytest.raises(UserWarning, match="epoch 0 is read again"):
            batch_ids(loader)
        dataset.set_epoch(1)
        assert batch_ids(loader) != first  # a new epoch: no warning either


@pytest.mark.parametrize("again", ["no-set-epoch", "the-same-epoch-set"])
def test_a_loader_seeded_alike_each_epoch_is_warned_that_an_epoch_is_read_again(
    samples: Samples, again: str
) -> None:
    # Workers are told one iteration of the loader from another by the base seed the
    # loader draws for them; seeded alike before each epoch (torch.manual_seed(s), or the
    # same seeded generator), the loader drew the same one, every iteration looked like
    # the first, and an epoch read again in the same order was not warned of.
    dataset = IterableDataset(samples.dataset, seed=3, **samples.connection)
    loader = DataLoader(
        dataset, batch_size=16, num_workers=2, multiprocessing_context="fork", timeout=60
    )

    def epoch() -> list[list[int]]:
        torch.manual_seed(5)
        if again == "the-same-epoch-set":
            dataset.set_epoch(0)
        return batch_ids(loader)

    with warnings.catch_warnings():
        warnings.filterwarnings("error", "epoch .* is read again", UserWarning)
        first = epoch()  # a first read of the epoch: no warning
        with pytest.raises(UserWarning, match="epoch 0 is read again"):
            epoch()
        torch.manual_seed(5)
        dataset.set_epoch(1)
        assert batch_ids(loader) != first  # a new epoch: no warning either


def test_a_plain_pickle_of_a_dataset_carries_its_epoch_as_a_number(samples: Samples) -> None:
    dataset = IterableDataset(samples.dataset, seed=3, **samples.connection)
    dataset.set_epoch(7)
    copy = pickle.loads(pickle.dumps(dataset))  # no process started: no shared memory
    assert copy.state_dict()["epoch"] == 7
    copy.set_epoch(8)
    assert dataset.state_dict()["epoch"] == 7  # its own number from then on


def row_bytes(rows: Iterable[torch.Tensor]) -> list[bytes]:
    """Each row's exact bytes (NaN-proof, for dtypes numpy lacks too)."""
    return [bytes(row.contiguous().view(torch.uint8).flatten().tolist()) for row in rows]


@pytest.mark.parametrize(
    "dtype",
    [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2, torch.bool, torch.uint16],
    ids=str,
)
def test_tensor_shards_of_every_dtype_read_tensor_gives_back(
    server: ServerProcess, admin: Client, dtype: torch.dtype
) -> None:
    # bfloat16 and float8 raised TypeError (numpy has no such dtype) in both datasets, in
    # the conversion every shard goes through, while Client.read_tensor read them fine.
    dataset = f"torch-dtypes-{uuid.uuid4().hex[:12]}"
    admin.create_dataset(dataset, encrypted=False)
    admin.frame_bytes = 2048  # several record batches a shard: the multi-frame gathers run
    generator = torch.Generator().manual_seed(7)
    for index, rows in enumerate((37, 52)):
        values = torch.randn(rows, 4, 8, generator=generator) * 4
        admin.put(dataset, f"t-{index}", values > 0 if dtype == torch.bool else values.to(dtype))
    written = [admin.read_tensor(dataset, f"t-{index}") for index in range(2)]
    assert all(tensor.dtype == dtype for tensor in written)
    every_row = row_bytes(torch.cat(written))
    connection = {"address": server.address, "token": server.token, "ca": str(server.ca_path)}

    by_index = MapDataset(dataset, **connection)
    samples = [by_index[i]["tensor"] for i in range(len(by_index))]
    assert {sample.dtype for sample in samples} == {dtype}
    assert row_bytes(samples) == every_row

    in_order = IterableDataset(dataset, shuffle=False, **connection)
    samples = [sample["tensor"] for sample in DataLoader(in_order, batch_size=None)]
    assert {sample.dtype for sample in samples} == {dtype}
    assert row_bytes(samples) == every_row

    # Batches gathered in the process and, in workers, into shared memory; and the
    # DataLoader's own batches of single samples.
    batched = IterableDataset(dataset, batch_size=10, seed=1, **connection)
    for loader in (
        DataLoader(batched, batch_size=None),
        DataLoader(batched, batch_size=None, num_workers=2, multiprocessing_context="fork"),
        DataLoader(
            IterableDataset(dataset, seed=2, **connection),
            batch_size=10,
            num_workers=2,
            multiprocessing_context="fork",
        ),
    ):
        batches = [batch["tensor"] for batch in loader]
        assert {batch.dtype for batch in batches} == {dtype}
        assert {batch.shape[1:] for batch in batches} == {torch.Size([4, 8])}
        got = row_bytes(row for batch in batches for row in batch)
        assert sorted(got) == sorted(every_row)


def test_a_vector_shard_gives_scalar_samples_and_a_tensor_of_too_wide_rows_is_refused(
    server: ServerProcess, admin: Client
) -> None:
    # A label vector batched to (B, 1); a (3, 600) tensor whose rows were too wide to
    # store one per row was read as 1,800 samples of one number each, silently.
    dataset = f"torch-vectors-{uuid.uuid4().hex[:12]}"
    admin.create_dataset(dataset, encrypted=False)
    admin.frame_bytes = 4096  # rows over 1 KiB are stored one element per row
    labels = np.arange(10, dtype=np.int64) * 3
    admin.put(dataset, "labels", labels)
    connection = {"address": server.address, "token": server.token, "ca": str(server.ca_path)}

    by_index = MapDataset(dataset, **connection)
    assert len(by_index) == 10
    assert [by_index[i]["tensor"].shape for i in (0, 9)] == [torch.Size([]), torch.Size([])]
    assert [int(by_index[i]["tensor"]) for i in range(10)] == labels.tolist()
    batches = list(
        DataLoader(
            IterableDataset(dataset, shuffle=False, batch_size=4, **connection), batch_size=None
        )
    )
    assert [batch["tensor"].shape for batch in batches] == [
        torch.Size([4]),
        torch.Size([4]),
        torch.Size([2]),
    ]
    assert torch.cat([batch["tensor"] for batch in batches]).tolist() == labels.tolist()

    admin.put(dataset, "wide", np.ones((3, 600), dtype=np.float32))
    assert admin.read_tensor(dataset, "wide").shape == (3, 600)  # whole, it reads fine
    for make in (MapDataset, IterableDataset):
        with pytest.raises(UnsupportedData, match=r"'wide' is a tensor of shape \[3, 600\]"):
            make(dataset, shards=["wide"], **connection)
    # Beside a vector (the same Arrow type, one number a row), it is refused too.
    with pytest.raises(UnsupportedData, match="'wide'"):
        MapDataset(dataset, **connection)
