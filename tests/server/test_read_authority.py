"""A read stream is authorized at its start and again before each message it sends.

A read stream may last hours: a client taking one frame a minute from a shard of many
frames keeps it open (each message within ``stream_message_s``). Meanwhile its token may
be revoked or run out, or its dataset deleted (taking the reader's grant with it): the
stream must then end at its next message, with the error the call would get if it
started then, rather than keep a worker until its last frame. The test reads the start
of a stream over a connection whose flow-control window stays small (so the server is
held back by the reader, not far ahead of it), changes who may read, then reads on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.engine.stores import payload
from tests.server.servers import RunningServer, error_name, invoke, metadata, serving
from tierstore.server import admin
from tierstore.types import DatasetSettings, Role
from tierstore.v1 import admin_pb2, datasets_pb2, shards_pb2
from tierstore.wire.trace import trace_events_to_pb

GET = "/tierstore.v1.ShardService/GetShard"
EXPORT = "/tierstore.v1.AdminService/ExportTrace"
DELETE = "/tierstore.v1.DatasetService/DeleteDataset"
#: 4 KiB frames (the test server's): far more of them than the connection's window holds
FRAMES = 1024
WAIT_S = 30.0


def revoke(node: RunningServer, token: str) -> None:
    node.tokens.revoke(token.split("_")[1], force=True)


def run_out(node: RunningServer, token: str) -> None:
    node.clock.offset += 7200  # the tokens are issued for an hour


def delete_dataset(node: RunningServer, token: str) -> None:
    operator = node.token("operator", ("*", Role.ADMIN))
    request = datasets_pb2.DeleteDatasetRequest(name="alpha", force=True)
    invoke(node.channel(), DELETE, request, operator)


def read_on(stream: Any, received: list[Any]) -> grpc.RpcError:
    """Take the rest of ``stream`` into ``received``; the error it ended with."""
    try:
        for message in stream:
            received.append(message)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"the stream ran to its end ({len(received)} messages)")


@pytest.mark.parametrize(
    ("change", "code", "error", "grant"),
    [
        (revoke, grpc.StatusCode.UNAUTHENTICATED, "Unauthenticated", "alpha"),
        (run_out, grpc.StatusCode.UNAUTHENTICATED, "Unauthenticated", "alpha"),
        (delete_dataset, grpc.StatusCode.NOT_FOUND, "DatasetNotFound", "alpha"),
        # A grant on "*" outlives the dataset: its reader is told the same all the same.
        (delete_dataset, grpc.StatusCode.NOT_FOUND, "DatasetNotFound", "*"),
    ],
    ids=["token-revoked", "token-ran-out", "dataset-deleted", "dataset-deleted-star-grant"],
)
def test_a_read_stream_ends_once_its_reader_lost_the_right(
    tmp_path: Path,
    change: Callable[[RunningServer, str], None],
    code: grpc.StatusCode,
    error: str,
    grant: str,
) -> None:
    with serving(tmp_path, datasets={"alpha": DatasetSettings()}) as node:
        node.store.put("alpha", "big.bin", payload(FRAMES * 4096, seed=3))
        reader = node.token("reader", (grant, Role.READER), ttl_s=3600)
        get = node.channel(own_connection=True).unary_stream(
            GET,
            request_serializer=shards_pb2.GetShardRequest.SerializeToString,
            response_deserializer=shards_pb2.GetShardResponse.FromString,
        )
        request = shards_pb2.GetShardRequest(dataset="alpha", shard="big.bin")
        stream = get(request, metadata=metadata(reader), timeout=WAIT_S)
        received = [next(stream), next(stream)]  # the header and the first frame
        assert received[0].WhichOneof("item") == "header"
        assert received[0].header.frame_count == FRAMES
        change(node, reader)
        failure = read_on(stream, received)
    assert failure.code() is code, failure.details()  # type: ignore[attr-defined]
    assert error_name(failure) == error
    if error == "DatasetNotFound":
        assert failure.details() == "no dataset 'alpha'"  # type: ignore[attr-defined]
    # The frames already on their way when the right went arrive; the rest never do.
    assert len(received) < FRAMES // 2


def test_a_trace_export_ends_once_its_token_is_revoked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of about 64 KiB (4 MiB on a node), so that a trace of a few MiB (one long
    # plan) is many of them.
    small = functools.partial(trace_events_to_pb, batch_bytes=64 << 10)
    monkeypatch.setattr(admin, "trace_events_to_pb", small)
    with serving(tmp_path, datasets={"alpha": DatasetSettings()}) as node:
        names = [f"{index:03}" + "s" * 200 for index in range(320)]
        for name in names:
            node.store.put("alpha", name, b"x")
        node.store.declare_plan("alpha", shards=names * 64)  # 64 epochs: 4 MiB of names
        operator = node.token("operator", ("*", Role.ADMIN))
        export = node.channel(own_connection=True).unary_stream(
            EXPORT,
            request_serializer=admin_pb2.ExportTraceRequest.SerializeToString,
            response_deserializer=admin_pb2.ExportTraceResponse.FromString,
        )
        stream = export(admin_pb2.ExportTraceRequest(), metadata=metadata(operator), timeout=WAIT_S)
        received = [next(stream)]
        revoke(node, operator)
        failure = read_on(stream, received)
        batches = len(list(small(node.store.trace_events())))
    assert failure.code() is grpc.StatusCode.UNAUTHENTICATED, failure.details()  # type: ignore[attr-defined]
    assert error_name(failure) == "Unauthenticated"
    assert len(received) < batches // 2
