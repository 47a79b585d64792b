"""Ended read transactions kept until no one else holds them (tierstore/tiers/endedreads.py)."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import lmdb
import pytest

from tierstore.tiers.endedreads import PRUNE_AT, EndedReads


def test_an_ended_read_is_freed_only_once_no_one_holds_it_and_past_the_keep(
    tmp_path: Path,
) -> None:
    # py-lmdb 1.x frees an ended read transaction without the GIL: freed in a reader's
    # thread while another closed the environment, it crashed the process (SIGBUS).
    env = lmdb.open(str(tmp_path))
    ended = EndedReads()
    held = env.begin()
    ended.end(held)  # aborted, kept
    with pytest.raises(lmdb.Error):
        held.get(b"k")  # no longer usable
    gone = []
    for _ in range(PRUNE_AT - 1):
        txn = env.begin()
        gone.append(weakref.ref(txn))
        ended.end(txn)
        del txn
    gc.collect()
    assert all(ref() is not None for ref in gone)  # kept, though no one else holds them
    last = env.begin()
    ended.end(last)  # one past the keep: those no one holds are freed, here
    assert all(ref() is None for ref in gone)
    newest = weakref.ref(last)
    del last
    assert newest() is not None
    ended.free()  # (as when the reader table is full)
    assert newest() is None
    survivor = weakref.ref(held)
    ended.free()
    assert survivor() is not None  # still held by this test: kept
    del held
    ended.forget()
    assert survivor() is None
    env.close()


class _Ended:
    """A transaction that has nothing to abort (as far as EndedReads can tell)."""

    def abort(self) -> None:
        pass


def test_a_read_ended_by_a_collection_inside_free_does_not_deadlock() -> None:
    # free() filtered its list under its lock: the list it made could start a garbage
    # collection, which ended a read lease caught in a reference cycle, and the
    # lease's end() waited on the same lock for good (and every later read behind it).
    ended = EndedReads()
    held = [_Ended() for _ in range(3)]
    for txn in held:
        ended.end(txn)
    freeing = {"now": False}  # a flag set without allocating (an Event's set() does)
    ended_inside: list[_Ended] = []

    def during_collection(phase: str, info: dict[str, int]) -> None:
        # Only a collection that starts with the lock held (by free(), in this test).
        if phase == "start" and freeing["now"] and ended._lock.locked() and not ended_inside:
            ended_inside.append(_Ended())
            ended.end(ended_inside[0])  # as a lease's finalizer does

    def free() -> None:
        freeing["now"] = True
        ended.free()
        freeing["now"] = False

    thresholds = gc.get_threshold()
    gc.callbacks.append(during_collection)
    gc.set_threshold(1)  # a collection at the first allocation of a container
    try:
        worker = threading.Thread(target=free, daemon=True)
        worker.start()
        worker.join(10)
    finally:
        gc.set_threshold(*thresholds)
        gc.callbacks.remove(during_collection)
    assert not worker.is_alive(), "free() deadlocked on its own lock"
    assert all(ended._kept.count(txn) == 1 for txn in held)  # held elsewhere: kept
