"""The Store façade: datasets, writes, reads, ranges, listing, zero copy, concurrency, restart.

Most tests use a MemoryTier archive (the ``store`` fixture holds the datasets
plain, enc, wt and wt-enc); the last one writes through to the real SeaweedFS.
Bad input, master keys, archive and disk failures, the mover and tampering have
test modules of their own.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import raw_s3_client
from tests.engine.backdoor import (
    catalog_hot_bytes,
    data_file,
    flip,
    hot_frames,
    put_hot_frame,
    raw_frame_address,
    record_of,
)
from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import (
    DATASETS,
    FRAME,
    KEYRING,
    OTHER_KEYRING,
    StoreFactory,
    payload,
    wait_until,
)
from tests.forking import exit_code_of_child_forked_while_held
from tierstore import arrowio
from tierstore.crypto import TAG_BYTES
from tierstore.engine.records import (
    JournalOp,
    ShardRecord,
    archive_dataset_key,
    archive_frames_key,
    archive_manifest_key,
    decode_dataset,
    encode_dataset,
    first_generation_of,
    frame_key,
)
from tierstore.engine.store import Store
from tierstore.errors import (
    AlreadyExists,
    ArchiveUnavailable,
    BacklogFull,
    DatasetNotFound,
    EncryptionUnavailable,
    FailedPrecondition,
    IntegrityError,
    ShardNotFound,
    StoreClosed,
    TierstoreError,
    WrongShardKind,
)
from tierstore.frames import CHECKSUM_BYTES
from tierstore.tiers.memory import MemoryTier
from tierstore.tiers.s3 import S3Tier
from tierstore.types import DatasetSettings, Durability, ShardInfo, ShardKind

ALL_DATASETS = list(DATASETS)
SIZES = [0, 1, FRAME - 1, FRAME, FRAME + 1, 3 * FRAME, 5 * FRAME + 123]


def overhead(dataset: str) -> int:
    return 16 if DATASETS[dataset].encrypted else 8


def archive_keys(archive: MemoryTier) -> set[str]:
    return set(archive.list(limit=100_000).keys)


# Datasets.


def test_datasets_are_created_listed_and_deleted(open_store: StoreFactory) -> None:
    archive = MemoryTier()
    store = open_store(archive)
    settings = DatasetSettings(encrypted=True, durability=Durability.WRITE_THROUGH)
    store.create_dataset("b-set", settings)
    store.create_dataset("a-set")
    assert store.get_dataset("b-set") == settings
    assert store.get_dataset("a-set") == DatasetSettings()
    assert [name for name, _ in store.list_datasets()] == ["a-set", "b-set"]
    assert store.dataset_names() == ["a-set", "b-set"]
    page, after = store.dataset_page(None, 1, shown=lambda name: True)
    assert page == [("a-set", DatasetSettings())] and after == "a-set"
    assert store.dataset_page(after, 1, shown=lambda name: True) == ([("b-set", settings)], None)
    assert store.dataset_page(None, 5, shown=lambda name: name != "a-set")[0][0][0] == "b-set"
    with pytest.raises(AlreadyExists):
        store.create_dataset("a-set", settings)
    assert store.get_dataset("a-set") == DatasetSettings()  # unchanged by the failed create
    assert store.drain(10)
    assert {archive_dataset_key("a-set"), archive_dataset_key("b-set")} <= archive_keys(archive)

    store.put("a-set", "x", b"data")
    with pytest.raises(FailedPrecondition, match="holds 1 shard;"):
        store.delete_dataset("a-set")
    assert store.get("a-set", "x").to_bytes() == b"data"
    store.delete_dataset("a-set", force=True)
    with pytest.raises(DatasetNotFound):
        store.get_dataset("a-set")
    with pytest.raises(DatasetNotFound):
        store.delete_dataset("a-set")
    assert [name for name, _ in store.list_datasets()] == ["b-set"]
    assert store.dataset_names() == ["b-set"]
    assert store.drain(10)
    assert not any(key.startswith("a-set/") for key in archive_keys(archive))
    assert catalog_hot_bytes(store) == (0, 0)


def test_encrypted_dataset_needs_a_master_key(open_store: StoreFactory) -> None:
    store = open_store(keyring=None)
    with pytest.raises(EncryptionUnavailable):
        store.create_dataset("enc", DatasetSettings(encrypted=True))
    with pytest.raises(DatasetNotFound):
        store.get_dataset("enc")
    store.create_dataset("plain")
    store.put("plain", "x", b"still works")
    assert store.get("plain", "x").to_bytes() == b"still works"


# Writes and whole reads.


@pytest.mark.parametrize("dataset", ALL_DATASETS)
@pytest.mark.parametrize("size", SIZES)
def test_bytes_roundtrip(store: Store, dataset: str, size: int) -> None:
    data = payload(size, seed=size)
    info = store.put(dataset, "dir/blob.bin", data)
    assert info.kind is ShardKind.RAW and info.size == size
    assert all(0 < s <= FRAME for s in info.frame_sizes)
    assert info.frame_count == -(-size // FRAME)
    assert info.encrypted == DATASETS[dataset].encrypted
    assert info.hot
    assert info.archived == (DATASETS[dataset].durability is Durability.WRITE_THROUGH)
    read = store.get(dataset, "dir/blob.bin")
    assert read.to_bytes() == data
    assert read.source == "hot" and read.first_frame == 0 and read.nbytes == size
    assert read.info.generation == info.generation
    assert store.stat(dataset, "dir/blob.bin").frame_sizes == info.frame_sizes


@pytest.mark.parametrize(
    "wrap",
    [bytes, bytearray, memoryview, pa.py_buffer, lambda b: np.frombuffer(b, np.uint8)],
    ids=["bytes", "bytearray", "memoryview", "pa.Buffer", "numpy"],
)
def test_bytes_like_inputs(store: Store, wrap: Callable[[bytes], Any]) -> None:
    data = payload(2 * FRAME + 5)
    info = store.put("plain", "x", wrap(data))
    expected_kind = ShardKind.TENSOR if isinstance(wrap(b""), np.ndarray) else ShardKind.RAW
    assert info.kind is expected_kind
    if expected_kind is ShardKind.RAW:
        assert store.get("plain", "x").to_bytes() == data
    else:
        assert store.read_tensor("plain", "x").tobytes() == data


@pytest.mark.parametrize("dataset", ["plain", "enc"])
def test_arrow_tables_and_tensors(store: Store, dataset: str) -> None:
    table = pa.table(
        {"id": pa.array(range(3000), pa.int64()), "label": [f"row {i}" for i in range(3000)]}
    )
    info = store.put(dataset, "table", table)
    assert info.kind is ShardKind.ARROW and info.frame_count > 2  # a schema and many batches
    assert info.rows == 3000 and store.stat(dataset, "table").rows == 3000
    assert store.read_table(dataset, "table").equals(table)
    assert store.read_table(dataset, "table", columns=["label"]).equals(table.select(["label"]))
    batch = table.to_batches()[0].slice(0, 10)
    assert store.put(dataset, "batch", batch).rows == 10
    assert store.read_table(dataset, "batch").equals(pa.Table.from_batches([batch]))
    assert store.put(dataset, "empty", table.slice(0, 0)).rows == 0

    array = np.arange(3 * 50 * 40, dtype=np.float32).reshape(3, 50, 40)
    tensor_info = store.put(dataset, "tensor", array)
    assert tensor_info.kind is ShardKind.TENSOR and tensor_info.rows is not None
    back = store.read_tensor(dataset, "tensor")
    assert back.dtype == array.dtype and np.array_equal(back, array)

    with pytest.raises(WrongShardKind):
        store.read_tensor(dataset, "table")
    assert store.put(dataset, "raw", b"raw bytes").rows is None  # raw bytes have no rows
    with pytest.raises(WrongShardKind):
        store.read_table(dataset, "raw")


def test_torch_tensor_roundtrip(store: Store) -> None:
    torch = pytest.importorskip("torch")
    tensor = torch.arange(600, dtype=torch.int16).reshape(20, 30)
    store.put("enc", "t", tensor)
    back = store.read_tensor("enc", "t")
    assert isinstance(back, torch.Tensor) and torch.equal(back, tensor)


def test_put_frames_keeps_the_client_framing(store: Store) -> None:
    frames = [b"a" * 10, b"b" * FRAME, b"", b"c" * 7]
    info = store.put_frames("enc", "pre-framed", ShardKind.RAW, frames)
    assert info.frame_sizes == (10, FRAME, 0, 7)
    assert store.get("enc", "pre-framed").to_bytes() == b"".join(frames)
    assert store.get("enc", "pre-framed", frame_range=(1, 1)).to_bytes() == b"b" * FRAME

    table = pa.table({"x": list(range(2000))})
    arrow_frames = arrowio.table_to_frames(table, FRAME)
    info = store.put_frames("plain", "arrow", ShardKind.ARROW, arrow_frames)
    assert info.kind is ShardKind.ARROW and info.rows == 2000
    assert store.put_frames("plain", "raw", ShardKind.RAW, frames).rows is None
    assert store.read_table("plain", "arrow").equals(table)


@pytest.mark.parametrize("dataset", ["plain", "enc"])
@pytest.mark.parametrize("cold", [False, True], ids=["hot", "cold"])
def test_a_whole_read_keeps_empty_frames_at_the_edges(
    store: Store, dataset: str, cold: bool
) -> None:
    frames = [b"", b"a" * 10, b"", b"b" * 7, b""]
    store.put_frames(dataset, "edges", ShardKind.RAW, frames)
    if cold:
        assert store.drain(10)
        assert store.evict(dataset, "edges") > 0
    read = store.get(dataset, "edges")
    assert read.source == ("archive" if cold else "hot")
    assert [bytes(memoryview(frame)) for frame in read.frames] == frames
    assert read.first_frame == 0
    assert [bytes(memoryview(f)) for f in store.iter_frames(dataset, "edges")] == frames
    # A byte range is over the shard's bytes: it names no frame it holds no byte of.
    assert store.get(dataset, "edges", byte_range=(0, 17)).first_frame == 1


def test_a_cold_whole_read_of_empty_edge_frames_fills_the_cache_from_what_it_read(
    open_store: StoreFactory,
) -> None:
    # Read as the byte range it covers, the read lacked the empty frames, so it did not
    # count as whole: the promotion fetched the shard from the archive once more.
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets={"plain": DatasetSettings()})
    frames = [b"", b"a" * 10, b""]
    store.put_frames("plain", "edges", ShardKind.RAW, frames)
    assert store.drain(10)
    store.evict("plain", "edges")
    assert store.get("plain", "edges").source == "archive"
    wait_until(lambda: store.stat("plain", "edges").hot, "the cache fill")
    assert archive.gets_by("tierstore-promote-fetch") == []
    read = store.get("plain", "edges")
    assert read.source == "hot" and [bytes(memoryview(f)) for f in read.frames] == frames


# Ranges.


@pytest.mark.parametrize("dataset", ["plain", "enc"])
@pytest.mark.parametrize("cold", [False, True], ids=["hot", "cold"])
def test_byte_and_frame_ranges(store: Store, dataset: str, cold: bool) -> None:
    data = payload(5 * FRAME + 100, seed=3)
    store.put(dataset, "r", data)
    if cold:
        assert store.drain(10)
        assert store.evict(dataset, "r") > 0
    cases = [(0, 1), (FRAME - 1, 2), (FRAME, FRAME), (100, 3 * FRAME), (len(data) - 5, 100)]
    for offset, length in cases:
        read = store.get(dataset, "r", byte_range=(offset, length))
        assert read.to_bytes() == data[offset : offset + length]
        assert read.first_frame == offset // FRAME
    assert store.get(dataset, "r", byte_range=(len(data), 10)).to_bytes() == b""
    assert store.get(dataset, "r", byte_range=(7, 0)).nbytes == 0
    read = store.get(dataset, "r", frame_range=(2, 2))
    assert read.to_bytes() == data[2 * FRAME : 4 * FRAME] and read.first_frame == 2
    assert store.get(dataset, "r", frame_range=(5, 9)).to_bytes() == data[5 * FRAME :]
    assert store.get(dataset, "r", frame_range=(6, 1)).to_bytes() == b""
    out = bytearray(b"\xee" * 20)
    assert store.get_into(dataset, "r", memoryview(out), byte_range=(FRAME - 5, 10)) == 10
    assert out == data[FRAME - 5 : FRAME + 5] + b"\xee" * 10


# Overwrite, delete, list.


@pytest.mark.parametrize("dataset", ["plain", "enc"])
def test_overwrite_makes_a_new_generation_and_drops_the_old(
    store: Store, archive: MemoryTier, dataset: str
) -> None:
    first = store.put(dataset, "s", payload(3 * FRAME, seed=1))
    assert store.drain(10)
    assert archive_frames_key(dataset, first.generation) in archive_keys(archive)
    second = store.put(dataset, "s", payload(FRAME, seed=2))
    assert second.generation > first.generation
    assert store.get(dataset, "s").to_bytes() == payload(FRAME, seed=2)
    assert store.stat(dataset, "s").generation == second.generation
    assert store.drain(10)
    keys = archive_keys(archive)
    assert archive_frames_key(dataset, first.generation) not in keys
    assert archive_manifest_key(dataset, first.generation) not in keys
    assert archive_frames_key(dataset, second.generation) in keys
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual == FRAME + overhead(dataset)
    assert [info.name for info in store.list(dataset)[0]] == ["s"]


@pytest.mark.parametrize("staged", [False, True], ids=["one-transaction", "staged"])
def test_an_overwrite_is_not_refused_for_the_backlog_of_the_generation_it_replaces(
    open_store: StoreFactory, staged: bool
) -> None:
    # With the archive down and the only upload waiting that of the shard being
    # overwritten, the overwrite leaves the backlog as it is (the old generation's
    # upload never runs), yet it was refused BacklogFull whenever the cap was under two
    # shards' worth: a checkpoint saved again and again under one name stopped saving.
    archive = FaultyTier(MemoryTier())
    archive.failing = True
    size = 2 * FRAME + 1000
    store = open_store(
        archive,
        datasets={"plain": DatasetSettings()},
        backlog_cap_bytes=size * 3 // 2,
        put_chunk_bytes=FRAME if staged else 64 << 20,
    )
    store.put("plain", "ckpt", payload(size, 0))
    waiting = store.stats().backlog_bytes
    assert waiting > 0
    for seed in range(1, 4):
        store.put("plain", "ckpt", payload(size, seed))
        assert store.stats().backlog_bytes == waiting
    assert store.get("plain", "ckpt").to_bytes() == payload(size, 3)
    with pytest.raises(BacklogFull):  # a second shard does add to it
        store.put("plain", "other", payload(size, 9))
    assert not store.list("plain", prefix="other")[0]
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual
    archive.failing = False
    assert store.drain(10)
    assert store.stats().backlog_bytes == 0


def test_generations_are_committed_in_the_order_they_are_numbered(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two puts of one shard: the first takes its generation number and is then held
    # up until the second has committed (or for a second, if the second cannot
    # commit meanwhile). The shard's current generation must be its newest number,
    # which a rebuild from the archive takes as current.
    store = open_store(datasets={"plain": DatasetSettings()})
    writer_type = type(store._writer)
    allocate = writer_type._new_generation
    numbered_first = threading.Event()
    second_done = threading.Event()

    def hold_the_first(self: Any, *args: Any) -> int:
        generation = allocate(self, *args)
        if not numbered_first.is_set():
            numbered_first.set()
            second_done.wait(1.0)
        return generation

    monkeypatch.setattr(writer_type, "_new_generation", hold_the_first)
    first_data, second_data = payload(FRAME, 1), payload(FRAME, 2)
    first: list[Any] = []
    putter = threading.Thread(target=lambda: first.append(store.put("plain", "s", first_data)))
    putter.start()
    assert numbered_first.wait(10)
    second = store.put("plain", "s", second_data)
    second_done.set()
    putter.join(10)
    newest = max(first[0], second, key=lambda info: info.generation)
    assert store.stat("plain", "s").generation == newest.generation
    expected = first_data if newest is first[0] else second_data
    assert store.get("plain", "s").to_bytes() == expected


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_put_racing_its_dataset_made_again_with_the_other_sealing_lands_in_the_new_one(
    store: Store, archive: MemoryTier, encrypted: bool
) -> None:
    # The put reads its dataset's settings, then the dataset is deleted and created
    # again, encrypted if it was plain or plain if it was encrypted, before the put's
    # commit. Before, the put sized its frames for the old sealing and failed with a
    # RuntimeError ("sized for another sealing"), writing nothing.
    old, new = DatasetSettings(encrypted=not encrypted), DatasetSettings(encrypted=encrypted)
    store.create_dataset("again", old)
    hot_room = store.hot_room
    make_room = hot_room.make_room
    made_again = []

    def make_the_dataset_again_first(needed: int) -> None:
        if not made_again:
            store.delete_dataset("again", force=True)
            store.create_dataset("again", new)
            made_again.append(True)
        make_room(needed)

    hot_room.make_room = make_the_dataset_again_first  # type: ignore[method-assign]
    data = payload(3 * FRAME, seed=5)
    info = store.put("again", "s", data)
    assert made_again
    assert store.get("again", "s").to_bytes() == data
    assert (record_of(store, "again", "s").envelope is not None) is encrypted
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual
    assert store.drain(10)
    assert archive_frames_key("again", info.generation) in archive_keys(archive)


@pytest.mark.parametrize("evicted", [False, True])
def test_delete_removes_every_tier(store: Store, archive: MemoryTier, evicted: bool) -> None:
    store.put("plain", "keep", b"k")
    info = store.put("plain", "gone", payload(2 * FRAME))
    assert store.drain(10)
    if evicted:
        assert store.evict("plain", "gone") > 0
    store.delete("plain", "gone")
    for operation in (store.get, store.stat, store.delete, store.evict):
        with pytest.raises(ShardNotFound):
            operation("plain", "gone")
    assert store.drain(10)
    keys = archive_keys(archive)
    assert archive_frames_key("plain", info.generation) not in keys
    assert archive_manifest_key("plain", info.generation) not in keys
    assert store.get("plain", "keep").to_bytes() == b"k"
    assert catalog_hot_bytes(store) == (9, 9)
    assert store.stats().backlog_bytes == 0


def test_list_pages_prefixes_and_start_after(store: Store) -> None:
    names = ["a", "a/b", "a/c", "b", "b/a", "c.d", "c/d", "z"]
    for name in names:
        store.put("plain", name, name.encode())
    page, after = store.list("plain")
    assert [i.name for i in page] == sorted(names) and after is None
    assert [i.name for i in store.list("plain", prefix="a/")[0]] == ["a/b", "a/c"]
    assert [i.name for i in store.list("plain", prefix="c")[0]] == ["c.d", "c/d"]
    assert store.list("plain", prefix="q")[0] == []
    assert [i.name for i in store.list("plain", start_after="b")[0]] == ["b/a", "c.d", "c/d", "z"]
    seen: list[str] = []
    after = None
    while True:
        page, after = store.list("plain", start_after=after, limit=3)
        assert len(page) <= 3
        seen.extend(i.name for i in page)
        if after is None:
            break
    assert seen == sorted(names)
    assert store.list("enc")[0] == []


def old_page(
    listed: list[ShardInfo], start_after: str | None, limit: int, budget: int
) -> tuple[list[str], str | None]:
    """A page as the service cut it before the store did: ``limit`` shards after
    ``start_after``, then cut before the shard whose entry passes ``budget`` bytes."""
    after = [info for info in listed if start_after is None or info.name > start_after]
    page, next_start = after[:limit], (after[limit - 1].name if len(after) > limit else None)
    kept: list[str] = []
    for info in page:
        budget -= entry_bytes(info)
        if budget < 0 and kept:
            return kept, kept[-1]
        kept.append(info.name)
    return kept, next_start


def entry_bytes(info: ShardInfo) -> int:
    """A stand-in for a page entry's size: grows with the shard's frames."""
    return 10 + 4 * len(info.frame_sizes)


@pytest.mark.parametrize("limit", [1, 3, 7, 100])
@pytest.mark.parametrize("budget", [1, 30, 61, 100, 10_000])
def test_a_page_bounded_in_bytes_stops_reading_at_its_budget(
    store: Store, limit: int, budget: int
) -> None:
    # The service had the store build a whole page of up to 10,000 shards, each with
    # every frame's size, only to cut it to its answer's budget: memory grew with the
    # page asked for. The pages and their continuations are as they were.
    names = [f"s{i:02d}" for i in range(20)]
    for index, name in enumerate(names):
        store.put("plain", name, payload(FRAME * (1 + index % 4), index))
    listed = store.list("plain", limit=100)[0]
    seen: list[str] = []
    sized: list[str] = []

    def size_of(info: ShardInfo) -> int:
        sized.append(info.name)
        return entry_bytes(info)

    after: str | None = None
    while True:
        sized.clear()
        page, next_start = store.list(
            "plain", start_after=after, limit=limit, max_bytes=budget, size_of=size_of
        )
        names_of_page = [info.name for info in page]
        assert (names_of_page, next_start) == old_page(listed, after, limit, budget)
        # Each shard of the page sized, in order, and at most the one that ended it.
        assert sized[: len(page)] == names_of_page and len(sized) <= len(page) + 1
        seen.extend(names_of_page)
        after = next_start
        if after is None:
            break
    assert seen == names


def test_a_listing_shows_each_shards_reads_as_stat_does(store: Store) -> None:
    for name in ("read", "unread"):
        store.put("plain", name, name.encode())
    for _ in range(2):
        store.get("plain", "read")
    store.mover.flush_access()
    store.get("plain", "read")  # one still pending, not yet flushed
    listed = {info.name: info for info in store.list("plain")[0]}
    assert listed["read"].access_count == store.stat("plain", "read").access_count == 3
    assert listed["read"].last_access == store.stat("plain", "read").last_access > 0
    assert listed["unread"].access_count == 0


def test_long_names_list_in_order_and_page_completely(store: Store) -> None:
    # Catalog keys keep 400 bytes of a long name and add a hash: listing must still be
    # by name, and paging and prefixes must find every shard.
    stem = "d/" + "n" * 450
    names = [stem + f"/{i:02d}" for i in range(12)] + [stem[:405] + "z", stem[:400], "x" * 1024]
    names += ["é" * 300 + f"{i}" for i in range(3)]
    for index, name in enumerate(names):
        store.put("enc", name, index.to_bytes(2, "big"))
    for index, name in enumerate(names):
        assert store.get("enc", name).to_bytes() == index.to_bytes(2, "big")
        assert store.stat("enc", name).name == name
    assert [i.name for i in store.list("enc")[0]] == sorted(names, key=str.encode)
    for limit in (1, 4, 5):
        seen: list[str] = []
        after: str | None = None
        while True:
            page, after = store.list("enc", start_after=after, limit=limit)
            seen.extend(i.name for i in page)
            if after is None:
                break
        assert seen == sorted(names, key=str.encode), f"limit {limit}"
    tail = [i.name for i in store.list("enc", prefix=stem + "/1")[0]]
    assert tail == [stem + f"/{i:02d}" for i in (10, 11)]
    assert len(store.list("enc", prefix=stem[:401])[0]) == 13
    store.delete("enc", names[3])
    assert names[3] not in [i.name for i in store.list("enc")[0]]


# Zero copy and read leases.


def mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges where this process maps ``path`` (from /proc/self/maps)."""
    ranges = []
    target = str(path.resolve())
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, stop = (int(part, 16) for part in fields[0].split("-"))
            ranges.append((start, stop))
    return ranges


