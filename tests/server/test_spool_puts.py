"""Puts from an encrypted dataset's spool file into a real store: its frames are
decrypted as the engine asks for them (tierstore/server/spool.py), so a large put holds
a few frames' plaintext at a time, and every kind of shard still arrives whole and
checked."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tests.engine.backdoor import hot_frame_counts
from tests.engine.stores import KEYRING, engine_settings
from tierstore import arrowio, tensors
from tierstore.engine.store import Store
from tierstore.errors import IntegrityError, MalformedArrow, ShardNotFound, Unavailable
from tierstore.framing import FramesOnDemand
from tierstore.server import spool as spool_module
from tierstore.server.spool import FrameSpool
from tierstore.tiers.lmdb import LmdbEnvironment
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, ShardKind

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    settings = engine_settings(
        tmp_path / "data",
        hot_capacity_bytes=1 << 30,
        max_frame_bytes=4 * MiB,
        put_chunk_bytes=8 * MiB,
    )
    opened = Store(settings, MemoryTier(), KEYRING, start_mover=False)
    opened.create_dataset("enc", DatasetSettings(encrypted=True))
    yield opened
    opened.close()


def spooled(directory: Path, frames: Iterable[Any], encrypted: bool = True) -> FrameSpool:
    """A spool (encrypted unless told) holding ``frames`` (bytes-like), every one in its
    file."""
    spool = FrameSpool(directory, memory_limit=0, encrypted=encrypted)
    for frame in frames:
        spool.append(bytes(frame))
    return spool


def memory_held() -> int:
    """This process's resident memory backed by no file: heap and anonymous maps,
    shared ones (RssShmem: Python's ``mmap.mmap(-1, n)``) too."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            fields[name] = value
    return sum(int(fields[name].split()[0]) * KiB for name in ("RssAnon", "RssShmem"))


def test_a_large_encrypted_put_holds_a_few_frames_of_plaintext_not_its_size(
    tmp_path: Path, store: Store
) -> None:
    count, size = 48, 4 * MiB  # 192 MiB, staged 8 MiB at a time
    seeds = [os.urandom(16) for _ in range(count)]
    with spooled(tmp_path / "spool", (seed * (size // 16) for seed in seeds)) as spool:
        base = peak = memory_held()  # before views(): they might open every frame at once
        views = spool.views()
        assert isinstance(views, FramesOnDemand) and views.sizes == (size,) * count
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, memory_held())
                done.wait(0.002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            info = store.put_frames("enc", "big", ShardKind.RAW, views)
        finally:
            done.set()
            sampler.join()
        del views
    # Before, the whole put's plaintext was opened into memory first: +192 MiB or more.
    assert peak - base < 96 * MiB, f"the put grew memory by {(peak - base) >> 20} MiB"
    assert info.size == count * size
    for index, frame in enumerate(store.get("enc", "big").frames):
        assert bytes(frame) == seeds[index] * (size // 16), f"frame {index}"


def test_arrow_and_tensor_shards_from_an_encrypted_spool_file_round_trip(
    tmp_path: Path, store: Store
) -> None:
    table = pa.table({"x": np.arange(50_000), "s": [f"row {i}" for i in range(50_000)]})
    with spooled(tmp_path / "a", arrowio.table_to_frames(table, 64 * KiB)) as spool:
        assert len(spool.views()) > 10
        store.put_frames("enc", "table", ShardKind.ARROW, spool.views())
    assert store.read_table("enc", "table").equals(table)
    array = np.arange(300_000, dtype=np.float32).reshape(1000, 300)
    with spooled(tmp_path / "t", tensors.tensor_to_frames(array, 64 * KiB)) as spool:
        info = store.put_frames("enc", "tensor", ShardKind.TENSOR, spool.views())
    assert info.rows == 1000
    stored = tensors.table_to_tensor(store.read_table("enc", "tensor"))
    assert np.array_equal(stored, array)


def test_malformed_arrow_in_an_encrypted_spool_file_is_refused(
    tmp_path: Path, store: Store
) -> None:
    frames = arrowio.table_to_frames(pa.table({"x": np.arange(10_000)}), 16 * KiB)
    broken = [*frames[:3], bytes(len(frames[3])), *frames[4:]]  # frame 3 zeroed
    with spooled(tmp_path / "spool", broken) as spool, pytest.raises(MalformedArrow) as raised:
        store.put_frames("enc", "table", ShardKind.ARROW, spool.views())
    assert "frame 3" in str(raised.value)
    with pytest.raises(ShardNotFound):
        store.stat("enc", "table")


def test_a_spool_file_damaged_under_a_staged_put_fails_it_and_stores_nothing(
    tmp_path: Path, store: Store
) -> None:
    frames = [os.urandom(1 * MiB) for _ in range(24)]  # 24 MiB: three chunks
    with spooled(tmp_path / "spool", frames) as spool:
        assert spool._file is not None
        spool._file.flush()
        at = 20 * (MiB + 16) + 5  # inside frame 20, in the third chunk
        fd = spool._file.fileno()
        os.pwrite(fd, bytes([os.pread(fd, 1, at)[0] ^ 1]), at)
        with pytest.raises(IntegrityError):
            store.put_frames("enc", "damaged", ShardKind.RAW, spool.views())
    with pytest.raises(ShardNotFound):
        store.stat("enc", "damaged")
    assert hot_frame_counts(store) == {}  # the staged chunks were dropped


@pytest.mark.parametrize("failing_read", [1, 5])  # the first validation pass, the decoding one
def test_a_spool_file_that_cannot_be_read_fails_the_put_unavailable_not_malformed(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch, failing_read: int
) -> None:
    # A disk error is the server's trouble, to retry, never "your Arrow is malformed".
    frames = arrowio.table_to_frames(pa.table({"x": np.arange(10_000)}), 16 * KiB)
    reads = 0
    pread = os.pread

    def failing(fd: int, length: int, offset: int) -> bytes:
        nonlocal reads
        reads += 1
        if reads == failing_read:
            raise OSError(errno.EIO, "Input/output error")
        return pread(fd, length, offset)

    with spooled(tmp_path / "spool", frames) as spool:
        monkeypatch.setattr(spool_module.os, "pread", failing)
        with pytest.raises(Unavailable, match="could not be read back") as raised:
            store.put_frames("enc", "table", ShardKind.ARROW, spool.views())
    assert not isinstance(raised.value, MalformedArrow)
    with pytest.raises(ShardNotFound):
        store.stat("enc", "table")


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plaintext"])
def test_a_put_of_one_chunk_is_decrypted_before_its_transaction_holds_the_writer(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch, encrypted: bool
) -> None:
    # Reading and decrypting a frame from the spool file inside the transaction would
    # keep every other put waiting on the disk and on AES for it. A plaintext frame is
    # a copy: read there, a frame at a time, as LMDB takes it (read whole before, a
    # put's frames were memory no spool limit counted, while it waited for the writer).
    writing: set[int] = set()  # threads inside a write transaction
    asked_while_writing: list[int] = []
    write, frame = LmdbEnvironment.write, spool_module._SpooledFrames.frame

    @contextlib.contextmanager
    def watched_write(env: LmdbEnvironment) -> Iterator[Any]:
        writing.add(threading.get_ident())
        try:
            with write(env) as txn:
                yield txn
        finally:
            writing.discard(threading.get_ident())

    def watched_frame(frames: Any, index: int) -> memoryview:
        if threading.get_ident() in writing:
            asked_while_writing.append(index)
        return frame(frames, index)

    monkeypatch.setattr(LmdbEnvironment, "write", watched_write)
    monkeypatch.setattr(spool_module._SpooledFrames, "frame", watched_frame)
    frames = [os.urandom(1 * MiB) for _ in range(6)]  # 6 MiB: under the 8 MiB chunk
    dataset = "enc" if encrypted else "plain"
    store.create_dataset("plain", DatasetSettings())
    with spooled(tmp_path / "spool", frames, encrypted) as spool:
        store.put_frames(dataset, "small", ShardKind.RAW, spool.views())
    inside = sorted(set(asked_while_writing))
    assert inside == ([] if encrypted else list(range(len(frames))))
    assert store.get(dataset, "small").to_bytes() == b"".join(frames)
