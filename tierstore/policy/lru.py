"""Least-recently-used eviction: the baseline policy.

Admits every miss and evicts the hot shard read (or inserted) longest ago. One FIFO
queue of the slot table is kept in recency order: a read moves a shard to the head,
eviction walks from the tail. All operations are O(1) except that ``victims`` skips
non-evictable shards (pinned, not yet archived) one by one.
"""

from __future__ import annotations

from collections.abc import Callable

from tierstore.policy.base import Key, Policy
from tierstore.policy.slots import NIL, SLOT_TABLE_BYTES, SlotTable

__all__ = ["LruPolicy"]

_RECENCY = 0


class LruPolicy(Policy):
    """Evicts the shards read longest ago first (never-read shards count as oldest)."""

    name = "lru"

    def __init__(self) -> None:
        self._slots = SlotTable(queues=1)

    def record_access(self, key: Key, size: int, now: float, hit: bool) -> None:
        slot = self._slots.slot(key)
        if slot != NIL and self._slots.queue_of(slot) == _RECENCY:
            self._slots.move_to_head(_RECENCY, slot)

    def inserted(self, key: Key, size: int, now: float) -> None:
        slot = self._slots.add(key)
        self._slots.resize(slot, size)
        self._slots.move_to_head(_RECENCY, slot)

    def removed(self, key: Key) -> None:
        slot = self._slots.slot(key)
        if slot != NIL:
            self._slots.release(slot)

    def victims(
        self, bytes_to_free: int, now: float, evictable: Callable[[Key], bool]
    ) -> list[Key]:
        chosen: list[Key] = []
        freed = 0
        for slot in self._slots.oldest_first(_RECENCY):
            if freed >= bytes_to_free:
                break
            key = self._slots.key(slot)
            if evictable(key):
                chosen.append(key)
                freed += int(self._slots.size[slot])
        return chosen

    @classmethod
    def metadata_bytes_per_shard(cls) -> int:
        return SLOT_TABLE_BYTES