def inside(address: int, size: int, ranges: list[tuple[int, int]]) -> bool:
    return any(start <= address and address + size <= stop for start, stop in ranges)


def test_plaintext_hot_reads_are_zero_copy(store: Store) -> None:
    data = payload(3 * FRAME, 9)
    assert store.put("plain", "z", data).frame_count == 3
    first = store.get("plain", "z")
    second = store.get("plain", "z", byte_range=(FRAME + 10, 20))
    assert first.source == "hot"
    raw_address = raw_frame_address(store, "plain", "z", 1)
    assert first.frames[1].address == raw_address  # the frame payload in place
    assert second.frames[0].address == raw_address + 10
    ranges = mapped_ranges(data_file(store))
    assert ranges, "the LMDB data file is not mapped"
    assert all(inside(f.address, f.size, ranges) for f in first.frames)
    assert first.to_bytes() == data
    assert store.stats().live_read_leases == 2

    secret = store.put("enc", "z", data)
    assert secret.encrypted
    decrypted = store.get("enc", "z")
    assert decrypted.source == "hot" and decrypted.to_bytes() == data
    assert not any(inside(f.address, f.size, ranges) for f in decrypted.frames)
    assert all(f.address % 64 == 0 for f in decrypted.frames)
    assert store.stats().live_read_leases == 2  # decrypted reads hold no lease
    del first, second
    gc.collect()
    assert store.stats().live_read_leases == 0


