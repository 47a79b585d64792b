"""Races between a shard's readers, writers and the background threads, on the same
shard, with real threads, the real LMDB hot tier and the session's SeaweedFS. Each
race is made to happen in one order with what the engine already offers (the archive
hold, a stream read frame by frame), never with sleeps."""

from __future__ import annotations

import pytest

from tests.conftest import raw_s3_client
from tests.engine.backdoor import frames_object_key, record_of
from tests.engine.stores import DATASETS, FRAME, StoreFactory, payload
from tierstore.errors import IntegrityError
from tierstore.frames import FrameSealer, shard_context
from tierstore.tiers.s3 import S3Tier

FRAMES = 4
DATA = payload(FRAMES * FRAME, seed=41)


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
