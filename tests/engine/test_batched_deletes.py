"""Consecutive shard deletes on the journal reach the archive together: their objects in
``Tier.delete_many`` requests, their entries in one commit (``Mover.run_entries``).

A forced delete of a large dataset journals a delete per shard; one at a time, each
with two archive requests and a commit, they held every later upload back for minutes.
The batch is shrunk to 4 here, so that a few shards make several batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from tests.engine.faulty_tier import FramesDeleteFailsOnce
from tests.engine.stores import StoreFactory
from tierstore.engine.records import archive_dataset_key, is_generation_object_key
from tierstore.engine.store import Store
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, Durability

BATCH = 4


class RequestCountingTier(MemoryTier):
    """A memory archive that notes each delete request: the keys of each
    ``delete_many`` call, and each single ``delete``'s key."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.single: list[str] = []
        self._in_batch = False

    def delete(self, key: str) -> None:
        if not self._in_batch:
            self.single.append(key)
        super().delete(key)

    def delete_many(self, keys: Sequence[str]) -> None:
        self.batches.append(list(keys))
        self._in_batch = True
        try:
            super().delete_many(keys)
        finally:
            self._in_batch = False


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tierstore.engine.mover.DELETES_PER_BATCH", BATCH)


def archived_keys(archive: MemoryTier, dataset: str) -> list[str]:
    """The manifests and frames objects ``archive`` holds of ``dataset``."""
    listed = archive.list(f"{dataset}/", limit=10_000).keys
    return [key for key in listed if is_generation_object_key(key)]


def fill(store: Store, dataset: str, shards: int) -> None:
    for index in range(shards):
        store.put(dataset, f"s{index}", f"shard {index}".encode())


def test_a_forced_deletes_shards_leave_the_archive_in_batches_before_later_uploads(
    open_store: StoreFactory,
) -> None:
    archive = RequestCountingTier()
    datasets = {"big": DatasetSettings(), "other": DatasetSettings()}
    store = open_store(archive, datasets=datasets, start_mover=False)
    fill(store, "big", 10)
    assert store.mover.drain_once()
    assert len(archived_keys(archive, "big")) == 20  # a manifest and frames object each
    store.delete_dataset("big", force=True)
    store.put("other", "fresh", b"after the delete")
    assert store.stats().journal_entries == 12  # 10 shards, the dataset, the upload

    assert store.mover.drain_once()
    # 10 deletes: batches of 4, 4 and 2, each its manifests then its frames objects.
    assert [len(keys) for keys in archive.batches] == [4, 4, 4, 4, 2, 2]
    assert all(key.endswith(".manifest") for key in archive.batches[0])
    assert all(key.endswith(".frames") for key in archive.batches[1])
    assert archive.single == [archive_dataset_key("big")]  # the dataset's object, alone
    assert archived_keys(archive, "big") == []
    assert store.stat("other", "fresh").archived
    assert store.stats().journal_entries == 0


def test_a_batch_the_archive_fails_half_way_is_kept_whole_and_finished_on_retry(
    open_store: StoreFactory,
) -> None:
    inner = MemoryTier()
    archive = FramesDeleteFailsOnce(inner)
    store = open_store(archive, datasets={"big": DatasetSettings()}, start_mover=False)
    fill(store, "big", 3)
    assert store.mover.drain_once()
    store.delete_dataset("big", force=True)

    assert not store.mover.drain_once()
    # The manifests went, the first frames object did not: every entry stays.
    assert archive.failed and len(archived_keys(inner, "big")) == 3
    assert store.stats().journal_entries == 4
    assert store.mover.last_error is not None
    assert "delete of 3 shards, from big/s0" in store.mover.last_error

    assert store.mover.drain_once()
    assert archived_keys(inner, "big") == []
    assert store.stats().journal_entries == 0 and store.mover.last_error is None


def test_a_forced_write_through_delete_batches_its_shards_before_it_answers(
    open_store: StoreFactory,
) -> None:
    archive = RequestCountingTier()
    settings = DatasetSettings(durability=Durability.WRITE_THROUGH)
    store = open_store(archive, datasets={"wt": settings}, start_mover=False)
    fill(store, "wt", 6)  # each archived before its put returned
    assert len(archived_keys(archive, "wt")) == 12

    store.delete_dataset("wt", force=True)
    # Acknowledged once the archive holds none of it, its 6 shards in 2 batches.
    assert archived_keys(archive, "wt") == []
    assert sorted(len(keys) for keys in archive.batches) == [2, 2, 4, 4]
    assert store.stats().journal_entries == 0


def test_a_pass_ends_at_the_next_entry_once_the_mover_stops(open_store: StoreFactory) -> None:
    # A pass reads up to DELETES_PER_BATCH entries at a time: without a look at the stop
    # between them, a closing store's mover ran up to 1,000 uploads past its 10 s.
    class StopsTheMoverOnItsFirstUpload(MemoryTier):
        stopped = False

        def put(self, key: str, value: Any) -> None:
            super().put(key, value)
            if key.endswith(".manifest") and not self.stopped:  # the first upload is done
                self.stopped = True
                store.mover._stop.set()  # as Mover.stop does, without joining

    store = open_store(
        StopsTheMoverOnItsFirstUpload(),
        datasets={"plain": DatasetSettings()},
        start_mover=False,
    )
    fill(store, "plain", 5)
    assert not store.mover.drain_once()
    assert store.mover.pending() == 4  # the one under way was finished, no other begun
    store.mover._stop.clear()
    assert store.mover.drain_once() and store.mover.pending() == 0
