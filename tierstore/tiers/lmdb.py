"""The LMDB hot tier.

:class:`LmdbEnvironment` owns one LMDB environment on local disk and its named
sub-databases; the engine keeps frames, catalog and upload journal in the same
environment so that one write transaction commits all three. :class:`LmdbTier`
is the ``Tier`` view of one sub-database.

Settings follow the known pitfalls: ``writemap=False`` (a full disk is an error,
not SIGBUS), default sync flags (a commit is fsynced before it returns), one
fixed ``map_size`` that is never changed while transactions are open, and
``reader_check()`` at open to clear reader slots of dead processes.

The reader table (:data:`MAX_READERS` slots) is shared with local readers on this
host (docs/local-reads.md), so it can fill: a read that finds it full frees the slots
of dead processes and tries once more, then raises :class:`ReaderTableFull`. Before,
a full table failed the server's reads (and its mover) for good, since only granting
a local read freed dead readers' slots, and that needs a read first.

Slots of dead processes are also freed by every write transaction (at most every
:data:`READER_CHECK_INTERVAL_S`, and again when the map is found full): a local reader
killed (or a DataLoader worker that exited) while it held a snapshot keeps the pages
that snapshot shows from being reused until its slot is freed, and the map would fill
while no other local reader came to free it.

Fork safety: an environment is never used across ``fork()``. The handle is
bound to the process id that opened it; a child process reopens the
environment on first use and never touches (or closes) the parent's handle; the
locks a thread of the parent may have held at the fork are made anew in the child.
Read transactions must be short: a long-lived one keeps LMDB from reusing pages.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from tierstore.errors import (
    HotTierFull,
    InvalidArgument,
    ReaderTableFull,
    StoreClosed,
    Unavailable,
)
from tierstore.tiers.base import BytesLike, ListPage, ObjectStat, resolve_range, value_chunks
from tierstore.tiers.endedreads import EndedReads
from tierstore.tiers.fairlock import FairLock
from tierstore.tiers.readerslots import ReaderSlots
from tierstore.tiers.readertable import oldest_snapshot_in

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_READERS",
    "READER_CHECK_INTERVAL_S",
    "DiskFull",
    "LmdbEnvironment",
    "LmdbTier",
    "MapFullOfDeadReaders",
]

log = logging.getLogger(__name__)

#: free bytes below which LMDB's I/O error on commit is taken for a full disk: LMDB turns
#: a write the filesystem cut short into EIO (mdb_page_flush), seen on a full filesystem
#: as "mdb_txn_commit: Input/output error"; a commit writes at most a transaction's pages
_ALMOST_FULL_BYTES = 256 << 20
#: how py-lmdb words EIO, which LMDB gives for any write the filesystem cut short
_SHORT_WRITE = os.strerror(errno.EIO)
#: and ENOSPC, a write the disk had no room for
_NO_SPACE = os.strerror(errno.ENOSPC)

MAX_KEY_BYTES = 511
#: slots of LMDB's reader table (64 bytes each in ``lock.mdb``), for the server and every
#: local reader on this host together; the first process to open the map sets it.
MAX_READERS = 4096
#: how often (seconds) the slots of dead processes are freed, at most, unless forced.
READER_CHECK_INTERVAL_S = 5.0
#: bytes of LMDB's per-page header, counted when estimating a value's pages.
_PAGE_HEADER_BYTES = 16


class MapFullOfDeadReaders(HotTierFull):
    """A write found the map full while reader slots of dead processes held old pages;
    those are freed now, so the same write may fit if run once more. A caller that
    does not run it again reports it as the :class:`HotTierFull` it is."""


class DiskFull(HotTierFull):
    """A write failed because the hot tier's disk, not its map, is full: room given
    back on the disk (the store's disk reserve) lets the same write commit."""


#: Modes of a new environment's directory and files (less the umask): the owner, and a
#: group an operator may let read in place (docs/local-reads.md), never other users.
#: (LMDB's own default, 0644, let every user read a plaintext hot tier the data
#: directory's mode alone kept from them.)
_DIR_MODE = 0o750
_FILE_MODE = 0o640


def _no_other_users(path: Path) -> None:
    """Take other users' bits off ``path`` and its LMDB files (an environment made
    before they were made without: 0755 and 0644), and the group's write off ``path``
    and ``data.mdb`` (a ``chmod -R g+w``): a group let read in place needs to write
    ``lock.mdb`` alone (its reader table), and one that could write the map, or swap
    it in the directory, could change what every reader gets. A mode that cannot be
    changed (another user's file) is let be."""
    for target, taken in ((path, 0o027), (path / "data.mdb", 0o027), (path / "lock.mdb", 0o007)):
        with contextlib.suppress(OSError):
            mode = stat.S_IMODE(target.stat().st_mode)
            if mode & taken:
                os.chmod(target, mode & ~taken)


#: the environments of this process, whose locks a forked child makes anew
_ENVIRONMENTS: weakref.WeakSet[LmdbEnvironment] = weakref.WeakSet()
#: py-lmdb handles a forked child inherited, kept for the child's life: freeing one
#: closes its descriptor of the lock file, and POSIX then drops every fcntl lock the
#: child holds on that file, its own environment's too (LMDB's sign to the next
#: process that opens it that it is not alone: without it, that process wipes the
#: reader table under every reader).
_INHERITED_HANDLES: list[Any] = []


def _new_locks_in_the_child() -> None:
    """Run in a child of fork() before anything else: a lock that a thread of the parent
    held at the fork stays held in the child, where that thread does not exist, and the
    child's first use of the environment (which reopens it under that lock) hung."""
    for environment in list(_ENVIRONMENTS):
        environment._lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_in_the_child)


