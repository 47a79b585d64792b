"""Tampered storage is DataLoss, never wrong bytes; encrypted data never rests in plaintext.

Each tamper test changes stored bytes behind the store's back (LMDB through the
backdoor helpers, archive objects through a raw boto3 client on the session's
SeaweedFS), then checks that every read touching the damage raises
``IntegrityError`` (a ``DataLoss``), that ``get_into`` leaves its destination all
zeros, that undamaged frames and shards still read, and that the store keeps
working. Every case runs on a plaintext (checksummed) and an encrypted dataset.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import raw_s3_client
from tests.engine.backdoor import (
    catalog_hot_bytes,
    data_file,
    delete_hot_frame,
    flip,
    frames_object_key,
    hot_frames,
    put_hot_frame,
    put_raw_record,
    record_of,
)
from tests.engine.stores import FRAME, KEYRING, OTHER_KEYRING, StoreFactory, payload
from tierstore.engine.records import ShardRecord
from tierstore.engine.store import Store
from tierstore.errors import DataLoss, IntegrityError
from tierstore.frames import FrameSealer, shard_context
from tierstore.tiers.memory import MemoryTier
from tierstore.tiers.s3 import S3Settings, S3Tier
from tierstore.types import DatasetSettings, Durability, ShardKind

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DATASETS = {"plain": DatasetSettings(), "enc": DatasetSettings(encrypted=True)}
FRAMES = 4
DATA = payload(FRAMES * FRAME, seed=77)  # four full frames: any two can swap places
OTHER = payload(FRAMES * FRAME, seed=78)
dataset_kinds = pytest.mark.parametrize("dataset", list(DATASETS))


def assert_data_loss(store: Store, dataset: str, shard: str, good_frames: list[int]) -> None:
    """Reads of the damage fail (zeroing ``out``); reads of ``good_frames`` still succeed."""
    with pytest.raises(IntegrityError) as caught:
        store.get(dataset, shard)
    assert isinstance(caught.value, DataLoss)
    out = bytearray(b"\xaa" * len(DATA))
    with pytest.raises(DataLoss):
        store.get_into(dataset, shard, memoryview(out))
    assert out == bytes(len(DATA)), "a failed read must leave only zeros"
    for index in range(FRAMES):
        if index in good_frames:
            read = store.get(dataset, shard, frame_range=(index, 1))
            assert read.to_bytes() == DATA[index * FRAME : (index + 1) * FRAME]
        else:
            with pytest.raises(IntegrityError):
                store.get(dataset, shard, byte_range=(index * FRAME + 1, 2))


def assert_store_still_works(store: Store, dataset: str, shard: str) -> None:
    assert store.get(dataset, "neighbour").to_bytes() == OTHER
    store.put(dataset, shard, b"a fresh generation")  # replaces the damaged one
    assert store.get(dataset, shard).to_bytes() == b"a fresh generation"
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual


# The hot tier (LMDB).

Tamper = Callable[[Store, str, int, list[bytes]], None]


def flip_payload(store: Store, dataset: str, generation: int, frames: list[bytes]) -> None:
    put_hot_frame(store, generation, 1, flip(frames[1], 100))


def flip_trailer(store: Store, dataset: str, generation: int, frames: list[bytes]) -> None:
    put_hot_frame(store, generation, 1, flip(frames[1], len(frames[1]) - 1))


def swap_frames(store: Store, dataset: str, generation: int, frames: list[bytes]) -> None:
    put_hot_frame(store, generation, 1, frames[2])
    put_hot_frame(store, generation, 2, frames[1])


def drop_last_frame(store: Store, dataset: str, generation: int, frames: list[bytes]) -> None:
    delete_hot_frame(store, generation, FRAMES - 1)


def cut_last_frame(store: Store, dataset: str, generation: int, frames: list[bytes]) -> None:
    put_hot_frame(store, generation, FRAMES - 1, frames[-1][:-5])


def cut_below_trailer(store: Store, dataset: str, generation: int, frames: list[bytes]) -> None:
    put_hot_frame(store, generation, 1, frames[1][:3])  # shorter than a checksum or a tag


def transplant(store: Store, dataset: str, generation: int, frames: list[bytes]) -> None:
    neighbour = hot_frames(store, dataset, "neighbour")[1]
    assert neighbour is not None
    put_hot_frame(store, generation, 1, neighbour)  # a valid frame, of another shard


def misrecord_sizes(store: Store, dataset: str, generation: int, frames: list[bytes]) -> None:
    """The record's sizes of frames 0 and 1 damaged, their sum kept: every frame verifies
    as before, but reads cut frames 0 and 1 where the record says (other bytes)."""
    record = record_of(store, dataset, "victim")
    sizes = (FRAME - 96, FRAME + 96, *record.frame_sizes[2:])
    put_raw_record(store, dataset, "victim", replace(record, frame_sizes=sizes).encode())


HOT_TAMPERS: dict[str, tuple[Tamper, list[int]]] = {
    "flip-payload": (flip_payload, [0, 2, 3]),
    "flip-trailer": (flip_trailer, [0, 2, 3]),
    "swap-frames": (swap_frames, [0, 3]),
    "drop-last-frame": (drop_last_frame, [0, 1, 2]),
    "cut-last-frame": (cut_last_frame, [0, 1, 2]),
    "cut-below-trailer": (cut_below_trailer, [0, 2, 3]),
    "other-shards-frame": (transplant, [0, 2, 3]),
    "sizes-in-record": (misrecord_sizes, [2, 3]),
}


@dataset_kinds
@pytest.mark.parametrize("tamper", list(HOT_TAMPERS))
def test_hot_tamper_is_data_loss(open_store: StoreFactory, dataset: str, tamper: str) -> None:
    store = open_store(datasets=DATASETS)
    info = store.put(dataset, "victim", DATA)
    store.put(dataset, "neighbour", OTHER)
    frames = hot_frames(store, dataset, "victim")
    assert all(frame is not None for frame in frames)
    change, good = HOT_TAMPERS[tamper]
    change(store, dataset, info.generation, [f for f in frames if f is not None])
    assert_data_loss(store, dataset, "victim", good)
    with pytest.raises(IntegrityError):
        list(store.iter_frames(dataset, "victim"))
    assert_store_still_works(store, dataset, "victim")


@dataset_kinds
def test_a_hot_frame_cut_below_its_trailer_is_not_archived_and_stalls_nothing(
    open_store: StoreFactory, dataset: str
) -> None:
    store = open_store(datasets=DATASETS, start_mover=False)
    info = store.put(dataset, "victim", DATA)
    store.put(dataset, "neighbour", OTHER)
    frames = [f for f in hot_frames(store, dataset, "victim") if f is not None]
    cut_below_trailer(store, dataset, info.generation, frames)
    store.mover.drain_once()
    assert store.mover.pending() == 0  # the damaged upload does not hold the journal
    assert [event.split(":")[0] for event in store.stats().data_loss] == [
        f"{dataset}/victim@{info.generation}"
    ]
    assert store.stat(dataset, "neighbour").archived
    assert not store.stat(dataset, "victim").archived


@pytest.mark.parametrize(
    "field, damaged",
    [
        ("nonce_prefix", lambda text: text[:-1] + "9"),  # one bit of its "=": 9 bytes
        ("key_id", lambda text: 1),
    ],
)
def test_a_damaged_key_record_is_data_loss_and_stalls_nothing(
    open_store: StoreFactory, field: str, damaged: Callable[[str], object]
) -> None:
    store = open_store(datasets=DATASETS, start_mover=False)
    store.put("enc", "victim", DATA)
    store.put("enc", "neighbour", OTHER)
    document = json.loads(record_of(store, "enc", "victim").encode())
    document["envelope"][field] = damaged(document["envelope"][field])
    with pytest.raises(IntegrityError):
        ShardRecord.decode(json.dumps(document).encode())
    put_raw_record(store, "enc", "victim", json.dumps(document).encode())
    with pytest.raises(DataLoss):
        store.get("enc", "victim")
    store.mover.drain_once()
    assert store.mover.pending() == 0  # the damaged record's upload holds nothing up
    assert store.stat("enc", "neighbour").archived
    assert [event.split(":")[0] for event in store.stats().data_loss] == ["enc/victim"]


def test_a_record_copied_to_another_datasets_key_is_data_loss_and_hands_out_no_key(
    open_store: StoreFactory,
) -> None:
    # Whoever can write the LMDB file copies a secret dataset's record under a public
    # dataset's key: reads of the public shard served the secret one, and GetShard and
    # the local-read grant handed its data key to a reader of the public dataset.
    store = open_store(
        datasets={"secret": DatasetSettings(encrypted=True), "public": DatasetSettings()}
    )
    store.put("secret", "x", DATA)
    store.put("public", "x", OTHER)
    put_raw_record(store, "public", "x", record_of(store, "secret", "x").encode())
    for read in (
        lambda: store.get("public", "x"),
        lambda: store.open_sealed("public", "x"),
        lambda: store.stat("public", "x"),
        lambda: store.local_reads.data_key(
            "public", "x", record_of(store, "secret", "x").generation
        ),
    ):
        with pytest.raises(IntegrityError, match="copied or moved to this key"):
            read()
    assert store.list("public")[0] == []  # listed as damaged, not as the secret shard
    assert any(event.startswith("public/x:") for event in store.stats().data_loss)
    assert store.get("secret", "x").to_bytes() == DATA


@dataset_kinds
def test_replayed_frame_of_an_older_generation_is_data_loss(
    open_store: StoreFactory, dataset: str
) -> None:
    store = open_store(datasets=DATASETS)
    store.put(dataset, "neighbour", OTHER)
    store.put(dataset, "victim", payload(len(DATA), seed=1))
    old_frame = hot_frames(store, dataset, "victim")[0]
    assert old_frame is not None
    info = store.put(dataset, "victim", DATA)  # same sizes, new generation
    put_hot_frame(store, info.generation, 0, old_frame)
    assert_data_loss(store, dataset, "victim", [1, 2, 3])
    assert_store_still_works(store, dataset, "victim")


@pytest.mark.parametrize("cold", [False, True], ids=["hot", "cold"])
def test_wrong_master_key_is_data_loss(open_store: StoreFactory, cold: bool) -> None:
    archive = MemoryTier()
    store = open_store(archive, KEYRING, datasets=DATASETS)
    store.put("enc", "victim", DATA)
    store.put("plain", "open", OTHER)
    assert store.drain(10)
    if cold:
        store.evict("enc", "victim")
    store = open_store.reopen(store, archive, OTHER_KEYRING)  # same key id "k1", other key
    with pytest.raises(IntegrityError, match="wrong master key"):
        store.get("enc", "victim")
    assert_data_loss(store, "enc", "victim", good_frames=[])
    assert store.get("plain", "open").to_bytes() == OTHER
    store.put("enc", "neighbour", OTHER)  # the wrong key is a working key for new shards
    assert store.get("enc", "neighbour").to_bytes() == OTHER
    store = open_store.reopen(store, archive, KEYRING)
    assert store.get("enc", "victim").to_bytes() == DATA  # nothing was damaged
    with pytest.raises(IntegrityError):
        store.get("enc", "neighbour")


# The archive (SeaweedFS, through a raw boto3 client).


def s3_object(client: S3Client, settings: S3Settings, key: str) -> bytes:
    return client.get_object(Bucket=settings.bucket, Key=settings.prefix + key)["Body"].read()


def s3_put(client: S3Client, settings: S3Settings, key: str, value: bytes) -> None:
    client.put_object(Bucket=settings.bucket, Key=settings.prefix + key, Body=value)


ARCHIVE_TAMPERS: dict[str, tuple[Callable[[bytes, int, bytes], bytes | None], list[int]]] = {
    # (stored object, stored frame size, another shard's object) -> new object (None: delete)
    "flip-byte": (lambda blob, size, other: flip(blob, 2 * size + 7), [0, 1, 3]),
    "swap-frames": (
        lambda blob, size, other: (
            blob[:size] + blob[2 * size : 3 * size] + blob[size : 2 * size] + blob[3 * size :]
        ),
        [0, 3],
    ),
    "drop-last-frame": (lambda blob, size, other: blob[: (FRAMES - 1) * size], [0, 1, 2]),
    "cut-three-bytes": (lambda blob, size, other: blob[:-3], [0, 1, 2]),
    "other-shards-object": (lambda blob, size, other: other, []),
    "object-missing": (lambda blob, size, other: None, []),
}


@dataset_kinds
@pytest.mark.parametrize("tamper", list(ARCHIVE_TAMPERS))
def test_archive_tamper_is_data_loss(
    open_store: StoreFactory, s3_archive: S3Tier, dataset: str, tamper: str
) -> None:
    store = open_store(s3_archive, datasets=DATASETS)
    store.put(dataset, "victim", DATA)
    store.put(dataset, "neighbour", OTHER)
    assert store.drain(30)
    for name in ("victim", "neighbour"):
        assert store.evict(dataset, name) > 0
    settings = s3_archive.settings
    client = raw_s3_client(settings)
    key = frames_object_key(store, dataset, "victim")
    blob = s3_object(client, settings, key)
    other = s3_object(client, settings, frames_object_key(store, dataset, "neighbour"))
    change, good = ARCHIVE_TAMPERS[tamper]
    changed = change(blob, len(blob) // FRAMES, other)
    if changed is None:
        client.delete_object(Bucket=settings.bucket, Key=settings.prefix + key)
    else:
        assert changed != blob
        s3_put(client, settings, key, changed)
    assert_data_loss(store, dataset, "victim", good)
    assert not store.stat(dataset, "victim").hot  # nothing unverified was promoted
    assert_store_still_works(store, dataset, "victim")


def test_a_plaintext_frame_forged_with_a_valid_checksum_is_data_loss(
    open_store: StoreFactory, s3_archive: S3Tier
) -> None:
    # A plaintext frame's checksum is seeded by the frame's public identity, not by a
    # key: whoever may write to the archive (on the embedded archive, any process on
    # the host) replaced a frame with another whose checksum held, and every reader
    # got the forged bytes, promoted into the hot tier too.
    store = open_store(s3_archive, datasets=DATASETS)
    store.put("plain", "victim", DATA)
    store.put("plain", "neighbour", OTHER)
    assert store.drain(30)
    for name in ("victim", "neighbour"):
        assert store.evict("plain", name) > 0
    generation = record_of(store, "plain", "victim").generation
    forger = FrameSealer(shard_context("plain", "victim", generation), FRAMES)
    forged = forger.seal(2, payload(FRAME, seed=99))
    assert bytes(forger.open(2, memoryview(forged))) == payload(FRAME, seed=99)  # it holds
    settings = s3_archive.settings
    client = raw_s3_client(settings)
    key = frames_object_key(store, "plain", "victim")
    blob = s3_object(client, settings, key)
    size = len(blob) // FRAMES
    assert len(forged) == size
    s3_put(client, settings, key, blob[: 2 * size] + forged + blob[3 * size :])
    assert_data_loss(store, "plain", "victim", [0, 1, 3])
    assert not store.stat("plain", "victim").hot  # nothing unverified was promoted
    with pytest.raises(DataLoss, match="other bytes at frame 2 than were uploaded"):
        store.promoter.promote_now(record_of(store, "plain", "victim"), None)
    assert not store.stat("plain", "victim").hot
    assert_store_still_works(store, "plain", "victim")


# Encrypted data never rests in plaintext.

MARKER = b"TIERSTORE-PLAINTEXT-MARKER"


def put_marked_shards(store: Store, dataset: str) -> None:
    """Every kind of shard, each full of the marker, including an overwrite."""
    text = MARKER * (3 * FRAME // len(MARKER))
    store.put(dataset, "raw", text)
    store.put(dataset, "raw", text + b"!")  # a second generation
    store.put(dataset, "table", pa.table({"s": [MARKER.decode() + f" {i}" for i in range(400)]}))
    store.put(dataset, "tensor", np.frombuffer(text, dtype=np.uint8).reshape(-1, len(MARKER)))
    store.put_frames(dataset, "framed", ShardKind.RAW, [MARKER * 10, MARKER * 20])


def archive_objects(tier: S3Tier) -> dict[str, bytes]:
    """Every object under the tier's prefix, read with a raw client."""
    settings = tier.settings
    client = raw_s3_client(settings)
    objects: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=settings.bucket, Prefix=settings.prefix
    ):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=settings.bucket, Key=item["Key"])["Body"].read()
            objects[item["Key"]] = body
    return objects


