"""IterableDataset over an in-memory service (tests/torch/memory.py): iteration, batching,
resume, epochs, access plans and bad input, without a server. The DataLoader tests against
the real server are in test_dataloader.py."""

from __future__ import annotations

import gc
import logging
import pickle
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any
from unittest import mock

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from tierstore.errors import (
    DatasetNotFound,
    InvalidArgument,
    PermissionDenied,
    PlanShardsChanged,
    ShardNotFound,
    Unavailable,
    UnsupportedData,
    WrongShardKind,
)
from tierstore.plans import rank_order, shard_list_digest
from tierstore.tensors import tensor_to_table
from tierstore.torch import IterableDataset, MapDataset
from tierstore.torch import iterable as iterable_module
from tierstore.torch.order import Position, Slot, worker_samples, worker_shards

from .memory import MemoryService, MemorySource, sample_table

ROWS = {"a/0": 5, "a/1": 0, "a/2": 7, "b/0": 3, "b/1": 6}


def service(rows: dict[str, int] = ROWS) -> MemoryService:
    return MemoryService(
        "ds", {name: sample_table(i, n) for i, (name, n) in enumerate(rows.items())}
    )


def make(svc: MemoryService | None = None, **kwargs: Any) -> IterableDataset:
    return IterableDataset("ds", source=MemorySource(svc or service()), **kwargs)


def ids(items: list[dict[str, Any]]) -> list[int]:
    return [int(i) for item in items for i in torch.atleast_1d(item["id"]).tolist()]


def expected_ids(svc: MemoryService, ds: IterableDataset, slot: Slot, epoch: int = 0) -> list[int]:
    shards = worker_shards(ds.shards.names, ds.shuffle, ds.seed, epoch, slot)
    rows = {
        info.name: info.frame_count and svc.read_table("ds", info.name).num_rows
        for info in svc.list("ds")
    }
    walk = worker_samples(shards, rows, ds.shuffle, ds.seed, Position(epoch))
    base = {name: i for i, name in enumerate(ROWS)}
    return [base[shard] * 1_000_000 + row for shard, row, _ in walk]


def read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tierstore-read-ahead")]


def await_read_ahead_gone(before: set[threading.Thread]) -> None:
    """Wait until the read-ahead threads started since ``before`` are gone: a thread goes
    once the fetch it is running ends (on a loaded machine, one took over 10 s)."""
    deadline = time.monotonic() + 60
    while set(read_ahead_threads()) - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not set(read_ahead_threads()) - before


@pytest.fixture
def in_slot() -> Iterator[Any]:
    """in_slot(Slot(...)): iterate as that rank and worker."""
    with mock.patch("tierstore.torch.iterable.current_slot", return_value=Slot()) as patched:
        yield lambda slot: setattr(patched, "return_value", slot)


def test_samples_are_tensors_in_the_epoch_order() -> None:
    svc = service()
    ds = make(svc, seed=3)
    got = list(ds)
    assert ids(got) == expected_ids(svc, ds, Slot())
    first = got[0]
    assert set(first) == {"id", "x"}
    assert first["id"].dtype == torch.int64 and first["id"].shape == ()
    assert first["x"].dtype == torch.float32 and first["x"].shape == (3,)
    assert torch.equal(first["x"], first["id"].float().expand(3))


def test_columns_select_and_order() -> None:
    sample = next(iter(make(columns=["x"])))
    assert list(sample) == ["x"]
    with pytest.raises(InvalidArgument, match=r"unknown column\(s\) \['nope'\].*\['id', 'x'\]"):
        make(columns=["x", "nope"])


@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_span_shards_and_hold_every_row_once(drop_last: bool) -> None:
    svc = service()
    ds = make(svc, batch_size=4, shuffle=False, drop_last=drop_last)
    batches = list(ds)
    total = sum(ROWS.values())  # 21: five full batches and one of 1
    assert [len(b["id"]) for b in batches] == [4] * 5 + ([] if drop_last else [1])
    assert ids(batches) == expected_ids(svc, ds, Slot())[: 20 if drop_last else total]
    assert batches[0]["x"].shape == (4, 3)


def test_unshuffled_batches_inside_one_record_batch_are_views() -> None:
    svc = MemoryService("ds", {"s": sample_table(0, 64)}, frame_bytes=1 << 20)
    first = next(iter(make(svc, batch_size=8, shuffle=False)))
    second = make(svc, batch_size=8, shuffle=False)
    again = next(iter(second))
    assert torch.equal(first["id"], again["id"])
    # A view into the shard's buffer: its storage is the whole column, not 8 rows.
    assert first["id"].untyped_storage().nbytes() == 64 * 8


