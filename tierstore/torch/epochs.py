"""The epoch an iterable dataset reads, shared with the DataLoader workers it reaches.

A DataLoader's workers hold copies of the dataset: made by fork, or unpickled in a
spawned (or forkserver) worker. ``set_epoch()`` in the main process changes the main
process's copy only, which reaches workers made afresh each epoch but not persistent
ones (``persistent_workers=True``): they read epoch 0's order again and again. So the
epoch lives in shared memory, set in the main process and read by every worker made
from it, however started.

Beside it lives the epoch ``set_epoch()`` named that no iteration has begun reading yet
(a resume state of another epoch is then discarded: docs/torch.md, Resume). It is
cleared by the first ``next()`` of an iteration in whichever process iterates — with
workers, a worker; the main process's copy never iterates, so a mark of its own would
never be cleared there, and a state loaded later (a rollback) would be discarded.

The last epoch a reader read to its end lives there too, with the DataLoader iteration
that read it (its workers' base seed) and which of its workers did: a worker made afresh
each epoch is a new copy of the main process's dataset, which finished no epoch, and
could not tell that a loop without ``set_epoch()`` read the same epoch again. A worker
id marks an iteration seeded alike again (``torch.manual_seed(s)`` before each epoch
draws the same base seed): each id begins reading once per iteration, so a worker that
finds its own id among those that finished the epoch in "its" iteration is of a later
one, while one that starts after another worker of its iteration finished is not.

And the epoch a DataLoader worker began reading since the epoch was last named or a
state loaded: where workers stand is known to them alone, so a main process asked for
its state then has only the epoch's start (or the state loaded) to give, and says so
(``IterableDataset.state_dict``).

A plain pickle of the dataset (not one made to start a process) carries the epoch and
the epoch named: shared memory travels only to processes started from this one.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import get_spawning_popen
from typing import Any

__all__ = ["SharedEpoch"]

_NONE = -1  # no epoch (named and not begun, or finished)
#: worker ids kept in the 64-bit signed mask of those that finished; the higher ones
#: are not kept (their epochs read again are told by the base seed alone)
_MASK_WORKERS = 63


def _worker_bit(worker: int) -> int:
    """``worker``'s bit in the mask of workers that finished (0 for the ids not kept)."""
    return 1 << worker if 0 <= worker < _MASK_WORKERS else 0


class SharedEpoch:
    """An epoch number in shared memory, the epoch named but not begun (or None), the
    last epoch finished with the iteration and the workers that finished it, and the
    epoch a worker began since the epoch was named or loaded (or None). Reads
    and writes of one 64-bit integer are whole; no lock (one inherited through fork could
    be held for good): two workers that finish at once may lose one's mark, which can
    only leave an epoch read again unwarned, never warn of one wrongly."""

    def __init__(self, epoch: int = 0, named: int | None = None) -> None:
        named_cell = _NONE if named is None else named
        # epoch, named and not begun, last finished, the iteration that finished it, a
        # mask of the ids of its workers that did, and the last epoch a worker began
        self._cells: Any = multiprocessing.RawArray("q", [epoch, named_cell, _NONE, 0, 0, _NONE])

    @property
    def value(self) -> int:
        return int(self._cells[0])

    @value.setter
    def value(self, epoch: int) -> None:
        # ctypes wraps silently (2**64 + 5 is stored as 5): callers check the range.
        assert 0 <= epoch < 1 << 63, epoch
        self._cells[0] = epoch

    @property
    def named(self) -> int | None:
        """The epoch :meth:`name` set, until an iteration began (:meth:`begun`)."""
        named = int(self._cells[1])
        return None if named == _NONE else named

    def name(self, epoch: int) -> None:
        """Read ``epoch`` from now on, and mark it named and not begun (by workers too)."""
        self.value = epoch
        self._cells[1] = epoch
        self._cells[5] = _NONE

    def load(self, epoch: int) -> None:
        """Read ``epoch`` from now on, from a state loaded: not begun by workers."""
        self.value = epoch
        self._cells[5] = _NONE

    def begun(self) -> None:
        """An iteration began reading: the epoch named is no longer pending."""
        if self._cells[1] != _NONE:  # a read, not a write, on every iteration after
            self._cells[1] = _NONE

    def worker_began(self, epoch: int) -> None:
        """A DataLoader worker began reading ``epoch`` (kept until :meth:`name` or
        :meth:`load`)."""
        if self._cells[5] != epoch:  # a read, not a write, for every worker after the first
            self._cells[5] = epoch

    @property
    def begun_by_workers(self) -> int | None:
        """The epoch a DataLoader worker began reading since the epoch was named or
        loaded, if any."""
        began = int(self._cells[5])
        return None if began == _NONE else began

    def finish(self, epoch: int, iteration: int, worker: int) -> None:
        """Worker ``worker`` of DataLoader iteration ``iteration`` read ``epoch`` to its
        end."""
        bit = _worker_bit(worker)
        if self._cells[2] == epoch and self._cells[3] == iteration:
            self._cells[4] |= bit
            return
        # The mask, then the iteration, then the epoch: a reader that sees the epoch
        # sees its iteration, and one that sees the iteration sees its mask.
        self._cells[4] = bit
        self._cells[3] = iteration
        self._cells[2] = epoch

    def finished_before(self, epoch: int, iteration: int, worker: int) -> bool:
        """Whether ``epoch``, the last epoch finished, was read to its end by a worker of
        another DataLoader iteration than ``iteration``, or by worker ``worker`` of an
        iteration that drew the same base seed (which is then a later one: a worker id
        begins reading once per iteration)."""
        if self._cells[2] != epoch:
            return False
        return bool(self._cells[3] != iteration or self._cells[4] & _worker_bit(worker))

    def __getstate__(self) -> dict[str, Any]:
        if get_spawning_popen() is None:  # not starting a process: the numbers only
            return {"epoch": self.value, "named": self.named}
        return {"cells": self._cells}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "cells" in state:
            self._cells = state["cells"]
        else:
            self.__init__(state["epoch"], state.get("named"))  # type: ignore[misc]
