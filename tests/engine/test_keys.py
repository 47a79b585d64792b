"""Master keys: an unknown key id, no keyring at all, and key rotation.

A wrong master key under the right key id is a tamper case (DataLoss): see
test_tamper.py.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.engine.backdoor import (
    catalog_hot_bytes,
    hot_frames,
    put_raw_record,
    record_of,
    set_note,
)
from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import (
    DATASETS,
    FRAME,
    KEY_1,
    KEY_2,
    KEYRING,
    OTHER_KEYRING,
    StoreFactory,
    payload,
    wait_until,
)
from tests.engine.test_store import both_generations_archived, damage_archived_frames
from tierstore.crypto import LocalKeyring, MasterKeyProvider
from tierstore.engine import masterkeys
from tierstore.engine.catalog import Catalog
from tierstore.engine.records import (
    Envelope,
    JournalOp,
    ShardRecord,
    archive_frames_key,
    archive_manifest_key,
)
from tierstore.engine.sealing import ShardSealers
from tierstore.engine.store import Store
from tierstore.errors import (
    EncryptionUnavailable,
    KeyRotationRefused,
    KeyUnwrapError,
    UnknownKeyId,
)
from tierstore.frames import FrameSealer, shard_context
from tierstore.tiers.lmdb import DiskFull
from tierstore.tiers.memory import MemoryTier
from tierstore.tiers.s3 import S3Tier
from tierstore.types import DatasetSettings, Durability, WrappedKey

KEY_3 = os.urandom(32)


def archive_keys(archive: MemoryTier) -> set[str]:
    return set(archive.list(limit=100_000).keys)


def test_unknown_key_id_and_missing_keyring(open_store: StoreFactory, archive: MemoryTier) -> None:
    store = open_store(archive, datasets=DATASETS)
    data = payload(FRAME + 1)
    store.put("enc", "secret", data)
    store.put("plain", "open", b"plain")
    store = open_store.reopen(store, archive, LocalKeyring(keys={"k9": KEY_2}, current="k9"))
    with pytest.raises(UnknownKeyId, match="'k1'"):
        store.get("enc", "secret")
    out = bytearray(b"\xaa" * 8)
    with pytest.raises(UnknownKeyId):
        store.get_into("enc", "secret", memoryview(out))
    assert out == b"\xaa" * 8  # nothing was read, so nothing was written
    with pytest.raises(UnknownKeyId):
        store.rotate_master_key()
    store = open_store.reopen(store, archive, None)
    with pytest.raises(EncryptionUnavailable):
        store.get("enc", "secret")
    with pytest.raises(EncryptionUnavailable):
        store.put("enc", "new", b"x")
    with pytest.raises(EncryptionUnavailable):
        store.rotate_master_key()
    # Encrypted is the clients' default: the refusal says how to have a plaintext one.
    with pytest.raises(EncryptionUnavailable, match="--no-encrypted"):
        store.create_dataset("enc2", DatasetSettings(encrypted=True))
    assert store.get("plain", "open").to_bytes() == b"plain"
    store = open_store.reopen(store, archive, KEYRING)
    assert store.get("enc", "secret").to_bytes() == data


@pytest.mark.parametrize("keyring", ["none", "unknown-id", "wrong-key"])
def test_shards_whose_key_does_not_unwrap_can_still_be_managed(
    open_store: StoreFactory, archive: MemoryTier, keyring: str
) -> None:
    # Deleting, evicting or overwriting a shard needs no data key: a lost master key
    # must not make encrypted shards impossible to remove.
    store = open_store(archive, datasets=DATASETS)
    for name in ("deleted", "evicted", "overwritten"):
        store.put("enc", name, payload(2 * FRAME, 1))
    assert store.drain(10)
    rings = {
        "none": None,
        "unknown-id": LocalKeyring(keys={"k9": KEY_2}, current="k9"),
        "wrong-key": LocalKeyring(keys={"k1": KEY_2}, current="k1"),
    }
    store = open_store.reopen(store, archive, rings[keyring])
    store.delete("enc", "deleted")
    assert store.evict("enc", "evicted") == 2 * (FRAME + 16)
    if keyring != "none":
        store.put("enc", "overwritten", b"new")
        assert store.get("enc", "overwritten").to_bytes() == b"new"
    else:
        store.delete("enc", "overwritten")
    assert store.drain(10)
    remaining = ["evicted"] if keyring == "none" else ["evicted", "overwritten"]
    assert [info.name for info in store.list("enc")[0]] == remaining
    counter, actual = catalog_hot_bytes(store)
    assert counter == actual


@pytest.mark.parametrize("batch", [2, 1000])
def test_key_rotation_rewraps_keys_and_never_frames(
    open_store: StoreFactory, archive: MemoryTier, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    # In batches of 2 the encrypted dataset's three shards take two transactions.
    monkeypatch.setattr(masterkeys, "ROTATION_BATCH", batch)
    store = open_store(archive, datasets=DATASETS)
    contents = {
        ("enc", "a"): payload(3 * FRAME, 1),
        ("enc", "b/c"): payload(10, 2),
        ("wt-enc", "d"): payload(2 * FRAME + 1, 3),
        ("plain", "e"): payload(FRAME, 4),
    }
    for (dataset, name), data in contents.items():
        store.put(dataset, name, data)
    store.put("enc", "evicted", payload(FRAME * 2, 5))
    contents[("enc", "evicted")] = payload(FRAME * 2, 5)
    assert store.drain(10)
    store.evict("enc", "evicted")
    frames_before = {key: hot_frames(store, *key) for key in contents}
    objects_before = {key: bytes(archive.get(key) or b"") for key in archive_keys(archive)}

    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    assert store.rotate_master_key(both) == 4  # the encrypted generations
    assert store.rotate_master_key() == 0  # nothing left under k1
    assert store.drain(10)
    assert {key: hot_frames(store, *key) for key in contents} == frames_before
    for key, before in objects_before.items():
        after = bytes(archive.get(key) or b"")
        if key.endswith(".frames"):
            assert after == before, f"{key} changed in a rotation"
            continue
        # Every metadata object is sealed anew under k2, plaintext datasets' too, so
        # that k1 can be retired; encrypted manifests carry rewrapped data keys.
        assert json.loads(before)["seal"]["key_id"] == "k1", key
        assert json.loads(after)["seal"]["key_id"] == "k2", key
        if key.endswith(".manifest"):
            manifest = ShardRecord.decode(after)
            if manifest.dataset != "plain":
                assert manifest.envelope is not None and manifest.envelope.wrapped.key_id == "k2"

    only_new = LocalKeyring(keys={"k2": KEY_2}, current="k2")
    store = open_store.reopen(store, archive, only_new)
    for (dataset, name), data in contents.items():
        assert store.get(dataset, name).to_bytes() == data
        store.evict(dataset, name)
        assert store.get(dataset, name).to_bytes() == data
    envelope = record_of(store, "enc", "a").envelope
    assert envelope is not None and envelope.wrapped.key_id == "k2"
    # The manifests alone (a catalog rebuilt from the archive) open with the new key only.
    rebuilt = open_store(archive, only_new)
    assert rebuilt.rebuild_from_archive() == len(contents)
    for (dataset, name), data in contents.items():
        assert rebuilt.get(dataset, name).to_bytes() == data


def test_a_rotation_that_changes_nothing_leaves_the_journal_alone(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = open_store(archive, datasets=DATASETS, start_mover=False)
    for index, dataset in enumerate(DATASETS):
        store.put(dataset, "s", payload(FRAME, index))
    before = store.mover.pending()
    # The first rotation reseals: a manifest rewrite per shard, a dataset object each.
    assert store.rotate_master_key() == 0
    assert store.mover.pending() == before + 2 * len(DATASETS)
    assert store.rotate_master_key() == 0
    assert store.mover.pending() == before + 2 * len(DATASETS)
    # A new current key: everything is resealed again.
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    assert store.rotate_master_key(both) == 2  # the encrypted shards
    assert store.mover.pending() == before + 4 * len(DATASETS)


def test_a_write_through_put_leaves_other_shards_entries_to_the_mover(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # The put uploads its dataset's settings object and its own shard's earlier
    # entries first, not the rewrites a rotation queued for every other shard.
    store = open_store(archive, start_mover=False)
    store.create_dataset("wt", DatasetSettings(durability=Durability.WRITE_THROUGH))
    for index in range(5):
        assert store.put("wt", f"t{index}", payload(FRAME, index)).archived
    assert store.mover.pending() == 0
    store.rotate_master_key()
    assert store.mover.pending() == 6
    assert store.put("wt", "s", payload(FRAME, 9)).archived
    assert store.mover.pending() == 5


def test_concurrent_rotations_of_a_store_run_one_at_a_time(
    open_store: StoreFactory, archive: MemoryTier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small batches give interleaved rotations many chances to split the work; run one
    # at a time, the first rewraps every shard and the others find nothing left.
    monkeypatch.setattr(masterkeys, "ROTATION_BATCH", 2)
    store = open_store(archive, datasets=DATASETS, start_mover=False)
    for index in range(40):
        store.put("enc", f"s{index:02d}", payload(10, index))
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    barrier = threading.Barrier(4)

    def rotate() -> int:
        barrier.wait(timeout=10)
        return store.rotate_master_key(both)

    with ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(rotate) for _ in range(4)]
        assert sorted(call.result(timeout=60) for call in calls) == [0, 0, 0, 40]


def test_a_rotation_to_a_keyring_without_the_old_keys_is_refused(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # Switched to first, such a keyring once left every encrypted shard unreadable (and
    # the rotation stuck on its first one) until a restart with the old keyring.
    store = open_store(archive, datasets=DATASETS)
    store.put("plain", "p", payload(FRAME, 1))
    store.put("enc", "a", payload(FRAME, 2))
    only_new = LocalKeyring(keys={"k2": KEY_2}, current="k2")
    with pytest.raises(
        KeyRotationRefused, match="cannot unwrap the data keys that master key 'k1'"
    ):
        store.rotate_master_key(only_new)
    assert store.master_key_id == "k1"
    assert store.get("enc", "a").to_bytes() == payload(FRAME, 2)
    # A keyring holding k1 under the wrong bytes is refused too.
    wrong = LocalKeyring(keys={"k1": KEY_2, "k2": KEY_2}, current="k2")
    with pytest.raises(KeyRotationRefused):
        store.rotate_master_key(wrong)
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    assert store.rotate_master_key(both) == 1
    assert store.rotate_master_key(only_new) == 0  # nothing under k1 any more
    assert store.get("enc", "a").to_bytes() == payload(FRAME, 2)


class CountingKeyring:
    """A keyring that counts its unwraps."""

    def __init__(self, inner: LocalKeyring) -> None:
        self.inner = inner
        self.unwraps = 0

    @property
    def current_key_id(self) -> str:
        return self.inner.current_key_id

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        return self.inner.wrap(data_key, context)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        self.unwraps += 1
        return self.inner.unwrap(wrapped, context)


@pytest.mark.parametrize(
    ("keyring", "error"),
    [
        (OTHER_KEYRING, KeyUnwrapError),  # the wrong key under the right id
        (LocalKeyring(keys={"k9": KEY_2}, current="k9"), UnknownKeyId),
        (None, EncryptionUnavailable),
    ],
    ids=["wrong-key", "unknown-id", "none"],
)
def test_master_key_failure_names_a_key_id_whose_data_keys_do_not_unwrap(
    open_store: StoreFactory,
    archive: MemoryTier,
    keyring: LocalKeyring | None,
    error: type[Exception],
) -> None:
    store = open_store(archive, datasets=DATASETS, start_mover=False)
    store.put("plain", "p", payload(10))
    for index in range(3):
        store.put("enc", f"s{index}", payload(10, index))
    assert store.master_key_failure() is None
    store = open_store.reopen(store, archive, keyring, start_mover=False)
    failure = store.master_key_failure()
    assert failure is not None
    assert failure.key_id == "k1" and failure.shard == "enc/s0"
    assert isinstance(failure.error, error)


def test_master_key_failure_unwraps_one_data_key_per_key_id_that_fits(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = open_store(archive, datasets=DATASETS, start_mover=False)
    for index in range(20):
        store.put("enc", f"a{index:02d}", payload(10, index))
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    store = open_store.reopen(store, archive, both, start_mover=False)
    for index in range(20):
        store.put("wt-enc", f"b{index:02d}", payload(10, index))
    counting = CountingKeyring(both)
    store = open_store.reopen(store, archive, counting, start_mover=False)  # type: ignore[arg-type]
    assert store.master_key_failure() is None
    assert counting.unwraps == 2
    # One damaged key record under k1 is not taken for a wrong key: the next proves k1.
    first = record_of(store, "enc", "a00")
    assert first.envelope is not None
    damaged = Envelope(WrappedKey("k1", bytes(60)), first.envelope.nonce_prefix)
    put_raw_record(store, "enc", "a00", first.with_state(envelope=damaged).encode())
    counting.unwraps = 0
    assert store.master_key_failure() is None
    assert counting.unwraps == 3


def test_a_key_file_rotation_the_store_refuses_leaves_the_file_as_it_was(
    open_store: StoreFactory, archive: MemoryTier, tmp_path: Path
) -> None:
    # A store checks the rotated keyring before the file is written: a refused
    # rotation used to leave a new current key in the file all the same.
    store = open_store(archive, datasets=DATASETS, start_mover=False)
    store.put("enc", "a", payload(10))
    path = tmp_path / "master.keys"
    running = LocalKeyring.generate_file(path)  # a k1 other than the store's own
    before = path.read_bytes()
    with pytest.raises(KeyRotationRefused, match="master key 'k1'"):
        running.rotated_file(path, store.check_keyring)
    assert path.read_bytes() == before
    assert store.get("enc", "a").to_bytes() == payload(10)


def test_retiring_a_key_a_cut_short_rotation_left_in_use_says_to_rotate(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # A node killed during RotateKeys, once the key file held the new key: it restarts
    # with k2 current and its data keys still under k1 (before its start resumes the
    # rotation). The refusal said "it must hold the old keys until the rotation has
    # rewrapped them", naming no shard and no way out.
    store = open_store(archive, datasets=DATASETS)
    data = payload(2 * FRAME, 21)
    store.put("enc", "a", data)
    assert store.drain(10)
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    store = open_store.reopen(store, archive, both, start_mover=False)
    only_new = LocalKeyring(keys={"k2": KEY_2}, current="k2")
    with pytest.raises(KeyRotationRefused) as refused:
        store.check_key_retirement("k1", only_new)
    assert "enc/a" in str(refused.value)
    assert "tierstore keys rotate" in str(refused.value)
    assert "until the rotation has rewrapped" not in str(refused.value)
    # Doing what it says makes the key retirable, and nothing is lost.
    assert store.rotate_master_key() == 1
    store.start_background()
    assert store.drain(10)
    store.check_key_retirement("k1", only_new)
    store = open_store.reopen(store, archive, only_new)
    store.evict("enc", "a")
    assert store.get("enc", "a").to_bytes() == data
    assert open_store(archive, only_new).rebuild_from_archive() == 1


def test_a_pin_whose_promotion_fetches_while_its_key_is_rotated_and_retired_turns_hot(
    open_store: StoreFactory,
) -> None:
    # The promotion verified each fetched frame by unwrapping the data key of the record
    # it had read before the rotation: with k1 retired meanwhile, that failed
    # (UnknownKeyId), the promotion was dropped, and the pinned shard stayed cold.
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets=DATASETS)
    data = payload(3 * FRAME, 31)
    store.put("enc", "a", data)
    assert store.drain(10)
    assert store.evict("enc", "a") > 0
    frames = archive_frames_key("enc", record_of(store, "enc", "a").generation)
    archive.hold_reads(frames, threads_named="tierstore-promote")
    store.pin("enc", "a")
    assert archive.read_waiting.wait(10), "the pin's promotion never fetched"
    store.rotate_master_key(LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2"))
    assert store.drain(10)
    only_new = LocalKeyring(keys={"k2": KEY_2}, current="k2")
    store.check_key_retirement("k1", only_new)
    store.use_retired_keys("k1", only_new)  # what `tierstore keys retire` does next
    archive.release_reads()
    wait_until(lambda: store.promoter.promotions_pending() == 0, "the promotion to end")
    wait_until(lambda: store.stat("enc", "a").hot, "the pinned shard to turn hot")
    assert store.get("enc", "a").to_bytes() == data


def test_one_damaged_data_key_record_neither_stops_a_rotation_nor_lets_its_key_retire(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # A data key record damaged on disk (its blob no longer authenticates) stopped the
    # rotation at its batch, every time, naming no shard: no other shard of the batch or
    # after it was rewrapped, and the old key could never be retired.
    store = open_store(archive, datasets=DATASETS)
    contents = {name: payload(FRAME + index, index) for index, name in enumerate("abc")}
    for name, data in contents.items():
        store.put("enc", name, data)
    assert store.drain(10)
    damaged = record_of(store, "enc", "b")
    assert damaged.envelope is not None
    blob = bytearray(damaged.envelope.wrapped.blob)
    blob[20] ^= 1
    envelope = Envelope(WrappedKey("k1", bytes(blob)), damaged.envelope.nonce_prefix)
    put_raw_record(store, "enc", "b", damaged.with_state(envelope=envelope).encode())
    manifest_before = archive.get(archive_manifest_key("enc", damaged.generation))
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    assert store.rotate_master_key(both) == 2
    assert store.drain(10)
    for name in "ac":
        envelope_now = record_of(store, "enc", name).envelope
        assert envelope_now is not None and envelope_now.wrapped.key_id == "k2"
    # The archive's copy of b's key is left as it was, not replaced by the damaged one.
    assert archive.get(archive_manifest_key("enc", damaged.generation)) == manifest_before
    # A later rotation is not refused over it either ("the new keyring cannot unwrap"):
    # the keyring in use cannot unwrap it.
    key_3 = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2, "k3": KEY_3}, current="k3")
    assert store.rotate_master_key(key_3) == 2
    assert store.drain(10)
    only_new = LocalKeyring(keys={"k3": KEY_3}, current="k3")
    store.check_key_retirement("k2", LocalKeyring(keys={"k1": KEY_1, "k3": KEY_3}, current="k3"))
    with pytest.raises(KeyRotationRefused, match="enc/b") as refused:
        store.check_key_retirement("k1", only_new)
    assert "tierstore rm" in str(refused.value)
    store.delete("enc", "b")
    assert store.drain(10)
    store.check_key_retirement("k1", only_new)
    store = open_store.reopen(store, archive, only_new)
    for name in "ac":
        assert store.get("enc", name).to_bytes() == contents[name]


def test_a_rotation_a_restart_cut_short_resumes_at_start(
    open_store: StoreFactory, s3_archive: S3Tier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A node stopped during RotateKeys (between two batches) restarted with k2 current
    # and most data keys still under k1, and nothing rewrapped them: k1 could not be
    # retired until an operator rotated again (adding yet another key).
    shards = {f"s{i:03d}": payload(300 + i, i) for i in range(240)}
    store = open_store(s3_archive, datasets={"enc": DatasetSettings(encrypted=True)})
    for name, data in shards.items():
        store.put("enc", name, data)
    assert store.drain(60)
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    with monkeypatch.context() as patched:
        patched.setattr(masterkeys, "ROTATION_BATCH", 20)
        rotate_cut_short(store, both, 50, patched)
    assert {key_id_of(store, name) for name in shards} == {"k1", "k2"}

    store = open_store.reopen(store, s3_archive, both)
    wait_until(
        lambda: all(key_id_of(store, name) == "k2" for name in shards),
        "the rotation to resume",
        timeout=60,
    )
    assert store.drain(60)
    only_new = LocalKeyring(keys={"k2": KEY_2}, current="k2")
    store.check_key_retirement("k1", only_new)
    store = open_store.reopen(store, s3_archive, only_new)
    for name, data in shards.items():
        store.evict("enc", name)
        assert store.get("enc", name).to_bytes() == data
    rebuilt = open_store(s3_archive, only_new)
    assert rebuilt.rebuild_from_archive() == len(shards)
    for name, data in shards.items():
        assert rebuilt.get("enc", name).to_bytes() == data


def test_a_rotation_cut_short_after_its_last_data_key_still_resumes_at_start(
    open_store: StoreFactory, archive: MemoryTier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A node killed during a rotation once every data key was rewrapped, before the
    # plaintext dataset's manifests and dataset object were resealed (datasets go in
    # name order: enc, then plain): the start looked only for data keys under the old
    # key, found none and resumed nothing, so k1 sealed half the archive and could
    # not be retired until an operator rotated again (adding yet another key).
    shards = {f"s{i:02d}": payload(300 + i, i) for i in range(6)}
    datasets = {"enc": DatasetSettings(encrypted=True), "plain": DatasetSettings()}
    store = open_store(archive, datasets=datasets)
    for dataset in datasets:
        for name, data in shards.items():
            store.put(dataset, name, data)
    assert store.drain(10)
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    with monkeypatch.context() as patched:
        rotate_cut_short(store, both, len(shards), patched)  # the first plain record
    assert {key_id_of(store, name) for name in shards} == {"k2"}

    store = open_store.reopen(store, archive, both)
    only_new = LocalKeyring(keys={"k2": KEY_2}, current="k2")
    wait_until_retirable(store, "k1", only_new)
    store.close()
    rebuilt = open_store(archive, only_new)
    assert rebuilt.rebuild_from_archive() == 2 * len(shards)
    for dataset in datasets:
        for name, data in shards.items():
            assert rebuilt.get(dataset, name).to_bytes() == data


@pytest.mark.parametrize("meanwhile", ["nothing", "rotation", "rebuild"])
def test_a_node_killed_between_its_key_file_rotation_and_the_store_s_resumes_at_start(
    open_store: StoreFactory, archive: MemoryTier, tmp_path: Path, meanwhile: str
) -> None:
    # `tierstore keys rotate` writes the key file (after the store checked the new
    # keyring), then rotates the store. Killed in between, a node of plaintext
    # datasets restarted with k2 current, its archive all sealed under k1 and no data
    # key to tell it a rotation was cut short: nothing was resumed, and k1 was refused
    # retirement until an operator rotated again. The check now leaves a note; it was
    # the note of a rotation under way too, which a rotation under the old key run
    # between the check and the key file (the start's resumption of one cut short,
    # say) cleared as it finished. A rebuild from the archive, run between the check
    # and the key file on a new node, cleared it too (with the notes about the catalog
    # it replaced, though this one is about the key file).
    path = tmp_path / "master.keys"
    keyring = LocalKeyring.generate_file(path)
    store = open_store(archive, keyring, datasets={"plain": DatasetSettings()})
    for i in range(3):
        store.put("plain", f"s{i}", payload(300 + i, i))
    assert store.drain(10)
    if meanwhile == "rebuild":  # a new node, to rebuild from the archive
        store.close()
        store = open_store(archive, keyring)

    def check(new: MasterKeyProvider) -> None:
        store.check_keyring(new)
        if meanwhile == "rotation":
            store.rotate_master_key()
        elif meanwhile == "rebuild":
            assert store.rebuild_from_archive() == 3

    rotated = keyring.rotated_file(path, check)  # then the kill
    store.close()

    store = open_store.reopen(store, archive, LocalKeyring.from_file(path))
    only_new = LocalKeyring({rotated.current: rotated.keys[rotated.current]}, rotated.current)
    wait_until_retirable(store, keyring.current, only_new)
    store.close()
    rebuilt = open_store(archive, only_new)
    assert rebuilt.rebuild_from_archive() == 3
    for i in range(3):
        assert rebuilt.get("plain", f"s{i}").to_bytes() == payload(300 + i, i)


def wait_until_retirable(store: Store, key_id: str, left: LocalKeyring) -> None:
    """Poll until ``store`` lets ``key_id`` be retired, ``left`` being the keys left: a
    start's resumption of a rotation cut short, and the mover's reseals, are done."""

    def retirable() -> bool:
        try:
            store.check_key_retirement(key_id, left)
        except KeyRotationRefused:
            return False
        return True

    wait_until(retirable, f"{key_id} to be retirable: the rotation resumed, the archive resealed")


def rotate_cut_short(
    store: Store, keyring: LocalKeyring, rewraps: int, patched: pytest.MonkeyPatch
) -> None:
    """Rotate ``store`` to ``keyring``, the node stopping after ``rewraps`` data keys."""
    real = ShardSealers.rewrapped
    calls = iter(range(rewraps))

    def stopping(sealers: ShardSealers, record: ShardRecord) -> ShardRecord | None:
        if next(calls, None) is None:
            raise RuntimeError("the node stops here")
        return real(sealers, record)

    patched.setattr(ShardSealers, "rewrapped", stopping)
    with pytest.raises(RuntimeError):
        store.rotate_master_key(keyring)


def key_id_of(store: Store, name: str, dataset: str = "enc") -> str:
    envelope = record_of(store, dataset, name).envelope
    assert envelope is not None
    return envelope.wrapped.key_id


@pytest.mark.parametrize("read", ["get", "cold-get", "iter-frames", "open-sealed", "data-key"])
def test_a_read_of_a_record_from_before_a_rotation_and_retirement_succeeds(
    open_store: StoreFactory, archive: MemoryTier, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    # A read that had loaded the shard's record (its data key under k1) when a rotation
    # rewrapped that key under k2 and k1 was retired failed once with UnknownKeyId,
    # for a healthy shard. The hook runs both between the read's record and its unwrap.
    store = open_store(archive, datasets=DATASETS)
    data = payload(2 * FRAME + 5, 41)
    store.put("enc", "a", data)
    assert store.drain(10)
    if read == "cold-get":
        assert store.evict("enc", "a") > 0
    generation = record_of(store, "enc", "a").generation
    only_new = LocalKeyring(keys={"k2": KEY_2}, current="k2")

    def rotate_and_retire() -> None:
        store.rotate_master_key(LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2"))
        assert store.drain(10)
        store.check_key_retirement("k1", only_new)
        store.use_retired_keys("k1", only_new)  # what `tierstore keys retire` does next

    real = ShardSealers.sealer
    reader = threading.get_ident()
    done: list[bool] = []

    def rotated_first(
        sealers: ShardSealers, record: ShardRecord, data_key: bytes | None = None
    ) -> FrameSealer:
        if not done and threading.get_ident() == reader:
            assert record.envelope is not None and record.envelope.wrapped.key_id == "k1"
            with ThreadPoolExecutor(1) as pool:
                pool.submit(rotate_and_retire).result()
            done.append(True)
        return real(sealers, record, data_key)

    monkeypatch.setattr(ShardSealers, "sealer", rotated_first)
    if read in ("get", "cold-get"):
        assert store.get("enc", "a").to_bytes() == data
    elif read == "iter-frames":
        assert b"".join(frame.to_pybytes() for frame in store.iter_frames("enc", "a")) == data
    elif read == "open-sealed":
        assert store.open_sealed("enc", "a").data_key == data_key_of(store, only_new)
    else:
        key = store.local_reads.data_key("enc", "a", generation)
        assert key.key == data_key_of(store, only_new)
    assert done, "the rotation never ran between the record's read and its unwrap"
    assert key_id_of(store, "a") == "k2"


def data_key_of(store: Store, keyring: LocalKeyring) -> bytes:
    record = record_of(store, "enc", "a")
    assert record.envelope is not None
    context = shard_context(record.dataset, record.name, record.generation)
    return keyring.unwrap(record.envelope.wrapped, context)


def test_resuming_a_rotation_scans_the_catalog_a_batch_per_read_transaction(
    open_store: StoreFactory, archive: MemoryTier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The start's look for a rotation cut short walked every record it passed in one
    # read transaction: on a big catalog, rewrapped up to near its end, that snapshot
    # pinned the pages every write meanwhile replaced, and the map grew under writes.
    datasets = {name: DatasetSettings(encrypted=True) for name in ("enc", "enc2")}
    store = open_store(archive, datasets=datasets)
    shards = [(dataset, f"s{i:03d}") for dataset in datasets for i in range(60)]
    for dataset, name in shards:
        store.put(dataset, name, payload(100, len(name)))
    assert store.drain(30)
    monkeypatch.setattr(masterkeys, "ROTATION_BATCH", 10)
    monkeypatch.setattr(masterkeys, "SCAN_BATCH", 10)
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    with monkeypatch.context() as patched:
        rotate_cut_short(store, both, 100, patched)  # stopped in enc2, its last 20 under k1
    assert [key_id_of(store, name, dataset) for dataset, name in shards].count("k1") == 20

    read_per_txn = count_reads_per_txn(monkeypatch, "tierstore-rotation-resume")
    store = open_store.reopen(store, archive, both)
    wait_until(
        lambda: all(key_id_of(store, name, dataset) == "k2" for dataset, name in shards),
        "the rotation to resume",
    )
    assert store.drain(30)
    assert read_per_txn and max(read_per_txn.values()) <= 10
    store.check_key_retirement("k1", LocalKeyring(keys={"k2": KEY_2}, current="k2"))


def test_the_key_checks_scan_the_catalog_a_batch_per_read_transaction(
    open_store: StoreFactory, archive: MemoryTier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checks before a rotation and a retirement (each walks every record, while the
    # node serves) did so in one read transaction: the same pinned pages.
    store = open_store(archive, datasets=DATASETS)
    for index in range(45):
        store.put("enc", f"s{index:02d}", payload(100, index))
    assert store.drain(30)
    monkeypatch.setattr(masterkeys, "SCAN_BATCH", 10)
    read_per_txn = count_reads_per_txn(monkeypatch, threading.current_thread().name)
    assert store.master_key_failure() is None
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    store.check_keyring(both)
    assert max(read_per_txn.values()) <= 10
    assert store.rotate_master_key(both) == 45
    assert store.drain(30)
    read_per_txn.clear()
    only_new = LocalKeyring(keys={"k2": KEY_2}, current="k2")
    store.check_key_retirement("k1", only_new)
    with pytest.raises(KeyRotationRefused, match="current key"):
        store.check_key_retirement("k2", only_new)
    assert read_per_txn and max(read_per_txn.values()) <= 10
    # Still refused for a record under the key, found in the last batch.
    last = record_of(store, "enc", "s44")
    assert last.envelope is not None
    context = shard_context(last.dataset, last.name, last.generation)
    data_key = both.unwrap(last.envelope.wrapped, context)
    under_k1 = LocalKeyring(keys={"k1": KEY_1}, current="k1").wrap(data_key, context)
    envelope = Envelope(under_k1, last.envelope.nonce_prefix)
    put_raw_record(store, "enc", "s44", last.with_state(envelope=envelope).encode())
    with pytest.raises(KeyRotationRefused, match="enc/s44"):
        store.check_key_retirement("k1", only_new)


def count_reads_per_txn(monkeypatch: pytest.MonkeyPatch, thread: str) -> dict[Any, int]:
    """From now on, how many records each read transaction of the thread named ``thread``
    walks (Catalog.iter_shards), by transaction (each held: no id is reused)."""
    counts: dict[Any, int] = {}
    real = Catalog.iter_shards

    def counting(catalog: Catalog, txn: Any, *args: Any, **kwargs: Any) -> Iterator[ShardRecord]:
        if threading.current_thread().name != thread:
            yield from real(catalog, txn, *args, **kwargs)
            return
        counts.setdefault(txn, 0)
        for record in real(catalog, txn, *args, **kwargs):
            counts[txn] += 1
            yield record

    monkeypatch.setattr(Catalog, "iter_shards", counting)
    return counts


def test_master_key_use_counts_the_shards_each_key_id_wraps(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = open_store(archive, datasets=DATASETS, start_mover=False)
    assert store.master_key_use() == {}
    store.put("plain", "p", payload(10))
    for index in range(3):
        store.put("enc", f"a{index}", payload(10, index))
    store.put("wt-enc", "b", payload(10))
    assert store.master_key_use() == {"k1": 4}
    store.rotate_master_key(LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2"))
    store.put("enc", "c", payload(10))
    assert store.master_key_use() == {"k2": 5}
    # A record under an id the node does not hold is counted too (its reads fail).
    first = record_of(store, "enc", "a0")
    assert first.envelope is not None
    foreign = Envelope(WrappedKey("k9", first.envelope.wrapped.blob), first.envelope.nonce_prefix)
    put_raw_record(store, "enc", "a0", first.with_state(envelope=foreign).encode())
    assert store.master_key_use() == {"k2": 4, "k9": 1}


def test_a_retirement_check_counts_the_reseals_on_the_journal_without_loading_it(
    open_store: StoreFactory, archive: MemoryTier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A retirement refused while the mover still resealed the archive decoded every
    # journal entry into one list to count them: after a rotation of a large catalog
    # (an entry per shard, and every upload still pending), hundreds of megabytes.
    store = open_store(archive, datasets=DATASETS, start_mover=False)
    for index in range(30):
        store.put("enc", f"s{index:02d}", payload(100, index))
    store.rotate_master_key(LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2"))
    decoded: list[bytes] = []
    real = JournalOp.decode.__func__  # type: ignore[attr-defined]

    def counting(cls: type[JournalOp], raw: bytes | memoryview) -> JournalOp:
        decoded.append(bytes(raw))
        return real(cls, raw)  # type: ignore[no-any-return]

    monkeypatch.setattr(JournalOp, "decode", classmethod(counting))
    only_new = LocalKeyring(keys={"k2": KEY_2}, current="k2")
    # 30 manifests and 4 dataset objects to reseal, and the 4 their creation journaled
    with pytest.raises(KeyRotationRefused, match="38 archive metadata objects"):
        store.check_key_retirement("k1", only_new)
    assert decoded == []
    store.start_background()
    assert store.drain(10)
    store.check_key_retirement("k1", only_new)


def test_a_node_that_never_rotated_walks_its_catalog_at_no_start(
    open_store: StoreFactory, archive: MemoryTier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The start's look for a rotation cut short walked every record unless a rotation
    # had finished (its note of the key the archive was resealed under): a node that
    # never rotated its keys walked its whole catalog, in the background, at each start.
    store = open_store(archive, datasets=DATASETS)
    for index in range(30):
        store.put("enc", f"s{index:02d}", payload(100, index))
    assert store.drain(30)
    read_per_txn = count_reads_per_txn(monkeypatch, "tierstore-rotation-resume")
    walks = []
    for _ in range(3):
        store = open_store.reopen(store, archive)
        wait_until(lambda: not resuming(), "the start's look for a rotation to end")
        walks.append(sum(read_per_txn.values()))
        read_per_txn.clear()
    assert walks == [30, 0, 0]  # the first start with records looks, once
    # A rotation cut short still resumes at the next start, also where the catalog
    # was written by a node that kept no note of the starts' walks (an upgrade).
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    with monkeypatch.context() as patched:
        patched.setattr(masterkeys, "ROTATION_BATCH", 10)
        rotate_cut_short(store, both, 10, patched)
    set_note(store, masterkeys._WALKED_UNDER, "")  # as an older node left it
    store = open_store.reopen(store, archive, both)
    wait_until(
        lambda: all(key_id_of(store, f"s{i:02d}") == "k2" for i in range(30)),
        "the rotation to resume",
    )
    wait_until(lambda: not resuming(), "the resumed rotation to end")
    assert sum(read_per_txn.values()) > 0
    read_per_txn.clear()
    store = open_store.reopen(store, archive, both)
    wait_until(lambda: not resuming(), "the start's look for a rotation to end")
    assert sum(read_per_txn.values()) == 0


def resuming() -> bool:
    """Whether a store's look for a rotation cut short (or its resumption) runs."""
    return any(t.name == "tierstore-rotation-resume" for t in threading.enumerate())


