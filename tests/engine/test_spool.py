"""Promotions of shards larger than ``promotion_chunk_bytes``, staged a chunk at a time.

Each test holds the promotion's archive reads after its first chunk, so it can look
at (and change, or snapshot) the store while frames are staged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.engine.backdoor import (
    catalog_hot_bytes,
    hot_frame_counts,
    put_raw_record,
    record_of,
)
from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import FRAME, StoreFactory, payload, wait_until
from tests.engine.test_disk_reserve import full_disk
from tierstore.engine import spool
from tierstore.engine.catalog import Catalog
from tierstore.engine.records import archive_frames_key
from tierstore.engine.spool import chunks
from tierstore.engine.store import Store, hot_tier_dir
from tierstore.errors import HotTierFull, IntegrityError
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings

STORED_FRAME = FRAME + 8  # a plaintext frame and its checksum
FRAMES = 10
CHUNK_FRAMES = 3


@pytest.mark.parametrize(
    ("sizes", "limit", "expected"),
    [
        ([], 10, []),
        ([4, 4, 4, 4, 4], 8, [range(0, 2), range(2, 4), range(4, 5)]),
        ([4, 4, 4], 100, [range(0, 3)]),
        ([20, 4, 20], 8, [range(0, 1), range(1, 2), range(2, 3)]),  # too large: alone
        ([3, 3, 3, 1], 9, [range(0, 3), range(3, 4)]),
    ],
)
def test_chunks_cover_every_frame_in_order_within_the_limit(
    sizes: list[int], limit: int, expected: list[range]
) -> None:
    assert chunks(sizes, limit) == expected


def staging_store(open_store: StoreFactory, archive: FaultyTier, **overrides: object) -> Store:
    return open_store(
        archive,
        datasets={"plain": DatasetSettings()},
        promotion_chunk_bytes=CHUNK_FRAMES * STORED_FRAME,
        **overrides,
    )


def start_staging(store: Store, archive: FaultyTier, name: str, data: bytes) -> int:
    """Put ``name``, archive and evict it, then have a ranged read queue its promotion,
    whose archive reads are held after the first chunk; returns its generation."""
    generation = store.put("plain", name, data).generation
    assert store.drain(10)
    store.evict("plain", name)
    archive.hold_reads(
        archive_frames_key("plain", generation),
        threads_named="tierstore-promote-fetch",
        from_offset=CHUNK_FRAMES * STORED_FRAME,
    )
    assert store.get("plain", name, byte_range=(5, 10)).to_bytes() == data[5:15]
    assert archive.read_waiting.wait(10), "the promotion did not reach its second chunk"
    return generation


def staged(store: Store) -> dict[int, int]:
    with store._env.read() as txn:
        return store._catalog.staged(txn)


def test_a_large_promotion_is_staged_a_chunk_at_a_time_and_turns_hot_whole(
    open_store: StoreFactory,
) -> None:
    archive = FaultyTier(MemoryTier())
    store = staging_store(open_store, archive)
    data = payload(FRAMES * FRAME, 1)
    generation = start_staging(store, archive, "big", data)
    # The first chunk is committed, but the shard stays cold until every frame is in:
    # reads go to the archive and see the whole shard.
    assert staged(store) == {generation: FRAMES}
    assert hot_frame_counts(store) == {generation: CHUNK_FRAMES}
    assert not store.stat("plain", "big").hot
    read = store.get("plain", "big")
    assert read.source == "archive" and read.to_bytes() == data
    archive.release_reads()
    wait_until(lambda: store.stat("plain", "big").hot, "the staged promotion")
    assert staged(store) == {}
    assert hot_frame_counts(store) == {generation: FRAMES}
    read = store.get("plain", "big")
    assert read.source == "hot" and read.to_bytes() == data
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual == FRAMES * STORED_FRAME
    # Each frame was fetched once by the promotion.
    promotion_gets = sorted(span for _, span in archive.gets_by("tierstore-promote-fetch"))
    assert promotion_gets == [(i * STORED_FRAME, STORED_FRAME) for i in range(FRAMES)]


def test_a_shard_overwritten_while_staged_leaves_no_staged_frame_behind(
    open_store: StoreFactory,
) -> None:
    archive = FaultyTier(MemoryTier())
    store = staging_store(open_store, archive)
    old = start_staging(store, archive, "big", payload(FRAMES * FRAME, 2))
    newer = payload(2 * FRAME, 3)
    new = store.put("plain", "big", newer).generation
    archive.release_reads()
    wait_until(lambda: store.promoter.promotions_pending() == 0, "the promotion to end")
    assert staged(store) == {}
    assert old not in hot_frame_counts(store)
    assert hot_frame_counts(store) == {new: 2}
    assert store.get("plain", "big").to_bytes() == newer
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual


def test_a_store_opened_after_a_crash_while_staging_drops_the_staged_frames(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    archive = FaultyTier(MemoryTier())
    store = staging_store(open_store, archive)
    data = payload(FRAMES * FRAME, 4)
    generation = start_staging(store, archive, "big", data)
    assert staged(store) == {generation: FRAMES}
    # What a kill -9 now would leave on disk: LMDB's last committed transaction.
    crashed = tmp_path / "crashed"
    hot_tier_dir(crashed).mkdir(parents=True)
    store._env.env.copy(str(hot_tier_dir(crashed)))
    archive.release_reads()
    store.close()

    reopened = open_store(archive, data_dir=crashed)
    assert staged(reopened) == {}
    assert hot_frame_counts(reopened) == {}
    assert not reopened.stat("plain", "big").hot
    counter, actual = catalog_hot_bytes(reopened)
    assert counter == actual == 0
    assert reopened.get("plain", "big").to_bytes() == data


def test_deleting_a_damaged_record_leaves_staged_frames_to_their_promotion(
    open_store: StoreFactory,
) -> None:
    """The repair deletes the frames no record claims, and takes their size off the
    hot-bytes counter. Staged frames whose shard was deleted meanwhile are not hot
    bytes: their promotion drops them, the repair must not count them."""
    archive = FaultyTier(MemoryTier())
    store = staging_store(open_store, archive)
    kept = payload(2 * FRAME, 5)
    store.put("plain", "kept", kept)
    store.put("plain", "damaged", b"x" * 100)
    generation = start_staging(store, archive, "big", payload(FRAMES * FRAME, 6))
    store.delete("plain", "big")
    put_raw_record(store, "plain", "damaged", b"not a record")
    store.delete("plain", "damaged")
    assert hot_frame_counts(store)[generation] == CHUNK_FRAMES  # still its promotion's
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual == 2 * STORED_FRAME
    archive.release_reads()
    wait_until(lambda: store.promoter.promotions_pending() == 0, "the promotion to end")
    assert generation not in hot_frame_counts(store)
    assert staged(store) == {}
    assert store.get("plain", "kept").to_bytes() == kept
    assert catalog_hot_bytes(store) == (2 * STORED_FRAME, 2 * STORED_FRAME)


def test_a_bad_frame_after_the_first_chunk_drops_what_was_staged(
    open_store: StoreFactory,
) -> None:
    archive = MemoryTier()
    store = open_store(
        archive,
        datasets={"plain": DatasetSettings()},
        promotion_chunk_bytes=CHUNK_FRAMES * STORED_FRAME,
    )
    info = store.put("plain", "big", payload(FRAMES * FRAME, 7))
    assert store.drain(10)
    store.evict("plain", "big")
    key = archive_frames_key("plain", info.generation)
    blob = bytearray(archive.get(key) or b"")
    blob[-1] ^= 0xFF  # in the last frame, of the last chunk
    archive.put(key, bytes(blob))
    with pytest.raises(IntegrityError):
        store.promoter.promote_now(record_of(store, "plain", "big"), None)
    assert staged(store) == {}
    assert hot_frame_counts(store) == {}
    assert not store.stat("plain", "big").hot


def test_a_shard_of_one_chunk_of_payload_is_promoted_in_one_transaction(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks count payload bytes: a 64 MiB shard of 4 MiB frames was staged in two
    # transactions for its 8-byte checksums (the engine benchmark's shards).
    store = open_store(
        MemoryTier(),
        datasets={"plain": DatasetSettings()},
        promotion_chunk_bytes=CHUNK_FRAMES * FRAME,
    )
    data = payload(CHUNK_FRAMES * FRAME, 8)
    store.put("plain", "whole", data)
    assert store.drain(10)
    store.evict("plain", "whole")

    def staged_anyway(*args: Any) -> Any:
        raise AssertionError("a shard of one chunk was staged")

    monkeypatch.setattr(spool.Spooler, "stage", staged_anyway)
    assert store.promoter.promote_now(record_of(store, "plain", "whole"), None)
    assert store.get("plain", "whole").to_bytes() == data


def test_a_marker_left_by_a_failed_drop_never_costs_a_hot_shard_its_frames(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staging fails and so does the drop of what it staged (best effort: the next
    open drops it); a cache fill then turns the generation hot. The reopened store
    must keep the hot shard's frames."""
    archive = FaultyTier(MemoryTier())
    store = staging_store(open_store, archive)
    data = payload(FRAMES * FRAME, 8)
    generation = start_staging(store, archive, "big", data)
    real_drop = spool.drop_staged_in

    def failing_once(*args: Any) -> int:
        monkeypatch.setattr(spool, "drop_staged_in", real_drop)
        raise HotTierFull("injected: the drop's write transaction failed")

    monkeypatch.setattr(spool, "drop_staged_in", failing_once)
    archive.failing = True  # the held chunk fails
    archive.release_reads()
    wait_until(lambda: store.promoter.promotions_pending() == 0, "the promotion to fail")
    archive.failing = False
    assert staged(store) == {generation: FRAMES}  # the drop failed
    assert store.get("plain", "big").to_bytes() == data  # whole: a cache fill
    wait_until(lambda: store.stat("plain", "big").hot, "the cache fill")
    assert staged(store) == {}  # the commit that turned it hot took the marker
    data_dir = store.settings.data_dir
    store.close()
    reopened = open_store(archive, data_dir=data_dir)
    read = reopened.get("plain", "big")
    assert read.source == "hot" and read.to_bytes() == data


