"""A node whose archive was lost for good archives its hot tier again
(:meth:`Store.archive_again`, ``serve --archive-lost``): its hot shards are uploaded
again and kept hot until they are, the shards only the lost archive held are dropped,
and the datasets' settings objects are written again."""

from __future__ import annotations

import pytest

from tests.engine.stores import StoreFactory, payload
from tierstore.errors import ShardNotFound
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, Durability


def test_a_lost_archive_is_filled_again_from_the_hot_tier(open_store: StoreFactory) -> None:
    lost = MemoryTier()
    settings = {
        "d": DatasetSettings(),
        "e": DatasetSettings(encrypted=True, durability=Durability.WRITE_THROUGH),
    }
    store = open_store(lost, datasets=settings)
    hot, cold = payload(20_000, 1), payload(9000, 2)
    store.put("d", "hot", hot)
    store.put("d", "cold", cold)
    store.put("e", "hot", b"encrypted and hot")
    assert store.drain()
    assert store.evict("d", "cold") > 0
    # Restarted over an empty archive, the mover not yet started (as serve does).
    new = MemoryTier()
    store = open_store.reopen(store, new, start_mover=False)
    assert sorted(store.archive_missing_datasets()) == ["d", "e"]
    done = store.archive_again()
    assert (done.uploads, done.lost, done.datasets) == (2, ["d/cold"], 2)
    assert not store.stat("d", "hot").archived
    assert store.evict("d", "hot") == 0  # kept until it is in the new archive
    with pytest.raises(ShardNotFound):
        store.get("d", "cold")
    assert store.archive_missing_datasets() == []  # their objects are on the journal
    store = open_store.reopen(store, new)
    assert store.drain()
    assert store.stat("d", "hot").archived and store.stat("e", "hot").archived
    assert store.get("d", "hot").to_bytes() == hot

    rebuilt = open_store(new, start_mover=False)
    assert rebuilt.rebuild_from_archive() == 2
    assert rebuilt.get("d", "hot").to_bytes() == hot
    assert rebuilt.get("e", "hot").to_bytes() == b"encrypted and hot"
    assert [info.name for info in rebuilt.list("d")[0]] == ["hot"]
