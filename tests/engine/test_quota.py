"""Per-dataset hot-tier quotas: a dataset's hot bytes never pass its quota.

Room is made by evicting the dataset's own archived, unpinned shards (as its policy
chooses); a write waits (``quota_wait_s``) while uploads on the journal would make
such shards, and one that still cannot get room fails with QuotaExceeded and
changes nothing; a promotion that cannot get room is skipped (the shard is read
from the archive). Other datasets are never evicted for a quota.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.engine.backdoor import prefetch_held_in_its_fetch
from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import FRAME, StoreFactory, engine_settings, payload, wait_until
from tierstore.engine.store import Store
from tierstore.errors import (
    DatasetNotFound,
    InvalidArgument,
    QuotaExceeded,
    ResourceExhausted,
    StoreClosed,
)
from tierstore.frames import CHECKSUM_BYTES
from tierstore.server.metrics import _StoreCollector
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, ShardKind

SIZE = 2 * FRAME  # two frames per shard
STORED = SIZE + 2 * CHECKSUM_BYTES
QUOTA = 3 * STORED  # room for exactly three shards


def dataset_hot_bytes(store: Store, dataset: str) -> int:
    return sum(STORED for info in store.list(dataset, limit=1000)[0] if info.hot)


def assert_within_quota_and_intact(store: Store, shards: int) -> None:
    """The capped dataset is within its quota and shards s0.. read back as written."""
    assert dataset_hot_bytes(store, "capped") <= QUOTA
    for index in range(shards):
        assert store.get("capped", f"s{index}").to_bytes() == payload(SIZE, index)


def quota_store(
    open_store: StoreFactory, archive: MemoryTier | FaultyTier, **settings: Any
) -> Store:
    return open_store(
        archive,
        datasets={
            "capped": DatasetSettings(policy="lru", hot_quota_bytes=QUOTA),
            "other": DatasetSettings(policy="lru"),
        },
        **settings,
    )


def full_and_archived(open_store: StoreFactory) -> Store:
    """A quota store whose quota is full of shards s0..s2, all archived (evictable)."""
    store = quota_store(open_store, MemoryTier())
    for index in range(3):
        store.put("capped", f"s{index}", payload(SIZE, index))
    assert store.drain(10)
    return store


def full_with_uploads_held(
    open_store: StoreFactory, pin: bool = False, **settings: Any
) -> tuple[Store, FaultyTier]:
    """A quota store whose quota is full of shards the mover is stuck uploading
    (the archive holds every write until ``release_writes``); ``pin`` pins them."""
    archive = FaultyTier(MemoryTier())
    archive.hold_writes()
    store = quota_store(open_store, archive, **settings)
    for index in range(3):
        store.put("capped", f"s{index}", payload(SIZE, index))
        if pin:
            store.pin("capped", f"s{index}")
    assert archive.write_waiting.wait(10)
    return store, archive


def put_in_background(
    store: Store, shard: str, data: bytes, dataset: str = "capped", **options: Any
) -> tuple[threading.Thread, list[Any]]:
    """Start ``store.put_frames(dataset, shard, ...)`` of ``data`` on a thread (with
    keyword arguments ``options``); the list gets its outcome."""
    outcome: list[Any] = []
    frames = [data[i : i + FRAME] for i in range(0, len(data), FRAME)]

    def put() -> None:
        try:
            outcome.append(store.put_frames(dataset, shard, ShardKind.RAW, frames, **options))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=put)
    thread.start()
    return thread, outcome


def test_a_put_past_the_quota_evicts_the_datasets_own_archived_shards(
    open_store: StoreFactory,
) -> None:
    store = quota_store(open_store, MemoryTier())
    store.put("other", "o", payload(SIZE, 99))
    for index in range(3):
        store.put("capped", f"s{index}", payload(SIZE, index))
    assert store.drain(10)
    store.get("capped", "s0")  # s1 is now the least recently used
    store.put("capped", "s3", payload(SIZE, 3))
    assert not store.stat("capped", "s1").hot  # the policy's victim
    assert all(store.stat("capped", name).hot for name in ("s0", "s2", "s3"))
    assert store.stat("other", "o").hot  # never evicted for another dataset's quota
    assert_within_quota_and_intact(store, 4)


def test_a_put_that_finds_no_evictable_room_fails_and_changes_nothing(
    open_store: StoreFactory,
) -> None:
    archive = FaultyTier(MemoryTier())
    archive.failing = True  # nothing gets archived, so nothing may be evicted
    store = quota_store(open_store, archive)
    for index in range(3):
        store.put("capped", f"s{index}", payload(SIZE, index))
    with pytest.raises(QuotaExceeded, match="quota") as caught:
        store.put("capped", "s3", payload(SIZE, 3))
    assert isinstance(caught.value, ResourceExhausted)
    assert not store.list("capped", prefix="s3")[0]
    assert all(store.stat("capped", f"s{i}").hot for i in range(3))
    store.put("other", "o", payload(SIZE, 9))  # other datasets are not held back
    archive.failing = False
    assert store.drain(10)
    store.put("capped", "s3", payload(SIZE, 3))  # archived shards can now make room
    assert_within_quota_and_intact(store, 4)


def test_a_put_refused_for_its_quota_evicts_nothing(open_store: StoreFactory) -> None:
    store = full_and_archived(open_store)
    store.pin("capped", "s0")
    store.pin("capped", "s1")
    # Evicting s2 (the only evictable shard) would not make room for two shards' bytes.
    with pytest.raises(QuotaExceeded):
        store.put("capped", "big", payload(2 * SIZE, 7), quota_wait_s=0)
    assert all(store.stat("capped", f"s{i}").hot for i in range(3))
    store.put("capped", "s3", payload(SIZE, 3))  # one shard's room: s2 goes for it
    assert not store.stat("capped", "s2").hot
    assert_within_quota_and_intact(store, 4)


def test_a_put_at_the_quota_waits_for_the_uploads_that_make_room(
    open_store: StoreFactory,
) -> None:
    store, archive = full_with_uploads_held(open_store)  # nothing is archived yet
    thread, outcome = put_in_background(store, "s3", payload(SIZE, 3))
    thread.join(0.5)
    assert thread.is_alive() and not outcome  # waiting for the mover, not refused
    archive.release_writes()
    thread.join(10)
    assert not thread.is_alive() and not isinstance(outcome[0], Exception), outcome
    assert_within_quota_and_intact(store, 4)


def test_no_wait_when_the_uploads_on_the_journal_would_free_nothing(
    open_store: StoreFactory,
) -> None:
    # Archived or not, a pin keeps a shard hot: its upload frees nothing.
    store, archive = full_with_uploads_held(open_store, pin=True)
    with pytest.raises(QuotaExceeded, match="quota"):
        store.put("capped", "s3", payload(SIZE, 3))
    # Refused while the upload was still held: the put did not wait for it.
    assert not archive.hold_timed_out
    archive.release_writes()
    assert store.drain(10)
    assert not store.list("capped", prefix="s3")[0]


def test_no_more_than_max_quota_waiters_puts_wait_and_one_dataset_at_most_half(
    open_store: StoreFactory,
) -> None:
    names = ["capped", "second", "third"]
    archive = FaultyTier(MemoryTier())
    archive.hold_writes()
    store = open_store(
        archive,
        datasets={name: DatasetSettings(policy="lru", hot_quota_bytes=QUOTA) for name in names},
        max_quota_waiters=2,
    )
    for name in names:  # every quota full of shards whose uploads are held
        for index in range(3):
            store.put(name, f"s{index}", payload(SIZE, index))
    assert archive.write_waiting.wait(10)
    first, first_outcome = put_in_background(store, "s3", payload(SIZE, 3))
    wait_until(lambda: store.stats().quota_waiting_puts == 1, "the first put to wait for room")
    gauges = {family.name: family.samples for family in _StoreCollector(store).collect()}
    assert [sample.value for sample in gauges["tierstore_puts_waiting_for_quota"]] == [1]
    # One dataset may hold half of the places: a second put into it fails at once.
    with pytest.raises(QuotaExceeded, match="puts into capped wait for room already"):
        store.put("capped", "s4", payload(SIZE, 4))
    # Another dataset's put still gets the other place, and waits.
    second, second_outcome = put_in_background(store, "s3", payload(SIZE, 3), "second")
    wait_until(lambda: store.stats().quota_waiting_puts == 2, "the second put to wait")
    # Both places are taken: a third dataset's put fails at once, and says why.
    with pytest.raises(QuotaExceeded, match="max_quota_waiters = 2"):
        store.put("third", "s3", payload(SIZE, 3))
    assert first.is_alive() and second.is_alive() and not first_outcome + second_outcome
    archive.release_writes()
    for thread, outcome in ((first, first_outcome), (second, second_outcome)):
        thread.join(10)
        assert not thread.is_alive() and not isinstance(outcome[0], Exception), outcome
    assert store.stats().quota_waiting_puts == 0  # the places were given back
    assert not archive.hold_timed_out
    assert not store.list("capped", prefix="s4")[0]
    assert not store.list("third", prefix="s3")[0]
    assert_within_quota_and_intact(store, 4)
    assert store.get("second", "s3").to_bytes() == payload(SIZE, 3)


def test_a_put_stops_waiting_for_room_when_its_caller_has_gone(
    open_store: StoreFactory,
) -> None:
    store, archive = full_with_uploads_held(open_store)  # quota_wait_s: 30 s
    gone = threading.Event()
    thread, outcome = put_in_background(store, "s3", payload(SIZE, 3), caller_gone=gone.is_set)
    wait_until(lambda: store.stats().quota_waiting_puts == 1, "the put to wait for room")
    gone.set()
    thread.join(10)  # well within quota_wait_s: it noticed
    assert not thread.is_alive()
    assert isinstance(outcome[0], QuotaExceeded) and "caller has gone" in str(outcome[0])
    assert store.stats().quota_waiting_puts == 0
    assert not archive.hold_timed_out  # the uploads were still held: it did not wait them out
    archive.release_writes()
    assert store.drain(10)
    assert not store.list("capped", prefix="s3")[0]


def test_max_quota_waiters_zero_turns_waiting_off(open_store: StoreFactory) -> None:
    store, archive = full_with_uploads_held(open_store, max_quota_waiters=0)
    with pytest.raises(QuotaExceeded, match="waiting for room is off"):
        store.put("capped", "s3", payload(SIZE, 3))
    assert not archive.hold_timed_out
    archive.release_writes()


@pytest.mark.parametrize("setting, argument", [(0.0, None), (30.0, 0.0), (30.0, -5.0)])
def test_quota_wait_zero_refuses_at_once(
    open_store: StoreFactory, setting: float, argument: float | None
) -> None:
    # The setting, or a caller's shorter limit (the service passes its RPC's deadline).
    store, archive = full_with_uploads_held(open_store, quota_wait_s=setting)
    with pytest.raises(QuotaExceeded, match="quota_wait_s"):
        store.put("capped", "s3", payload(SIZE, 3), quota_wait_s=argument)
    assert not archive.hold_timed_out  # refused while the upload was still held
    archive.release_writes()
    assert store.drain(10)
    store.put("capped", "s3", payload(SIZE, 3))  # archived shards now make room
    assert dataset_hot_bytes(store, "capped") <= QUOTA


def test_an_overwrite_at_the_quota_evicts_nothing_for_the_bytes_it_replaces(
    open_store: StoreFactory,
) -> None:
    store = full_and_archived(open_store)
    store.put("capped", "s1", payload(SIZE, 7))  # same size: the old generation leaves
    assert all(store.stat("capped", f"s{i}").hot for i in range(3))
    assert store.get("capped", "s1").to_bytes() == payload(SIZE, 7)


def test_an_overwrite_whose_old_generation_is_evicted_still_fits(
    open_store: StoreFactory,
) -> None:
    store = open_store(
        MemoryTier(), datasets={"q": DatasetSettings(policy="lru", hot_quota_bytes=10 * STORED)}
    )
    # Quota: 10 two-frame shards' worth. "a" (6 of them) is least recently used.
    store.put("q", "a", payload(6 * SIZE, 1))
    store.put("q", "b", payload(4 * SIZE, 2))
    assert store.drain(10)
    # Room for 7: evicting "a" itself (the policy's victim) makes it.
    store.put("q", "a", payload(7 * SIZE, 3))
    assert store.get("q", "a").to_bytes() == payload(7 * SIZE, 3)
    assert store.get("q", "b").to_bytes() == payload(4 * SIZE, 2)


def test_closing_the_store_ends_a_put_waiting_for_uploads(open_store: StoreFactory) -> None:
    store, archive = full_with_uploads_held(open_store)
    thread, outcome = put_in_background(store, "s3", payload(SIZE, 3))
    thread.join(0.3)
    assert thread.is_alive()  # waiting for the held upload
    closing = threading.Thread(target=store.close)
    closing.start()  # stops the mover, whose journal thread is stuck in the held upload
    thread.join(5)  # the put stops waiting at once, not when the upload ends
    assert not thread.is_alive() and isinstance(outcome[0], (QuotaExceeded, StoreClosed)), outcome
    assert not archive.hold_timed_out
    archive.release_writes()
    closing.join(30)
    assert not closing.is_alive()


def test_overwriting_a_shard_counts_only_the_difference(open_store: StoreFactory) -> None:
    archive = FaultyTier(MemoryTier())
    archive.failing = True
    store = quota_store(open_store, archive)
    for index in range(3):
        store.put("capped", f"s{index}", payload(SIZE, index))
    store.put("capped", "s1", payload(SIZE, 7))  # same size: the old generation leaves
    assert store.get("capped", "s1").to_bytes() == payload(SIZE, 7)


def test_a_shard_larger_than_the_whole_quota_is_refused_at_once(
    open_store: StoreFactory,
) -> None:
    store = quota_store(open_store, MemoryTier())
    with pytest.raises(QuotaExceeded, match="whole quota"):
        store.put("capped", "huge", payload(QUOTA + 1))
    assert not store.list("capped")[0]


def test_promotions_stay_within_the_quota(open_store: StoreFactory) -> None:
    store = quota_store(open_store, MemoryTier())
    for index in range(5):
        # Each archived before the next, so that every put finds an archived shard to
        # evict at once (waiting for the mover is tested above).
        store.put("capped", f"s{index}", payload(SIZE, index))
        assert store.drain(10)
    assert dataset_hot_bytes(store, "capped") <= QUOTA
    for index in range(5):
        store.evict("capped", f"s{index}")
    for index in range(5):  # every cold read is admitted (lru) and promoted
        assert store.get("capped", f"s{index}").to_bytes() == payload(SIZE, index)
        wait_until(lambda: store.promoter.promotions_pending() == 0, "promotions to finish")
        assert dataset_hot_bytes(store, "capped") <= QUOTA
    assert dataset_hot_bytes(store, "capped") == QUOTA  # full, never over


def test_a_promotion_keeps_to_a_quota_lowered_during_its_fetch(open_store: StoreFactory) -> None:
    # It checked the quota it read before fetching: a shard larger than the new quota
    # turned hot, and stayed so until the mover's next pass (for good without one).
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets={"d": DatasetSettings(hot_quota_bytes=4 * SIZE)})
    store.put("d", "s", payload(SIZE))
    prefetch_held_in_its_fetch(store, archive, "d", "s")
    skipped = store.promoter.promotions_skipped
    store.update_dataset("d", hot_quota_bytes=SIZE // 2)  # lowered while it fetches
    archive.release_reads()
    wait_until(lambda: store.promoter.promotions_pending() == 0, "the promotion to end")
    assert not store.stat("d", "s").hot
    assert store.promoter.promotions_skipped == skipped + 1
    assert dataset_hot_bytes(store, "d") == 0


def test_lowering_the_quota_evicts_down_to_it(open_store: StoreFactory) -> None:
    store = full_and_archived(open_store)
    store.update_dataset("capped", hot_quota_bytes=STORED)
    wait_until(lambda: dataset_hot_bytes(store, "capped") <= STORED, "eviction to the new quota")
    for index in range(3):
        assert store.get("capped", f"s{index}").to_bytes() == payload(SIZE, index)


def test_lowering_the_quota_evicts_at_once_while_other_uploads_are_held(
    open_store: StoreFactory,
) -> None:
    archive = FaultyTier(MemoryTier())
    store = quota_store(open_store, archive)
    for index in range(3):
        store.put("capped", f"s{index}", payload(SIZE, index))
    assert store.drain(10)
    archive.hold_writes()
    store.put("other", "o", payload(SIZE, 9))  # the journal is busy with its upload
    assert archive.write_waiting.wait(10)
    store.update_dataset("capped", hot_quota_bytes=STORED)
    assert dataset_hot_bytes(store, "capped") <= STORED  # at once: no waiting for "o"
    archive.release_writes()
    for index in range(3):
        assert store.get("capped", f"s{index}").to_bytes() == payload(SIZE, index)


def put_waiting_for_room(
    open_store: StoreFactory,
) -> tuple[Store, FaultyTier, threading.Thread, list[Any]]:
    """A quota store full of shards whose uploads are held, and a put of s3 (allowed to
    wait 60 s) waiting for room, on a thread; the list gets its outcome."""
    store, archive = full_with_uploads_held(open_store)  # nothing is archived yet
    thread, outcome = put_in_background(store, "s3", payload(SIZE, 3), quota_wait_s=60)
    wait_until(lambda: store.stats().quota_waiting_puts == 1, "the put to wait for room")
    return store, archive, thread, outcome


def test_a_put_waiting_for_room_takes_the_quota_lowered_meanwhile(
    open_store: StoreFactory,
) -> None:
    store, archive, thread, outcome = put_waiting_for_room(open_store)
    store.update_dataset("capped", hot_quota_bytes=2 * STORED)
    archive.release_writes()
    thread.join(20)
    assert not thread.is_alive() and not isinstance(outcome[0], Exception), outcome
    assert dataset_hot_bytes(store, "capped") <= 2 * STORED
    assert store.stat("capped", "s3").hot
    for index in range(4):
        assert store.get("capped", f"s{index}").to_bytes() == payload(SIZE, index)


def test_a_put_waiting_for_room_goes_in_once_the_quota_is_raised(
    open_store: StoreFactory,
) -> None:
    store, archive, thread, outcome = put_waiting_for_room(open_store)
    store.update_dataset("capped", hot_quota_bytes=10 * QUOTA)
    thread.join(20)  # the uploads are still held: only the raised quota lets it in
    assert not thread.is_alive() and not isinstance(outcome[0], Exception), outcome
    assert archive.write_waiting.is_set() and not archive.hold_timed_out
    assert store.stats().quota_waiting_puts == 0
    archive.release_writes()
    assert store.get("capped", "s3").to_bytes() == payload(SIZE, 3)


def test_a_put_waiting_for_room_stops_when_its_dataset_is_deleted(
    open_store: StoreFactory,
) -> None:
    store, archive, thread, outcome = put_waiting_for_room(open_store)
    store.delete_dataset("capped", force=True)
    thread.join(20)
    assert not thread.is_alive() and isinstance(outcome[0], DatasetNotFound), outcome
    assert store.stats().quota_waiting_puts == 0  # its waiting place is free again
    archive.release_writes()


def test_lowering_the_quota_below_the_pinned_shards_evicts_the_rest(
    open_store: StoreFactory,
) -> None:
    store = full_and_archived(open_store)
    store.pin("capped", "s0")
    store.pin("capped", "s1")
    store.update_dataset("capped", hot_quota_bytes=STORED)  # below the pinned two
    wait_until(lambda: not store.stat("capped", "s2").hot, "the unpinned shard to go")
    assert store.stat("capped", "s0").hot and store.stat("capped", "s1").hot


def backdoor_failed_pins(store: Store) -> dict[tuple[str, str], Any]:
    """The promoter's pins waiting to be promoted again (its private table)."""
    return store.promoter.pins._waiting


