"""Reads, promotions and the mover's uploads owe the idle heap trim, as puts do
(engine/allocator.py).

A scale review found a node that served cold reads kept their heap (388 → 1,050 MiB)
until the next put: only puts were counted as work whose memory is given back once
the node is idle. An upload that ended after a burst's trim kept its heap the same
way (45 MiB after six 32 MiB uploads, measured).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.stores import FRAME, KEYRING, engine_settings, payload, wait_until
from tests.server.test_stream_abandoned import _OpenCall
from tierstore.engine.allocator import IdleTrim
from tierstore.engine.store import Store
from tierstore.server.authz import Principal
from tierstore.server.rpc import calling_as
from tierstore.server.shards import ShardServicer
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, Grant, Role
from tierstore.v1 import shards_pb2


def counting_trim() -> tuple[IdleTrim, list[None]]:
    """An IdleTrim due at once that counts its trims (run by ``trim_if_due``)."""
    trims: list[None] = []
    return IdleTrim(idle_s=0.0, trim=lambda: trims.append(None), background=False), trims


def read_through_servicer(servicer: ShardServicer, dataset: str, shard: str) -> bytes:
    token = calling_as(Principal("reader", (Grant(dataset, Role.READER),), via="token"))
    try:
        request = shards_pb2.GetShardRequest(dataset=dataset, shard=shard)
        messages = list(servicer.GetShard(request, _OpenCall()))  # type: ignore[arg-type]
    finally:
        token.var.reset(token)
    return b"".join(m.frame.data for m in messages if m.HasField("frame"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A store on a memory archive, closed after the test."""
    opened = Store(engine_settings(tmp_path / "node"), MemoryTier(), KEYRING)
    try:
        yield opened
    finally:
        opened.close()


def test_a_cold_read_and_a_hot_read_owe_a_trim(store: Store, tmp_path: Path) -> None:
    # A load review left a node of only hot reads holding 523 MB of heap (130 MB
    # before) for minutes, until a put: a hot read owed no trim.
    store.create_dataset("d", DatasetSettings(policy="lru"))
    store.put("d", "s", payload(3 * FRAME, 1))
    trim, trims = counting_trim()
    servicer = ShardServicer(store, tmp_path / "spool", idle_trim=trim)
    assert read_through_servicer(servicer, "d", "s")  # hot
    trim.trim_if_due()
    assert len(trims) == 1
    assert store.drain(10)
    store.evict("d", "s")
    assert read_through_servicer(servicer, "d", "s")  # cold
    trim.trim_if_due()
    assert len(trims) == 2


def test_a_hot_read_under_way_does_not_put_a_trim_off(store: Store, tmp_path: Path) -> None:
    # Hot reads that overlap for hours (a training job's) kept the node from trimming
    # what a put had left, when a hot read counted as work in flight.
    store.create_dataset("d", DatasetSettings(policy="lru"))
    store.put("d", "s", payload(3 * FRAME, 1))
    trim, trims = counting_trim()
    servicer = ShardServicer(store, tmp_path / "spool", idle_trim=trim)
    with trim.busy():  # a put
        pass
    token = calling_as(Principal("reader", (Grant("d", Role.READER),), via="token"))
    try:
        request = shards_pb2.GetShardRequest(dataset="d", shard="s")
        stream = servicer.GetShard(request, _OpenCall())  # type: ignore[arg-type]
        assert next(stream).HasField("header")  # under way
        trim.trim_if_due()
        assert len(trims) == 1
        list(stream)
    finally:
        token.var.reset(token)


def test_a_promotion_owes_a_trim(store: Store) -> None:
    store.create_dataset("d", DatasetSettings(policy="lru"))
    store.put("d", "s", payload(3 * FRAME, 2))
    assert store.drain(10)
    store.evict("d", "s")
    trim, trims = counting_trim()
    store.promoter.work_in_flight = trim.busy
    assert store.get("d", "s", byte_range=(0, 10)).nbytes == 10  # queues a promotion
    wait_until(lambda: store.stat("d", "s").hot, "the promotion")
    wait_until(lambda: store.promoter.promotions_pending() == 0, "the promotion to end")
    trim.trim_if_due()
    assert len(trims) == 1


def test_an_upload_owes_a_trim(store: Store) -> None:
    store.create_dataset("d", DatasetSettings(durability="write-back"))
    assert store.drain(10)  # the dataset's own journal entry, if any, is not counted
    trim, trims = counting_trim()
    store.mover.after_heap_work = trim.owe
    store.put("d", "s", payload(3 * FRAME, 3))  # the put itself is the server's to count
    assert store.drain(10) and store.stat("d", "s").archived
    trim.trim_if_due()
    assert len(trims) == 1


def test_an_upload_is_archived_though_owing_its_trim_fails(store: Store) -> None:
    def failing_owe() -> None:
        raise RuntimeError("can't start new thread")

    store.mover.after_heap_work = failing_owe
    store.create_dataset("d", DatasetSettings(durability="write-back"))
    store.put("d", "s", payload(3 * FRAME, 4))
    assert store.drain(10) and store.stat("d", "s").archived
