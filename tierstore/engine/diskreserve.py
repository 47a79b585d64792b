"""The disk reserve: bytes set aside in a file beside the hot tier, given back when
the disk is full, so that what frees room can still run.

LMDB copies a page before it changes it, so a delete or an eviction needs a few new
pages before it frees any. With no free page in the map and no room left on the disk
it failed like a put: a node on a full disk could neither delete nor evict a shard,
though the error said to do just that, and once stopped it could not start again (the
embedded archive writes its pid file first). So the store keeps ``disk_reserve_bytes``
(16 MiB by default; 0: none) in ``<data-dir>/disk.reserve`` and gives it back:

* when a delete, an eviction, a dataset delete or the drop of a failed put's or
  promotion's staged frames finds the disk full: it runs once more
  (:func:`once_more_with_room`), and the pages it frees serve the deletes after it;
* when a node starts on a disk with less room than the reserve (``tierstore serve``).

Puts are not refused meanwhile: the room given back, and the pages deletes free, are
anyone's. The reserve is made again, when the store opens and at the mover's passes,
once the disk has twice its size free (an LMDB file never shrinks, so that is when
room was freed on the disk itself).

Thread-safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tierstore.tiers.lmdb import DiskFull

__all__ = ["RESERVE_NAME", "DiskReserve", "once_more_with_room"]

_Result = TypeVar("_Result")

log = logging.getLogger(__name__)


def once_more_with_room(commit: Callable[[], _Result], give_room: Callable[[], bool]) -> _Result:
    """``commit()``, which frees room in the hot tier (a delete, an eviction, a drop of
    staged frames); run once more if it found the disk full and ``give_room()`` (the
    reserve's :meth:`DiskReserve.release`) gave room back: LMDB needs a few new pages
    before it frees any."""
    try:
        return commit()
    except DiskFull:
        if not give_room():
            raise
    return commit()


#: the reserve's file name, in the data directory.
RESERVE_NAME = "disk.reserve"


class DiskReserve:
    """The reserve file of one data directory."""

    def __init__(self, data_dir: Path, size: int) -> None:
        """``size`` bytes in ``data_dir``/:data:`RESERVE_NAME` (0: no reserve)."""
        self.path = Path(data_dir) / RESERVE_NAME
        self.size = size
        self._lock = threading.Lock()
        #: whether the last try to make it found too little room (logged once per spell).
        self._short = False

    @property
    def held(self) -> bool:
        """Whether the reserve file is there, whole."""
        try:
            return self.path.stat().st_size >= self.size > 0
        except OSError:
            return False

    def ensure(self) -> bool:
        """Make the reserve if it is missing and the disk has twice its size free;
        whether it is held now. Never raises: a reserve that cannot be made is logged
        (and the store runs without one until it can be). With no reserve configured, one
        left from before is removed."""
        if self.size <= 0:
            with contextlib.suppress(OSError):  # one left from before it was turned off
                self.path.unlink()
            return False
        with self._lock:
            if self.held:
                return True
            partial = self.path.with_name(RESERVE_NAME + ".partial")
            try:
                free = shutil.disk_usage(self.path.parent).free
                if free < 2 * self.size:
                    if not self._short:
                        self._short = True
                        log.warning(
                            "no disk reserve in %s: the disk has %s bytes free, and the "
                            "%s-byte reserve is made once it has twice that",
                            self.path.parent,
                            f"{free:,}",
                            f"{self.size:,}",
                        )
                    return False
                descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.posix_fallocate(descriptor, 0, self.size)  # blocks, not a sparse file
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
                os.replace(partial, self.path)  # whole, or not there
            except OSError as exc:
                with contextlib.suppress(OSError):
                    partial.unlink()
                log.warning("cannot make the disk reserve %s: %s", self.path, exc)
                return False
            self._short = False
            return True

    def release(self) -> bool:
        """Give the reserve back to the disk; whether there was one to give."""
        with self._lock:
            try:
                self.path.unlink()
            except FileNotFoundError:
                return False
            except OSError as exc:
                log.warning("cannot give back the disk reserve %s: %s", self.path, exc)
                return False
        log.warning(
            "the disk of %s is full: gave back its %s-byte reserve so that deletes and "
            "evictions can commit; free space on it (the reserve is made again once the "
            "disk has %s bytes free)",
            self.path.parent,
            f"{self.size:,}",
            f"{2 * self.size:,}",
        )
        return True
