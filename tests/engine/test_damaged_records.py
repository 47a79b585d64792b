"""A shard record damaged on disk: the node keeps opening and serving the rest, reports
it, and deleting the shard drops it with its hot frames."""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from collections.abc import Iterable

import pytest

from tests.engine.backdoor import catalog_hot_bytes, hot_frames, put_raw_record, record_of
from tests.engine.faulty_tier import FaultyTier, FramesDeleteFailsOnce
from tests.engine.stores import DATASETS, FRAME, StoreFactory, payload, wait_until
from tests.engine.test_mover import assert_nothing_waits
from tierstore.engine import unreadable
from tierstore.engine.records import (
    JournalOp,
    ShardRecord,
    archive_frames_key,
    archive_manifest_key,
    catalog_key,
)
from tierstore.engine.store import Store
from tierstore.errors import (
    ArchiveUnavailable,
    FailedPrecondition,
    IntegrityError,
    NotArchivedYet,
    QuotaExceeded,
)
from tierstore.server.metrics import _StoreCollector
from tierstore.tiers.base import BytesLike
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, Durability

GARBAGE = b'{"v":1,"dataset":"plain","na'  # a record cut short


def archive_keys(archive: MemoryTier, prefix: str) -> set[str]:
    return set(archive.list(prefix, limit=10_000).keys)


def filled(open_store: StoreFactory, archive: MemoryTier) -> Store:
    """A store whose ``plain`` dataset holds a, b and c, and ``enc`` holds e, all archived."""
    store = open_store(archive, datasets=DATASETS)
    for index, name in enumerate("abc"):
        store.put("plain", name, payload(2 * FRAME + 10, index))
    store.put("enc", "e", payload(FRAME, 9))
    assert store.drain(10)
    return store


