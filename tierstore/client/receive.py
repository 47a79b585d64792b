"""Turning a GetShard stream into verified bytes, on the client.

The stream is a header (shard info, the generation's identity and, for an
encrypted shard, its data key) and then the stored frames. Every frame is
verified here — checksum or AEAD tag bound to dataset, shard, generation,
index and last-frame flag — so nothing the server, the disk or the wire
damaged is ever returned. Encrypted frames are decrypted straight into the
destination buffer: one copy, and a failed tag zeroes it. The local read path
(:mod:`tierstore.client.local`) opens the frames it reads from the hot tier with
:func:`open_pieces_into` and :func:`open_all_frames`, which know every frame up
front and so open them on two threads at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa

from tierstore.client.allocation import FrameAllocator, aligned_buffer
from tierstore.crypto import FrameCipher, zero
from tierstore.engine.reads import plan_reads
from tierstore.errors import IntegrityError, InvalidRange
from tierstore.frames import FrameSealer, names_shard
from tierstore.types import ShardInfo
from tierstore.v1 import common_pb2, shards_pb2
from tierstore.verifyahead import collect
from tierstore.wire.convert import shard_info_from_pb

__all__ = [
    "FramePiece",
    "ShardStream",
    "open_all_frames",
    "open_frames",
    "open_frames_into",
    "open_pieces_into",
    "open_stream",
]

#: ``(frame index, start, stop)``: the payload bytes ``[start, stop)`` of one frame.
FramePiece = tuple[int, int, int]


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
        return open_frames_into(self.sealer, self._stored_frames(), self.skip, self.length, out)

    def pieces(self) -> Iterator[bytearray]:
        """The requested bytes a frame at a time, each verified (and decrypted) into a
        buffer of its own as it arrives (none empty); ``length`` bytes in all. A stream that ends
        short, sends other frames than the header promised, or skips past its first frame
        raises IntegrityError after the pieces before it were handed out."""
        position = 0
        skip = self.skip
        for index, stored in self._stored_frames():
            start, stop = _piece_of(self.sealer, index, stored, skip, self.length - position)
            skip = 0
            piece = bytearray(stop - start)
            _open_piece_into(self.sealer, index, stored, start, stop, memoryview(piece))
            position += stop - start
            if piece:  # an empty frame hands on nothing
                yield piece
        if position != self.length:
            raise IntegrityError(f"received {position} of {self.length} bytes")

    def frames(self, allocate: FrameAllocator = aligned_buffer) -> list[pa.Buffer]:
        """Every received frame's payload in its own buffer from ``allocate`` (whole frames)."""
        return open_frames(self.sealer, self._stored_frames(), allocate)

    def arriving_frames(self, allocate: FrameAllocator = aligned_buffer) -> Sequence[pa.Buffer]:
        """The frames as :meth:`frames` gives them, each received and opened when it is
        asked for (in order, once each: :func:`tierstore.arrowio.read_batches`), and
        held by its reader alone: a whole shard is never held at once."""
        opened = (
            _open_frame(self.sealer, index, stored, allocate)
            for index, stored in self._stored_frames()
        )
        return _Arriving(opened, self.frame_count)


class _Arriving(Sequence[pa.Buffer]):
    """``count`` frames from ``frames``, an iterator, asked for in order, once each."""

    def __init__(self, frames: Iterator[pa.Buffer], count: int) -> None:
        self._frames = frames
        self._count = count
        self._next = 0

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> pa.Buffer:  # type: ignore[override]  # no slices
        if index != self._next or index >= self._count:
            raise IndexError(f"frame {index} asked for where frame {self._next} was due")
        self._next += 1
        return next(self._frames)  # a stream ending short raises IntegrityError itself