def test_a_sealed_stream_reads_on_from_the_archive_after_its_shard_is_archived_and_evicted(
    open_store: StoreFactory,
) -> None:
    # The stream opens while the shard is hot and not yet archived; the mover then
    # archives it and eviction drops its hot frames. The rest of the stream must come
    # from the archive, not be reported lost.
    archive = FaultyTier(MemoryTier())
    archive.hold_writes()
    store = open_store(archive, datasets={"plain": DatasetSettings()})
    data = payload(3 * FRAME, 8)
    store.put("plain", "s", data)
    sealed = store.open_sealed("plain", "s")
    assert sealed.info.hot and not sealed.info.archived
    stream = sealed.frames()
    first = next(stream)
    archive.release_writes()
    assert store.drain(10)
    store.evict("plain", "s")
    frames = [first, *stream]
    assert [index for index, _ in frames] == [0, 1, 2]
    payloads = [stored[: len(stored) - CHECKSUM_BYTES] for _, stored in frames]
    assert b"".join(payloads) == data
    assert archive.gets  # the last frames came from the archive


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("cold", [False, True])
def test_iter_frames_yields_verified_frames_lazily(store: Store, dataset: str, cold: bool) -> None:
    data = payload(3 * FRAME + 5, 4)
    store.put(dataset, "it", data)
    if cold:
        assert store.drain(10) and store.evict(dataset, "it") > 0
    frames = list(store.iter_frames(dataset, "it"))
    assert b"".join(memoryview(f) for f in frames) == data
    middle = list(store.iter_frames(dataset, "it", frame_range=(1, 2)))
    assert b"".join(memoryview(f) for f in middle) == data[FRAME : 3 * FRAME]
    if dataset == "plain" and not cold:
        assert frames[1].address == raw_frame_address(store, dataset, "it", 1)  # in place
    del frames, middle
    gc.collect()
    assert store.stats().live_read_leases == 0


