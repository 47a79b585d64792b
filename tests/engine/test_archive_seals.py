"""Seals on the archive's metadata objects: a rebuild believes only what the master key sealed.

The archive is untrusted. With a master key configured, every dataset object and
manifest carries a seal bound to its key and fields; a rebuild skips (and logs)
every object whose seal is missing, does not match, or is under a key not held.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from tests.engine.stores import (
    DATASETS,
    FRAME,
    KEY_2,
    KEYRING,
    OTHER_KEYRING,
    StoreFactory,
    payload,
)
from tierstore.crypto import LocalKeyring
from tierstore.engine.records import archive_dataset_key, archive_manifest_key
from tierstore.errors import ArchiveUnavailable, DatasetNotFound, InvalidArgument, ShardNotFound
from tierstore.tiers.memory import MemoryTier
from tierstore.tiers.s3_connection import aliased_path
from tierstore.types import DatasetSettings


def edited(archive: MemoryTier, key: str, **changes: Any) -> None:
    """Replace JSON fields of the object at ``key``, keeping its seal."""
    document = json.loads(bytes(archive.get(key) or b""))
    document.update(changes)
    archive.put(key, json.dumps(document).encode())


def fill(store: Any) -> dict[tuple[str, str], Any]:
    """A shard of two frames in every dataset, archived; returns their infos."""
    infos = {
        (dataset, "s"): store.put(dataset, "s", payload(2 * FRAME + 5, index))
        for index, dataset in enumerate(DATASETS)
    }
    assert store.drain(10)
    return infos


def test_every_metadata_object_is_sealed_and_a_rebuild_believes_it(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    fill(open_store(archive, datasets=DATASETS))
    metadata = [key for key in archive.list(limit=1000).keys if not key.endswith(".frames")]
    assert len(metadata) == 2 * len(DATASETS)
    for key in metadata:
        assert json.loads(bytes(archive.get(key) or b""))["seal"]["key_id"] == "k1"
    assert open_store(archive).rebuild_from_archive() == len(DATASETS)


def test_an_edited_dataset_object_is_not_believed(
    open_store: StoreFactory, archive: MemoryTier, caplog: pytest.LogCaptureFixture
) -> None:
    # Without the seal, an archive that says "plaintext" would have the rebuilt
    # store write the dataset's next shards unencrypted.
    fill(open_store(archive, datasets=DATASETS))
    edited(archive, archive_dataset_key("enc"), encrypted=False)
    fresh = open_store(archive)
    with caplog.at_level(logging.WARNING, "tierstore.engine.store"):
        assert fresh.rebuild_from_archive() == len(DATASETS) - 1
    assert "enc" not in dict(fresh.list_datasets())
    assert "enc/_dataset.json is not believed" in caplog.text
    assert "edited, moved or forged" in caplog.text
    with pytest.raises(DatasetNotFound):
        fresh.get("enc", "s")
    assert fresh.get("plain", "s").to_bytes() == payload(2 * FRAME + 5, 0)


def test_a_sealed_object_moved_to_another_key_is_not_believed(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # A genuine seal on the plaintext dataset's settings, copied over the encrypted
    # dataset's: the seal is bound to the key it was made for.
    fill(open_store(archive, datasets=DATASETS))
    archive.put(archive_dataset_key("enc"), bytes(archive.get(archive_dataset_key("plain")) or b""))
    fresh = open_store(archive)
    assert fresh.rebuild_from_archive() == len(DATASETS) - 1
    assert "enc" not in dict(fresh.list_datasets())


def test_an_edited_manifest_is_not_believed_even_when_its_sizes_add_up(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # Frame sizes swapped (the frames object's size still matches) and the kind
    # changed: both would misread the shard, and neither is sealed.
    store = open_store(archive, datasets=DATASETS)
    infos = fill(store)
    swapped = archive_manifest_key("plain", infos[("plain", "s")].generation)
    sizes = json.loads(bytes(archive.get(swapped) or b""))["frame_sizes"]
    edited(archive, swapped, frame_sizes=list(reversed(sizes)))
    rekinded = archive_manifest_key("wt", infos[("wt", "s")].generation)
    edited(archive, rekinded, kind="arrow")
    fresh = open_store(archive)
    assert fresh.rebuild_from_archive() == len(DATASETS) - 2
    for dataset in ("plain", "wt"):
        with pytest.raises(ShardNotFound):
            fresh.stat(dataset, "s")
    assert fresh.get("enc", "s").to_bytes() == payload(2 * FRAME + 5, 1)


def test_a_stripped_seal_is_not_a_way_around_it(
    open_store: StoreFactory, archive: MemoryTier, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(archive, datasets=DATASETS)
    infos = fill(store)
    key = archive_manifest_key("enc", infos[("enc", "s")].generation)
    document = json.loads(bytes(archive.get(key) or b""))
    del document["seal"]
    archive.put(key, json.dumps(document).encode())
    fresh = open_store(archive)
    with caplog.at_level(logging.WARNING, "tierstore.engine.store"):
        assert fresh.rebuild_from_archive() == len(DATASETS) - 1
    assert "carries no seal" in caplog.text
    with pytest.raises(ShardNotFound):
        fresh.stat("enc", "s")


def test_seals_under_a_master_key_not_held_are_not_believed(
    open_store: StoreFactory, archive: MemoryTier, caplog: pytest.LogCaptureFixture
) -> None:
    fill(open_store(archive, datasets=DATASETS))
    fresh = open_store(archive, LocalKeyring(keys={"k9": KEY_2}, current="k9"))
    with caplog.at_level(logging.WARNING, "tierstore.engine.store"):
        assert fresh.rebuild_from_archive() == 0
    assert "which this keyring does not hold" in caplog.text
    assert dict(fresh.list_datasets()) == {}


def test_an_archive_written_without_a_master_key_is_sealed_by_one_rotation(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    plain = {"plain": DATASETS["plain"], "wt": DATASETS["wt"]}
    store = open_store(archive, None, datasets=plain)
    for dataset in plain:
        store.put(dataset, "s", payload(FRAME + 1, 7))
    assert store.drain(10)
    for key in archive.list(limit=1000).keys:
        assert key.endswith(".frames") or "seal" not in json.loads(bytes(archive.get(key) or b""))
    # Without a master key nothing can be checked: a store without one believes them.
    assert open_store(archive, None).rebuild_from_archive() == 2
    # A store with one does not, until a rotation has sealed them.
    assert open_store(archive).rebuild_from_archive() == 0
    store = open_store.reopen(store, archive)
    assert store.rotate_master_key() == 0  # no data keys to rewrap, every object resealed
    assert store.drain(10)
    rebuilt = open_store(archive)
    assert rebuilt.rebuild_from_archive() == 2
    for dataset in plain:
        assert rebuilt.get(dataset, "s").to_bytes() == payload(FRAME + 1, 7)


def test_a_replayed_plaintext_settings_object_does_not_downgrade_a_dataset(
    open_store: StoreFactory, archive: MemoryTier, caplog: pytest.LogCaptureFixture
) -> None:
    # A seal cannot tell one life of a dataset name from the next: the sealed settings
    # of an earlier, plaintext "d", put back over those of the encrypted "d" of today.
    store = open_store(archive)
    store.create_dataset("d", DatasetSettings())
    assert store.drain(10)
    old_settings = bytes(archive.get(archive_dataset_key("d")) or b"")
    store.delete_dataset("d")
    store.create_dataset("d", DatasetSettings(encrypted=True))
    store.put("d", "s", payload(FRAME, 3))
    assert store.drain(10)
    archive.put(archive_dataset_key("d"), old_settings)
    fresh = open_store(archive)
    with caplog.at_level(logging.WARNING, "tierstore.engine.store"):
        assert fresh.rebuild_from_archive() == 0
    assert "a stale or replayed settings object" in caplog.text
    assert dict(fresh.list_datasets()) == {}


PLAIN = {"plain": DATASETS["plain"], "wt": DATASETS["wt"]}


def test_the_archives_seals_tell_the_wrong_master_keys_of_a_plaintext_node(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    # No data key to unwrap: the dataset objects' seals are what tells the keys apart.
    store = open_store(archive, datasets=PLAIN)
    for dataset in PLAIN:
        store.put(dataset, "s", payload(FRAME, 1))
    assert store.drain(10)
    assert store.archive_seal_failure() is None
    wrong = open_store.reopen(store, archive, OTHER_KEYRING, start_mover=False)
    failure = wrong.archive_seal_failure()
    assert failure is not None and str(failure).startswith("plain/_dataset.json: ")
    wrong.close()
    # One object edited among good ones is damage, not the wrong keys.
    edited(archive, archive_dataset_key("plain"), policy="lru")
    right = open_store.reopen(store, archive, start_mover=False)
    assert right.archive_seal_failure() is None


def test_a_reseal_under_way_is_not_taken_for_the_wrong_keys(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = open_store(archive, datasets=PLAIN)
    store.put("plain", "s", payload(FRAME, 1))
    assert store.drain(10)
    # The key file was lost: a new key, and the archive's metadata sealed again under it.
    resealing = open_store.reopen(store, archive, OTHER_KEYRING, start_mover=False)
    assert resealing.archive_seal_failure() is not None
    resealing.reseal_archive()
    assert resealing.archive_seal_failure() is None  # journalled, not yet rewritten
    resealing.start_background()
    assert resealing.drain(10)
    assert resealing.archive_seal_failure() is None  # rewritten: they verify now
    assert json.loads(bytes(archive.get(archive_dataset_key("plain")) or b""))["seal"]
    fresh = open_store(archive, OTHER_KEYRING)
    assert fresh.rebuild_from_archive() == 1


class CutShort(MemoryTier):
    """An archive whose GETs of dataset objects come back cut short while ``cutting``
    (a proxy that drops the rest of a body, with a Content-Length to match)."""

    cutting = False

    def __init__(self) -> None:
        super().__init__()
        self.cut: list[str] = []  # the keys of the bodies cut short

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> memoryview | None:
        body = super().get(key, byte_range)
        if body is None or not self.cutting or not key.endswith("/_dataset.json"):
            return body
        self.cut.append(key)
        return body[: len(body) // 2]


def test_metadata_cut_short_on_the_way_is_not_taken_for_the_wrong_keys(
    open_store: StoreFactory,
) -> None:
    # It was: a start was refused ("not the keys the archive was sealed with"), and a
    # node whose archive had been down held its uploads until restarted.
    archive = CutShort()
    store = open_store(archive, datasets=PLAIN)
    for dataset in PLAIN:
        store.put(dataset, "s", payload(FRAME, 1))
    assert store.drain(10)
    archive.cutting = True
    with pytest.raises(ArchiveUnavailable, match="could not be read whole"):
        store.archive_seal_failure()
    wrong = open_store.reopen(store, archive, OTHER_KEYRING, start_mover=False)
    with pytest.raises(ArchiveUnavailable):  # nor does it pass wrong keys
        wrong.archive_seal_failure()
    archive.cutting = False
    failure = wrong.archive_seal_failure()
    assert failure is not None and "does not match its seal" in str(failure)
    right = open_store.reopen(wrong, archive, start_mover=False)
    assert right.archive_seal_failure() is None


#: Manifests that no JSON decoder reads as one: nested past the interpreter's recursion
#: limit, and a frame size past any integer.
MALFORMED_MANIFESTS = {
    "nested": b"[" * 200_000,
    "infinite": json.dumps(
        {"v": 1, "dataset": "plain", "name": "x", "generation": 1, "kind": "raw"}
        | {"frame_sizes": [float("inf")], "created_at": 0, "envelope": None}
    ).encode(),
}


@pytest.mark.parametrize("body", MALFORMED_MANIFESTS.values(), ids=MALFORMED_MANIFESTS.keys())
@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "believe-unsealed"])
def test_a_malformed_object_is_skipped_not_the_end_of_the_rebuild(
    open_store: StoreFactory, body: bytes, sealed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # One object anyone who may write to the archive can put there ended every rebuild
    # with a RecursionError or an OverflowError.
    archive = MemoryTier()
    keyring = KEYRING if sealed else None
    plain = {"plain": DATASETS["plain"]}
    writer = open_store(archive, keyring, datasets=plain)
    writer.put("plain", "s", payload(FRAME, 1))
    assert writer.drain(10)
    archive.put(archive_manifest_key("plain", 1), body)
    fresh = open_store(archive, keyring)
    with caplog.at_level(logging.WARNING, "tierstore.engine.store"):
        assert fresh.rebuild_from_archive(believe_unsealed=not sealed) == 1
    assert f"{archive_manifest_key('plain', 1)} is not believed" in caplog.text
    assert fresh.get("plain", "s").to_bytes() == payload(FRAME, 1)


class AliasRefusingTier(MemoryTier):
    """A memory archive that, as the S3 tier does, refuses to read keys that a
    filer-backed store would alias (while anyone else's objects may still sit there)."""

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> memoryview | None:
        if aliased_path(key):
            raise InvalidArgument(f"refused key {key!r}")
        return super().get(key, byte_range)


@pytest.mark.parametrize(
    "foreign",
    [
        "plain//0000000000000001.manifest",
        "plain\\x.manifest",
        "plain/./_dataset.json",
        "Not-A-Dataset/0000000000000001.manifest",
        "plain/not-hex.manifest",
    ],
)
def test_an_object_at_a_key_tierstore_never_writes_is_skipped_not_the_end_of_the_rebuild(
    open_store: StoreFactory, foreign: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Someone else's object under the node's prefix, at a key the S3 tier refuses to
    # read (an empty segment, a backslash), ended the rebuild with InvalidArgument.
    archive = AliasRefusingTier()
    writer = open_store(archive, KEYRING, datasets={"plain": DATASETS["plain"]})
    writer.put("plain", "s", payload(FRAME, 1))
    assert writer.drain(10)
    MemoryTier.put(archive, foreign, b"{}")
    fresh = open_store(archive, KEYRING)
    with caplog.at_level(logging.WARNING, "tierstore.engine.store"):
        assert fresh.rebuild_from_archive() == 1
    assert f"{foreign} is not believed" in caplog.text
    assert fresh.get("plain", "s").to_bytes() == payload(FRAME, 1)
