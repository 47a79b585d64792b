"""Races between a shard's readers, writers and the background threads, on the same
shard, with real threads, the real LMDB hot tier and the session's SeaweedFS. Each
race is made to happen in one order with what the engine already offers (the archive
hold, a stream read frame by frame), never with sleeps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from tests.conftest import raw_s3_client
from tests.engine.backdoor import frames_object_key, record_of
from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import DATASETS, FRAME, StoreFactory, payload
from tierstore.buffers import BytesLike, value_chunks
from tierstore.crypto import FrameCipher
from tierstore.engine.sealedpath import SealedRead
from tierstore.engine.store import Store
from tierstore.errors import FailedPrecondition, IntegrityError, StoreClosed, Unavailable
from tierstore.frames import FrameSealer, shard_context
from tierstore.tiers.s3 import S3Tier

FRAMES = 4
DATA = payload(FRAMES * FRAME, seed=41)
OTHER = payload(3 * FRAME, seed=43)


def payloads(read: SealedRead) -> Iterator[bytes]:
    """The payload of each frame of a sealed read, opened as a client opens them."""
    cipher = FrameCipher(read.data_key, read.nonce_prefix) if read.data_key else None
    sealer = FrameSealer(read.context, read.frame_count, cipher)
    for index, stored in read.frames():
        out = bytearray(len(stored) - sealer.overhead)
        sealer.open_into(index, memoryview(stored), memoryview(out))
        yield bytes(out)


def change(store: Store, dataset: str, how: str) -> None:
    if how == "overwrite":
        store.put(dataset, "s", OTHER)
    else:
        store.delete(dataset, "s")


@pytest.mark.parametrize("how", ["overwrite", "delete"])
@pytest.mark.parametrize("dataset", ["plain", "enc"])
def test_a_stream_of_a_shard_changed_under_it_before_its_upload_fails_unavailable(
    open_store: StoreFactory, s3_archive: S3Tier, dataset: str, how: str
) -> None:
    store = open_store(s3_archive, datasets=DATASETS)
    store.mover.hold_archive("held by the test")  # the shard is never archived
    store.put(dataset, "s", DATA)
    stream = payloads(store.open_sealed(dataset, "s"))
    assert next(stream) == DATA[:FRAME]
    change(store, dataset, how)  # its frames leave the hot tier, and no tier holds them
    with pytest.raises(Unavailable, match="changed during the read; retry"):
        next(stream)


@pytest.mark.parametrize("how", ["overwrite", "delete"])
@pytest.mark.parametrize("dataset", ["plain", "enc"])
def test_a_stream_of_an_archived_shard_changed_under_it_is_the_old_generation_or_unavailable(
    open_store: StoreFactory, s3_archive: S3Tier, dataset: str, how: str
) -> None:
    store = open_store(s3_archive, datasets=DATASETS)
    store.put(dataset, "s", DATA)
    assert store.drain(30)
    whole = payloads(store.open_sealed(dataset, "s"))
    cut = payloads(store.open_sealed(dataset, "s"))
    first = next(whole)
    assert next(cut) == first == DATA[:FRAME]
    store.mover.hold_archive("held by the test")  # the archive keeps the old generation
    change(store, dataset, how)
    # The rest of the old generation, from the archive: no frame of the new one.
    assert first + b"".join(whole) == DATA
    store.mover.hold_archive(None)
    assert store.drain(30)  # the old generation has left the archive too
    with pytest.raises(Unavailable, match="changed during the read; retry"):
        next(cut)


def test_a_stream_whose_frames_are_archived_and_evicted_under_it_checks_their_digests(
    open_store: StoreFactory, s3_archive: S3Tier
) -> None:
    # A stream opened while its shard was hot and not yet archived, which found the
    # shard archived and evicted by the time it reached a frame, fetched the rest from
    # the archive without checking them against the digests the upload recorded: a
    # frame forged there with a valid checksum (plaintext checksums are no key's) went
    # to the reader, where any other read of the shard fails DataLoss.
    store = open_store(s3_archive, datasets=DATASETS)
    store.mover.hold_archive("held by the test")
    store.put("plain", "s", DATA)
    frames = store.open_sealed("plain", "s").frames()
    assert next(frames)[0] == 0  # read hot, the shard not archived yet
    store.mover.hold_archive(None)
    assert store.drain(30)
    assert store.evict("plain", "s") > 0
    generation = record_of(store, "plain", "s").generation
    forged = FrameSealer(shard_context("plain", "s", generation), FRAMES).seal(
        2, payload(FRAME, seed=99)
    )
    settings = s3_archive.settings
    client = raw_s3_client(settings)
    key = settings.prefix + frames_object_key(store, "plain", "s")
    blob = client.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
    size = len(blob) // FRAMES
    assert len(forged) == size
    client.put_object(
        Bucket=settings.bucket, Key=key, Body=blob[: 2 * size] + forged + blob[3 * size :]
    )
    assert next(frames)[0] == 1  # the archive's copy, as uploaded
    with pytest.raises(IntegrityError, match="other bytes at frame 2 than were uploaded"):
        next(frames)


def read_whole(store: Store) -> None:
    store.get("plain", "s")


def stream_whole(store: Store) -> None:
    for _ in store.open_sealed("plain", "s").frames():
        pass


@pytest.mark.parametrize("read", [read_whole, stream_whole])
def test_a_store_closed_under_a_frozen_archive_read_does_not_wait_for_it(
    open_store: StoreFactory, s3_archive: S3Tier, read: Callable[[Store], None]
) -> None:
    # close() waited for every archive GET of the readers' pool in flight, and ran every
    # one queued behind them (a stream reads 8 frames ahead): with the archive frozen,
    # each GET waits out its read time-out and its retries (5 x 60 s), so a node's stop
    # hung for minutes. The reads it cuts short fail StoreClosed.
    faulty = FaultyTier(s3_archive)
    store = open_store(faulty, datasets=DATASETS)
    store.put("plain", "s", payload(12 * FRAME, seed=42))  # 4 GETs at once, the rest queued
    assert store.drain(30)
    assert store.evict("plain", "s") > 0
    faulty.hold_reads(frames_object_key(store, "plain", "s"))
    failures: list[BaseException] = []

    def reader() -> None:
        try:
            read(store)
        except BaseException as exc:
            failures.append(exc)

    reading = threading.Thread(target=reader)
    reading.start()
    closing = threading.Thread(target=store.close)
    try:
        assert faulty.read_waiting.wait(10)
        closing.start()
        closing.join(20)  # the archive answers only once the close is over
        assert not closing.is_alive(), "close() waits for the frozen archive"
    finally:
        faulty.release_reads()
        reading.join(30)
        if closing.is_alive():
            closing.join(30)
    assert not reading.is_alive()
    assert len(failures) == 1 and isinstance(failures[0], StoreClosed), failures


class FrozenFramesPuts(FaultyTier):
    """Each PUT of a frames object is held once its bytes are read, as by an archive
    that froze while the request was sent, until :attr:`answer` is set."""

    def __init__(self, inner: S3Tier) -> None:
        super().__init__(inner)
        self.sending = threading.Event()
        self.answer = threading.Event()

    def put(self, key: str, value: BytesLike | Iterable[BytesLike]) -> None:
        if not key.endswith(".frames") or self.answer.is_set():
            self.inner.put(key, value)
            return
        data = b"".join(value_chunks(value))
        self.sending.set()
        assert self.answer.wait(30), "the held PUT was never answered"
        self.inner.put(key, data)


def archive_keys(tier: S3Tier) -> set[str]:
    keys: set[str] = set()
    start_after: str | None = None
    while True:
        page = tier.list("", start_after=start_after)
        keys.update(page.keys)
        if page.next_start_after is None:
            return keys
        start_after = page.next_start_after


def test_a_store_closed_under_an_upload_keeps_its_hot_tier_until_the_upload_ends(
    open_store: StoreFactory, s3_archive: S3Tier, tmp_path: Path
) -> None:
    # A store closed while its mover's upload was in a request to a frozen archive (past
    # the stop's 10 s) let go of its hot tier at once. A store opened on it again deleted
    # the shard, the delete reached the archive, and then the old upload was answered and
    # wrote the deleted generation's frames and manifest: a rebuild brought it back.
    frozen = FrozenFramesPuts(s3_archive)
    data_dir = tmp_path / "node"
    store = open_store(frozen, data_dir=data_dir, datasets={"plain": DATASETS["plain"]})
    store.put("plain", "s", DATA)
    assert frozen.sending.wait(10)
    store.close()  # waits 10 s for the mover, in vain
    with pytest.raises(FailedPrecondition, match="open in another store"):
        open_store(s3_archive, data_dir=data_dir)
    frozen.answer.set()
    deadline = time.monotonic() + 30
    while True:
        try:
            again = open_store(s3_archive, data_dir=data_dir)
            break
        except FailedPrecondition:
            assert time.monotonic() < deadline, "the hot tier was never let go"
            time.sleep(0.05)
    again.delete("plain", "s")
    assert again.drain(30)
    assert archive_keys(s3_archive) == {"plain/_dataset.json"}