def items_per_reader(ds: IterableDataset, rank: int, world: int, workers: int) -> list[int]:
    """What each worker of ``rank`` yields in the current epoch, read as that worker."""
    counts = []
    for worker in range(workers):
        slot = Slot(rank, world, worker, workers)
        with mock.patch("tierstore.torch.iterable.current_slot", return_value=slot):
            counts.append(len(list(ds)))
    return counts


@settings(max_examples=80, deadline=None)
@given(
    batch_size=st.one_of(st.none(), st.integers(1, 9)),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
    even_ranks=st.booleans(),
    epoch=st.integers(0, 4),
    world=st.integers(1, 3),
    num_workers=st.integers(0, 3),
    data=st.data(),
)
def test_len_is_what_the_rank_yields_with_that_many_workers(
    batch_size: int | None,
    drop_last: bool,
    shuffle: bool,
    even_ranks: bool,
    epoch: int,
    world: int,
    num_workers: int,
    data: st.DataObject,
) -> None:
    rank = data.draw(st.integers(0, world - 1))
    ds = make(
        batch_size=batch_size,
        drop_last=drop_last,
        shuffle=shuffle,
        even_ranks=even_ranks,
        rank=rank,
        world_size=world,
        num_workers=num_workers,
    )
    ds.set_epoch(epoch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # idle readers: fewer shards than slots
        try:
            yielded = sum(items_per_reader(ds, rank, world, max(1, num_workers)))
        except InvalidArgument as exc:  # even_ranks with a reader of no rows
            with pytest.raises(InvalidArgument, match="some reader gets no rows"):
                len(ds)
            assert "some reader gets no rows" in str(exc)
            return
    assert len(ds) == ds.epoch_length(num_workers) == ds.epoch_length(num_workers, epoch)
    assert len(ds) == yielded


def test_len_of_a_batching_dataset_needs_the_worker_count() -> None:
    ds = make(batch_size=4)
    with pytest.raises(TypeError, match=r"worker count.*pass num_workers="):
        len(ds)
    with pytest.raises(TypeError, match="num_workers="):
        len(make(even_ranks=True))
    assert len(make()) == sum(ROWS.values())  # samples: the same whatever the workers
    assert ds.epoch_length(2) >= ds.epoch_length(0) == 6  # 21 rows in batches of 4
    with pytest.raises(InvalidArgument, match="num_workers must be"):
        ds.epoch_length(-1)


def test_len_counts_shards_written_before_rows_were_recorded_once() -> None:
    tables = {name: sample_table(i, n) for i, (name, n) in enumerate(ROWS.items())}
    svc = MemoryService("ds", tables, record_rows=False)
    ds = make(svc)
    before = len(svc.gets)
    assert len(ds) == sum(ROWS.values())
    counted = len(svc.gets)
    # One small read per record-batch frame (the first frame is the schema), no more:
    # schemas were checked when the object was made.
    assert counted - before == sum(info.frame_count - 1 for info in svc.list("ds")) > 0
    assert len(ds) == sum(ROWS.values())
    assert len(svc.gets) == counted  # and only once


@pytest.mark.timeout(120)
def test_a_dataloader_with_workers_has_the_length_it_yields() -> None:
    svc = service({"a/0": 3, "a/1": 3})
    ds = make(svc, batch_size=2, num_workers=2, seed=5)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when more is fetched than len() said
        batches = list(loader)
    assert len(loader) == len(batches) == ds.epoch_length(2)
    # Two workers each end on a short batch: one worker makes one batch fewer.
    assert (len(batches), ds.epoch_length(0)) == (4, 3)


def test_a_worker_count_other_than_the_loaders_is_warned_of() -> None:
    ds = make(batch_size=2, num_workers=2)
    # Without workers it said "read by 1 worker(s)", of a loader made with num_workers=0.
    with pytest.warns(UserWarning, match=r"num_workers=2, but is read without") as caught:
        list(DataLoader(ds, batch_size=None, num_workers=0))
    message = str(caught[0].message)
    assert "DataLoader workers (num_workers=0)" in message and "1 worker" not in message
    # Samples: len() is the same whatever the worker count, so nothing to warn of.
    samples = make(num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(DataLoader(samples, batch_size=None, num_workers=0))) == len(samples)


def test_a_dataset_is_true_even_when_its_length_is_unknown_or_zero() -> None:
    # `if dataset:` called len(): a TypeError for a batching dataset without num_workers,
    # and False for a rank with no shard this epoch.
    assert make(batch_size=4)
    idle = make(shards=["a/0"], rank=1, world_size=2)
    assert len(idle) == 0
    assert idle


@settings(max_examples=60, deadline=None)
@given(
    batch_size=st.one_of(st.none(), st.integers(1, 6)),
    read_ahead=st.integers(0, 2),
    batch_threads=st.integers(0, 3),
    shuffle=st.booleans(),
    seed=st.integers(0, 1000),
    epoch=st.integers(0, 5),
    world=st.integers(1, 3),
    workers=st.integers(1, 3),
    data=st.data(),
)
def test_resume_from_any_state_yields_exactly_the_rest(
    batch_size: int | None,
    read_ahead: int,
    batch_threads: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    world: int,
    workers: int,
    data: st.DataObject,
) -> None:
    slot = data.draw(
        st.sampled_from([Slot(r, world, w, workers) for r in range(world) for w in range(workers)])
    )
    svc = service()
    options = {"batch_size": batch_size, "read_ahead": read_ahead, "shuffle": shuffle, "seed": seed}
    if batch_size is not None:
        options["batch_threads"] = batch_threads
    with (
        mock.patch("tierstore.torch.iterable.current_slot", return_value=slot),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # more slots than shards, on purpose
        whole = make(svc, **options)
        whole.set_epoch(epoch)
        everything = list(whole)
        first = make(svc, **options)
        first.set_epoch(epoch)
        iterator = iter(first)
        cut = data.draw(st.integers(0, len(everything)))
        head = [next(iterator) for _ in range(cut)]
        state = first.state_dict()
        assert state == iterator.state_dict()
        resumed = make(svc, **options)
        resumed.load_state_dict(pickle.loads(pickle.dumps(state)))
        tail = list(resumed)
    assert ids(head) + ids(tail) == ids(everything)
    assert sorted(ids(everything)) == sorted(expected_ids(svc, whole, slot, epoch))


def test_a_given_rank_reads_that_ranks_share(monkeypatch: pytest.MonkeyPatch) -> None:
    # The process says rank 3 of 8 (its global rank); the data-parallel rank is given.
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    svc = service()
    shares = [ids(list(make(svc, seed=2, rank=r, world_size=2))) for r in range(2)]
    whole = make(svc, seed=2)
    assert shares[0] == expected_ids(svc, whole, Slot(0, 2))
    assert shares[1] == expected_ids(svc, whole, Slot(1, 2))
    assert sorted(shares[0] + shares[1]) == sorted(expected_ids(svc, whole, Slot()))
    # Peers given the same rank (tensor-parallel partners) read the same samples.
    assert ids(list(make(svc, seed=2, rank=1, world_size=2))) == shares[1]
    with pytest.raises(InvalidArgument, match="together"):
        make(svc, rank=1)


def test_a_state_of_another_layout_is_refused(in_slot: Any) -> None:
    ds = make()
    iterator = iter(ds)
    next(iterator)
    state = ds.state_dict()
    other = make()
    in_slot(Slot(0, 1, 1, 2))
    other.load_state_dict(state)
    with pytest.raises(InvalidArgument, match=r"worker 0 of 1.*worker 1 of 2.*num_workers"):
        iter(other)
    with pytest.raises(InvalidArgument, match="shuffle/seed differ"):
        in_slot(Slot())
        reseeded = make(seed=5)
        reseeded.load_state_dict(state)
        iter(reseeded)
    with pytest.raises(InvalidArgument, match=r"not a tierstore.torch"):
        ds.load_state_dict({"epoch": 1})


def test_a_state_saved_before_states_named_their_shards_generation() -> None:
    ds = make(shuffle=False)
    iterator = iter(ds)
    next(iterator)
    state = ds.state_dict()
    # Saved before states carried the generation of the shard they are inside: checked
    # against every shard's generation as listed when the dataset object was made.
    older = {key: value for key, value in state.items() if key != "generation"}
    rewritten = service()
    rewritten.generations["b/1"] = 2  # a shard the state has not reached yet
    again = make(rewritten, shuffle=False)
    again.load_state_dict(older)
    with pytest.raises(InvalidArgument, match="a shard was rewritten since"):
        iter(again)
    unchanged = make(shuffle=False)
    unchanged.load_state_dict(older)
    assert len(ids(list(unchanged))) == sum(ROWS.values()) - 1
    # Saved before states carried the generations at all: resumed unchecked.
    oldest = {key: value for key, value in older.items() if key != "contents"}
    again.load_state_dict(oldest)
    assert len(ids(list(again))) == sum(ROWS.values()) - 1


def test_a_state_resumes_after_a_shard_it_is_not_inside_was_rewritten() -> None:
    # Only the shard a position is inside counts rows of one generation: the shards before
    # it are done, the ones after it are read whole, at their generation then (as without
    # the resume). A rewrite of any shard of the dataset refused every mid-epoch state, so
    # a long job over a dataset being rewritten could never resume mid-epoch.
    ds = make(shuffle=False)
    iterator = iter(ds)
    head = [next(iterator) for _ in range(2)]  # inside a/0, the first shard
    state = ds.state_dict()
    rewritten = service()
    rewritten.rewrite("b/1", sample_table(4, 9))  # a shard the state has not reached yet
    again = make(rewritten, shuffle=False)
    again.load_state_dict(state)
    assert ids(head) + ids(list(again)) == ids(list(make(rewritten, shuffle=False)))


@pytest.mark.parametrize(
    "options",
    [{}, {"batch_size": 2}, {"batch_size": 2, "batch_threads": 2}],
    ids=["samples", "batches", "batches-from-threads"],
)
@pytest.mark.parametrize("same_object", [False, True], ids=["new-object", "same-object"])
def test_a_state_inside_a_shard_rewritten_since_is_refused(
    same_object: bool, options: dict[str, int]
) -> None:
    svc = service()
    ds = make(svc, shuffle=False, **options)
    iterator = iter(ds)
    for _ in range(2):  # inside a/0 (2 or 4 of its 5 rows)
        next(iterator)
    state = ds.state_dict()
    assert state["row"] in (2, 4) and state["generation"] == 1
    svc.rewrite("a/0", sample_table(0, 5))  # as many rows, but not the same ones
    # A dataset object made before the rewrite listed a/0's old generation, and resumed
    # the new one's rows from the old position.
    resumed = ds if same_object else make(svc, shuffle=False, **options)
    resumed.load_state_dict(state)
    with pytest.raises(InvalidArgument, match=r"'a/0' was rewritten since.*generation 1.*2"):
        list(resumed)
    assert make(svc, shuffle=False).state_dict()["epoch"] == 0  # a new epoch still reads


def test_an_epoch_start_state_fits_any_layout(in_slot: Any) -> None:
    state = make().state_dict()
    in_slot(Slot(0, 1, 1, 2))
    other = make()
    other.load_state_dict(state)
    assert list(other)  # worker 1 of 2 reads its share


def test_epochs_change_the_order_and_repeat_with_the_same_epoch() -> None:
    ds = make(seed=1)
    first = ids(list(ds))
    ds.set_epoch(1)
    second = ids(list(ds))
    assert sorted(first) == sorted(second) and first != second
    ds.set_epoch(0)
    with pytest.warns(UserWarning, match="epoch 0 is read again"):
        assert ids(list(ds)) == first


def test_fewer_shards_than_slots_warns_and_idle_slots_yield_nothing(in_slot: Any) -> None:
    svc = service({"only": 4})
    in_slot(Slot(0, 2, 1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its rank's first worker says it for all
        got = list(make(svc))
    in_slot(Slot(0, 2, 0, 2))
    with pytest.warns(UserWarning, match=r"1 shard\(s\) for 2 rank\(s\) x 2 worker\(s\) = 4"):
        assert len(list(make(svc))) == 4
    assert got == []


# Access plans.


def test_a_prefix_declares_the_sampler_and_reports_shards_as_finished(in_slot: Any) -> None:
    svc = service()
    in_slot(Slot(1, 2, 0, 1))
    ds = make(svc, prefix="a/", seed=9)
    ds.set_epoch(2)
    list(ds)
    (kind, declared), *rest = svc.calls
    assert kind == "declare" and declared["prefix"] == "a/" and declared["shards"] is None
    plan = declared["sampler"]
    assert (plan.seed, plan.epoch, plan.rank, plan.world_size) == (9, 2, 1, 2)
    mine = worker_shards(ds.shards.names, True, 9, 2, Slot(1, 2))
    assert rest == [("report", ("job-1", i + 1)) for i in range(len(mine))] + [("close", "job-1")]


@pytest.mark.parametrize("worker", [0, 1])
def test_even_ranks_without_the_empty_shards_declares_the_order_it_reads(
    in_slot: Any, worker: int
) -> None:
    # even_ranks leaves the empty shard a/1 out of the partition, but declared the sampler
    # over the prefix: the server regenerated its order over every listed shard, a/1
    # included, and prefetched and counted positions in another order than the reads.
    svc = service()
    in_slot(Slot(0, 1, worker, 2))
    ds = make(svc, even_ranks=True, seed=4, read_ahead=0)
    assert "a/1" not in ds.shards.names
    for epoch in range(4):
        svc.calls.clear()
        ds.set_epoch(epoch)
        list(ds)
        (kind, declared), *_ = svc.calls
        assert kind == "declare"
        if declared["sampler"] is None:
            planned = declared["shards"]
        else:  # what the server regenerates from the sampler over the prefix's listing
            listed = [info.name for info in svc.list("ds", declared["prefix"])]
            planned = rank_order(declared["sampler"], listed)
        assert planned == worker_shards(ds.shards.names, True, 4, epoch, Slot(0, 1, worker, 2))


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("batch_size", [None, 4])
def test_even_ranks_reads_no_shard_beyond_the_share(
    in_slot: Any, depth: int, batch_size: int | None
) -> None:
    # Rank 1 reads s1 (30 rows), s3 and s5, but its share is rank 0's 22 rows, all in
    # s1: the read-ahead fetched s3 and s5 whole, and they were dropped unread.
    svc = service({"s0": 2, "s1": 30, "s2": 10, "s3": 10, "s4": 10, "s5": 10})
    in_slot(Slot(1, 2))
    before = set(read_ahead_threads())
    ds = make(svc, even_ranks=True, shuffle=False, read_ahead=depth, batch_size=batch_size)
    assert len(ids(list(ds))) == 22
    await_read_ahead_gone(before)
    assert svc.reads == ["s1"]
    # A reader resumed past its share reads nothing more.
    resumed = make(svc, even_ranks=True, shuffle=False, read_ahead=depth)
    resumed.load_state_dict(ds.state_dict() | {"shard": 0, "row": 22})
    svc.reads.clear()
    assert list(resumed) == []
    await_read_ahead_gone(before)
    assert svc.reads == []
    # s1 rewritten with 10 rows since the rows were counted: the reader reads on into
    # s3 and s5 for the rest of its share, as it did before it stopped fetching early.
    svc.rewrite("s1", sample_table(1, 10))
    svc.reads.clear()
    assert len(ids(list(ds))) == 22
    await_read_ahead_gone(before)
    assert svc.reads == ["s1", "s3", "s5"]


def test_named_shards_declare_the_workers_list_and_resume_declares_its_start() -> None:
    svc = service()
    ds = make(svc, shards=["b/1", "a/0", "a/2"], shuffle=False, batch_size=100)
    iterator = iter(ds)
    state = ds.state_dict()
    assert ids([next(iterator)]) == list(range(5)) + [2_000_000 + i for i in range(7)] + [
        4_000_000 + i for i in range(6)
    ]
    assert svc.calls[0] == (
        "declare",
        {"sampler": None, "shards": ["a/0", "a/2", "b/1"], "prefix": "", "ttl_s": 300.0},
    )
    svc.calls.clear()
    resumed = make(svc, shards=["b/1", "a/0", "a/2"], shuffle=False, batch_size=3)
    resumed.load_state_dict({**state, "shard": 1})
    list(resumed)
    kinds = [kind for kind, _ in svc.calls]
    # The resumed start is declared with the plan: reported a round trip later, the
    # policy took it for shards read in that moment. Later reports are paced (at most
    # one a shard), and only past the start.
    assert svc.calls[0] == (
        "declare",
        {
            "sampler": None,
            "shards": ["a/0", "a/2", "b/1"],
            "prefix": "",
            "ttl_s": 300.0,
            "position": 1,
        },
    )
    assert kinds[-1] == "close" and set(kinds[1:-1]) <= {"report"}
    reported = [args[1] for kind, args in svc.calls if kind == "report"]
    assert reported == sorted(set(reported)) and set(reported) <= {2, 3}


class CheckingDigests(MemoryService):
    """Refuses a sampler plan made over other shards than its prefix has, as the server
    does; ``down`` refuses every plan of explicit shards as unavailable."""

    down = False

    def declare_plan(self, dataset: str, **kwargs: Any) -> str:
        sampler = kwargs["sampler"]
        if sampler is not None:
            names = [info.name for info in self.list(dataset, kwargs["prefix"])]
            if sampler.shards_digest != shard_list_digest(names):
                with self._lock:
                    self.calls.append(("refused", kwargs))
                raise PlanShardsChanged("the shards under the prefix changed")
        elif self.down:
            raise Unavailable("plans are down")
        return super().declare_plan(dataset, **kwargs)


def test_a_prefix_that_gained_shards_since_listed_declares_the_workers_list() -> None:
    svc = CheckingDigests("ds", {f"p/{i}": sample_table(i, 4) for i in range(5)})
    ds, resumed = make(svc, prefix="p/", seed=3), make(svc, prefix="p/", seed=3)
    ds.set_epoch(2)
    iterator = iter(ds)
    for _ in range(4):  # the epoch's first shard
        next(iterator)
    state = ds.state_dict()
    assert state["shard"] == 1
    assert len(ids(list(iterator))) == 16
    # As listed: the sampler plan, carrying their digest, is taken.
    kind, declared = svc.calls[0]
    assert kind == "declare"
    assert declared["sampler"].shards_digest == shard_list_digest(ds.shards.names)
    svc.rewrite("p/9", sample_table(9, 4))  # a shard added under the prefix since
    svc.calls.clear()
    resumed.load_state_dict(state)
    assert len(ids(list(resumed))) == 16  # p/9 is not read: it was not listed
    assert [kind for kind, _ in svc.calls[:2]] == ["refused", "declare"]
    assert svc.calls[1][1] == {
        "sampler": None,
        "shards": worker_shards(ds.shards.names, True, 3, 2, Slot()),
        "prefix": "",
        "ttl_s": 300.0,
        "position": 1,
    }
    assert svc.calls[-1][0] == "close"
    # The list refused as well: the plan is dropped (and logged), and reading goes on.
    stale = make(svc, prefix="p/", seed=3)
    svc.rewrite("p/8", sample_table(8, 4))
    svc.down = True
    svc.calls.clear()
    assert len(ids(list(stale))) == 24
    assert [kind for kind, _ in svc.calls] == ["refused"]


def test_a_failing_or_missing_plan_api_is_logged_once_and_reading_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Refusing(MemoryService):
        def declare_plan(self, dataset: str, **kwargs: Any) -> str:
            raise Unavailable("plans are down")

    class Old(MemoryService):
        declare_plan = None  # type: ignore[assignment]  # a client from before plans

    for cls in (Refusing, Old):
        svc = cls("ds", {name: sample_table(i, n) for i, (name, n) in enumerate(ROWS.items())})
        with caplog.at_level(logging.WARNING, "tierstore.torch.access_plan"):
            for _ in range(2):
                assert len(ids(list(make(svc, shuffle=False)))) == sum(ROWS.values())
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "Unavailable: plans are down" in m]) <= 1
    assert len([m for m in messages if "no declare_plan()" in m]) <= 1
    assert any("access plan" in m for m in messages)
    assert all("reading is unaffected" in m for m in messages if "access plan" in m)


def test_a_plan_refused_for_the_callers_authority_does_not_promise_the_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # "(reading is unaffected)" was logged just before the reads failed with the same
    # error: a revoked token, a grant gone, a dataset deleted.
    class Revoked(MemoryService):
        def declare_plan(self, dataset: str, **kwargs: Any) -> str:
            raise PermissionDenied("no reader role on ds")

    svc = Revoked("ds", {name: sample_table(i, n) for i, (name, n) in enumerate(ROWS.items())})
    with caplog.at_level(logging.WARNING, "tierstore.torch.access_plan"):
        list(make(svc, shuffle=False))
    messages = [r.getMessage() for r in caplog.records if "access plan" in r.getMessage()]
    assert messages and all("the reads will likely fail with it too" in m for m in messages)
    assert not any("reading is unaffected" in m for m in messages)


def test_declare_plan_false_sends_nothing() -> None:
    svc = service()
    list(make(svc, declare_plan=False))
    assert svc.calls == []


# Batches from threads.


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("seed", [0, 7])
def test_batches_from_threads_are_the_same_batches_in_the_same_order(
    threads: int, seed: int
) -> None:
    svc = service()
    inline = list(make(svc, batch_size=4, seed=seed))
    names: set[str] = set()
    real = iterable_module.assemble

    def recording(*args: Any, **kwargs: Any) -> Any:
        names.add(threading.current_thread().name)
        return real(*args, **kwargs)

    with mock.patch.object(iterable_module, "assemble", recording):
        threaded = list(make(svc, batch_size=4, seed=seed, batch_threads=threads))
    assert len(threaded) == len(inline)
    for ours, theirs in zip(threaded, inline, strict=True):
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert torch.equal(ours[name], theirs[name]), name
    assert names and all(name.startswith("tierstore-batches") for name in names)


def test_batches_before_a_bad_shard_come_out_first_with_threads() -> None:
    bad = sample_table(1, 2).set_column(0, "id", pa.array([1_000_000, None], pa.int64()))
    svc = MemoryService("ds", {"a": sample_table(0, 8), "b": bad})
    iterator = iter(make(svc, batch_size=4, shuffle=False, batch_threads=2))
    assert [ids([next(iterator)]), ids([next(iterator)])] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(UnsupportedData, match="column 'id' has 1 null") as caught:
        next(iterator)
    assert "tierstore.torch: in shard ds/b" in caught.value.__notes__
    assert iterator.state_dict()["shard"] == 1  # resume starts at the bad shard


# Bad input.


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
        ({"seed": -1}, "seed must be"),
        ({"read_ahead": -1}, "read_ahead must be"),
        ({"batch_size": 2, "batch_threads": -1}, "batch_threads must be"),
        ({"batch_threads": 2}, "batch_threads assembles batches: it needs a batch_size"),
        ({"strings": "maybe"}, "strings must be"),
        ({"shards": ["a/0"], "prefix": "a"}, "not both"),
        ({"shards": "a/0"}, "list of shard names"),
        ({"shards": []}, "empty"),
        ({"shards": ["a/0", "a/0"]}, "more than once"),
        ({"columns": []}, "columns= is empty"),
        ({"num_workers": -1}, "num_workers must be an int >= 0"),
        ({"num_workers": 2.0}, "num_workers must be an int >= 0"),
        ({"prefix": "zzz"}, "no shards with prefix 'zzz'"),
        # Taken, and the access plan was dropped each epoch with a warning.
        *[({"plan_ttl_s": ttl}, "plan_ttl_s must be") for ttl in (0, -5, float("nan"), 1e12, "x")],
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        make(**kwargs)


class _FalsySource(MemorySource):
    def __len__(self) -> int:  # a source may hold a count: 0 made it "false"
        return 0


def test_a_source_that_is_false_is_still_the_source_read() -> None:
    # `source or service_source(...)` took a falsy source for none, and dialled the
    # service named by the environment instead.
    dataset = IterableDataset("ds", source=_FalsySource(service()), shuffle=False)
    assert len(list(dataset)) > 0


@pytest.mark.parametrize("kind", [IterableDataset, MapDataset])
def test_a_source_that_is_no_shard_source_is_refused_by_name(kind: type) -> None:
    # An AttributeError from inside ("'str' object has no attribute 'client'").
    with pytest.raises(InvalidArgument, match="source= must be a ShardSource"):
        kind("ds", source="x")


@pytest.mark.parametrize("retry_s", [float("nan"), float("inf"), -1.0, "5", True])
@pytest.mark.parametrize("kind", [IterableDataset, MapDataset])
def test_a_retry_time_that_is_no_finite_number_of_seconds_is_refused(
    kind: type, retry_s: object
) -> None:
    # NaN was taken, and a read of an unreachable node retried for ever (NaN never
    # compares past a deadline). Refused before anything is reached: nothing listens here.
    with pytest.raises(InvalidArgument, match="retry_s must be"):
        kind("d", address="127.0.0.1:1", token="ts_0_x", retry_s=retry_s)


def test_unknown_dataset_shard_and_raw_shards() -> None:
    svc = service()
    with pytest.raises(DatasetNotFound):
        IterableDataset("other", source=MemorySource(svc))
    with pytest.raises(ShardNotFound, match="'a/9'"):
        make(svc, shards=["a/0", "a/9"])
    raw = MemoryService("ds", {"a": sample_table(0, 2), "blob": b"\x00" * 10})
    with pytest.raises(WrongShardKind, match=r"\['blob'\] hold raw bytes"):
        make(raw)
    assert len(list(make(raw, shards=["a"]))) == 2


@pytest.mark.parametrize("kind", [IterableDataset, MapDataset])
def test_a_vector_beside_a_tensor_of_one_wide_rows_is_schema_drift(kind: type) -> None:
    # Both are fixed_shape_tensor[1]: the vector's samples are scalars, the other's of
    # shape (1,), and batching them together failed inside numpy ("all input arrays
    # must have the same shape").
    svc = MemoryService(
        "ds",
        {
            "a": tensor_to_table(np.arange(5, dtype=np.int64)),
            "b": tensor_to_table(np.arange(4, dtype=np.int64).reshape(4, 1)),
        },
    )
    with pytest.raises(InvalidArgument, match=r"shard 'b' is a tensor with rows.*shard 'a'"):
        list(
            kind("ds", source=MemorySource(svc), shuffle=False)
            if kind is IterableDataset
            else [kind("ds", source=MemorySource(svc))[i] for i in range(9)]
        )


def _pairs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    values = torch.arange(24, dtype=torch.float32).reshape(4, 3, 2)
    complex64 = torch.complex(values[..., 0], values[..., 1])  # stored as (4, 3, 2) float32
    return {
        "bfloat16-uint16": (values[..., 0].bfloat16(), values[..., 0].to(torch.uint16)),
        "uint16-bfloat16": (values[..., 0].to(torch.uint16), values[..., 0].bfloat16()),
        "bool-uint8": (values[..., 0] > 5, values[..., 0].to(torch.uint8)),
        "uint8-float8": (values[..., 0].to(torch.uint8), values[..., 0].to(torch.float8_e4m3fn)),
        "complex64-float32": (complex64, values),
    }


@pytest.mark.parametrize("kind", [IterableDataset, MapDataset])
@pytest.mark.parametrize("pair", list(_pairs()))
def test_tensor_shards_of_one_stored_type_but_other_dtypes_are_schema_drift(
    kind: type, pair: str
) -> None:
    # bfloat16 is stored as its uint16 bits (bool as uint8, complex64 as float32 pairs):
    # the Arrow types were equal, so the two shards passed as one schema, and a batch
    # spanning them held uint16 values reinterpreted as bfloat16 (9e-39 for 100), or
    # failed inside numpy ("Cannot cast array data from dtype('int16') to dtype('uint16')").
    first, second = _pairs()[pair]
    svc = MemoryService("ds", {"a": tensor_to_table(first), "b": tensor_to_table(second)})
    with pytest.raises(InvalidArgument, match=r"shard 'b' holds .* but shard 'a'"):
        list(
            kind("ds", source=MemorySource(svc), shuffle=False, batch_size=8)
            if kind is IterableDataset
            else [kind("ds", source=MemorySource(svc))[i] for i in range(8)]
        )


def test_schema_drift_names_both_shards() -> None:
    drifted = pa.table({"id": np.arange(3, dtype=np.int32), "x": sample_table(1, 3)["x"]})
    svc = MemoryService("ds", {"a": sample_table(0, 2), "b": drifted})
    with pytest.raises(
        InvalidArgument, match="column 'id' is int32 in shard 'b' but int64 in shard 'a'"
    ) as caught:
        list(make(svc, shuffle=False))
    assert any("worker 0 of 1" in note for note in caught.value.__notes__)
    missing = MemoryService(
        "ds", {"a": sample_table(0, 2), "b": pa.table({"x": sample_table(1, 3)["x"]})}
    )
    with pytest.raises(InvalidArgument, match=r"shard 'b' has no column\(s\) \['id'\]"):
        list(make(missing, shuffle=False))
    # Only the selected columns have to agree.
    assert len(list(make(svc, shuffle=False, columns=["x"]))) == 5


def test_strings_are_refused_unless_asked_for_as_lists() -> None:
    table = pa.table({"id": np.arange(4), "name": ["a", "b", "c", "d"]})
    svc = MemoryService("ds", {"s": table})
    with pytest.raises(UnsupportedData, match=r"column 'name' holds string.*strings='list'"):
        make(svc)
    batches = list(make(svc, strings="list", shuffle=False, batch_size=3))
    assert [b["name"] for b in batches] == [["a", "b", "c"], ["d"]]
    assert next(iter(make(svc, strings="list", shuffle=False)))["name"] == "a"


def test_nulls_are_an_error_when_their_shard_is_read() -> None:
    svc = MemoryService("ds", {"s": pa.table({"v": pa.array([1.0, None, 3.0])})})
    with pytest.raises(UnsupportedData, match="column 'v' has 1 null") as caught:
        list(make(svc))
    assert "tierstore.torch: in shard ds/s" in caught.value.__notes__


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA tests below pin")
def test_pin_memory_without_cuda_gives_plain_batches() -> None:
    svc = service()
    plain = list(make(svc, seed=3, batch_size=4))
    asked = list(make(svc, seed=3, batch_size=4, batch_threads=2, pin_memory=True))
    assert ids(asked) == ids(plain)
    assert not any(batch["x"].is_pinned() for batch in asked)


# Pinned memory: a CPU-only torch skips pinning, so these run where CUDA is.


def check_pinned_copies(batches: list[dict[str, Any]]) -> None:
    """Every tensor is page-locked and reaches the GPU intact by a non-blocking copy."""
    for batch in batches:
        for name in ("id", "x"):
            assert batch[name].is_pinned(), name
            on_gpu = batch[name].to("cuda", non_blocking=True)
            torch.cuda.synchronize()
            assert torch.equal(on_gpu.cpu(), batch[name])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("in_worker_batches", [True, False], ids=["dataset-batches", "collated"])
def test_batches_are_pinned_and_reach_the_gpu(workers: int, in_worker_batches: bool) -> None:
    svc = service()
    dataset = make(svc, seed=3, batch_size=4 if in_worker_batches else None)
    loader = DataLoader(
        dataset,
        batch_size=None if in_worker_batches else 4,
        num_workers=workers,
        pin_memory=True,
        multiprocessing_context="fork" if workers else None,
    )
    batches = list(loader)
    assert sorted(ids(batches)) == sorted(ids(list(make(svc, shuffle=False))))
    check_pinned_copies(batches)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("threads", [0, 2])
def test_pin_memory_assembles_batches_in_page_locked_memory(threads: int) -> None:
    svc = service()
    plain = list(make(svc, seed=3, batch_size=4))
    pinned = list(make(svc, seed=3, batch_size=4, batch_threads=threads, pin_memory=True))
    assert ids(pinned) == ids(plain)
    check_pinned_copies(pinned)


def test_an_abandoned_epoch_lets_its_read_ahead_go_and_keeps_its_position() -> None:
    # A ``break`` out of the loader's loop: once the loader is dropped, its epoch's
    # read-ahead threads (and the shards they hold) go, and state_dict() still says
    # where the reading stopped.
    before = set(read_ahead_threads())
    ds = make(read_ahead=2)
    loader = DataLoader(ds, batch_size=None, num_workers=0)
    gc.disable()  # gone as the last reference goes, not at a collection: the epoch
    try:  # iterator and its generator held each other, and kept 117 MB until one
        epoch = iter(loader)
        first = next(epoch)
        assert set(read_ahead_threads()) - before
        del epoch, loader
        await_read_ahead_gone(before)
    finally:
        gc.enable()
    resumed = make()
    resumed.load_state_dict(ds.state_dict())
    rest = list(DataLoader(resumed, batch_size=None, num_workers=0))
    whole = list(DataLoader(make(), batch_size=None, num_workers=0))
    assert ids([first, *rest]) == ids(whole)
