"""The epoch an iterable dataset reads, shared with the DataLoader workers it reaches.

A DataLoader's workers hold copies of the dataset: made by fork, or unpickled in a
spawned (or forkserver) worker. ``set_epoch()`` in the main process changes the main
process's copy only, which reaches workers made afresh each epoch but not persistent
ones (``persistent_workers=True``): they read epoch 0's order again and again. So the
epoch lives in shared memory, set in the main process and read by every worker made
from it, however started.

A plain pickle of the dataset (not one made to start a process) carries the number:
shared memory travels only to processes started from this one.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import get_spawning_popen
from typing import Any

__all__ = ["SharedEpoch"]


class SharedEpoch:
    """An epoch number in shared memory. Reads and writes of one 64-bit integer are
    whole; no lock (one inherited through fork could be held for good)."""

    def __init__(self, epoch: int = 0) -> None:
        self._cell: Any = multiprocessing.RawValue("q", epoch)

    @property
    def value(self) -> int:
        return int(self._cell.value)

    @value.setter
    def value(self, epoch: int) -> None:
        # ctypes wraps silently (2**64 + 5 is stored as 5): callers check the range.
        assert 0 <= epoch < 1 << 63, epoch
        self._cell.value = epoch

    def __getstate__(self) -> dict[str, Any]:
        if get_spawning_popen() is None:  # not starting a process: the number only
            return {"epoch": self.value}
        return {"cell": self._cell}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "cell" in state:
            self._cell = state["cell"]
        else:
            self.__init__(state["epoch"])  # type: ignore[misc]