def test_iter_frames_stops_at_a_damaged_frame(store: Store) -> None:
    data = payload(3 * FRAME, 6)
    store.put("plain", "bad", data)
    generation = store.stat("plain", "bad").generation
    stored = hot_frames(store, "plain", "bad")[2]
    assert stored is not None
    put_hot_frame(store, generation, 2, flip(stored, 3))
    frames = store.iter_frames("plain", "bad")
    assert bytes(memoryview(next(frames))) == data[:FRAME]  # verified frames come first
    assert bytes(memoryview(next(frames))) == data[FRAME : 2 * FRAME]
    with pytest.raises(IntegrityError):
        next(frames)  # the damaged one is never handed out


def test_lease_pool_is_bounded(open_store: StoreFactory) -> None:
    store = open_store(datasets={"plain": DatasetSettings()}, max_read_leases=2)
    data = payload(2 * FRAME, 4)
    store.put("plain", "l", data)
    ranges = mapped_ranges(data_file(store))
    held = [store.get("plain", "l") for _ in range(2)]
    assert all(inside(r.frames[0].address, 1, ranges) for r in held)
    assert store.stats().live_read_leases == 2
    third = store.get("plain", "l")
    assert third.source == "hot" and third.to_bytes() == data
    assert not inside(third.frames[0].address, 1, ranges)  # a private copy
    assert store.stats().live_read_leases == 2
    held.pop()
    gc.collect()
    assert store.stats().live_read_leases == 1
    assert inside(store.get("plain", "l").frames[0].address, 1, ranges)

    del held, third
    gc.collect()
    peak = 0
    stop = threading.Event()
    errors: list[BaseException] = []
    placed = {"in-map": 0, "copied": 0}

    def reader() -> None:
        try:
            for _ in range(200):
                kept = [store.get("plain", "l") for _ in range(3)]
                assert store.stats().live_read_leases <= 2
                assert all(k.to_bytes() == data for k in kept)
                for k in kept:
                    placed["in-map" if inside(k.frames[0].address, 1, ranges) else "copied"] += 1
        except BaseException as exc:
            errors.append(exc)

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, store.stats().live_read_leases)

    watcher = threading.Thread(target=watch)
    watcher.start()
    readers = [threading.Thread(target=reader) for _ in range(4)]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join()
    stop.set()
    watcher.join()
    assert not errors
    assert peak <= 2
    assert placed["in-map"] > 0 and placed["copied"] > 0


@pytest.mark.parametrize("dataset", ["plain", "enc"])
def test_a_failed_hot_read_ends_its_transaction_once(
    open_store: StoreFactory, dataset: str
) -> None:
    # A frame failing its check ended the read's transaction in the hot read and again
    # in its caller: the count close() waits on went below zero, so a close unmapped
    # the map under a read still running (a segfault), or, with none, waited its
    # whole bound, left the map open and kept the directory claimed.
    store = open_store(datasets={dataset: DATASETS[dataset]}, start_mover=False)
    store.put(dataset, "s", payload(3 * FRAME))
    record = record_of(store, dataset, "s")
    with store._env.read() as txn:
        stored = bytes(store._frames.view_in(txn, frame_key(record.generation, 1)))
    put_hot_frame(store, record.generation, 1, flip(stored, 0))
    for _ in range(3):
        with pytest.raises(IntegrityError):
            store.get(dataset, "s")
    gc.collect()
    assert store._env._active == 0
    store.close()
    # The directory was let go: the same data directory opens again.
    reopened = open_store(data_dir=store.settings.data_dir, datasets={}, start_mover=False)
    assert reopened.stat(dataset, "s").generation == record.generation


def test_a_buffer_held_past_close_stays_readable(open_store: StoreFactory) -> None:
    store = open_store(datasets={"plain": DatasetSettings()})
    data = payload(FRAME + 1, 8)
    store.put("plain", "held", data)
    held = store.get("plain", "held")
    store.close()
    assert held.to_bytes() == data  # the map is left in place while a lease lives
    with pytest.raises(StoreClosed):
        store.get("plain", "held")


#: A store closed under two threads reading one shard in a loop; prints how each
#: reader ended. Run in a process of its own: a map unmapped under a read crashes it.
_CLOSE_UNDER_READS = """
import sys, threading, time
from pathlib import Path
from tests.engine.stores import DATASETS, StoreFactory, payload
dataset, root = sys.argv[1], Path(sys.argv[2])
store = StoreFactory(root)(datasets={dataset: DATASETS[dataset]}, start_mover=False,
                           max_read_leases=0)  # no lease: close must wait for the read itself
data = payload(8 << 20)
store.put(dataset, "a", data)
reads, ended = [], []
def reader():
    while True:
        try:
            if store.get(dataset, "a").to_bytes() != data:
                ended.append("wrong bytes")
                return
            reads.append(1)
        except Exception as exc:
            ended.append(type(exc).__name__)
            return
threads = [threading.Thread(target=reader) for _ in range(2)]
for thread in threads:
    thread.start()
deadline = time.monotonic() + 60
while len(reads) < 2 and time.monotonic() < deadline:  # both reading, one read done each
    time.sleep(0.01)
store.close()
for thread in threads:
    thread.join(30)
print(sorted(ended), flush=True)
"""


