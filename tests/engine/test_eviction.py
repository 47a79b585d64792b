"""Eviction through the store (tierstore/engine/eviction.py): which shards go, and puts
at once that must neither pass the high watermark nor free far below the low one.

The archive is a MemoryTier; stores run without the mover where a test archives
shards itself (``drain_once``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.engine.backdoor import catalog_hot_bytes
from tests.engine.stores import FRAME, StoreFactory, payload, wait_until
from tierstore.engine import eviction
from tierstore.engine.policies import PolicyDriver
from tierstore.engine.store import Store
from tierstore.errors import HotTierFull, ShardNotFound, Unavailable
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings


def test_eviction_is_lru_among_archived_shards_only(open_store: StoreFactory) -> None:
    stored = FRAME + 8  # one plaintext frame
    store = open_store(
        datasets={"plain": DatasetSettings(policy="lru")},
        start_mover=False,  # archive exactly when the test says so
        hot_capacity_bytes=10 * stored,
        high_watermark=0.9,  # 9 shards
        low_watermark=0.75,  # 7.5 shards
    )
    for name in "abcdef":
        store.put("plain", name, payload(FRAME, ord(name)))
    assert store.mover.drain_once()  # a..f are archived
    for name in "gh":
        store.put("plain", name, payload(FRAME, ord(name)))  # never archived
    for name in "facebd":  # least recently read first: f, a, c, e, b, d
        store.get("plain", name)
    store.put("plain", "i", payload(FRAME, ord("i")))  # 9 shards: at the high watermark
    assert all(store.stat("plain", n).hot for n in "abcdefghi")
    store.put("plain", "j", payload(FRAME, ord("j")))  # 10 would pass it: free 2.5 shards
    hot = {n for n in "abcdefghij" if store.stat("plain", n).hot}
    assert hot == set("bdeghij"), "f, a and c were read longest ago"
    assert catalog_hot_bytes(store) == (7 * stored, 7 * stored)
    for name in "abcdefghij":
        assert store.get("plain", name).to_bytes() == payload(FRAME, ord(name))

    # Only un-archived shards are left to evict: the hot tier goes over capacity
    # rather than drop the only copy.
    for name in "bdeghij":
        store.get("plain", name)
    for name in "klmn":
        store.put("plain", name, payload(FRAME, ord(name)))
    assert all(store.stat("plain", n).hot for n in "ghijklmn")


STORED_FRAME = FRAME + 8  # one plaintext frame and its checksum


def ten_shard_tier(open_store: StoreFactory, archived: int) -> Store:
    """A hot tier of ten one-frame shards (high watermark 9, low 7.5) holding
    ``archived`` archived, evictable shards old0.., and no mover running."""
    store = open_store(
        datasets={"plain": DatasetSettings(policy="lru")},
        start_mover=False,
        hot_capacity_bytes=10 * STORED_FRAME,
        high_watermark=0.9,
        low_watermark=0.75,
    )
    for index in range(archived):
        store.put("plain", f"old{index}", payload(FRAME, index))
    assert store.mover.drain_once()
    return store


def meeting_first(call: Callable[..., Any], meeting: threading.Barrier) -> Callable[..., Any]:
    """``call``, whose first call on each thread then waits for the others at
    ``meeting`` (going on when the meeting cannot happen)."""
    first_look = threading.local()

    def call_then_meet(*args: Any) -> Any:
        result = call(*args)
        if not getattr(first_look, "done", False):
            first_look.done = True
            with contextlib.suppress(threading.BrokenBarrierError):
                meeting.wait()
        return result

    return call_then_meet


def put_at_once(store: Store, puts: int) -> None:
    """``puts`` one-frame puts (new0..) on threads of their own, all started at once."""
    threads = [
        threading.Thread(target=store.put, args=("plain", f"new{i}", payload(FRAME, 50 + i)))
        for i in range(puts)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(thread.is_alive() for thread in threads)


def test_puts_at_once_evict_rather_than_pass_the_high_watermark(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ten_shard_tier(open_store, archived=8)
    # Four puts each find room for one more shard before any of them commits: each
    # sees 8 + 1 <= 9 shards. Together they would be 12.
    puts = 4
    meeting = threading.Barrier(puts, timeout=10)
    monkeypatch.setattr(
        store.hot_room, "make_room", meeting_first(store.hot_room.make_room, meeting)
    )
    put_at_once(store, puts)
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual <= 9 * STORED_FRAME  # archived shards went, not over the watermark
    for i in range(puts):
        assert store.get("plain", f"new{i}").to_bytes() == payload(FRAME, 50 + i)
    for index in range(8):
        assert store.get("plain", f"old{index}").to_bytes() == payload(FRAME, index)


def test_puts_at_once_evict_down_to_the_low_watermark_not_far_below(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ten_shard_tier(open_store, archived=9)  # at the high watermark
    # Four puts each read the hot bytes before any of them evicts (if they can: the
    # figure is read again under the eviction lock, so that meeting times out).
    puts = 4
    meeting = threading.Barrier(puts, timeout=1)
    monkeypatch.setattr(
        store.hot_room, "hot_bytes", meeting_first(store.hot_room.hot_bytes, meeting)
    )
    put_at_once(store, puts)
    counter, actual = catalog_hot_bytes(store)
    # Each evicted 2.5 shards' worth from the same figure: 4 new shards and 0 or 1 old.
    assert counter == actual and 6 * STORED_FRAME <= actual <= 9 * STORED_FRAME


def test_background_eviction_keeps_the_hot_tier_under_its_watermark(
    open_store: StoreFactory,
) -> None:
    stored = 2 * FRAME + 2 * 16
    capacity = 8 * stored
    store = open_store(
        datasets={"enc": DatasetSettings(encrypted=True)}, hot_capacity_bytes=capacity
    )
    contents = {f"s{i:02d}": payload(2 * FRAME, i) for i in range(30)}
    for name, data in contents.items():
        store.put("enc", name, data)
    assert store.drain(10)
    wait_until(lambda: store.stats().hot_bytes <= capacity * 0.9, "eviction down to the watermark")
    infos = store.list("enc")[0]
    assert all(info.archived for info in infos)
    assert sum(1 for info in infos if not info.hot) >= 20
    for name, data in contents.items():
        assert store.get("enc", name).to_bytes() == data


@pytest.mark.parametrize("chunk", [64 << 20, 4 * FRAME], ids=["one-transaction", "staged"])
def test_a_put_larger_than_the_hot_tier_is_refused_and_evicts_nothing(
    open_store: StoreFactory, chunk: int
) -> None:
    # A 500,000-byte put into a 400,000-byte hot tier holding a, b and c evicted every
    # one of them (down to the low watermark, which it alone passed), went in past the
    # capacity, and was evicted itself once archived: one put wiped the cache.
    store = open_store(
        datasets={"plain": DatasetSettings(policy="lru")},
        start_mover=False,
        hot_capacity_bytes=400_000,
        put_chunk_bytes=chunk,
    )
    for name in "abc":
        store.put("plain", name, payload(100_000, ord(name)))
    assert store.mover.drain_once()  # archived: evictable
    hot_before = catalog_hot_bytes(store)
    with pytest.raises(HotTierFull, match=r"plain/big stores 500,\d+ bytes.*360,000 bytes"):
        store.put("plain", "big", payload(500_000, 1))
    assert all(store.stat("plain", name).hot for name in "abc")
    assert store.hot_room.evictions == 0
    assert catalog_hot_bytes(store) == hot_before
    with pytest.raises(ShardNotFound):
        store.stat("plain", "big")
    with pytest.raises(HotTierFull, match="plain/big"):
        store.check_put_size("plain", "big", 500_000)
    assert store.largest_put("plain") == 360_000
    store.put("plain", "fits", payload(300_000, 2))  # at most the high watermark goes in
    assert store.get("plain", "fits").to_bytes() == payload(300_000, 2)


def counted_walks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that gets an item at each eviction walk (PolicyDriver.victims) from now on."""
    walks: list[int] = []
    victims = PolicyDriver.victims

    def counted(self: PolicyDriver, *args: Any, **kwargs: Any) -> Any:
        walks.append(1)
        return victims(self, *args, **kwargs)

    monkeypatch.setattr(PolicyDriver, "victims", counted)
    return walks


