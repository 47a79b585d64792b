"""The mover through the store: upload journal, back-pressure, access counts, stop.

The archive is a MemoryTier, wrapped in a FaultyTier where a test needs the
archive to go down and come back, or needs to see what a read fetched.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable

import pytest

from tests.engine.backdoor import (
    flip,
    hot_frames,
    put_hot_frame,
    put_raw_record,
    record_of,
)
from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import (
    DATASETS,
    FRAME,
    KEYRING,
    OTHER_KEYRING,
    StoreFactory,
    payload,
    wait_until,
)
from tierstore.engine.records import archive_frames_key, archive_manifest_key
from tierstore.engine.store import Store
from tierstore.errors import BacklogFull, IntegrityError, ResourceExhausted
from tierstore.tiers.base import SizedStream
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings

PLAIN = {"plain": DatasetSettings(), "enc": DatasetSettings(encrypted=True)}


def archived_bytes(archive: MemoryTier, store: Store, dataset: str, name: str) -> bytes | None:
    """The frames object the archive holds for a shard's current generation."""
    record = record_of(store, dataset, name)
    value = archive.get(archive_frames_key(dataset, record.generation))
    return None if value is None else bytes(value)


def meta_keys(store: Store, prefix: bytes) -> list[bytes]:
    """The catalog's ``meta`` keys that begin with ``prefix``."""
    with store._env.read() as txn:
        cursor = txn.cursor(db=store._env.db("meta"))
        keys = []
        positioned = cursor.set_range(prefix)
        while positioned and bytes(cursor.key()).startswith(prefix):
            keys.append(bytes(cursor.key()))
            positioned = cursor.next()
        return keys


def forget_backlog_and_commit_times(store: Store, *counters: bytes) -> None:
    """Delete every dataset's backlog count, every journal entry's commit time and
    ``counters`` from the catalog, as a release that kept none of them left it."""
    for prefix in (b"backlog\x00", b"journaled\x00"):
        keys = meta_keys(store, prefix)
        assert keys
        with store._env.write() as txn:
            for key in keys:
                txn.delete(key, db=store._env.db("meta"))
    with store._env.write() as txn:
        for counter in counters:
            txn.delete(counter, db=store._env.db("meta"))


# The journal and back-pressure.


def test_backlog_full_then_drained_without_losing_anything(open_store: StoreFactory) -> None:
    inner = MemoryTier()
    archive = FaultyTier(inner)
    archive.failing = True
    size = 2 * FRAME + 1000  # stored: 3 frames
    stored = size + 3 * 16
    store = open_store(archive, datasets=PLAIN, backlog_cap_bytes=3 * stored)
    accepted: dict[tuple[str, str], bytes] = {}
    with pytest.raises(BacklogFull) as caught:
        for index in range(20):
            dataset = "enc" if index % 2 else "plain"
            data = payload(size, index)
            store.put(dataset, f"s{index}", data)
            accepted[(dataset, f"s{index}")] = data
    assert isinstance(caught.value, ResourceExhausted)
    assert f"this put's {stored:,} bytes would take" in str(caught.value)  # it said not
    assert len(accepted) == 3
    refused = f"s{len(accepted)}"
    assert not store.list("plain", prefix=refused)[0] and not store.list("enc", prefix=refused)[0]
    assert 0 < store.stats().backlog_bytes <= 3 * stored
    for (dataset, name), data in accepted.items():
        assert store.get(dataset, name).to_bytes() == data  # served from the hot tier
        assert store.evict(dataset, name) == 0  # the only copy is never evicted
        assert not store.stat(dataset, name).archived
    assert not store.drain(0.3)
    deadline = time.monotonic() + 10
    while store.mover.last_error is None:  # an upload has failed by now, or soon will
        assert time.monotonic() < deadline, "no upload failed"
        time.sleep(0.01)
    with pytest.raises(BacklogFull) as caught:
        store.put("plain", "more", payload(size))
    # Not only "retry when the mover has caught up": that it cannot, and where to look;
    # never the mover's last error itself, which names another put's shard (a writer
    # of one dataset learnt another's shard names from it).
    assert "the mover is failing" in str(caught.value)
    assert "tierstore stats" in str(caught.value)
    assert "the archive is down" not in str(caught.value)
    assert not re.search(r"(plain|enc)/s\d", str(caught.value)), caught.value

    archive.failing = False  # the archive is back
    assert store.drain(10)
    stats = store.stats()
    assert stats.journal_entries == 0 and stats.backlog_bytes == 0
    for (dataset, name), data in accepted.items():
        assert store.stat(dataset, name).archived
        assert archive_manifest_key(dataset, record_of(store, dataset, name).generation) in set(
            inner.list(limit=10_000).keys
        )
        assert store.evict(dataset, name) > 0
        read = store.get(dataset, name)
        assert read.source == "archive" and read.to_bytes() == data
    store.put("plain", "more", b"accepted again")