def test_an_open_keeps_the_frames_of_a_hot_generation_a_marker_names(
    open_store: StoreFactory,
) -> None:
    """As a store written before markers were dropped on every hot commit may hold."""
    store = open_store(datasets={"plain": DatasetSettings()})
    data = payload(4 * FRAME, 9)
    generation = store.put("plain", "s", data).generation
    with store._env.write() as txn:
        store._catalog.mark_staging(txn, generation, 4)
    data_dir = store.settings.data_dir
    store.close()
    reopened = open_store(data_dir=data_dir)
    assert staged(reopened) == {}
    read = reopened.get("plain", "s")
    assert read.source == "hot" and read.to_bytes() == data


def test_a_shard_larger_than_the_high_watermark_is_never_fetched_for_promotion(
    open_store: StoreFactory,
) -> None:
    archive = FaultyTier(MemoryTier())
    larger = staging_store(open_store, archive)
    larger.put("plain", "big", payload(FRAMES * FRAME, 10))
    assert larger.drain(10)
    larger.evict("plain", "big")
    # A put larger than the hot tier is refused: the tier shrank since.
    store = open_store.reopen(
        larger,
        archive,
        promotion_chunk_bytes=CHUNK_FRAMES * STORED_FRAME,
        hot_capacity_bytes=8 * STORED_FRAME,
    )
    skipped = store.promoter.promotions_skipped
    assert not store.promoter.promote_now(record_of(store, "plain", "big"), None)
    assert store.promoter.promotions_skipped == skipped + 1
    assert archive.gets_by("tierstore-promote-fetch") == []
    assert staged(store) == {} and hot_frame_counts(store) == {}


