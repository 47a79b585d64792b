"""An archive that fails shows in stats (``mover_error``, the service's ``archive_error``
and ``tierstore_archive_failing``) whatever the engine was doing when it failed.

Only the mover's errors, and a pinned shard's failed promotion, were reported: with the
journal empty, cold reads and prefetches failing against an archive gone away left
stats saying nothing was wrong. The archive is a MemoryTier in a FaultyTier, whose
``failing`` switch makes every request raise ArchiveUnavailable.
"""

from __future__ import annotations

import pytest

from tests.engine.backdoor import record_of
from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import FRAME, StoreFactory, payload, wait_until
from tierstore.engine.archived import ArchivedFrames
from tierstore.engine.archivewatch import ArchiveWatch
from tierstore.engine.records import archive_frames_key
from tierstore.engine.store import Store
from tierstore.errors import ArchiveUnavailable, FailedPrecondition, IntegrityError
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings

PLAIN = {"plain": DatasetSettings(), "enc": DatasetSettings(encrypted=True)}


def cold_shard(store: Store, dataset: str, shard: str, seed: int = 1) -> int:
    """Put a shard, let the mover archive it, evict it; returns its generation."""
    info = store.put(dataset, shard, payload(3 * FRAME, seed))
    assert store.drain(10)
    store.evict(dataset, shard)
    return info.generation


def test_a_cold_read_that_fails_for_want_of_the_archive_shows_until_it_answers(
    open_store: StoreFactory,
) -> None:
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets=PLAIN)
    generation = cold_shard(store, "enc", "s")
    assert store.stats().mover_error is None
    archive.failing = True
    with pytest.raises(ArchiveUnavailable):
        store.get("enc", "s", byte_range=(FRAME, 10))
    stats = store.stats()
    assert stats.journal_entries == 0  # nothing for the mover to fail at
    failing = stats.mover_error or ""
    assert archive_frames_key("enc", generation) in failing, failing
    assert "the archive is down" in failing and " ago" in failing  # the reason and when
    # The archive answers again: the next request that succeeds clears it.
    archive.failing = False
    assert store.get("enc", "s", byte_range=(FRAME, 10)).to_bytes()
    assert store.stats().mover_error is None


def test_a_prefetch_that_fails_shows_and_any_later_answer_clears_it(
    open_store: StoreFactory,
) -> None:
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets=PLAIN)
    generation = cold_shard(store, "plain", "s")
    archive.failing = True
    assert store.prefetch("plain", ["s"]) > 0
    wait_until(lambda: store.stats().mover_error is not None, "the failed prefetch to show")
    assert archive_frames_key("plain", generation) in (store.stats().mover_error or "")
    assert not store.stat("plain", "s").hot
    # Not a read this time: the mover's upload is what finds the archive back.
    archive.failing = False
    store.put("plain", "other", b"uploaded once the archive is back")
    assert store.drain(10)
    assert store.stats().mover_error is None


def test_a_missing_or_damaged_archive_object_is_no_archive_outage(
    open_store: StoreFactory,
) -> None:
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets=PLAIN)
    missing = cold_shard(store, "plain", "gone", 1)
    damaged = cold_shard(store, "plain", "bad", 2)
    archive.inner.delete(archive_frames_key("plain", missing))
    key = archive_frames_key("plain", damaged)
    stored = bytearray(bytes(archive.inner.get(key) or b""))
    stored[10] ^= 0xFF
    archive.inner.put(key, bytes(stored))
    with pytest.raises(IntegrityError):
        store.get("plain", "bad")
    # The archive answered: one shard's copy is damaged (DataLoss), not the archive.
    assert store.stats().mover_error is None
    with pytest.raises(IntegrityError):
        store.get("plain", "gone")
    # Nor is a missing one an outage; but an archived shard's object gone says the
    # archive may have lost others, and eviction is held (shown until a start).
    shown = store.stats().mover_error or ""
    assert "last archive request failed" not in shown
    assert f"object {archive_frames_key('plain', missing)} " in shown and "evicted" in shown


