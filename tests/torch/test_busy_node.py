"""A read the node refuses as busy (ServerBusy) is retried by the torch plugin's source,
within its ``retry_s`` and its consumer's stop: the client's own wait for a busy node,
up to two minutes, heeded neither (a diff review saw a read of ``retry_s`` 0, stopped,
wait 20 s)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from tests.server.servers import metadata, serving
from tierstore import errors
from tierstore.client.client import Client
from tierstore.client.connect import connect
from tierstore.server.streamslots import ShardStreams
from tierstore.torch.source import GrpcShardSource
from tierstore.types import DatasetSettings, Role
from tierstore.v1 import shards_pb2, shards_pb2_grpc

WORKERS = 4


def test_a_busy_node_is_waited_for_within_retry_s_and_the_stop(tmp_path: Path) -> None:
    share = ShardStreams.for_workers(WORKERS).per_caller
    with serving(
        tmp_path, insecure=True, max_workers=WORKERS, datasets={"d": DatasetSettings()}
    ) as node:
        node.store.put("d", "big", bytes(32 << 20))  # far more than a flow-control window
        token = node.token("svc", ("d", Role.WRITER))
        table = pa.table({"x": list(range(10))})

        def client() -> Client:
            return connect(node.address, token=token, insecure=True, local_reads=False)

        with client() as writer:
            writer.put("d", "t", table)
        # The caller's share of the streams, taken by streams it does not read.
        stalled = []
        for _ in range(share):
            stub = shards_pb2_grpc.ShardServiceStub(node.channel(own_connection=True))
            stream = stub.GetShard(
                shards_pb2.GetShardRequest(dataset="d", shard="big"),
                timeout=60,
                metadata=metadata(token),
            )
            assert next(stream).HasField("header")
            stalled.append(stream)
        try:
            started = time.monotonic()
            with pytest.raises(errors.ServerBusy):
                GrpcShardSource(client, retry_s=0).read("d", "t")
            assert time.monotonic() - started < 10
            stop = threading.Event()
            stop.set()
            started = time.monotonic()
            with pytest.raises(errors.ServerBusy):
                GrpcShardSource(client, retry_s=60).read("d", "t", stop)
            assert time.monotonic() - started < 10
        finally:
            for stream in stalled:
                stream.cancel()  # type: ignore[attr-defined]
        # The places given back, the source's own retries get one.
        assert GrpcShardSource(client, retry_s=60).read("d", "t").table.equals(table)
