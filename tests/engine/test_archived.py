"""Ranged GETs of single archived frames (tierstore/engine/archived.py): a short answer
is asked for once more, and what cannot be read names the shard, not only its object."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.engine.stores import DATASETS, FRAME, StoreFactory, payload
from tierstore.errors import IntegrityError
from tierstore.tiers.memory import MemoryTier


class ShortAnswers(MemoryTier):
    """Each ranged GET of a range answered with half its bytes the first ``short``
    times (a body cut short on the way, sent as a 200 whose Range the tier cut)."""

    def __init__(self) -> None:
        super().__init__()
        self.short = 0
        self.asked: Counter[tuple[str, tuple[int, int]]] = Counter()

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> memoryview | None:
        body = super().get(key, byte_range)
        if body is None or byte_range is None:
            return body
        self.asked[key, byte_range] += 1
        if self.asked[key, byte_range] > self.short:
            return body
        return body[: len(body) // 2]


def test_a_frame_answered_short_once_is_read_whole_and_twice_is_data_loss(
    open_store: StoreFactory,
) -> None:
    archive = ShortAnswers()
    store = open_store(archive, datasets={"plain": DATASETS["plain"]}, start_mover=True)
    data = payload(2 * FRAME + 100)
    store.put("plain", "s", data)
    assert store.drain(10)
    assert store.evict("plain", "s") > 0
    archive.short, archive.asked = 1, Counter()  # it was data loss at once
    assert store.get("plain", "s").to_bytes() == data
    deadline = time.monotonic() + 10
    while not store.stat("plain", "s").hot:  # promoted after that read
        assert time.monotonic() < deadline, "no promotion"
        time.sleep(0.01)
    assert store.evict("plain", "s") > 0
    archive.short, archive.asked = 2, Counter()
    with pytest.raises(IntegrityError, match=r"\(plain/s generation \d+\) is truncated"):
        store.get("plain", "s")
