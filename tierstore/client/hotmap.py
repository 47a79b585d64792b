"""The server's hot tier, mapped read-only in a local reader's own process.

One :class:`HotMap` per hot-tier file per process (:func:`hot_map`), shared by every
client of the process: py-lmdb refuses to open an environment twice in a process,
and LMDB's fcntl locks belong to the (process, file) pair. It opens the environment
with ``readonly=True, lock=True``: the lock file's reader table registers each read
transaction of this process, so the server's writer never reuses pages that one of
our snapshots still shows. That needs read access to ``data.mdb`` and *write* access
to ``lock.mdb`` (docs/local-reads.md), and a reader in the server's pid namespace
(LMDB tells live readers by pid).

Snapshot lifetime: a read runs in one :class:`HotSession` (one read transaction).
A plaintext read may hand the transaction to a :class:`~tierstore.engine.reads.ReadLease`
— the engine's own, shared — whose Arrow buffers point into the map; the
transaction ends when the last of them is garbage-collected. A live snapshot keeps
the server from reusing the pages it shows, so the file grows while it lives: at
most ``max_snapshots`` leases per process, and reads past that copy instead.

Fork safety. A forked child must never use or end the parent's environment or
transactions: they are registered under the parent's pid in the shared reader
table, and ending one in the child would release the parent's slot. So before a
fork — once the client's fork gate is held (:mod:`tierstore.client.forkgate`), which
every client read passes — local reads in flight are waited for (at most
``_FORK_WAIT_S``) and, when no
snapshot is alive, the environment is closed: the child then opens its own, under
its own pid, and the parent reopens on its next read. When snapshots are alive the
environment stays open for them; a child cannot open another one (py-lmdb refuses
a second open of a file that is open in the process), so there every session
raises :class:`Unavailable` and the reader goes through the service.

Thread safety: everything here is safe to share between threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lmdb

from tierstore.client.forkgate import while_held_at_fork
from tierstore.client.forklocks import ForkGate
from tierstore.engine.catalog import (
    DB_NAMES,
    FRAMES_DB,
    META_DB,
    SHARDS_DB,
    lookup_counter,
    lookup_shard,
)
from tierstore.engine.reads import LeasePool, ReadLease
from tierstore.engine.records import ShardRecord, frame_key
from tierstore.errors import Unavailable
from tierstore.tiers.endedreads import EndedReads
from tierstore.tiers.lmdb import MAX_READERS
from tierstore.wire.local import LocalGrant

__all__ = ["HotMap", "HotSession", "HotTierReplaced", "close_retired", "hot_map", "newest_map"]

#: The longest a fork waits for local reads in flight.
_FORK_WAIT_S = 10.0

#: The least address space a map reserves: the file may grow up to the server's map
#: size, and a server started again with a larger one lets it grow past what a map of
#: the first grant's size shows (LMDB then refuses every transaction: MDB_MAP_RESIZED).
#: Read-only and file-backed, the reservation costs no memory.
_MIN_MAP_BYTES = 1 << 40


class HotTierReplaced(Unavailable):
    """The hot tier's data file is not the one this map shows any more: the node was
    started again on a new hot tier (a lost one, rebuilt). Its grant is stale."""


class HotSession:
    """One read transaction, open for the length of one read. Not thread-safe."""

    __slots__ = ("_frames", "_leases", "_meta", "_shards", "leased", "txn")

    def __init__(self, txn: Any, dbs: tuple[Any, Any, Any], leases: LeasePool) -> None:
        self.txn = txn
        self._frames, self._shards, self._meta = dbs
        self._leases = leases
        #: whether a lease owns the transaction now (the session then does not end it).
        self.leased = False

    def record(self, dataset: str, shard: str) -> ShardRecord | None:
        """The shard's catalog record in this snapshot. Raises IntegrityError."""
        return lookup_shard(self.txn, self._shards, dataset, shard)

    def next_generation(self) -> int:
        """One past the newest generation committed in this snapshot: every shard
        generation written later is at least this."""
        return lookup_counter(self.txn, self._meta, "next_generation")

    def frame(self, generation: int, index: int) -> memoryview | None:
        """A stored frame as a view into the map, valid while the transaction lives."""
        view: memoryview | None = self.txn.get(
            frame_key(generation, index).encode(), db=self._frames
        )
        return view

    def lease(self) -> ReadLease | None:
        """Hand the transaction to a lease (buffers made with it keep the snapshot open),
        or ``None`` when the process holds ``max_snapshots`` already: then copy."""
        lease = self._leases.try_open(self.txn)
        if lease is not None:
            self.leased = True
        return lease