class LmdbEnvironment:
    """One LMDB environment, reopened lazily per process. Thread-safe."""

    def __init__(
        self, path: Path, map_size: int, db_names: Iterable[str], readonly: bool = False
    ) -> None:
        self.path = Path(path)
        self.map_size = map_size
        # Every sub-database is opened right after the environment, outside any
        # transaction: opening one inside a write transaction would deadlock.
        self._db_names = tuple(db_names)
        self._readonly = readonly
        self._lock = threading.Lock()
        self._env: Any = None
        self._pid = -1
        self._dbs: dict[str, Any] = {}
        self._page_size = 0  # set when the environment opens
        self._closed = False
        #: transactions of read() and write() under way in process ``_users_pid``;
        #: close() waits for them.
        self._active = 0
        self._users = threading.Condition()
        self._users_pid = os.getpid()
        #: held through each write transaction of this process: see write().
        self._writer = FairLock()
        #: read transactions ended, kept until no one else holds them (py-lmdb 1.x
        #: would free one in a reader's thread while close unmaps the environment).
        self._ended = EndedReads()
        #: when clear_dead_readers() last ran (monotonic seconds)
        self._readers_checked_at = float("-inf")
        #: counts the reader table's taken slots for this process's environment
        self._reader_slots: ReaderSlots | None = None
        _ENVIRONMENTS.add(self)

    @property
    def env(self) -> Any:
        """The ``lmdb.Environment`` of this process (opened on first use)."""
        if self._closed:
            raise StoreClosed(f"LMDB environment {self.path} is closed")
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._open()
        return self._env

    def _open(self) -> None:
        # A handle inherited through fork() is never closed nor freed: closing it in the
        # child could release state the parent still uses, and freeing it closes its
        # descriptors (see _INHERITED_HANDLES).
        if self._env is not None and self._pid != os.getpid():
            _INHERITED_HANDLES.append(self._env)
        self._dbs = {}
        if not self._readonly:
            self.path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        try:
            env = lmdb.open(
                str(self.path),
                map_size=self.map_size,
                max_dbs=len(self._db_names) + 1,
                writemap=False,
                readonly=self._readonly,
                max_readers=MAX_READERS,
                lock=True,
                mode=_FILE_MODE,
            )
        except lmdb.MemoryError as exc:  # mmap() refused: more than the address space
            raise InvalidArgument(
                f"cannot map {self.map_size:,} bytes for the LMDB environment at "
                f"{self.path} on this machine ({exc.args[0].rsplit(': ', 1)[-1]}): lower "
                "the hot tier's capacity (hot_capacity_bytes, serve's --hot-capacity) or "
                "map_size_bytes"
            ) from exc
        except lmdb.Error as exc:
            raise Unavailable(f"cannot open LMDB environment at {self.path}: {exc}") from exc
        env.reader_check()
        if not self._readonly:
            _no_other_users(self.path)
        try:  # creating the sub-databases commits a write transaction
            self._dbs = {
                name: env.open_db(name.encode(), create=not self._readonly)
                for name in self._db_names
            }
        except lmdb.Error as exc:
            env.close()
            if self._disk_full(exc):
                raise HotTierFull(
                    f"cannot open the hot tier at {self.path}: its disk is full ({exc}): "
                    "free space on it"
                ) from exc
            raise Unavailable(f"cannot open LMDB environment at {self.path}: {exc}") from exc
        self._page_size = int(env.stat()["psize"])
        self._env = env
        self._pid = os.getpid()

    def db(self, name: str) -> Any:
        """Handle of a sub-database named at construction (also to a transaction still
        under way while :meth:`close` waits for it)."""
        if self._pid != os.getpid() or not self._dbs:
            self.env  # noqa: B018 - opens the environment (and its databases) in this process
        try:
            return self._dbs[name]
        except KeyError:
            raise InvalidArgument(f"no sub-database {name!r} in {self.path}") from None

    @contextmanager
    def write(self) -> Iterator[Any]:
        """A write transaction, committed (and fsynced) on normal exit, aborted on error.

        ``lmdb.MapFullError`` becomes :class:`HotTierFull`, or
        :class:`MapFullOfDeadReaders` when freeing dead processes' reader slots then
        freed some (the same write may fit now: the caller may run it once more); a full
        disk (ENOSPC, or the I/O error LMDB reports for a write the disk cut short)
        becomes :class:`DiskFull` (a HotTierFull); other LMDB errors become
        :class:`Unavailable`.
        """
        try:
            # One write transaction at a time in this process, queued here: py-lmdb
            # refuses a second one at once rather than wait (LMDB's own lock then
            # orders the processes, of which only the claim holder writes).
            with self._in_use(), self._writer:
                self.clear_dead_readers()
                try:
                    with self.env.begin(write=True) as txn:
                        yield txn
                except lmdb.MapFullError as exc:
                    freed = self.clear_dead_readers(force=True)
                    if freed:
                        raise MapFullOfDeadReaders(
                            f"hot tier at {self.path} was full (map size {self.map_size} "
                            f"bytes) while {freed} reader slots of dead processes kept old "
                            "pages from reuse; they are freed now: retry"
                        ) from exc
                    raise HotTierFull(
                        f"hot tier at {self.path} is full (map size {self.map_size} bytes). "
                        "Pages that deletes and overwrites free are reused only once no "
                        "reader's snapshot shows them: a local reader holding zero-copy "
                        "buffers for long keeps them (docs/local-reads.md)"
                    ) from exc
        except lmdb.Error as exc:
            if self._disk_full(exc):
                log.warning("hot tier at %s: a write failed for want of disk: %s", self.path, exc)
                raise DiskFull(
                    f"hot tier at {self.path}: its disk is full ({exc}; LMDB reports a write "
                    "the disk cut short as an I/O error): free space on it, or evict or "
                    "delete shards (later puts reuse their pages; the file never shrinks, "
                    "so the disk, and an embedded archive on it, get nothing back)"
                ) from exc
            if _SHORT_WRITE in str(exc):
                raise Unavailable(
                    f"hot tier write failed: {exc} (LMDB reports a write cut short so: the "
                    "disk failing, which the kernel log shows, or a disk quota or file "
                    "size limit (ulimit -f) reached)"
                ) from exc
            raise Unavailable(f"hot tier write failed: {exc}") from exc

    def _disk_full(self, exc: lmdb.Error) -> bool:
        """Whether ``exc`` is a write the disk had no room for: ENOSPC, or LMDB's I/O
        error for a short write while the filesystem has almost no room left (an I/O
        error with room to spare is the disk failing, not full)."""
        text = str(exc)
        if _NO_SPACE in text:
            return True
        if _SHORT_WRITE not in text:
            return False
        try:
            disk = os.statvfs(self.path)
        except OSError:
            return False
        return disk.f_bavail * disk.f_frsize < _ALMOST_FULL_BYTES

    def clear_dead_readers(self, force: bool = False) -> int:
        """Free the reader slots of dead processes, whose snapshots would otherwise keep
        pages from reuse for good; at most every :data:`READER_CHECK_INTERVAL_S` unless
        ``force`` (it scans the reader table). Returns how many slots were freed."""
        now = time.monotonic()
        with self._lock:
            if not force and now - self._readers_checked_at < READER_CHECK_INTERVAL_S:
                return 0
            self._readers_checked_at = now
        freed: int = self.env.reader_check()
        return freed

    def reader_slots(self) -> tuple[int, int]:
        """``(taken, size)``: how many slots of the reader table are taken now, by every
        process that maps the environment, and how many it has. Read from the lock
        file (:mod:`tierstore.tiers.readerslots`), O(slots ever taken): py-lmdb's own
        ``readers()`` and ``info()`` leak memory at every call."""
        env = self.env
        with self._lock:
            slots = self._reader_slots
            if slots is None or slots.env is not env:  # first use, or reopened after a fork
                slots = self._reader_slots = ReaderSlots(env, self.path / "lock.mdb")
        return slots.taken(), slots.size

    @contextmanager
    def read(self) -> Iterator[Any]:
        """A short read transaction (zero-copy buffers, valid until it ends).

        Raises :class:`ReaderTableFull` when every reader slot is held by a live
        process (after freeing those of dead ones)."""
        txn = self.begin_read()
        try:
            yield txn
        finally:
            self.end_read(txn)

    def _begin_read(self) -> Any:
        env = self.env
        try:
            return env.begin(buffers=True)
        except lmdb.ReadersFullError:
            self._ended.free()  # each holds a reader slot until it is freed
            self.clear_dead_readers(force=True)  # frees the slots that dead processes left
        try:
            return env.begin(buffers=True)
        except lmdb.ReadersFullError as exc:
            raise ReaderTableFull(
                f"the reader table of the hot tier at {self.path} is full ({MAX_READERS} "
                "open read transactions): readers on this host hold too many snapshots"
            ) from exc

    @contextmanager
    def _in_use(self) -> Iterator[None]:
        """Count a transaction under way, so that :meth:`close` does not unmap the
        environment under it (LMDB works on the map without the GIL)."""
        self._enter()
        try:
            yield
        finally:
            self._leave()

    def _enter(self) -> None:
        """Count one more transaction under way; StoreClosed once closing began."""
        users = self._users_here()
        with users:
            if self._closed:
                raise StoreClosed(f"LMDB environment {self.path} is closed")
            self._active += 1

    def _leave(self) -> None:
        users = self._users_here()
        with users:
            self._active -= 1
            if self._active == 0:
                users.notify_all()

    def _users_here(self) -> threading.Condition:
        """The transaction count's condition of this process: a forked child starts
        with none under way, and with a condition no parent thread can be holding."""
        if self._users_pid != os.getpid():
            self._users = threading.Condition()
            self._active = 0
            self._writer = FairLock()
            self._ended = EndedReads()  # the parent's: py-lmdb leaves them be in a child
            self._users_pid = os.getpid()
        return self._users

    def begin_read(self) -> Any:
        """A read transaction that outlives a ``with`` block (a read lease's), which
        the caller ends with :meth:`end_read`, not ``abort()``: it counts as under way
        until then, so :meth:`close` waits for it rather than unmap the map under it
        (a store closed under a running read crashed the process). Raises
        StoreClosed, and ReaderTableFull as :meth:`read`."""
        self._enter()
        try:
            return self._begin_read()
        except BaseException:
            self._leave()
            raise

    def end_read(self, txn: Any) -> None:
        """End a transaction of :meth:`begin_read`, once: each call counts one read
        off (a second call for the same transaction would let :meth:`close` unmap the
        map under another read)."""
        try:
            self._ended.end(txn)
        finally:
            self._leave()

    def oldest_snapshot(self) -> int:
        """A lower bound on the snapshot of every read transaction of the environment
        under way or yet to begin, in any process that maps it, as LMDB names it (the
        id of the last write committed when the read began): no such read is older
        than a write whose id is at most this. Read from LMDB's reader table (see
        :mod:`tierstore.tiers.readertable`), so it costs a read transaction and a
        scan of the table: for housekeeping, not for every read. 0 (no read is known
        to be newer than anything) when it cannot be told: the environment closed,
        its reader table full, or the table's text not understood. Thread-safe."""
        try:
            with self.read() as txn:
                # Begun before the table is read: a read the scan misses is no older.
                newest = int(txn.id())
                table = self.env.readers()
        except (StoreClosed, ReaderTableFull, lmdb.Error):
            return 0
        oldest = oldest_snapshot_in(table, newest) if isinstance(table, str) else None
        if oldest is None:
            log.warning("LMDB's reader table of %s not understood: %.200r", self.path, table)
            return 0
        return oldest

    def reserve_pages(self) -> int:
        """Pages that puts leave free: a delete, an eviction or the mover's bookkeeping
        needs a few pages (copied B-tree pages, free-list records) even to free
        space, so a map filled to the last page could not be emptied any more.
        0.5 % of the map, at least 32 pages and at most 16 MiB."""
        self.env  # noqa: B018 - opens the environment, which sets the page size
        page = self._page_size
        return min(max(32, self.map_size // page // 200), (16 << 20) // page)

    def usable_bytes(self) -> int:
        """The most the map can ever hold for puts: its size less the reserve."""
        self.env  # noqa: B018 - opens the environment, which sets the page size
        return self.map_size - self.reserve_pages() * self._page_size

    def room_for(self, txn: Any, value_sizes: Iterable[int]) -> tuple[int, int]:
        """``(pages needed, pages free beyond the reserve)`` for new values of
        ``value_sizes`` bytes, at the start of write transaction ``txn``.

        Free pages are the map's unused tail plus the free list, estimated as the
        pages allocated less those the databases hold (pages an old reader still
        sees count as free: the estimate can be high, and LMDB's own MapFullError
        stays the last word).
        """
        env = self.env
        page = self._page_size
        held = 2 + _pages(env.stat())  # the two meta pages and the main database
        held += sum(_pages(txn.stat(db)) for db in self._dbs.values())
        allocated = self.allocated_pages()
        free = (self.map_size // page - allocated) + max(0, allocated - held)
        needed = 8 + sum(-(-(size + _PAGE_HEADER_BYTES) // page) for size in value_sizes)
        return needed, free - self.reserve_pages()

    def allocated_pages(self) -> int:
        """The pages LMDB has allocated as of the last commit (its last page number and
        one), from the data file's size: without ``writemap`` LMDB writes every page
        it allocates at its commit and never grows the file past them. Not
        ``info()["last_pgno"]``: py-lmdb's ``info()`` keeps some memory at every call,
        and this is asked at every put and promotion."""
        self.env  # noqa: B018 - opens the environment, which sets the page size
        return self.file_size() // self._page_size

    def file_size(self) -> int:
        """Size of the data file on disk, in bytes."""
        return (self.path / "data.mdb").stat().st_size

    def close(self, wait_s: float = 10.0) -> bool:
        """Close the environment (only this process's own handle). Idempotent.

        New transactions are refused at once; transactions of :meth:`read` and
        :meth:`write` under way are waited for, up to ``wait_s``. If some are still
        under way then, the map is left open (until the process exits) rather than
        unmapped under them, and False is returned.
        """
        users = self._users_here()
        with users:
            self._closed = True
            if not users.wait_for(lambda: self._active == 0, wait_s):
                return False
        with self._lock:
            if self._env is not None and self._pid == os.getpid():
                self._env.close()  # invalidates the ended transactions first
            self._env = None
            self._dbs = {}
        self._ended.forget()
        return True


def _encode_key(key: str) -> bytes:
    raw = key.encode("utf-8")
    if not raw or len(raw) > MAX_KEY_BYTES:
        raise InvalidArgument(f"LMDB keys must be 1 to {MAX_KEY_BYTES} bytes, got {len(raw)}")
    return raw


class LmdbTier:
    """A ``Tier`` over one named sub-database of an :class:`LmdbEnvironment`."""

    def __init__(
        self, environment: LmdbEnvironment, name: str, owns_environment: bool = False
    ) -> None:
        self.environment = environment
        self.name = name
        self._owns = owns_environment
        self._closed = False

    @classmethod
    def open(cls, path: Path, map_size: int, name: str = "objects") -> LmdbTier:
        """A tier over a fresh environment at ``path`` that the tier owns and closes."""
        return cls(LmdbEnvironment(path, map_size, [name]), name, owns_environment=True)

    def _db(self) -> Any:
        if self._closed:
            raise StoreClosed(f"LMDB tier {self.name!r} is closed")
        return self.environment.db(self.name)

    # Transaction-level access, for callers that join several writes in one commit.

    def put_in(self, txn: Any, key: str, value: BytesLike) -> None:
        """Put within the caller's write transaction."""
        txn.put(_encode_key(key), value, db=self._db())

    def delete_in(self, txn: Any, key: str) -> None:
        """Delete within the caller's write transaction (missing key: no-op)."""
        txn.delete(_encode_key(key), db=self._db())

    def view_in(self, txn: Any, key: str) -> memoryview | None:
        """Zero-copy view of a value, valid only until ``txn`` ends."""
        value: memoryview | None = txn.get(_encode_key(key), db=self._db())
        return value

    def sizes_in(self, txn: Any) -> Iterator[tuple[str, int]]:
        """Every key, in order, with its value's size (copies no value)."""
        for raw, value in txn.cursor(db=self._db()):
            yield bytes(raw).decode(), len(value)

    # The Tier protocol.

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> memoryview | None:
        with self.environment.read() as txn:
            value = self.view_in(txn, key)
            if value is None:
                return None
            start, stop = resolve_range(len(value), byte_range)
            return memoryview(bytes(value[start:stop]))

    def put(self, key: str, value: BytesLike | Iterable[BytesLike]) -> None:
        chunks = list(value_chunks(value))
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        with self.environment.write() as txn:
            self.put_in(txn, key, data)

    def delete(self, key: str) -> None:
        with self.environment.write() as txn:
            self.delete_in(txn, key)

    def delete_many(self, keys: Sequence[str]) -> None:
        """Every key in one transaction (one commit)."""
        with self.environment.write() as txn:
            for key in keys:
                self.delete_in(txn, key)

    def stat(self, key: str) -> ObjectStat | None:
        with self.environment.read() as txn:
            value = self.view_in(txn, key)
            return None if value is None else ObjectStat(key=key, size=len(value))

    def list(self, prefix: str = "", start_after: str | None = None, limit: int = 1000) -> ListPage:
        if limit < 1:
            raise InvalidArgument(f"list limit must be at least 1, got {limit}")
        raw_prefix = prefix.encode()
        keys: list[str] = []
        with self.environment.read() as txn:
            cursor = txn.cursor(db=self._db())
            start = raw_prefix
            if start_after is not None and start_after.encode() >= start:
                start = start_after.encode()
            positioned = cursor.set_range(start)
            while positioned:
                raw = bytes(cursor.key())
                if not raw.startswith(raw_prefix):
                    break
                if start_after is None or raw > start_after.encode():
                    keys.append(raw.decode())
                    if len(keys) == limit:
                        more = cursor.next() and bytes(cursor.key()).startswith(raw_prefix)
                        return ListPage(tuple(keys), keys[-1] if more else None)
                positioned = cursor.next()
        return ListPage(tuple(keys), None)

    def close(self) -> None:
        self._closed = True
        if self._owns:
            self.environment.close()


def _pages(stat: dict[str, int]) -> int:
    return stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