@pytest.mark.parametrize("dataset", ["plain", "enc"])
def test_closing_a_store_under_running_reads_ends_them_with_store_closed(
    tmp_path: Path, dataset: str
) -> None:
    # The map was unmapped under reads that held no lease (encrypted ones never do):
    # the process crashed (SIGSEGV) or the read raised a raw lmdb.Error.
    done = subprocess.run(
        [sys.executable, "-c", _CLOSE_UNDER_READS, dataset, str(tmp_path)],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['StoreClosed', 'StoreClosed']", done.stderr[-2000:]


# Concurrency: whole generations only.


@pytest.mark.parametrize("dataset", ["plain", "enc"])
def test_readers_see_whole_old_or_whole_new_generations(store: Store, dataset: str) -> None:
    size = 5 * FRAME + 7
    store.put(dataset, "g", bytes([0]) * size)
    done = threading.Event()
    errors: list[str] = []
    reads = 0

    def check(data: bytes, expected_size: int) -> None:
        if len(data) != expected_size or len(set(data)) != 1:
            errors.append(f"mixed or short read: {len(data)} bytes, values {sorted(set(data))}")

    def reader() -> None:
        nonlocal reads
        while not done.is_set():
            check(store.get(dataset, "g").to_bytes(), size)
            check(store.get(dataset, "g", byte_range=(FRAME - 3, 2 * FRAME)).to_bytes(), 2 * FRAME)
            reads += 1

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for value in range(1, 40):
            store.put(dataset, "g", bytes([value]) * size)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert not errors, errors[:3]
    assert reads > 0
    assert store.get(dataset, "g").to_bytes() == bytes([39]) * size


@pytest.mark.parametrize("change", ["overwrite", "delete"])
def test_cold_read_racing_an_overwrite_is_not_data_loss(
    open_store: StoreFactory, change: str
) -> None:
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets={"enc": DatasetSettings(encrypted=True)})
    old, new = payload(3 * FRAME, 1), payload(2 * FRAME, 2)
    info = store.put("enc", "s", old)
    assert store.drain(10)
    store.evict("enc", "s")
    archive.hold_reads(archive_frames_key("enc", info.generation))
    result: dict[str, object] = {}

    def read() -> None:
        try:
            result["data"] = store.get("enc", "s").to_bytes()
        except TierstoreError as exc:
            result["error"] = exc

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert archive.read_waiting.wait(10), "the cold read never reached the archive"
        if change == "overwrite":
            store.put("enc", "s", new)
        else:
            store.delete("enc", "s")
        assert store.drain(10)  # the old generation's objects are gone now
        assert archive.inner.get(archive_frames_key("enc", info.generation)) is None
    finally:
        archive.release_reads()
        reader.join()
    if change == "overwrite":
        assert result.get("data") == new, result
    else:
        assert isinstance(result.get("error"), ShardNotFound), result


# Restart and recovery.


def test_restart_keeps_everything(open_store: StoreFactory, archive: MemoryTier) -> None:
    store = open_store(archive, datasets=DATASETS)
    contents = {
        (dataset, f"{dataset}/s"): payload(2 * FRAME + 3, i) for i, dataset in enumerate(DATASETS)
    }
    generations = {}
    for (dataset, name), data in contents.items():
        generations[(dataset, name)] = store.put(dataset, name, data).generation
    assert store.drain(10)
    store.evict("enc", "enc/s")
    for _ in range(3):
        store.get("plain", "plain/s")
    store = open_store.reopen(store, archive, KEYRING)
    assert dict(store.list_datasets()) == DATASETS
    assert not store.stat("enc", "enc/s").hot
    for (dataset, name), data in contents.items():
        info = store.stat(dataset, name)
        assert info.generation == generations[(dataset, name)] and info.archived
        assert store.get(dataset, name).to_bytes() == data
    assert store.stat("plain", "plain/s").access_count == 4  # three before, one just now
    newer = store.put("plain", "plain/s", b"new")
    assert newer.generation > max(generations.values())


def test_rebuild_from_the_archive_alone(open_store: StoreFactory, archive: MemoryTier) -> None:
    store = open_store(archive, datasets=DATASETS)
    contents = {
        ("plain", "a"): payload(3 * FRAME, 1),
        ("enc", "b/c"): payload(FRAME, 2),
        ("wt-enc", "d"): payload(10, 3),
    }
    for (dataset, name), data in contents.items():
        store.put(dataset, name, data)
    store.put("enc", "table", pa.table({"x": list(range(700))}))
    store.put("plain", "deleted", b"x")
    store.delete("plain", "deleted")
    assert store.drain(10)
    fresh = open_store(archive)  # a new, empty hot tier over the same archive
    assert fresh.rebuild_from_archive() == len(contents) + 1
    assert fresh.stat("enc", "table").rows == 700  # the manifest keeps the row count
    assert fresh.stat("plain", "a").rows is None
    # ...and the frames' digests, which the archive cannot change under its seal.
    for (dataset, name), _ in contents.items():
        digests = record_of(fresh, dataset, name).frame_digests
        assert digests is not None and digests == record_of(store, dataset, name).frame_digests
    assert dict(fresh.list_datasets()) == DATASETS
    for (dataset, name), data in contents.items():
        assert not fresh.stat(dataset, name).hot
        read = fresh.get(dataset, name)
        assert read.source == "archive" and read.to_bytes() == data
    with pytest.raises(ShardNotFound):
        fresh.stat("plain", "deleted")
    with pytest.raises(FailedPrecondition):
        fresh.rebuild_from_archive()