def test_an_archive_found_to_have_lost_an_object_holds_eviction(
    open_store: StoreFactory,
) -> None:
    # A review wiped a running node's archive: a cold read failed DataLoss, and an
    # eviction then dropped a hot shard whose only copy it was.
    archive = MemoryTier()
    store = open_store(archive, datasets=PLAIN)
    lost = cold_shard(store, "plain", "lost")
    store.put("plain", "hot", payload(2 * FRAME, 5))
    store.put("plain", "hot2", payload(2 * FRAME, 6))
    assert store.drain(10) and store.stat("plain", "hot").archived
    # A read of a generation overwritten meanwhile, whose object the mover deleted after
    # the overwrite, finds it missing: no loss, and no hold.
    old = record_of(store, "plain", "hot2")
    store.put("plain", "hot2", payload(2 * FRAME, 7))
    assert store.drain(10)
    with pytest.raises(IntegrityError, match="is missing"):
        ArchivedFrames(store._archive, old).fetch(0)
    assert store.stats().mover_error is None
    archive.delete(archive_frames_key("plain", lost))  # and so, perhaps, "hot"'s too
    with pytest.raises(IntegrityError, match="is missing"):
        store.get("plain", "lost")
    with pytest.raises(FailedPrecondition, match=r"plain/hot was not evicted: .*found missing"):
        store.evict("plain", "hot")
    # Read again and again, one lost object is counted once (each read counted: "4 ...").
    for _ in range(3):
        with pytest.raises(IntegrityError, match="is missing"):
            store.get("plain", "lost")
    assert (store.stats().mover_error or "").startswith("1 archived shard object(s) found")
    assert store.hot_room.evict(10 * FRAME) == 0  # nor does the policy evict
    assert store.stat("plain", "hot").hot and store.stat("plain", "hot2").hot
    assert store.get("plain", "hot").to_bytes() == payload(2 * FRAME, 5)
    # A start checks the archive again (serve refuses one that lost the node's
    # datasets' objects, README): the store opened again evicts.
    store = open_store.reopen(store, archive)
    assert store.evict("plain", "hot") > 0


def test_uploads_held_for_an_unchecked_archive_show_why_it_cannot_be_checked(
    open_store: StoreFactory,
) -> None:
    # A node started with its archive down holds its uploads until its keys are checked
    # there; stats said only that ("the master keys are not checked against the archive
    # yet"), never why: the archive's own failure, which the checks meet every few
    # seconds, was hidden behind the hold.
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets=PLAIN)
    store.mover.hold_archive("the master keys are not checked against the archive yet")
    archive.failing = True
    with pytest.raises(ArchiveUnavailable):
        store.archive_holds_objects()  # as the deferred key check asks
    failing = store.stats().mover_error or ""
    assert "the archive is down" in failing, failing
    assert "the master keys are not checked against the archive yet" in failing
    archive.failing = False
    store.archive_holds_objects()  # answers: the request's failure is cleared
    assert store.stats().mover_error == "the master keys are not checked against the archive yet"


def test_requests_count_in_the_order_they_began_not_ended() -> None:
    watch = ArchiveWatch()
    down = ArchiveUnavailable("GET k: the archive is down")
    watch.failed(down, began=2.0)
    # Sent before the failure, answered after it: the archive may have failed since.
    watch.answered(began=1.0)
    assert watch.failure() is not None
    watch.answered(began=3.0)  # sent after it, and answered: the archive is back
    assert watch.failure() is None
    # Hung through an outage, failing after newer requests answered: over already (it
    # stayed shown on an idle node, the archive working).
    watch.failed(down, began=2.5)
    assert watch.failure() is None
    watch.failed(down, began=4.0)
    assert "the archive is down" in (watch.failure() or "")


def test_an_idle_node_asks_the_archive_so_an_outage_and_its_end_show(
    open_store: StoreFactory,
) -> None:
    # With nothing to upload and nobody reading, nothing asked the archive: a frozen
    # one showed nowhere, and once it answered again, the failure a cold read had
    # recorded stayed shown until the next request.
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets=PLAIN, archive_probe_s=0.2)
    store.put("plain", "s", b"archived")
    assert store.drain(10)
    assert store.stats().mover_error is None
    archive.failing = True  # no request from here on but the node's own
    wait_until(lambda: store.stats().mover_error is not None, "the outage to show")
    assert "the archive is down" in (store.stats().mover_error or "")
    archive.failing = False
    wait_until(lambda: store.stats().mover_error is None, "the archive's answer to show")


def test_a_node_without_datasets_asks_the_archive_nothing(open_store: StoreFactory) -> None:
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, archive_probe_s=0.05)
    archive.failing = True
    watch = store.archive_watch
    wait_until(lambda: watch.quiet_for() > 0.5, "a quiet half second")
    assert store.stats().mover_error is None  # nothing was asked, so nothing failed
