"""Turning a GetShard stream into verified bytes, on the client.

The stream is a header (shard info, the generation's identity and, for an
encrypted shard, its data key) and then the stored frames. Every frame is
verified here — checksum or AEAD tag bound to dataset, shard, generation,
index and last-frame flag — so nothing the server, the disk or the wire
damaged is ever returned. Encrypted frames are decrypted straight into the
destination buffer: one copy, and a failed tag zeroes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from tierstore.crypto import FrameCipher, zero
from tierstore.errors import IntegrityError
from tierstore.frames import FrameSealer
from tierstore.types import ShardInfo
from tierstore.v1 import shards_pb2
from tierstore.wire.convert import shard_info_from_pb

__all__ = ["ShardStream", "open_stream"]


@dataclass(frozen=True, slots=True)
class ShardStream:
    """A GetShard answer being received: its header and the frames still to come."""

    info: ShardInfo
    sealer: FrameSealer
    first_frame: int
    frame_count: int
    skip: int
    length: int
    messages: Iterator[shards_pb2.GetShardResponse]

    def _stored_frames(self) -> Iterator[tuple[int, bytes]]:
        expected = self.first_frame
        for message in self.messages:
            if message.WhichOneof("item") != "frame":
                raise IntegrityError("the server sent something other than a frame")
            if message.frame.index != expected:
                raise IntegrityError(
                    f"frame {message.frame.index} arrived where frame {expected} was due"
                )
            yield expected, message.frame.data
            expected += 1
        if expected != self.first_frame + self.frame_count:
            raise IntegrityError(
                f"the stream ended after {expected - self.first_frame} of {self.frame_count} frames"
            )

    def into(self, out: memoryview) -> int:
        """Write the requested bytes into ``out`` (``length`` bytes); returns ``length``.

        On IntegrityError all of ``out`` is zeroed first.
        """
        try:
            return self._into(out)
        except IntegrityError:
            zero(out)
            raise

    def _into(self, out: memoryview) -> int:
        position = 0
        remaining_skip = self.skip
        for index, stored in self._stored_frames():
            payload_size = len(stored) - self.sealer.overhead
            start = remaining_skip
            stop = min(payload_size, start + self.length - position)
            remaining_skip = 0
            if start == 0 and stop == payload_size:
                # The whole frame is wanted: open it straight into place (one copy).
                self.sealer.open_into(index, memoryview(stored), out[position : position + stop])
            else:
                whole = bytearray(max(payload_size, 0))
                self.sealer.open_into(index, memoryview(stored), memoryview(whole))
                out[position : position + stop - start] = whole[start:stop]
            position += stop - start
        if position != self.length:
            raise IntegrityError(f"received {position} of {self.length} bytes")
        return position

    def frames(self) -> list[pa.Buffer]:
        """Every received frame's payload in its own 64-byte-aligned buffer (whole frames)."""
        out: list[pa.Buffer] = []
        for index, stored in self._stored_frames():
            buffer = pa.allocate_buffer(len(stored) - self.sealer.overhead)
            # A pyarrow buffer's memoryview has format "b"; slice assignment from the
            # verified payload (format "B") needs matching formats.
            self.sealer.open_into(index, memoryview(stored), memoryview(buffer).cast("B"))
            out.append(buffer)
        return out


def open_stream(messages: Iterator[shards_pb2.GetShardResponse]) -> ShardStream:
    """Read the header of a GetShard answer. Raises IntegrityError for a malformed one."""
    first = next(messages, None)
    if first is None or first.WhichOneof("item") != "header":
        raise IntegrityError("the server's answer did not start with a header")
    header = first.header
    seal = header.seal
    cipher = FrameCipher(seal.data_key, seal.nonce_prefix) if seal.data_key else None
    return ShardStream(
        info=shard_info_from_pb(header.info),
        sealer=FrameSealer(seal.context, seal.frame_count, cipher),
        first_frame=header.first_frame,
        frame_count=header.frame_count,
        skip=header.skip,
        length=header.length,
        messages=messages,
    )
