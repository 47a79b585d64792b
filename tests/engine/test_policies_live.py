"""The engine drives placement policies (tierstore/engine/policies.py and its callers).

A :class:`RecordingPolicy` (LRU plus a log) shows what the engine tells a policy and
in what order; the real policies show that the engine's rules — pins, archived-only
eviction — hold whatever the policy. Stores run without their background threads
where a test must decide when uploads and evictions happen.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from tests.engine.backdoor import catalog_hot_bytes, prefetch_held_in_its_fetch, record_of
from tests.engine.faulty_tier import FaultyTier
from tests.engine.recording import policy_of
from tests.engine.stores import FRAME, StoreFactory, payload, wait_until
from tierstore.engine import eviction
from tierstore.engine import policies as policies_module
from tierstore.engine.pinretry import MAX_PIN_ENDS
from tierstore.engine.records import archive_frames_key
from tierstore.engine.store import Store
from tierstore.errors import ArchiveUnavailable, HotTierFull, InvalidArgument, UnknownPolicy
from tierstore.policy.base import MAX_LOOK_AHEAD_BYTES, PrefetchBudget
from tierstore.policy.lru import LruPolicy
from tierstore.policy.registry import (
    DEFAULT_POLICY,
    POLICY_NAMES,
    make_driven_policy,
    make_policy,
)
from tierstore.tiers.base import BytesLike
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DEFAULT_POLICY_NAME, MAX_TTL_S, DatasetSettings

pytestmark = pytest.mark.usefixtures("recording")

STORED = FRAME + 8  # one plaintext frame and its checksum


def fill(store: Store, dataset: str, names: list[str], archive: bool = True) -> None:
    """Put one-frame shards called ``names`` and archive them."""
    for name in names:
        store.put(dataset, name, payload(FRAME, len(name)))
    if archive:
        assert store.mover.drain_once()


def hot(store: Store, dataset: str) -> set[str]:
    return {info.name for info in store.list(dataset)[0] if info.hot}


def skip_without_policy(name: str) -> None:
    """Skip the test where the policy ``name`` is not available here."""
    try:
        make_policy(name)
    except UnknownPolicy as exc:
        pytest.skip(str(exc))


def test_the_default_policy_names_agree() -> None:
    assert DEFAULT_POLICY_NAME == DEFAULT_POLICY
    assert DatasetSettings().policy == DEFAULT_POLICY


# What the driver tells a policy.


def test_writes_reads_and_deletes_reach_the_policy_in_order(open_store: StoreFactory) -> None:
    store = open_store(datasets={"d": DatasetSettings(policy="recording")})
    policy = policy_of(store, "d")
    fill(store, "d", ["a", "b"])
    store.get("d", "a")
    store.put("d", "b", b"a new generation")  # an overwrite: removed, then inserted
    store.delete("d", "a")
    assert store.drain(10)
    store.evict("d", "b")
    store.get("d", "b")  # a miss: record_access(hit=False), then admit; then promoted
    wait_until(lambda: store.stat("d", "b").hot, "the admitted shard to turn hot")
    assert policy.calls == [
        ("inserted", ("d", "a")),
        ("inserted", ("d", "b")),
        ("record_access", ("d", "a"), True),
        ("removed", ("d", "b")),
        ("inserted", ("d", "b")),
        ("removed", ("d", "a")),
        ("removed", ("d", "b")),
        ("record_access", ("d", "b"), False),
        ("admit", ("d", "b")),
        ("inserted", ("d", "b")),
    ]


def test_every_read_path_tells_the_policy(open_store: StoreFactory) -> None:
    store = open_store(datasets={"d": DatasetSettings(policy="recording")})
    policy = policy_of(store, "d")
    store.put("d", "s", payload(3 * FRAME))
    store.get("d", "s", byte_range=(5, 10))
    b"".join(bytes(frame) for frame in store.iter_frames("d", "s"))
    sealed = store.open_sealed("d", "s", frame_range=(1, 1))
    assert [index for index, _ in sealed.frames()] == [1]
    assert policy.names("record_access") == [(("d", "s"), True)] * 3
    assert store.dataset_usage("d").hits == 3


def test_open_inserts_hot_shards_oldest_read_first(open_store: StoreFactory) -> None:
    archive = MemoryTier()
    store = open_store(archive, datasets={"d": DatasetSettings(policy="recording")})
    fill(store, "d", ["a", "b", "c", "d"])  # created in this order
    store.get("d", "c")
    store.get("d", "a")
    store.evict("d", "d")  # cold: not the policy's to know at the next start
    store = open_store.reopen(store, archive)
    inserted = policy_of(store, "d").names("inserted")
    assert inserted == [(("d", "b"),), (("d", "c"),), (("d", "a"),)]


def test_a_shard_created_under_a_clock_set_ahead_does_not_stop_the_policies_clock(
    open_store: StoreFactory,
) -> None:
    # A shard created while the system clock ran years ahead (then set right): seeding
    # the policies at the next start took its creation for its last use and moved the
    # driver's clock, which never goes back, there. Every policy call then saw the one
    # instant until the wall clock caught up: the clairvoyant policy measured no
    # job's read rate (reads a day ahead are refused as damaged: this was unbounded).
    skip_without_policy("clairvoyant")
    archive = MemoryTier()
    store = open_store(archive, datasets={"d": DatasetSettings(policy="clairvoyant")})
    fill(store, "d", ["a", "b", "c"])
    ahead = time.time() + 10 * 365 * 86_400.0
    record = record_of(store, "d", "a")
    with store._env.write() as txn:
        store._catalog.put_shard(txn, record.with_state(created_at=ahead))
    store = open_store.reopen(store, archive)
    job = store.declare_plan("d", shards=["a", "b", "c"])
    declared = time.time()
    wait_until(lambda: time.time() > declared + 0.05, "the wall clock to move on")
    store.report_position(job, 1)
    (plan,) = store._policies._policies["d"]._plans  # type: ignore[attr-defined]
    assert plan.rate > 0  # measured: the policy's clock moved between the two


# Admission.


@pytest.mark.parametrize("path", ["get", "sealed"])
def test_a_refused_shard_is_served_from_the_archive_and_stays_cold(
    open_store: StoreFactory, path: str
) -> None:
    store = open_store(datasets={"d": DatasetSettings(policy="refusing")})
    data = payload(3 * FRAME, 7)
    store.put("d", "s", data)
    assert store.drain(10)
    store.evict("d", "s")
    for _ in range(3):
        if path == "get":
            read = store.get("d", "s")
            assert read.source == "archive" and read.to_bytes() == data
        else:
            sealed = store.open_sealed("d", "s")
            assert not sealed.info.hot and len(list(sealed.frames())) == 3
        # Promotions are queued by the read itself: none was.
        assert store.promoter.promotions_pending() == 0
    assert store.promoter.promotions == 0
    assert not store.stat("d", "s").hot
    assert policy_of(store, "d").names("admit") == [(("d", "s"),)] * 3
    assert store.dataset_usage("d").misses == 3


def test_an_admitted_shard_is_promoted(open_store: StoreFactory) -> None:
    store = open_store(datasets={"d": DatasetSettings(policy="recording")})
    store.put("d", "s", payload(2 * FRAME))
    assert store.drain(10)
    store.evict("d", "s")
    assert store.get("d", "s").source == "archive"
    wait_until(lambda: store.stat("d", "s").hot, "the admitted shard to turn hot")


@pytest.mark.parametrize("name", ["s3fifo", "epoch-pin", DEFAULT_POLICY])
def test_admission_is_offered_the_room_left_in_the_datasets_quota(
    open_store: StoreFactory, name: str
) -> None:
    # Epochs over 16 shards, a quota holding 4 of them (C/N = 0.25) in a tier with
    # room for all. Offered the tier's room, a policy admitted every miss, and the
    # quota then evicted the dataset's own shards for each one: no read ever hit.
    store = open_store(datasets={"d": DatasetSettings(policy=name)}, prefetch_depth=0)
    names = [f"s{i:02d}" for i in range(16)]
    fill(store, "d", names)
    for shard in names:
        store.evict("d", shard)
    store.update_dataset("d", hot_quota_bytes=4 * STORED)

    def epoch() -> int:
        hits = 0
        for shard in names:
            hits += store.get("d", shard).source == "hot"
            wait_until(lambda: store.promoter.promotions_pending() == 0, "the read's promotion")
        return hits

    epoch()
    epoch()  # the resident set settles
    promotions, evictions = store.promoter.promotions, store.hot_room.evictions
    assert [epoch(), epoch()] == [4, 4]  # every epoch gets C/N, what Belady gets
    assert store.promoter.promotions - promotions == 0
    assert store.hot_room.evictions - evictions == 0
    assert len(hot(store, "d")) == 4


def test_a_pin_overrides_a_refusing_policy(open_store: StoreFactory) -> None:
    store = open_store(MemoryTier(), datasets={"d": DatasetSettings(policy="refusing")})
    fill(store, "d", ["s", "t"])
    store.evict("d", "s")
    store.evict("d", "t")
    assert store.get("d", "t").source == "archive"  # refused by the policy...
    store.pin("d", "s")
    wait_until(lambda: store.stat("d", "s").hot, "the pinned shard to be promoted")  # ...pinned
    assert store.promoter.in_flight() == (0, 0) and not store.stat("d", "t").hot


def evicted(open_store: StoreFactory, names: list[str]) -> tuple[Store, FaultyTier]:
    """A store over a FaultyTier archive with shards ``names`` of dataset ``d`` (policy
    "refusing": only pins promote) archived and evicted."""
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets={"d": DatasetSettings(policy="refusing")})
    fill(store, "d", names)
    for name in names:
        store.evict("d", name)
    return store, archive


def test_a_pinned_shard_whose_promotion_failed_is_promoted_once_the_archive_is_back(
    open_store: StoreFactory,
) -> None:
    # It stayed cold, though pinned, until someone pinned or read it again.
    store, archive = evicted(open_store, ["s"])
    archive.failing = True  # the promotion that pinning queues fails, and again
    store.pin("d", "s")
    wait_until(lambda: len(archive.gets) >= 2, "the failed promotion to be tried again")
    assert store.stat("d", "s").pinned and not store.stat("d", "s").hot
    archive.failing = False  # no read, no pin: the retry alone makes it hot
    wait_until(lambda: store.stat("d", "s").hot, "the pinned shard to be promoted")
    store.unpin("d", "s")
    store.evict("d", "s")
    archive.failing = True  # unpinned: a failed promotion is not tried again
    store.pin("d", "s", ttl_s=0.001)  # a pin that runs out at once
    wait_until(lambda: store.promoter.in_flight() == (0, 0), "the failed promotion")
    gets = len(archive.gets)
    archive.failing = False
    assert store.promoter.pins.retry() == 0 and len(archive.gets) == gets


def test_a_pin_that_has_run_out_when_it_is_set_fetches_nothing(open_store: StoreFactory) -> None:
    # `pin --ttl 1e-9` was said to queue the cold shard's promotion, and fetched it.
    store, archive = evicted(open_store, ["s"])
    gets = len(archive.gets)
    assert store.pin("d", "s", ttl_s=1e-9) == 0
    assert store.promoter.in_flight() == (0, 0) and len(archive.gets) == gets
    assert store.pin("d", "s", ttl_s=60.0) > 0  # one that holds is fetched
    wait_until(lambda: store.stat("d", "s").hot, "the pinned shard to be promoted")


def test_every_failed_pin_is_promoted_once_the_archive_is_back_with_a_back_off(
    open_store: StoreFactory,
) -> None:
    # Past the promotion queue's 64 places, retries were dropped for good; and each
    # pin was tried again every second, 60 GETs a minute against a down archive.
    names = [f"s{k:03}" for k in range(100)]
    store, archive = evicted(open_store, names)
    archive.failing = True
    for name in names:
        store.pin("d", name)
    wait_until(lambda: store.promoter.in_flight() == (0, 0), "the failed promotions", 30)
    started = len(archive.gets)
    time.sleep(3.5)  # the back-off: tries at about 1 s, then 2 s more (3 s in all)
    tries = (len(archive.gets) - started) / len(names)
    assert tries <= 2.5, f"{tries} tries a pin in 3.5 s: no back-off"
    archive.failing = False
    wait_until(lambda: hot(store, "d") == set(names), "every pinned shard to be hot", 60)


def test_a_pin_with_no_room_is_not_fetched_again_until_room_can_be_made(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hot tier full of pinned shards: each pinned shard that did not fit was fetched
    # whole from the archive again at each retry (once a minute), only to be skipped.
    archive = FaultyTier(MemoryTier())
    store = open_store(
        archive,
        datasets={"d": DatasetSettings(policy="refusing")},  # only pins promote
        hot_capacity_bytes=int(4 * STORED / 0.9) + 64,  # 4 shards below the high watermark
        prefetch_interval_s=3600,  # retry passes when the test calls them (or one lands)
    )
    waiting, kept, cold = store.promoter.pins._waiting, ["p0", "p1", "p2", "p3"], ["s1", "s2"]
    fill(store, "d", cold)
    for name in cold:
        store.evict("d", name)
    fill(store, "d", kept)
    for name in kept:
        store.pin("d", name)
    for name in cold:
        store.pin("d", name)  # fetched, then skipped: no room below the high watermark
    wait_until(
        lambda: all(("d", name) in waiting and waiting["d", name].for_room for name in cold),
        "the skips to be remembered",
    )
    wait_until(lambda: store.promoter.in_flight() == (0, 0), "the skipped promotions to end")
    fetched = len(archive.gets)

    def due_now() -> None:
        for name in cold:
            if ("d", name) in waiting:  # (a pin that turned hot is dropped when due)
                waiting["d", name].due = time.monotonic()  # not after its back-off

    due_now()
    assert store.promoter.pins.retry() == 0  # no room: not queued, not fetched
    assert len(archive.gets) == fetched and hot(store, "d") == set(kept)
    assert all(waiting["d", name].due > time.monotonic() for name in cold)  # backed off

    # Eviction may take p0 (archived) now: room for one of them. The unpin makes them
    # due at once (the back-off could be a minute) and wakes the prefetch pass.
    store.unpin("d", "p0")
    wait_until(lambda: len(hot(store, "d") & set(cold)) == 1, "one pinned shard to be hot")
    wait_until(lambda: store.promoter.in_flight() == (0, 0), "no promotion in flight")
    due_now()
    assert store.promoter.pins.retry() == 0
    (promoted,) = hot(store, "d") & set(cold)
    assert hot(store, "d") == {"p1", "p2", "p3", promoted}
    assert len(archive.gets) == fetched + 1  # one fetch, for the one that fit: not both

    # Making room fails (a full disk, say): the pass goes on (the prefetches after it),
    # and the pin backs off, rather than raising at every pass.
    def broken(incoming: int) -> bool:
        raise HotTierFull("the disk is full")

    monkeypatch.setattr(store.hot_room, "make_room_for_promotion", broken)
    due_now()
    assert store.promoter.pins.retry() == 0
    assert all(waiting["d", name].due > time.monotonic() for name in cold if name != promoted)


@pytest.mark.parametrize("room_comes_by", ["unpin", "evict", "archive", "delete", "delete_dataset"])
def test_a_pin_waiting_for_room_is_let_in_at_once_when_room_comes(
    open_store: StoreFactory, room_comes_by: str
) -> None:
    # The room was there, but the pin waited out its back-off (up to a minute).
    archive = _UploadsRefused()
    store = open_store(
        archive,
        datasets={"d": DatasetSettings(policy="refusing"), "junk": DatasetSettings()},
        hot_capacity_bytes=int(4 * STORED / 0.9) + 64,  # 4 shards below the high watermark
        prefetch_interval_s=3600,  # no pass but those something wakes
    )
    fill(store, "d", ["s", "cold"])
    for name in ("s", "cold"):
        store.evict("d", name)
    junk = ["j0", "j1", "j2", "j3"]
    # The tier full of shards eviction may not take: pinned, or (to be evicted by
    # hand later) not archived yet.
    archive.refusing = room_comes_by in ("evict", "archive")
    fill(store, "junk", junk, archive=not archive.refusing)
    if not archive.refusing:
        for name in junk:
            store.pin("junk", name)
    store.pin("d", "s")  # fetched, then skipped: no room
    waiting = store.promoter.pins._waiting
    wait_until(lambda: ("d", "s") in waiting, "the skip to be remembered")
    wait_until(lambda: store.promoter.in_flight() == (0, 0), "the skipped promotion to end")
    waiting["d", "s"].due = time.monotonic() + 3600  # as after many skips

    # A cold shard unpinned or deleted makes no room: the pin is left alone (a bulk
    # delete had the prefetch loop try it at every delete).
    store.unpin("d", "cold")
    store.delete("d", "cold")
    assert waiting["d", "s"].due > time.monotonic() + 3000

    if room_comes_by == "evict":
        store.mover.after_archive = lambda: None  # (the "archive" case tests its wake)
        archive.refusing = False
        assert store.drain(10)  # archived now, so evictable
        assert store.evict("junk", "j0") == STORED
    elif room_comes_by == "archive":
        archive.refusing = False
        assert store.drain(10)  # archived now, so evictable
    elif room_comes_by == "unpin":
        store.unpin("junk", "j0")
    elif room_comes_by == "delete":
        store.delete("junk", "j0")
    else:
        store.delete_dataset("junk", force=True)
    wait_until(lambda: store.stat("d", "s").hot, "the pinned shard to be promoted")


def a_pin_waiting_for_room(open_store: StoreFactory) -> Store:
    """A store whose hot tier is full of pinned k0 and k1 (dataset d, policy "refusing":
    only pins promote), and pinned cold s waiting for room; retry passes run only when
    the test calls them."""
    store = open_store(
        MemoryTier(),
        datasets={"d": DatasetSettings(policy="refusing")},
        hot_capacity_bytes=int(2 * STORED / 0.9) + 64,  # 2 shards below the high watermark
        prefetch_interval_s=3600,
    )
    fill(store, "d", ["s"])
    store.evict("d", "s")
    fill(store, "d", ["k0", "k1"])
    for name in ("k0", "k1"):
        store.pin("d", name)
    store.pin("d", "s")  # fetched, then skipped: no room
    waiting = store.promoter.pins._waiting
    wait_until(lambda: ("d", "s") in waiting, "the skip to be remembered")
    wait_until(lambda: store.promoter.in_flight() == (0, 0), "the skipped promotion to end")
    return store


def test_a_pin_waiting_for_room_is_tried_when_a_ttl_pin_runs_out(open_store: StoreFactory) -> None:
    # The TTL pins holding the tier full ran out, and the pin waited out its back-off
    # (up to a minute) with the room there.
    store = a_pin_waiting_for_room(open_store)
    waiting = store.promoter.pins._waiting
    store.pin("d", "k0", ttl_s=2.0)  # now held for two seconds only
    waiting["d", "s"].failures = 10  # as after many skips: a back-off of a minute
    waiting["d", "s"].due = time.monotonic()
    ends = time.monotonic() + 2.0
    assert store.promoter.pins.retry() == 0  # no room yet: k0's pin still holds
    assert waiting["d", "s"].due <= ends + 0.1  # due once k0's pin ran out, not in a minute
    assert not store.stat("d", "s").hot
    # (Its due time, and a little: it is worked out on the monotonic clock, and the pin
    # runs out on the wall clock.)
    time.sleep(max(0.0, waiting["d", "s"].due - time.monotonic()) + 0.05)
    assert store.promoter.pins.retry() == 1  # k0 evicted for it
    wait_until(lambda: store.stat("d", "s").hot, "the pinned shard to be promoted")
    assert hot(store, "d") == {"k1", "s"}


def test_a_ttl_pin_set_while_a_pin_waits_for_room_makes_it_due_when_it_runs_out(
    open_store: StoreFactory,
) -> None:
    # A pin already waiting out its back-off kept it: only back-offs worked out after
    # the TTL pin was set heard of its end (docs/engine.md says it is due then).
    store = a_pin_waiting_for_room(open_store)
    pins = store.promoter.pins
    waiting = pins._waiting
    waiting["d", "s"].due = time.monotonic() + 3600  # as after many skips
    # Ends already past do not count against the bound on the ends kept.
    for _ in range(MAX_PIN_ENDS):
        pins.note_pin_end(time.time() - 1.0)
    store.pin("d", "k0", ttl_s=2.0)  # now held for two seconds only
    ends = time.monotonic() + 2.0
    assert waiting["d", "s"].due <= ends + 0.1  # due once k0's pin runs out
    assert len(pins._pin_ends) == 1
    # (Its due time, and a little: it is worked out on the monotonic clock, and the pin
    # runs out on the wall clock.)
    time.sleep(max(0.0, waiting["d", "s"].due - time.monotonic()) + 0.05)
    assert pins.retry() == 1  # k0 evicted for it
    wait_until(lambda: store.stat("d", "s").hot, "the pinned shard to be promoted")


def test_a_pin_set_while_its_shard_is_being_promoted_is_tried_again_if_that_fails(
    open_store: StoreFactory,
) -> None:
    # The promotion under way (a prefetch's) ran on a copy of the record without the
    # pin: when the archive failed it, nothing remembered the pin, and the pinned shard
    # stayed cold for good once the archive was back.
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets={"d": DatasetSettings()}, prefetch_interval_s=0.05)
    store.put("d", "s", payload(FRAME))
    prefetch_held_in_its_fetch(store, archive, "d", "s")
    store.pin("d", "s")  # while that promotion is under way
    archive.failing = True
    archive.release_reads()  # it fails
    wait_until(lambda: store.promoter.in_flight() == (0, 0), "the failed promotion to end")
    archive.failing = False
    wait_until(lambda: store.stat("d", "s").hot, "the pinned shard to be promoted", 30)


def frozen_reads(archive: FaultyTier) -> threading.Event:
    """Make every read of ``archive`` wait until the event returned is set (30 s at
    most: a test that never sets it fails there)."""
    thaw = threading.Event()
    frozen_get = archive.get

    def get(key: str, byte_range: tuple[int, int] | None = None) -> Any:
        assert thaw.wait(30), "the test never thawed the archive"
        return frozen_get(key, byte_range)

    archive.get = get  # type: ignore[method-assign]
    return thaw


def test_pins_past_a_full_promotion_queue_are_all_promoted(open_store: StoreFactory) -> None:
    # The queue holds 64: the pins past it were dropped when they were pinned, and
    # stayed cold until read, though pin reported their bytes as queued.
    names = [f"s{k:03}" for k in range(100)]
    store, archive = evicted(open_store, names)
    thaw = frozen_reads(archive)  # every promotion thread waits in the archive
    for name in names:
        store.pin("d", name)  # the queue fills and overflows
    assert store.promoter.in_flight()[0] < len(names)  # some were not queued
    thaw.set()
    wait_until(lambda: hot(store, "d") == set(names), "every pinned shard to be hot", 60)


def test_a_pin_whose_archive_copy_is_damaged_is_not_fetched_again_and_again(
    open_store: StoreFactory,
) -> None:
    # Each prefetch pass fetched it whole again, and logged a traceback, while pinned.
    store, archive = evicted(open_store, ["s"])
    key = archive_frames_key("d", store.stat("d", "s").generation)
    damaged = bytearray(bytes(archive.inner.get(key) or b""))
    damaged[0] ^= 0xFF
    archive.inner.put(key, bytes(damaged))
    store.pin("d", "s")
    wait_until(lambda: bool(archive.gets), "the promotion to fetch")
    wait_until(lambda: store.promoter.in_flight() == (0, 0), "the failed promotion")
    fetched = len(archive.gets)
    assert store.promoter.pins.retry() == 0 and not store.stat("d", "s").hot
    time.sleep(2.5)  # two prefetch passes past a first retry's back-off, had there been one
    assert len(archive.gets) == fetched


# Eviction.


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_pinned_shards_are_never_evicted_under_any_policy(
    open_store: StoreFactory, name: str
) -> None:
    skip_without_policy(name)
    store = open_store(
        datasets={"d": DatasetSettings(policy=name)},
        start_mover=False,
        hot_capacity_bytes=10 * STORED,
    )
    fill(store, "d", [f"p{i}" for i in range(3)])
    for index in range(3):
        store.pin("d", f"p{index}", ttl_s=3600 if index == 2 else None)
    for round_ in range(6):  # churn: every put may evict, every read changes the order
        fill(store, "d", [f"r{round_}-{i}" for i in range(4)])
        for shard in ("p0", "p1", "p2", f"r{round_}-0"):
            store.get("d", shard)
        store.hot_room.evict_if_needed()
        assert {"p0", "p1", "p2"} <= hot(store, "d"), (name, round_)
    assert store.hot_room.evictions > 0
    # Asked to free everything, the policy gives up every evictable shard and no pinned one.
    store.hot_room.evict(100 * STORED)
    assert hot(store, "d") == {"p0", "p1", "p2"}
    assert catalog_hot_bytes(store) == (3 * STORED, 3 * STORED)


@pytest.mark.parametrize("name", ["lru", DEFAULT_POLICY])
def test_a_pin_whose_ttl_ran_out_is_evictable_again(open_store: StoreFactory, name: str) -> None:
    store = open_store(datasets={"d": DatasetSettings(policy=name)}, start_mover=False)
    fill(store, "d", ["short", "long"])
    store.pin("d", "short", ttl_s=0.05)
    store.pin("d", "long", ttl_s=3600)
    info = store.stat("d", "short")
    assert info.pinned and info.pinned_until > info.created_at
    assert store.evict("d", "short") == 0
    wait_until(lambda: not store.stat("d", "short").pinned, "the short pin to run out")
    store.hot_room.evict(100 * STORED)
    assert hot(store, "d") == {"long"}
    store.pin("d", "long")  # pinning again replaces the TTL: no expiry now
    assert store.stat("d", "long").pinned_until == 0.0


@pytest.mark.parametrize(
    "ttl", [0, -1.0, float("nan"), float("inf"), 1e300, 10**400, MAX_TTL_S + 1, True]
)
def test_a_pin_ttl_outside_ten_years_is_refused_and_changes_nothing(
    open_store: StoreFactory, ttl: float
) -> None:
    # 1e300 was taken, and shown as "until 1e+300 (not a date)" from then on.
    store = open_store(datasets={"d": DatasetSettings(policy="lru")}, start_mover=False)
    fill(store, "d", ["s"])
    with pytest.raises(InvalidArgument, match="ttl_s must be a number of seconds") as refused:
        store.pin("d", "s", ttl_s=ttl)
    assert len(str(refused.value)) < 200  # 10**400 was printed in full: 401 digits
    assert not store.stat("d", "s").pinned
    store.pin("d", "s", ttl_s=MAX_TTL_S)  # the bound itself is a lifetime
    assert store.stat("d", "s").pinned


def test_a_pin_holds_the_shard_through_an_overwrite(open_store: StoreFactory) -> None:
    store = open_store(datasets={"d": DatasetSettings(policy="lru")}, start_mover=False)
    fill(store, "d", ["kept", "timed"])
    store.pin("d", "kept")
    store.pin("d", "timed", ttl_s=3600)
    until = store.stat("d", "timed").pinned_until
    for name in ("kept", "timed"):
        store.put("d", name, payload(FRAME, 7))  # a new generation, by the same name
    assert store.mover.drain_once()  # archived: only the pins keep them hot
    assert store.stat("d", "kept").pinned and store.stat("d", "kept").pinned_until == 0.0
    assert store.stat("d", "timed").pinned and store.stat("d", "timed").pinned_until == until
    assert store.evict("d", "kept") == 0 and store.evict("d", "timed") == 0
    assert hot(store, "d") == {"kept", "timed"}


def test_bytes_to_free_are_split_by_hot_bytes(open_store: StoreFactory) -> None:
    store = open_store(
        datasets={"big": DatasetSettings(policy="lru"), "small": DatasetSettings(policy="lru")},
        start_mover=False,
    )
    fill(store, "big", [f"b{i}" for i in range(6)], archive=False)
    fill(store, "small", ["s0", "s1"])
    assert store.hot_room.evict(4 * STORED) == 4 * STORED
    assert len(hot(store, "big")) == 3  # 6 of the 8 hot shards: 3 of the 4 to free
    assert hot(store, "small") == {"s1"}  # the least recently used of the two went

    # A dataset that cannot free its share leaves it to the others.
    fill(store, "big", [f"c{i}" for i in range(5)])  # big: 8 hot shards
    store.pin("small", "s1")
    store.put("small", "s2", payload(FRAME))  # not archived yet: not evictable either
    assert store.hot_room.evict(6 * STORED) == 6 * STORED  # big 4.8 (5), small 1.2 (0), big 1
    assert hot(store, "small") == {"s1", "s2"}
    assert len(hot(store, "big")) == 2


# Room for promotions: optional work, unlike a put.


class _UploadsRefused(MemoryTier):
    """A memory archive that refuses uploads while ``refusing`` (reads pass), as an
    archive refusing a bucket does: what is written meanwhile stays un-archived.
    Counts its reads."""

    def __init__(self) -> None:
        super().__init__()
        self.refusing = False
        self.reads = 0

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> memoryview | None:
        self.reads += 1
        return super().get(key, byte_range)

    def put(self, key: str, value: BytesLike | Iterable[BytesLike]) -> None:
        if self.refusing:
            raise ArchiveUnavailable(f"PUT {key}: refused (test)")
        super().put(key, value)


def test_a_promotion_evicts_only_its_own_size(open_store: StoreFactory) -> None:
    # Room below the high watermark for 20 one-frame shards, 16.7 below the low one.
    store = open_store(
        datasets={"r": DatasetSettings(policy="lru"), "w": DatasetSettings(policy="lru")},
        start_mover=False,  # archive exactly when the test says so
        hot_capacity_bytes=int(20 * STORED / 0.9) + 64,
    )
    fill(store, "r", ["r0", "r1", "r2", "r3"])
    store.evict("r", "r3")
    fill(store, "w", [f"w{i:02d}" for i in range(17)], archive=False)  # never archived
    assert catalog_hot_bytes(store) == (20 * STORED, 20 * STORED)  # at the high watermark
    evictions = store.hot_room.evictions
    # A put here would free down to the low watermark, taking every evictable shard;
    # a promotion (a prefetch, an admitted miss) takes one shard's room, no more.
    assert store.promoter.promote_now(record_of(store, "r", "r3"), None)
    assert store.hot_room.evictions - evictions == 1
    assert len(hot(store, "r")) == 3 and "r3" in hot(store, "r")
    assert catalog_hot_bytes(store) == (20 * STORED, 20 * STORED)
    assert store.promoter.promotions == 1 and store.promoter.promotions_skipped == 0


@pytest.mark.parametrize(("busy_reads", "giver"), [(2, "busy"), (12, "idle")])
def test_a_promotion_takes_its_room_from_a_dataset_no_longer_read_first(
    open_store: StoreFactory, busy_reads: int, giver: str
) -> None:
    # A promotion's room came from the dataset holding the most hot bytes, whatever
    # was read: a dataset read once and never again kept half the tier for good, while
    # the one being read evicted its own shards to promote others (hit ratio 0.47
    # where the whole tier gave 0.71). One none of whose shards was read in the last
    # tier's worth of reads (as many reads as shards are hot) gives first.
    store = open_store(
        datasets={"idle": DatasetSettings(policy="lru"), "busy": DatasetSettings(policy="lru")},
        start_mover=False,
        hot_capacity_bytes=int(10 * STORED / 0.9) + 64,  # 10 shards below the high watermark
    )
    fill(store, "idle", [f"i{n}" for n in range(4)])
    fill(store, "busy", [f"b{n}" for n in range(6)])
    store.evict("busy", "b5")
    fill(store, "busy", ["b6"])
    assert catalog_hot_bytes(store) == (10 * STORED, 10 * STORED)  # at the high watermark
    for n in range(4):
        store.get("idle", f"i{n}")
    read = ["b0", "b1", "b2", "b3", "b4", "b6"]
    for n in range(busy_reads):
        store.get("busy", read[n % len(read)])
    assert store.promoter.promote_now(record_of(store, "busy", "b5"), None)
    kept = {"idle": 4, "busy": 6}
    kept[giver] -= 1  # its least recently read shard went
    assert len(hot(store, "idle")) == kept["idle"]
    assert len(hot(store, "busy")) == kept["busy"] + 1  # and b5 came in
    assert ("i0" in hot(store, "idle")) == (giver == "busy")


def test_shards_prefetched_ahead_of_their_readers_do_not_make_room_for_each_other(
    open_store: StoreFactory,
) -> None:
    # A dataset not read yet is idle, but one whose shards are going hot is in use:
    # each prefetched shard evicted the one prefetched before it.
    store = open_store(
        datasets={"ahead": DatasetSettings(policy="lru"), "busy": DatasetSettings(policy="lru")},
        start_mover=False,
        hot_capacity_bytes=int(10 * STORED / 0.9) + 64,  # 10 shards below the high watermark
    )
    ahead = ["a0", "a1", "a2"]
    fill(store, "ahead", ahead)
    for name in ahead:
        store.evict("ahead", name)
    fill(store, "busy", [f"b{n}" for n in range(10)])
    for n in range(20):
        store.get("busy", f"b{n % 10}")
    for name in ahead:
        assert store.promoter.promote_now(record_of(store, "ahead", name), None)
    assert hot(store, "ahead") == set(ahead)
    assert len(hot(store, "busy")) == 7


def test_a_promotion_with_no_room_below_the_high_watermark_is_skipped(
    open_store: StoreFactory,
) -> None:
    archive = _UploadsRefused()
    store = open_store(
        archive,
        datasets={"r": DatasetSettings(policy="recording")},  # admits, prefetches its plan
        start_mover=False,  # no background eviction or prefetch: the test drives them
        hot_capacity_bytes=int(10 * STORED / 0.9) + 64,  # 10 shards below the high watermark
    )
    names = ["r0", "r1", "r2", "r3"]
    fill(store, "r", names)
    for shard in names:
        store.evict("r", shard)
    archive.refusing = True
    store.create_dataset("w", DatasetSettings(policy="lru"))
    fill(store, "w", [f"w{i:02d}" for i in range(12)], archive=False)  # a put goes in anyway
    assert not store.mover.drain_once()  # refused: nothing the eviction may take
    before = catalog_hot_bytes(store)
    assert before == (12 * STORED, 12 * STORED)
    evictions = store.hot_room.evictions
    woken: list[bool] = []
    store.promoter.after_promotion = lambda: woken.append(True)

    # A whole-shard service read of an admitted miss promotes on the reader's thread:
    # skipped, it still streams the shard, from the archive.
    frames = [stored for _, stored in store.open_sealed("r", "r0").frames()]
    assert len(frames) == 1 and frames[0][:FRAME] == payload(FRAME, len("r0"))
    # What a queued prefetch or ranged miss runs: nothing fetched, nothing evicted.
    reads = archive.reads
    assert not store.promoter.promote_now(record_of(store, "r", "r1"), None)
    assert archive.reads == reads
    assert store.promoter.promotions_skipped == 2
    assert store.promoter.promotions == 0 and store.hot_room.evictions == evictions
    assert not woken  # a skipped promotion does not have the prefetcher ask again
    assert hot(store, "r") == set()
    assert catalog_hot_bytes(store) == before

    # Nor does the prefetch loop queue promotions that could not fit.
    store.declare_plan("r", shards=names)
    assert store.prefetcher.run_once() == 0
    assert store.promoter.in_flight() == (0, 0)

    # A read with a cache fill: the bytes come back, the fill is skipped and counted.
    store.mover.start()
    assert store.get("r", "r2").to_bytes() == payload(FRAME, len("r2"))
    wait_until(lambda: store.promoter.promotions_pending() == 0, "the cache fill to end")
    assert store.promoter.promotions_skipped == 3
    assert store.promoter.promotions == 0 and hot(store, "r") == set()

    # Once the archive takes the writes, eviction makes room and promotions land again.
    archive.refusing = False
    assert store.drain(10)
    wait_until(lambda: not store.hot_room.over_high_watermark(), "eviction below the watermark")
    assert store.get("r", "r3").to_bytes() == payload(FRAME, len("r3"))
    wait_until(lambda: store.stat("r", "r3").hot, "the admitted miss to be promoted")
    assert woken


# Changing the policy at run time.


def test_the_policy_changes_at_run_time(open_store: StoreFactory) -> None:
    archive = MemoryTier()
    store = open_store(archive, datasets={"d": DatasetSettings(policy="lru")})
    fill(store, "d", ["a", "b", "c"])
    store.get("d", "a")
    store.evict("d", "c")
    job = store.declare_plan("d", shards=["c", "b", "a"])
    store.report_position(job, 1)

    settings = store.update_dataset("d", policy="recording")
    assert settings.policy == "recording" == store.get_dataset("d").policy
    policy = policy_of(store, "d")
    # Seeded with the hot shards, oldest read first, and handed the live plan.
    assert policy.calls == [
        ("inserted", ("d", "b")),
        ("inserted", ("d", "a")),
        ("declare_plan", job, (("d", "c"), ("d", "b"), ("d", "a")), (STORED,) * 3),
        ("report_position", job, 1),
    ]
    store.get("d", "b")
    assert policy.calls[-1] == ("record_access", ("d", "b"), True)

    with pytest.raises(UnknownPolicy, match="no-such-policy"):
        store.update_dataset("d", policy="no-such-policy")
    assert store.get_dataset("d").policy == "recording"
    with pytest.raises(UnknownPolicy):
        store.create_dataset("e", DatasetSettings(policy="no-such-policy"))
    assert [name for name, _ in store.list_datasets()] == ["d"]

    store = open_store.reopen(store, archive)  # the setting is kept
    assert store.get_dataset("d").policy == "recording"
    assert policy_of(store, "d").names("inserted") == [(("d", "a"),), (("d", "b"),)]  # b read


def test_a_plan_handed_to_a_new_policy_starts_at_its_position_at_no_rate(
    open_store: StoreFactory,
) -> None:
    # A policy change hands each live plan to the new policy: declared, then its
    # position reported, a moment apart. The clairvoyant policy took the position for
    # entries read in that moment, and rated the job at millions a second (and every
    # job not measured yet as fast, borrowing the mean), until its reports smoothed it.
    skip_without_policy("clairvoyant")
    store = open_store(datasets={"d": DatasetSettings(policy="lru")})
    names = [f"s{index}" for index in range(10)]
    fill(store, "d", names)
    job = store.declare_plan("d", shards=names)
    store.report_position(job, 5)
    store.update_dataset("d", policy="clairvoyant")
    (plan,) = store._policies._policies["d"]._plans  # type: ignore[attr-defined]
    assert plan.position == 5
    assert plan.rate == 0.0  # not measured yet: no read was seen


def test_a_policy_no_release_knows_falls_back_to_the_default(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(datasets={"d": DatasetSettings(policy="recording")})
    store.put("d", "s", b"x")
    store.close()
    monkeypatch.setattr("tierstore.engine.policies.make_driven_policy", make_driven_policy)
    store = open_store(data_dir=store.settings.data_dir)
    assert store.get_dataset("d").policy == "recording"  # the setting is left as it is
    assert store.policy_name("d") in (DEFAULT_POLICY, "lru")
    assert store.get("d", "s").to_bytes() == b"x"


# Prefetch.


def test_the_prefetcher_promotes_what_the_policy_asks_within_the_budget(
    open_store: StoreFactory,
) -> None:
    store = open_store(
        datasets={"d": DatasetSettings(policy="recording")},
        start_mover=False,  # the test runs the prefetch passes itself
        prefetch_depth=3,
        archive_bandwidth_bytes_per_s=10 * STORED,
        prefetch_horizon_s=1.0,
    )
    names = [f"s{i}" for i in range(6)]
    fill(store, "d", names, archive=False)
    assert store.mover.drain_once()
    for name in names:
        store.evict("d", name)
    policy = policy_of(store, "d")
    job = store.declare_plan("d", shards=names)
    assert store.prefetcher.run_once() == 3  # the I/O depth
    assert policy.prefetches[-1] == (
        PrefetchBudget(requests=3, bytes=10 * STORED),
        (("d", "s0"), ("d", "s1"), ("d", "s2")),
    )
    assert store.promoter.in_flight() == (3, 3 * STORED)
    assert store.prefetcher.budget() == PrefetchBudget(requests=0, bytes=7 * STORED)
    assert store.prefetcher.run_once() == 0  # no free slot: the policy is not even asked
    store.mover.start()  # the promotion threads take the queued prefetches
    wait_until(lambda: hot(store, "d") == {"s0", "s1", "s2"}, "the prefetches to land")
    wait_until(lambda: store.promoter.in_flight() == (0, 0), "the promotions to end")
    store.report_position(job, 4)
    assert store.prefetcher.run_once() == 2  # s3 is behind the reader now
    assert policy.prefetches[-1][1] == (("d", "s4"), ("d", "s5"))
    wait_until(lambda: {"s4", "s5"} <= hot(store, "d"), "the next prefetches")
    assert "s3" not in hot(store, "d")
    assert store.prefetcher.queued == 5


def test_a_look_ahead_too_large_for_a_float_is_capped_not_an_error(
    open_store: StoreFactory,
) -> None:
    # Each setting finite, their product overflowed to infinity, and every prefetch
    # pass failed converting it to whole bytes (OverflowError), logged once a second.
    store = open_store(
        datasets={"d": DatasetSettings(policy="recording")},
        start_mover=False,  # the test runs the prefetch pass itself
        archive_bandwidth_bytes_per_s=1e300,
        prefetch_horizon_s=1e10,
        prefetch_depth=3,
    )
    assert store.prefetcher.budget() == PrefetchBudget(requests=3, bytes=MAX_LOOK_AHEAD_BYTES)
    fill(store, "d", ["s0"])
    store.evict("d", "s0")
    store.declare_plan("d", shards=["s0"])
    assert store.prefetcher.run_once() == 1


def test_a_prefetch_counts_each_shard_once(open_store: StoreFactory) -> None:
    store = open_store(datasets={"d": DatasetSettings(policy="lru")})
    fill(store, "d", ["s0", "s1"])
    assert store.drain(10)
    for name in ("s0", "s1"):
        store.evict("d", name)
    assert store.prefetch("d", ["s0", "s0", "s0", "nosuch", "s1", "s0"]) == 2
    for name in ("s0", "s1"):
        wait_until(lambda name=name: store.stat("d", name).hot, f"{name} to turn hot")
    # A generator was used up by the name checks, and nothing was queued.
    for name in ("s0", "s1"):
        store.evict("d", name)
    assert store.prefetch("d", (name for name in ["s0", "s1"])) == 2
    for name in ("s0", "s1"):
        wait_until(lambda name=name: store.stat("d", name).hot, f"{name} to turn hot")


def test_a_prefetch_counts_only_what_the_promotion_queue_took(open_store: StoreFactory) -> None:
    # The queue holds 64: those past it were dropped, and counted as queued all the same.
    names = [f"s{k:03}" for k in range(100)]
    store, archive = evicted(open_store, names)
    thaw = frozen_reads(archive)  # every promotion thread waits in the archive
    try:
        queued = store.prefetch("d", names)
        assert queued == store.promoter.promotions_pending() < len(names)
    finally:
        thaw.set()


def test_the_prefetcher_counts_only_what_the_promotion_queue_took(
    open_store: StoreFactory,
) -> None:
    # The queue holds 64: the prefetches past it were dropped, and counted as queued
    # all the same (in what a pass returns and in the running total).
    names = [f"s{k:03}" for k in range(100)]
    store = open_store(
        datasets={"d": DatasetSettings(policy="recording")},
        start_mover=False,  # no promotion thread takes from the queue
        prefetch_depth=len(names),
        archive_bandwidth_bytes_per_s=len(names) * STORED,
        prefetch_horizon_s=1.0,
    )
    fill(store, "d", names)
    for name in names:
        store.evict("d", name)
    store.declare_plan("d", shards=names)
    queued = store.prefetcher.run_once()
    assert len(policy_of(store, "d").prefetches[-1][1]) == len(names)  # all asked for
    assert queued == store.promoter.promotions_pending() < len(names)
    assert store.prefetcher.queued == queued


@pytest.mark.parametrize("name", ["recording", DEFAULT_POLICY])
def test_a_shard_larger_than_the_prefetch_budget_is_fetched_alone(
    open_store: StoreFactory, name: str
) -> None:
    store = open_store(
        datasets={"d": DatasetSettings(policy=name)},
        start_mover=False,  # the test runs the prefetch passes itself
        archive_bandwidth_bytes_per_s=4 * STORED,  # 4 frames in the 1 s horizon
        prefetch_horizon_s=1.0,
    )
    frames = {"s0": 1, "s1": 6, "s2": 1}  # s1 is larger than the whole horizon
    for index, (shard, count) in enumerate(frames.items()):
        store.put("d", shard, payload(count * FRAME, index))
    assert store.mover.drain_once()
    for shard in frames:
        store.evict("d", shard)
    store.declare_plan("d", shards=list(frames))
    assert store.prefetch("d", ["s0"]) == 1  # an operator's: now something is in flight
    assert store.prefetcher.budget() == PrefetchBudget(requests=7, bytes=3 * STORED)
    # s1 is next, but fits only alone, with nothing in flight: s2 goes ahead of it.
    assert store.prefetcher.run_once() == 1
    assert store.promoter.in_flight() == (2, 2 * STORED)
    store.mover.start()
    wait_until(lambda: hot(store, "d") == {"s0", "s2"}, "the small shards to land")
    wait_until(lambda: store.promoter.in_flight() == (0, 0), "their promotions to end")
    assert store.prefetcher.run_once() == 1  # nothing in flight: s1, alone
    wait_until(lambda: hot(store, "d") == {"s0", "s1", "s2"}, "the large prefetch to land")
    assert store.prefetcher.queued == 2
    assert [store.get("d", shard).source for shard in frames] == ["hot"] * 3


def test_the_prefetcher_fetches_nothing_eviction_could_make_no_room_for(
    open_store: StoreFactory,
) -> None:
    # The tier at its high watermark with shards eviction may not take (not archived
    # yet, then pinned): each pass queued the planned shard, whose promotion fetched
    # it whole from the archive, found no room and dropped it.
    store = open_store(
        datasets={
            "d": DatasetSettings(policy="recording"),
            "w": DatasetSettings(policy="recording"),
        },
        start_mover=False,  # archive and prefetch exactly when the test says so
        hot_capacity_bytes=int(10 * STORED / 0.9) + 64,  # 10 shards below the high watermark
    )
    fill(store, "d", ["s0"])
    store.evict("d", "s0")
    writes = [f"w{i}" for i in range(10)]
    fill(store, "w", writes, archive=False)  # the high watermark, nothing evictable
    assert catalog_hot_bytes(store) == (10 * STORED, 10 * STORED)
    store.declare_plan("d", shards=["s0"])
    assert store.prefetcher.run_once() == 0
    assert store.mover.drain_once()  # archived: evictable, but for pins
    for name in writes:
        store.pin("w", name)
    assert store.prefetcher.run_once() == 0
    assert store.promoter.in_flight() == (0, 0) and store.promoter.promotions_skipped == 0
    store.unpin("w", "w3")  # room once w3 goes
    assert store.prefetcher.run_once() == 1
    assert store.promoter.in_flight() == (1, STORED)
    # Probed without asking a policy for victims (which uses up or ages their state).
    assert policy_of(store, "w").names("victims") == []


def test_the_prefetch_room_probe_is_bounded_and_not_repeated_for_each_put(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A review measured a walk of every hot shard (10-15 µs each) at nearly every
    # prefetch pass while writes went on: any put dropped the last count.
    store = open_store(
        datasets={"w": DatasetSettings(policy="recording")},
        start_mover=False,
        hot_capacity_bytes=int(10 * STORED / 0.9) + 64,  # 10 shards below the high watermark
    )
    fill(store, "w", [f"w{i}" for i in range(10)], archive=False)  # nothing evictable
    looked: list[str] = []
    readable_shard = store._catalog.readable_shard

    def counted(txn: Any, dataset: str, name: str) -> Any:
        looked.append(name)
        return readable_shard(txn, dataset, name)

    monkeypatch.setattr(store._catalog, "readable_shard", counted)
    room = store.hot_room
    assert not room.could_make_room_for_promotion(STORED)
    assert len(looked) == 10
    store.put("w", "w0", payload(FRAME // 2, 99))  # an overwrite: the hot bytes change
    looked.clear()  # (the put's own eviction looks too)
    assert not room.could_make_room_for_promotion(STORED)
    assert looked == []  # the count stands
    room.room_may_have_come()
    monkeypatch.setattr(eviction, "PROBE_SHARDS_AT_MOST", 4)
    assert room.could_make_room_for_promotion(STORED)  # gave up: taken to, as before
    assert len(looked) == 4
    # A count that stopped once it had enough for one need says nothing of a larger.
    store.mover.drain_once()  # every shard archived: evictable
    looked.clear()
    room.room_may_have_come()
    assert room._could_free(STORED)
    assert room._could_free(3 * STORED)
    assert len(looked) == 1 + 3


def _cold_clairvoyant_store(
    open_store: StoreFactory, count: int, **overrides: Any
) -> tuple[Store, list[str]]:
    """A store whose dataset "d" (clairvoyant) holds ``count`` one-frame shards, all
    archived and cold, and their names in order (skips without the policy)."""
    skip_without_policy("clairvoyant")
    store = open_store(datasets={"d": DatasetSettings(policy="clairvoyant")}, **overrides)
    names = [f"s{i:02d}" for i in range(count)]
    for name in names:
        store.put("d", name, payload(FRAME, len(name)))
    assert store.drain(10)
    for name in names:
        store.evict("d", name)
    return store, names


def test_prefetch_brings_planned_shards_hot_ahead_of_the_reader(open_store: StoreFactory) -> None:
    store, names = _cold_clairvoyant_store(open_store, 16, hot_capacity_bytes=64 * STORED)
    order = names[::-1]
    job = store.declare_plan("d", shards=order)
    wait_until(
        lambda: {order[0], order[1], order[2]} <= hot(store, "d"),
        "the first planned shards to be prefetched",
    )
    for position, name in enumerate(order):
        store.report_position(job, position)
        wait_until(lambda name=name: store.stat("d", name).hot, f"{name} prefetched")
        assert store.get("d", name).source == "hot"
    store.close_plan(job)
    assert store.dataset_usage("d").misses == 0


def _small_tier_of_planned_shards(open_store: StoreFactory) -> tuple[Store, list[str]]:
    """30 cold shards of a clairvoyant dataset, a tier with room for 9 of them."""
    return _cold_clairvoyant_store(
        open_store,
        30,
        hot_capacity_bytes=10 * STORED,  # room for 9 shards below the high watermark
        prefetch_interval_s=0.05,
    )


def _read_in_plan_order(store: Store, names: list[str]) -> None:
    """Declare a plan of ``names`` and read them in its order, each time the next 8
    are hot (prefetched ahead of the reader), reporting each position."""
    job = store.declare_plan("d", shards=names)
    for position, name in enumerate(names):
        ahead = set(names[position : position + 8])
        wait_until(lambda ahead=ahead: ahead <= hot(store, "d"), f"{sorted(ahead)} prefetched")
        assert store.get("d", name).source == "hot"
        store.report_position(job, position + 1)
    store.close_plan(job)


def test_prefetch_ahead_of_a_reader_does_not_evict_what_it_just_fetched(
    open_store: StoreFactory,
) -> None:
    # A plan three times the hot tier, read in order: each shard read leaves the plan
    # (the clairvoyant policy hands it to its unplanned fallback). Prefetching with
    # no horizon while that fallback held a shard fetched shard after shard, each
    # promotion evicting the one fetched before it (needed sooner): several
    # archive fetches per shard read, the hot set ending where it would have anyway.
    store, names = _small_tier_of_planned_shards(open_store)
    _read_in_plan_order(store, names)
    # Each shard fetched once: never evicted before its read, never fetched again.
    assert store.promoter.promotions == len(names)


def test_prefetch_makes_no_room_of_an_unplanned_shard_eviction_may_not_take(
    open_store: StoreFactory,
) -> None:
    # A pinned shard no plan names: the clairvoyant policy counted it as room that
    # evicting unplanned shards would make, so every pass fetched the shard after its
    # farthest planned one, that fetch evicted the farthest (due sooner), and the next
    # pass fetched it back: hundreds of archive fetches a second, with no reader.
    store, names = _small_tier_of_planned_shards(open_store)
    store.put("d", "pinned", payload(FRAME, 99))
    store.pin("d", "pinned")
    _read_in_plan_order(store, names)  # 8 ahead and the pinned one fill the room
    # Each shard fetched once, but for one fetch past the farthest planned shard that
    # evicted it (and its fetch back) before the policy learned the pinned one stays.
    assert store.promoter.promotions <= len(names) + 2
    assert store.stat("d", "pinned").hot


def test_prefetch_takes_no_pinned_planned_shard_for_the_one_it_would_evict(
    open_store: StoreFactory,
) -> None:
    # The last shard of the plan pinned: the clairvoyant policy let a prefetch evict
    # for any shard due before it, the farthest resident, though eviction may not take
    # it, so each fetch evicted the one fetched before it (due sooner), fetched back by
    # the next pass: over a thousand archive fetches a second, with no reader.
    store, names = _small_tier_of_planned_shards(open_store)
    store.pin("d", names[-1])
    wait_until(lambda: store.stat("d", names[-1]).hot, "the pinned shard promoted")
    _read_in_plan_order(store, names)
    # Bounded: shards fetched before the policy first asked for victims and learned
    # that the pinned one stays (one per promotion in flight), and the swaps of a batch
    # of prefetches landing at once into a full tier, which settle.
    assert store.promoter.promotions <= 1 + 3 * len(names)


def test_prefetch_counts_no_shard_too_large_to_come_as_on_its_way_in(
    open_store: StoreFactory,
) -> None:
    # "big", larger than the dataset's quota, is nothing to fetch, and it never comes;
    # the clairvoyant policy counted it as on its way in all the same, and its bytes
    # took the room that evicting the unplanned u0 and u1 makes: the shard after the
    # farthest planned resident (r) was not fetched, pass after pass.
    skip_without_policy("clairvoyant")
    store = open_store(datasets={"d": DatasetSettings(policy="clairvoyant")}, start_mover=False)
    store.put("d", "big", payload(8 * FRAME, 0))
    fill(store, "d", ["u0", "u1", "r", "a", "b", "c"])
    for name in ("big", "a", "b", "c"):
        store.evict("d", name)
    store.update_dataset("d", hot_quota_bytes=6 * STORED)  # 3 hot: room for 3 more
    store.declare_plan("d", shards=["big", "a", "r", "b", "c"])
    assert store.prefetcher.run_once() == 2  # a, due before r; b, in u0's and u1's room
    assert store.promoter.in_flight() == (2, 2 * STORED)
    assert store.prefetcher.run_once() == 0  # c is due after r; a and b, coming, take the room


class _CountingArchive(MemoryTier):
    """A memory archive that counts reads of each key and range (``None``: whole), and
    notes the threads that made them."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[tuple[str, tuple[int, int] | None]] = Counter()
        self.threads: set[str] = set()

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> memoryview | None:
        self.reads[(key, byte_range)] += 1
        self.threads.add(threading.current_thread().name)
        return super().get(key, byte_range)


