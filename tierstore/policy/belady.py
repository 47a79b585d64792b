"""Belady's offline optimum (with bypass), and a size-aware variant.

Both are given ``future``: every key the driver will read, in the order it will call
:meth:`~tierstore.policy.base.Policy.record_access`. They are yardsticks for the
simulator, never for the engine (which cannot know the future).

* ``belady`` evicts the resident shard whose next read is farthest away, and refuses
  (bypasses) a missed shard whose next read is farther than every resident's — or
  that is never read again. For unit sizes this is optimal (MIN, with bypass);
  ``tests/policy/test_belady.py`` checks it against an exhaustive search.
* ``belady-size`` is the usual heuristic for variable sizes (no polynomial optimum is
  known): it evicts the largest ``size x distance to next read``, the bytes-time a
  shard would occupy the tier before paying off, and refuses a missed shard whose
  ``size x distance`` exceeds the would-be victim's. It is a strong reference, not a
  proven bound.

Next uses come from a CSR index of each key's read positions (built once, O(n log n));
a lookup is one binary search. ``belady`` keeps a max-heap of resident next uses
(lazy deletion); ``belady-size`` must rescan residents because the order of
``size x distance`` changes as time passes — it uses the ``farthest_weighted`` kernel.

Raises InvalidArgument from ``record_access`` when a read differs from ``future``
(a driver that does not replay the future it promised would make the "optimum" wrong).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

import numpy as np

from tierstore.errors import InvalidArgument
from tierstore.policy.base import Key, Policy
from tierstore.policy.kernels import farthest_weighted

__all__ = ["BeladyPolicy", "BeladySizePolicy"]

#: the "next use" of a shard never read again (beyond any future index).
NEVER = np.int64(1 << 62)


class _Future:
    """The reads to come: for each read, the index of the same key's next read, and
    each key's read positions (CSR over dense ids) for keys inserted without a read."""

    def __init__(self, future: Sequence[Key]) -> None:
        self.ids: dict[Key, int] = {}
        sequence = np.fromiter(
            (self.ids.setdefault(key, len(self.ids)) for key in future),
            dtype=np.int64,
            count=len(future),
        )
        self.keys = list(self.ids)
        self.sequence = sequence.tolist()
        self.order = np.argsort(sequence, kind="stable")
        self.offsets = np.searchsorted(sequence[self.order], np.arange(len(self.ids) + 1))
        # following[i]: index of the next read of the key read at i (NEVER if none).
        following = np.full(len(future), NEVER, dtype=np.int64)
        same = sequence[self.order[1:]] == sequence[self.order[:-1]]
        following[self.order[:-1][same]] = self.order[1:][same]
        self.following = following.tolist()
        self.step = 0  # reads seen so far
        self._last: tuple[Key, int] | None = None  # (key just read, its next read)

    def advance(self, key: Key) -> int:
        """Move past the read of ``key``, which must be the next one; its next read."""
        step = self.step
        if step >= len(self.sequence) or self.keys[self.sequence[step]] != key:
            expected = self.keys[self.sequence[step]] if step < len(self.sequence) else None
            raise InvalidArgument(
                f"read {step} is {key!r}, but the future given to the policy says {expected!r}"
            )
        self.step = step + 1
        upcoming: int = self.following[step]
        self._last = (key, upcoming)
        return upcoming

    def next_use(self, key: Key) -> int:
        """Index of the first read of ``key`` at or after the current step, or NEVER."""
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        ident = self.ids.get(key)
        if ident is None:
            return int(NEVER)
        start, end = self.offsets[ident], self.offsets[ident + 1]
        found = start + np.searchsorted(self.order[start:end], self.step)
        return int(self.order[found]) if found < end else int(NEVER)


