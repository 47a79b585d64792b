"""Frames a put can send once only (a record-batch reader's, a pipe's): an attempt made
again after one took a frame is refused, not sent short of what was read; and which
streams are sent counted, as every node takes them."""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from tierstore.client.channel import ChannelSettings
from tierstore.client.client import Client
from tierstore.client.local import LocalReadOptions
from tierstore.client.putvalue import OnePassFrames
from tierstore.errors import InvalidArgument, Unavailable
from tierstore.v1 import shards_pb2


def test_frames_are_sent_once_and_a_second_attempt_after_any_was_taken_is_refused() -> None:
    frames = OnePassFrames(memoryview(bytes([k])) for k in range(3))
    frames.check_unread("the put")  # none taken: an attempt may be made (again)
    first = iter(frames)
    assert bytes(next(first)) == b"\x00"
    with pytest.raises(Unavailable, match="cannot be read again: nothing was stored"):
        frames.check_unread("the put of ds/s")
    assert [bytes(f) for f in first] == [b"\x01", b"\x02"]


class _Recording(grpc.GenericRpcHandler):
    """Takes a put, keeps its messages, and refuses it."""

    def __init__(self) -> None:
        self.messages: list[shards_pb2.PutShardRequest] = []

    def service(self, details: Any) -> grpc.RpcMethodHandler:
        return grpc.stream_unary_rpc_method_handler(self._take)

    def _take(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self.messages += [shards_pb2.PutShardRequest.FromString(r) for r in requests]
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "recorded")


@pytest.fixture
def recorded() -> Iterator[tuple[Client, _Recording]]:
    handler = _Recording()
    server = grpc.server(futures.ThreadPoolExecutor(2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = Client(
        ChannelSettings(f"127.0.0.1:{port}", insecure=True),
        frame_bytes=1024,
        local=LocalReadOptions(enabled=False),
    )
    try:
        yield client, handler
    finally:
        client.close()
        server.stop(0)


def test_a_stream_that_ends_within_its_first_frame_is_counted(
    recorded: tuple[Client, _Recording], tmp_path: Path
) -> None:
    # Every file object that is not a plain file was sent uncounted: an older node,
    # which knows no such header field, took it for an empty shard and refused the
    # first frame; and a put that lost its connection could not be made again. A
    # BytesIO is in memory already; a stream that ended within its first two frames
    # (read before the put starts) is whole.
    client, handler = recorded
    with gzip.open(tmp_path / "small.gz", "wb") as packed:
        packed.write(b"z" * 1000)
    bigger = tmp_path / "bigger.gz"
    with gzip.open(bigger, "wb") as packed:
        packed.write(b"z" * 3000)
    one = tmp_path / "one.gz"
    with gzip.open(one, "wb") as packed:
        packed.write(b"o" * 1024)  # one whole frame: the second read finds the end
    exact = tmp_path / "exact.gz"
    with gzip.open(exact, "wb") as packed:
        packed.write(b"x" * 2048)  # two whole frames: only a third read finds the end
    with (
        gzip.open(tmp_path / "small.gz", "rb") as small,
        gzip.open(bigger, "rb") as large,
        gzip.open(exact, "rb") as two,
        gzip.open(one, "rb") as whole_frame,
    ):
        for value, frames, uncounted, data in (
            (io.BytesIO(b"b" * 3000), 3, False, b"b" * 3000),
            (small, 1, False, b"z" * 1000),
            (io.BytesIO(b""), 0, False, b""),
            (whole_frame, 1, False, b"o" * 1024),
            (two, 0, True, b"x" * 2048),
            (large, 0, True, b"z" * 3000),
        ):
            handler.messages.clear()
            with pytest.raises(InvalidArgument, match="recorded"):
                client.put("d", "s", value)
            header = handler.messages[0].header
            assert (header.frame_count, header.uncounted) == (frames, uncounted), value
            sent = [m.frame for m in handler.messages if m.WhichOneof("item") == "frame"]
            assert b"".join(sent) == data
