"""Promotion through the store (tierstore/engine/promotion.py): what a cold read
fetches and promotes, a damaged archive copy kept out, cache fills and stop.

The archive is a MemoryTier, wrapped in a FaultyTier where a test needs to see
(or hold) what a read or a promotion fetched.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.backdoor import catalog_hot_bytes, record_of
from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import FRAME, StoreFactory, payload, wait_until
from tierstore.engine.records import archive_frames_key
from tierstore.errors import IntegrityError
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings

PLAIN = {"plain": DatasetSettings(), "enc": DatasetSettings(encrypted=True)}


def test_cold_reads_fetch_only_the_frames_they_need(open_store: StoreFactory) -> None:
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets=PLAIN)
    data = payload(6 * FRAME, 3)
    info = store.put("enc", "s", data)
    assert store.drain(10)
    store.evict("enc", "s")
    key = archive_frames_key("enc", info.generation)
    stored_frame = FRAME + 16
    # The promotion's own fetches wait until the test is done with its reads.
    archive.hold_reads(key, threads_named="tierstore-promote-fetch")

    def reader_gets(since: int) -> list[tuple[int, int] | None]:
        """The ranges the reads (not the promotion) got since log entry ``since``."""
        log = archive.get_log[since:]
        return sorted(span for _, span, thread in log if not thread.startswith("tierstore-promote"))

    mark = len(archive.get_log)
    assert (
        store.get("enc", "s", byte_range=(2 * FRAME + 10, 100)).to_bytes()
        == (data[2 * FRAME + 10 : 2 * FRAME + 110])
    )
    assert reader_gets(mark) == [(2 * stored_frame, stored_frame)]  # one ranged GET, one frame
    mark = len(archive.get_log)
    assert store.get("enc", "s", frame_range=(4, 2)).to_bytes() == data[4 * FRAME :]
    assert reader_gets(mark) == [(4 * stored_frame, stored_frame), (5 * stored_frame, stored_frame)]
    assert not store.stat("enc", "s").hot
    # The partial reads queued one promotion, which fetches every frame once, in
    # parallel ranged GETs.
    assert archive.read_waiting.wait(10), "no promotion was queued"
    archive.release_reads()
    wait_until(lambda: store.stat("enc", "s").hot, "promotion after a partial cold read")
    promotion_gets = archive.gets_by("tierstore-promote-fetch")
    assert sorted(promotion_gets, key=lambda get: get[1] or (-1, 0)) == [
        (key, (index * stored_frame, stored_frame)) for index in range(6)
    ]
    archive.gets.clear()
    read = store.get("enc", "s")
    assert read.source == "hot" and read.to_bytes() == data
    assert archive.gets == []
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual


def test_a_whole_cold_read_promotes_with_the_bytes_in_hand(open_store: StoreFactory) -> None:
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets=PLAIN)
    data = payload(4 * FRAME + 1, 4)
    store.put("plain", "s", data)
    assert store.drain(10)
    freed = store.evict("plain", "s")
    assert freed == len(data) + 5 * 8
    assert store.evict("plain", "s") == 0  # already cold
    archive.gets.clear()
    read = store.get("plain", "s")
    assert read.source == "archive" and read.to_bytes() == data
    wait_until(lambda: store.stat("plain", "s").hot, "promotion after a whole cold read")
    assert all(entry[1] is not None for entry in archive.gets)  # no whole-object GET
    assert store.get("plain", "s").source == "hot"


def test_a_bad_archive_object_is_never_promoted(open_store: StoreFactory) -> None:
    archive = MemoryTier()
    store = open_store(archive, datasets=PLAIN)
    store.put("enc", "s", payload(3 * FRAME, 5))
    assert store.drain(10)
    store.evict("enc", "s")
    record = record_of(store, "enc", "s")
    key = archive_frames_key("enc", record.generation)
    blob = bytearray(archive.get(key) or b"")
    blob[-1] ^= 0xFF  # in the last frame
    archive.put(key, bytes(blob))
    assert store.get("enc", "s", frame_range=(0, 2)).nbytes == 2 * FRAME  # good frames read
    with pytest.raises(IntegrityError):
        store.promoter.promote_now(record, None)  # what the queued promotion does
    assert not store.stat("enc", "s").hot
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual


def test_cache_fills_take_no_prefetch_budget_and_stop_forgets_the_queued(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    archive = MemoryTier()
    first = open_store(archive, data_dir=tmp_path / "d", datasets=PLAIN)
    for name in ("f", "p"):
        first.put("plain", name, payload(2 * FRAME, 5))
    assert first.drain(10)
    first.close()
    # Reopened with its mover not started: whatever is queued stays queued.
    store = open_store(archive, data_dir=tmp_path / "d", start_mover=False)
    for name in ("f", "p"):
        store.evict("plain", name)
    assert store.get("plain", "f").source == "archive"  # fetched whole: a cache fill
    assert store.promoter.promotions_pending() == 1
    assert store.promoter.in_flight() == (0, 0)  # it fetches nothing: no prefetch budget
    assert store.prefetch("plain", ["p"]) == 1  # a promotion that fetches
    count, size = store.promoter.in_flight()
    assert count == 1 and size > 2 * FRAME
    store.mover.stop()  # never run: both are forgotten, so no reader waits for them
    assert store.promoter.promotions_pending() == 0
