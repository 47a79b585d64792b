"""How many slots of an LMDB environment's reader table are taken, read from its lock file.

py-lmdb's ``Environment.readers()`` is the only count it offers (``info()["num_readers"]``
is the most slots ever taken at once), and it leaks: its C callback makes a Python string
of each line of the table and never releases it (py-lmdb 1.8.1: about 75 bytes a taken
slot a call). The node asked for it at every local-read grant, so a host with many local
readers grew the node by megabytes an hour, for good. This module reads the same table
where LMDB keeps it, the lock file (``lock.mdb``), as LMDB's own ``mdb_reader_list``
does: no lock is taken, and the count is of the moment.

It reads through LMDB's own descriptor of the lock file (found in ``/proc/self/fd``),
and never opens the file itself: LMDB holds a ``fcntl`` lock on it to tell whether it
is the only process using the environment, and POSIX drops every such lock a process
holds on a file when *any* of its descriptors of that file is closed. A count that
opened and closed the file would let the next process to open the environment think
itself alone, and wipe the reader table under every reader.

The lock file (mdb.c, ``MDB_txninfo``): a cache line (64 bytes) holding the magic
``0xBEEFC0DE``, the lock format, the readers' mutex, the last committed transaction id
and ``mti_numreaders`` (how many slots were ever taken); a cache line holding the
writers' mutex; then the slots, a cache line each, the owner's pid at byte 8 (0: a free
slot). A ``pthread_mutex_t`` is 40 bytes on x86-64 and most 64-bit Linux machines, 48 on
arm64, which moves ``mti_numreaders`` and, on arm64, the slots. Rather than trust one
layout, :class:`ReaderSlots` takes the first of the layouts it knows whose count agrees
with ``readers()``'s, checked once when it is made; where none does (another platform,
another LMDB), it counts with ``readers()`` as before, and says so in the log.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ReaderSlots", "count_listed_slots"]

log = logging.getLogger(__name__)

_MAGIC = 0xBEEFC0DE
_CACHE_LINE = 64
#: a slot's owner pid: after the slot's transaction id (8 bytes)
_PID_OFFSET = 8
#: sizes of ``pthread_mutex_t`` the layouts are tried with (x86-64 and most 64-bit
#: Linux machines; arm64; 32-bit x86)
_MUTEX_SIZES = (40, 48, 24)
#: how many times the layout check is tried while other processes change the table
_CHECK_TRIES = 5


def _round_up(value: int, to: int) -> int:
    return (value + to - 1) // to * to


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where a lock file keeps ``mti_numreaders`` and its first slot."""

    numreaders_at: int
    slots_at: int

    @classmethod
    def for_mutex(cls, mutex_size: int) -> _Layout:
        """The 64-bit layout with a ``pthread_mutex_t`` of ``mutex_size`` bytes: the
        mutex after magic and format, then the transaction id (8-byte aligned), then
        ``mti_numreaders``; each of the two headers padded to whole cache lines."""
        txnid_at = _round_up(8 + mutex_size, 8)
        numreaders_at = txnid_at + 8
        header = _round_up(numreaders_at + 4, _CACHE_LINE)
        return cls(numreaders_at, header + _round_up(mutex_size, _CACHE_LINE))


def count_listed_slots(listing: str) -> int:
    """The taken slots ``readers()``'s text lists: one line each, starting with its
    pid (the header line does not)."""
    return sum(1 for line in listing.splitlines() if line.lstrip()[:1].isdigit())


