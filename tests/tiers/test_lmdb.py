"""LmdbTier: the conformance suite against a fresh LMDB environment per test."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from tests.forking import exit_code_of_child_forked_while_held
from tests.tiers.conformance import TierConformance
from tierstore.errors import (
    HotTierFull,
    InvalidArgument,
    ReaderTableFull,
    StoreClosed,
    Unavailable,
)
from tierstore.tiers import lmdb as lmdb_tier
from tierstore.tiers.base import Tier
from tierstore.tiers.lmdb import LmdbEnvironment, LmdbTier

#: Room for the large-value tests (several 20 MiB values plus overwrites); sparse on disk.
MAP_SIZE = 1 << 30


class TestLmdbTier(TierConformance):
    @pytest.fixture
    def tier(self, tmp_path: Path) -> Iterator[LmdbTier]:
        tier = LmdbTier.open(tmp_path / "env", map_size=MAP_SIZE)
        yield tier
        tier.close()

    # Backdoors through the environment's own transactions, bypassing LmdbTier.get/put.

    def backdoor_put(self, tier: Tier, key: str, value: bytes) -> None:
        assert isinstance(tier, LmdbTier)
        with tier.environment.write() as txn:
            txn.put(key.encode(), value, db=tier.environment.db(tier.name))

    def backdoor_get(self, tier: Tier, key: str) -> bytes | None:
        assert isinstance(tier, LmdbTier)
        with tier.environment.read() as txn:
            value = txn.get(key.encode(), db=tier.environment.db(tier.name))
            return None if value is None else bytes(value)


# Closing under way (LMDB works on the map without the GIL: unmapping it under a
# transaction could crash the process).


def environment_holding(tmp_path: Path, value: bytes) -> LmdbEnvironment:
    """A small environment whose sub-database ``d`` holds ``value`` at key ``k``."""
    environment = LmdbEnvironment(tmp_path / "env", 1 << 20, ["d"])
    with environment.write() as txn:
        txn.put(b"k", value, db=environment.db("d"))
    return environment


def test_close_waits_for_transactions_under_way_and_refuses_new_ones(tmp_path: Path) -> None:
    environment = environment_holding(tmp_path, b"value")
    inside, leave = threading.Event(), threading.Event()
    seen: list[bytes] = []

    def reader() -> None:
        with environment.read() as txn:
            inside.set()
            assert leave.wait(10)
            seen.append(bytes(txn.get(b"k", db=environment.db("d"))))

    thread = threading.Thread(target=reader)
    thread.start()
    assert inside.wait(10)
    closed: list[bool] = []
    closer = threading.Thread(target=lambda: closed.append(environment.close()))
    closer.start()
    closer.join(0.3)
    assert closer.is_alive() and not closed  # waiting for the read under way
    with pytest.raises(StoreClosed), environment.read():
        pass  # a new transaction is refused at once
    leave.set()
    thread.join(10)
    closer.join(10)
    assert seen == [b"value"] and closed == [True]


def test_close_leaves_the_map_open_for_a_transaction_that_outlasts_its_wait(
    tmp_path: Path,
) -> None:
    environment = LmdbEnvironment(tmp_path / "env", 1 << 20, ["d"])
    with environment.write() as txn:
        txn.put(b"k", b"value", db=environment.db("d"))
        assert environment.close(wait_s=0.05) is False  # this very transaction is under way
        txn.put(b"k2", b"still mapped", db=environment.db("d"))
    with pytest.raises(StoreClosed):
        environment.env  # noqa: B018 - closed to new work all the same


def test_a_child_forked_while_a_thread_held_the_environments_lock_opens_it(
    tmp_path: Path,
) -> None:
    # The child inherited the lock as held, by a thread it does not have: its first use
    # of the environment (which reopens it under that lock) hung for good.
    environment = environment_holding(tmp_path, b"parent's")
    done_read, done_write = os.pipe()

    def read_in_the_child() -> None:
        with environment.read() as txn:
            os.write(done_write, bytes(txn.get(b"k", db=environment.db("d"))))

    try:  # the lock as a thread of the parent opening the map or checking readers holds it
        assert exit_code_of_child_forked_while_held(environment._lock, read_in_the_child) == 0
        os.close(done_write)
        assert os.read(done_read, 100) == b"parent's"
    finally:
        os.close(done_read)


#: A reader that takes one slot of the table at ``argv[1]`` and waits to be killed.
def test_a_read_begun_for_a_lease_holds_off_close_until_it_ends(tmp_path: Path) -> None:
    # Hot reads begin their transaction outside a with block (a lease may take it);
    # close did not count it, and unmapped the map under the read.
    env = LmdbEnvironment(tmp_path / "env", 1 << 20, ["data"])
    with env.write() as txn:
        txn.put(b"k", b"v", db=env.db("data"))
    txn = env.begin_read()
    assert env.close(wait_s=0.05) is False  # left mapped: a read is under way
    assert bytes(txn.get(b"k", db=env.db("data"))) == b"v"
    with pytest.raises(StoreClosed):
        env.begin_read()
    env.end_read(txn)
    assert env.close(wait_s=0.05) is True


def test_a_write_that_fails_is_not_held_up_by_busy_readers(tmp_path: Path) -> None:
    # With py-lmdb 2.x and 3.x, aborting a write transaction waited until no thread was
    # inside a read's get(), holding LMDB's writer lock all the while: with two threads
    # reading, one failed pin took 13 s, and every put waited behind it.
    env = LmdbEnvironment(tmp_path / "env", 1 << 24, ["data"])
    with env.write() as txn:
        txn.put(b"k", b"v" * 100_000, db=env.db("data"))
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            with env.read() as txn:
                txn.get(b"k", db=env.db("data"))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        started = time.monotonic()
        for _ in range(20):
            with pytest.raises(KeyError), env.write() as txn:
                txn.put(b"other", b"x", db=env.db("data"))
                raise KeyError("a shard that is not there")  # aborts the transaction
        # A deadline for a hang, not a speed goal: each abort takes microseconds.
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    with env.read() as txn:
        assert txn.get(b"other", db=env.db("data")) is None  # every write was undone
    env.close()


_DEAD_READER = """
import sys, time, lmdb
env = lmdb.open(sys.argv[1], max_dbs=4, max_readers=4, readonly=True, lock=True)
txn = env.begin()
print("reading", flush=True)
time.sleep(600)
"""


def test_opening_frees_the_slots_of_readers_that_died_holding_them(tmp_path: Path) -> None:
    # A reader killed inside its transaction (a DataLoader worker, a node's crash) keeps
    # its slot, and the snapshot's pages from the writer, until a reader check: opening
    # the environment makes one. (LMDB resets the table itself only when no process has
    # the environment open: here a local reader still does.)
    env = LmdbEnvironment(tmp_path / "env", 1 << 20, ["data"])
    with env.write() as txn:
        txn.put(b"k", b"v", db=env.db("data"))
    env.close()
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", _DEAD_READER, str(tmp_path / "env")], stdout=subprocess.PIPE
        )
        for _ in range(2)
    ]
    try:
        for reader in readers:
            assert reader.stdout is not None and reader.stdout.readline() == b"reading\n"
        alive, dead = readers
        dead.kill()
        dead.wait()
        reopened = LmdbEnvironment(tmp_path / "env", 1 << 20, ["data"])
        try:
            table = reopened.env.readers().split("\n")[1:]
            pids = [line.split()[0] for line in table if line]
            assert str(alive.pid) in pids and str(dead.pid) not in pids, pids
        finally:
            reopened.close()
    finally:
        for reader in readers:
            reader.kill()
            reader.wait()


def test_a_full_reader_table_frees_dead_readers_slots_or_says_it_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Local readers on the host share the server's reader table. Full of slots that
    # dead readers left, it used to fail every read of the server (and its mover) for good.
    monkeypatch.setattr(lmdb_tier, "MAX_READERS", 4)
    env = LmdbEnvironment(tmp_path / "env", 1 << 20, ["data"])
    with env.write() as txn:
        txn.put(b"k", b"v", db=env.db("data"))
    for _ in range(4):
        reader = subprocess.Popen(
            [sys.executable, "-c", _DEAD_READER, str(tmp_path / "env")], stdout=subprocess.PIPE
        )
        assert reader.stdout is not None and reader.stdout.readline() == b"reading\n"
        reader.kill()
        reader.wait()
    with env.read() as txn:  # the dead readers' slots were freed
        assert bytes(txn.get(b"k", db=env.db("data"))) == b"v"
    for _ in range(3):  # the slots left beside this process's own
        reader = subprocess.Popen(
            [sys.executable, "-c", _DEAD_READER, str(tmp_path / "env")], stdout=subprocess.PIPE
        )
        assert reader.stdout is not None and reader.stdout.readline() == b"reading\n"
        reader.kill()
        reader.wait()
    leased = env.begin_read()  # a read lease's transaction (hot reads) likewise
    env.end_read(leased)
    held = []  # live readers take every slot left (py-lmdb keeps one spare of its own)
    with contextlib.suppress(lmdb.ReadersFullError):
        while len(held) < 4:
            held.append(env.env.begin())
    assert held
    try:
        with pytest.raises(ReaderTableFull, match="reader table"), env.read():
            pass
        with pytest.raises(ReaderTableFull, match="reader table"):
            env.begin_read()  # was a raw lmdb.ReadersFullError
    finally:
        for txn in held:
            txn.abort()
    with env.read() as txn:
        assert bytes(txn.get(b"k", db=env.db("data"))) == b"v"
    env.close()


def _overwrite(env: LmdbEnvironment, times: int, size: int = 100 << 10) -> None:
    """Replace one value ``times`` times: each overwrite frees the pages of the last."""
    for round_ in range(times):
        with env.write() as txn:
            txn.put(b"k", bytes([round_ % 256]) * size, db=env.db("data"))


def killed_reader(path: Path) -> None:
    """A process that opened a snapshot of the environment at ``path``, killed -9."""
    reader = subprocess.Popen(
        [sys.executable, "-c", _DEAD_READER, str(path)], stdout=subprocess.PIPE
    )
    assert reader.stdout is not None and reader.stdout.readline() == b"reading\n"
    reader.kill()
    reader.wait()


def test_a_dead_readers_snapshot_does_not_fill_the_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A local reader killed while it held a snapshot (or a DataLoader worker that
    # exited) kept every page freed after it from reuse until some other local reader
    # came: overwrites filled the map and puts failed HotTierFull for good.
    monkeypatch.setattr(lmdb_tier, "READER_CHECK_INTERVAL_S", 0.0)  # no 5 s wait here
    env = LmdbEnvironment(tmp_path / "env", 1 << 20, ["data"])
    _overwrite(env, 1)
    killed_reader(tmp_path / "env")
    assert len(env.env.readers().splitlines()) > 1  # its slot: the header and one line
    _overwrite(env, 100)  # 10 MB through a 1 MiB map: only if freed pages are reused
    with env.read() as txn:
        assert bytes(txn.get(b"k", db=env.db("data"))) == bytes([99]) * (100 << 10)
    env.close()


def test_a_map_full_under_a_live_snapshot_says_what_holds_the_pages(tmp_path: Path) -> None:
    env = LmdbEnvironment(tmp_path / "env", 1 << 20, ["data"])
    _overwrite(env, 1)
    held = env.env.begin()  # a reader that keeps its zero-copy buffers
    try:
        with pytest.raises(HotTierFull, match="no reader's snapshot shows them"):
            _overwrite(env, 100)
    finally:
        held.abort()
    _overwrite(env, 100)  # let go: the pages are reused again
    env.close()


class _CommitFails:
    """An ``lmdb.Environment`` stand-in whose write transactions fail to commit as a
    full filesystem makes LMDB fail (checked on a 1 MiB tmpfs: a plain lmdb.Error)."""

    def __init__(self, real: object, message: str) -> None:
        self._real, self._message = real, message

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    @contextlib.contextmanager
    def begin(self, write: bool = False) -> Iterator[object]:
        with self._real.begin(write=write) as txn:  # type: ignore[attr-defined]
            yield txn
            if write:
                raise lmdb.Error(self._message)


@pytest.mark.parametrize(
    ("message", "free", "error"),
    [
        ("mdb_txn_commit: Input/output error", 1 << 20, HotTierFull),
        ("mdb_txn_commit: No space left on device", 10 << 30, HotTierFull),
        # An I/O error with room to spare is the disk failing: not "free space on it".
        ("mdb_txn_commit: Input/output error", 10 << 30, Unavailable),
        ("mdb_txn_commit: Operation not permitted", 1 << 20, Unavailable),
    ],
)
def test_a_full_disk_is_hot_tier_full_not_unavailable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    message: str,
    free: int,
    error: type[Exception],
) -> None:
    # A full data disk answered UNAVAILABLE "Input/output error": a status clients retry,
    # and one that reads as a hardware fault.
    disk = os.statvfs(tmp_path)
    fake = os.statvfs_result(
        (*disk[:4], free // disk.f_frsize, *disk[5:])  # f_bavail: blocks free to us
    )
    monkeypatch.setattr(lmdb_tier.os, "statvfs", lambda path: fake)
    env = LmdbEnvironment(tmp_path / "env", 1 << 20, ["data"])
    env._env = _CommitFails(env.env, message)
    with pytest.raises(error) as refused, env.write() as txn:
        txn.put(b"k", b"v", db=env.db("data"))
    if error is HotTierFull:
        assert "its disk is full" in str(refused.value) and message in str(refused.value)
    env.close()


class _CreateFails:
    """An ``lmdb.Environment`` stand-in whose sub-databases cannot be created (the
    commit that creates them fails, as on a full disk)."""

    def __init__(self, real: object) -> None:
        self._real = real
        self.closed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    def open_db(self, *args: object, **kwargs: object) -> object:
        raise lmdb.Error("mdb_txn_commit: Input/output error")

    def close(self) -> None:
        self.closed = True
        self._real.close()  # type: ignore[attr-defined]


def test_a_hot_tier_that_cannot_be_created_on_a_full_disk_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A start on a full disk ended in a raw lmdb.Error traceback.
    disk = os.statvfs(tmp_path)
    full = os.statvfs_result((*disk[:4], 0, *disk[5:]))
    monkeypatch.setattr(lmdb_tier.os, "statvfs", lambda path: full)
    opened: list[_CreateFails] = []
    real_open = lmdb.open

    def open_failing(*args: object, **kwargs: object) -> _CreateFails:
        opened.append(_CreateFails(real_open(*args, **kwargs)))
        return opened[-1]

    monkeypatch.setattr(lmdb_tier.lmdb, "open", open_failing)
    env = LmdbEnvironment(tmp_path / "env", 1 << 20, ["data"])
    with pytest.raises(HotTierFull, match="its disk is full"):
        env.db("data")
    assert opened and opened[0].closed  # the half-opened environment is let go


def _maps(size: int, directory: Path) -> bool:
    """Whether raw LMDB can map ``size`` bytes on this machine."""
    try:
        lmdb.open(str(directory), map_size=size).close()
    except lmdb.MemoryError:
        return False
    return True


def test_a_map_larger_than_this_machine_can_make_is_a_bad_setting_by_name(tmp_path: Path) -> None:
    # `serve --hot-capacity 100000000000000` ended in "Unavailable: cannot open LMDB
    # environment: Cannot allocate memory" (exit 5, as if the disk were away).
    size = 1 << 48  # the most hot_capacity_bytes and map_size_bytes may be
    (tmp_path / "probe").mkdir()
    if _maps(size, tmp_path / "probe"):
        pytest.skip("this machine maps 2**48 bytes (more than 47 bits of address space)")
    env = LmdbEnvironment(tmp_path / "env", size, ["data"])
    with pytest.raises(InvalidArgument, match=r"cannot map 281,474,976,710,656 bytes") as bad:
        env.db("data")
    assert "hot_capacity_bytes" in str(bad.value) and "map_size_bytes" in str(bad.value)


def test_the_environment_is_no_other_users(tmp_path: Path) -> None:
    # LMDB made data.mdb 0644 and its directory 0755: only the data directory's mode
    # kept other users from every plaintext shard in the hot tier.
    old_umask = os.umask(0o022)
    try:
        fresh = LmdbEnvironment(tmp_path / "fresh", 1 << 20, ["data"])
        fresh.db("data")
        fresh.close()
        older = tmp_path / "older"
        raw = lmdb.open(str(older), map_size=1 << 20, mode=0o644)  # as made before
        raw.close()
        older.chmod(0o755)
        again = LmdbEnvironment(older, 1 << 20, ["data"])
        again.db("data")
        again.close()
    finally:
        os.umask(old_umask)
    for directory in (tmp_path / "fresh", older):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o750, directory
        for name in ("data.mdb", "lock.mdb"):
            assert stat.S_IMODE((directory / name).stat().st_mode) == 0o640, name


def test_a_group_keeps_no_write_but_on_the_lock_file(tmp_path: Path) -> None:
    # A `chmod -R 777` of a stopped data directory left hot/ and data.mdb group
    # writable at the next start: a group let read in place could change the map.
    path = tmp_path / "hot"
    made = LmdbEnvironment(path, 1 << 20, ["data"])
    made.db("data")
    made.close()
    for target in (path, path / "data.mdb", path / "lock.mdb"):
        target.chmod(0o777)
    again = LmdbEnvironment(path, 1 << 20, ["data"])
    again.db("data")
    again.close()
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode) for p in (path, path / "data.mdb", path / "lock.mdb")
    }
    assert modes == {"hot": 0o750, "data.mdb": 0o750, "lock.mdb": 0o770}


def test_room_for_counts_the_pages_lmdb_allocated_without_holding_memory(tmp_path: Path) -> None:
    # Every put and promotion asks room_for once; it asked py-lmdb's info(), which
    # keeps about 48 bytes a call for good (py-lmdb 1.8.1): a busy node's puts and
    # promotions grew it by tens of MB a day. The allocated pages now come from the
    # data file's size, which after every commit is LMDB's last page and one.
    import gc
    import tracemalloc

    environment = LmdbEnvironment(tmp_path / "env", 64 << 20, ["frames"])
    try:
        frames = environment.db("frames")
        page = environment.env.stat()["psize"]
        for round_ in range(6):
            with environment.write() as txn:
                for k in range(40):
                    txn.put(f"{round_}-{k}".encode(), os.urandom(3000 * (k % 5 + 1)), db=frames)
                if round_ % 2:  # frees pages for the free list to reuse
                    for k in range(0, 40, 3):
                        txn.delete(f"{round_ - 1}-{k}".encode(), db=frames)
            allocated = environment.env.info()["last_pgno"] + 1
            assert environment.allocated_pages() == allocated
            with environment.write() as txn:  # the free pages it sees: the tail at least
                assert environment.room_for(txn, [])[1] >= (
                    environment.map_size // page - allocated - environment.reserve_pages()
                )
        gc.collect()
        tracemalloc.start()
        try:
            with environment.write() as txn:
                before = tracemalloc.get_traced_memory()[0]
                for _ in range(20_000):
                    environment.room_for(txn, [4096])
                gc.collect()
                grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 256 << 10, grown
    finally:
        environment.close()


def _lock_holder(lock: Path) -> int:
    """The pid of a process holding an fcntl lock on ``lock`` (0: none), as LMDB asks
    when it opens an environment (asked from another process: a process never sees
    its own locks)."""
    code = (
        "import fcntl, os, struct, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
        "r = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 1, 0)); "
        "kind, _, _, _, pid = struct.unpack('hhqqi', r); "
        "print(0 if kind == fcntl.F_UNLCK else pid)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True, text=True)
    return int(done.stdout)


def test_a_forked_child_keeps_the_lock_of_the_environment_it_opens_again(tmp_path: Path) -> None:
    # The inherited py-lmdb handle was let go of in the child, and freeing it closed its
    # descriptor of lock.mdb: POSIX then dropped the child's own environment's lock on
    # the file, and the next process to open the environment would think itself alone
    # (and wipe the reader table under every reader).
    import gc

    environment = LmdbEnvironment(tmp_path / "env", 1 << 24, ["frames"])
    environment.env  # noqa: B018 - opened in the parent
    environment.reader_slots()  # keeps the parent's handle too, as a node's grants do
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            environment.env  # noqa: B018 - opened again in the child
            taken, _ = environment.reader_slots()
            gc.collect()
            os.write(ready_w, b"x")
            os.read(go_r, 1)
            code = 0 if taken >= 0 else 1
        finally:
            os._exit(code)
    os.read(ready_r, 1)
    environment.close()  # the parent lets go of its own
    try:
        assert _lock_holder(environment.path / "lock.mdb") == pid
    finally:
        os.write(go_w, b"x")
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_write_cut_short_by_a_file_size_limit_says_what_may_cut_it(tmp_path: Path) -> None:
    # LMDB reports a short write as an I/O error. With room on the disk it is not
    # DiskFull, and a review's put under `ulimit -f` read only "Input/output error".
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from tierstore.errors import Unavailable\n"
        "from tierstore.tiers.lmdb import LmdbEnvironment\n"
        "env = LmdbEnvironment(Path(sys.argv[1]), 1 << 26, ['data'])\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "try:\n"
        "    with env.write() as txn:\n"
        "        txn.put(b'k', b'x' * (4 << 20), db=env.db('data'))\n"
        "except Unavailable as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "env")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Unavailable hot tier write failed"), done.stdout
    assert "ulimit -f" in done.stdout