class HotMap:
    """One hot-tier file, opened read-only by this process on first use."""

    def __init__(self, grant: LocalGrant, max_snapshots: int) -> None:
        self.path = grant.path
        self._data = grant.path / "data.mdb"
        self.map_size = grant.map_size
        self.identity = (grant.device, grant.inode)
        self.max_snapshots = max_snapshots
        #: read transactions ended, kept until no one else holds them (py-lmdb 1.x
        #: would free one in a reader's thread while a close unmaps the map).
        self._ended = EndedReads()
        self.leases = LeasePool(max_snapshots, self._ended.end)
        self._open_lock = threading.Lock()
        self._gate = ForkGate()
        self._env: Any = None
        self._dbs: tuple[Any, Any, Any] = (None, None, None)
        #: why this process may not open the environment (a child that inherited it open).
        self._blocked: str | None = None
        #: an environment inherited through fork: kept, never used, never closed.
        self._inherited: Any = None
        #: whether this process (or its parent) has opened the file: a later mismatch
        #: then means the file was replaced, not that it was never this one.
        self._was_open = False
        #: closed for good: its file was replaced (see :meth:`retire`).
        self._retired_and_closed = False

    @contextmanager
    def session(self) -> Iterator[HotSession]:
        """A read transaction for one read; ended on exit unless a lease took it.

        Raises Unavailable when the environment cannot be opened here (missing or other
        file, no permission, a child that inherited open snapshots) or LMDB refuses a
        transaction (reader table full).
        """
        with self._gate.call():  # waits while a fork is being prepared
            env, dbs = self._opened()
            self._check_identity()
            try:
                txn = env.begin(buffers=True)
            except lmdb.Error as exc:
                raise Unavailable(f"no read transaction on the hot tier: {exc}") from exc
            session = HotSession(txn, dbs, self.leases)
            try:
                yield session
            finally:
                if not session.leased:
                    self._ended.end(txn)  # before the gate lets a close in

    def _opened(self) -> tuple[Any, tuple[Any, Any, Any]]:
        with self._open_lock:
            if self._env is None:
                self._open()
            return self._env, self._dbs

    def _check_identity(self) -> None:
        """Raise HotTierReplaced unless ``data.mdb`` is still the file of the grant. At
        every read (one stat, about a microsecond): a map of a replaced file still shows
        the old shards, checksums and all, and a rebuilt node may have overwritten or
        deleted them since."""
        if self._file_identity() != self.identity:
            raise HotTierReplaced(f"{self._data} is not the file the server granted any more")

    def _file_identity(self) -> tuple[int, int]:
        """``data.mdb``'s (device, inode) now. Raises Unavailable if it cannot be seen
        (gone for now, a node between two hot tiers; or hidden)."""
        try:
            stat = self._data.stat()
        except OSError as exc:
            raise Unavailable(f"cannot see the hot tier's data file: {exc}") from exc
        return stat.st_dev, stat.st_ino

    def _open(self) -> None:
        if self._retired_and_closed:  # another client's route may still name this map
            raise HotTierReplaced(f"the hot-tier file at {self.path} was replaced")
        if self._blocked is not None:
            raise Unavailable(self._blocked)
        if self._file_identity() != self.identity:
            if self._was_open:  # e.g. closed for a fork, and replaced meanwhile
                raise HotTierReplaced(f"{self._data} is not the file the server granted any more")
            raise Unavailable(
                f"{self._data} here is not the server's file (another mount namespace?)"
            )
        try:
            env = self._open_environment(max(self.map_size, _MIN_MAP_BYTES))
        except lmdb.Error:
            try:  # e.g. an address-space limit (ulimit -v) too small for the reservation
                env = self._open_environment(self.map_size)
            except lmdb.Error as exc:
                raise Unavailable(
                    f"cannot open the hot tier at {self.path} read-only: {exc}"
                ) from exc
        try:
            dbs = (
                env.open_db(FRAMES_DB.encode(), create=False),
                env.open_db(SHARDS_DB.encode(), create=False),
                env.open_db(META_DB.encode(), create=False),
            )
        except lmdb.Error as exc:
            env.close()
            raise Unavailable(f"the hot tier at {self.path} has no catalog: {exc}") from exc
        # Free the slots of reader processes that died holding them (DataLoader workers
        # of earlier epochs exit without ending their transactions): each worker that
        # opens the map clears its dead predecessors', so they never pile up.
        with contextlib.suppress(lmdb.Error):  # housekeeping: the read does not need it
            env.reader_check()
        self._env, self._dbs = env, dbs
        self._was_open = True

    def retire(self) -> None:
        """This map's file was replaced: new grants get a map of their own, and this one
        is closed as soon as no read uses it and no buffer holds one of its snapshots
        (it keeps the old file's disk space while it is open)."""
        with _registry_lock:
            if _MAPS.get(self.identity) is self:
                del _MAPS[self.identity]
            if self not in _RETIRED:
                _RETIRED.append(self)
        close_retired()

    def _close_if_unused(self) -> bool:
        """Close the environment for good if no read is under way and no lease lives;
        whether it is closed now."""
        if not self._gate.try_hold():
            return False
        try:
            if self.leases.live:
                return False
            with self._open_lock:
                env, self._env, self._dbs = self._env, None, (None, None, None)
                self._retired_and_closed = True
            if env is not None:
                env.close()
            self._ended.forget()
            return True
        finally:
            self._gate.release()

    def _open_environment(self, map_size: int) -> Any:
        return lmdb.open(
            str(self.path),
            map_size=map_size,
            readonly=True,
            lock=True,  # registers our snapshots in the reader table: needs lock.mdb writable
            max_dbs=len(DB_NAMES) + 1,
            # the server's size: a reader that opens the map while the server is
            # down must not shrink the table
            max_readers=MAX_READERS,
            create=False,
        )

    # Fork handling (see the module docstring); called by the handlers below.

    def _before_fork(self) -> None:
        self._gate.hold(_FORK_WAIT_S)  # held until after the fork
        if self._gate.idle and not self.leases.live and self._env is not None:
            env, self._env, self._dbs = self._env, None, (None, None, None)
            env.close()  # reopened on the next read
            self._ended.forget()

    def _after_fork_in_parent(self) -> None:
        self._gate.release()

    def _after_fork_in_child(self) -> None:
        self._gate.reset()
        self._open_lock = threading.Lock()
        self._ended = EndedReads()  # the parent's: py-lmdb leaves them be in a child
        self.leases = LeasePool(self.max_snapshots, self._ended.end)  # (counts the parent's)
        if self._env is not None:
            self._inherited, self._env, self._dbs = self._env, None, (None, None, None)
            self._blocked = (
                "the parent process held zero-copy buffers from the hot tier when it "
                "forked, so this process cannot map the hot tier; it reads through the service"
            )


