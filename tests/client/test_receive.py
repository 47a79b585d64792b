"""The client's reading of a GetShard answer (tierstore/client/receive.py).

Frames are verified against the identity the header gives, so a header naming
another shard than the one asked for must be refused before any frame is read:
its frames would verify. So must a header promising fewer frames than the read
covers: each frame verifies alone. And a stream whose skip runs past its first frame
is refused as damaged, not left to fail on a negative size.
"""

from __future__ import annotations

import dataclasses

import pytest

from tierstore.client.receive import open_stream
from tierstore.errors import IntegrityError
from tierstore.frames import FrameSealer, shard_context
from tierstore.v1 import common_pb2, shards_pb2

WHOLE = shards_pb2.GetShardRequest(dataset="d", shard="s")


def answer(context: bytes, *payloads: bytes) -> list[shards_pb2.GetShardResponse]:
    """A well-formed GetShard answer for the whole shard of ``payloads``, sealed under
    ``context``."""
    sealer = FrameSealer(context, len(payloads))
    header = shards_pb2.GetShardResponse()
    header.header.info.dataset = "d"
    header.header.info.name = "s"
    header.header.info.kind = common_pb2.SHARD_KIND_RAW
    header.header.info.frame_sizes.extend(len(payload) for payload in payloads)
    header.header.seal.context = context
    header.header.seal.frame_count = len(payloads)
    header.header.first_frame = 0
    header.header.frame_count = len(payloads)
    header.header.length = sum(len(payload) for payload in payloads)
    frames = []
    for index, payload in enumerate(payloads):
        frame = shards_pb2.GetShardResponse()
        frame.frame.index = index
        frame.frame.data = bytes(sealer.seal(index, payload))
        frames.append(frame)
    return [header, *frames]


def test_frames_of_the_shard_asked_for_are_read() -> None:
    stream = open_stream(iter(answer(shard_context("d", "s", 7), b"payload!", b"more")), WHOLE)
    assert b"".join(buffer.to_pybytes() for buffer in stream.frames()) == b"payload!more"


def test_a_whole_shard_with_frames_left_out_is_refused() -> None:
    # The true header of a three-frame shard, but promising (and sending) frames 0 and
    # 1 only: each verifies alone, and none is sealed as the last of three.
    context = shard_context("d", "s", 7)
    full = answer(context, b"one", b"two", b"three")
    full[0].header.frame_count = 2
    full[0].header.length = len(b"onetwo")
    with pytest.raises(IntegrityError, match="promises other frames"):
        open_stream(iter(full[:3]), WHOLE)
    # A ranged read of those two frames is what such a header answers.
    first_two = shards_pb2.GetShardRequest(dataset="d", shard="s")
    first_two.frame_range.first, first_two.frame_range.count = 0, 2
    stream = open_stream(iter(full[:3]), first_two)
    assert b"".join(buffer.to_pybytes() for buffer in stream.frames()) == b"onetwo"


@pytest.mark.parametrize(
    "context",
    [
        shard_context("d", "other", 7),  # another shard of the dataset
        shard_context("e", "s", 7),  # the same name in another dataset
        shard_context("d", "s/x", 7),  # a longer name sharing the prefix
        shard_context("d", "s", 7) + b"\x00",  # not a context at all
    ],
)
def test_a_header_naming_another_shard_is_refused(context: bytes) -> None:
    # Its frames verify against its own context: only the name check catches it.
    with pytest.raises(IntegrityError, match="another shard"):
        open_stream(iter(answer(context, b"payload!")), WHOLE)


def test_a_skip_past_the_first_frame_is_refused_as_damaged() -> None:
    # The header check ties the skip to the shard's frame sizes; the receiving itself
    # must hold too, and name a damaged answer, not fail on a negative buffer size.
    whole = answer(shard_context("d", "s", 7), b"one", b"two")
    stream = dataclasses.replace(open_stream(iter(whole), WHOLE), skip=4, length=2)
    with pytest.raises(IntegrityError, match="frame 0"):
        list(stream.pieces())
    stream = dataclasses.replace(open_stream(iter(whole), WHOLE), skip=4, length=2)
    out = bytearray(b"\xff" * 2)
    with pytest.raises(IntegrityError, match="frame 0"):
        stream.into(memoryview(out))
    assert out == bytes(2), "a refused answer left bytes behind"