def test_the_keys_left_by_a_retirement_are_refused_after_a_rotation_meanwhile(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # The switch after a retirement's checks reads no record: a rotation between the two
    # must not be undone by a keyring whose current key is the one rotated from.
    store = open_store(archive, datasets=DATASETS)
    store.put("enc", "a", payload(100))
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    store.rotate_master_key(both)
    assert store.drain(10)
    only_new = LocalKeyring(keys={"k2": KEY_2}, current="k2")
    store.check_key_retirement("k1", only_new)
    three = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2, "k3": KEY_3}, current="k3")
    assert store.rotate_master_key(three) == 1
    with pytest.raises(KeyRotationRefused, match="'k2' as current, not 'k3'"):
        store.use_retired_keys("k1", only_new)
    assert store.master_keys.keyring is three
    assert store.get("enc", "a").to_bytes() == payload(100)
    with pytest.raises(KeyRotationRefused):
        store.use_retired_keys("k3", LocalKeyring(keys={"k3": KEY_3}, current="k3"))


def test_a_note_of_the_look_that_cannot_be_written_is_no_failed_resumption(
    open_store: StoreFactory,
    archive: MemoryTier,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A full disk refusing the note that the start's look found no rotation cut short
    # must not be logged as a resumption that failed: nothing was to be resumed.
    store = open_store(archive, datasets=DATASETS)
    store.put("enc", "a", payload(100))
    assert store.drain(10)
    set_note(store, masterkeys._WALKED_UNDER, "")
    real = Catalog.set_note

    def full(catalog: Catalog, txn: Any, name: str, text: str) -> None:
        if threading.current_thread().name == "tierstore-rotation-resume":
            raise DiskFull("the disk is full")
        real(catalog, txn, name, text)

    monkeypatch.setattr(Catalog, "set_note", full)
    store = open_store.reopen(store, archive)
    wait_until(lambda: not resuming(), "the start's look for a rotation to end")
    assert "could not note it" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    monkeypatch.undo()
    read_per_txn = count_reads_per_txn(monkeypatch, "tierstore-rotation-resume")
    store = open_store.reopen(store, archive)  # looks again, and notes it
    wait_until(lambda: not resuming(), "the start's look for a rotation to end")
    assert sum(read_per_txn.values()) == 1


def test_a_rotation_to_a_keyring_checked_before_a_put_under_a_key_it_lacks_is_refused(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # A rotation to the keyring checked last does not walk the catalog again, but only
    # while that check still holds: here a put after it wraps its data key with k1,
    # which the checked keyring lacks.
    store = open_store(archive, datasets=DATASETS, start_mover=False)
    without_k1 = LocalKeyring(keys={"k2": KEY_2}, current="k2")
    store.check_keyring(without_k1)  # nothing encrypted yet: it passes
    store.put("enc", "a", payload(100))
    with pytest.raises(KeyRotationRefused, match="'k1'"):
        store.rotate_master_key(without_k1)
    assert store.master_key_id == "k1"
    assert store.get("enc", "a").to_bytes() == payload(100)
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    store.check_keyring(both)
    assert store.rotate_master_key(both) == 1


def archived_by_a_node_gone(
    open_store: StoreFactory, archive: MemoryTier, *shards: tuple[str, str, bytes]
) -> None:
    """``archive`` as a node under k1 alone left it: ``shards`` (dataset, name, data)
    put, uploaded, and the node closed."""
    old = open_store(archive, datasets=DATASETS)
    for dataset, name, data in shards:
        old.put(dataset, name, data)
    assert old.drain(10)
    old.close()


def test_a_catalog_rebuilt_after_a_start_looked_at_it_empty_is_looked_at_again(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # A start that found the catalog empty noted that no rotation was cut short, and a
    # rebuild from the archive then filled it with data keys under an older key the
    # keyring holds: no start resumed the rotation that would rewrap them.
    archived_by_a_node_gone(open_store, archive, ("enc", "a", payload(100)))
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    store = open_store(archive, both)
    wait_until(lambda: not resuming(), "the start's look for a rotation to end")
    assert store.rebuild_from_archive() == 1
    assert key_id_of(store, "a") == "k1"
    store = open_store.reopen(store, archive, both)
    wait_until(lambda: key_id_of(store, "a") == "k2", "the rotation to resume")
    assert store.get("enc", "a").to_bytes() == payload(100)


def test_a_retirement_check_that_passes_walks_the_catalog_once(
    open_store: StoreFactory, archive: MemoryTier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check walked every record twice: once for a damaged record under the key,
    # once for a record any key left could not unwrap.
    store = open_store(archive, datasets=DATASETS)
    for index in range(20):
        store.put("enc", f"s{index:02d}", payload(100, index))
    store.rotate_master_key(LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2"))
    assert store.drain(10)
    read_per_txn = count_reads_per_txn(monkeypatch, threading.current_thread().name)
    store.check_key_retirement("k1", LocalKeyring(keys={"k2": KEY_2}, current="k2"))
    assert sum(read_per_txn.values()) == 20


def test_a_catalog_rebuilt_from_an_archive_under_an_older_key_keeps_that_key_until_resealed(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # A catalog emptied (every dataset deleted) kept the note that the archive was
    # resealed under the current key, and a rebuild into it from an archive sealed
    # under an older key kept it too: the older key was retired after a rotation that
    # resealed only rewrapped manifests, and the archive's dataset objects, still
    # sealed under it, were believed by no rebuild after.
    archived_by_a_node_gone(
        open_store, archive, ("plain", "p", payload(100, 1)), ("enc", "a", payload(100, 2))
    )
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    store = open_store(MemoryTier(), datasets=DATASETS)
    store.put("enc", "b", payload(100, 3))
    store.rotate_master_key(both)
    for name in DATASETS:
        store.delete_dataset(name, force=True)
    assert store.drain(10)
    store = open_store.reopen(store, archive, both, start_mover=False)
    assert store.rebuild_from_archive() == 2
    only_new = LocalKeyring(keys={"k2": KEY_2}, current="k2")
    with pytest.raises(KeyRotationRefused):
        store.check_key_retirement("k1", only_new)  # enc/a's data key is under k1
    store.rotate_master_key()
    store.start_background()
    assert store.drain(10)
    store.check_key_retirement("k1", only_new)
    for key in archive_keys(archive):
        if not key.endswith(".frames"):
            assert json.loads(bytes(archive.get(key) or b""))["seal"]["key_id"] == "k2", key
    rebuilt = open_store(archive, only_new)
    assert rebuilt.rebuild_from_archive() == 2
    assert rebuilt.get("plain", "p").to_bytes() == payload(100, 1)
    assert rebuilt.get("enc", "a").to_bytes() == payload(100, 2)


def test_a_retirement_checked_before_a_rebuild_is_refused_at_its_switch(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # The check passed on an emptied catalog; a rebuild then filled it with data keys
    # under the key being retired, and the switch went ahead without that key: the
    # rebuilt shards could not be read until it was put back by hand.
    archived_by_a_node_gone(open_store, archive, ("enc", "a", payload(100, 2)))
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    store = open_store(MemoryTier(), datasets=DATASETS)
    store.put("enc", "b", payload(100, 3))
    store.rotate_master_key(both)
    for name in DATASETS:
        store.delete_dataset(name, force=True)
    assert store.drain(10)
    store = open_store.reopen(store, archive, both, start_mover=False)
    only_new = LocalKeyring(keys={"k2": KEY_2}, current="k2")
    store.check_key_retirement("k1", only_new)  # nothing under k1 yet
    assert store.rebuild_from_archive() == 1
    with pytest.raises(KeyRotationRefused, match="resealed"):
        store.use_retired_keys("k1", only_new)
    assert store.get("enc", "a").to_bytes() == payload(100, 2)


@pytest.mark.parametrize("dataset", ["plain", "enc"])
def test_an_older_generation_made_the_shards_again_after_a_rotation_is_under_the_new_key(
    open_store: StoreFactory, archive: MemoryTier, dataset: str
) -> None:
    # A rebuild's outdated entry made an older generation the shard's again (the newer
    # one damaged in the archive) after the rotation that followed the rebuild had
    # passed over the shard: the older manifest stayed sealed under the old key, and
    # its data key wrapped with it. For a plaintext shard the old key could then be
    # retired, and no rebuild after believed the shard's only copy; for an encrypted
    # one the retirement was refused until an operator rotated once more.
    old = open_store(archive, datasets=DATASETS)
    older, newer, _ = both_generations_archived(
        old, archive, dataset, payload(FRAME, 1), payload(FRAME, 2)
    )
    old.close()
    damage_archived_frames(archive, dataset, newer.generation)
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    store = open_store(archive, both, start_mover=False)
    assert store.rebuild_from_archive() == 1
    store.rotate_master_key()  # journaled after the outdated entry, as a rotation is
    store.start_background()
    assert store.drain(10), store.mover.last_error
    assert store.stat(dataset, "s").generation == older.generation
    for key in archive_keys(archive):
        if not key.endswith(".frames"):
            assert json.loads(bytes(archive.get(key) or b""))["seal"]["key_id"] == "k2", key
    envelope = record_of(store, dataset, "s").envelope
    assert envelope is None or envelope.wrapped.key_id == "k2"
    only_new = LocalKeyring(keys={"k2": KEY_2}, current="k2")
    store.check_key_retirement("k1", only_new)
    rebuilt = open_store(archive, only_new)
    assert rebuilt.rebuild_from_archive() == 1
    assert rebuilt.get(dataset, "s").to_bytes() == payload(FRAME, 1)


def test_a_rotation_to_a_keyring_checked_before_a_rebuild_walks_the_rebuilt_catalog(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # A rotation to the keyring checked last did not walk the catalog again while the
    # keyring in use was unchanged, and a rebuild between the two filled the catalog
    # with data keys under a key the checked keyring lacks: switched to, it left them
    # unreadable.
    archived_by_a_node_gone(open_store, archive, ("enc", "a", payload(100)))
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    store = open_store(archive, both, start_mover=False)
    without_k1 = LocalKeyring(keys={"k2": KEY_2, "k3": KEY_3}, current="k3")
    store.check_keyring(without_k1)  # nothing in the catalog yet: it passes
    assert store.rebuild_from_archive() == 1
    with pytest.raises(KeyRotationRefused, match="'k1'"):
        store.rotate_master_key(without_k1)
    assert store.master_key_id == "k2"
    assert store.get("enc", "a").to_bytes() == payload(100)


def test_a_keyring_check_that_walked_the_catalog_before_a_rebuild_is_not_kept(
    open_store: StoreFactory, archive: MemoryTier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same, but the rebuild runs after the check's walk read the still empty
    # catalog and before the check noted its pass: the note came after the rebuild had
    # voided the checks, so the rotation to that keyring took it as holding.
    archived_by_a_node_gone(open_store, archive, ("enc", "a", payload(100)))
    both = LocalKeyring(keys={"k1": KEY_1, "k2": KEY_2}, current="k2")
    store = open_store(archive, both, start_mover=False)
    without_k1 = LocalKeyring(keys={"k2": KEY_2, "k3": KEY_3}, current="k3")
    walk = ShardSealers.check_unwraps
    rebuilt: list[int] = []

    def walk_then_rebuild(sealers: ShardSealers, *args: Any, **kwargs: Any) -> None:
        walk(sealers, *args, **kwargs)  # nothing in the catalog yet: it passes
        if not rebuilt:
            rebuilt.append(store.rebuild_from_archive())

    monkeypatch.setattr(ShardSealers, "check_unwraps", walk_then_rebuild)
    store.check_keyring(without_k1)
    assert rebuilt == [1]
    with pytest.raises(KeyRotationRefused, match="'k1'"):
        store.rotate_master_key(without_k1)
    assert store.master_key_id == "k2"
    assert store.get("enc", "a").to_bytes() == payload(100)
