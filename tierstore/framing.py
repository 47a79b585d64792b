"""Turning what a caller puts into payload frames (pure: no I/O).

Accepted values: bytes-like objects (raw shards, cut into fixed-size frames
without copying), Arrow tables and record batches, Arrow record-batch readers
(and iterables of record batches: framed as the table of their batches, as they
are read), numpy arrays and torch tensors (stored as Arrow ``fixed_shape_tensor``),
and pre-framed Arrow messages as they arrive from the network (validated here).
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import pyarrow as pa

from tierstore import arrowio, tensors
from tierstore.buffers import byte_view
from tierstore.errors import InvalidArgument, OversizeFrame, UnsupportedData
from tierstore.types import MAX_ROWS, ShardKind

__all__ = [
    "FramedValue",
    "FramesOnDemand",
    "frame_prepared",
    "frame_value",
    "frames_streamed",
]


class FramesOnDemand(Sequence[memoryview], ABC):
    """Frames made when asked for (each a flat byte view), whose sizes are known
    without making them: a put too large to hold whole in memory (an encrypted
    dataset's put, decrypted from its spool file one frame at a time).

    Whoever takes them asks for each frame when it needs it and keeps it no longer
    (:func:`frame_prepared` for Arrow validation, the write path as it seals): each
    ask may cost a frame's decryption, and memory holds a few frames, not the put.
    """

    @property
    @abstractmethod
    def sizes(self) -> tuple[int, ...]:
        """Each frame's size in bytes."""

    @property
    def costly(self) -> bool:
        """Whether making a frame costs more than a copy (decryption): the write path
        then makes a small put's frames before its transaction holds the writer, and
        otherwise inside it, a frame at a time (held whole outside it, a put's frames
        were memory no spool limit counted)."""
        return True

    @abstractmethod
    def frame(self, index: int) -> memoryview:
        """Frame ``index`` (0 <= index < len), made now or kept from a recent ask."""

    def __len__(self) -> int:
        return len(self.sizes)

    @overload
    def __getitem__(self, index: int) -> memoryview: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[memoryview]: ...

    def __getitem__(self, index: int | slice) -> memoryview | Sequence[memoryview]:
        if isinstance(index, slice):
            return [self.frame(i) for i in range(*index.indices(len(self)))]
        count = len(self)
        if not -count <= index < count:
            raise IndexError(f"frame {index} of {count}")
        return self.frame(index % count)


def frame_sizes(frames: Sequence[memoryview]) -> tuple[int, ...]:
    """Each frame's size, without making frames made on demand."""
    if isinstance(frames, FramesOnDemand):
        return frames.sizes
    return tuple(frame.nbytes for frame in frames)


@dataclass(frozen=True, slots=True)
class FramedValue:
    """A value cut into payload frames, each at most the frame limit.

    ``frames`` may be :class:`FramesOnDemand`: iterate or index them as needed, and
    take sizes from :attr:`sizes`, not from the frames."""

    kind: ShardKind
    frames: Sequence[memoryview]
    #: rows in an Arrow or tensor shard's record batches; None for raw bytes
    rows: int | None = None

    @property
    def sizes(self) -> tuple[int, ...]:
        """Each frame's payload size."""
        return frame_sizes(self.frames)


def _arrow(kind: ShardKind, frames: Sequence[memoryview], rows: int | None = None) -> FramedValue:
    """An Arrow or tensor shard of valid frames (framed here or validated), with its row
    count (``rows``, else from each frame's IPC metadata). Raises UnsupportedData for
    more than ``MAX_ROWS`` rows (batches of no columns cost nothing per row)."""
    if rows is None:
        rows = sum(arrowio.message_rows(frame) for frame in frames[1:])
    if rows > MAX_ROWS:
        raise UnsupportedData(f"the record batches hold {rows} rows; at most 2**63 - 1 fit")
    return FramedValue(kind, frames, rows)


def _byte_view(value: Any) -> memoryview:
    view = byte_view(value)
    if view is None:
        raise UnsupportedData(f"a {type(value).__name__} does not export the buffer protocol")
    return view


def _raw_frames(data: memoryview, max_frame_bytes: int) -> tuple[memoryview, ...]:
    flat = _byte_view(data)
    return tuple(flat[i : i + max_frame_bytes] for i in range(0, len(flat), max_frame_bytes))


def _is_tensor(value: Any) -> bool:
    module = type(value).__module__
    return module.startswith("numpy") or module.startswith("torch")


def _check_frame_limit(max_frame_bytes: int) -> None:
    bad_type = isinstance(max_frame_bytes, bool) or not isinstance(max_frame_bytes, int)
    if bad_type or max_frame_bytes <= 0:
        raise InvalidArgument(f"max_frame_bytes must be a positive int, got {max_frame_bytes!r}")


def _is_batch_stream(value: Any) -> bool:
    """Whether ``value`` is framed as a stream of record batches: a RecordBatchReader,
    or a list, tuple or iterator (of record batches, or refused as it is read) other
    than a file (whose lines are no batches: refused with the other types, unread)."""
    if isinstance(value, io.IOBase):
        return False
    return isinstance(value, pa.RecordBatchReader | list | tuple | Iterator)


def frames_streamed(value: Any, max_frame_bytes: int) -> Iterator[memoryview] | None:
    """The Arrow frames of a record-batch reader (or a list, tuple or iterator of record
    batches), each made as the batches it holds are read
    (:func:`tierstore.arrowio.reader_to_frames`); None for any other value.

    Raises :class:`InvalidArgument` for a bad ``max_frame_bytes``, and at once or as
    the frames are taken what ``reader_to_frames`` raises (UnsupportedData,
    MalformedArrow, OversizeFrame)."""
    _check_frame_limit(max_frame_bytes)
    if not _is_batch_stream(value):
        return None
    return (_byte_view(frame) for frame in arrowio.reader_to_frames(value, max_frame_bytes))


def frame_value(value: Any, max_frame_bytes: int) -> FramedValue:
    """Cut ``value`` into frames; the kind follows from its type (a record-batch
    reader's frames are all made here, as its batches are read: see
    :func:`frames_streamed` to take them one at a time).

    Raises :class:`UnsupportedData` for other types, :class:`OversizeFrame`
    for Arrow data with a row (or schema) larger than a frame,
    :class:`~tierstore.errors.MalformedArrow` for a reader that fails as it is read
    or a record batch that fails ``validate(full=True)`` (checked here, once: these
    frames are not validated again),
    and :class:`InvalidArgument` for a ``max_frame_bytes`` that is not a positive int
    (raw bytes cut by a negative size made no frames: an empty shard).
    """
    _check_frame_limit(max_frame_bytes)
    if isinstance(value, bytes | bytearray | memoryview):
        view = memoryview(value)
        if not view.c_contiguous:
            raise UnsupportedData("raw buffers must be C-contiguous")
        return FramedValue(ShardKind.RAW, _raw_frames(view, max_frame_bytes))
    if isinstance(value, pa.Buffer):
        return FramedValue(ShardKind.RAW, _raw_frames(memoryview(value), max_frame_bytes))
    if isinstance(value, pa.Table | pa.RecordBatch):
        frames = arrowio.table_to_frames(value, max_frame_bytes)
        return _arrow(ShardKind.ARROW, tuple(_byte_view(f) for f in frames))
    if _is_tensor(value):
        frames = tensors.tensor_to_frames(value, max_frame_bytes)
        return _arrow(ShardKind.TENSOR, tuple(_byte_view(f) for f in frames))
    streamed = frames_streamed(value, max_frame_bytes)
    if streamed is not None:
        return _arrow(ShardKind.ARROW, tuple(streamed))
    raise UnsupportedData(
        f"cannot store a {type(value).__name__}: use bytes-like data, a pyarrow Table, "
        "RecordBatch or RecordBatchReader, a numpy array or a torch tensor"
    )


def frame_prepared(
    kind: ShardKind, frames: Sequence[bytes | memoryview], max_frame_bytes: int
) -> FramedValue:
    """Accept frames cut by a client: check sizes and, for Arrow kinds, every message.

    Raises :class:`OversizeFrame`, :class:`tierstore.errors.MalformedArrow` (also for
    frames declared a tensor that no read could return as one: tensor metadata that
    disagrees with the column), and :class:`UnsupportedData` for an unknown kind or
    frames that are not contiguous buffers.
    """
    try:
        kind = ShardKind(kind)
    except ValueError:
        raise UnsupportedData(f"unknown shard kind {kind!r:.80}") from None
    views = frames if isinstance(frames, FramesOnDemand) else _contiguous_views(frames)
    for index, size in enumerate(frame_sizes(views)):
        if size > max_frame_bytes:
            raise OversizeFrame(f"frame {index} is {size} bytes; the limit is {max_frame_bytes}")
    if kind is ShardKind.RAW:
        return FramedValue(kind, views)
    checked = arrowio.checked_arrow_frames(views, max_frame_bytes)
    if kind is ShardKind.TENSOR and not tensors.is_tensor_schema(checked.schema):
        raise UnsupportedData("frames declared as a tensor do not hold tensor metadata")
    if kind is ShardKind.TENSOR:
        tensors.check_tensor_schema(checked.schema, checked.rows)
    return _arrow(kind, views, checked.rows)


def _contiguous_views(frames: Sequence[bytes | memoryview]) -> tuple[memoryview, ...]:
    """``frames`` as flat byte views. Raises UnsupportedData for one that is not a
    C-contiguous bytes-like object."""
    try:
        views = tuple(_byte_view(frame) for frame in frames)
    except (TypeError, BufferError) as exc:
        raise UnsupportedData(f"frames must be a sequence of bytes-like objects: {exc}") from None
    for index, view in enumerate(views):
        if not view.c_contiguous:
            raise UnsupportedData(f"frame {index} is not a C-contiguous buffer")
    return views
