"""The disk reserve (tierstore/engine/diskreserve.py): room set aside so that deletes
and evictions commit on a full disk.

A full disk is played by the store's LMDB environment refusing every commit, as a
full filesystem makes LMDB refuse it (ENOSPC), for as long as the reserve file is
there: its room is then all the disk has left.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import pytest

from tests.engine.stores import FRAME, StoreFactory, payload, wait_until
from tierstore.cli import serve
from tierstore.engine.diskreserve import RESERVE_NAME, DiskReserve
from tierstore.engine.store import Store
from tierstore.errors import HotTierFull, ShardNotFound
from tierstore.types import DatasetSettings

RESERVE = 1 << 20


class _FullWhileReserved:
    """An ``lmdb.Environment`` stand-in whose write transactions fail to commit, as on
    a full disk, while ``full()`` holds (reads and everything else pass)."""

    def __init__(self, real: Any, full: Callable[[], bool]) -> None:
        self._real, self._full = real, full
        self.refused = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    def begin(self, write: bool = False, **options: Any) -> Any:
        txn = self._real.begin(write=write, **options)
        return _Commit(self, txn) if write else txn

    def commit(self, txn: Any) -> None:
        if self._full():
            self.refused += 1
            txn.abort()
            raise lmdb.Error("mdb_txn_commit: No space left on device")
        txn.commit()


class _Commit:
    """A write transaction of :class:`_FullWhileReserved`."""

    def __init__(self, env: _FullWhileReserved, txn: Any) -> None:
        self._env, self._txn = env, txn

    def __getattr__(self, name: str) -> object:
        return getattr(self._txn, name)

    def __enter__(self) -> _Commit:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is None:
            self.commit()
        else:
            self._txn.abort()

    def commit(self) -> None:
        self._env.commit(self._txn)


def full_disk(store: Store, full: Callable[[], bool] | None = None) -> _FullWhileReserved:
    """Make ``store``'s disk full but for its reserve (or while ``full()`` holds)."""
    env = store._env  # the store's own LmdbEnvironment
    fake = _FullWhileReserved(env.env, full or store.disk_reserve.path.exists)
    env._env = fake
    return fake


@pytest.fixture
def store(open_store: StoreFactory) -> Store:
    """A store with a 1 MiB reserve, a dataset "d" of three archived shards, its mover
    stopped (the test decides when the reserve is made again)."""
    opened = open_store(
        datasets={"d": DatasetSettings()}, disk_reserve_bytes=RESERVE, start_mover=False
    )
    for k in range(3):
        opened.put("d", f"s{k}", payload(3 * FRAME, k))
    assert opened.mover.drain_once()
    return opened


def test_the_reserve_is_made_whole_when_the_store_opens(store: Store) -> None:
    reserve = store.settings.data_dir / RESERVE_NAME
    assert store.disk_reserve.held and reserve.stat().st_size == RESERVE
    assert reserve.stat().st_blocks * 512 >= RESERVE  # its blocks are taken: not sparse
    assert reserve.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("how", ["delete", "evict", "delete_dataset"])