def test_an_eviction_walk_that_found_too_little_is_not_walked_again_until_a_shard_may_go(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With thousands of shards not archived yet, each put past the high watermark
    # walked them all, a record read each, under the policy lock that every read
    # takes: 40-120 ms a put, and reads stalled (a policy review).
    walks = counted_walks(monkeypatch)
    store = ten_shard_tier(open_store, archived=0)
    for index in range(9):  # at the high watermark, none archived
        store.put("plain", f"new{index}", payload(FRAME, index))
    assert walks == []
    for index in range(9, 14):  # past it: one walk finds nothing evictable
        store.put("plain", f"new{index}", payload(FRAME, index))
    assert len(walks) == 1
    assert all(store.stat("plain", f"new{i}").hot for i in range(14))  # nothing lost
    # Archived, they may go: the next put walks again, and evicts down to the low
    # watermark.
    assert store.mover.drain_once()
    store.put("plain", "after", payload(FRAME, 99))
    assert len(walks) == 2
    assert catalog_hot_bytes(store)[0] <= 7.5 * STORED_FRAME
    assert store.get("plain", "new0").to_bytes() == payload(FRAME, 0)


@pytest.mark.parametrize("ended", ["its TTL runs out", "it is given an end past already"])
def test_a_pin_that_ends_has_its_shard_walked_again(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch, ended: str
) -> None:
    # Pinned again with a TTL past already, a shard pinned for good was evictable at
    # once, and eviction stayed off for 10 s (a diff review).
    walks = counted_walks(monkeypatch)
    store = ten_shard_tier(open_store, archived=9)  # at the high watermark
    runs_out = ended == "its TTL runs out"
    for index in range(9):
        store.pin("plain", f"old{index}", ttl_s=1.0 if runs_out else None)
    until = time.time() + 1.0
    for name in ("x", "y"):  # past it: one walk finds every shard pinned
        store.put("plain", name, payload(FRAME, ord(name)))
    assert len(walks) == 1
    if runs_out:
        while time.time() <= until:  # the pins' time runs out (on the wall clock)
            time.sleep(0.05)
    else:
        for index in range(9):
            store.pin("plain", f"old{index}", ttl_s=1e-9)
    store.put("plain", "z", payload(FRAME, ord("z")))
    assert len(walks) == 2
    assert catalog_hot_bytes(store)[0] <= 7.5 * STORED_FRAME


class PutBeside:
    """A put of ``other/new`` on a thread of its own, started while an eviction of
    ``store`` runs: :meth:`hook` makes the store's eviction call ``steps[n]`` as it
    comes to its n-th victim (from 1), before evicting it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.writer = store._env._writer  # the hot tier's write lock, first come first served
        self.evicted: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._put, daemon=True)

    def _put(self) -> None:
        self.store.put("other", "new", b"bytes")
        self.done.set()

    def wait_for_the_write_lock(self) -> None:
        wait_until(lambda: self.writer.waiting() == 1, what="the put to wait for the write lock")

    def hook(self, monkeypatch: pytest.MonkeyPatch, steps: dict[int, Callable[[], None]]) -> None:
        room = self.store.hot_room
        evict_in = room._evict_in

        def evict_one(txn: Any, dataset: str, name: str, now: float) -> int | None:
            self.evicted.append(name)
            steps.get(len(self.evicted), lambda: None)()
            return evict_in(txn, dataset, name, now)

        monkeypatch.setattr(room, "_evict_in", evict_one)

    def finished(self) -> bool:
        """Whether the put came in, waiting for it up to 10 s."""
        return self.done.wait(10)


def test_a_long_eviction_lets_other_puts_commit_between_its_transactions(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One write transaction dropped every victim of a pass: 3,370 small shards kept
    # each put of any dataset waiting 0.5 s (at the default capacity, minutes).
    monkeypatch.setattr(eviction, "EVICTED_PER_COMMIT", 2)
    store = open_store(
        datasets={"plain": DatasetSettings(policy="lru"), "other": DatasetSettings()},
        start_mover=False,
        hot_capacity_bytes=100 * STORED_FRAME,
    )
    names = [f"old{index}" for index in range(8)]
    for index, name in enumerate(names):
        store.put("plain", name, payload(FRAME, index))
    assert store.mover.drain_once()
    room = store.hot_room
    beside = PutBeside(store)

    def put_came_in() -> None:  # in the second transaction: the put came in between
        assert beside.finished(), "the put waited for the whole eviction"

    def start_the_put() -> None:
        beside.thread.start()
        beside.wait_for_the_write_lock()

    beside.hook(monkeypatch, {1: start_the_put, 3: put_came_in})
    assert room.evict(8 * STORED_FRAME) == 8 * STORED_FRAME
    beside.thread.join(10)
    assert sorted(beside.evicted) == sorted(names) and room.evictions == 8
    assert not any(store.stat("plain", name).hot for name in names)
    assert store.get("other", "new").to_bytes() == b"bytes"


def test_a_put_that_came_during_a_pass_goes_on_once_the_pass_made_its_room(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A put that found the hot tier past its high watermark waited for the eviction
    # under way to end, though the pass's first commit had made its room.
    monkeypatch.setattr(eviction, "EVICTED_PER_COMMIT", 2)
    datasets = {"plain": DatasetSettings(policy="lru"), "other": DatasetSettings()}
    archive = MemoryTier()
    roomy = open_store(
        archive, datasets=datasets, start_mover=False, hot_capacity_bytes=1000 * FRAME
    )
    names = [f"old{index:02d}" for index in range(12)]
    for index, name in enumerate(names):
        roomy.put("plain", name, payload(FRAME, index))
    assert roomy.mover.drain_once()
    # Twelve shards and a high watermark of nine: the pass frees down to five.
    store = open_store.reopen(
        roomy,
        archive,
        start_mover=False,
        hot_capacity_bytes=10 * STORED_FRAME,
        high_watermark=0.9,
        low_watermark=0.5,
    )
    beside = PutBeside(store)

    def put_came_in() -> None:
        assert beside.finished(), "the put waited for the whole pass"

    beside.hook(
        monkeypatch,
        {
            1: beside.thread.start,  # it finds the tier past the high watermark
            5: beside.wait_for_the_write_lock,  # the third commit: two made its room
            7: put_came_in,
        },
    )
    store.hot_room.evict_if_needed()
    beside.thread.join(10)
    assert len(beside.evicted) == 7 and beside.done.is_set()
    assert store.get("other", "new").to_bytes() == b"bytes"


def test_an_all_or_nothing_eviction_whose_commit_fails_evicts_nothing(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A put's eviction for its quota is all or nothing; in commits of a few victims,
    # one that failed after another had committed left that one's shards evicted.
    monkeypatch.setattr(eviction, "EVICTED_PER_COMMIT", 2)
    names = [f"s{index}" for index in range(6)]
    store = open_store(datasets={"q": DatasetSettings(policy="lru")}, start_mover=False)
    for index, name in enumerate(names):
        store.put("q", name, payload(FRAME, index))
    assert store.mover.drain_once()
    room = store.hot_room
    evict_in = room._evict_in
    asked: list[str] = []

    def failing_third(txn: Any, dataset: str, name: str, now: float) -> int | None:
        asked.append(name)
        if len(asked) == 3:
            raise Unavailable("the disk failed the commit")
        return evict_in(txn, dataset, name, now)

    monkeypatch.setattr(room, "_evict_in", failing_third)
    held = 6 * STORED_FRAME
    with pytest.raises(Unavailable):
        room.make_room_in_quota("q", held // 2, held // 2, all_or_nothing=True)
    assert all(store.stat("q", name).hot for name in names) and room.evictions == 0
    assert catalog_hot_bytes(store) == (held, held)


def test_an_all_or_nothing_eviction_short_of_room_at_its_commit_evicts_nothing(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A victim pinned (or deleted, overwritten) between the walk and the commit is not
    # evicted there; the others went all the same, for a put then refused its room.
    names = [f"s{index}" for index in range(6)]
    store = open_store(datasets={"q": DatasetSettings(policy="lru")}, start_mover=False)
    for index, name in enumerate(names):
        store.put("q", name, payload(FRAME, index))
    assert store.mover.drain_once()
    room = store.hot_room
    evict_in = room._evict_in

    def one_pinned_meanwhile(txn: Any, dataset: str, name: str, now: float) -> int | None:
        return None if name == "s1" else evict_in(txn, dataset, name, now)

    monkeypatch.setattr(room, "_evict_in", one_pinned_meanwhile)
    held = 6 * STORED_FRAME
    assert room.evict(held, dataset="q", only_if_enough=True) == 0
    assert all(store.stat("q", name).hot for name in names) and room.evictions == 0
    assert catalog_hot_bytes(store) == (held, held)
    # Without all or nothing, what can go goes.
    assert room.evict(held, dataset="q") == 5 * STORED_FRAME
