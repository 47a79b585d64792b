"""A put is authorized at its header and again when it commits.

A put stream may last minutes (one frame a minute keeps it alive). By its end the
dataset it was aimed at may have been deleted and made again under the same name, for
someone else (the delete removed the writer's grant), or the writer's token revoked:
the put must then store nothing, and end at its next frame rather than take in the rest
of the stream (a writer sending a frame a minute would otherwise keep a worker after its
token was revoked). The test holds a put open, its header long accepted, with its frames
spooled to disk past the spool's memory limit (an open file in the spool directory is
the sign that the server is inside the stream), changes who may write, then lets the
stream go on.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.engine.stores import wait_until
from tests.server.servers import RunningServer, error_name, metadata, serving
from tierstore.types import DatasetSettings, Role
from tierstore.v1 import common_pb2, shards_pb2

FRAME = 4 << 20
#: frames sent before the stream stops: past the spool's 64 MiB in memory, so on disk.
SPOOLED = 17


def spool_file_open(spool_dir: Path) -> bool:
    """Whether this process (the server's) has a file in ``spool_dir`` open."""
    prefix = str(spool_dir) + os.sep
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(prefix):
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def held_put(
    node: RunningServer,
    token: str,
    release: threading.Event,
    ending: threading.Event | None = None,
) -> grpc.Future:  # type: ignore[type-arg]
    """A put of ``SPOOLED + 1`` frames into ``tenant/planted`` whose last frame waits
    for ``release``; with ``ending``, a put of one frame more, whose stream stops after
    the frame ``release`` lets go until ``ending`` is set."""

    def requests() -> Iterator[shards_pb2.PutShardRequest]:
        header = shards_pb2.PutShardHeader(
            dataset="tenant", shard="planted", kind=common_pb2.SHARD_KIND_RAW
        )
        header.frame_count = SPOOLED + (1 if ending is None else 2)
        yield shards_pb2.PutShardRequest(header=header)
        for index in range(SPOOLED):
            yield shards_pb2.PutShardRequest(frame=bytes([index]) * FRAME)
        release.wait(60)
        yield shards_pb2.PutShardRequest(frame=b"last")
        if ending is not None:
            ending.wait(60)
            return
        yield shards_pb2.PutShardRequest(end=shards_pb2.PutShardEnd())

    put = node.channel().stream_unary(
        "/tierstore.v1.ShardService/PutShard",
        request_serializer=shards_pb2.PutShardRequest.SerializeToString,
        response_deserializer=common_pb2.ShardInfo.FromString,
    )
    return put.future(requests(), metadata=metadata(token), timeout=120)


def delete_and_make_again(node: RunningServer, writer: str) -> None:
    node.store.delete_dataset("tenant", force=True)
    node.tokens.remove_grants_on("tenant")  # as DeleteDataset does
    node.store.create_dataset("tenant", DatasetSettings())


def revoke(node: RunningServer, writer: str) -> None:
    node.tokens.revoke(writer.split("_")[1], force=True)


def delete(node: RunningServer, writer: str) -> None:
    node.store.delete_dataset("tenant", force=True)
    node.tokens.remove_grants_on("tenant")  # as DeleteDataset does


@pytest.mark.parametrize(
    ("change", "code", "error", "grant"),
    [
        (delete_and_make_again, grpc.StatusCode.NOT_FOUND, "DatasetNotFound", "tenant"),
        (revoke, grpc.StatusCode.UNAUTHENTICATED, "Unauthenticated", "tenant"),
        (delete, grpc.StatusCode.NOT_FOUND, "DatasetNotFound", "tenant"),
        # A grant on "*" outlives the dataset: its put ends at its next frame all the same.
        (delete, grpc.StatusCode.NOT_FOUND, "DatasetNotFound", "*"),
    ],
    ids=["dataset-made-again", "token-revoked", "dataset-deleted", "dataset-deleted-star-grant"],
)
@pytest.mark.parametrize("stream_ends", [True, False], ids=["stream-ends", "stream-stays-open"])
def test_a_put_whose_writer_lost_the_right_meanwhile_stores_nothing(
    tmp_path: Path,
    change: Callable[[RunningServer, str], None],
    code: grpc.StatusCode,
    error: str,
    grant: str,
    stream_ends: bool,
) -> None:
    tenant = {"tenant": DatasetSettings()}
    # A hot tier room for the put (a put larger than the tier's watermark is refused).
    room = 4 * (SPOOLED + 2) * FRAME
    with serving(tmp_path, datasets=tenant, max_frame_bytes=FRAME, hot_capacity_bytes=room) as node:
        writer = node.token("writer", (grant, Role.WRITER))
        release = threading.Event()
        ending = None if stream_ends else threading.Event()
        call = held_put(node, writer, release, ending)
        spool = node.data_dir / "spool"
        try:
            wait_until(lambda: spool_file_open(spool), "the put to spool its frames")
            assert not call.done()  # its header was accepted
            change(node, writer)
            # One frame more, then the end or a stream that stays open: the put ends at
            # that frame either way.
            release.set()
            with pytest.raises(grpc.RpcError) as caught:
                call.result(timeout=30)
        finally:
            release.set()
            if ending is not None:
                ending.set()
        assert caught.value.code() is code, caught.value.details()
        assert error_name(caught.value) == error
        if error == "DatasetNotFound":
            assert caught.value.details() == "no dataset 'tenant'"
        wait_until(lambda: not spool_file_open(spool), "the put's spooled frames to go")
        if node.store.has_dataset("tenant"):
            assert node.store.list("tenant")[0] == []