def open_frames_into(
    sealer: FrameSealer,
    stored_frames: Iterable[tuple[int, bytes | memoryview]],
    skip: int,
    length: int,
    out: memoryview,
) -> int:
    """Verify (and decrypt) ``(index, stored)`` frames into ``out``: ``length`` bytes
    starting ``skip`` bytes into the first frame's payload; returns ``length``.

    A whole frame is opened straight into place (one copy, or the one decryption);
    a partial first or last frame goes through a frame-sized scratch buffer. On
    IntegrityError all of ``out`` is zeroed first. Shared by the gRPC stream and the
    local read path.
    """
    position = 0
    remaining_skip = skip
    try:
        for index, stored in stored_frames:
            start, stop = _piece_of(sealer, index, stored, remaining_skip, length - position)
            remaining_skip = 0
            # Each slice of ``out`` is released here, error or not: one held by an
            # error's traceback kept ``out``'s buffer exported, so the mapping of a
            # download's file could not be closed, and BufferError replaced the error.
            with out[position : position + stop - start] as place:
                _open_piece_into(sealer, index, stored, start, stop, place)
            position += stop - start
        if position != length:
            raise IntegrityError(f"received {position} of {length} bytes")
    except IntegrityError:
        zero(out)
        raise
    return position


def open_pieces_into(
    sealer: FrameSealer,
    pieces: Sequence[FramePiece],
    lookup: Callable[[int], memoryview],
    out: memoryview,
) -> int:
    """Verify (and decrypt) ``pieces`` — ``(frame index, start, stop)`` of each frame's
    payload — into ``out``, back to back; returns the bytes written.

    ``lookup(k)`` gives the stored bytes of the ``k``-th piece's frame (called on this
    thread only). The frames are opened on this thread and the process's helper at
    once (:mod:`tierstore.verifyahead`): every frame's place in ``out`` is known up
    front. On IntegrityError all of ``out`` is zeroed (after the helper has stopped)
    first. The local read path's whole-range read.
    """
    positions = list(itertools.accumulate((stop - start for _, start, stop in pieces), initial=0))
    if positions[-1] > len(out):
        raise ValueError(f"{positions[-1]} bytes do not fit a {len(out)}-byte buffer")

    def open_one(k: int, stored: memoryview) -> bool:
        index, start, stop = pieces[k]
        if not 0 <= start <= stop <= sealer.payload_size(index, stored):
            raise IntegrityError(f"frame {index} is shorter than the catalog says")
        with out[positions[k] : positions[k + 1]] as place:  # released, error or not
            _open_piece_into(sealer, index, stored, start, stop, place)
        return True

    try:
        collect(len(pieces), lookup, open_one)
    except IntegrityError:
        zero(out)
        raise
    return positions[-1]


def _piece_of(
    sealer: FrameSealer, index: int, stored: bytes | memoryview, skip: int, wanted: int
) -> tuple[int, int]:
    """``(start, stop)`` of frame ``index``'s payload for a stream: from ``skip`` on, at
    most ``wanted`` bytes. Raises IntegrityError for a skip past the frame's end (a
    malformed answer)."""
    payload_size = sealer.payload_size(index, stored)
    if skip > payload_size:
        raise IntegrityError(
            f"the server said to skip {skip} bytes of frame {index}, which holds {payload_size}"
        )
    return skip, min(payload_size, skip + wanted)


def _open_piece_into(
    sealer: FrameSealer,
    index: int,
    stored: bytes | memoryview,
    start: int,
    stop: int,
    out: memoryview,
) -> None:
    """Open frame ``index`` and write payload bytes ``[start, stop)`` into ``out``."""
    payload_size = sealer.payload_size(index, stored)
    if start == 0 and stop == payload_size:
        # The whole frame is wanted: open it straight into place (one copy).
        sealer.open_into(index, memoryview(stored), out)
    else:
        whole = bytearray(payload_size)
        sealer.open_into(index, memoryview(stored), memoryview(whole))
        out[:] = whole[start:stop]


def open_frames(
    sealer: FrameSealer,
    stored_frames: Iterable[tuple[int, bytes | memoryview]],
    allocate: FrameAllocator,
) -> list[pa.Buffer]:
    """Each ``(index, stored)`` frame's payload in its own buffer from ``allocate``:
    exactly one allocation and one ``open_into`` (for ciphertext: one ``decrypt_into``)
    per frame. A frame that fails verification leaves its buffer zeroed and raises
    IntegrityError. The gRPC stream's frames, in the order they arrive."""
    return [_open_frame(sealer, index, stored, allocate) for index, stored in stored_frames]


