"""The oldest snapshot any read may hold, from LMDB's reader table
(tierstore/tiers/readertable.py and LmdbEnvironment.oldest_snapshot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tierstore.tiers.lmdb import LmdbEnvironment
from tierstore.tiers.readertable import oldest_snapshot_in, published_snapshots

TABLE = (
    "    pid     thread     txnid\n"
    "     23716 7fabf4a9bb80 7\n"
    "     23716 7fabf4a9bb80 -\n"
    "     23801 7f00aa001000 4\n"
)


def test_the_snapshots_published_are_those_of_the_slots_in_use() -> None:
    assert published_snapshots(TABLE) == [7, 4]  # the idle slot ("-") holds none
    assert published_snapshots("(no active readers)\n") == []
    assert oldest_snapshot_in(TABLE, newest=9) == 4
    assert oldest_snapshot_in("(no active readers)\n", newest=9) == 9


@pytest.mark.parametrize(
    "table",
    [
        "",
        "(no reader locks)\n",  # an environment opened without LMDB's lock file
        "     23716 7fabf4a9bb80 7\n",  # no header
        "    pid     thread     txnid\n     23716 7fabf4a9bb80\n",
        "    pid     thread     txnid\n     23716 7fabf4a9bb80 7x\n",
        "    pid     thread     txnid\n     23716 7fabf4a9bb80 -7\n",
        "    pid     thread     txnid\n     23716 7fabf4a9bb80 7 extra\n",
        "    pid   thread   txnid   age\n     23716 7fabf4a9bb80 7 1\n",
    ],
)
def test_a_table_not_understood_tells_nothing(table: str) -> None:
    # Taken for "no reads older", it would let go of deletes a read may still be older
    # than: the caller keeps them all instead.
    assert published_snapshots(table) is None
    assert oldest_snapshot_in(table, newest=9) is None


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
            assert env.oldest_snapshot() == committed  # asked inside a write, as deletes do
        assert env.oldest_snapshot() == committed  # the read under way sees no later
        with env.read() as newer:
            assert newer.id() == committed + 1
            assert env.oldest_snapshot() == committed
        env.end_read(older)
        assert env.oldest_snapshot() == committed + 1
    finally:
        assert env.close(wait_s=1.0)  # every read counted off: none left under way
    assert env.oldest_snapshot() == 0  # closed: nothing can be told


_READER = """
import sys, time, lmdb
env = lmdb.open(sys.argv[1], max_dbs=4, max_readers=4, readonly=True, lock=True)
txn = env.begin()
print(txn.id(), flush=True)
time.sleep(600)
"""


def test_a_read_of_another_process_counts(tmp_path: Path) -> None:
    # A local reader maps the hot tier in its own process: its reads may note nothing,
    # but the table shows them with the node's own, and none is missed.
    env = LmdbEnvironment(tmp_path / "env", 1 << 20, ["data"])
    reader = None
    try:
        with env.write() as txn:
            txn.put(b"k", b"1", db=env.db("data"))
        reader = subprocess.Popen(
            [sys.executable, "-c", _READER, str(tmp_path / "env")], stdout=subprocess.PIPE
        )
        assert reader.stdout is not None
        snapshot = int(reader.stdout.readline())
        for value in (b"2", b"3"):
            with env.write() as txn:
                txn.put(b"k", value, db=env.db("data"))
        assert env.oldest_snapshot() == snapshot
        reader.kill()
        reader.wait()
        env.clear_dead_readers(force=True)
        assert env.oldest_snapshot() == snapshot + 2
    finally:
        if reader is not None and reader.poll() is None:
            reader.kill()
            reader.wait()
        env.close()