def test_what_frees_room_commits_on_a_full_disk_once_the_reserve_is_given_back(
    store: Store, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A node on a full disk could neither delete nor evict a shard (LMDB needs new pages
    # before it frees any), though its error said to do just that.
    disk = full_disk(store)
    with pytest.raises(HotTierFull):  # a put is refused, and leaves the reserve alone
        store.put("d", "new", payload(FRAME))
    assert store.disk_reserve.held
    with caplog.at_level(logging.WARNING, "tierstore.engine.diskreserve"):
        if how == "delete":
            store.delete("d", "s0")
        elif how == "evict":
            assert store.evict("d", "s0") > 0
        else:
            store.delete_dataset("d", force=True)
    assert disk.refused == 2  # the put's commit, and the first try of this one
    assert not store.disk_reserve.held
    assert "gave back its 1,048,576-byte reserve" in caplog.text
    if how == "delete":
        with pytest.raises(ShardNotFound):
            store.stat("d", "s0")
    elif how == "evict":
        assert not store.stat("d", "s0").hot
    else:
        assert not store.has_dataset("d")
        return
    for k in (1, 2):  # the others are untouched
        assert bytes(store.get("d", f"s{k}").to_bytes()) == payload(3 * FRAME, k)


def test_with_no_reserve_to_give_back_the_delete_fails_and_changes_nothing(
    open_store: StoreFactory,
) -> None:
    store = open_store(datasets={"d": DatasetSettings()}, start_mover=False)  # no reserve
    store.put("d", "s", payload(3 * FRAME))
    assert not store.disk_reserve.held
    full_disk(store, lambda: True)
    with pytest.raises(HotTierFull, match="its disk is full"):
        store.delete("d", "s")
    assert bytes(store.get("d", "s").to_bytes()) == payload(3 * FRAME)


def test_the_mover_makes_the_reserve_again_once_the_disk_has_room(store: Store) -> None:
    full_disk(store)
    store.delete("d", "s0")  # gives the reserve back
    assert not store.disk_reserve.held
    store.mover.start()
    wait_until(lambda: store.disk_reserve.held, "the reserve to be made again")


def test_a_disk_short_of_room_gets_no_reserve_until_it_has_twice_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    free = [3 * RESERVE // 2]
    real = shutil.disk_usage

    def disk_usage(path: Any) -> Any:
        return real(path)._replace(free=free[0])

    monkeypatch.setattr("tierstore.engine.diskreserve.shutil.disk_usage", disk_usage)
    reserve = DiskReserve(tmp_path, RESERVE)
    with caplog.at_level(logging.WARNING, "tierstore.engine.diskreserve"):
        assert not reserve.ensure() and not reserve.ensure()
    assert caplog.text.count("no disk reserve") == 1  # said once, not at every pass
    assert os.listdir(tmp_path) == []
    free[0] = 2 * RESERVE
    assert reserve.ensure() and reserve.held
    assert reserve.release() and not reserve.held
    assert not reserve.release()  # nothing left to give


def test_a_reserve_of_zero_bytes_is_none(tmp_path: Path) -> None:
    assert DiskReserve(tmp_path, RESERVE).ensure()  # one made before it was turned off
    reserve = DiskReserve(tmp_path, 0)
    assert not reserve.ensure() and not reserve.held
    assert os.listdir(tmp_path) == []  # removed


@pytest.mark.parametrize(("free", "kept"), [(RESERVE - 1, False), (RESERVE, True)])
def test_a_node_starting_on_a_disk_with_less_room_than_the_reserve_gives_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free: int, kept: bool
) -> None:
    # A node on a full disk could not start again (the embedded archive writes its pid
    # file first), so nothing could delete what filled it.
    assert DiskReserve(tmp_path, RESERVE).ensure()
    real = shutil.disk_usage
    monkeypatch.setattr(
        "tierstore.cli.serve.shutil.disk_usage", lambda path: real(path)._replace(free=free)
    )
    serve._give_back_the_reserve_on_a_full_disk(tmp_path, RESERVE)
    assert DiskReserve(tmp_path, RESERVE).held is kept


def test_an_eviction_whose_commit_fails_is_not_counted(open_store: StoreFactory) -> None:
    # The evictions counter (tierstore_evictions_total) was added to inside the write
    # transaction: an eviction refused by a full disk counted all the same, and one
    # committed after the reserve was given back counted twice.
    store = open_store(datasets={"d": DatasetSettings()}, start_mover=False)  # no reserve
    store.put("d", "s", payload(3 * FRAME))
    assert store.mover.drain_once()
    disk = full_disk(store, lambda: True)
    with pytest.raises(HotTierFull):
        store.evict("d", "s")
    assert store.stat("d", "s").hot
    with pytest.raises(HotTierFull):
        store.hot_room.evict(1)  # the policies' victims, as the mover's pass asks
    assert disk.refused == 2 and store.stat("d", "s").hot
    assert store.hot_room.evictions == 0


def test_an_eviction_committed_on_its_second_try_counts_once(store: Store) -> None:
    full_disk(store)
    assert store.evict("d", "s0") > 0  # the first try fails, the reserve goes, the second
    assert not store.disk_reserve.held
    assert store.hot_room.evictions == 1