def test_a_cold_whole_read_fills_the_cache_a_chunk_at_a_time_from_the_frames_it_read(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The read has every frame in hand: the fill writes them a chunk a transaction (LMDB's
    # copy is one chunk in memory, not the shard again) and fetches nothing more.
    archive = FaultyTier(MemoryTier())
    store = staging_store(open_store, archive)
    data = payload(FRAMES * FRAME, 7)
    generation = store.put("plain", "big", data).generation
    assert store.drain(10)
    store.evict("plain", "big")
    chunks_written: list[int] = []
    mark_staging = Catalog.mark_staging

    def counting(catalog: Catalog, txn: Any, staged_generation: int, frame_count: int) -> None:
        chunks_written.append(staged_generation)
        mark_staging(catalog, txn, staged_generation, frame_count)

    monkeypatch.setattr(Catalog, "mark_staging", counting)
    read = store.get("plain", "big")
    assert read.source == "archive" and read.to_bytes() == data
    wait_until(lambda: store.stat("plain", "big").hot, "the cache fill")
    assert chunks_written == [generation]  # staged, not one transaction
    assert staged(store) == {}
    assert hot_frame_counts(store) == {generation: FRAMES}
    assert archive.gets_by("tierstore-promote-fetch") == []
    read = store.get("plain", "big")
    assert read.source == "hot" and read.to_bytes() == data
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual == FRAMES * STORED_FRAME


def test_a_promotion_that_finds_the_disk_full_mid_staging_drops_what_it_staged(
    open_store: StoreFactory,
) -> None:
    # Dropping staged frames needs new pages before it frees any, as a delete does: on
    # a full disk the drop failed too, and the frames stayed in the map, dead, until the
    # next open. It gives the disk reserve back and commits, as a put's drop does.
    archive = FaultyTier(MemoryTier())
    store = staging_store(open_store, archive, disk_reserve_bytes=1 << 20)
    generation = start_staging(store, archive, "big", payload(FRAMES * FRAME, 4))
    assert staged(store) == {generation: FRAMES}
    full_disk(store)  # full while the reserve is held
    archive.release_reads()
    wait_until(lambda: store.promoter.promotions_pending() == 0, "the promotion to end")
    assert staged(store) == {}
    assert generation not in hot_frame_counts(store)
    assert not store.disk_reserve.held
    assert not store.stat("plain", "big").hot