_registry_lock = threading.Lock()
_MAPS: dict[tuple[int, int], HotMap] = {}
#: maps of replaced files, to close once nothing uses them (see HotMap.retire).
_RETIRED: list[HotMap] = []


def close_retired() -> None:
    """Close the maps of replaced files that nothing uses any more (cheap when there
    are none: called at every grant)."""
    with _registry_lock:
        retired = list(_RETIRED)
    closed = [hot for hot in retired if hot._close_if_unused()]
    if closed:
        with _registry_lock:
            for hot in closed:
                if hot in _RETIRED:
                    _RETIRED.remove(hot)


def newest_map() -> HotMap | None:
    """The map this process made last, if any (what a first grant most likely names)."""
    with _registry_lock:
        return next(reversed(_MAPS.values()), None)


def hot_map(grant: LocalGrant, max_snapshots: int) -> HotMap:
    """This process's map of the file ``grant`` names (made on first use; closed only
    once a file replaced it at its path and nothing uses it any more: an open read-only
    environment costs two descriptors and address space only, and closing one under
    live buffers would leave them dangling). The first caller's ``max_snapshots`` holds
    for the process. Thread-safe."""
    key = (grant.device, grant.inode)
    with _registry_lock:
        found = _MAPS.get(key)
        if found is not None:
            return found
        found = _MAPS[key] = HotMap(grant, max_snapshots)
        replaced = [hot for other, hot in _MAPS.items() if other != key and hot.path == found.path]
    # Another file at the same path: the node replaced its hot tier. Its old map was
    # retired only when a read ran into the new file; a grant that ran out first left
    # it mapped, deleted, for the life of the process.
    for hot in replaced:
        hot.retire()
    return found


def _before_fork() -> None:
    _registry_lock.acquire()
    for hot in _MAPS.values():
        hot._before_fork()


def _after_fork_in_parent() -> None:
    for hot in _MAPS.values():
        hot._after_fork_in_parent()
    _registry_lock.release()


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    # Retired maps too: their locks may have been held at the fork, and the parent's
    # environment is the parent's to close.
    for hot in (*_MAPS.values(), *_RETIRED):
        hot._after_fork_in_child()


# Inside the client's fork gate: a local read runs inside it and takes this map's locks.
while_held_at_fork(_before_fork, _after_fork_in_parent, _after_fork_in_child)
