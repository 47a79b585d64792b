"""Calls that wait on the archive cannot take every worker (tierstore/server/archivecalls.py).

A frozen archive keeps each cold read, write-through put and write-through delete for
minutes. 32 of them took every worker of a node, and hot reads, stats and admin calls
then waited behind them. Now such calls hold at most a share of the workers; one more
fails at once with Unavailable, and the rest of the node keeps serving.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import FRAME, payload, wait_until
from tests.server.servers import error_name, invoke, payload_of, serving
from tierstore.engine.records import archive_frames_key
from tierstore.server.archivecalls import ArchiveCalls
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, Durability, Role
from tierstore.v1 import common_pb2, datasets_pb2, shards_pb2

GET = "/tierstore.v1.ShardService/GetShard"
PUT = "/tierstore.v1.ShardService/PutShard"
DELETE = "/tierstore.v1.ShardService/DeleteShard"
DELETE_DATASET = "/tierstore.v1.DatasetService/DeleteDataset"
WORKERS = 4  # so ArchiveCalls.for_workers gives 2 slots, of 3 for shard streams
SLOTS = ArchiveCalls.for_workers(WORKERS).slots


def put_request(dataset: str, shard: str, data: bytes) -> list[shards_pb2.PutShardRequest]:
    header = shards_pb2.PutShardHeader(
        dataset=dataset, shard=shard, kind=common_pb2.SHARD_KIND_RAW, frame_count=1
    )
    return [
        shards_pb2.PutShardRequest(header=header),
        shards_pb2.PutShardRequest(frame=data),
        shards_pb2.PutShardRequest(end=shards_pb2.PutShardEnd()),
    ]


def held_after_header(
    requests: list[shards_pb2.PutShardRequest], held: threading.Event
) -> Iterator[shards_pb2.PutShardRequest]:
    """``requests``, with the messages after the header sent only once ``held`` is set
    (or 20 s have passed)."""
    yield requests[0]
    held.wait(20)
    yield from requests[1:]


def test_a_frozen_archive_leaves_workers_for_hot_reads_and_refuses_one_call_too_many(
    tmp_path: Path,
) -> None:
    assert 1 <= SLOTS < WORKERS
    archive = FaultyTier(MemoryTier())
    datasets = {"d": DatasetSettings(), "wt": DatasetSettings(durability=Durability.WRITE_THROUGH)}
    with serving(tmp_path, archive=archive, datasets=datasets, max_workers=WORKERS) as node:
        store = node.store
        cold_data, hot_data = payload(2 * FRAME, 1), payload(FRAME, 2)
        generation = store.put("d", "cold", cold_data).generation
        store.put("d", "hot", hot_data)
        store.put("d", "cold2", cold_data)
        assert store.drain(10)
        store.evict("d", "cold")
        store.evict("d", "cold2")
        token = node.token("t", ("d", Role.WRITER), ("wt", Role.WRITER))
        # The calls past the archive's places are another caller's: t's cold reads hold
        # all the shard streams one caller may hold.
        other = node.token("u", ("d", Role.WRITER), ("wt", Role.WRITER))
        admin = node.token("a", ("*", Role.ADMIN))
        channel = node.channel()
        archive.hold_reads(archive_frames_key("d", generation))  # the archive freezes
        cold_reads: list[bytes | BaseException] = []

        def read_cold() -> None:
            try:
                got = invoke(
                    channel, GET, shards_pb2.GetShardRequest(dataset="d", shard="cold"), token
                )
                cold_reads.append(payload_of(got))
            except BaseException as error:  # compared below
                cold_reads.append(error)

        readers = [threading.Thread(target=read_cold) for _ in range(SLOTS)]
        sender_held = threading.Event()
        try:
            for reader in readers:
                reader.start()
            assert archive.read_waiting.wait(10)
            deadline = time.monotonic() + 10
            while len(archive.gets) < SLOTS and time.monotonic() < deadline:
                time.sleep(0.02)  # every slot's read is waiting on the archive
            metrics = node.server.metrics.registry
            assert metrics.get_sample_value("tierstore_archive_calls") == SLOTS
            assert metrics.get_sample_value("tierstore_archive_calls_places") == SLOTS
            # One more call that needs the archive: refused at once, not queued; a
            # write-through put before its sender has sent more than its header.
            for method, request, caller in (
                (GET, shards_pb2.GetShardRequest(dataset="d", shard="cold"), other),
                (GET, shards_pb2.GetShardRequest(dataset="d", shard="cold2"), other),
                (PUT, held_after_header(put_request("wt", "new", b"x" * 100), sender_held), other),
                (DELETE, shards_pb2.DeleteShardRequest(dataset="wt", shard="new"), other),
                (DELETE_DATASET, datasets_pb2.DeleteDatasetRequest(name="wt"), admin),
            ):
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as refused:
                    invoke(channel, method, request, caller)
                assert time.monotonic() - started < 5
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert error_name(refused.value) == "Unavailable"
                assert "calls are waiting on it already" in refused.value.details()
            # The workers left serve the hot tier.
            got = invoke(channel, GET, shards_pb2.GetShardRequest(dataset="d", shard="hot"), other)
            assert payload_of(got) == hot_data
            # A refused miss the policy admitted is promoted in the background (its
            # object is not the frozen one), so a retry finds it hot.
            wait_until(lambda: store.stat("d", "cold2").hot, "the refused miss's promotion")
        finally:
            sender_held.set()
            archive.release_reads()  # the archive thaws: the waiting reads complete
            for reader in readers:
                reader.join(30)
        assert cold_reads == [cold_data] * SLOTS
        # Nothing was stored by the refused put, and the slots are free again.
        invoke(channel, PUT, put_request("wt", "new", b"y" * 100), token)
        assert store.get("wt", "new").to_bytes() == b"y" * 100 and store.stat("wt", "new").archived
