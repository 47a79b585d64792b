"""Byte ranges, end to end: every path a range is read by returns the stored bytes.

Against the real ``tierstore serve`` process (its embedded SeaweedFS archive), each
range of a grid — offsets and lengths at 0, at every frame boundary and one either
side, at the shard's end and past it, and at the edges of what the wire carries — is
read with ``get``, ``download`` and ``iter_bytes``, in place (the local path) and through the
service, from the hot tier and from the archive alone, plaintext and encrypted, and
compared with the same slice of the bytes that were put. A range that cannot be read
raises one error on every path: :class:`RangePastEnd` for a start past the end,
:class:`InvalidRange` for a malformed one (negative, or not a whole number).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

import tierstore
from tests.server.conftest import ServerProcess, poll, unique
from tierstore import errors
from tierstore.client.client import Client
from tierstore.v1 import common_pb2, shards_pb2, shards_pb2_grpc

#: The frames of the hand-framed shard: empty ones at both edges and between.
HAND_FRAMES = (b"", b"abcde", b"", b"", b"f", b"gh", b"")


def put_frames(client: Client, dataset: str, shard: str, frames: tuple[bytes, ...]) -> None:
    """Store ``frames`` as they are (the client's put never makes an empty frame)."""
    stub = client._stub(shards_pb2_grpc.ShardServiceStub)

    def messages() -> Iterator[shards_pb2.PutShardRequest]:
        yield shards_pb2.PutShardRequest(
            header=shards_pb2.PutShardHeader(
                dataset=dataset,
                shard=shard,
                kind=common_pb2.SHARD_KIND_RAW,
                frame_count=len(frames),
            )
        )
        yield from (shards_pb2.PutShardRequest(frame=frame) for frame in frames)
        yield shards_pb2.PutShardRequest(end=shards_pb2.PutShardEnd())

    stub.PutShard(messages(), metadata=client._channel.metadata, timeout=30)


@pytest.fixture
def shards(server: ServerProcess, any_dataset: str) -> dict[str, tuple[bytes, tuple[int, ...]]]:
    """Shards of ``any_dataset``: name -> (bytes, frame sizes)."""
    stored: dict[str, tuple[bytes, tuple[int, ...]]] = {}
    with server.connect(local_reads=False) as client:
        for name, data, frame_bytes in [
            ("empty", b"", 7),
            ("one-byte-frames", bytes(range(1, 6)), 1),
            ("small-frames", bytes(range(200, 223)), 7),  # 7, 7, 7, 2
            ("page-frames", bytes(range(256)) * 40, 4000),  # frames with pages of their own
        ]:
            client.frame_bytes = frame_bytes
            stored[name] = (data, client.put(any_dataset, name, data).frame_sizes)
        put_frames(client, any_dataset, "hand-framed", HAND_FRAMES)
        stored["hand-framed"] = (b"".join(HAND_FRAMES), tuple(map(len, HAND_FRAMES)))
    return stored


def grid(sizes: tuple[int, ...]) -> Iterator[tuple[int, int | None]]:
    """(offset, length) pairs: at, and one either side of, each frame boundary, and the
    edges of what the wire carries (uint64)."""
    total = sum(sizes)
    edges = sorted(set(itertools.accumulate(sizes, initial=0)))
    offsets = {b + d for b in edges for d in (-1, 0, 1) if b + d >= 0} | {2**63, 2**64}
    lengths: set[int | None] = {None, 0, 1, 2, total, total + 1, 2**63, 2**64 - 1, 2**64}
    lengths |= {b - a for a, b in itertools.pairwise(edges)}
    for offset in sorted(offsets):
        for length in sorted(lengths, key=lambda n: -1 if n is None else n):
            yield offset, length


def expected(data: bytes, offset: int, length: int | None) -> bytes | type[Exception]:
    if offset > len(data):
        return errors.RangePastEnd
    return data[offset:] if length is None else data[offset : offset + length]


def wrong_reads(
    client: Client,
    dataset: str,
    shards: dict[str, tuple[bytes, tuple[int, ...]]],
    tmp_path: Path,
    before: Callable[[str], object] = lambda name: None,
) -> list[tuple[object, ...]]:
    """Every read of the grid, with ``get`` and ``download``, whose outcome is not the
    stored bytes (or the right error); ``before(shard)`` runs before each read."""
    wrong: list[tuple[object, ...]] = []
    for name, (data, sizes) in shards.items():
        for how, read in reads(client, tmp_path).items():
            for offset, length in grid(sizes):
                before(name)
                got: bytes | type[Exception]
                try:
                    got = read(dataset, name, offset, length)
                except errors.TierstoreError as exc:
                    got = type(exc)
                if got != expected(data, offset, length):
                    wrong.append((name, how, offset, length, got))
    return wrong


def reads(client: Client, tmp_path: Path) -> dict[str, Callable[..., bytes]]:
    def get(dataset: str, shard: str, offset: int, length: int | None) -> bytes:
        return bytes(client.get(dataset, shard, offset=offset, length=length))

    def download(dataset: str, shard: str, offset: int, length: int | None) -> bytes:
        target = tmp_path / "out"
        written = client.download(dataset, shard, target, offset=offset, length=length)
        data = target.read_bytes()
        assert written == len(data)
        return data

    def iter_bytes(dataset: str, shard: str, offset: int, length: int | None) -> bytes:
        pieces = list(client.iter_bytes(dataset, shard, offset=offset, length=length))
        assert all(pieces), "an empty piece was handed on"
        return b"".join(pieces)

    return {"get": get, "download": download, "iter_bytes": iter_bytes}


@pytest.mark.parametrize("local_reads", [True, False], ids=["local", "grpc"])
def test_every_range_of_a_hot_shard_is_the_stored_bytes(
    server: ServerProcess,
    any_dataset: str,
    shards: dict[str, tuple[bytes, tuple[int, ...]]],
    local_reads: bool,
    tmp_path: Path,
) -> None:
    with server.connect(local_reads=local_reads) as client:
        wrong = wrong_reads(client, any_dataset, shards, tmp_path)
        counts = client.read_counts
    assert not wrong, wrong[:10]
    # Each path was taken: the local one for every range of a hot shard it could serve.
    assert (counts.local > 0) is local_reads and (counts.grpc > 0)


def test_every_range_of_a_shard_in_the_archive_alone_is_the_stored_bytes(
    server: ServerProcess,
    admin: Client,
    any_dataset: str,
    shards: dict[str, tuple[bytes, tuple[int, ...]]],
    tmp_path: Path,
) -> None:
    poll(
        lambda: all(admin.stat(any_dataset, name).archived for name in shards),
        60,
        "the shards archived",
    )
    with server.connect() as client:
        # Each read a miss, unless the promotion an earlier miss queued lands between
        # the eviction and the read.
        wrong = wrong_reads(
            client, any_dataset, shards, tmp_path, lambda name: admin.evict(any_dataset, name)
        )
        counts = client.read_counts
    assert not wrong, wrong[:10]
    assert counts.grpc > counts.local, wrong[:10]


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"offset": -1}, "offset"),
        ({"length": -1}, "length"),
        ({"offset": -(2**64), "length": 5}, "offset"),
        ({"offset": 1.5}, "offset"),
        ({"length": "2"}, "length"),
        ({"offset": True}, "offset"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("local_reads", [True, False], ids=["local", "grpc"])
def test_a_malformed_range_is_invalid_range_on_every_path(
    server: ServerProcess,
    dataset: str,
    arguments: dict[str, Any],
    named: str,
    local_reads: bool,
    tmp_path: Path,
) -> None:
    # The engine raises InvalidRange for these (tierstore/engine/reads.py); the client
    # raised a bare InvalidArgument, which an `except InvalidRange` let through.
    with server.connect(local_reads=local_reads) as client:
        client.put(dataset, "blob", b"0123456789")
        with pytest.raises(errors.InvalidRange, match=named) as caught:
            client.get(dataset, "blob", **arguments)
        assert not isinstance(caught.value, errors.RangePastEnd)
        with pytest.raises(errors.InvalidRange, match=named):
            client.download(dataset, "blob", tmp_path / "out", **arguments)
        with pytest.raises(errors.InvalidRange, match=named):
            client.iter_bytes(dataset, "blob", **arguments)  # at the call, not its first piece
        assert not (tmp_path / "out").exists()
        with pytest.raises(errors.RangePastEnd, match="past the end"):
            client.get(dataset, "blob", offset=11)


def test_a_range_asked_of_a_missing_shard_is_shard_not_found(
    server: ServerProcess, dataset: str
) -> None:
    with server.connect() as client, pytest.raises(errors.ShardNotFound):
        client.get(dataset, unique("missing"), offset=3, length=2)


class TamperingProxy(shards_pb2_grpc.ShardServiceServicer):
    """Passes GetShard on to the real server, changing its answer with ``tamper``:
    ``tamper(answer, whole)`` gets the answer's messages and the whole shard's frame
    messages (by index), and returns the messages to send. ``changed``: whether the last
    answer sent was not the server's."""

    def __init__(self, upstream: shards_pb2_grpc.ShardServiceStub) -> None:
        self._upstream = upstream
        self.tamper: Tampering = lambda answer, whole: answer
        self.changed = False

    def GetShard(
        self, request: shards_pb2.GetShardRequest, context: grpc.ServicerContext
    ) -> Iterator[shards_pb2.GetShardResponse]:
        metadata = [(k, v) for k, v in context.invocation_metadata() if k == "authorization"]
        answer = list(self._upstream.GetShard(request, metadata=metadata, timeout=30))
        whole_request = shards_pb2.GetShardRequest(dataset=request.dataset, shard=request.shard)
        whole = {
            message.frame.index: message
            for message in self._upstream.GetShard(whole_request, metadata=metadata, timeout=30)
            if message.WhichOneof("item") == "frame"
        }
        sent = self.tamper(answer, whole)
        self.changed = len(sent) != len(answer)
        yield from sent


Answer = list[shards_pb2.GetShardResponse]
Tampering = Callable[[Answer, dict[int, shards_pb2.GetShardResponse]], Answer]


def _after(answer: Answer, whole: dict[int, shards_pb2.GetShardResponse]) -> Answer:
    """The answer, and then the shard's frame that follows the range."""
    header = answer[0].header
    following = whole.get(header.first_frame + header.frame_count)
    return answer + ([following] if following is not None else [])


def _before(answer: Answer, whole: dict[int, shards_pb2.GetShardResponse]) -> Answer:
    """The answer with the shard's frame before the range put in front of its frames."""
    before = whole.get(answer[0].header.first_frame - 1)
    return answer[:1] + ([before] if before is not None else []) + answer[1:]


def _short(answer: Answer, whole: dict[int, shards_pb2.GetShardResponse]) -> Answer:
    """The answer without its last frame (if it has any)."""
    return answer[:-1] if len(answer) > 1 else answer


def _twice(answer: Answer, whole: dict[int, shards_pb2.GetShardResponse]) -> Answer:
    """The answer with its last frame sent again (if it has any)."""
    return answer + answer[-1:] if len(answer) > 1 else answer


TAMPERINGS: dict[str, Tampering] = {
    "the last frame left out": _short,
    "the last frame twice": _twice,
    "the frame after the range": _after,
    "the frame before the range": _before,
}


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[tuple[TamperingProxy, str]]:
    """A plaintext proxy on 127.0.0.1 in front of the session server, and its address."""
    tampering = TamperingProxy(shards_pb2_grpc.ShardServiceStub(server.channel()))
    front = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    shards_pb2_grpc.add_ShardServiceServicer_to_server(tampering, front)
    port = front.add_insecure_port("127.0.0.1:0")
    front.start()
    yield tampering, f"127.0.0.1:{port}"
    front.stop(grace=None)


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_an_answer_with_frames_missing_or_added_returns_nothing(
    server: ServerProcess,
    any_dataset: str,
    proxy: tuple[TamperingProxy, str],
    tampering: str,
    tmp_path: Path,
) -> None:
    # Each frame is a true frame of the shard and verifies alone: only the count of
    # what arrived against what the header promised tells a stream cut short, or one
    # with more than was asked, from the right one. (A download of an empty range took
    # no notice of frames it was sent: it returned nothing, but get raised.)
    data = bytes(range(55))
    with server.connect(local_reads=False) as client:
        client.frame_bytes = 10
        client.put(any_dataset, "s", data)
    front, address = proxy
    front.tamper = TAMPERINGS[tampering]
    target = tmp_path / "out"
    changed = 0
    with tierstore.connect(address, token=server.token, insecure=True, local_reads=False) as client:
        for offset, length in [(0, None), (5, 10), (10, 10), (50, 5), (12, 0), (55, None)]:
            want = data[offset:] if length is None else data[offset : offset + length]
            for how, read in reads(client, tmp_path).items():
                target.write_bytes(b"as it was")
                got: bytes | type[Exception]
                try:
                    got = read(any_dataset, "s", offset, length)
                except errors.DataLoss:
                    got = errors.DataLoss
                    assert target.read_bytes() == b"as it was"
                assert got == (errors.DataLoss if front.changed else want), (how, offset, length)
                changed += front.changed
    assert changed >= 4  # the answers of two ranges at least, each read two ways


def test_a_frame_size_damaged_in_the_record_is_data_loss_on_every_path(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # Frames verify alone (checksum or tag binds a frame's place, not its size): a size
    # damaged in the catalog record, the total kept, cut frames where it said, and
    # reads returned other bytes.
    node = spawn_server()
    data = bytes(range(256)) * 48 + b"0123456789"  # frames of 4096, 4096, 4096 and 10
    with node.connect(local_reads=False) as admin:
        admin.frame_bytes = 4096
        for encrypted in (False, True):
            name = "secret" if encrypted else "plain"
            admin.create_dataset(name, encrypted=encrypted, durability="write-through")
            assert admin.put(name, "blob", data).frame_sizes == (4096, 4096, 4096, 10)
        mdb = node.data_dir / "hot" / "data.mdb"
        true, damaged = b'"frame_sizes":[4096,4096,4096,10]', b'"frame_sizes":[4000,4192,4096,10]'
        image = mdb.read_bytes()
        fd = os.open(mdb, os.O_WRONLY)
        try:
            where = image.find(true)
            while where >= 0:
                os.pwrite(fd, damaged, where)
                where = image.find(true, where + 1)
        finally:
            os.close(fd)
        for name in ("plain", "secret"):
            assert admin.stat(name, "blob").frame_sizes == (4000, 4192, 4096, 10)
    target = tmp_path / "out"
    for local_reads in (True, False):
        with node.connect(local_reads=local_reads) as client:
            for name in ("plain", "secret"):
                for offset, length in [(0, None), (4000, 10), (10, 10), (5000, 100)]:
                    with pytest.raises(errors.DataLoss):
                        client.get(name, "blob", offset=offset, length=length)
                    with pytest.raises(errors.DataLoss):
                        client.download(name, "blob", target, offset=offset, length=length)
                    assert not target.exists()
                # The frames the damage did not touch still read.
                assert bytes(client.get(name, "blob", offset=3 * 4096 + 2, length=5)) == b"23456"
            if local_reads:
                assert client.read_counts.local > 0
