"""What a put reads: a file path or a regular file's frames read one at a time as
they are sent (memory does not grow with the file), another readable's frames read as
they come (a pipe's, a device's, a compressed file's), or the value itself; and frames
that can be sent once only (a record-batch reader's, a pipe's)."""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import stat
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from tierstore.errors import InvalidArgument, ServerBusy, Unavailable

__all__ = [
    "FileFrames",
    "OnePassFrames",
    "ReadableValue",
    "StreamFrames",
    "note_a_reader_read",
    "refuse_a_reader_read_before",
]


class FileFrames:
    """A regular file's bytes from ``start`` (its position when given) to its end, as
    raw frames, read one frame at a time as they are sent; once all are read, the
    file's position is at its end, as after ``read()``.

    Not memory-mapped: touching a mapped page past the end of a file cut short
    meanwhile kills the process with SIGBUS, which Python cannot catch. A file that
    shrinks while it is read raises InvalidArgument instead (the put is then
    cancelled and stores nothing); bytes it gains past its size at opening are not
    read.
    """

    def __init__(self, file: IO[bytes], start: int, end: int, frame_bytes: int) -> None:
        self._file = file
        self._start = start
        self._end = max(start, end)
        self._frame_bytes = frame_bytes

    def __len__(self) -> int:
        return -(-(self._end - self._start) // self._frame_bytes)

    def __iter__(self) -> Iterator[bytes]:
        fd = self._file.fileno()
        for offset in range(self._start, self._end, self._frame_bytes):
            wanted = min(self._frame_bytes, self._end - offset)
            try:
                frame = os.pread(fd, wanted, offset)
            except OSError as exc:
                raise InvalidArgument(f"cannot read {self._file.name}: {exc}") from exc
            if len(frame) != wanted:
                raise InvalidArgument(
                    f"{self._file.name} shrank while it was read (it had {self._end} "
                    "bytes when opened); nothing was stored"
                )
            yield frame
        self._file.seek(self._end)


class StreamFrames:
    """A readable's bytes from its position to its end, as raw frames read as they are
    sent (a pipe's, a device's, a compressed file's: memory does not grow with them),
    not counted first: every frame but the last is full. Readable once. Up to two
    frames are read here, before the put begins: a file that cannot be read at all is
    InvalidArgument at once, and a stream that ends within them is whole
    (:meth:`whole`). A read that fails later is InvalidArgument too (the put is then
    cancelled and stores nothing)."""

    def __init__(self, file: Any, frame_bytes: int) -> None:
        self._file = file
        self._frame_bytes = frame_bytes
        #: the frames read ahead, and whether the bytes ended within them
        self._ahead = [self._frame()]
        self._ended = len(self._ahead[0]) < frame_bytes
        if not self._ended:  # a full first frame: only the next tells whether it is all
            self._ahead.append(self._frame())
            self._ended = len(self._ahead[1]) < frame_bytes

    def whole(self) -> list[bytes] | None:
        """Every frame, when the bytes ended within the two read already; else None."""
        return [frame for frame in self._ahead if frame] if self._ended else None

    def __iter__(self) -> Iterator[bytes]:
        ahead, self._ahead = self._ahead, []
        yield from (frame for frame in ahead if frame)
        while not self._ended:
            frame = self._frame()
            self._ended = len(frame) < self._frame_bytes  # the end came before it was full
            if frame:
                yield frame

    def _frame(self) -> bytes:
        """The next ``frame_bytes`` bytes, fewer only at the end (a pipe reads what its
        writer wrote so far)."""
        parts: list[bytes] = []
        wanted = self._frame_bytes
        while wanted:
            part = _read(self._file, wanted)
            if not part:
                break
            parts.append(part)
            wanted -= len(part)
        return b"".join(parts)


def _streamed(file: Any, frame_bytes: int) -> bytes | StreamFrames:
    """``file``'s bytes as :class:`StreamFrames`, or as the bytes themselves when they
    ended within the frames read ahead: those are put counted, as every node takes
    them, and may be sent again."""
    frames = StreamFrames(file, frame_bytes)
    whole = frames.whole()
    return frames if whole is None else b"".join(whole)


def _read(file: Any, size: int) -> bytes:
    """``file.read(size)``, or InvalidArgument saying why it cannot be read (a file
    closed, or opened for writing only, raised a bare ValueError or
    io.UnsupportedOperation; a non-blocking one with nothing to read gave None)."""
    name = getattr(file, "name", None) or "the file object"
    try:
        part = file.read(size)
    except (OSError, ValueError) as exc:  # UnsupportedOperation is both
        raise InvalidArgument(f"cannot read {name}: {exc}") from exc
    if part is None:
        raise InvalidArgument(f"cannot read {name}: it is non-blocking and had nothing to read")
    if not isinstance(part, bytes | bytearray | memoryview):
        raise InvalidArgument(f"cannot read {name}: it read {type(part).__name__}, not bytes")
    return bytes(part)


class OnePassFrames:
    """Frames made as they are sent, which cannot be made again (a record-batch
    reader's: its batches are read once). A put's attempt that failed before any frame
    left the client may be made again; one that took a frame may not."""

    def __init__(self, frames: Iterable[bytes | memoryview]) -> None:
        self._frames = iter(frames)
        self._taken = False

    def check_unread(self, what: str, busy: bool = False) -> None:
        """Raise Unavailable (the failure the put is made again for) once a frame was
        taken: ``what`` (the put) failed, and its frames cannot be made again;
        ServerBusy with ``busy``: the node refused the put as busy (gRPC had taken
        frames to send meanwhile)."""
        if not self._taken:
            return
        if busy:
            raise ServerBusy(
                f"{what} was refused by a busy node (its places for such calls all taken) "
                "after its frames had begun to be taken (a reader's or a stream's), which "
                "cannot be read again: nothing was stored; put it again with a new reader, "
                "or later"
            )
        raise Unavailable(
            f"{what} failed to reach the server after its frames had begun to be taken (a "
            "reader's or a stream's), which cannot be read again: nothing was stored; put "
            "it again with a new reader"
        )

    @property
    def taken(self) -> bool:
        """Whether a frame was taken: the source has been read from."""
        return self._taken

    def __iter__(self) -> Iterator[bytes | memoryview]:
        for frame in self._frames:
            self._taken = True
            yield frame


#: Record-batch readers and iterators a put has read from: their batches are gone, and a
#: put of one again stored what was left (none: a zero-row table, or the rest of a failed
#: put's) without a word.
_READ_BY_A_PUT: weakref.WeakSet[Any] = weakref.WeakSet()


def refuse_a_reader_read_before(source: Any, what: str) -> None:
    """InvalidArgument if ``source`` (a put's value) is a record-batch reader or iterator
    that an earlier put read. One that cannot be referred to weakly (a list's iterator)
    is not known, and goes through, as does any value no put reads once."""
    try:
        read = source in _READ_BY_A_PUT
    except (TypeError, ValueError):  # unhashable: an array, a writable memoryview
        return
    if read:
        raise InvalidArgument(
            f"{what}: this reader (or iterator) was read by an earlier put, and its batches "
            "are gone: a put of it would store what is left of them (none, or the rest), "
            "not the table; make a new one (table.to_reader(), or open the source again)"
        )


def note_a_reader_read(source: Any, frames: OnePassFrames) -> None:
    """Remember ``source`` as read once ``frames`` (made from it) had a frame taken."""
    if frames.taken:
        with contextlib.suppress(TypeError):  # not weakly referenceable: not known
            _READ_BY_A_PUT.add(source)


def _other_buffer(data: Any) -> Any:
    """``data`` as a memoryview if it is a buffer that the framing does not know by type
    (an array.array was UnsupportedData), else ``data``. Not numpy's, torch's or
    pyarrow's objects: their types say how to store them (a numpy scalar exports its
    bytes too, and is no raw shard)."""
    if type(data).__module__.partition(".")[0] in ("numpy", "torch", "pyarrow"):
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        return data
    try:
        return memoryview(data)
    except TypeError:
        return data  # the framing says what it takes


def _is_plain_file(data: object) -> bool:
    """Whether ``data``'s bytes are its descriptor's, to be read a frame at a time: a
    FileIO, or a buffered reader over one (a tar member's reader is buffered over the
    archive's bytes, and has no descriptor of its own)."""
    if isinstance(data, io.BufferedReader | io.BufferedRandom):
        data = data.raw
    return isinstance(data, io.FileIO)


class ReadableValue:
    """Context manager: a file path or file object as :class:`FileFrames` (a regular
    file) or :class:`StreamFrames` (anything else readable, its bytes when they end
    within two frames), or ``data`` itself."""

    def __init__(self, data: Any, frame_bytes: int) -> None:
        self._data = data
        self._frame_bytes = frame_bytes
        self._file: IO[bytes] | None = None

    def __enter__(self) -> Any:
        data = self._data
        if isinstance(data, str | os.PathLike):
            try:
                self._file = open(Path(data), "rb")
            except OSError as exc:
                raise InvalidArgument(f"cannot read {data}: {exc}") from exc
            data = self._file
        if isinstance(data, mmap.mmap):  # a buffer, though it reads too (from its position)
            try:
                return memoryview(data)
            except ValueError as exc:  # closed
                raise InvalidArgument(f"cannot read the mmap: {exc}") from None
        if hasattr(data, "read") and not isinstance(data, bytes | bytearray | memoryview):
            return self._file_value(data)
        return _other_buffer(data)

    def _file_value(self, data: Any) -> Any:
        """A file object's bytes from its position: a regular file's as FileFrames."""
        if isinstance(data, io.TextIOBase):
            raise InvalidArgument(
                f"{getattr(data, 'name', 'the file')} was opened in text mode: open it in "
                "binary mode ('rb') to store its bytes"
            )
        if isinstance(data, io.BytesIO):  # in memory already: counted, sent again if need be
            return _read(data, -1)
        wrapped = getattr(data, "file", None)  # a tempfile's wrapper: the file in it
        if _is_plain_file(wrapped):
            data = wrapped
        if not _is_plain_file(data):
            # Its bytes need not be its descriptor's: a gzip file's are decompressed,
            # and its tell() counts them (read from the descriptor, it stored nothing).
            return _streamed(data, self._frame_bytes)
        try:
            status = os.fstat(data.fileno())
        except (OSError, AttributeError, ValueError):
            return _streamed(data, self._frame_bytes)
        if not stat.S_ISREG(status.st_mode) or not data.readable():
            return _streamed(data, self._frame_bytes)  # a pipe or a device: as they come
        if status.st_size < 2 * self._frame_bytes:
            # Read to its end: a /proc file's size says 0 and a sysfs file's 4096,
            # whatever they hold (sized by that, one stored nothing, the other was
            # refused as shrinking). Two frames at most are read ahead.
            return _streamed(data, self._frame_bytes)
        # From where the file stands, as read() would (a header skipped, say).
        return FileFrames(data, data.tell(), status.st_size, self._frame_bytes)

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
