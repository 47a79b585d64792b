"""Counting the reader table's taken slots from LMDB's lock file (tierstore/tiers/readerslots.py).

py-lmdb's ``readers()`` leaks its text at every call; the node asked for it at every
local-read grant, so it grew for good on a host with many local readers.
"""

from __future__ import annotations

import gc
import multiprocessing
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from tests.engine.stores import StoreFactory
from tierstore.tiers import readerslots
from tierstore.tiers.lmdb import LmdbEnvironment
from tierstore.tiers.readerslots import ReaderSlots, count_listed_slots


@pytest.fixture
def environment(tmp_path: Path) -> Iterator[LmdbEnvironment]:
    env = LmdbEnvironment(tmp_path / "env", 1 << 24, ["frames"])
    yield env
    env.close()


def _hold_reads(path: str, count: int, ready: Any, done: Any) -> None:
    env = lmdb.open(path, readonly=True, lock=True, max_dbs=2, max_readers=4096)
    held = [env.begin() for _ in range(count)]
    ready.set()
    done.wait(30)
    for txn in held:
        txn.abort()


def test_the_count_is_the_one_readers_lists_in_this_process_and_another(
    environment: LmdbEnvironment,
) -> None:
    env = environment.env
    slots = ReaderSlots(env, environment.path / "lock.mdb")
    assert slots.from_lock_file  # this platform's layout is known
    assert slots.taken() == count_listed_slots(env.readers()) == 0
    held = [env.begin() for _ in range(7)]
    assert slots.taken() == count_listed_slots(env.readers()) == 7
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    child = context.Process(target=_hold_reads, args=(str(environment.path), 5, ready, done))
    child.start()
    try:
        assert ready.wait(60)
        assert slots.taken() == count_listed_slots(env.readers()) == 12
        for txn in held[:3]:
            txn.abort()  # py-lmdb keeps the slot, idle: still taken, and listed
        assert slots.taken() == count_listed_slots(env.readers())
    finally:
        done.set()
        child.join(30)
    env.reader_check()  # the child's slots, freed as it ended or by the check
    assert slots.taken() == count_listed_slots(env.readers()) == 7
    assert environment.reader_slots() == (7, env.info()["max_readers"])
    for txn in held[3:]:
        txn.abort()


def test_a_lock_file_of_another_layout_falls_back_to_readers(
    environment: LmdbEnvironment, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env = environment.env
    held = [env.begin() for _ in range(3)]
    # A platform whose mutex is none of the sizes known: no layout agrees (with no
    # slot taken, a wrong one that reads 0 agreed with an empty listing).
    monkeypatch.setattr(readerslots, "_MUTEX_SIZES", (72, 136))
    slots = ReaderSlots(env, environment.path / "lock.mdb")
    assert not slots.from_lock_file and slots.taken() == 3
    assert "not laid out as expected" in caplog.text
    monkeypatch.undo()
    for txn in held:
        txn.abort()
    released = ReaderSlots(env, environment.path / "lock.mdb")
    assert released.from_lock_file  # the check holds a slot of its own: not 0 == 0
    assert not ReaderSlots(env, environment.path / "missing.mdb").from_lock_file


def test_counting_the_reader_table_for_local_read_grants_holds_no_memory(
    tmp_path: Path,
) -> None:
    # 20 slots taken, 20,000 counts (a grant counts once): py-lmdb's readers() kept
    # about 1.5 KB a call (30 MB here), for good.
    stores = StoreFactory(tmp_path)
    store = stores()
    support = store.local_reads
    env = store._env.env  # slots held as a local reader holds them
    held = [env.begin() for _ in range(20)]
    try:
        assert support.reader_table().used >= 20
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(20_000):
                support.reader_table()
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    finally:
        for txn in held:
            txn.abort()
        stores.close_all()
    assert grown < 256 << 10, grown
