"""Ended read transactions kept until no one else holds them (tierstore/tiers/endedreads.py)."""

from __future__ import annotations

import gc
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