def open_all_frames(
    sealer: FrameSealer,
    indexes: Sequence[int],
    lookup: Callable[[int], memoryview],
    allocate: FrameAllocator,
) -> list[pa.Buffer]:
    """As :func:`open_frames` for frames ``indexes``, whose stored bytes ``lookup(k)``
    gives (called on this thread only), opened on this thread and the process's
    helper at once (:mod:`tierstore.verifyahead`). The local read path's frames."""
    return collect(
        len(indexes), lookup, lambda k, stored: _open_frame(sealer, indexes[k], stored, allocate)
    )


def _open_frame(
    sealer: FrameSealer, index: int, stored: bytes | memoryview, allocate: FrameAllocator
) -> pa.Buffer:
    buffer = allocate(sealer.payload_size(index, stored))
    # A pyarrow buffer's memoryview has format "b"; slice assignment from the
    # verified payload (format "B") needs matching formats.
    sealer.open_into(index, memoryview(stored), memoryview(buffer).cast("B"))
    return buffer


def open_stream(
    messages: Iterator[shards_pb2.GetShardResponse], request: shards_pb2.GetShardRequest
) -> ShardStream:
    """Read the header of the answer to GetShard ``request``. Raises IntegrityError for
    a malformed one, one that names another shard (frames are verified against the
    identity the header gives, so it must be the one asked for), or one that promises
    other frames or bytes than the request asked for (a whole shard must come whole)."""
    first = next(messages, None)
    if first is None or first.WhichOneof("item") != "header":
        raise IntegrityError("the server's answer did not start with a header")
    header = first.header
    seal = header.seal
    dataset, shard = request.dataset, request.shard
    if not names_shard(seal.context, dataset, shard):
        raise IntegrityError(
            f"the server answered a read of {dataset}/{shard} with the frames of another "
            "shard; nothing was returned"
        )
    info = shard_info_from_pb(header.info)
    _check_extent(header, info, request)
    cipher = FrameCipher(seal.data_key, seal.nonce_prefix) if seal.data_key else None
    return ShardStream(
        info=info,
        sealer=FrameSealer(seal.context, seal.frame_count, cipher, info.frame_sizes),
        first_frame=header.first_frame,
        frame_count=header.frame_count,
        skip=header.skip,
        length=header.length,
        messages=messages,
    )


def _check_extent(
    header: shards_pb2.GetShardHeader, info: ShardInfo, request: shards_pb2.GetShardRequest
) -> None:
    """Raise IntegrityError unless the header promises exactly the frames and bytes that
    ``request`` covers of the shard it describes. (Each frame verifies alone; only this
    tells a whole shard from one with frames left out.)"""
    wanted = request.WhichOneof("range")
    try:
        slices = plan_reads(
            info.frame_sizes,
            byte_range=_pair(request.byte_range, info.size) if wanted == "byte_range" else None,
            frame_range=(
                (request.frame_range.first, request.frame_range.count)
                if wanted == "frame_range"
                else None
            ),
        )
    except InvalidRange as exc:
        raise IntegrityError(f"the server's answer does not fit the read: {exc}") from exc
    promised: tuple[int, ...] = (header.frame_count, header.length)
    expected: tuple[int, ...] = (len(slices), sum(piece.stop - piece.start for piece in slices))
    if slices:  # an empty read names no first frame
        promised += (header.first_frame, header.skip)
        expected += (slices[0].index, slices[0].start)
    if header.seal.frame_count != len(info.frame_sizes) or promised != expected:
        raise IntegrityError(
            f"the server's answer promises other frames than {request.dataset}/"
            f"{request.shard} holds for this read; nothing was returned"
        )


def _pair(byte_range: common_pb2.ByteRange, size: int) -> tuple[int, int]:
    """``(offset, length)`` of a requested byte range (to the end without a length)."""
    length = byte_range.length if byte_range.HasField("length") else size
    return byte_range.offset, length
