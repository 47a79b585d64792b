"""Dense integer slots for opaque keys, and FIFO queues threaded through them.

Policies see opaque hashable keys; their numeric state lives in numpy arrays indexed
by a dense slot number, so the numba kernels (:mod:`tierstore.policy.kernels`) can
work on it without touching Python objects. :class:`SlotTable` owns that mapping,
each slot's size, and any number of intrusive doubly linked FIFO queues (a slot is
in at most one queue at a time). Per-slot arrays of the policies themselves grow
with the table through :meth:`SlotTable.add_array`. Python code reads and writes
single items through memoryviews of the arrays (about 3x faster per item than
indexing an ndarray, which matters on every read); kernels get the ndarrays.

Conventions: a queue's *tail* is its oldest entry, its *head* its newest; walking
from the tail follows ``newer``. ``NIL`` (-1) ends a walk.

Per-slot cost: ``size`` (8 bytes), ``newer``/``older`` (4 + 4), ``queue`` (1) = 17
bytes. The key -> slot dict and the slot -> key list are Python objects and are not
counted in :meth:`Policy.metadata_bytes_per_shard` (the engine keeps the key objects
anyway; the figure is about the numeric state a policy adds per shard).

Not thread-safe, like the policies that use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from tierstore.policy.base import Key

__all__ = ["NIL", "SLOT_TABLE_BYTES", "SlotTable"]

NIL = -1
#: numeric bytes per slot that the table itself keeps (see the module docstring).
SLOT_TABLE_BYTES = 8 + 4 + 4 + 1

_NO_QUEUE = -1
#: arrays a reset leaves alone (unlink() and push() maintain them).
_LINKS = frozenset({"newer", "older", "queue"})
#: the table's own per-slot arrays: name, dtype, fill value of a free slot.
_OWN_ARRAYS: tuple[tuple[str, type[np.generic], float], ...] = (
    ("size", np.int64, 0),
    ("newer", np.int32, NIL),
    ("older", np.int32, NIL),
    ("queue", np.int8, _NO_QUEUE),
)


class SlotTable:
    """Keys <-> dense slots (reused after :meth:`release`), sizes, and FIFO queues.

    ``queues`` is how many independent queues the table threads (numbered from 0).
    """

    def __init__(self, queues: int = 1, initial_capacity: int = 256) -> None:
        self._slot_of: dict[Key, int] = {}
        self._keys: list[Key | None] = []
        self._free: list[int] = []
        # name -> (fill value of a free slot, the array); the first four are the table's.
        self._arrays: dict[str, tuple[float, npt.NDArray[Any]]] = {}
        self._views: dict[str, memoryview[Any]] = {}
        for name, dtype, fill in _OWN_ARRAYS:
            self._arrays[name] = (fill, np.full(max(16, initial_capacity), fill, dtype=dtype))
        self._refresh_views()
        self.heads = [NIL] * queues
        self.tails = [NIL] * queues
        self.counts = [0] * queues
        self.bytes = [0] * queues

    # --- keys and slots ---------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slot_of)

    @property
    def capacity(self) -> int:
        """Slots allocated in every per-slot array (grows by doubling)."""
        return len(self._arrays["size"][1])

    def slot(self, key: Key) -> int:
        """``key``'s slot, or NIL if it has none."""
        return self._slot_of.get(key, NIL)

    def key(self, slot: int) -> Key:
        """The key that owns ``slot`` (which must be in use)."""
        return self._keys[slot]

    def add(self, key: Key) -> int:
        """``key``'s slot, allocating one (with zeroed state) if it has none."""
        slot = self._slot_of.get(key, NIL)
        if slot != NIL:
            return slot
        if self._free:
            slot = self._free.pop()
            self._keys[slot] = key
        else:
            slot = len(self._keys)
            if slot == self.capacity:
                self._grow(2 * self.capacity)
            self._keys.append(key)
        self._slot_of[key] = slot
        return slot

    def release(self, slot: int) -> None:
        """Give ``slot`` back (unlinking it from its queue); its key forgets it."""
        if self.queue[slot] != _NO_QUEUE:
            self.unlink(slot)
        del self._slot_of[self._keys[slot]]
        self._keys[slot] = None
        self._reset(slot)
        self._free.append(slot)

    def rekey(self, slot: int, key: Key) -> None:
        """Hand ``slot`` (in use, possibly queued) over to ``key``, which has none: its
        state is reset but it stays where it is in its queue. Cheaper than a release
        and an add when a policy recycles its oldest entry for a new key."""
        del self._slot_of[self._keys[slot]]
        self._keys[slot] = key
        self._slot_of[key] = slot
        queue = self.queue[slot]
        if queue != _NO_QUEUE:
            self.bytes[queue] -= self.size[slot]
        self._reset(slot)

    def _reset(self, slot: int) -> None:
        views = self._views
        for name, (fill, _) in self._arrays.items():
            if name not in _LINKS:
                views[name][slot] = fill

    def add_array(self, name: str, dtype: type[np.generic], fill: float = 0) -> None:
        """Register a per-slot array; released slots are reset to ``fill``."""
        self._arrays[name] = (fill, np.full(self.capacity, fill, dtype=dtype))
        self._refresh_views()

    def array(self, name: str) -> npt.NDArray[Any]:
        """The per-slot numpy array registered under ``name`` (for kernels). Re-fetch it
        after any :meth:`add`, which may grow (replace) it."""
        return self._arrays[name][1]

    def view(self, name: str) -> memoryview[Any]:
        """A memoryview of the same array, for scalar access from Python (several times
        faster per item than indexing the ndarray). Same lifetime rule as :meth:`array`."""
        return self._views[name]

    def _grow(self, capacity: int) -> None:
        for name, (fill, array) in self._arrays.items():
            bigger = np.full(capacity, fill, dtype=array.dtype)
            bigger[: len(array)] = array
            self._arrays[name] = (fill, bigger)
        self._refresh_views()

    def _refresh_views(self) -> None:
        self._views = {name: array.data for name, (_, array) in self._arrays.items()}
        self.size = self._views["size"]
        self.newer = self._views["newer"]
        self.older = self._views["older"]
        self.queue = self._views["queue"]

    # --- queues -----------------------------------------------------------------

    def queue_of(self, slot: int) -> int:
        """The queue ``slot`` is in, or NIL."""
        queue: int = self.queue[slot]
        return queue

    def push(self, queue: int, slot: int) -> None:
        """Append ``slot`` (not in any queue) at ``queue``'s head (newest end)."""
        head = self.heads[queue]
        self.older[slot] = head
        self.newer[slot] = NIL
        if head == NIL:
            self.tails[queue] = slot
        else:
            self.newer[head] = slot
        self.heads[queue] = slot
        self.queue[slot] = queue
        self.counts[queue] += 1
        self.bytes[queue] += self.size[slot]

    def unlink(self, slot: int) -> None:
        """Take ``slot`` out of its queue (it must be in one)."""
        queue = self.queue[slot]
        older, newer = self.older[slot], self.newer[slot]
        if older == NIL:
            self.tails[queue] = newer
        else:
            self.newer[older] = newer
        if newer == NIL:
            self.heads[queue] = older
        else:
            self.older[newer] = older
        self.queue[slot] = _NO_QUEUE
        self.counts[queue] -= 1
        self.bytes[queue] -= self.size[slot]

    def move_to_head(self, queue: int, slot: int) -> None:
        """Move ``slot`` (in any queue) to ``queue``'s head."""
        if self.queue[slot] != _NO_QUEUE:
            self.unlink(slot)
        self.push(queue, slot)

    def resize(self, slot: int, size: int) -> None:
        """Set ``slot``'s size, keeping its queue's byte count right."""
        queue = self.queue[slot]
        if queue != _NO_QUEUE:
            self.bytes[queue] += size - self.size[slot]
        self.size[slot] = size

    def oldest_first(self, queue: int) -> Iterator[int]:
        """``queue``'s slots from the tail; the caller must not unlink the slot it was
        just given before advancing (take ``newer`` first if it does)."""
        slot = self.tails[queue]
        while slot != NIL:
            following = self.newer[slot]
            yield slot
            slot = following
