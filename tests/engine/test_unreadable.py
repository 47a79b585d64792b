"""The account of unreadable shard records (tierstore/engine/unreadable.py): a note read
before the delete that forgot its key is ignored, and the deletes kept for that are let go
once no read can be older than them."""

from __future__ import annotations

from tierstore.engine.unreadable import UnreadableRecords

KEY = b"plain\x00a"


class Snapshots:
    """The oldest snapshot a read may still note from, as the test sets it."""

    def __init__(self) -> None:
        self.oldest = 0
        self.asked = 0

    def __call__(self) -> int:
        self.asked += 1
        return self.oldest


def test_a_note_read_before_the_delete_of_its_key_is_ignored() -> None:
    records = UnreadableRecords(Snapshots())
    assert records.note(KEY, "plain", "why", seen_in=3)
    records.forget(KEY, "plain", deleted_in=5)
    assert len(records) == 0
    # A read of snapshot 4 began before the delete committed: it saw the old record.
    assert not records.note(KEY, "plain", "why", seen_in=4)
    assert (records.named(), records.unnamed(), len(records)) == ([], {}, 0)


def test_a_note_read_before_the_delete_of_an_unnamed_key_is_not_counted() -> None:
    records = UnreadableRecords(Snapshots())
    records.named_at_most = 0
    assert records.note(KEY, "plain", "why", seen_in=3)
    assert records.unnamed() == {"plain": 1}
    records.forget(KEY, "plain", deleted_in=5)
    assert not records.note(KEY, "plain", "why", seen_in=4)
    assert (records.unnamed(), len(records)) == ({}, 0)


def test_a_record_made_again_under_the_key_is_noted_by_a_read_that_sees_it() -> None:
    records = UnreadableRecords(Snapshots())
    records.forget(KEY, "plain", deleted_in=5)
    assert records.note(KEY, "plain", "again", seen_in=5)  # the delete's own transaction on
    assert records.named() == ["again"]
    assert not records.note(KEY, "plain", "old", seen_in=4)
    assert records.named() == ["again"]
    records.forget(KEY, "plain", deleted_in=9)  # deleted again: older reads ignored anew
    assert not records.note(KEY, "plain", "again", seen_in=8)
    assert len(records) == 0


def test_deletes_are_kept_only_while_a_read_may_be_older() -> None:
    # A node may delete a dataset of millions of damaged records at once.
    snapshots = Snapshots()
    records = UnreadableRecords(snapshots)
    keys = [b"plain\x00%d" % index for index in range(1000)]
    for key in keys:
        records.forget(key, "plain", deleted_in=5)
    records.forget(KEY, "plain", deleted_in=6)
    assert records.deletes_kept() == 1001
    snapshots.oldest = 4  # a read of snapshot 4 is under way
    records.prune()
    assert records.deletes_kept() == 1001
    assert not records.note(keys[0], "plain", "why", seen_in=4)
    snapshots.oldest = 5  # it ended: no read is older than the first delete
    records.prune()
    assert records.deletes_kept() == 1
    snapshots.oldest = 6
    records.prune()
    assert records.deletes_kept() == 0


def test_deletes_and_notes_let_deletes_go_once_per_transaction() -> None:
    snapshots = Snapshots()
    records = UnreadableRecords(snapshots)
    for index in range(100):
        records.forget(b"plain\x00%d" % index, "plain", deleted_in=5)
    assert snapshots.asked == 1  # not once per record of a dataset deleted whole
    snapshots.oldest = 5
    for index in range(100):
        records.note(b"other\x00%d" % index, "other", "why", seen_in=7)
    assert snapshots.asked == 2
    assert records.deletes_kept() == 0


def test_an_account_without_a_bound_keeps_every_delete() -> None:
    records = UnreadableRecords()
    records.forget(KEY, "plain", deleted_in=1)
    records.prune()
    assert records.deletes_kept() == 1
    assert not records.note(KEY, "plain", "why", seen_in=0)


def test_nothing_kept_asks_for_no_bound() -> None:
    # The bound costs a read transaction and a scan of LMDB's reader table: the mover
    # asks after every pass, almost always with no delete kept.
    snapshots = Snapshots()
    records = UnreadableRecords(snapshots)
    records.prune()
    records.note(KEY, "plain", "why", seen_in=3)
    assert snapshots.asked == 0
    records.forget(KEY, "plain", deleted_in=5)
    snapshots.oldest = 5
    records.prune()
    records.prune()
    assert (snapshots.asked, records.deletes_kept()) == (1, 0)
