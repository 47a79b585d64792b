"""Epoch pinning: keep a fixed resident set and bypass the rest.

The classic answer to one job reading a dataset larger than the tier in epochs: any
policy that admits every miss churns (LRU gets about ``(C/N)^2 / 2`` of reads on
reshuffled epochs), while a fixed set of ``C`` shards gets ``C`` hits every epoch,
``C/N`` of reads, which is what Belady gets too. So this policy admits a missed shard
only while the tier has room for it, and never evicts to make room for a read.

When a plan is declared, only shards some plan names are admitted (undeclared
traffic would take the pinned set's room). ``victims`` — needed only when the driver
must free room for something else (a write, a prefetch) — returns the shards no plan
names first, then the most recently inserted (the oldest pins are the last to go).

It is a baseline for the clairvoyant policy, which must beat it when several jobs
share a dataset. Per-slot numeric state: the slot table's 17 bytes + plan references
(4) = 21 bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tierstore.policy.base import Key, Policy, check_plan
from tierstore.policy.slots import NIL, SLOT_TABLE_BYTES, SlotTable

__all__ = ["EpochPinPolicy"]

PINNED = 0


class EpochPinPolicy(Policy):
    """Admit while there is room; never displace a pinned shard for a read."""

    name = "epoch-pin"

    def __init__(self) -> None:
        self._slots = SlotTable(queues=1)
        self._slots.add_array("refs", np.int32)  # declared plans naming the shard
        self._plans: dict[str, list[int]] = {}  # job -> its plan's distinct slots

    def record_access(self, key: Key, size: int, now: float, hit: bool) -> None:
        return None  # pins do not care how often a shard is read

    def admit(self, key: Key, size: int, now: float, free_bytes: int) -> bool:
        if size > free_bytes:
            return False
        if not self._plans:
            return True
        slot = self._slots.slot(key)
        return slot != NIL and self._slots.view("refs")[slot] > 0

    def inserted(self, key: Key, size: int, now: float) -> None:
        slots = self._slots
        slot = slots.add(key)
        if slots.queue_of(slot) == PINNED:
            slots.resize(slot, size)
        else:
            slots.size[slot] = size
            slots.push(PINNED, slot)

    def removed(self, key: Key) -> None:
        slots = self._slots
        slot = slots.slot(key)
        if slot == NIL or slots.queue_of(slot) != PINNED:
            return
        slots.unlink(slot)
        if slots.view("refs")[slot] == 0:
            slots.release(slot)

    def victims(
        self, bytes_to_free: int, now: float, evictable: Callable[[Key], bool]
    ) -> list[Key]:
        slots = self._slots
        refs = slots.view("refs")
        newest_first = list(slots.oldest_first(PINNED))[::-1]
        ordered = [s for s in newest_first if not refs[s]] + [s for s in newest_first if refs[s]]
        chosen: list[Key] = []
        freed = 0
        for slot in ordered:
            if freed >= bytes_to_free:
                break
            if evictable(slots.key(slot)):
                chosen.append(slots.key(slot))
                freed += slots.size[slot]
        return chosen

    def declare_plan(self, job: str, keys: Sequence[Key], sizes: Sequence[int], now: float) -> None:
        check_plan(job, keys, sizes)
        self.close_plan(job)
        distinct = sorted({self._slots.add(key) for key in keys})
        self._slots.array("refs")[distinct] += 1
        self._plans[job] = distinct

    def close_plan(self, job: str) -> None:
        distinct = self._plans.pop(job, None)
        if distinct is None:
            return
        slots = self._slots
        refs = slots.array("refs")
        refs[distinct] -= 1
        for slot in distinct:
            if refs[slot] == 0 and slots.queue_of(slot) != PINNED:
                slots.release(slot)

    @classmethod
    def metadata_bytes_per_shard(cls) -> int:
        return SLOT_TABLE_BYTES + 4