def test_a_damaged_record_does_not_stop_the_store(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = filled(open_store, archive)
    put_raw_record(store, "plain", "a", GARBAGE)
    store = open_store.reopen(store, archive)  # seeding the policies walks every record

    assert [info.name for info in store.list("plain")[0]] == ["b", "c"]
    assert store.dataset_usage("plain").shards == 2
    assert [entry.split(":")[0] for entry in store.stats().data_loss] == ["plain/a"]
    gauges = {family.name: family.samples for family in _StoreCollector(store).collect()}
    assert [sample.value for sample in gauges["tierstore_data_loss_reports"]] == [1]
    for call in (store.stat, store.get):
        with pytest.raises(IntegrityError, match=r"plain/a: unreadable shard record.*Delete"):
            call("plain", "a")
    with pytest.raises(IntegrityError, match="plain/a"):
        store.put("plain", "a", b"new")  # the old generation's frames could not be found
    assert store.prefetch("plain", ["a", "b"]) == 0  # a hint: the damaged name is passed by
    assert store.get("plain", "b").to_bytes() == payload(2 * FRAME + 10, 1)
    assert store.get("enc", "e").to_bytes() == payload(FRAME, 9)
    store.put("plain", "d", b"still writable")
    assert store.drain(10)


def test_eviction_passes_a_damaged_record_by(open_store: StoreFactory, archive: MemoryTier) -> None:
    store = filled(open_store, archive)
    put_raw_record(store, "plain", "a", GARBAGE)  # damaged while the policy holds it hot
    store.update_dataset("plain", hot_quota_bytes=1)  # the mover evicts as far as it can
    wait_until(
        lambda: not store.stat("plain", "b").hot and not store.stat("plain", "c").hot,
        "eviction of the readable shards",
    )
    assert store.get("plain", "c").to_bytes() == payload(2 * FRAME + 10, 2)


def test_deleting_a_damaged_shard_drops_its_frames_and_archive_objects(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = filled(open_store, archive)
    generation = f"{record_of(store, 'plain', 'a').generation:016x}"
    size_of_a = sum(len(frame or b"") for frame in hot_frames(store, "plain", "a"))
    kept_frames = {name: hot_frames(store, "plain", name) for name in "bc"}
    hot_before, _ = catalog_hot_bytes(store)
    objects_of_a = {key for key in archive_keys(archive, "plain/") if generation in key}
    assert len(objects_of_a) == 2  # its frames and its manifest
    put_raw_record(store, "plain", "a", GARBAGE)

    store.delete("plain", "a")

    counter, total = catalog_hot_bytes(store)
    assert counter == total == hot_before - size_of_a
    assert {name: hot_frames(store, "plain", name) for name in "bc"} == kept_frames
    assert store.stats().data_loss == ()
    assert store.drain(10)
    assert not archive_keys(archive, "plain/") & objects_of_a
    assert [info.name for info in store.list("plain")[0]] == ["b", "c"]
    store = open_store.reopen(store, archive)
    store.put("plain", "a", b"again")
    assert store.get("plain", "a").to_bytes() == b"again"
    assert store.get("enc", "e").to_bytes() == payload(FRAME, 9)


def test_with_two_damaged_records_each_delete_purges_only_its_own_archive_objects(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = filled(open_store, archive)
    size_of = {name: sum(len(f or b"") for f in hot_frames(store, "plain", name)) for name in "ab"}
    generation = {name: f"{record_of(store, 'plain', name).generation:016x}" for name in "ab"}
    hot_before, _ = catalog_hot_bytes(store)
    objects = archive_keys(archive, "plain/")
    put_raw_record(store, "plain", "a", GARBAGE)
    put_raw_record(store, "plain", "b", GARBAGE)

    store.delete("plain", "a")

    # Which frames were whose cannot be told: both unreadable shards' frames go.
    counter, total = catalog_hot_bytes(store)
    assert counter == total == hot_before - size_of["a"] - size_of["b"]
    assert [entry.split(":")[0] for entry in store.stats().data_loss] == ["plain/b"]
    assert store.drain(10)
    # The archive is told by the manifests, which name their shard: b's copy stays.
    assert archive_keys(archive, "plain/") == {k for k in objects if generation["a"] not in k}
    store.delete("plain", "b")
    assert store.drain(10)
    assert store.stats().data_loss == ()
    assert archive_keys(archive, "plain/") == {
        k for k in objects if not {*generation.values()} & {k[6:22]}
    }
    assert store.get("plain", "c").to_bytes() == payload(2 * FRAME + 10, 2)


def test_a_record_that_decodes_to_wrong_values_keeps_its_frames_and_archive_copy(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = filled(open_store, archive)
    raw = record_of(store, "plain", "b").encode()
    put_raw_record(store, "plain", "b", raw.replace(b'"hot"', b'"hou"'))  # decodes: hot=False
    frames_of_b = hot_frames(store, "plain", "b")
    put_raw_record(store, "plain", "a", GARBAGE)
    store.delete("plain", "a")
    assert store.drain(10)
    assert hot_frames(store, "plain", "b") == frames_of_b  # still claimed by its record
    assert store.get("plain", "b").to_bytes() == payload(2 * FRAME + 10, 1)


def test_the_purge_takes_older_generations_of_the_name_only(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = filled(open_store, archive)
    old = record_of(store, "plain", "a").generation
    leftovers = {key: archive.get(key) for key in archive_keys(archive, f"plain/{old:016x}")}
    bound = store._writer.next_generation()
    store.put("plain", "a", b"second life")  # a generation from after the bound
    assert store.drain(10)
    for key, value in leftovers.items():  # the old generation, as a lost delete leaves it
        archive.put(key, bytes(value or b""))
    others = archive_keys(archive, "plain/") - set(leftovers)

    key = catalog_key("plain", "a")
    store.mover._purge(JournalOp("purge", "plain", key[len(b"plain\x00") :].hex(), bound))

    assert archive_keys(archive, "plain/") == others  # the old generation only went
    store.evict("plain", "a")
    assert store.get("plain", "a").to_bytes() == b"second life"  # from the archive


def test_deleting_a_damaged_cold_shard_frees_nothing_else_and_purges_its_archive_copy(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = filled(open_store, archive)
    generation = f"{record_of(store, 'plain', 'a').generation:016x}"
    assert store.evict("plain", "a") > 0
    hot_before, _ = catalog_hot_bytes(store)
    put_raw_record(store, "plain", "a", GARBAGE)
    store.delete("plain", "a")
    assert catalog_hot_bytes(store) == (hot_before, hot_before)
    assert [info.name for info in store.list("plain")[0]] == ["b", "c"]
    assert store.drain(10)
    assert not {key for key in archive_keys(archive, "plain/") if generation in key}


def test_a_dataset_with_damaged_records_is_deleted_whole(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = filled(open_store, archive)
    put_raw_record(store, "plain", "a", GARBAGE)
    with pytest.raises(FailedPrecondition, match="holds 3 shards"):
        store.delete_dataset("plain")
    for name in "bc":
        store.delete("plain", name)
    with pytest.raises(FailedPrecondition, match="holds 1 shard;"):
        store.delete_dataset("plain")  # only the damaged one is left, and it counts
    store.delete_dataset("plain", force=True)
    store.create_dataset("plain")
    assert store.list("plain") == ([], None)
    assert store.stats().data_loss == ()
    counter, total = catalog_hot_bytes(store)
    assert counter == total  # only enc/e is hot
    assert store.get("enc", "e").to_bytes() == payload(FRAME, 9)


def test_a_damaged_shard_deleted_before_its_upload_leaves_the_backlog(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # Its pending upload was not forgone: a dataset made again under its name showed it
    # waiting for the archive until the mover passed the entry (never while it was down).
    faulty = FaultyTier(archive)
    faulty.failing = True
    store = open_store(faulty, datasets=DATASETS)
    store.put("plain", "a", payload(2 * FRAME, 1))
    assert store.dataset_usage("plain").backlog_shards == 1
    put_raw_record(store, "plain", "a", GARBAGE)
    store.delete_dataset("plain", force=True)
    store.create_dataset("plain")
    assert_nothing_waits(store)


def test_a_dataset_deleted_with_a_damaged_shard_does_not_bring_it_back_in_a_rebuild(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = filled(open_store, archive)
    assert store.evict("plain", "a") > 0  # cold: no hot frame names its generation
    put_raw_record(store, "plain", "a", GARBAGE)
    store.delete_dataset("plain", force=True)
    store.create_dataset("plain")  # the name, for someone else
    store.put("plain", "new", b"second tenant")
    assert store.drain(10)
    rebuilt = open_store(archive)
    rebuilt.rebuild_from_archive()
    assert [info.name for info in rebuilt.list("plain")[0]] == ["new"]


def test_a_write_through_delete_of_a_damaged_shard_returns_once_the_archive_purged_it(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # It returned at once, the archive down, as if done: a rebuild then brought the
    # deleted shard back. A readable shard's delete raises NotArchivedYet there.
    faulty = FaultyTier(archive)
    store = open_store(
        faulty, datasets={"wt": DatasetSettings(durability=Durability.WRITE_THROUGH)}
    )
    store.put("wt", "bad", payload(FRAME, 1))
    store.put("wt", "kept", payload(FRAME, 2))
    put_raw_record(store, "wt", "bad", GARBAGE)
    faulty.failing = True
    with pytest.raises(NotArchivedYet, match="wt/bad is deleted here"):
        store.delete("wt", "bad")
    store.close()  # the node is lost before the mover gets through
    faulty.failing = False
    rebuilt = open_store(archive)
    rebuilt.rebuild_from_archive()
    assert [info.name for info in rebuilt.list("wt")[0]] == ["bad", "kept"]  # not acknowledged
    # With the archive up, the delete returns once the archive no longer holds it.
    store = open_store(
        faulty, datasets={"wt": DatasetSettings(durability=Durability.WRITE_THROUGH)}
    )
    store.put("wt", "bad", payload(FRAME, 1))
    store.put("wt", "kept", payload(FRAME, 2))
    put_raw_record(store, "wt", "bad", GARBAGE)
    store.delete("wt", "bad")
    store.close()
    rebuilt = open_store(archive)
    rebuilt.rebuild_from_archive()
    assert [info.name for info in rebuilt.list("wt")[0]] == ["kept"]


def test_a_put_is_not_failed_by_another_shards_damaged_record(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    held = FaultyTier(archive)
    store = open_store(
        held, datasets={"q": DatasetSettings(hot_quota_bytes=10_000)}, quota_wait_s=0.5
    )
    held.hold_writes()  # uploads wait: the quota's room depends on them
    try:
        store.put("q", "a", payload(3000, 1))
        assert held.write_waiting.wait(10)
        store.put("q", "c", payload(6000, 2))
        put_raw_record(store, "q", "a", GARBAGE)
        with pytest.raises(QuotaExceeded):  # not IntegrityError about q/a
            store.put("q", "b", payload(6000, 3))
    finally:
        held.release_writes()


@pytest.mark.parametrize("bad_name", [5, None, "\udc80"])
@pytest.mark.parametrize("dataset", ["plain", "wt"])
def test_a_manifest_that_names_no_shard_neither_stalls_the_purge_nor_puts(
    open_store: StoreFactory, archive: MemoryTier, bad_name: object, dataset: str
) -> None:
    store = open_store(archive, datasets=DATASETS)
    store.put(dataset, "a", payload(FRAME, 1))
    store.put(dataset, "b", payload(FRAME, 2))
    assert store.drain(10)
    key = archive_manifest_key(dataset, record_of(store, dataset, "b").generation)
    document = json.loads(record_of(store, dataset, "b").encode(manifest=True))
    body = json.dumps({**document, "name": bad_name}).encode()
    archive.put(key, store._sealers.seal_object(key, body))  # sealed right: it is read
    put_raw_record(store, dataset, "a", GARBAGE)
    store.delete(dataset, "a")
    store.put(dataset, "later", b"x")  # behind the purge (write-through: runs it first)
    assert store.drain(10), store.mover.last_error
    assert store.stat(dataset, "later").archived
    assert key in archive_keys(archive, f"{dataset}/")  # not believed, so left alone


@pytest.mark.parametrize(
    "damage",
    [
        b"\x01\x02\x03",
        struct.pack("<Qdd", 1, math.nan, 1.0),
        struct.pack("<Qdd", 1, 1e300, 1.0),  # a last read far ahead: the policy clock stuck
        struct.pack("<Qdd", 2**64 - 1, 1.0, 1.0),  # one more read would overflow the count
    ],
)
def test_a_damaged_access_record_costs_only_that_shards_read_counts(
    open_store: StoreFactory, archive: MemoryTier, damage: bytes
) -> None:
    store = filled(open_store, archive)
    for _ in range(2):
        store.get("plain", "b")
    store.mover.flush_access()
    with store._env.write() as txn:  # LMDB keeps no checksum: the bytes go bad on disk
        txn.put(catalog_key("plain", "b"), damage, db=store._env.db("access"))
    # Statistics only: listing, stat and opening the store again all carry on.
    assert [info.name for info in store.list("plain")[0]] == ["a", "b", "c"]
    assert store.stat("plain", "b").access_count == 0
    store.get("plain", "b")
    store = open_store.reopen(store, archive)  # the policies are seeded from the counts
    assert store.stat("plain", "b").access_count == 1  # flushed at close over the damage
    assert store.get("plain", "b").to_bytes() == payload(2 * FRAME + 10, 1)


def test_frame_digests_of_the_wrong_size_or_form_make_a_record_unreadable(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = filled(open_store, archive)
    record = record_of(store, "plain", "a")  # archived: three frames, three digests
    assert record.frame_digests is not None and len(record.frame_digests) == 3 * 32
    assert ShardRecord.decode(record.encode()) == record
    document = json.loads(record.encode())
    for digests, says in (
        (document["frame_digests"][:-4], "bytes of frame digests for 3 frames"),
        ("not base64!", "Non-base64|Incorrect padding|base64"),
        (7, "frame_digests must be base64 text"),
    ):
        with pytest.raises(IntegrityError, match=says):
            ShardRecord.decode(json.dumps(document | {"frame_digests": digests}).encode())
    del document["frame_digests"]  # a generation archived before digests were kept
    assert ShardRecord.decode(json.dumps(document).encode()).frame_digests is None


def test_a_purge_retried_after_a_failed_delete_leaves_no_orphaned_frames(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    flaky = FramesDeleteFailsOnce(archive)
    store = filled(open_store, archive)
    generation = f"{record_of(store, 'plain', 'a').generation:016x}"
    store = open_store.reopen(store, flaky)
    put_raw_record(store, "plain", "a", GARBAGE)

    store.delete("plain", "a")

    assert store.drain(10), store.mover.last_error
    assert flaky.failed == [f"plain/{generation}.frames"]  # the purge's delete failed once
    assert not {key for key in archive_keys(archive, "plain/") if generation in key}


class _ManifestsFail(FaultyTier):
    """An archive that takes frames objects but fails every manifest put while
    ``manifests_fail`` is set: an upload cut short between its two objects."""

    def __init__(self, inner: MemoryTier) -> None:
        super().__init__(inner)
        self.manifests_fail = True
        self.failed_manifests: list[str] = []

    def put(self, key: str, value: BytesLike | Iterable[BytesLike]) -> None:
        if key.endswith(".manifest") and self.manifests_fail:
            self.failed_manifests.append(key)
            raise ArchiveUnavailable(f"PUT {key}: the archive is down (test)")
        super().put(key, value)


def test_deleting_a_damaged_shard_whose_upload_was_cut_short_leaves_no_frames_object(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # The purge finds a generation by its manifest: frames uploaded without one yet were
    # left in the archive for good once the damaged shard was deleted.
    flaky = _ManifestsFail(archive)
    store = open_store(flaky, datasets=DATASETS)
    generation = store.put("plain", "a", payload(2 * FRAME, 1)).generation
    wait_until(lambda: len(flaky.failed_manifests) > 0, "an upload cut short")
    assert archive.get(archive_frames_key("plain", generation)) is not None
    put_raw_record(store, "plain", "a", GARBAGE)

    store.delete("plain", "a")
    flaky.manifests_fail = False

    assert store.drain(10), store.mover.last_error
    assert not {key for key in archive_keys(archive, "plain/") if f"{generation:016x}" in key}


def test_a_node_with_many_damaged_records_names_some_and_counts_them_all(
    open_store: StoreFactory,
    archive: MemoryTier,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Each was kept in memory, with its name and why, for as long as the node ran: a
    # dataset whose records had all become unreadable held millions of them.
    monkeypatch.setattr(unreadable, "NAMED_AT_MOST", 3)
    store = open_store(archive, datasets={"plain": DatasetSettings(), "other": DatasetSettings()})
    names = [f"s{i}" for i in range(6)]
    for name in names:
        store.put("plain", name, b"x")
    for name in ("o1", "o2"):
        store.put("other", name, b"y")
        put_raw_record(store, "other", name, GARBAGE)
    for name in names[:5]:
        put_raw_record(store, "plain", name, GARBAGE)
    # Seeding the policies walks every record. No mover: its journal pass, retrying the
    # damaged records' uploads, notes them as it meets them, so which one is named in
    # the room a delete below leaves would depend on when it ran.
    with caplog.at_level(logging.ERROR, logger="tierstore.engine.catalog"):
        store = open_store.reopen(store, archive, start_mover=False)
    # Those not named are logged a line a dataset (one a record: 20,000 damaged records
    # logged 20,000 lines at every start).
    logged = [record.getMessage() for record in caplog.records]
    assert [line for line in logged if line.startswith("4 catalog records of dataset plain")]
    assert not [line for line in logged if re.search("record plain/s[234] is unreadable", line)]

    def reported() -> tuple[list[str], dict[str, int], float]:
        stats = store.stats()
        gauges = {family.name: family.samples for family in _StoreCollector(store).collect()}
        (gauge,) = [sample.value for sample in gauges["tierstore_data_loss_reports"]]
        return [entry.split(":")[0] for entry in stats.data_loss], stats.data_loss_unnamed, gauge

    assert reported() == (["other/o1", "other/o2", "plain/s0"], {"plain": 4}, 7)
    for _ in range(3):  # met again and again: counted once
        for name in names[1:5]:
            with pytest.raises(IntegrityError):
                store.stat("plain", name)
        assert [info.name for info in store.list("plain")[0]] == ["s5"]
    assert reported() == (["other/o1", "other/o2", "plain/s0"], {"plain": 4}, 7)
    # The delete's walk of every record meets s1, one of those counted: named now, in
    # the room left.
    store.delete("plain", "s0")
    assert reported() == (["other/o1", "other/o2", "plain/s1"], {"plain": 3}, 6)
    store.delete("plain", "s4")  # one not named
    assert reported() == (["other/o1", "other/o2", "plain/s1"], {"plain": 2}, 5)
    store.delete_dataset("plain", force=True)
    assert reported() == (["other/o1", "other/o2"], {}, 2)


@pytest.mark.parametrize("named_at_most", [unreadable.NAMED_AT_MOST, 0])
def test_a_record_read_before_its_delete_is_not_reported_after_it(
    open_store: StoreFactory,
    archive: MemoryTier,
    monkeypatch: pytest.MonkeyPatch,
    named_at_most: int,
) -> None:
    # The mover's journal pass, retrying a damaged record's upload, read it in a snapshot
    # taken before the shard's delete committed and noted it once the delete had dropped
    # it: the deleted shard stayed in data_loss (named, or counted) until the next start.
    monkeypatch.setattr(unreadable, "NAMED_AT_MOST", named_at_most)
    store = filled(open_store, archive)
    put_raw_record(store, "plain", "a", GARBAGE)
    store = open_store.reopen(store, archive, start_mover=False)  # the opening walk notes it
    assert len(store._catalog.unreadable) == 1

    with store._env.read() as before_the_delete:
        store.delete("plain", "a")
        assert len(store._catalog.unreadable) == 0
        # What the mover's pass does with the snapshot it read the record in.
        assert store._catalog.readable_shard(before_the_delete, "plain", "a") is None

    stats = store.stats()
    assert (stats.data_loss, stats.data_loss_unnamed) == ((), {})
    assert len(store._catalog.unreadable) == 0


def test_a_record_made_again_after_its_delete_is_reported_once_damaged(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = filled(open_store, archive)
    put_raw_record(store, "plain", "a", GARBAGE)
    with pytest.raises(IntegrityError):
        store.stat("plain", "a")
    with store._env.read() as before_the_delete:
        store.delete("plain", "a")
        store.put("plain", "a", b"again")
        put_raw_record(store, "plain", "a", GARBAGE)
        assert store._catalog.readable_shard(before_the_delete, "plain", "a") is None
        with pytest.raises(IntegrityError):  # read since: the damaged record made again
            store.stat("plain", "a")

    assert [entry.split(":")[0] for entry in store.stats().data_loss] == ["plain/a"]
    store.delete("plain", "a")
    assert store.stats().data_loss == ()


def test_the_deletes_kept_against_older_reads_go_once_no_read_is_older(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # A node may delete a dataset of millions of damaged records at once: their keys are
    # kept only while a read older than the delete may still note them.
    store = filled(open_store, archive)
    for name in "abc":
        put_raw_record(store, "plain", name, GARBAGE)
    passes: list[int] = []
    after_pass = store.mover.after_pass

    def counted() -> None:
        after_pass()
        passes.append(store._catalog.unreadable.deletes_kept())

    store.mover.after_pass = counted
    with store._env.read():  # older than the deletes, as LMDB's reader table shows
        store.delete_dataset("plain", force=True)
        deleted_after = len(passes)
        store.mover.wake()
        wait_until(lambda: len(passes) > deleted_after, "a mover's pass after the delete")
        assert store._catalog.unreadable.deletes_kept() == 3  # kept by that pass
    store.mover.wake()
    wait_until(
        lambda: store._catalog.unreadable.deletes_kept() == 0, "the mover's pass letting them go"
    )
