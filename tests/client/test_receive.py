"""The client's reading of a GetShard answer (tierstore/client/receive.py).

Frames are verified against the identity the header gives, so a header naming
another shard than the one asked for must be refused before any frame is read:
its frames would verify.
"""

from __future__ import annotations

import pytest

from tierstore.client.receive import open_stream
from tierstore.errors import IntegrityError
from tierstore.frames import FrameSealer, shard_context
from tierstore.v1 import common_pb2, shards_pb2


def answer(context: bytes, payload: bytes) -> list[shards_pb2.GetShardResponse]:
    """A well-formed one-frame GetShard answer sealed under ``context``."""
    stored = FrameSealer(context, 1).seal(0, payload)
    header = shards_pb2.GetShardResponse()
    header.header.info.dataset = "d"
    header.header.info.name = "s"
    header.header.info.kind = common_pb2.SHARD_KIND_RAW
    header.header.seal.context = context
    header.header.seal.frame_count = 1
    header.header.first_frame = 0
    header.header.frame_count = 1
    header.header.length = len(payload)
    frame = shards_pb2.GetShardResponse()
    frame.frame.index = 0
    frame.frame.data = bytes(stored)
    return [header, frame]


def test_frames_of_the_shard_asked_for_are_read() -> None:
    stream = open_stream(iter(answer(shard_context("d", "s", 7), b"payload!")), "d", "s")
    assert b"".join(buffer.to_pybytes() for buffer in stream.frames()) == b"payload!"


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
        open_stream(iter(answer(context, b"payload!")), "d", "s")