def test_a_whole_shard_service_read_of_an_admitted_miss_reads_the_archive_once(
    open_store: StoreFactory,
) -> None:
    archive = _CountingArchive()
    store = open_store(archive, datasets={"d": DatasetSettings(policy="recording")})
    data = payload(3 * FRAME, 11)
    store.put("d", "s", data)
    assert store.drain(10)
    store.evict("d", "s")
    archive.reads.clear()
    archive.threads.clear()
    sealed = store.open_sealed("d", "s")  # a miss: the policy admits it
    frames = [stored for _, stored in sealed.frames()]
    assert len(frames) == 3
    # The stream promoted the shard and read the frames hot: the archive was read
    # once, each frame by one ranged GET, on the readers' pool (at the reader's
    # priority), not the mover's background one.
    assert len(archive.reads) == 3 and set(archive.reads.values()) == {1}
    assert archive.threads and all(t.startswith("tierstore-fetch") for t in archive.threads)
    assert all(span is not None for _, span in archive.reads)
    assert store.stat("d", "s").hot
    assert store.get("d", "s").to_bytes() == data


def test_a_whole_shard_read_whose_promotion_finds_the_archive_down_does_not_ask_it_again(
    open_store: StoreFactory,
) -> None:
    # The reader went on to read the archive itself after the promotion had already
    # failed through all its retries: against an archive that accepts connections and
    # never answers, that was the whole retry budget (5 x 60 s) twice.
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets={"d": DatasetSettings(policy="recording")})
    store.put("d", "s", payload(3 * FRAME, 12))
    assert store.drain(10)
    store.evict("d", "s")
    archive.failing = True
    archive.gets.clear()
    sealed = store.open_sealed("d", "s")  # a miss: the promotion runs on this thread
    with pytest.raises(ArchiveUnavailable, match="the archive is down"):
        list(sealed.frames())
    assert len(archive.gets) <= 3, archive.gets  # the promotion's ranged GETs, no more