@pytest.mark.parametrize("staged", [False, True], ids=["one-transaction", "staged"])
def test_a_datasets_backlog_quota_leaves_the_rest_of_the_cap_to_the_others(
    open_store: StoreFactory, staged: bool
) -> None:
    # One team's ingest into a stopped archive filled the node's whole cap, and every
    # other team's puts failed BacklogFull with it: a backlog quota stops that dataset
    # at its share, and the others write on.
    archive = FaultyTier(MemoryTier())
    archive.failing = True
    size = 2 * FRAME + 1000
    stored = size + 3 * 16  # an encrypted shard of 3 frames
    datasets = {
        "ingest": DatasetSettings(encrypted=True, backlog_quota_bytes=2 * stored),
        "other": DatasetSettings(encrypted=True),
    }
    store = open_store(
        archive,
        datasets=datasets,
        backlog_cap_bytes=5 * stored,
        put_chunk_bytes=FRAME if staged else 64 << 20,
    )
    store.put("ingest", "a", payload(size, 1))
    store.put("ingest", "b", payload(size, 2))
    with pytest.raises(BacklogFull) as caught:
        store.put("ingest", "c", payload(size, 3))
    assert f"ingest's bytes waiting for the archive, {2 * stored:,}" in str(caught.value)
    assert f"its backlog quota ({2 * stored:,})" in str(caught.value)
    assert not store.list("ingest", prefix="c")[0]
    store.put("ingest", "a", payload(size, 4))  # an overwrite adds nothing: still goes in
    for index in range(3):  # the rest of the node's cap
        store.put("other", f"s{index}", payload(size, 10 + index))
    with pytest.raises(BacklogFull, match="past the cap"):  # the node's cap still holds
        store.put("other", "s3", payload(size, 13))

    # Changed at run time: a quota lifted takes effect with the next put.
    store.update_dataset("ingest", backlog_quota_bytes=0)
    assert store.get_dataset("ingest").backlog_quota_bytes == 0
    with pytest.raises(BacklogFull, match="past the cap"):
        store.put("ingest", "c", payload(size, 3))
    archive.failing = False
    assert store.drain(10)
    store.update_dataset("ingest", backlog_quota_bytes=stored // 2)
    store.put("ingest", "c", payload(size, 3))  # one put always goes in when none wait
    assert store.get("ingest", "c").to_bytes() == payload(size, 3)
    assert store.get("ingest", "a").to_bytes() == payload(size, 4)


def test_overwritten_and_deleted_puts_leave_the_backlog(open_store: StoreFactory) -> None:
    # During an archive outage every overwrite of one shard added its bytes to the
    # backlog, though the generations it replaced will never be uploaded: a node
    # refused puts (BacklogFull) with one shard's worth waiting.
    archive = FaultyTier(MemoryTier())
    archive.failing = True
    size = 2 * FRAME + 1000
    store = open_store(archive, datasets=PLAIN, backlog_cap_bytes=4 * size)
    store.put("plain", "again", payload(size, 0))
    stored = store.stats().hot_bytes  # one shard, as stored
    assert store.stats().backlog_bytes == stored
    for index in range(1, 10):
        store.put("plain", "again", payload(size, index))
    assert store.stats().backlog_bytes == stored
    store.put("plain", "gone", payload(size))
    store.delete("plain", "gone")
    assert store.stats().backlog_bytes == stored
    archive.failing = False
    assert store.drain(10)
    assert store.stats().backlog_bytes == 0
    assert store.get("plain", "again").to_bytes() == payload(size, 9)
    store.put("plain", "again", payload(size, 10))  # archived: its replacement counts
    assert store.stats().backlog_bytes in (0, stored)  # (0 once the mover took it)
    assert store.drain(10) and store.stats().backlog_bytes == 0


def test_each_datasets_backlog_and_the_oldest_entrys_wait_survive_a_restart(
    open_store: StoreFactory,
) -> None:
    # Only the node-wide backlog was counted: which dataset waited for the archive, and
    # since when, was known nowhere.
    archive = FaultyTier(MemoryTier())
    archive.failing = True
    store = open_store(archive, datasets=PLAIN)
    store.put("plain", "a", payload(2 * FRAME + 7, 1))
    store.put("plain", "b", payload(FRAME, 2))
    store.put("enc", "c", payload(3 * FRAME, 3))
    store.put("plain", "b", payload(FRAME + 9, 4))  # the upload it replaces is forgone
    store.put("enc", "gone", payload(100))
    store.delete("enc", "gone")

    def backlog(dataset: str) -> tuple[int, int]:
        return backlog_of(store, dataset)  # the store open now

    def expected(dataset: str) -> tuple[int, int]:
        usage = store.dataset_usage(dataset)  # all hot: its stored bytes, as counted
        return usage.shards, usage.hot_bytes

    assert backlog("plain") == expected("plain") and backlog("plain")[0] == 2
    assert backlog("enc") == expected("enc") and backlog("enc")[0] == 1
    assert store.stats().backlog_bytes == backlog("plain")[1] + backlog("enc")[1]
    wait_until(lambda: store.stats().oldest_journal_age_s >= 1.0, "the oldest entry to age")
    waited = store.stats().oldest_journal_age_s
    store.close()

    # A restart keeps both: the commit times are in the hot tier.
    store = open_store(archive, data_dir=store.settings.data_dir)
    assert store.stats().oldest_journal_age_s >= waited
    assert backlog("plain") == expected("plain") and backlog("enc") == expected("enc")
    # A hot tier journaled by a release that kept neither: counted once on opening.
    forget_backlog_and_commit_times(store, b"backlog_by_dataset")
    store.close()
    store = open_store(archive, data_dir=store.settings.data_dir)
    assert backlog("plain") == expected("plain") and backlog("enc") == expected("enc")
    assert store.stats().oldest_journal_age_s < waited  # counted from the opening
    # A dataset deleted with its shards takes its backlog along, and a namesake starts
    # with none.
    store.delete_dataset("enc", force=True)
    store.create_dataset("enc", PLAIN["enc"])
    assert backlog("enc") == (0, 0) and backlog("plain") == expected("plain")

    archive.failing = False
    assert store.drain(10)
    assert backlog("plain") == backlog("enc") == (0, 0)
    assert store.stats().oldest_journal_age_s == 0.0


def _upload_ahead_of_its_turn(store: Store) -> None:
    """Have ``plain/x``'s current generation uploaded ahead of its turn, by its
    overwritten generation's supersede entry: its own upload entry stays on the journal."""
    store.put("plain", "x", payload(FRAME, 1))
    assert store.mover.drain_once()
    store.put("plain", "x", payload(FRAME, 2))
    store.put("plain", "x", payload(FRAME + 5, 3))  # the upload of 2 is forgone
    with store._env.read() as txn:
        ops = store._catalog.journal_entries(txn)
    supersede = next(seq for seq, op in ops if op.op == "supersede")
    for seq, _ in ops:
        if seq <= supersede:
            assert store.mover.run_entry(seq)
    assert store.stat("plain", "x").archived


def backlog_of(store: Store, dataset: str) -> tuple[int, int]:
    """``dataset``'s uploads waiting for the archive, and their stored bytes."""
    usage = store.dataset_usage(dataset)
    return usage.backlog_shards, usage.backlog_bytes


def assert_nothing_waits(store: Store, dataset: str = "plain") -> None:
    """Neither ``dataset`` nor the node counts an upload waiting for the archive."""
    assert backlog_of(store, dataset) == (0, 0)
    assert store.stats().backlog_bytes == 0


def assert_one_shard_waits(store: Store, dataset: str = "plain") -> None:
    """``dataset``, the node's only one with hot bytes, has one upload waiting for
    the archive: all its hot bytes."""
    hot_bytes = store.dataset_usage(dataset).hot_bytes
    assert backlog_of(store, dataset) == (1, hot_bytes)
    assert store.stats().backlog_bytes == hot_bytes


def test_an_upload_journaled_again_while_its_first_is_pending_is_counted_once(
    open_store: StoreFactory,
) -> None:
    # A shard uploaded ahead of its turn (its overwritten generation's supersede entry
    # ran first) and then journaled again (--archive-lost) had two uploads pending:
    # its dataset's backlog was counted up twice and down once, for good.
    store = open_store(MemoryTier(), datasets=PLAIN, start_mover=False)
    _upload_ahead_of_its_turn(store)  # its upload is pending
    assert store.dataset_usage("plain").backlog_shards == 0  # but its bytes are archived
    assert store.archive_again().uploads == 1
    assert_one_shard_waits(store)
    assert store.mover.drain_once()
    assert_nothing_waits(store)


def test_a_shard_uploaded_ahead_of_its_turn_leaves_the_backlog_then(
    open_store: StoreFactory,
) -> None:
    # Its own upload entry stayed counted: deleted (being archived, its upload was not
    # forgone), a dataset made again under its name showed a shard waiting for the
    # archive, until the mover passed the old entry (never while the archive was down).
    store = open_store(MemoryTier(), datasets=PLAIN, start_mover=False)
    _upload_ahead_of_its_turn(store)
    assert_nothing_waits(store)
    store.delete_dataset("plain", force=True)
    store.create_dataset("plain")
    assert_nothing_waits(store)


def test_an_overwrite_of_a_shard_uploaded_ahead_of_its_turn_counts_its_own_upload(
    open_store: StoreFactory,
) -> None:
    store = open_store(MemoryTier(), datasets=PLAIN, start_mover=False)
    _upload_ahead_of_its_turn(store)
    store.put("plain", "x", payload(3 * FRAME, 4))
    assert_one_shard_waits(store)
    assert store.mover.drain_once()
    assert_nothing_waits(store)


def test_entries_an_older_release_journaled_still_show_the_oldest_wait(
    open_store: StoreFactory,
) -> None:
    # Entries journaled by a release that kept no commit time (a downgrade after the
    # upgrade) made stats say the oldest had waited 0 s, "the journal is empty", while
    # it was not; the older release counted none of their backlog either.
    archive = FaultyTier(MemoryTier())
    archive.failing = True
    store = open_store(archive, datasets=PLAIN)
    store.put("plain", "a", payload(FRAME, 1))
    store.put("enc", "b", payload(2 * FRAME, 2))
    forget_backlog_and_commit_times(store)
    store.close()
    store = open_store(archive, data_dir=store.settings.data_dir)
    assert store.stats().journal_entries > 0
    wait_until(lambda: store.stats().oldest_journal_age_s > 0.0, "a wait counted from opening")
    for dataset in PLAIN:
        usage = store.dataset_usage(dataset)
        assert (usage.backlog_shards, usage.backlog_bytes) == (usage.shards, usage.hot_bytes)
    archive.failing = False
    assert store.drain(10) and store.stats().oldest_journal_age_s == 0.0


def test_entries_an_older_release_ran_leave_no_commit_time_or_index_behind(
    open_store: StoreFactory,
) -> None:
    # A release that kept neither removed the entries it ran, not their commit times
    # nor their uploads' index: each stayed in the catalog for good.
    archive = FaultyTier(MemoryTier())
    archive.failing = True
    store = open_store(archive, datasets=PLAIN)
    for name in "abc":
        store.put("plain", name, payload(FRAME, ord(name)))
    with store._env.write() as txn:  # the older release runs both datasets' and a's
        cursor = txn.cursor(db=store._env.db("journal"))
        for _ in range(3):
            assert cursor.first() and cursor.delete()
    archive.failing = False
    assert store.drain(10)
    assert meta_keys(store, b"journaled\x00") == meta_keys(store, b"upload\x00") == []
    # And on opening a hot tier whose journal the older release emptied.
    archive.failing = True
    store.put("plain", "d", payload(FRAME, 4))
    assert meta_keys(store, b"journaled\x00") and meta_keys(store, b"upload\x00")
    with store._env.write() as txn:
        txn.drop(store._env.db("journal"), delete=False)
    store.close()
    store = open_store(archive, data_dir=store.settings.data_dir)
    assert meta_keys(store, b"journaled\x00") == meta_keys(store, b"upload\x00") == []
    assert store.dataset_usage("plain").backlog_shards == 0
    assert store.stats().backlog_bytes == 0


def test_restart_resumes_the_journal(open_store: StoreFactory) -> None:
    inner = MemoryTier()
    archive = FaultyTier(inner)
    archive.failing = True
    store = open_store(archive, datasets=PLAIN)
    contents = {("plain", "a"): payload(3 * FRAME, 1), ("enc", "b"): payload(FRAME + 5, 2)}
    for (dataset, name), data in contents.items():
        store.put(dataset, name, data)
    store.put("plain", "short-lived", b"deleted before it reached the archive")
    store.delete("plain", "short-lived")
    pending = store.stats().journal_entries
    assert pending >= 5  # two datasets, three uploads, a delete
    store.close()

    archive.failing = False
    store = open_store(archive, data_dir=store.settings.data_dir)
    assert store.drain(10)
    assert store.stats().backlog_bytes == 0
    keys = set(inner.list(limit=10_000).keys)
    assert {"plain/_dataset.json", "enc/_dataset.json"} <= keys
    assert len([k for k in keys if k.endswith(".frames")]) == 2  # not the deleted shard
    for (dataset, name), data in contents.items():
        assert store.stat(dataset, name).archived
        stored = archived_bytes(inner, store, dataset, name)
        assert stored is not None and len(stored) > len(data)
        store.evict(dataset, name)
        assert store.get(dataset, name).to_bytes() == data


# Access statistics.


@pytest.mark.parametrize("dataset", ["plain", "enc"])
def test_reads_are_counted(store: Store, dataset: str) -> None:
    store.put(dataset, "s", payload(2 * FRAME, 1))
    assert store.stat(dataset, "s").access_count == 0
    assert store.stat(dataset, "s").last_access == 0.0
    last = 0.0
    for count in range(1, 6):
        read = store.get(dataset, "s", byte_range=(count, 10))
        assert read.nbytes == 10
        info = store.stat(dataset, "s")
        assert info.access_count == count
        assert info.last_access >= last > 0 or count == 1
        last = info.last_access
    store.mover.flush_access()
    assert store.stat(dataset, "s").access_count == 5  # moved to the catalog, not lost
    store.get(dataset, "s")
    assert store.stat(dataset, "s").access_count == 6
    assert store.drain(10)
    store.evict(dataset, "s")
    store.get(dataset, "s")  # a cold read counts too
    assert store.stat(dataset, "s").access_count == 7
    store.put(dataset, "s", b"new generation")
    assert store.stat(dataset, "s").access_count == 0  # counts belong to a generation
    store.mover.flush_access()
    assert store.stat(dataset, "s").access_count == 0


def test_counts_survive_a_restart(open_store: StoreFactory) -> None:
    store = open_store(datasets=DATASETS, access_flush_interval_s=3600)
    store.put("plain", "s", b"x")
    for _ in range(4):
        store.get("plain", "s")
    store.close()
    store = open_store(data_dir=store.settings.data_dir)
    assert store.stat("plain", "s").access_count == 4


@pytest.mark.parametrize("dataset", ["plain", "enc"])
def test_a_frame_damaged_before_upload_is_never_archived(
    open_store: StoreFactory, dataset: str
) -> None:
    inner = MemoryTier()
    archive = FaultyTier(inner)
    archive.failing = True  # hold uploads back while the frame is damaged
    store = open_store(archive, datasets=PLAIN)
    store.put(dataset, "damaged", payload(2 * FRAME + 10, 1))
    store.put(dataset, "healthy", payload(FRAME, 2))
    record = record_of(store, dataset, "damaged")
    original = hot_frames(store, dataset, "damaged")[1]
    assert original is not None
    put_hot_frame(store, record.generation, 1, flip(original, 5))
    archive.failing = False
    assert store.drain(10)  # the damaged entry does not stall the journal
    assert inner.get(archive_frames_key(dataset, record.generation)) is None
    assert inner.get(archive_manifest_key(dataset, record.generation)) is None
    assert not store.stat(dataset, "damaged").archived
    assert [event.split(":")[0] for event in store.stats().data_loss] == [
        f"{dataset}/damaged@{record.generation}"
    ]
    assert store.stat(dataset, "healthy").archived
    with pytest.raises(IntegrityError):
        store.get(dataset, "damaged")


@pytest.mark.parametrize("dataset", ["plain", "enc"])
def test_a_shard_deleted_after_its_overwrite_was_damaged_does_not_come_back_with_a_rebuild(
    open_store: StoreFactory, dataset: str
) -> None:
    # The overwrite's hot copy was damaged before its upload, so the entry that deletes
    # the overwritten generation from the archive (once a newer one is there) was
    # dropped: that generation outlived the shard's delete, and a rebuild of the
    # catalog from the archive brought the deleted shard back, with the old bytes.
    inner = MemoryTier()
    store = open_store(inner, datasets=PLAIN, start_mover=False)
    store.put(dataset, "x", payload(2 * FRAME, 1))
    assert store.mover.drain_once()
    old = record_of(store, dataset, "x")
    store.put(dataset, "x", payload(2 * FRAME, 2))
    new = record_of(store, dataset, "x")
    damaged = hot_frames(store, dataset, "x")[0]
    assert damaged is not None
    put_hot_frame(store, new.generation, 0, flip(damaged, 5))
    store.mover.drain_once()
    assert store.mover.pending() == 0  # nothing stalls on the damaged generation
    assert [event.split(":")[0] for event in store.stats().data_loss] == [
        f"{dataset}/x@{new.generation}"
    ]
    # The old generation goes as it would have once the new one was archived: the
    # new one never will be, and a reader of the shard gets the data loss, not it.
    assert inner.get(archive_manifest_key(dataset, old.generation)) is None
    assert inner.get(archive_frames_key(dataset, old.generation)) is None
    with pytest.raises(IntegrityError):
        store.get(dataset, "x")
    store.delete(dataset, "x")
    store.mover.drain_once()
    rebuilt = open_store(inner)
    rebuilt.rebuild_from_archive()
    assert [info.name for info in rebuilt.list(dataset)[0]] == []


def test_a_damaged_record_with_an_upload_pending_does_not_stall_the_journal(
    open_store: StoreFactory,
) -> None:
    archive = FaultyTier(MemoryTier())
    archive.failing = True  # hold uploads back while the record is damaged
    store = open_store(archive, datasets=PLAIN)
    record = store.put("plain", "damaged", payload(FRAME, 1))
    store.put("plain", "healthy", payload(FRAME, 2))
    document = json.loads(record_of(store, "plain", "damaged").encode())
    put_raw_record(store, "plain", "damaged", json.dumps({**document, "rows": -1}).encode())
    archive.failing = False
    assert store.drain(10)  # the entry of the damaged record goes; later ones run
    assert store.stat("plain", "healthy").archived
    # Reported once, as a damaged record (not also as a dropped upload), until deleted.
    assert [event.split(":")[0] for event in store.stats().data_loss] == ["plain/damaged"]
    with pytest.raises(IntegrityError, match="unreadable shard record"):
        store.stat("plain", "damaged")
    store.delete("plain", "damaged")
    assert store.drain(10)
    assert store.stats().data_loss == ()
    assert archive.inner.list(f"plain/{record.generation:016x}").keys == ()


@pytest.mark.parametrize("dataset", ["wt", "wt-enc"])
def test_a_write_through_put_whose_frame_is_damaged_before_upload_is_not_acknowledged(
    open_store: StoreFactory, dataset: str
) -> None:
    archive = FaultyTier(MemoryTier())
    archive.hold_writes()  # the put's own upload waits while its frame is damaged
    store = open_store(archive, datasets=DATASETS, start_mover=False)
    outcome: list[object] = []
    putter = threading.Thread(
        target=lambda: outcome.append(_outcome(store.put, dataset, "s", payload(2 * FRAME, 3)))
    )
    putter.start()
    try:
        assert archive.write_waiting.wait(10)
        record = record_of(store, dataset, "s")
        original = hot_frames(store, dataset, "s")[0]
        assert original is not None
        put_hot_frame(store, record.generation, 0, flip(original, 7))
    finally:
        archive.release_writes()
        putter.join(10)
    assert not putter.is_alive()
    # Not "archived": the mover gave up on the damaged copy, and the put says so.
    assert isinstance(outcome[0], IntegrityError), outcome
    assert "not archived" in str(outcome[0])
    assert not store.stat(dataset, "s").archived
    assert [event.split(":")[0] for event in store.stats().data_loss] == [
        f"{dataset}/s@{record.generation}"
    ]


def _outcome(call: Callable[..., object], *args: object) -> object:
    """``call(*args)``, or the exception it raised."""
    try:
        return call(*args)
    except Exception as exc:
        return exc


def test_an_upload_whose_data_key_does_not_unwrap_is_kept_not_dropped(
    open_store: StoreFactory,
) -> None:
    # A wrong master key under the right id (a configuration mistake) must not turn
    # every pending encrypted upload into "data loss": the frames are intact.
    archive = FaultyTier(MemoryTier())
    archive.failing = True  # the upload waits while the key is swapped
    store = open_store(archive, datasets=DATASETS)
    data = payload(2 * FRAME, 4)
    store.put("enc", "s", data)
    # Restarted with another key under the same key id "k1" (a rotation to such a
    # keyring is refused: tests/engine/test_keys.py).
    store = open_store.reopen(store, archive, OTHER_KEYRING)
    archive.failing = False
    wait_until(
        lambda: "kept until" in (store.stats().mover_error or ""), "the mover to refuse the entry"
    )
    assert store.stats().data_loss == ()
    # The upload is kept (the datasets' settings objects, journaled before it, went).
    assert store.mover.pending() == 1 and not store.stat("enc", "s").archived
    store = open_store.reopen(store, archive, KEYRING)  # the right key: the upload goes through
    assert store.drain(10)
    assert store.stat("enc", "s").archived and store.stats().mover_error is None
    store.evict("enc", "s")
    assert store.get("enc", "s").to_bytes() == data


def test_an_overwrite_whose_newer_data_key_does_not_unwrap_keeps_the_archived_one(
    open_store: StoreFactory,
) -> None:
    # Generation 1 archived, then overwritten twice before the next upload: its
    # supersede entry uploads the newest first. With a wrong master key under the right
    # id, that upload's key did not unwrap, which was taken for a damaged generation,
    # and generation 1 was deleted: the archive held no copy of the shard at all.
    archive = MemoryTier()
    store = open_store(archive, datasets={"enc": DATASETS["enc"]}, start_mover=False)
    store.put("enc", "s", payload(FRAME, 1))
    assert store.mover.drain_once()
    first = store.stat("enc", "s").generation
    store.put("enc", "s", payload(FRAME, 2))
    data = payload(FRAME, 3)
    store.put("enc", "s", data)
    store = open_store.reopen(store, archive, OTHER_KEYRING, start_mover=False)
    for _ in range(3):
        store.mover.drain_once()
    assert archive.stat(archive_manifest_key("enc", first)) is not None
    assert "kept until" in (store.stats().mover_error or "")
    assert store.stats().data_loss == ()
    store = open_store.reopen(store, archive, KEYRING)  # the right key: the newest goes up
    assert store.drain(10)
    assert archive.stat(archive_manifest_key("enc", first)) is None
    store.evict("enc", "s")
    assert store.get("enc", "s").to_bytes() == data


def test_an_upload_overtaken_by_an_overwrite_is_not_data_loss(open_store: StoreFactory) -> None:
    inner = MemoryTier()
    stores: list[Store] = []

    class OverwriteDuringUpload(FaultyTier):
        """Overwrites the shard after the mover began uploading it, before it reads frames."""

        overwritten = False

        def put(self, key: str, value: object) -> None:  # type: ignore[override]
            if key.endswith(".frames") and not self.overwritten:
                self.overwritten = True
                stores[0].put("plain", "raced", payload(2 * FRAME, 8))
            super().put(key, value)  # type: ignore[arg-type]

    archive = OverwriteDuringUpload(inner)
    store = open_store(archive, datasets=PLAIN)
    stores.append(store)
    store.put("plain", "raced", payload(3 * FRAME, 7))
    assert store.drain(10)
    assert archive.overwritten
    assert store.stats().data_loss == ()
    assert store.get("plain", "raced").to_bytes() == payload(2 * FRAME, 8)
    assert store.stat("plain", "raced").archived


def test_a_shard_goes_to_the_archive_with_its_length(open_store: StoreFactory) -> None:
    # The S3 tier sizes every part of an upload by the object's length (some stores
    # refuse parts of two sizes): the mover knows it, and says so.
    sent: list[tuple[int, int]] = []  # each frames object's declared and actual length

    class Sizes(FaultyTier):
        def put(self, key: str, value: object) -> None:  # type: ignore[override]
            if key.endswith(".frames"):
                assert isinstance(value, SizedStream)
                chunks = [bytes(chunk) for chunk in value]
                sent.append((value.size, sum(map(len, chunks))))
                value = chunks
            super().put(key, value)  # type: ignore[arg-type]

    archive = Sizes(MemoryTier())
    store = open_store(archive, datasets=PLAIN)
    store.put("plain", "s", payload(3 * FRAME + 5, 3))
    assert store.drain(10)
    ((declared, held),) = sent
    assert declared == held > 3 * FRAME


def test_stop_waits_once_for_all_its_threads_not_once_per_thread(
    open_store: StoreFactory,
) -> None:
    # Each thread got the whole timeout in turn: with an archive that hangs, a node's
    # stop took 10 s per stuck thread, past a supervisor's grace period.
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets={"d": DatasetSettings()})
    store.put("d", "cold", payload(2 * FRAME, 1))
    assert store.drain(10)
    store.evict("d", "cold")
    archive.hold_writes()
    archive.hold_reads(archive_frames_key("d", store.stat("d", "cold").generation))
    store.put("d", "stuck", payload(FRAME, 2))  # its upload hangs on the journal thread
    assert archive.write_waiting.wait(10)
    store.prefetch("d", ["cold"])  # its fetch hangs on a promotion thread
    assert archive.read_waiting.wait(10)
    started = time.monotonic()
    store.mover.stop(timeout=2.0)
    took = time.monotonic() - started
    archive.release_reads()
    archive.release_writes()
    assert took < 3.5, took  # one 2 s wait, not 2 s for each stuck thread


def test_a_hold_shows_at_once_and_goes_with_it(open_store: StoreFactory) -> None:
    # A node whose archive was unreachable at start held its uploads, yet stats and
    # /metrics said nothing was failing until a put queued an upload.
    store = open_store(MemoryTier(), datasets=PLAIN)
    store.mover.hold_archive("keys not checked yet")
    assert store.stats().mover_error == "keys not checked yet"
    store.mover.hold_archive(None)
    assert store.stats().mover_error is None