def test_a_pin_skipped_for_want_of_room_turns_hot_once_the_quota_is_raised(
    open_store: StoreFactory,
) -> None:
    # Its promotion was skipped (the quota full of pinned shards) and never tried again:
    # cold, though pinned, until read or pinned again.
    store = full_and_archived(open_store)
    store.evict("capped", "s2")
    store.put("capped", "s3", payload(SIZE, 3))
    for name in ("s0", "s1", "s3"):
        store.pin("capped", name)  # the quota is full of pinned shards
    skipped = store.promoter.promotions_skipped
    store.pin("capped", "s2")
    wait_until(lambda: store.promoter.promotions_skipped > skipped, "the promotion to be skipped")
    assert not store.stat("capped", "s2").hot
    # Not due for an hour, as after many skips: a raised quota makes it due at once, a
    # lowered one does not.
    waiting, key = backdoor_failed_pins(store), ("capped", "s2")
    wait_until(lambda: key in waiting and waiting[key].for_room, "the skip to be remembered")
    waiting[key].due = time.monotonic() + 3600
    store.update_dataset("capped", hot_quota_bytes=QUOTA - 1)
    assert waiting[key].due > time.monotonic() + 3000
    store.update_dataset("capped", hot_quota_bytes=QUOTA + STORED)
    wait_until(lambda: store.stat("capped", "s2").hot, "the pinned shard to be promoted", 10)
    assert {info.name for info in store.list("capped")[0] if info.hot} == {"s0", "s1", "s2", "s3"}


