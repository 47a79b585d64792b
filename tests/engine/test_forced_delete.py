"""A forced delete of a large dataset commits its shards a batch at a time
(``Store._drop_shards_ahead``), so that other writers are not held for all of it: one
transaction of 50,000 shards held every put of every dataset for 8 s. The batch is
shrunk to 2 here."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.engine.stores import StoreFactory, wait_until
from tierstore.engine import store as store_module
from tierstore.engine.records import ShardRecord, encode_dataset
from tierstore.engine.store import Store
from tierstore.errors import DatasetNotFound, FailedPrecondition
from tierstore.types import DatasetSettings

DATASETS = {"big": DatasetSettings(), "other": DatasetSettings()}
NAMES = [f"s{index}" for index in range(7)]


@pytest.fixture
def store(open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setattr(store_module, "SHARDS_DROPPED_PER_COMMIT", 2)
    opened = open_store(datasets=DATASETS, start_mover=False)
    for name in NAMES:
        opened.put("big", name, name.encode())
    return opened


def on_each_delete(
    store: Store, monkeypatch: pytest.MonkeyPatch, step: dict[int, Any]
) -> list[str]:
    """Make the store call ``step[n]()`` as it comes to the n-th shard it deletes (from
    1), in that delete's write transaction; returns the names deleted, in order."""
    deleted: list[str] = []
    delete_in = store._writer.delete_in

    def delete_one(txn: Any, record: ShardRecord, **kwargs: Any) -> int | None:
        deleted.append(record.name)
        step.get(len(deleted), lambda: None)()
        return delete_in(txn, record, **kwargs)

    monkeypatch.setattr(store._writer, "delete_in", delete_one)
    return deleted


def before_each_commit(
    store: Store, monkeypatch: pytest.MonkeyPatch, step: dict[int, Callable[[], None]]
) -> None:
    """Make the store call ``step[n]()`` before the n-th commit (from 1) of a forced
    delete's shards ahead of its dataset."""
    commit = store._drop_shard_chunk
    commits: list[int] = []

    def stepped(*args: Any) -> tuple[list[ShardRecord], bool]:
        commits.append(1)
        step.get(len(commits), lambda: None)()
        return commit(*args)

    monkeypatch.setattr(store, "_drop_shard_chunk", stepped)


def test_other_writers_commit_between_a_forced_deletes_commits(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_done = threading.Event()

    def put_other() -> None:
        store.put("other", "new", b"bytes")
        put_done.set()

    putter = threading.Thread(target=put_other, daemon=True)

    def start_the_put() -> None:  # in the first commit, which holds the write lock
        putter.start()
        wait_until(lambda: store._env._writer.waiting() == 1, what="the put to wait")

    def put_came_in() -> None:  # in the second commit
        assert put_done.wait(10), "the put waited for the whole delete"

    deleted = on_each_delete(store, monkeypatch, {1: start_the_put, 3: put_came_in})
    store.delete_dataset("big", force=True)
    putter.join(10)
    assert sorted(deleted) == NAMES  # 2, 2 and 2 a commit, the last with the dataset
    assert not store.has_dataset("big")
    assert store.get("other", "new").to_bytes() == b"bytes"


def test_a_namesake_made_between_two_commits_keeps_its_shards(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another caller deletes the dataset and makes one of the name while the first
    # delete is between two commits: what the first delete goes on to drop is not its.
    real = store._drop_shard_chunk

    def the_others_delete() -> None:
        monkeypatch.setattr(store, "_drop_shard_chunk", real)
        store.delete_dataset("big", force=True)
        store.create_dataset("big")
        store.put("big", "s6", b"the namesake's")

    before_each_commit(store, monkeypatch, {2: the_others_delete})
    with pytest.raises(DatasetNotFound, match="deleted by another caller meanwhile"):
        store.delete_dataset("big", force=True)
    assert store.get("big", "s6").to_bytes() == b"the namesake's"
    assert [info.name for info in store.list("big")[0]] == ["s6"]


def test_a_forced_delete_refused_at_its_first_commit_deletes_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    admitted: list[str] = []

    def admit(settings: DatasetSettings) -> None:
        admitted.append(settings.policy)
        if len(admitted) == 1:
            raise FailedPrecondition("the caller is gone (test)")

    deleted = on_each_delete(store, monkeypatch, {})
    with pytest.raises(FailedPrecondition, match="caller is gone"):
        store.delete_dataset("big", force=True, admit=admit)
    assert deleted == [] and [info.name for info in store.list("big")[0]] == NAMES

    store.delete_dataset("big", force=True, admit=admit)
    assert len(admitted) == 2  # in the first commit only, not again in each
    assert sorted(deleted) == NAMES and not store.has_dataset("big")


def test_a_dataset_whose_record_does_not_read_is_still_deleted_with_force(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its first generation cannot tell it from a namesake: it goes in one transaction,
    # as every forced delete did. Deleting is the only way to be rid of it.
    record = json.loads(encode_dataset(DatasetSettings(), 5))
    record["first_generation"] = "garbage"
    with store._env.write() as txn:
        txn.put(b"big", json.dumps(record).encode(), db=store._env.db("datasets"))
    deleted = on_each_delete(store, monkeypatch, {})
    store.delete_dataset("big", force=True)
    assert sorted(deleted) == NAMES and not store.has_dataset("big")


def test_a_dataset_of_no_more_shards_than_a_commit_takes_goes_in_one_transaction(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "SHARDS_DROPPED_PER_COMMIT", 2)
    small = open_store(datasets=DATASETS, start_mover=False)
    small.put("big", "a", b"a")
    small.put("big", "b", b"b")
    writes: list[int] = []
    real_write = small._env.write

    def counted_write() -> Any:
        writes.append(1)
        return real_write()

    monkeypatch.setattr(small._env, "write", counted_write)
    small.delete_dataset("big", force=True)
    assert len(writes) == 1 and not small.has_dataset("big")


def test_a_forced_delete_that_fails_part_way_tells_of_the_shards_it_deleted(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Puts waiting for room, in the hot tier or their quota, look again at progress.

    def the_disk_fails() -> None:
        raise OSError("the disk failed (test)")

    before_each_commit(store, monkeypatch, {2: the_disk_fails})
    seen = store.mover.progress()
    with pytest.raises(OSError, match="disk failed"):
        store.delete_dataset("big", force=True)
    assert store.mover.progress() > seen
    assert len(store.list("big")[0]) == len(NAMES) - 2  # the first commit's two went