def test_readers_promoting_on_their_own_threads_are_bounded_by_promotion_threads(
    open_store: StoreFactory,
) -> None:
    archive = FaultyTier(MemoryTier())
    store = open_store(
        archive, datasets={"d": DatasetSettings(policy="recording")}, promotion_threads=1
    )
    data = {name: payload(2 * FRAME, seed) for seed, name in enumerate(["a", "b"])}
    generations = {name: store.put("d", name, value).generation for name, value in data.items()}
    assert store.drain(10)
    for name in data:
        store.evict("d", name)
    # The first reader promotes "a" on its own thread; its fetches wait at the gate.
    archive.hold_reads(archive_frames_key("d", generations["a"]), threads_named="tierstore-fetch")
    first: list[bytes] = []
    reader = threading.Thread(
        target=lambda: first.extend(stored for _, stored in store.open_sealed("d", "a").frames())
    )
    reader.start()
    try:
        assert archive.read_waiting.wait(10), "the first reader never fetched"
        # The one slot is taken: the second reader streams "b" from the archive at
        # once, not waiting behind the promotion queue, and the promotion threads
        # promote it meanwhile.
        frames = [stored for _, stored in store.open_sealed("d", "b").frames()]
        assert len(frames) == 2
        key_b = archive_frames_key("d", generations["b"])
        assert {key for key, _ in archive.gets_by("tierstore-fetch")} == {
            archive_frames_key("d", generations["a"]),
            key_b,
        }
        wait_until(lambda: store.stat("d", "b").hot, "the queued promotion of b")
        assert {key for key, _ in archive.gets_by("tierstore-promote-fetch")} == {key_b}
        assert not store.stat("d", "a").hot  # still held
    finally:
        archive.release_reads()
        reader.join(10)
    assert len(first) == 2 and store.stat("d", "a").hot
    for name, value in data.items():
        read = store.get("d", name)
        assert read.source == "hot" and read.to_bytes() == value