def test_a_rebuild_under_lost_keys_believes_only_a_plaintext_archive(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = open_store(archive, datasets={"plain": DatasetSettings()})
    store.put("plain", "a", payload(3 * FRAME, 1))
    assert store.drain(10)
    lost = open_store(archive, OTHER_KEYRING)  # the key file that sealed it is gone
    assert lost.rebuild_from_archive() == 0  # believes none of it, as it must
    fresh = open_store(archive, OTHER_KEYRING)
    assert fresh.rebuild_from_archive(believe_unsealed=True) == 1
    assert fresh.get("plain", "a").to_bytes() == payload(3 * FRAME, 1)

    store.create_dataset("enc", DatasetSettings(encrypted=True))
    store.put("enc", "b", b"secret")
    assert store.drain(10)
    refused = open_store(archive, OTHER_KEYRING)
    with pytest.raises(FailedPrecondition, match=r"holds encrypted datasets \(enc\)"):
        refused.rebuild_from_archive(believe_unsealed=True)
    assert refused.list_datasets() == []  # nothing restored


def tampered_manifest(archive: MemoryTier, key: str, **changes: Any) -> bytes:
    """The manifest at ``key`` with JSON fields replaced by ``changes``."""
    raw = archive.get(key)
    assert raw is not None
    document = json.loads(bytes(raw))
    document.update(changes)
    return json.dumps(document).encode()


def test_a_rebuild_skips_manifests_that_disagree_with_the_archive(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # The archive is untrusted and a manifest carries no check of its own: one that
    # lists no frames (the shard would read as empty), sits at another generation's
    # key, or drops its encryption must not come back as a shard.
    store = open_store(archive, datasets=DATASETS)
    infos = {
        name: store.put(dataset, name, payload(2 * FRAME, index))
        for index, (dataset, name) in enumerate(
            [("plain", "emptied"), ("plain", "moved"), ("enc", "stripped"), ("plain", "intact")]
        )
    }
    assert store.drain(10)
    emptied = archive_manifest_key("plain", infos["emptied"].generation)
    archive.put(emptied, tampered_manifest(archive, emptied, frame_sizes=[]))
    moved = archive_manifest_key("plain", infos["moved"].generation)
    elsewhere = archive_manifest_key("plain", infos["moved"].generation + 1)
    archive.put(elsewhere, tampered_manifest(archive, moved, name="intact"))
    archive.delete(moved)
    stripped = archive_manifest_key("enc", infos["stripped"].generation)
    archive.put(stripped, tampered_manifest(archive, stripped, envelope=None))
    fresh = open_store(archive)
    assert fresh.rebuild_from_archive() == 1
    assert [info.name for info in fresh.list("plain")[0]] == ["intact"]
    assert fresh.list("enc")[0] == []
    assert fresh.get("plain", "intact").to_bytes() == payload(2 * FRAME, 3)


def generation_objects(archive: MemoryTier, dataset: str, generation: int) -> dict[str, bytes]:
    """The archive's objects of one shard generation (frames and manifest), by key."""
    keys = (archive_frames_key(dataset, generation), archive_manifest_key(dataset, generation))
    return {key: bytes(archive.get(key) or b"") for key in keys}


def damage_archived_frames(archive: MemoryTier, dataset: str, generation: int) -> None:
    """Flip one bit of a generation's frames object in the archive (its size kept, so
    a rebuild, which reads no frames, still believes its manifest)."""
    key = archive_frames_key(dataset, generation)
    damaged = bytearray(archive.get(key) or b"")
    damaged[100] ^= 1
    archive.put(key, bytes(damaged))


def both_generations_archived(
    store: Store, archive: MemoryTier, dataset: str, older: bytes, newer: bytes
) -> tuple[ShardInfo, ShardInfo, dict[str, bytes]]:
    """Shard ``s`` of ``dataset`` put as ``older``, then overwritten by ``newer``, each
    archived, and the older generation's objects put back as if its deletion were
    lost; the two generations' infos and the older one's objects."""
    first = store.put(dataset, "s", older)
    assert store.drain(10)
    objects = generation_objects(archive, dataset, first.generation)
    second = store.put(dataset, "s", newer)
    assert store.drain(10)
    for key, value in objects.items():
        archive.put(key, value)
    return first, second, objects


def test_a_rebuild_falls_back_to_the_older_generation_of_a_disbelieved_manifest(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # An older generation whose deletion had not reached the archive is still a
    # readable copy: when the newest manifest is not believed (here it dropped its
    # encryption), the older generation comes back, not nothing.
    store = open_store(archive, datasets=DATASETS)
    older, newer, _ = both_generations_archived(
        store, archive, "enc", payload(2 * FRAME, 1), payload(FRAME, 2)
    )
    # Stripped of its encryption, with frame sizes that still add up to its frames
    # object (plaintext frames carry a checksum where encrypted ones carry a tag).
    stripped = archive_manifest_key("enc", newer.generation)
    sizes = json.loads(bytes(archive.get(stripped) or b""))["frame_sizes"]
    grown = [size + TAG_BYTES - CHECKSUM_BYTES for size in sizes]
    archive.put(stripped, tampered_manifest(archive, stripped, envelope=None, frame_sizes=grown))
    fresh = open_store(archive)
    assert fresh.rebuild_from_archive() == 1
    assert fresh.stat("enc", "s").generation == older.generation
    assert fresh.get("enc", "s").to_bytes() == payload(2 * FRAME, 1)


def test_a_rebuild_deletes_the_older_generations_of_the_shards_it_restores(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # An older generation whose deletion had not reached the archive stayed there for
    # good after a rebuild; a delete of the shard then removed only the newest one, and
    # the next rebuild brought the deleted shard back, with its older bytes.
    store = open_store(archive, datasets=DATASETS)
    _, _, older_objects = both_generations_archived(
        store, archive, "plain", payload(FRAME, 1), payload(FRAME, 2)
    )
    fresh = open_store(archive)
    assert fresh.rebuild_from_archive() == 1
    assert fresh.get("plain", "s").to_bytes() == payload(FRAME, 2)
    assert fresh.drain(10)
    assert all(archive.get(key) is None for key in older_objects)
    fresh.delete("plain", "s")
    assert fresh.drain(10)
    again = open_store(archive)
    assert again.rebuild_from_archive() == 0
    with pytest.raises(ShardNotFound):
        again.stat("plain", "s")


def test_a_rebuild_does_not_give_a_dataset_made_again_its_namesakes_shards(
    open_store: StoreFactory, archive: MemoryTier, caplog: pytest.LogCaptureFixture
) -> None:
    # A dataset deleted and made again under its name, perhaps for someone else, whose
    # deletes had not reached the archive when the catalog was lost: the rebuild gave
    # the new dataset the deleted one's shards (bytes and names it never held).
    store = open_store(archive, datasets=DATASETS)
    secret = store.put("plain", "secret", payload(FRAME, 1))
    kept = store.put("plain", "s", payload(FRAME, 2))  # overwritten by the namesake's
    assert store.drain(10)
    deleted = {
        **generation_objects(archive, "plain", secret.generation),
        **generation_objects(archive, "plain", kept.generation),
    }
    store.delete_dataset("plain", force=True)
    store.create_dataset("plain", DATASETS["plain"])
    mine = store.put("plain", "s", payload(FRAME, 3))
    assert store.drain(10)
    for key, value in deleted.items():  # as if the delete had not reached the archive
        archive.put(key, value)

    fresh = open_store(archive)
    with caplog.at_level(logging.WARNING, "tierstore.engine.store"):
        assert fresh.rebuild_from_archive() == 1
    assert "2 shard generations in the archive belong to datasets deleted" in caplog.text
    assert [info.name for info in fresh.list("plain")[0]] == ["s"]
    assert fresh.stat("plain", "s").generation == mine.generation
    assert fresh.get("plain", "s").to_bytes() == payload(FRAME, 3)
    assert fresh.drain(10)
    assert all(archive.get(key) is None for key in deleted)  # their deletes ran at last
    assert fresh.put("plain", "next", b"x").generation > mine.generation
    again = open_store(archive)  # the first generation survives a second rebuild
    assert again.rebuild_from_archive() == 2
    with pytest.raises(ShardNotFound):
        again.stat("plain", "secret")


def test_a_rebuild_keeps_a_plaintext_dataset_made_after_an_encrypted_namesake(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # The namesake's encrypted manifests, still in the archive, made the rebuild take
    # the new dataset's plaintext settings for a replayed object and leave it out.
    store = open_store(archive, datasets={"d": DatasetSettings(encrypted=True)})
    old = store.put("d", "old", payload(FRAME, 4))
    assert store.drain(10)
    deleted = generation_objects(archive, "d", old.generation)
    store.delete_dataset("d", force=True)
    store.create_dataset("d", DatasetSettings(encrypted=False))
    store.put("d", "new", payload(FRAME, 5))
    assert store.drain(10)
    for key, value in deleted.items():
        archive.put(key, value)

    fresh = open_store(archive)
    assert fresh.rebuild_from_archive() == 1
    assert not fresh.get_dataset("d").encrypted
    assert fresh.get("d", "new").to_bytes() == payload(FRAME, 5)
    with pytest.raises(ShardNotFound):
        fresh.stat("d", "old")


def test_a_rebuild_falls_back_to_the_older_generation_when_the_newest_is_damaged(
    open_store: StoreFactory, archive: MemoryTier, caplog: pytest.LogCaptureFixture
) -> None:
    # A rebuild reads no frames: the newest generation's object had the right size, and
    # the older, whole one was deleted for it; the shard then read as lost. Kept but
    # named nowhere, the older one outlived a delete of the shard, and came back.
    store = open_store(archive, datasets=DATASETS)
    older, newer, older_objects = both_generations_archived(
        store, archive, "plain", payload(FRAME, 1), payload(FRAME, 2)
    )
    damage_archived_frames(archive, "plain", newer.generation)
    fresh = open_store(archive)
    with caplog.at_level(logging.ERROR, "tierstore.engine.outdated"):
        assert fresh.rebuild_from_archive() == 1
        assert fresh.drain(10)
    assert f"generation {older.generation}, older, is the shard's again" in caplog.text
    assert any(lost.startswith(f"plain/s@{newer.generation}") for lost in fresh.mover.data_loss)
    assert fresh.stat("plain", "s").generation == older.generation
    assert fresh.get("plain", "s").to_bytes() == payload(FRAME, 1)  # older, but whole
    assert generation_objects(archive, "plain", older.generation) == older_objects
    assert archive.get(archive_frames_key("plain", newer.generation)) is None  # damaged: gone
    fresh.delete("plain", "s")
    assert fresh.drain(10)
    again = open_store(archive)
    assert again.rebuild_from_archive() == 0  # the delete held


def test_a_rebuild_refuses_when_a_dataset_is_created_while_it_scans(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = open_store(archive, datasets={"plain": DatasetSettings()})
    store.put("plain", "a", payload(FRAME, 1))
    assert store.drain(10)
    fresh = open_store(archive)
    listing = archive.list

    def list_then_write(*args: Any, **kwargs: Any) -> Any:
        if not fresh.list_datasets():  # once: a client writes while the archive is scanned
            fresh.create_dataset("plain")
            fresh.put("plain", "a", b"written during the rebuild")
        return listing(*args, **kwargs)

    archive.list = list_then_write  # type: ignore[method-assign]
    with pytest.raises(FailedPrecondition, match="during the rebuild"):
        fresh.rebuild_from_archive()
    # The acknowledged put survived; the archive's older state did not replace it.
    assert fresh.get("plain", "a").to_bytes() == b"written during the rebuild"


def test_a_rebuild_cut_short_by_the_archive_writes_nothing_and_is_tried_again_whole(
    open_store: StoreFactory, archive: MemoryTier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # All or nothing, so the next try scans the archive again from its start: a rebuild
    # that wrote what it had scanned would leave a catalog that is no longer empty, which
    # every later rebuild refuses.
    store = open_store(archive, datasets={"plain": DatasetSettings()})
    names = [f"s{i}" for i in range(6)]
    for index, name in enumerate(names):
        store.put("plain", name, payload(FRAME, index))
    assert store.drain(10)
    faulty = FaultyTier(archive)
    fresh = open_store(faulty, start_mover=False)
    read = faulty.get

    def failing_at_the_fourth_manifest(key: str, byte_range: Any = None) -> Any:
        manifests = sum(1 for got, _ in faulty.gets if got.endswith(".manifest"))
        faulty.failing = key.endswith(".manifest") and manifests >= 3
        return read(key, byte_range)

    monkeypatch.setattr(faulty, "get", failing_at_the_fourth_manifest)
    with pytest.raises(ArchiveUnavailable):
        fresh.rebuild_from_archive()
    # Three manifests were read, and the fourth failed: none of it was written.
    assert sum(1 for got, _ in faulty.gets if got.endswith(".manifest")) == 4
    assert fresh.list_datasets() == [] and fresh.stats().journal_entries == 0
    monkeypatch.undo()
    faulty.failing = False
    faulty.gets.clear()
    assert fresh.rebuild_from_archive() == len(names)
    assert sum(1 for got, _ in faulty.gets if got.endswith(".manifest")) == len(names)
    for index, name in enumerate(names):
        assert fresh.get("plain", name).to_bytes() == payload(FRAME, index)


def test_a_rebuild_refuses_while_the_journal_holds_a_deleted_datasets_entries(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = open_store(archive, datasets={"plain": DatasetSettings()})
    store.put("plain", "a", payload(FRAME, 1))
    assert store.drain(10)
    # Deleted, and the node stops before the mover deletes the archive's objects.
    stopped = open_store.reopen(store, archive, start_mover=False)
    stopped.delete_dataset("plain", force=True)
    assert stopped.list_datasets() == [] and stopped.stats().journal_entries > 0
    with pytest.raises(FailedPrecondition, match="journal"):
        stopped.rebuild_from_archive()  # it would bring the deleted dataset back
    assert stopped.list_datasets() == []
    restarted = open_store.reopen(stopped, archive)
    assert restarted.drain(10)
    assert restarted.rebuild_from_archive() == 0  # the deletes reached the archive
    assert restarted.list_datasets() == []


def test_a_write_through_put_archives_its_datasets_earlier_entries_first(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # The mover is not running: only the put itself uploads. Its acknowledgement
    # ("archived") must mean a rebuild from the archive alone finds the shard, so the
    # dataset's settings object goes first. The shard's older generation is deleted
    # after it, by the mover: the archive never holds neither.
    store = open_store(archive, start_mover=False)
    store.create_dataset("wt", DatasetSettings(durability=Durability.WRITE_THROUGH))
    store.create_dataset("other")
    store.put("other", "o", b"not the put's to upload")
    first = store.put("wt", "s", payload(FRAME, 1))
    assert first.archived
    data = payload(2 * FRAME, 2)
    assert store.put("wt", "s", data).archived
    keys = archive_keys(archive)
    assert archive_dataset_key("wt") in keys
    assert archive_frames_key("wt", first.generation) in keys  # deleted after the put
    assert archive_dataset_key("other") not in keys  # other datasets wait for the mover
    fresh = open_store(archive, start_mover=False)
    assert fresh.rebuild_from_archive() == 1
    assert fresh.get("wt", "s").to_bytes() == data  # the newest generation wins
    assert store.mover.drain_once()
    assert archive_frames_key("wt", first.generation) not in archive_keys(archive)


def test_a_write_through_put_into_a_dataset_created_again_survives_a_rebuild(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # The old life's shard deletes are still queued when the dataset comes back as
    # plaintext: the put must run them too, or a rebuild would find a deleted
    # encrypted shard beside plaintext settings and leave the dataset out.
    store = open_store(archive, start_mover=False)
    store.create_dataset("d", DatasetSettings(encrypted=True))
    store.put("d", "old", payload(FRAME, 1))
    assert store.mover.drain_once()
    store.delete_dataset("d", force=True)
    store.create_dataset("d", DatasetSettings(durability=Durability.WRITE_THROUGH))
    assert store.put("d", "new", payload(FRAME, 2)).archived
    fresh = open_store(archive, start_mover=False)  # the catalog lost before the mover ran
    assert fresh.rebuild_from_archive() == 1
    assert fresh.get("d", "new").to_bytes() == payload(FRAME, 2)
    with pytest.raises(ShardNotFound):
        fresh.stat("d", "old")


def test_closed_store_refuses_calls(store: Store) -> None:
    store.put("plain", "x", b"x")
    store.close()
    store.close()  # twice is fine
    calls: list[Callable[[], object]] = [
        lambda: store.put("plain", "y", b"y"),
        lambda: store.get("plain", "x"),
        lambda: store.stat("plain", "x"),
        lambda: store.list("plain"),
        lambda: store.delete("plain", "x"),
        lambda: store.evict("plain", "x"),
        lambda: store.create_dataset("new"),
        lambda: store.stats(),
        lambda: store.rotate_master_key(),
    ]
    for call in calls:
        with pytest.raises(StoreClosed):
            call()


# The real archive: SeaweedFS.


def test_encrypted_write_through_to_seaweedfs(open_store: StoreFactory, s3_archive: S3Tier) -> None:
    store = open_store(s3_archive, datasets={"wt-enc": DATASETS["wt-enc"]})
    data = payload(6 * FRAME + 11, 21)
    info = store.put("wt-enc", "blob", data)
    assert info.archived  # acknowledged after the archive holds it
    s = s3_archive.settings
    client = raw_s3_client(s)
    listed = client.list_objects_v2(Bucket=s.bucket, Prefix=s.prefix)
    keys = {item["Key"][len(s.prefix) :] for item in listed.get("Contents", [])}
    assert {
        archive_frames_key("wt-enc", info.generation),
        archive_manifest_key("wt-enc", info.generation),
    } <= keys
    obj = client.get_object(
        Bucket=s.bucket, Key=s.prefix + archive_frames_key("wt-enc", info.generation)
    )
    stored = obj["Body"].read()
    assert stored == b"".join(f or b"" for f in hot_frames(store, "wt-enc", "blob"))
    store.evict("wt-enc", "blob")
    read = store.get("wt-enc", "blob", byte_range=(2 * FRAME - 1, FRAME + 2))
    assert read.source == "archive" and read.to_bytes() == data[2 * FRAME - 1 : 3 * FRAME + 1]
    assert store.get("wt-enc", "blob").to_bytes() == data
    wait_until(lambda: store.stat("wt-enc", "blob").hot, "promotion after a cold read")
    assert store.get("wt-enc", "blob").source == "hot"


def test_a_record_keeps_its_row_count_and_older_records_have_none() -> None:
    record = ShardRecord("ds", "s", 7, ShardKind.ARROW, (400, 9000), 1.0, None, rows=1234)
    assert ShardRecord.decode(record.encode()) == record
    manifest = ShardRecord.decode(record.encode(manifest=True))
    assert manifest.rows == 1234 and not manifest.hot
    older = json.loads(record.encode())
    del older["rows"]  # a record written before row counts were kept
    assert ShardRecord.decode(json.dumps(older).encode()).rows is None
    for bad in ("12", -1, 1.5, True):
        with pytest.raises(IntegrityError, match="unreadable shard record"):
            ShardRecord.decode(json.dumps({**older, "rows": bad}).encode())


def test_unreadable_dataset_settings_are_an_integrity_error() -> None:
    good = json.loads(encode_dataset(DatasetSettings(hot_quota_bytes=5)))
    assert decode_dataset(json.dumps(good).encode()) == DatasetSettings(hot_quota_bytes=5)
    assert "backlog_quota_bytes" not in good  # unset: written as earlier releases wrote it
    quota = DatasetSettings(backlog_quota_bytes=7)
    assert decode_dataset(encode_dataset(quota)) == quota
    # A whole-number float quota, as earlier releases could store, still reads.
    older = json.dumps({**good, "hot_quota_bytes": 5e11}).encode()
    assert decode_dataset(older).hot_quota_bytes == 500_000_000_000
    for changes in (
        {"durability": "sometimes"},
        {"hot_quota_bytes": "x"},
        {"hot_quota_bytes": 1.5},
        {"backlog_quota_bytes": -1},
        {"backlog_quota_bytes": "7"},
        {"encrypted": None},
    ):
        with pytest.raises(IntegrityError, match="unreadable dataset settings"):
            decode_dataset(json.dumps({**good, **changes}).encode())
    with pytest.raises(IntegrityError, match="unreadable dataset settings"):
        decode_dataset(b"{")
    assert first_generation_of(json.dumps(good).encode()) == 0  # before it was kept
    assert first_generation_of(encode_dataset(DatasetSettings(), 17)) == 17
    for bad in ("17", -1, 1.5, True, 1 << 64):
        with pytest.raises(IntegrityError, match="first_generation"):
            first_generation_of(json.dumps({**good, "first_generation": bad}).encode())


def test_a_dataset_record_that_does_not_read_never_replaces_its_archive_object(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # The mover uploads the catalog's bytes as they are (they carry the first
    # generation): a damaged record would have replaced the archive's good copy, and
    # a rebuild would then leave the dataset out.
    store = open_store(archive, datasets=DATASETS, start_mover=False)
    assert store.mover.drain_once()
    key = archive_dataset_key("plain")
    good = bytes(archive.get(key) or b"")
    with store._env.write() as txn:
        txn.put(b"plain", b'{"v": 1, "encrypted": "no"}', db=store._env.db("datasets"))
        store._catalog.append_journal(txn, JournalOp("dataset", "plain"))
    assert store.mover.drain_once()  # dropped, not retried: no retry mends the record
    assert bytes(archive.get(key) or b"") == good


@pytest.mark.parametrize("second", ["the same data directory", "a data directory linked to it"])
def test_a_second_store_on_one_hot_tier_is_refused_until_the_first_closes(
    open_store: StoreFactory, tmp_path: Path, second: str
) -> None:
    # Both opened (LMDB lets them), and two movers raced over one journal; so did an
    # embedding script against a running node. A review linked two data directories'
    # hot/ to one directory (a tmpfs mount): both nodes started on one LMDB environment,
    # and the second deleted the first's dataset.
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    refusal = rf"open in another store \(process {os.getpid()}"
    if second == "a data directory linked to it":
        shared = tmp_path / "shared-hot"
        shared.mkdir()
        for data_dir in (first_dir, second_dir):
            data_dir.mkdir()
            (data_dir / "hot").symlink_to(shared)
        refusal = rf"leads to {shared}, which another store \(process {os.getpid()}"
    else:
        second_dir = first_dir
    first = open_store(data_dir=first_dir)
    first.create_dataset("d")
    first.put("d", "kept", b"acknowledged")
    with pytest.raises(FailedPrecondition, match=refusal):
        open_store(data_dir=second_dir)
    assert first.get("d", "kept").to_bytes() == b"acknowledged"  # the first is untouched
    first.close()
    again = open_store(data_dir=second_dir)  # one at a time: one hot tier
    assert again.get("d", "kept").to_bytes() == b"acknowledged"


def test_a_hot_tier_linked_to_nothing_is_refused_not_made_anew(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    # A hot/ linked into a tmpfs mount gone with a reboot: a start crashed with
    # FileExistsError's traceback.
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    (data_dir / "hot").symlink_to(tmp_path / "gone")
    with pytest.raises(FailedPrecondition, match=r"is a symbolic link to .*gone, which does not"):
        open_store(data_dir=data_dir)
    assert not (tmp_path / "gone").exists()
    (tmp_path / "gone").mkdir()  # the mount is back: the store opens (a new hot tier)
    open_store(data_dir=data_dir).close()


def test_a_forked_child_does_not_keep_the_hot_tier_claimed(open_store: StoreFactory) -> None:
    # The child shared the lock's open file: after the parent closed its store (or died),
    # a reopen was refused for as long as a DataLoader worker, say, lived on.
    first = open_store()
    data_dir = first.settings.data_dir
    read_end, write_end = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: say it runs, wait for the parent's word, never return
        os.close(write_end)
        os.write(ready_write, b"r")  # its fork handlers have run by now
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    os.close(ready_write)
    try:
        assert os.read(ready_read, 1) == b"r"
        first.close()
        open_store(data_dir=data_dir).close()  # while the child lives
    finally:
        os.close(write_end)
        os.close(ready_read)
        os.waitpid(pid, 0)


def test_a_forked_child_is_refused_the_store_of_its_parent(open_store: StoreFactory) -> None:
    # A child forked from a process holding a store (a DataLoader worker over a dataset
    # that read through it) hung for good on a cold read: the fetch pool's threads,
    # counted as started, were the parent's. Its writes went past the parent's
    # accounting of the hot tier and its policies.
    store = open_store(datasets={"wt": DatasetSettings(durability=Durability.WRITE_THROUGH)})
    blob = payload(6 * FRAME)
    store.put("wt", "s", blob)
    for _ in range(2):  # the second eviction leaves it cold for the child
        assert store.evict("wt", "s") > 0
        assert store.get("wt", "s").to_bytes() == blob  # cold: the fetch pool's threads
        wait_until(lambda: store.stat("wt", "s").hot, "the promotion of the shard read")

    parent = os.getpid()

    def child() -> None:
        for use in (
            lambda: store.get("wt", "s"),
            lambda: store.put("wt", "t", b"from the child"),
            lambda: store.list("wt"),
        ):
            with pytest.raises(FailedPrecondition, match=rf"opened in process {parent}\b"):
                use()
        store.close()  # lets go of nothing of the parent's

    assert store.evict("wt", "s") > 0
    assert exit_code_of_child_forked_while_held(threading.Lock(), child) == 0
    assert store.get("wt", "s").to_bytes() == blob  # the parent's store works on
    assert [info.name for info in store.list("wt")[0]] == ["s"]  # nothing of the child


def test_a_store_that_fails_to_open_lets_go_of_the_hot_tier_at_once(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It let go only when garbage-collected: a retry while the exception (or its
    # traceback) lived was refused.
    data_dir = open_store.new_dir()

    def broken(self: Store) -> None:
        raise RuntimeError("injected")

    with monkeypatch.context() as patched:
        patched.setattr(Store, "_open_policies", broken)
        with pytest.raises(RuntimeError, match="injected") as failed:
            open_store(data_dir=data_dir)
    assert failed.value is not None  # the exception and its traceback are alive
    open_store(data_dir=data_dir).close()