class BeladyPolicy(Policy):
    """Farthest-next-use eviction with bypass, given the future (unit-size optimum)."""

    name = "belady"

    def __init__(self, *, future: Sequence[Key]) -> None:
        self._future = _Future(future)
        self._next: dict[Key, int] = {}  # resident key -> its next read index
        self._sizes: dict[Key, int] = {}
        self._heap: list[tuple[int, int, Key]] = []  # (-next use, tiebreak, key)
        self._pushes = 0
        # resident key -> the tiebreak of its one current heap entry: an entry is stale
        # unless it is the key's last one (a next use alone cannot tell: a key inserted
        # again with the same one had its old entry pass for current beside the new).
        self._entry: dict[Key, int] = {}

    def record_access(self, key: Key, size: int, now: float, hit: bool) -> None:
        upcoming = self._future.advance(key)
        if key in self._next:
            self._set_next(key, upcoming)

    def admit(self, key: Key, size: int, now: float, free_bytes: int) -> bool:
        if size <= free_bytes:
            return True
        upcoming = self._future.next_use(key)
        top = self._peek()
        return upcoming != NEVER and top is not None and upcoming < self._next[top]

    def inserted(self, key: Key, size: int, now: float) -> None:
        self._sizes[key] = size
        self._set_next(key, self._future.next_use(key))

    def removed(self, key: Key) -> None:
        self._next.pop(key, None)  # its heap entries are now stale
        self._entry.pop(key, None)
        self._sizes.pop(key, None)

    def victims(
        self, bytes_to_free: int, now: float, evictable: Callable[[Key], bool]
    ) -> list[Key]:
        top = self._peek()
        if top is not None and 0 < bytes_to_free <= self._sizes[top] and evictable(top):
            return [top]  # the common case: one victim, no heap traffic
        chosen: list[Key] = []
        popped: list[tuple[int, int, Key]] = []
        freed = 0
        while freed < bytes_to_free and self._peek() is not None:
            entry = heapq.heappop(self._heap)
            popped.append(entry)
            if evictable(entry[2]):
                chosen.append(entry[2])
                freed += self._sizes[entry[2]]
        # They stay resident until removed(); keep them findable.
        for entry in popped:
            heapq.heappush(self._heap, entry)
        return chosen

    def _set_next(self, key: Key, upcoming: int) -> None:
        self._next[key] = upcoming
        self._pushes += 1
        self._entry[key] = self._pushes
        heapq.heappush(self._heap, (-upcoming, self._pushes, key))

    def _peek(self) -> Key | None:
        """The resident key with the farthest next use, dropping stale heap entries."""
        heap = self._heap
        while heap:
            _, tiebreak, key = heap[0]
            if self._entry.get(key) == tiebreak:
                return key
            heapq.heappop(heap)
        return None

    @classmethod
    def metadata_bytes_per_shard(cls) -> int:
        # next use (8) + size (8) + current entry (8) per resident, one heap entry
        # (~3 words) each, and the CSR index: 8 bytes per future read, counted here
        # per shard read once.
        return 8 + 8 + 8 + 24 + 8


class BeladySizePolicy(Policy):
    """Evicts the largest ``size x distance to next read``, given the future."""

    name = "belady-size"

    def __init__(self, *, future: Sequence[Key]) -> None:
        self._future = _Future(future)
        self._slot_of: dict[Key, int] = {}
        self._keys: list[Key] = []
        self._next = np.zeros(64, dtype=np.int64)
        self._size = np.zeros(64, dtype=np.float64)

    def record_access(self, key: Key, size: int, now: float, hit: bool) -> None:
        upcoming = self._future.advance(key)
        slot = self._slot_of.get(key)
        if slot is not None:
            self._next[slot] = upcoming

    def admit(self, key: Key, size: int, now: float, free_bytes: int) -> bool:
        if size <= free_bytes:
            return True
        upcoming = self._future.next_use(key)
        if upcoming == NEVER or not self._keys:
            return False
        _, score = farthest_weighted(
            self._next[: len(self._keys)], self._size[: len(self._keys)], self._future.step
        )
        return bool((upcoming - self._future.step) * size < score)

    def inserted(self, key: Key, size: int, now: float) -> None:
        slot = self._slot_of.get(key)
        if slot is None:
            slot = len(self._keys)
            if slot == len(self._next):
                self._next = np.resize(self._next, 2 * slot)
                self._size = np.resize(self._size, 2 * slot)
            self._slot_of[key] = slot
            self._keys.append(key)
        self._next[slot] = self._future.next_use(key)
        self._size[slot] = size

    def removed(self, key: Key) -> None:
        slot = self._slot_of.pop(key, None)
        if slot is None:
            return
        # Keep residents dense: the last one takes the freed slot.
        last = len(self._keys) - 1
        moved = self._keys.pop()
        if slot != last:
            self._keys[slot] = moved
            self._slot_of[moved] = slot
            self._next[slot] = self._next[last]
            self._size[slot] = self._size[last]

    def victims(
        self, bytes_to_free: int, now: float, evictable: Callable[[Key], bool]
    ) -> list[Key]:
        count = len(self._keys)
        distance = (self._next[:count] - self._future.step).astype(np.float64)
        order = np.argsort(-distance * self._size[:count], kind="stable")
        chosen: list[Key] = []
        freed = 0
        for slot in order.tolist():
            if freed >= bytes_to_free:
                break
            key = self._keys[slot]
            if evictable(key):
                chosen.append(key)
                freed += int(self._size[slot])
        return chosen

    @classmethod
    def metadata_bytes_per_shard(cls) -> int:
        # next use (8) + size (8) per resident; the CSR index: 8 bytes per future read.
        return 8 + 8 + 8
