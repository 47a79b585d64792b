"""Puts of more than ``put_chunk_bytes`` of payload, staged a chunk per transaction.

Each test holds the put as it seals the first frame of its second chunk: the first
chunk is committed (staged), the writer is free, and the test looks at (and changes,
or snapshots) the store before letting the put go on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.engine.backdoor import catalog_hot_bytes, hot_frame_counts, put_raw_record, record_of
from tests.engine.stores import FRAME, KEY_1, KEY_2, StoreFactory, payload
from tests.engine.test_disk_reserve import full_disk
from tests.tiers.test_lmdb import killed_reader
from tierstore.crypto import LocalKeyring
from tierstore.engine.store import Store, hot_tier_dir
from tierstore.errors import (
    DatasetNotFound,
    FailedPrecondition,
    HotTierFull,
    ShardNotFound,
    StoreClosed,
)
from tierstore.frames import FrameSealer
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, Durability

FRAMES = 10
CHUNK_FRAMES = 3
DATASETS = {
    "plain": DatasetSettings(),
    "enc": DatasetSettings(encrypted=True),
    "wt": DatasetSettings(durability=Durability.WRITE_THROUGH),
}


class SealGate:
    """Holds the sealing of frame ``CHUNK_FRAMES`` (the second chunk's first) of a put
    of ``FRAMES`` frames until :meth:`release`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reached = threading.Event()
        self._released = threading.Event()
        original = FrameSealer.seal

        def seal(sealer: FrameSealer, index: int, data: Any) -> Any:
            if sealer.frame_count == FRAMES and index == CHUNK_FRAMES:
                self.reached.set()
                assert self._released.wait(30), "the test never released the put"
            return original(sealer, index, data)

        monkeypatch.setattr(FrameSealer, "seal", seal)

    def release(self) -> None:
        self._released.set()

    def hold_again(self) -> None:
        """Hold the next put too (once the last one is past the gate)."""
        self.reached.clear()
        self._released.clear()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[SealGate]:
    held = SealGate(monkeypatch)
    yield held
    held.release()  # a failed test must not leave a put waiting


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def staging_store(open_store: StoreFactory, **overrides: Any) -> Store:
    return open_store(datasets=DATASETS, put_chunk_bytes=CHUNK_FRAMES * FRAME, **overrides)


def held_put(
    store: Store, gate: SealGate, pool: ThreadPoolExecutor, dataset: str, data: bytes
) -> Future[Any]:
    """Start a put of ``data`` as ``dataset/big``; returns once its first chunk is staged."""
    put = pool.submit(store.put, dataset, "big", data)
    assert gate.reached.wait(10), "the put did not reach its second chunk"
    return put


def staged(store: Store) -> dict[int, int]:
    with store._env.read() as txn:
        return store._catalog.staged(txn)


@pytest.mark.parametrize("dataset", ["plain", "enc"])
def test_a_large_put_is_staged_a_chunk_at_a_time_and_appears_whole(
    open_store: StoreFactory, gate: SealGate, pool: ThreadPoolExecutor, dataset: str
) -> None:
    store = staging_store(open_store)
    old = payload(2 * FRAME, 1)
    old_generation = store.put(dataset, "big", old).generation
    data = payload(FRAMES * FRAME, 2)
    put = held_put(store, gate, pool, dataset, data)
    # The first chunk is committed, but readers see the old generation, whole.
    [(generation, count)] = [(g, n) for g, n in staged(store).items()]
    assert count == FRAMES and generation > old_generation
    assert hot_frame_counts(store)[generation] == CHUNK_FRAMES
    assert store.stat(dataset, "big").generation == old_generation
    assert store.get(dataset, "big").to_bytes() == old
    # The writer is free meanwhile: another shard's put commits at once.
    assert store.put(dataset, "small", b"x" * 100).size == 100
    gate.release()
    info = put.result(30)
    assert info.generation == generation
    assert staged(store) == {}
    assert store.get(dataset, "big").to_bytes() == data
    assert hot_frame_counts(store)[generation] == FRAMES
    assert old_generation not in hot_frame_counts(store)
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual
    assert store.drain(10)
    store.evict(dataset, "big")
    assert store.get(dataset, "big").to_bytes() == data  # the archived copy too
    assert store._writer.first_uncommitted_generation() > generation


@pytest.mark.parametrize("dataset", ["plain", "wt"])
def test_a_put_of_the_same_shard_overtakes_a_staged_one(
    open_store: StoreFactory, gate: SealGate, pool: ThreadPoolExecutor, dataset: str
) -> None:
    # The later put takes a newer generation and commits first: the staged one, taken
    # before it, must never become current (a shard's generations commit in order).
    store = staging_store(open_store)
    big = held_put(store, gate, pool, dataset, payload(FRAMES * FRAME, 3))
    second = store.put(dataset, "big", b"later")
    gate.release()
    first = big.result(30)  # acknowledged: as if it came just before the later one
    assert second.generation > first.generation
    assert not first.hot and not first.archived  # replaced at once: held by neither tier
    assert store.stat(dataset, "big").generation == second.generation
    assert store.get(dataset, "big").to_bytes() == b"later"
    assert staged(store) == {}
    assert first.generation not in hot_frame_counts(store)
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual


def test_a_store_opened_after_a_crash_while_staging_drops_the_staged_frames(
    open_store: StoreFactory, gate: SealGate, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    store = staging_store(open_store)
    old = payload(FRAME, 4)
    store.put("plain", "big", old)
    put = held_put(store, gate, pool, "plain", payload(FRAMES * FRAME, 5))
    # What a kill -9 now would leave on disk: LMDB's last committed transaction.
    crashed = tmp_path / "crashed"
    hot_tier_dir(crashed).mkdir(parents=True)
    store._env.env.copy(str(hot_tier_dir(crashed)))
    gate.release()
    put.result(30)

    reopened = open_store(data_dir=crashed)
    assert staged(reopened) == {}
    assert list(hot_frame_counts(reopened).values()) == [1]  # the old generation only
    assert reopened.get("plain", "big").to_bytes() == old
    counter, actual = catalog_hot_bytes(reopened)
    assert counter == actual


def test_a_dataset_deleted_while_a_put_stages_leaves_nothing_behind(
    open_store: StoreFactory, gate: SealGate, pool: ThreadPoolExecutor
) -> None:
    store = staging_store(open_store)
    put = held_put(store, gate, pool, "plain", payload(FRAMES * FRAME, 6))
    store.delete_dataset("plain", force=True)
    gate.release()
    with pytest.raises(DatasetNotFound):
        put.result(30)
    assert staged(store) == {}
    assert hot_frame_counts(store) == {}
    # Made again, with encryption or as it was: a put staged for the dataset deleted
    # lands in neither (a staged plaintext put cannot land in an encrypted dataset; the
    # new one may be someone else's, and a rebuild would take its generation, older
    # than the new dataset's first, for the deleted one's).
    store.create_dataset("plain")
    for seed, refusal in [
        (7, "made again with encryption"),  # from plaintext
        (8, "deleted and made again while plain/big"),  # encrypted, as it was
    ]:
        gate.hold_again()
        put = held_put(store, gate, pool, "plain", payload(FRAMES * FRAME, seed))
        store.delete_dataset("plain", force=True)
        store.create_dataset("plain", DatasetSettings(encrypted=True))
        gate.release()
        with pytest.raises(FailedPrecondition, match=refusal):
            put.result(30)
        assert staged(store) == {}
        assert hot_frame_counts(store) == {}
        with pytest.raises(ShardNotFound):
            store.stat("plain", "big")


def test_a_dataset_made_again_before_a_put_stages_its_first_chunk_gets_nothing(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Made again after the put read the dataset's settings but before it took its
    # generation (while it made room): that generation was newer than the new
    # dataset's first, and the put committed into the dataset made since.
    store = staging_store(open_store)
    make_room = store.hot_room.make_room

    def made_again_meanwhile(need: int) -> None:
        monkeypatch.setattr(store.hot_room, "make_room", make_room)  # once
        store.delete_dataset("plain", force=True)
        store.create_dataset("plain")
        make_room(need)

    monkeypatch.setattr(store.hot_room, "make_room", made_again_meanwhile)
    with pytest.raises(FailedPrecondition, match="deleted and made again while plain/big"):
        store.put("plain", "big", payload(FRAMES * FRAME, 9))
    assert staged(store) == {}
    assert hot_frame_counts(store) == {}
    with pytest.raises(ShardNotFound):
        store.stat("plain", "big")


def test_an_overtaken_put_is_acknowledged_even_when_its_quota_is_full_by_then(
    open_store: StoreFactory, gate: SealGate, pool: ThreadPoolExecutor
) -> None:
    # It commits nothing, so it needs no room: it was refused QuotaExceeded before.
    quota = 12 * (FRAME + 8)
    store = open_store(
        datasets={"q": DatasetSettings(hot_quota_bytes=quota)},
        put_chunk_bytes=CHUNK_FRAMES * FRAME,
        quota_wait_s=0,
    )
    store.mover.hold_archive("the archive is down")  # nothing in the quota is evictable
    big = held_put(store, gate, pool, "q", payload(FRAMES * FRAME, 12))
    second = store.put("q", "big", b"overtakes")
    store.put("q", "fill", payload(9 * FRAME, 13))  # the quota is nearly full now
    gate.release()
    assert big.result(30).generation < second.generation
    assert store.get("q", "big").to_bytes() == b"overtakes"
    assert staged(store) == {}


def test_a_store_closed_while_a_put_stages_fails_the_put_and_forgets_it(
    open_store: StoreFactory, gate: SealGate, pool: ThreadPoolExecutor
) -> None:
    store = staging_store(open_store)
    put = held_put(store, gate, pool, "plain", payload(FRAMES * FRAME, 14))
    store.close()
    gate.release()
    with pytest.raises(StoreClosed):
        put.result(30)
    writer = store._writer
    assert writer.first_uncommitted_generation() == writer.next_generation()


def test_a_put_that_finds_the_disk_full_mid_staging_drops_what_it_staged(
    open_store: StoreFactory, gate: SealGate, pool: ThreadPoolExecutor
) -> None:
    # Dropping staged frames needs new pages before it frees any, as a delete does: on
    # a full disk the drop failed too, and the frames stayed in the map, dead, until the
    # next open. It gives the disk reserve back and commits, as a delete does.
    store = staging_store(open_store, disk_reserve_bytes=1 << 20)
    put = held_put(store, gate, pool, "plain", payload(FRAMES * FRAME, 15))
    assert staged(store)
    full_disk(store)  # full while the reserve is held
    gate.release()
    with pytest.raises(HotTierFull):
        put.result(30)
    assert staged(store) == {}
    assert hot_frame_counts(store) == {}
    assert not store.disk_reserve.held
    with pytest.raises(ShardNotFound):
        store.stat("plain", "big")


def test_a_damaged_record_repaired_while_a_put_stages_does_not_purge_the_put(
    open_store: StoreFactory, gate: SealGate, pool: ThreadPoolExecutor, archive: MemoryTier
) -> None:
    # The repair purges the shard's archive objects older than the first generation
    # that may still commit: the staged put's, taken before the repair (a review lost
    # the put's archive copy when the bound was the next generation to hand out).
    store = open_store(archive, datasets=DATASETS, put_chunk_bytes=CHUNK_FRAMES * FRAME)
    store.put("plain", "x", b"v0")
    assert store.drain(10)
    store.mover.hold_archive("the archive is down")
    store.put("plain", "x", b"v1")  # its upload and supersede entries wait
    data = payload(FRAMES * FRAME, 10)
    put = pool.submit(store.put, "plain", "x", data)
    assert gate.reached.wait(10)
    put_raw_record(store, "plain", "x", b"not a record")
    store.delete("plain", "x")  # the repair, with a purge entry
    gate.release()
    generation = put.result(30).generation
    store.mover.hold_archive(None)
    assert store.drain(10)
    assert record_of(store, "plain", "x").generation == generation
    store.evict("plain", "x")
    assert store.get("plain", "x").to_bytes() == data  # from the archive


def test_a_key_rotated_and_retired_while_a_put_stages_does_not_fail_the_put(
    open_store: StoreFactory, gate: SealGate, pool: ThreadPoolExecutor
) -> None:
    # The commit wraps its data key under the current master key from the key in
    # hand: unwrapping the envelope made under k1 failed once k1 was retired.
    store = staging_store(open_store)
    data = payload(FRAMES * FRAME, 11)
    put = held_put(store, gate, pool, "enc", data)
    store.rotate_master_key(LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2"))
    assert store.drain(10)
    left = LocalKeyring(keys={"k2": KEY_2}, current="k2")
    store.check_key_retirement("k1", left)
    store.use_retired_keys("k1", left)  # what `tierstore keys retire` does next
    gate.release()
    put.result(30)
    envelope = record_of(store, "enc", "big").envelope
    assert envelope is not None and envelope.wrapped.key_id == "k2"
    assert store.get("enc", "big").to_bytes() == data


def test_a_put_whose_chunk_finds_no_room_drops_what_it_staged(open_store: StoreFactory) -> None:
    # A map of 1 MiB has room for the first chunks of a 2 MiB put, not for all of them.
    store = open_store(
        datasets=DATASETS,
        put_chunk_bytes=16 * FRAME,
        hot_capacity_bytes=8 << 20,
        map_size_bytes=1 << 20,
    )
    with pytest.raises(HotTierFull, match="plain/big needs about"):
        store.put("plain", "big", payload(2 << 20, 9))
    assert staged(store) == {}
    assert hot_frame_counts(store) == {}
    assert store.put("plain", "small", b"fits").size == 4  # and the store goes on


def tight_map_store(open_store: StoreFactory, **overrides: Any) -> Store:
    """A store with an 8 MiB map (a 4 KiB frame and its checksum take two pages) far
    below its watermark (capacity 64 MiB), staging puts 64 KiB at a time."""
    return open_store(
        datasets=DATASETS,
        put_chunk_bytes=16 * FRAME,
        hot_capacity_bytes=64 << 20,
        map_size_bytes=8 << 20,
        **overrides,
    )


def tight_store(open_store: StoreFactory, **overrides: Any) -> tuple[Store, dict[str, bytes]]:
    """A :func:`tight_map_store` that four 256 KiB shards fill a quarter of; and them."""
    store = tight_map_store(open_store, **overrides)
    old = {f"old/{i}": payload(256 << 10, i) for i in range(4)}
    for name, data in old.items():
        store.put("plain", name, data)
    return store, old


def test_a_chunk_that_finds_no_room_evicts_archived_shards_and_goes_on(
    open_store: StoreFactory,
) -> None:
    # Staged frames are in no hot-bytes count: below the watermark, nothing made room
    # for a 3.5 MiB put (7 MiB of pages) beside the archived shards.
    store, old = tight_store(open_store)
    assert store.drain(10)
    data = payload(3584 << 10, 9)
    assert store.put("plain", "big", data).size == len(data)
    assert store.get("plain", "big").to_bytes() == data
    evicted = [name for name in old if not store.stat("plain", name).hot]
    assert evicted, "no archived shard was evicted for the put"
    for name, kept in old.items():  # every one still reads, from either tier
        assert store.get("plain", name).to_bytes() == kept
    assert staged(store) == {}


def test_a_put_of_one_transaction_that_finds_no_room_evicts_archived_shards_as_a_chunk_does(
    open_store: StoreFactory,
) -> None:
    # Below the watermark, pages the hot-bytes count leaves out (a 4 KiB frame and its
    # checksum take two) filled the map: a staged put's chunk evicted archived shards
    # and went in, while a smaller put of one transaction failed HotTierFull, again and
    # again, beside the same evictable shards.
    store = open_store(
        datasets=DATASETS,
        put_chunk_bytes=128 * FRAME,
        hot_capacity_bytes=64 << 20,
        map_size_bytes=8 << 20,
    )
    old = {f"old/{i}": payload(1 << 20, i) for i in range(3)}
    old["old/3"] = payload(512 << 10, 3)
    for name, data in old.items():
        store.put("plain", name, data)
    assert store.drain(10)
    small = payload(120 * FRAME, 9)  # 240 pages; fewer are free
    assert store.put("plain", "small", small).size == len(small)
    assert store.get("plain", "small").to_bytes() == small
    assert any(not store.stat("plain", name).hot for name in old), "nothing was evicted"
    for name, kept in old.items():  # every one still reads, from either tier
        assert store.get("plain", name).to_bytes() == kept
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual


def test_a_put_of_one_transaction_larger_than_the_map_evicts_nothing(
    open_store: StoreFactory,
) -> None:
    # No eviction makes room for what the map can never hold: it fails at once.
    store = open_store(datasets=DATASETS, hot_capacity_bytes=8 << 20, map_size_bytes=2 << 20)
    for index in range(2):
        store.put("plain", f"old/{index}", payload(256 << 10, index))
    assert store.drain(10)
    with pytest.raises(HotTierFull, match="plain/huge needs about"):
        store.put("plain", "huge", payload(3 << 20, 9))
    assert all(store.stat("plain", f"old/{index}").hot for index in range(2))


def test_a_chunk_with_nothing_evictable_fails_hot_tier_full_and_drops_the_put(
    open_store: StoreFactory,
) -> None:
    # The same shards, not archived (no mover): eviction frees nothing, so the put
    # fails rather than wait on it.
    store, old = tight_store(open_store, start_mover=False)
    with pytest.raises(HotTierFull, match="plain/big needs about"):
        store.put("plain", "big", payload(3584 << 10, 9))
    assert staged(store) == {}
    assert all(store.stat("plain", name).hot for name in old)


def test_a_chunk_that_needs_the_only_archived_shard_evicts_it_and_goes_on(
    open_store: StoreFactory,
) -> None:
    # LMDB reuses the pages a transaction freed only from the second transaction after
    # it: the chunk's retry right after the eviction found them not yet free.
    store = tight_map_store(open_store)
    old = payload(3 << 20, 1)  # 6 MiB of pages: the big put fits only in its place
    store.put("plain", "old", old)
    assert store.drain(10)
    data = payload(3 << 20, 9)
    assert store.put("plain", "big", data).size == len(data)
    assert not store.stat("plain", "old").hot
    assert store.get("plain", "old").to_bytes() == old  # from the archive
    assert store.get("plain", "big").to_bytes() == data
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual
    assert staged(store) == {}


def test_a_dead_readers_snapshot_never_costs_a_staged_put_an_eviction(
    open_store: StoreFactory,
) -> None:
    # A killed local reader's snapshot keeps the pages a delete freed after it from
    # reuse: the chunk finds the map full, the dead slot is freed, and the chunk is
    # tried again as it is, not after evicting a shard for room that is already there.
    store = tight_map_store(open_store)
    store.put("plain", "keep", payload(256 << 10, 2))
    store.put("plain", "x", payload(3 << 20, 1))
    assert store.drain(10)
    killed_reader(hot_tier_dir(store.settings.data_dir))
    store.delete("plain", "x")
    assert store.drain(10)
    data = payload(3 << 20, 9)
    assert store.put("plain", "big", data).size == len(data)
    assert store.stat("plain", "keep").hot
    assert store.get("plain", "big").to_bytes() == data
