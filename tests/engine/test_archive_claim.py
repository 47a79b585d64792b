"""A node's claim on its archive prefix (tierstore/engine/archiveclaim.py); the
deferred key check of a node that started with its archive down, which claims it
too (tierstore/cli/masterkeys.py); and a serving node's watch on it
(tierstore/cli/claimwatch.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import DATASETS, KEYRING, StoreFactory, payload, wait_until
from tierstore.cli.claimwatch import ClaimWatch
from tierstore.cli.masterkeys import DeferredKeyCheck, NodeKeys
from tierstore.engine.archiveclaim import CLAIM_KEY, UNREADABLE, ArchiveClaim
from tierstore.errors import FailedPrecondition
from tierstore.tiers.memory import MemoryTier


def claim_in(archive: MemoryTier) -> ArchiveClaim:
    raw = archive.get(CLAIM_KEY)
    assert raw is not None
    claim = ArchiveClaim.decode(raw)
    assert claim is not None
    return claim


def test_a_hot_tier_claims_its_archive_and_another_is_refused_it(
    open_store: StoreFactory,
) -> None:
    archive = MemoryTier()
    first = open_store(archive, datasets={"plain": DATASETS["plain"]})
    assert first.claim_archive() is None  # unclaimed before
    claim = claim_in(archive)
    assert claim.data_dir == str(first.settings.data_dir.resolve())
    first.put("plain", "s", payload(100))
    assert first.drain(10)

    second = open_store(archive)
    with pytest.raises(FailedPrecondition, match="belongs to another node") as refused:
        second.check_archive_claim()
    assert str(first.settings.data_dir.resolve()) in str(refused.value)
    with pytest.raises(FailedPrecondition, match="belongs to another node"):
        second.claim_archive()
    assert claim_in(archive) == claim  # nothing was changed

    # The same hot tier, opened again, is the same node; the claim is not a dataset
    # object for a new hot tier's check.
    again = open_store.reopen(first, archive)
    again.check_archive_claim()
    assert again.claim_archive() is None
    assert claim_in(archive).node == claim.node
    taken = second.claim_archive(take_over=True)
    assert taken is not None and taken.node == claim.node
    with pytest.raises(FailedPrecondition, match=str(second.settings.data_dir.resolve())):
        again.check_archive_claim()


def test_a_lost_hot_tier_is_told_the_claim_is_its_own_data_directory_s_most_likely(
    open_store: StoreFactory,
) -> None:
    # A review's hot/, linked into a tmpfs, was gone after a reboot: the start was told
    # of "another node's hot tier" (its own data directory, on its own host) and to
    # rebuild on "a new, empty data directory".
    archive = MemoryTier()
    first = open_store(archive)
    first.claim_archive()
    data_dir = first.settings.data_dir
    first.close()
    shutil.rmtree(data_dir / "hot")
    again = open_store(archive, data_dir=data_dir)
    with pytest.raises(FailedPrecondition) as refused:
        again.claim_archive()
    said = str(refused.value)
    assert "claimed by a hot tier at this data directory's path on a host of this" in said
    assert "was lost (or replaced), and no other node of this host name and path" in said
    assert "--rebuild-from-archive on this data directory" in said
    assert "belongs to another node's hot tier" not in said
    assert again.claim_archive(take_over=True) is not None  # what such a rebuild does


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps({"format": 2, "node": "from-the-future"}).encode(),
        b"\xff not json",
        b"[1, 2]",
        json.dumps({"format": 1, "node": ""}).encode(),
    ],
)
def test_a_claim_this_release_cannot_read_is_refused_unless_taken_over(
    open_store: StoreFactory, raw: bytes
) -> None:
    archive = MemoryTier()
    archive.put(CLAIM_KEY, raw)
    store = open_store(archive)
    with pytest.raises(FailedPrecondition, match="a claim this release cannot read"):
        store.check_archive_claim()
    assert store.claim_archive(take_over=True) is UNREADABLE  # what it took over
    assert claim_in(archive).data_dir == str(store.settings.data_dir.resolve())


def test_a_claim_with_odd_fields_still_names_its_node() -> None:
    raw = {"format": 1, "node": "n1", "claimed_at": 1e400, "added_later": True}
    claim = ArchiveClaim.decode(json.dumps(raw).encode())
    assert claim is not None and claim.node == "n1"
    assert "n1" in claim.describe() and "1970" in claim.describe()


def test_only_a_claim_is_no_object_for_a_new_hot_tier(open_store: StoreFactory) -> None:
    archive = MemoryTier()
    open_store(archive).claim_archive()
    assert not open_store(archive).archive_holds_objects()
    archive.put("plain/_dataset.json", b"{}")
    assert open_store(archive).archive_holds_objects()


def test_a_node_that_started_with_its_archive_down_holds_uploads_if_another_claimed_it(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets={"plain": DATASETS["plain"]})
    store.put("plain", "s", payload(10))
    assert store.drain(10)
    store.claim_archive()
    store = open_store.reopen(store, archive, start_mover=False)
    # While it was down, another hot tier was rebuilt on the archive and claimed it.
    open_store(archive).claim_archive(take_over=True)
    archive.failing = True
    waiting = DeferredKeyCheck(NodeKeys(KEYRING, tmp_path / "master.keys"), store, interval_s=0.05)
    store.start_background()
    waiting.start()
    try:
        store.put("plain", "t", payload(20))
        archive.failing = False
        wait_until(
            lambda: "belongs to another node" in (store.stats().mover_error or ""),
            "the deferred check to find the archive claimed",
        )
        assert store.stats().journal_entries > 0  # held: nothing uploaded
        assert archive.inner.get("plain/_dataset.json") is not None
    finally:
        waiting.stop()


def test_a_serving_node_whose_archive_was_taken_over_holds_its_journal(
    open_store: StoreFactory,
) -> None:
    archive = MemoryTier()
    store = open_store(archive, datasets={"plain": DATASETS["plain"]})
    store.claim_archive()
    store.put("plain", "s", payload(10))
    assert store.drain(10)
    watch = ClaimWatch(store, interval_s=0.05)
    watch.start()
    try:
        # Thought lost, the node was only cut off: its hot tier is rebuilt elsewhere.
        open_store(archive).claim_archive(take_over=True)
        wait_until(
            lambda: "took this node's archive over" in (store.stats().mover_error or ""),
            "the watch to find the archive taken over",
        )
        keys_before = set(archive.list(limit=1000).keys)
        store.put("plain", "s", payload(20))  # an overwrite: its upload and delete wait
        assert not store.drain(0.5)
        assert store.stats().journal_entries > 0
        assert set(archive.list(limit=1000).keys) == keys_before
    finally:
        watch.stop()


def test_uploads_left_behind_are_not_aborted_while_the_archive_is_held(
    open_store: StoreFactory,
) -> None:
    # Held for an archive another node holds (or not checked yet), the uploads under
    # the prefix may be that node's, in flight: a node whose start found the archive
    # down aborted them once it answered, held or not.
    store = open_store(start_mover=False)
    aborted: list[bool] = []
    store.mover.abort_left_behind_later(lambda: aborted.append(True))
    store.mover.hold_archive("another node took this node's archive over")
    store.mover._abort_left_behind()  # as the journal thread calls it, the journal empty
    assert aborted == []
    store.mover.hold_archive(None)
    store.mover._abort_left_behind()
    assert aborted == [True]