def test_an_abandoned_service_read_of_an_admitted_miss_is_promoted_in_the_background(
    open_store: StoreFactory,
) -> None:
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets={"d": DatasetSettings(policy="recording")})
    data = payload(2 * FRAME, 9)
    store.put("d", "s", data)
    assert store.drain(10)
    store.evict("d", "s")
    store.open_sealed("d", "s").abandon()  # admitted, but its frames are never read
    wait_until(lambda: store.stat("d", "s").hot, "the abandoned miss to be promoted")
    assert archive.gets_by("tierstore-promote-fetch") and not archive.gets_by("tierstore-fetch")
    assert store.get("d", "s").to_bytes() == data


def commits_fail(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every write transaction of ``store`` fail as its commit does on a full map
    (HotTierFull, the transaction aborted), until ``monkeypatch.undo()``."""
    real_write = store._env.write

    @contextlib.contextmanager
    def commit_fails() -> Iterator[Any]:
        with real_write() as txn:
            yield txn
            raise HotTierFull("the commit failed (test)")  # aborts the transaction

    monkeypatch.setattr(store._env, "write", commit_fails)


def test_a_failed_commit_leaves_the_policy_knowing_the_hot_shard(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The policy hears of a change inside the write transaction, before the commit;
    # when the commit fails (a full map), the change is undone, so the shard that
    # stays hot stays evictable.
    store = open_store(datasets={"d": DatasetSettings(policy="recording")})
    store.put("d", "s", payload(FRAME, 1))
    assert store.drain(10)  # archived: eviction may take it
    commits_fail(store, monkeypatch)
    with pytest.raises(HotTierFull):
        store.delete("d", "s")
    monkeypatch.undo()
    assert store.stat("d", "s").hot and store.get("d", "s").to_bytes() == payload(FRAME, 1)
    assert store.hot_room.evict(1) == STORED  # the policy still offers it as a victim
    assert not store.stat("d", "s").hot


@pytest.mark.parametrize(
    "change",
    [
        # Deleting a dataset drops its policy; when the deletion's commit fails, the
        # dataset and its hot shards stay, and so must the policy that evicts them.
        lambda store: store.delete_dataset("d", force=True),
        # The new policy took over inside the transaction: a failed commit left it in
        # force (and in the statistics) while the catalog, and the next start, named
        # the old one.
        lambda store: store.update_dataset("d", policy="lru"),
    ],
    ids=["deletion", "policy-change"],
)
def test_a_failed_commit_of_a_dataset_change_keeps_its_policy(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch, change: Callable[[Store], object]
) -> None:
    store = open_store(datasets={"d": DatasetSettings(policy="recording")})
    store.put("d", "s", payload(FRAME, 2))
    assert store.drain(10)
    policy = policy_of(store, "d")
    commits_fail(store, monkeypatch)
    with pytest.raises(HotTierFull):
        change(store)
    monkeypatch.undo()
    assert policy_of(store, "d") is policy and store.get_dataset("d").policy == "recording"
    assert store.stat("d", "s").hot and store.get("d", "s").to_bytes() == payload(FRAME, 2)
    assert store.hot_room.evict(1) == STORED  # the policy in force still knows the shard
    assert not store.stat("d", "s").hot


def test_a_policy_change_leaves_a_dataset_made_again_meanwhile_its_own_policy(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The change sets the policy in a transaction after the setting's commit: a dataset
    # deleted and made again (with another policy) in between got the change's policy,
    # while its catalog named its own.
    store = open_store(datasets={"d": DatasetSettings(policy="lru")}, start_mover=False)
    real_write = store._env.write
    writes = 0

    @contextlib.contextmanager
    def made_again_before_the_second() -> Iterator[Any]:
        nonlocal writes
        writes += 1
        if writes == 2:  # the policy change's second transaction: in between, d again
            monkeypatch.setattr(store._env, "write", real_write)
            store.delete_dataset("d", force=True)
            store.create_dataset("d", DatasetSettings(policy="recording"))
        with real_write() as txn:
            yield txn

    monkeypatch.setattr(store._env, "write", made_again_before_the_second)
    store.update_dataset("d", policy="s3fifo")
    assert writes == 2
    assert store.get_dataset("d").policy == "recording"
    policy_of(store, "d")  # its own, not the change's


def test_a_policy_change_that_commits_takes_over(open_store: StoreFactory) -> None:
    store = open_store(datasets={"d": DatasetSettings(policy="recording")})
    store.update_dataset("d", policy="lru")
    assert type(store._policies._policies["d"]) is LruPolicy
    assert store.get_dataset("d").policy == "lru"


def test_a_dataset_created_again_right_after_its_deletion_keeps_its_policy_state(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The deletion forgets the old dataset's policy inside its transaction: a dataset
    # of the same name created the moment that commits must keep its own policy state.
    # No mover: its transactions would go through the patched ``write`` too.
    store = open_store(datasets={"d": DatasetSettings(policy="recording")}, start_mover=False)
    store.put("d", "old", payload(FRAME, 1))
    real_write = store._env.write
    recreated: list[bool] = []
    caller = threading.current_thread()

    @contextlib.contextmanager
    def then_recreate() -> Iterator[Any]:
        with real_write() as txn:
            yield txn
        # Right after the deletion's commit, before it returns (the deletion is this
        # thread's first transaction here; others' go by).
        if not recreated and threading.current_thread() is caller:
            recreated.append(True)
            monkeypatch.setattr(store._env, "write", real_write)
            store.create_dataset("d", DatasetSettings(policy="recording"))
            store.put("d", "new", payload(FRAME, 2))

    monkeypatch.setattr(store._env, "write", then_recreate)
    store.delete_dataset("d", force=True)
    assert recreated
    assert store._policies.hot_bytes("d") > 0  # the new shard, still known
    assert ("inserted", ("d", "new")) in [call[:2] for call in policy_of(store, "d").calls]


def test_a_read_racing_its_datasets_deletion_leaves_no_policy_behind(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The read found the shard, the dataset was deleted (its policy forgotten), and
    # then the read told the driver, which made the gone dataset a default policy:
    # kept for good, one more for every dataset deleted under a read.
    store = open_store(datasets={"d": DatasetSettings(policy="lru")}, start_mover=False)
    fill(store, "d", ["s"], archive=False)
    real_read = store._policies.read

    def deleted_first(key: Any, size: int, hit: bool, free_bytes: int) -> bool:
        monkeypatch.setattr(store._policies, "read", real_read)
        store.delete_dataset("d", force=True)
        return real_read(key, size, hit, free_bytes)

    monkeypatch.setattr(store._policies, "read", deleted_first)
    store.get("d", "s")
    assert "d" not in store._policies._policies
    assert store.policy_name("d") == DEFAULT_POLICY  # as for any dataset without one


def test_a_promotion_takes_its_room_from_the_largest_dataset_not_one_shard_of_each(
    open_store: StoreFactory,
) -> None:
    # Eviction's proportional shares give every dataset at least one byte to free, so
    # each gave a whole shard: one promotion at the high watermark evicted 5 shards.
    names = [f"d{i}" for i in range(5)]
    store = open_store(
        datasets={name: DatasetSettings(policy="lru") for name in names},
        start_mover=False,
        hot_capacity_bytes=int(21 * STORED / 0.9) + 64,  # the high watermark: 21 shards
    )
    fill(store, "d0", ["s0", "s1", "s2", "s3", "s4", "cold"])
    store.evict("d0", "cold")
    for name in names[1:]:
        fill(store, name, ["s0", "s1", "s2", "s3"])
    assert catalog_hot_bytes(store) == (21 * STORED, 21 * STORED)
    evictions = store.hot_room.evictions
    assert store.promoter.promote_now(record_of(store, "d0", "cold"), None)
    assert store.hot_room.evictions - evictions == 1
    assert [len(hot(store, name)) for name in names] == [5, 4, 4, 4, 4]  # d0 gave the room


@pytest.mark.parametrize("policy", ["s3fifo", "clairvoyant"])
def test_a_dataset_with_nothing_hot_gets_its_reused_shards_in_past_another_datasets(
    open_store: StoreFactory, policy: str
) -> None:
    # The tier at its high watermark with another dataset's shards, read never again: a
    # frequency-gated policy weighed a miss only against shards of its own to displace,
    # found none, and refused every miss, however often the shard was read, though
    # its promotion would have taken the other dataset's room (largest first).
    skip_without_policy(policy)
    store = open_store(
        datasets={"a": DatasetSettings(policy=policy), "b": DatasetSettings(policy="lru")},
        hot_capacity_bytes=10 * STORED,  # room for 9 shards below the high watermark
    )
    fill(store, "a", ["x"])
    store.evict("a", "x")
    fill(store, "b", [f"b{index}" for index in range(9)])
    assert store.hot_room.hot_bytes() == store.hot_room.high_watermark_bytes()
    # One read is no reuse: a one-pass scan of "a" still bypasses the tier.
    assert store.get("a", "x").source == "archive"
    wait_until(lambda: store.promoter.promotions_pending() == 0, "a promotion, if any")
    assert not store.stat("a", "x").hot
    for _ in range(5):
        store.get("a", "x")
        wait_until(lambda: store.promoter.promotions_pending() == 0, "a promotion, if any")
    assert store.stat("a", "x").hot
    assert len(hot(store, "b")) == 8  # its room came from "b"


class _SteppedClocks:
    """Stands in for the ``time`` module of tierstore.engine.policies: a wall clock the
    test steps, and a monotonic one it moves on."""

    def __init__(self) -> None:
        self.wall = 2_000_000_000.0
        self.elapsed = 100.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.elapsed

    def pass_(self, seconds: float) -> None:
        self.wall += seconds
        self.elapsed += seconds


def test_the_policies_clock_moves_on_when_the_system_clock_is_set_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The driver's clock was the wall clock, never going back: set back an hour (an
    # NTP step), it stood still for that hour, every policy call seeing one instant,
    # so the clairvoyant policy measured the read rate of no job declared meanwhile.
    skip_without_policy("clairvoyant")
    clocks = _SteppedClocks()
    monkeypatch.setattr(policies_module, "time", clocks)
    driver = policies_module.PolicyDriver()
    driver.open_dataset("d", "clairvoyant")
    driver.read(("d", "z"), 1, False, 10)  # the clock read before the step
    clocks.pass_(10.0)
    clocks.wall -= 3600.0  # set back
    keys = [("d", name) for name in ("a", "b", "c")]
    driver.declare_plan("d", "job", keys, [1, 1, 1])
    clocks.pass_(1.0)
    driver.report_position("d", "job", 2)
    (plan,) = driver._policies["d"]._plans  # type: ignore[attr-defined]
    assert plan.rate == pytest.approx(2.0)  # two entries in the second since it began


def test_a_plan_declared_at_a_position_is_rated_from_there(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A resumed epoch declared its plan, then reported its start position a round trip
    # later: the clairvoyant policy took the jump for entries read in those
    # milliseconds, rated the job at millions a second, and planned its prefetch for
    # that until later reports smoothed it away (seconds). Declared with its position,
    # the jump is no sample: the first is the second's two entries.
    skip_without_policy("clairvoyant")
    clocks = _SteppedClocks()
    monkeypatch.setattr(policies_module, "time", clocks)  # before the driver starts
    store = open_store(datasets={"d": DatasetSettings(policy="clairvoyant")})
    names = [f"s{index}" for index in range(10)]
    fill(store, "d", names, archive=False)
    clocks.pass_(1.0)
    job = store.declare_plan("d", shards=names, position=5)
    (plan,) = store._policies._policies["d"]._plans  # type: ignore[attr-defined]
    assert (plan.position, plan.rate) == (5, 0.0)
    clocks.pass_(1.0)
    store.report_position(job, 7)
    assert plan.rate == pytest.approx(2.0)


def test_opening_many_datasets_looks_at_each_hot_shard_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each dataset's seed scanned every hot shard of the datasets seeded before it: a
    # start of 100,000 hot shards over 400 datasets spent 9 s of its 12.5 s there.
    looked_at = Counter[str]()
    dataset_of = policies_module._dataset_of

    def counted(key: Any) -> str:
        looked_at["key"] += 1
        return dataset_of(key)

    monkeypatch.setattr(policies_module, "_dataset_of", counted)
    driver = policies_module.PolicyDriver()
    datasets, per_dataset = 20, 20
    for index in range(datasets):
        name = f"d{index}"
        hot = [((name, f"s{shard}"), 1, float(shard)) for shard in range(per_dataset)]
        driver.open_dataset(name, "lru", hot)
    assert looked_at["key"] <= 2 * datasets * per_dataset  # not ~datasets^2 * per_dataset
    driver.open_dataset("d3", "lru", [])  # seeded again, empty: its old keys go
    driver.drop_dataset("d4")
    assert driver.hot_bytes("d3") == driver.hot_bytes("d4") == 0
    assert driver.hot_bytes("d5") == per_dataset
    assert len(driver.hot_keys(10_000)) == (datasets - 2) * per_dataset
