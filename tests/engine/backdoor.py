"""Backdoors into a store's hot tier and catalog, bypassing the API under test.

Tamper tests change stored bytes here and then check that the public API
notices. Everything goes through the store's own LMDB environment (one
environment per process: opening a second handle on the same files in this
process is not allowed by LMDB), in short transactions of its own.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from tests.engine.faulty_tier import FaultyTier
from tierstore.engine.catalog import SHARDS_DB
from tierstore.engine.records import (
    ShardRecord,
    archive_frames_key,
    catalog_key,
    frame_key,
    generation_of_frame_key,
)
from tierstore.engine.store import Store

__all__ = [
    "catalog_hot_bytes",
    "data_file",
    "delete_hot_frame",
    "flip",
    "frames_object_key",
    "hot_frame_counts",
    "hot_frames",
    "prefetch_held_in_its_fetch",
    "put_hot_frame",
    "put_raw_record",
    "raw_frame_address",
    "record_of",
]


def record_of(store: Store, dataset: str, shard: str) -> ShardRecord:
    """The catalog record of a shard (fails the test if there is none)."""
    with store._env.read() as txn:
        record = store._catalog.get_shard(txn, dataset, shard)
    assert record is not None, f"no catalog record for {dataset}/{shard}"
    return record


def put_raw_record(store: Store, dataset: str, shard: str, raw: bytes) -> None:
    """Overwrite a shard's catalog record with ``raw`` (bytes that may not decode)."""
    with store._env.write() as txn:
        txn.put(catalog_key(dataset, shard), raw, db=store._env.db(SHARDS_DB))


def set_note(store: Store, name: str, text: str) -> None:
    """Set catalog note ``name`` to ``text`` ("": as one never set)."""
    with store._env.write() as txn:
        store._catalog.set_note(txn, name, text)


def hot_frames(store: Store, dataset: str, shard: str) -> list[bytes | None]:
    """The stored bytes of every frame of a shard's generation in LMDB (None where absent)."""
    record = record_of(store, dataset, shard)
    with store._env.read() as txn:
        frames = []
        for index in range(len(record.frame_sizes)):
            view = store._frames.view_in(txn, frame_key(record.generation, index))
            frames.append(None if view is None else bytes(view))
    return frames


def put_hot_frame(store: Store, generation: int, index: int, stored: bytes) -> None:
    """Overwrite (or create) one stored frame in LMDB, catalog untouched."""
    with store._env.write() as txn:
        store._frames.put_in(txn, frame_key(generation, index), stored)


def raw_frame_address(store: Store, dataset: str, shard: str, index: int) -> int:
    """Where frame ``index`` of a shard lies in the LMDB map, read in a transaction of our own."""
    record = record_of(store, dataset, shard)
    with store._env.read() as txn:
        view = store._frames.view_in(txn, frame_key(record.generation, index))
        assert view is not None, f"frame {index} of {dataset}/{shard} is not in the hot tier"
        return int(pa.py_buffer(view).address)


def delete_hot_frame(store: Store, generation: int, index: int) -> None:
    """Remove one stored frame from LMDB, catalog untouched."""
    with store._env.write() as txn:
        store._frames.delete_in(txn, frame_key(generation, index))


def catalog_hot_bytes(store: Store) -> tuple[int, int]:
    """``(hot_bytes counter, stored bytes of every hot record)`` read in one snapshot."""
    with store._env.read() as txn:
        counter = store._catalog.counter(txn, "hot_bytes")
        total = 0
        for record in store._catalog.iter_shards(txn):
            if record.hot:
                total += sum(record.stored_sizes(store._sealers.sealer(record).overhead))
    return counter, total


def hot_frame_counts(store: Store) -> dict[int, int]:
    """How many frames LMDB holds per generation (hot, staged or left behind)."""
    with store._env.read() as txn:
        return frame_counts_in(store, txn)


def frame_counts_in(store: Store, txn: Any) -> dict[int, int]:
    """:func:`hot_frame_counts` in the snapshot of ``txn``."""
    counts: dict[int, int] = {}
    for key, _ in store._frames.sizes_in(txn):
        generation = generation_of_frame_key(key)
        counts[generation] = counts.get(generation, 0) + 1
    return counts


def hot_record_frame_counts_in(store: Store, txn: Any) -> dict[int, int]:
    """How many frames each hot record's generation has (none for an empty shard), in
    the snapshot of ``txn``: what :func:`frame_counts_in` finds there when no frame is
    staged or left behind (read in one snapshot: a promotion committed between two
    differs from both)."""
    return {
        record.generation: len(record.frame_sizes)
        for record in store._catalog.iter_shards(txn)
        if record.hot and record.frame_sizes
    }


def frames_object_key(store: Store, dataset: str, shard: str) -> str:
    """The archive key of a shard generation's frames object."""
    return archive_frames_key(dataset, record_of(store, dataset, shard).generation)


def data_file(store: Store) -> Path:
    """The LMDB data file of the store's hot tier."""
    return store._env.path / "data.mdb"


def flip(data: bytes, position: int) -> bytes:
    """``data`` with every bit of one byte inverted."""
    changed = bytearray(data)
    changed[position] ^= 0xFF
    return bytes(changed)


def prefetch_held_in_its_fetch(store: Store, archive: FaultyTier, dataset: str, shard: str) -> None:
    """Archive and evict ``dataset/shard``, then prefetch it, its promotion held inside
    its fetch from ``archive`` until ``archive.release_reads()``."""
    assert store.drain(10)
    assert store.evict(dataset, shard) > 0
    frames = archive_frames_key(dataset, record_of(store, dataset, shard).generation)
    archive.hold_reads(frames, threads_named="tierstore-promote")
    assert store.prefetch(dataset, [shard]) == 1
    assert archive.read_waiting.wait(10), "the prefetch's promotion never fetched"


@contextlib.contextmanager
def holding_the_writer(store: Store) -> Iterator[None]:
    """Hold the hot tier's write transaction (from a thread of its own, as LMDB wants
    a transaction used by the thread that began it) while the block runs: every commit
    of the store waits until the block ends."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._env.write():
            held.set()
            release.wait()

    holder = threading.Thread(target=hold, name="test-writer-holder")
    holder.start()
    try:
        assert held.wait(10), "the writer was not taken"
        yield
    finally:
        release.set()
        holder.join()
