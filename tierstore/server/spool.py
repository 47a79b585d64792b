"""Frames of an incoming put, held until the whole stream has arrived.

A put commits in one LMDB transaction, so its frames must all be at hand first;
holding the LMDB writer open while a slow client streams would stall every
other writer. Small puts stay in memory; past ``memory_limit`` the frames go to
an unlinked temporary file in the data directory (so a put's size is bounded by
disk, not RAM). Closing the spool (or an interrupted stream) frees everything:
an abandoned put leaks no space.
"""

from __future__ import annotations

import contextlib
import mmap
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = ["FrameSpool"]


class FrameSpool:
    """Append-only store of frames; one per put, used by one thread."""

    def __init__(self, directory: Path, memory_limit: int = 64 << 20) -> None:
        self._directory = directory
        self._memory_limit = memory_limit
        self._frames: list[bytes] = []
        self._sizes: list[int] = []
        self._in_memory = 0
        self._file: IO[bytes] | None = None
        self._map: mmap.mmap | None = None

    def __enter__(self) -> FrameSpool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def count(self) -> int:
        return len(self._sizes)

    @property
    def nbytes(self) -> int:
        return sum(self._sizes)

    def append(self, frame: bytes) -> None:
        """Keep one frame (in memory, or in the spool file past the memory limit)."""
        self._sizes.append(len(frame))
        if self._file is None and self._in_memory + len(frame) <= self._memory_limit:
            self._frames.append(frame)
            self._in_memory += len(frame)
            return
        if self._file is None:
            self._directory.mkdir(parents=True, exist_ok=True)
            # Unnamed (already unlinked): the kernel frees it even if the server crashes.
            self._file = tempfile.TemporaryFile(dir=self._directory, prefix="put-")  # noqa: SIM115
            for held in self._frames:
                self._file.write(held)
            self._frames = []
        self._file.write(frame)

    def views(self) -> list[memoryview]:
        """Every frame, in order, as views valid until :meth:`close`."""
        if self._file is None:
            return [memoryview(frame) for frame in self._frames]
        self._file.flush()
        if self._map is None:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        whole = memoryview(self._map)
        views, position = [], 0
        for size in self._sizes:
            views.append(whole[position : position + size])
            position += size
        return views

    def close(self) -> None:
        """Free memory and the spool file. Idempotent."""
        self._frames = []
        if self._map is not None:
            # Views still alive: the mapping is freed when they are.
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None
