"""The snapshots one process's reads hold, and the oldest of them (tierstore/tiers/snapshots.py
and LmdbEnvironment.oldest_snapshot)."""

from __future__ import annotations

from pathlib import Path

from tierstore.tiers.lmdb import LmdbEnvironment
from tierstore.tiers.snapshots import ReadSnapshots


def test_the_oldest_is_the_oldest_read_under_way_else_the_last_commit() -> None:
    snapshots = ReadSnapshots()
    assert snapshots.oldest(lambda: 4) == 4  # none under way: the last commit
    first = snapshots.beginning()
    snapshots.began(first, 4)
    second = snapshots.beginning()
    snapshots.began(second, 7)
    assert snapshots.oldest(lambda: 9) == 4
    snapshots.ended(4)
    assert snapshots.oldest(lambda: 9) == 7
    snapshots.ended(7)
    assert snapshots.oldest(lambda: 9) == 9


def test_a_read_counts_from_before_its_snapshot_is_known() -> None:
    # One that had not yet told its snapshot was missed, and a delete its snapshot is
    # older than let go: the read could then report the deleted record again.
    snapshots = ReadSnapshots()
    assert snapshots.oldest(lambda: 5) == 5
    placeholder = snapshots.beginning()  # begins now, so sees commit 5 or later
    assert placeholder == 5
    assert snapshots.oldest(lambda: 6) == 5
    snapshots.began(placeholder, 6)
    assert snapshots.oldest(lambda: 8) == 6
    snapshots.ended(6)
    failed = snapshots.beginning()
    snapshots.ended(failed)  # failed to begin
    assert snapshots.oldest(lambda: 8) == 8


def test_the_oldest_never_goes_back() -> None:
    snapshots = ReadSnapshots()
    assert snapshots.oldest(lambda: 5) == 5
    assert snapshots.oldest(lambda: 0) == 5  # nothing learnt (a closed environment)


def test_an_environment_bounds_its_reads_by_their_snapshots(tmp_path: Path) -> None:
    env = LmdbEnvironment(tmp_path / "env", 1 << 20, ["data"])
    try:
        with env.write() as txn:
            txn.put(b"k", b"1", db=env.db("data"))
        committed = env.oldest_snapshot()
        older = env.begin_read()
        assert older.id() == committed
        with env.write() as txn:
            assert txn.id() == committed + 1
            txn.put(b"k", b"2", db=env.db("data"))
        assert env.oldest_snapshot() == committed  # the read under way sees no later
        with env.read() as newer:
            assert newer.id() == committed + 1
            assert env.oldest_snapshot() == committed
        env.end_read(older)
        env.end_read(older)  # twice: counted off once
        assert env.oldest_snapshot() == committed + 1
    finally:
        env.close()
    assert env.oldest_snapshot() == committed + 1  # closed: nothing older can begin


def test_a_read_ends_while_another_thread_seeks_the_oldest() -> None:
    # A read lease's read ends in a garbage collection, which may start in any thread,
    # that one perhaps inside oldest(): ending one must not wait on its lock.
    snapshots = ReadSnapshots()
    placeholder = snapshots.beginning()
    snapshots.began(placeholder, 3)
    with snapshots._lock:  # held, as by oldest()
        snapshots.ended(3)
    snapshots.ended(3)  # counted off already: nothing
    assert snapshots.oldest(lambda: 4) == 4