def test_pins_skipped_for_want_of_room_are_counted_and_logged(
    open_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Pinning more than the quota holds left the rest pinned and cold with no reason
    # anywhere: stats showed only the node's running count of skipped promotions, and
    # the log said nothing.
    store = full_and_archived(open_store)
    store.put("capped", "s3", payload(SIZE, 3))  # evicts one of s0..s2 for its room
    cold = next(name for name in ("s0", "s1", "s2") if not store.stat("capped", name).hot)
    for name in sorted({"s0", "s1", "s2", "s3"} - {cold}):
        store.pin("capped", name)  # the quota is full of pinned shards
    assert store.pin("capped", cold) == STORED
    waiting, key = backdoor_failed_pins(store), ("capped", cold)
    wait_until(lambda: key in waiting and waiting[key].for_room, "the skip to be remembered")
    stats = store.stats()
    assert (stats.pins_waiting_for_room, stats.pins_waiting_for_room_bytes) == (1, STORED)
    usage = store.dataset_usage("capped")
    assert (usage.pinned_shards, usage.pinned_bytes) == (4, 4 * STORED)
    assert (usage.pinned_cold_shards, usage.pinned_cold_bytes) == (1, STORED)
    assert f"pinned capped/{cold} ({STORED} stored bytes) stays cold" in caplog.text
    store.unpin("capped", cold)  # no longer pinned: no longer counted
    assert store.stats().pins_waiting_for_room == 0
    assert store.dataset_usage("capped").pinned_cold_shards == 0


def test_pins_skipped_for_room_are_logged_once_a_minute_a_dataset(
    open_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # One warning per pin skipped: pinning a whole dataset past its quota logged a
    # line for every shard of it.
    store = full_and_archived(open_store)
    for index in range(3, 6):
        store.put("capped", f"s{index}", payload(SIZE, index))  # each evicts for its room
    assert store.drain(10)
    names = [f"s{index}" for index in range(6)]
    hot_now = [name for name in names if store.stat("capped", name).hot]
    cold = [name for name in names if name not in hot_now]
    assert len(cold) >= 2
    for name in hot_now:
        store.pin("capped", name)  # the quota is full of pinned shards
    for name in cold:
        store.pin("capped", name)
    waiting = backdoor_failed_pins(store)
    wait_until(
        lambda: all(("capped", n) in waiting and waiting[("capped", n)].for_room for n in cold),
        "every skip to be remembered",
    )
    warned = [r for r in caplog.records if "stays cold" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert store.stats().pins_waiting_for_room == len(cold)


def test_stat_says_a_pinned_cold_shard_waits_for_room(open_store: StoreFactory) -> None:
    # stat showed only "hot no, pinned yes": not why, nor that it would stay so.
    store = full_and_archived(open_store)
    store.evict("capped", "s2")
    store.put("capped", "s3", payload(SIZE, 3))
    for name in ("s0", "s1", "s3"):
        store.pin("capped", name)  # the quota is full of pinned shards
    store.pin("capped", "s2")
    waiting, key = backdoor_failed_pins(store), ("capped", "s2")
    wait_until(lambda: key in waiting and waiting[key].for_room, "the skip to be remembered")
    assert store.stat("capped", "s2").waiting_for_room
    listed = {info.name: info.waiting_for_room for info in store.list("capped")[0]}
    assert listed == {"s0": False, "s1": False, "s2": True, "s3": False}
    store.unpin("capped", "s2")
    assert not store.stat("capped", "s2").waiting_for_room


def test_an_overwrite_evicts_again_when_its_old_generation_was_the_victim(
    open_store: StoreFactory,
) -> None:
    archive = FaultyTier(MemoryTier())
    store = quota_store(open_store, archive, quota_wait_s=60)
    for name in ("a", "b"):
        store.put("capped", name, payload(SIZE, 1))
    assert store.drain(10)
    archive.hold_writes()
    store.put("capped", "c", payload(SIZE, 2))  # its upload is held
    assert archive.write_waiting.wait(10)
    # Twice the size: evicting "a" itself (the LRU victim) is not enough; "b" must go too,
    # at once, not after waiting for c's upload.
    store.put("capped", "a", payload(2 * SIZE, 3))
    assert not archive.hold_timed_out
    archive.release_writes()
    assert store.get("capped", "a").to_bytes() == payload(2 * SIZE, 3)
    assert dataset_hot_bytes(store, "capped") <= QUOTA + STORED  # "a" counts double here


@pytest.mark.parametrize(
    "setting, value",
    [("quota_wait_s", -1.0), ("quota_wait_s", float("inf")), ("max_quota_waiters", -1)],
)
def test_bad_quota_wait_settings_are_refused(tmp_path: Path, setting: str, value: float) -> None:
    with pytest.raises(InvalidArgument, match=setting):
        engine_settings(tmp_path, **{setting: value})


def test_a_pin_or_prefetch_of_a_shard_larger_than_its_quota_is_refused(
    open_store: StoreFactory,
) -> None:
    # A shard put before its dataset's quota was lowered below it was pinned (said to be
    # queued for promotion, tried again for as long as the pin held) or prefetched, and
    # each promotion was skipped: it could never turn hot.
    store = quota_store(open_store, MemoryTier())
    store.put("capped", "big", payload(2 * SIZE, 1))
    store.put("capped", "small", payload(SIZE, 2))
    assert store.drain(10)
    store.update_dataset("capped", hot_quota_bytes=STORED)  # below big, not small
    wait_until(lambda: not store.stat("capped", "big").hot, "big to leave the hot tier")
    store.evict("capped", "small")
    big = 2 * SIZE + 4 * CHECKSUM_BYTES
    with pytest.raises(QuotaExceeded, match=rf"capped/big stores {big:,} bytes.*{STORED:,} bytes"):
        store.pin("capped", "big")
    assert not store.stat("capped", "big").pinned  # nothing promised
    with pytest.raises(QuotaExceeded, match="nothing was queued"):
        store.prefetch("capped", ["small", "big"])
    assert store.promoter.promotions_pending() == 0
    assert store.prefetch("capped", ["nothing-of-that-name"]) == 0  # nothing cold to check
    assert store.pin("capped", "small") == STORED  # one that fits is pinned and promoted
    wait_until(lambda: store.stat("capped", "small").hot, "the pinned shard to turn hot")
    assert not store.stat("capped", "big").hot


def test_the_usage_names_the_largest_shards_stored_size(open_store: StoreFactory) -> None:
    # What a quota set below it keeps cold for good: the CLI warns of it.
    store = quota_store(open_store, MemoryTier())
    assert store.dataset_usage("capped").largest_shard_bytes == 0
    store.put("capped", "big", payload(2 * SIZE, 1))
    store.put("capped", "small", payload(SIZE, 2))
    assert store.dataset_usage("capped").largest_shard_bytes == 2 * SIZE + 4 * CHECKSUM_BYTES


def test_the_prefetch_loop_passes_over_a_shard_larger_than_its_quota(
    open_store: StoreFactory,
) -> None:
    # A plan naming one had the policy name it first at every pass, and each pass's
    # promotion of it skipped, as for one larger than the hot tier.
    store = open_store(
        MemoryTier(),
        datasets={"capped": DatasetSettings(policy="clairvoyant", hot_quota_bytes=QUOTA)},
        start_mover=False,  # the test runs the prefetch pass itself
    )
    store.put("capped", "big", payload(2 * SIZE, 1))
    store.put("capped", "small", payload(SIZE, 2))
    assert store.mover.drain_once()
    store.update_dataset("capped", hot_quota_bytes=STORED)  # below big, not small
    for name in ("big", "small"):
        store.evict("capped", name)
    store.declare_plan("capped", shards=["big", "small"])
    skipped = store.promoter.promotions_skipped
    assert store.prefetcher.run_once() == 1  # small alone
    store.mover.start()
    wait_until(lambda: store.stat("capped", "small").hot, "the prefetch of small")
    wait_until(lambda: store.promoter.promotions_pending() == 0, "the promotions to end")
    assert store.promoter.promotions_skipped == skipped
    assert not store.stat("capped", "big").hot
