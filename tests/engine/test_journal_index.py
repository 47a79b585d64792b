"""The journal's index by dataset (``Catalog.journal_entries_of``): a write-through put
finds its dataset's earlier entries without walking the whole journal, and a journal a
release before the index wrote to is walked until the next start indexes it."""

from __future__ import annotations

import random

import pytest

from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import StoreFactory
from tierstore.engine import mover as mover_module
from tierstore.engine.catalog import _concerns
from tierstore.engine.records import JournalOp
from tierstore.engine.store import Store
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings

DATASETS = ["a", "b", "a.b", "ab"]  # names that share a beginning
SHARDS = ["s0", "a"]  # a shard named as a dataset is
OPS = ["upload", "delete", "supersede", "manifest", "dataset"]


def walked(store: Store, dataset: str, shard: str, before: int) -> list[tuple[int, JournalOp]]:
    """What the walk of the whole journal finds (the index forced out of use)."""
    with store._env.read() as txn:
        entries = store._catalog._walk_journal_for(txn, dataset, before)
        return [(seq, op) for seq, op in entries if _concerns(op, dataset, shard)]


def found(store: Store, dataset: str, shard: str, before: int) -> list[tuple[int, JournalOp]]:
    with store._env.read() as txn:
        return store._catalog.journal_entries_of(txn, dataset, shard, before)


def indexed(store: Store) -> bool:
    with store._env.read() as txn:
        return store._catalog._journal_indexed(txn)


def append(store: Store, ops: int, seed: int, *, as_an_older_release: bool = False) -> None:
    """Append ``ops`` random entries (and remove a few), as this release does, or as
    one before the index did (no index key, no count of what it holds)."""
    chance = random.Random(seed)
    catalog = store._catalog
    with store._env.write() as txn:
        for _ in range(ops):
            op = JournalOp(
                chance.choice(OPS),
                chance.choice(DATASETS),
                chance.choice(SHARDS),
                generation=chance.randrange(1, 1000),
            )
            if as_an_older_release:
                seq = catalog.counter(txn, "journal_seq") + 1
                catalog.set_counter(txn, "journal_seq", seq)
                txn.put(seq.to_bytes(8, "big"), op.encode(), db=store._env.db("journal"))
            else:
                catalog.append_journal(txn, op)
        for seq, _ in catalog.journal_entries(txn, limit=ops):
            if chance.random() < 0.2:
                if as_an_older_release:
                    txn.delete(seq.to_bytes(8, "big"), db=store._env.db("journal"))
                else:
                    catalog.remove_journal(txn, seq)


def assert_found_as_walked(store: Store) -> None:
    with store._env.read() as txn:
        newest = store._catalog.counter(txn, "journal_seq")
    for dataset in DATASETS:
        for shard in SHARDS:
            for before in (newest + 1, newest // 2, 1):
                assert found(store, dataset, shard, before) == walked(
                    store, dataset, shard, before
                ), (dataset, shard, before)


def test_the_index_finds_what_a_walk_of_the_journal_finds(open_store: StoreFactory) -> None:
    store = open_store(datasets={name: DatasetSettings() for name in DATASETS}, start_mover=False)
    append(store, 300, seed=1)
    assert indexed(store)
    assert_found_as_walked(store)
    assert found(store, "a", "s0", 10**9)  # not empty: the test compares something


def test_entries_an_older_release_appended_are_walked_then_indexed_at_the_next_start(
    open_store: StoreFactory,
) -> None:
    datasets = {name: DatasetSettings() for name in DATASETS}
    store = open_store(datasets=datasets, start_mover=False)
    append(store, 100, seed=2)
    append(store, 100, seed=3, as_an_older_release=True)  # it also removes some
    append(store, 50, seed=4)
    assert not indexed(store)
    assert_found_as_walked(store)  # by the walk

    store.close()
    store = open_store(data_dir=store.settings.data_dir, start_mover=False)
    assert indexed(store)
    assert_found_as_walked(store)  # by the index, which holds the older release's too


def test_index_keys_of_entries_an_older_release_ran_are_passed_over(
    open_store: StoreFactory,
) -> None:
    store = open_store(datasets={"a": DatasetSettings()}, start_mover=False)
    append(store, 40, seed=5)
    with store._env.write() as txn:  # an older release runs (removes) the first ten
        cursor = txn.cursor(db=store._env.db("journal"))
        for _ in range(10):
            assert cursor.first() and cursor.delete()
    assert indexed(store)  # it appended nothing
    assert_found_as_walked(store)

    with store._env.write() as txn:  # the journal emptied: the index goes with it
        for seq, _ in store._catalog.journal_entries(txn, limit=10_000):
            store._catalog.remove_journal(txn, seq)
    with store._env.read() as txn:
        cursor = txn.cursor(db=store._env.db("meta"))
        assert not cursor.set_range(b"journal-of\x00") or not bytes(cursor.key()).startswith(
            b"journal-of\x00"
        )
    assert indexed(store)


def test_the_catalog_keeps_the_index_of_each_new_entry(open_store: StoreFactory) -> None:
    # Through the store: puts, overwrites and deletes journal their entries indexed.
    store = open_store(datasets={"a": DatasetSettings(), "b": DatasetSettings()}, start_mover=False)
    for index in range(5):
        store.put("a", f"s{index % 2}", b"a" * index)
        store.put("b", "s0", b"b" * index)
    store.delete("a", "s1")
    assert indexed(store)
    assert_found_as_walked(store)


def assert_each_datasets_journal_is_its_entries(store: Store) -> None:
    with store._env.read() as txn:
        everything = store._catalog.journal_entries(txn, limit=10**6)
        for dataset in DATASETS:
            mine = [(seq, op) for seq, op in everything if op.dataset == dataset]
            assert list(store._catalog.dataset_journal(txn, dataset)) == mine, dataset
            assert mine, dataset  # the test compares something


def test_a_datasets_journal_is_its_entries_indexed_or_walked(open_store: StoreFactory) -> None:
    store = open_store(datasets={name: DatasetSettings() for name in DATASETS}, start_mover=False)
    append(store, 200, seed=6)
    assert_each_datasets_journal_is_its_entries(store)  # through the index
    append(store, 10, seed=7, as_an_older_release=True)
    assert not indexed(store)
    assert_each_datasets_journal_is_its_entries(store)  # by the walk


def test_a_quota_wait_sees_its_datasets_upload_behind_other_datasets_entries(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The look for an upload that would make room in a quota took the oldest 10,000
    # entries of every dataset: behind more of others', a put gave up waiting at once.
    monkeypatch.setattr(mover_module, "_UPLOADS_SCANNED", 10)
    archive = FaultyTier(MemoryTier())
    datasets = {"backlog": DatasetSettings(), "q": DatasetSettings()}
    store = open_store(archive, datasets=datasets)
    archive.hold_writes()  # the mover's first upload waits: the rest stay pending
    for index in range(20):
        store.put("backlog", f"x{index}", b"backlog")
    store.put("q", "hot", b"would be evicted once archived")
    assert archive.write_waiting.wait(10)
    try:
        assert store.mover.uploads_would_free("q")
    finally:
        archive.release_writes()