def lmdb_files(store: Store) -> bytes:
    return data_file(store).read_bytes() + (data_file(store).parent / "lock.mdb").read_bytes()


def test_encrypted_datasets_leave_no_plaintext_at_rest(
    open_store: StoreFactory, s3_settings: S3Settings
) -> None:
    encrypted_archive = S3Tier(s3_settings)
    plaintext_archive = S3Tier(replace(s3_settings, prefix=s3_settings.prefix + "control/"))
    try:
        store = open_store(
            encrypted_archive,
            datasets={
                "enc": DatasetSettings(encrypted=True),
                "wt-enc": DatasetSettings(encrypted=True, durability=Durability.WRITE_THROUGH),
            },
        )
        for dataset in ("enc", "wt-enc"):
            put_marked_shards(store, dataset)
        assert store.drain(30)
        store.evict("enc", "raw")
        assert MARKER in store.get("enc", "raw").to_bytes()  # cold read, then promoted
        # The control: the same shards in a plaintext dataset do leave the marker.
        control = open_store(plaintext_archive, datasets={"plain": DatasetSettings()})
        put_marked_shards(control, "plain")
        assert control.drain(30)
        assert MARKER in lmdb_files(control)
        assert any(MARKER in body for body in archive_objects(plaintext_archive).values())

        objects = {
            key: body
            for key, body in archive_objects(encrypted_archive).items()
            if "/control/" not in key
        }
        assert sum(key.endswith(".frames") for key in objects) == 8  # 4 shards x 2 datasets
        for key, body in objects.items():
            assert MARKER not in body, f"plaintext in archive object {key}"
        assert MARKER not in lmdb_files(store)
        for dataset in ("enc", "wt-enc"):
            assert store.get(dataset, "raw").to_bytes().endswith(b"!")
            assert record_of(store, dataset, "framed").envelope is not None
    finally:
        encrypted_archive.close()
        plaintext_archive.close()
