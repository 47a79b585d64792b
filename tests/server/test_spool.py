"""The put spool (tierstore/server/spool.py): frames back as they came, and what an
encrypted dataset's put leaves on the disk while it is spooled."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tierstore.client.client import Client
from tierstore.errors import DataLoss, IntegrityError
from tierstore.server.spool import FrameSpool, SpoolMemory, _SpoolCipher
from tierstore.v1.common_pb2 import SHARD_KIND_RAW
from tierstore.v1.shards_pb2 import PutShardEnd, PutShardHeader, PutShardRequest

from .conftest import ServerProcess, poll, unique

KiB = 1 << 10
LIMIT = 64 * KiB  # memory limit of the spools here: a few frames spill to the file


def marked_frames(marker: bytes, count: int, size: int = 16 * KiB) -> list[bytes]:
    """``count`` frames of random bytes with ``marker`` at the start of every KiB."""
    block = KiB - len(marker)
    return [b"".join(marker + os.urandom(block) for _ in range(size // KiB)) for _ in range(count)]


def file_bytes(spool: FrameSpool) -> bytes:
    """Everything in the spool's (unlinked) file, read through its descriptor."""
    handle = spool._file  # backdoor: the file has no name left to open
    assert handle is not None
    handle.flush()
    size = os.fstat(handle.fileno()).st_size
    return os.pread(handle.fileno(), size, 0)


@pytest.mark.parametrize("encrypted", [False, True])
def test_frames_come_back_in_order_from_memory_and_file(tmp_path: Path, encrypted: bool) -> None:
    frames = [os.urandom(n) for n in (0, 1, 5 * KiB, 40 * KiB, 0, 33 * KiB, 7)]
    with FrameSpool(tmp_path, LIMIT, encrypted=encrypted) as spool:
        for frame in frames:
            spool.append(frame)
        assert spool._file is not None  # past the limit: spilled
        assert spool.count == len(frames) and spool.nbytes == sum(map(len, frames))
        assert [bytes(view) for view in spool.views()] == frames
        assert [bytes(view) for view in spool.views()] == frames  # again, the same


def test_the_spool_directory_is_private(tmp_path: Path) -> None:
    # A review found it made 0755 under the data directory, whose others are 0700.
    with FrameSpool(tmp_path / "spool", LIMIT, encrypted=False) as spool:
        spool.append(os.urandom(LIMIT + 1))
        assert spool._file is not None
        assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700


def test_a_small_put_stays_in_memory(tmp_path: Path) -> None:
    with FrameSpool(tmp_path / "spool", LIMIT, encrypted=True) as spool:
        spool.append(b"small")
        assert [bytes(view) for view in spool.views()] == [b"small"]
    assert not (tmp_path / "spool").exists()


