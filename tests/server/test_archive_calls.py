"""Calls that wait on the archive cannot take every worker (tierstore/server/archivecalls.py).

A frozen archive keeps each cold read, write-through put and write-through delete for
minutes. 32 of them took every worker of a node, and hot reads, stats and admin calls
then waited behind them. Now such calls hold at most a share of the workers, and one
caller at most a share of those; one more fails at once with ServerBusy (which clients
retry for a while), and the rest of the node keeps serving.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import FRAME, payload, wait_until
from tests.server.servers import error_name, invoke, payload_of, serving
from tierstore.client.connect import connect
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
        # A caller per place (one caller holds at most its share of them), and the calls
        # past the places are another's.
        readers = [node.token(f"t{n}", ("d", Role.READER)) for n in range(SLOTS)]
        other = node.token("u", ("d", Role.WRITER), ("wt", Role.WRITER))
        admin = node.token("a", ("*", Role.ADMIN))
        channel = node.channel()
        archive.hold_reads(archive_frames_key("d", generation))  # the archive freezes
        cold_reads: list[bytes | BaseException] = []

        def read_cold(reader: str) -> None:
            try:
                got = invoke(
                    channel, GET, shards_pb2.GetShardRequest(dataset="d", shard="cold"), reader
                )
                cold_reads.append(payload_of(got))
            except BaseException as error:  # compared below
                cold_reads.append(error)

        threads = [threading.Thread(target=read_cold, args=(reader,)) for reader in readers]
        sender_held = threading.Event()
        try:
            for thread in threads:
                thread.start()
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
                assert error_name(refused.value) == "ServerBusy"  # nothing of it was done
                assert "calls are waiting on the archive already" in refused.value.details()
            # The workers left serve the hot tier.
            got = invoke(channel, GET, shards_pb2.GetShardRequest(dataset="d", shard="hot"), other)
            assert payload_of(got) == hot_data
            # A refused miss the policy admitted is promoted in the background (its
            # object is not the frozen one), so a retry finds it hot.
            wait_until(lambda: store.stat("d", "cold2").hot, "the refused miss's promotion")
        finally:
            sender_held.set()
            archive.release_reads()  # the archive thaws: the waiting reads complete
            for thread in threads:
                thread.join(30)
        assert cold_reads == [cold_data] * SLOTS
        # Nothing was stored by the refused put, and the slots are free again.
        invoke(channel, PUT, put_request("wt", "new", b"y" * 100), other)
        assert store.get("wt", "new").to_bytes() == b"y" * 100 and store.stat("wt", "new").archived


def test_a_cold_read_past_the_places_waits_in_the_client_and_one_caller_holds_its_share(
    tmp_path: Path,
) -> None:
    # Refused as a plain Unavailable, a read was retried for 1.5 s and failed, however
    # healthy the archive was: a busy archive's refusal is a queue, not an outage.
    per_caller = ArchiveCalls.for_workers(WORKERS).per_caller
    assert per_caller < SLOTS
    archive = FaultyTier(MemoryTier())
    with serving(
        tmp_path,
        insecure=True,
        archive=archive,
        datasets={"d": DatasetSettings()},
        max_workers=WORKERS,
    ) as node:
        store = node.store
        data = payload(2 * FRAME, 3)
        generation = store.put("d", "cold", data).generation
        store.put("d", "cold2", data)
        assert store.drain(10)
        store.evict("d", "cold")
        store.evict("d", "cold2")
        readers = [node.token(f"t{n}", ("d", Role.READER)) for n in range(SLOTS)]
        waiting = node.token("w", ("d", Role.READER))
        channel = node.channel()
        archive.hold_reads(archive_frames_key("d", generation))  # the archive is slow
        request = shards_pb2.GetShardRequest(dataset="d", shard="cold")
        with ThreadPoolExecutor(SLOTS + 1) as pool:
            held = [pool.submit(invoke, channel, GET, request, reader) for reader in readers]
            try:
                wait_until(lambda: len(archive.gets) >= SLOTS, "every place's read to wait")
                # One caller holds at most its share: t0's second cold read is refused,
                # saying so, while it waits on the archive for its first.
                with pytest.raises(grpc.RpcError) as refused:
                    invoke(
                        channel,
                        GET,
                        shards_pb2.GetShardRequest(dataset="d", shard="cold2"),
                        readers[0],
                    )
                assert error_name(refused.value) == "ServerBusy"
                assert (
                    f"t0 holds {per_caller} of the node's {SLOTS} calls waiting on the archive"
                    in refused.value.details()
                )
                # Another caller's cold read, through the client, waits for a place in
                # its retries: still waiting past the 1.5 s it was once given.
                late = pool.submit(read_through_client, node.address, waiting)
                with pytest.raises(TimeoutError):
                    late.result(timeout=3)
            finally:
                archive.release_reads()  # the archive catches up
            assert [payload_of(reads.result(timeout=30)) for reads in held] == [data] * SLOTS
            assert late.result(timeout=60) == data


def read_through_client(address: str, token: str) -> bytes:
    with connect(address, token=token, insecure=True, local_reads=False) as client:
        return bytes(client.get("d", "cold"))