class ReaderSlots:
    """Counts the taken slots of an open environment's reader table.

    Thread-safe (it only reads, with ``pread``). It holds no descriptor of its own.
    """

    def __init__(self, env: Any, lock_path: Path) -> None:
        """``env``: the open ``lmdb.Environment``; ``lock_path``: its lock file."""
        self.env = env
        #: the table's slots (``info()`` once: it leaks too, a little, at every call)
        self.size: int = env.info()["max_readers"]
        self._fd = -1
        self._identity = (0, 0)
        self._layout: _Layout | None = None
        found = _open_descriptor_of(lock_path)
        if found is None:
            log.warning(
                "no descriptor of LMDB's lock file %s found in this process: counting "
                "reader slots with py-lmdb's readers(), which leaks memory",
                lock_path,
            )
            return
        self._fd, self._identity = found
        self._layout = self._checked_layout()
        if self._layout is None:
            log.warning(
                "LMDB's lock file %s is not laid out as expected: counting reader slots "
                "with py-lmdb's readers(), which leaks memory",
                lock_path,
            )

    def _read(self, offset: int, size: int) -> bytes | None:
        """``size`` bytes of the lock file at ``offset``, through LMDB's descriptor;
        None if that descriptor no longer is the lock file's (the environment closed)."""
        try:
            stat = os.fstat(self._fd)
            if (stat.st_dev, stat.st_ino) != self._identity:
                return None
            data = os.pread(self._fd, size, offset)
        except OSError:
            return None
        return data if len(data) == size else None

    def _checked_layout(self) -> _Layout | None:
        """The first known layout whose count agrees with ``readers()``'s, read before
        and after it (others may take or free slots meanwhile); None if none does."""
        magic = self._read(0, 4)
        if magic is None or struct.unpack("=I", magic)[0] != _MAGIC:
            return None
        layouts = [_Layout.for_mutex(size) for size in _MUTEX_SIZES]
        # A read of its own holds a slot meanwhile: with none taken, a layout that
        # reads a 0 where mti_numreaders is not would agree with the listing.
        with self.env.begin():
            for _ in range(_CHECK_TRIES):
                before = [self._count(layout) for layout in layouts]
                listed = count_listed_slots(self.env.readers())
                after = [self._count(layout) for layout in layouts]
                for layout, first, second in zip(layouts, before, after, strict=True):
                    if first == second == listed > 0:
                        return layout
        return None

    def _count(self, layout: _Layout) -> int | None:
        """Taken slots under ``layout``; None if the lock file cannot be read so."""
        field = self._read(layout.numreaders_at, 4)
        if field is None:
            return None
        numreaders = struct.unpack("=I", field)[0]
        if numreaders == 0:
            return 0
        if numreaders > self.size:  # not mti_numreaders: this is not the layout
            return None
        table = self._read(layout.slots_at, numreaders * _CACHE_LINE)
        if table is None:
            return None
        pids = np.frombuffer(table, dtype=np.int32)[_PID_OFFSET // 4 :: _CACHE_LINE // 4]
        return int(np.count_nonzero(pids))

    @property
    def from_lock_file(self) -> bool:
        """Whether slots are counted from the lock file (else with ``readers()``)."""
        return self._layout is not None

    def taken(self) -> int:
        """How many slots are taken now, by every process that maps the environment."""
        if self._layout is not None:
            counted = self._count(self._layout)
            if counted is not None:
                return counted
            # LMDB's descriptor went (the environment closed): say so once.
            log.warning(
                "LMDB's lock file can no longer be read here: counting reader slots with "
                "py-lmdb's readers(), which leaks memory"
            )
            self._layout = None
        return count_listed_slots(self.env.readers())


def _open_descriptor_of(path: Path) -> tuple[int, tuple[int, int]] | None:
    """A descriptor this process has open on ``path`` (LMDB's), and the file's device
    and inode; None if there is none, or no ``/proc/self/fd`` to look in. Opens nothing."""
    try:
        wanted = path.stat()
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for name in names:
        try:
            fd = int(name)
            stat = os.fstat(fd)
        except (ValueError, OSError):
            continue
        if (stat.st_dev, stat.st_ino) == (wanted.st_dev, wanted.st_ino):
            return fd, (stat.st_dev, stat.st_ino)
    return None