def test_an_encrypted_spool_never_writes_a_frames_plaintext(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex.encode()
    frames = marked_frames(marker, 12)
    with FrameSpool(tmp_path, LIMIT, encrypted=True) as spool:
        for frame in frames:
            spool.append(frame)
            if spool._file is not None:
                assert marker not in file_bytes(spool)
        stored = file_bytes(spool)
        assert len(stored) == sum(map(len, frames)) + 16 * len(frames)  # a tag per frame
        assert [bytes(view) for view in spool.views()] == frames
        assert marker not in file_bytes(spool)  # reading back wrote nothing


def test_a_plain_spool_writes_frames_as_they_came(tmp_path: Path) -> None:
    # The contrast: a plaintext dataset's spool holds its bytes as they are.
    marker = uuid.uuid4().hex.encode()
    frames = marked_frames(marker, 12)
    with FrameSpool(tmp_path, LIMIT) as spool:
        for frame in frames:
            spool.append(frame)
        assert file_bytes(spool) == b"".join(frames)


@pytest.mark.parametrize("damage", ["flipped bit", "cut short", "frames swapped"])
def test_a_spool_file_changed_on_disk_raises_integrity_error(tmp_path: Path, damage: str) -> None:
    frames = [os.urandom(16 * KiB) for _ in range(8)]
    with FrameSpool(tmp_path, LIMIT, encrypted=True) as spool:
        for frame in frames:
            spool.append(frame)
        assert spool._file is not None
        fd = spool._file.fileno()
        spool._file.flush()
        sealed = 16 * KiB + 16
        if damage == "flipped bit":
            byte = os.pread(fd, 1, 3 * sealed + 100)
            os.pwrite(fd, bytes([byte[0] ^ 1]), 3 * sealed + 100)
        elif damage == "cut short":
            os.ftruncate(fd, 7 * sealed + 10)
        else:
            first, second = os.pread(fd, sealed, 0), os.pread(fd, sealed, sealed)
            os.pwrite(fd, second + first, 0)
        views = spool.views()
        if damage == "flipped bit":  # the frames before the damaged one still open
            assert [bytes(views[index]) for index in range(3)] == frames[:3]
        with pytest.raises(IntegrityError) as raised:
            [bytes(view) for view in views]
        assert isinstance(raised.value, DataLoss)


def test_a_plain_spool_file_cut_short_raises_integrity_error(tmp_path: Path) -> None:
    # Read through a map, a frame past the file's end was SIGBUS, the server's end.
    frames = [os.urandom(16 * KiB) for _ in range(8)]
    with FrameSpool(tmp_path, LIMIT) as spool:
        for frame in frames:
            spool.append(frame)
        assert spool._file is not None
        spool._file.flush()
        os.ftruncate(spool._file.fileno(), 7 * 16 * KiB + 10)
        views = spool.views()
        assert [bytes(views[index]) for index in range(7)] == frames[:7]
        with pytest.raises(IntegrityError, match="cut short"):
            views[7]


def open_files_under(root: Path) -> list[str]:
    """What this process holds open under ``root`` (unlinked files too)."""
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith(str(root)):
                held.append(target)
    return held


@pytest.mark.parametrize("encrypted", [False, True])
def test_close_frees_the_file_and_is_idempotent(tmp_path: Path, encrypted: bool) -> None:
    # A plaintext spool's file was mapped, and a frame still referenced at the close
    # (by a failed put's traceback) kept the map, the file and its space until a
    # garbage collection: a put failing at its commit held its whole size on disk.
    spool = FrameSpool(tmp_path, LIMIT, encrypted=encrypted)
    frames = marked_frames(b"m", 8)
    for frame in frames:
        spool.append(frame)
    views = spool.views()
    kept = views[1]  # asked for before the close, and still referenced after it
    assert spool._file is not None and open_files_under(tmp_path)
    spool.close()
    spool.close()
    assert spool._file is None and spool._cipher is None
    assert open_files_under(tmp_path) == []
    assert bytes(kept) == frames[1]  # a frame asked for before the close stays whole
    with pytest.raises(ValueError):
        views[0]  # a frame not asked for before the close cannot be read after it
    assert list(tmp_path.iterdir()) == []


# End to end: the session server (tests/server/conftest.py), a put streamed by hand so
# that it can be held open while its frames sit in the spool.

MiB = 1 << 20
SPOOLED_FRAMES = 20  # 80 MiB sent before the put is held: past the 64 MiB in memory


def spool_files(server: ServerProcess) -> dict[str, int]:
    """The server's open files under ``<data-dir>/spool`` (unlinked ones too), as
    ``/proc`` paths that open them, with their sizes."""
    spool = str(server.data_dir.resolve() / "spool")
    found = {}
    for fd in Path(f"/proc/{server.pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith(spool):
                found[str(fd)] = os.stat(fd).st_size
    return found


def files_holding(root: Path, marker: bytes) -> list[Path]:
    """Every file under ``root`` with ``marker`` in it."""
    holding = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        with contextlib.suppress(OSError), path.open("rb") as file:
            tail = b""
            while chunk := file.read(8 * MiB):
                if marker in tail + chunk:
                    holding.append(path)
                    break
                tail = chunk[-len(marker) :]
    return holding


@contextlib.contextmanager
def put_held_open(
    server: ServerProcess, dataset: str, chunk: bytes, frames: int
) -> Iterator[grpc.Future]:
    """A put of shard ``big``: ``frames`` copies of ``chunk``, streamed by hand and held
    open once :data:`SPOOLED_FRAMES` are sent (past the spool's memory: in its file)
    for as long as the block runs; yields the put's future, which ends once the rest
    is sent after the block."""
    held, release = threading.Event(), threading.Event()

    def messages() -> Iterator[bytes]:
        yield PutShardRequest(
            header=PutShardHeader(
                dataset=dataset, shard="big", kind=SHARD_KIND_RAW, frame_count=frames
            )
        ).SerializeToString()
        for index in range(frames):
            if index == SPOOLED_FRAMES:
                held.set()
                release.wait(60)
            yield PutShardRequest(frame=chunk).SerializeToString()
        yield PutShardRequest(end=PutShardEnd()).SerializeToString()

    call = server.channel().stream_unary("/tierstore.v1.ShardService/PutShard")
    future = call.future(messages(), metadata=server.metadata, timeout=120)
    try:
        assert held.wait(60), future.exception() if future.done() else "the put is stuck"
        yield future
    finally:
        release.set()


def test_an_encrypted_put_reaches_the_data_disk_only_encrypted(
    server: ServerProcess, admin: Client
) -> None:
    name = unique()
    admin.create_dataset(name, encrypted=True, durability="write-through")
    marker = f"plaintext-{uuid.uuid4().hex}".encode()
    chunk = marked_frames(marker, 1, 4 * MiB)[0]
    frames = SPOOLED_FRAMES + 4
    with put_held_open(server, name, chunk, frames) as future:
        # Every frame past the first 64 MiB is in the file as soon as it arrives.
        spooled = poll(
            lambda: {
                path: size
                for path, size in spool_files(server).items()
                if size >= SPOOLED_FRAMES * len(chunk)
            },
            60,
            "the server to spool the put's first 80 MiB to a file",
        )
        for path in spooled:
            with open(path, "rb") as file:
                plaintext = marker in file.read()
            assert not plaintext, f"the spool file {path} holds the put's plaintext"
        assert files_holding(server.data_dir, marker) == []
    future.result()
    assert admin.get(name, "big").to_pybytes() == chunk * frames
    assert files_holding(server.data_dir, marker) == []
    admin.delete_dataset(name, force=True)


def test_a_put_whose_dataset_was_made_again_encrypted_meanwhile_stores_nothing(
    server: ServerProcess, admin: Client
) -> None:
    # Its frames were spooled in plaintext, as the dataset was when it began, and the put
    # landed in the encrypted dataset made in its place. Refused at its commit, it also
    # kept its spool file, and its 84 MiB, until a garbage collection: its frames were
    # mapped, and the refusal's traceback held them.
    name = unique()
    admin.create_dataset(name, encrypted=False)
    chunk = os.urandom(4 * MiB)
    with put_held_open(server, name, chunk, SPOOLED_FRAMES + 1) as future:
        # Every frame sent is received first: a frame still on its way when the dataset
        # is gone ends the put there (DatasetNotFound), before the commit this tests.
        poll(
            lambda: any(
                size >= SPOOLED_FRAMES * len(chunk) for size in spool_files(server).values()
            ),
            60,
            "the server to receive the frames sent",
        )
        admin.delete_dataset(name, force=True)
        admin.create_dataset(name, encrypted=True)
    with pytest.raises(grpc.RpcError) as refused:
        future.result()
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "made again with encryption" in str(refused.value.details())
    assert admin.list(name) == []
    poll(lambda: spool_files(server) == {}, 30, "the refused put's spool file to be freed")
    admin.delete_dataset(name, force=True)


def test_the_servers_puts_share_their_memory(tmp_path: Path) -> None:
    # Each put may hold LIMIT in memory, but together no more than the server's share:
    # past it, a put's frames go to its file at once, and what a put gives back on
    # spilling or closing is free for the next.
    shared = SpoolMemory(LIMIT + 16 * KiB)
    with FrameSpool(tmp_path, LIMIT, shared=shared) as first:
        for _ in range(4):
            first.append(os.urandom(16 * KiB))
        assert first._file is None and shared.held == LIMIT
        with FrameSpool(tmp_path, LIMIT, shared=shared) as second:
            second.append(os.urandom(16 * KiB))
            assert second._file is None and shared.held == LIMIT + 16 * KiB
            third = FrameSpool(tmp_path, LIMIT, shared=shared)
            third.append(b"x")
            assert third._file is not None  # no memory left to share
            assert [bytes(view) for view in third.views()] == [b"x"]
            third.close()
            first.append(b"past its own limit")  # spills, giving its memory back
            assert first._file is not None and shared.held == 16 * KiB
        assert shared.held == 0


@pytest.mark.parametrize("damage", ["flipped bit", "cut short"])
def test_a_spool_frame_that_fails_its_tag_leaves_only_zeros(damage: str) -> None:
    # AESGCM.decrypt_into leaves the unauthenticated plaintext in its buffer when the tag
    # fails (DESIGN.md, section 5): the spool's frame buffer kept it.
    cipher = _SpoolCipher()
    frame = os.urandom(4 * KiB)
    sealed = bytearray(cipher.seal(2, frame))
    if damage == "flipped bit":
        sealed[-1] ^= 1  # the tag: the plaintext itself decrypts as it was
    else:
        del sealed[-3:]
    out = memoryview(bytearray(len(frame)))
    with pytest.raises(IntegrityError):
        cipher.open_into(2, bytes(sealed), out)
    assert not any(out), "the failed frame's plaintext was left in its buffer"
