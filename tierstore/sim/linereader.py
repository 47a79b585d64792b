"""A file's lines, read once from its start and gunzipped if need be.

For :mod:`tierstore.sim.tracefile`: a trace may come through a pipe (``/dev/stdin``,
``<(zcat f)``, stdin itself), which can be opened and read only once, so the gzip magic
is told from the first bytes of the one read, not from a second look. A line is read
as bytes, for its reader to decode alone (an error then names its own line), up to a
bound its reader sets.

Not thread-safe: a stream is read by one thread at a time.
"""

from __future__ import annotations

import contextlib
import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["next_line", "opened"]

_GZIP_MAGIC = b"\x1f\x8b"


@contextlib.contextmanager
def opened(source: Path | BinaryIO) -> Iterator[io.BufferedIOBase]:
    """``source``'s bytes, gunzipped if it starts with the gzip magic.

    ``source`` is a path or a binary stream (read from where it stands and not closed).
    Opened once and read once from its start: a pipe cannot be opened again, nor its
    first bytes read twice, so they are read and then given back in front of the rest.
    Raises OSError if it cannot be opened or read; reading the stream it gives raises
    EOFError, gzip.BadGzipFile or zlib.error for a corrupt gzip stream.
    """
    with contextlib.ExitStack() as stack:
        stream: BinaryIO = (
            stack.enter_context(source.open("rb")) if isinstance(source, Path) else source
        )
        head = b""
        while len(head) < len(_GZIP_MAGIC):  # a pipe's read may return a byte at a time
            more = stream.read(len(_GZIP_MAGIC) - len(head))
            if not more:
                break
            head += more
        plain = stack.enter_context(
            io.BufferedReader(_Replayed(head, stream), buffer_size=_READ_BYTES)
        )
        if head == _GZIP_MAGIC:
            yield stack.enter_context(gzip.GzipFile(fileobj=plain, mode="rb"))
        else:
            yield plain


#: bytes asked of the file at a time, and of a long line's rest.
_READ_BYTES = 1 << 16
_LONG_READ_BYTES = 1 << 20


class _Replayed(io.RawIOBase):
    """``head``, bytes already read from ``rest``, then the rest of ``rest``; closing it
    leaves ``rest`` open (its opener closes it)."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            count = min(len(view), len(self._head))
            view[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)


def next_line(binary: io.BufferedIOBase, limit: int) -> bytes | bytearray:
    """The next line of ``binary``, its newline included (empty at the end), cut after
    ``limit + 1`` bytes if it is longer: a caller refuses a line longer than ``limit``
    without reading the rest. Takes about the line's size, not twice it."""
    line = binary.readline(_READ_BYTES)
    if len(line) < _READ_BYTES or line.endswith(b"\n"):
        return line  # nearly every line
    # A long line grows in place: readline(limit) joins a list of chunks at the end,
    # twice the line's size for a moment.
    grown = bytearray(line)
    while len(grown) <= limit:
        more = binary.readline(min(_LONG_READ_BYTES, limit + 1 - len(grown)))
        grown += more
        if not more or more.endswith(b"\n"):
            break
    return grown
