"""S3-FIFO, size-aware, with a frequency gate on admission: the frequency-aware policy.

Three FIFO queues over the slot table (Yang et al., "FIFO queues are all you need for
cache eviction", SOSP 2023):

* **small** — newly admitted shards; about ``small_fraction`` (10%) of resident bytes.
  Its tail leaves: to main if it was read while in small, otherwise out.
* **main** — shards that proved themselves. Its tail is reinserted at the head while
  its frequency bits (reads since insertion, capped at 3) are non-zero, each pass
  taking one off; a shard at zero leaves.
* **ghost** — recently seen shards that are not hot (evicted from either queue — the
  paper keeps only small's — or refused), holding no bytes, only their read history
  the gate below needs; at most ``ghost_factor`` times as many as the hot shards. A
  miss on a ghost goes straight to main.

Each tracked shard also keeps a *decayed read count* (halving every
``half_life_factor`` x resident-shards reads; a clock-free decay measured in reads).
When the tier is full, a missed shard is admitted only if its count *before this
read* exceeds the summed counts of the shards it would evict (W-TinyLFU's idea on
S3-FIFO's victims) by more than ``admission_margin`` (one read). That gate is what
makes the policy resist one-pass scans (a shard never seen before has count 0, so a
scan bypasses the tier) and loops longer than the tier (shards read once per epoch
never beat the residents by a whole read, so the resident set stays put and each
epoch gets C/N hits instead of LRU's ~(C/N)^2/2); a newly popular shard gets in as
soon as its recent reads outnumber its victim's, which keeps it responsive to churn.
The decay is what lets yesterday's popular shards go.

Per-slot numeric state: the slot table's 17 bytes + freq (1) + decayed count (4) +
its tick (8) = 30 bytes. Not thread-safe (the driver serialises calls).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tierstore.policy.base import Key, Policy
from tierstore.policy.kernels import decayed_frequency
from tierstore.policy.slots import NIL, SLOT_TABLE_BYTES, SlotTable

__all__ = ["S3FifoPolicy"]


def _always(_: Key) -> bool:
    return True


SMALL, MAIN, GHOST = 0, 1, 2
_MAX_FREQ = 3


class S3FifoPolicy(Policy):
    """Size-aware S3-FIFO with a decayed-frequency admission gate (see the module)."""

    name = "s3fifo"

    def __init__(
        self,
        *,
        small_fraction: float = 0.1,
        ghost_factor: float = 4.0,
        half_life_factor: float = 8.0,
        admission_margin: float = 1.0,
    ) -> None:
        self._margin = admission_margin
        self._small_fraction = small_fraction
        self._ghost_factor = ghost_factor
        self._half_life_factor = half_life_factor
        self._slots = SlotTable(queues=3)
        self._slots.add_array("freq", np.uint8)
        self._slots.add_array("count", np.float32)
        self._slots.add_array("tick", np.float64)
        self._tick = 0
        # The key of the last record_access and its decayed count before that read;
        # admit() acts on it (the driver calls it right after).
        self._last_key: Key | None = None
        self._last_prior = 0.0
        # admit()'s walk (bytes, victim slots), valid until the next read.
        self._chosen: tuple[int, list[int]] | None = None

    # --- reads and residency ---------------------------------------------------

    def record_access(self, key: Key, size: int, now: float, hit: bool) -> None:
        self._tick += 1
        slots = self._slots
        slot = slots.slot(key)
        if slot == NIL:
            if slots.counts[GHOST] >= self._ghost_limit():
                # Recycle the oldest ghost's slot rather than release one and add one.
                slot = slots.tails[GHOST]
                slots.rekey(slot, key)
                slots.move_to_head(GHOST, slot)
            else:
                slot = slots.add(key)
                slots.push(GHOST, slot)
            slots.resize(slot, size)
            prior = 0.0
        else:
            prior = self._decayed(slot)
            freq = slots.view("freq")
            if slots.queue[slot] == GHOST:
                # A ghost's freq (0 since it left the tier) marks a read while a ghost:
                # its insertion, whenever the driver makes it, goes to main. The engine
                # writes a promotion after other readers' reads, so "the last read was
                # this ghost's" missed nearly every return there.
                freq[slot] = 1
            elif freq[slot] < _MAX_FREQ:
                freq[slot] += 1
        slots.view("count")[slot] = prior + 1.0
        slots.view("tick")[slot] = self._tick
        self._last_key, self._last_prior = key, prior
        self._chosen = None

    def admit(self, key: Key, size: int, now: float, free_bytes: int) -> bool:
        if size <= free_bytes:
            return True
        prior = self._last_prior if key == self._last_key else 0.0
        if prior <= self._margin:
            return False  # no history worth displacing anything for: skip the walk
        victims = self._select(size - free_bytes, _always)
        # victims() is asked next, for the same bytes: hand it this walk's result.
        self._chosen = (size - free_bytes, victims)
        if len(victims) == 1:
            displaced = self._decayed(victims[0])
        else:
            displaced = float(
                decayed_frequency(
                    self._slots.array("count"),
                    self._slots.array("tick"),
                    np.array(victims, dtype=np.int64),
                    float(self._tick),
                    self._half_life(),
                ).sum()
            )
        # With too few shards of its own to displace (none at all: a tier shared with
        # other datasets' policies, whose shards the driver then evicts), the shard is
        # weighed against those it has: refusing it outright starved a dataset with
        # nothing hot of every promotion, however often its shards were read.
        return prior > displaced + self._margin

    def inserted(self, key: Key, size: int, now: float) -> None:
        self._chosen = None
        slots = self._slots
        slot = slots.add(key)
        queue = slots.queue_of(slot)
        if queue in (SMALL, MAIN):
            slots.resize(slot, size)
            return
        to_main = queue == GHOST and slots.view("freq")[slot] > 0  # read while a ghost
        if queue != NIL:
            slots.unlink(slot)
        slots.size[slot] = size
        slots.view("freq")[slot] = 0
        slots.push(MAIN if to_main else SMALL, slot)

    def removed(self, key: Key) -> None:
        self._chosen = None
        slots = self._slots
        slot = slots.slot(key)
        if slot == NIL or slots.queue_of(slot) == GHOST:
            return
        # Keep its read history: if it comes back soon, the gate and the ghost rule
        # remember it was popular. Its freq now marks a read while a ghost.
        slots.view("freq")[slot] = 0
        slots.move_to_head(GHOST, slot)
        self._trim_ghosts()

    def victims(
        self, bytes_to_free: int, now: float, evictable: Callable[[Key], bool]
    ) -> list[Key]:
        keys = self._slots.key
        if self._chosen is not None and self._chosen[0] >= bytes_to_free:
            chosen = [keys(slot) for slot in self._chosen[1]]
            self._chosen = None
            if all(evictable(key) for key in chosen):
                return chosen
        return [keys(slot) for slot in self._select(bytes_to_free, evictable)]

    @property
    def resident_bytes(self) -> int:
        """Bytes of the hot shards this policy tracks."""
        return self._slots.bytes[SMALL] + self._slots.bytes[MAIN]

    @classmethod
    def metadata_bytes_per_shard(cls) -> int:
        return SLOT_TABLE_BYTES + 1 + 4 + 8

    # --- the S3-FIFO walk ---------------------------------------------------------

    def _select(self, bytes_to_free: int, evictable: Callable[[Key], bool]) -> list[int]:
        """Victim slots in order, moving promoted and reinserted shards as it goes
        (those moves are S3-FIFO's own bookkeeping, not evictions, so doing them
        here — possibly twice, for admit() and victims() — changes nothing else).

        The chosen victims stay where they are (they are evicted only when the driver
        calls removed()); a second pass skips them.
        """
        slots = self._slots
        freq = slots.view("freq")
        chosen: list[int] = []
        taken: set[int] = set()
        freed = 0
        small_bytes = slots.bytes[SMALL]
        small_target = self._small_fraction * (slots.bytes[SMALL] + slots.bytes[MAIN])
        cursor = {SMALL: slots.tails[SMALL], MAIN: slots.tails[MAIN]}
        # Every main entry is seen at most _MAX_FREQ + 1 times (each pass takes a bit
        # off), and small entries once, so this bound is never reached in practice;
        # it only guards against a pathological evictable().
        budget = (_MAX_FREQ + 2) * (slots.counts[SMALL] + slots.counts[MAIN]) + 2
        restarts = _MAX_FREQ + 1
        while freed < bytes_to_free and budget > 0:
            budget -= 1
            if cursor[SMALL] != NIL and (small_bytes > small_target or cursor[MAIN] == NIL):
                slot = cursor[SMALL]
                cursor[SMALL] = slots.newer[slot]
                if not evictable(slots.key(slot)):
                    continue
                if freq[slot] > 0:
                    # Read while on probation: promote to main, with a clean slate.
                    small_bytes -= slots.size[slot]
                    freq[slot] = 0
                    slots.move_to_head(MAIN, slot)
                    if cursor[MAIN] == NIL:
                        cursor[MAIN] = slot
                    continue
                small_bytes -= slots.size[slot]
            elif cursor[MAIN] != NIL:
                slot = cursor[MAIN]
                cursor[MAIN] = slots.newer[slot]
                if slot in taken or not evictable(slots.key(slot)):
                    continue
                if freq[slot] > 0:
                    freq[slot] -= 1
                    slots.move_to_head(MAIN, slot)
                    if cursor[MAIN] == NIL:
                        cursor[MAIN] = slot
                    continue
            elif restarts > 0 and slots.tails[MAIN] != NIL:
                # Reached main's head with bits still set: another pass.
                restarts -= 1
                cursor[MAIN] = slots.tails[MAIN]
                continue
            else:
                break
            chosen.append(slot)
            taken.add(slot)
            freed += slots.size[slot]
        return chosen

    # --- history ------------------------------------------------------------------

    def _half_life(self) -> float:
        resident = self._slots.counts[SMALL] + self._slots.counts[MAIN]
        return self._half_life_factor * max(resident, 1)

    def _decayed(self, slot: int) -> float:
        slots = self._slots
        age = self._tick - slots.view("tick")[slot]
        count: float = slots.view("count")[slot] * 2.0 ** (-age / self._half_life())
        return count

    def _ghost_limit(self) -> int:
        resident = self._slots.counts[SMALL] + self._slots.counts[MAIN]
        return max(int(self._ghost_factor * resident), 64)

    def _trim_ghosts(self) -> None:
        slots = self._slots
        limit = self._ghost_limit()
        while slots.counts[GHOST] > limit:
            slots.release(slots.tails[GHOST])
