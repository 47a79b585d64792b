"""A sealed stream says when it waits on the archive (``SealedRead.frames(archive_use)``).

The server bounds the calls that wait on the archive by that. It decided once, when a
read opened: a read of a hot shard evicted under it then waited on the archive
unbounded, and a cold read kept its place after its shard was promoted and read hot.
"""

from __future__ import annotations

import pytest

from tests.engine.stores import FRAME, StoreFactory, payload
from tierstore.engine.store import Store
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings

#: "refusing" (admits no miss) comes from the recording fixture.
pytestmark = pytest.mark.usefixtures("recording")


class Recorder:
    """An ArchiveUse that records when it is held."""

    def __init__(self) -> None:
        self.held = False
        self.events: list[str] = []

    def take(self) -> None:
        if not self.held:
            self.held = True
            self.events.append("take")

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self.events.append("give_back")


def archived_shard(open_store: StoreFactory, policy: str, *, evict: bool = True) -> Store:
    """A store whose dataset ``d`` (placement ``policy``) holds shard ``s`` of three
    frames, archived, and evicted if ``evict``."""
    store = open_store(MemoryTier(), datasets={"d": DatasetSettings(policy=policy)})
    store.put("d", "s", payload(3 * FRAME, 1))
    assert store.drain(10)
    if evict:
        store.evict("d", "s")
    return store


def test_a_hot_read_takes_the_archive_only_when_its_shard_is_evicted_under_it(
    open_store: StoreFactory,
) -> None:
    store = archived_shard(open_store, "refusing", evict=False)
    use = Recorder()
    frames = store.open_sealed("d", "s").frames(use)
    next(frames)
    assert use.events == []  # hot: nothing waits on the archive
    store.evict("d", "s")
    rest = list(frames)  # from the archive now
    assert len(rest) == 2 and use.events == ["take", "give_back"] and not use.held


def test_a_cold_read_gives_the_archive_back_once_promoted(open_store: StoreFactory) -> None:
    store = archived_shard(open_store, "lru")
    use = Recorder()
    frames = store.open_sealed("d", "s").frames(use)  # a miss the policy admits
    next(frames)  # promoted on this thread first, then read hot
    assert store.stat("d", "s").hot
    assert use.events == ["take", "give_back"] and not use.held
    assert len(list(frames)) == 2 and use.events == ["take", "give_back"]


def test_a_cold_ranged_read_holds_the_archive_until_it_ends(open_store: StoreFactory) -> None:
    store = archived_shard(open_store, "refusing")
    use = Recorder()
    frames = store.open_sealed("d", "s", frame_range=(0, 2)).frames(use)
    next(frames)
    assert use.held
    frames.close()  # the caller went away part way
    assert use.events == ["take", "give_back"] and not use.held
