"""A node's master keys (tierstore/cli/masterkeys.py): where they come from, the key a
new node creates, the start-up check against the catalog and the archive, rotation.

The end-to-end cases (a real ``tierstore serve`` refusing to start, the settings file,
environment and flag) are in tests/server/test_serve_keys.py.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import DATASETS, KEYRING, StoreFactory, payload, wait_until
from tests.engine.test_archive_seals import CutShort
from tests.engine.test_keys import count_reads_per_txn, resuming
from tierstore import crypto
from tierstore.cli.masterkeys import (
    DeferredKeyCheck,
    KeyRotation,
    NodeKeys,
    check_master_key_sources,
    check_node_keys,
    load_node_keys,
)
from tierstore.config import EngineSettings
from tierstore.crypto import LocalKeyring, retired_keys_path
from tierstore.engine import masterkeys
from tierstore.engine.catalog import Catalog
from tierstore.engine.store import Store
from tierstore.errors import (
    ArchiveUnavailable,
    FailedPrecondition,
    InvalidArgument,
    KeyRotationRefused,
    NotFound,
)
from tierstore.tiers.lmdb import LmdbEnvironment
from tierstore.tiers.memory import MemoryTier


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[StoreFactory]:
    factory = StoreFactory(tmp_path / "stores")
    yield factory
    factory.close_all()


def test_a_key_file_is_loaded_and_a_missing_one_created(tmp_path: Path) -> None:
    path = tmp_path / "managed.keys"
    created = load_node_keys(EngineSettings(master_key_file=path), tmp_path / "node")
    assert created.created and created.key_file == path
    loaded = load_node_keys(EngineSettings(master_key_file=path), tmp_path / "node")
    assert not loaded.created and loaded.keyring == created.keyring
    default = load_node_keys(EngineSettings(), tmp_path)
    assert default.key_file == tmp_path / "master.keys" and default.created


def test_a_base64_key_is_used_without_a_key_file(tmp_path: Path) -> None:
    text = base64.b64encode(os.urandom(32)).decode()
    keys = load_node_keys(EngineSettings(master_key_b64=text), tmp_path)
    assert keys.key_file is None and keys.keyring == LocalKeyring.from_base64(text)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidArgument, match="name one"):
        load_node_keys(
            EngineSettings(master_key_b64=text, master_key_file=tmp_path / "k"), tmp_path
        )
    assert list(tmp_path.iterdir()) == []


def test_a_key_file_that_cannot_be_created_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "master.keys"
    with pytest.raises(InvalidArgument, match=f"master key file {path} does not exist"):
        load_node_keys(EngineSettings(master_key_file=path), tmp_path)


def test_keys_that_cannot_be_had_are_refused_before_anything_is_made(tmp_path: Path) -> None:
    # serve checks them before it makes its data directory or starts its archive;
    # load_node_keys ran only once the embedded archive had started.
    node = tmp_path / "node"
    not_keys = tmp_path / "not-keys"
    not_keys.write_text("not a key file")
    refused = {
        tmp_path / "no-dir" / "k": "cannot be created: its directory does not exist",
        not_keys: f"cannot load key file {not_keys}",
    }
    for path, says in refused.items():
        with pytest.raises(InvalidArgument, match=says):
            check_master_key_sources(EngineSettings(master_key_file=path), node)
    with pytest.raises(InvalidArgument, match="master key") as bad_base64:
        check_master_key_sources(EngineSettings(master_key_b64="hunter2!"), node)
    assert "hunter2" not in str(bad_base64.value)
    node.mkdir()
    (node / "master.keys").write_text("{}")  # the default file, damaged
    with pytest.raises(InvalidArgument, match=r"cannot load key file .*master\.keys"):
        check_master_key_sources(EngineSettings(), node)
    assert list(node.iterdir()) == [node / "master.keys"]


def test_a_key_file_in_the_data_directory_that_serve_makes_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Its directory is missing until serve makes the data directory: a first start
    # with --master-key-file <data dir>/master.keys, relative or not, must go on.
    monkeypatch.chdir(tmp_path)
    for given in (tmp_path / "new" / "master.keys", Path("new/master.keys")):
        check_master_key_sources(EngineSettings(master_key_file=given), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    # A key file others may read is warned of once, when it is loaded for use.
    shared = LocalKeyring.generate_file(tmp_path / "shared.keys")
    (tmp_path / "shared.keys").chmod(0o644)
    settings = EngineSettings(master_key_file=tmp_path / "shared.keys")
    check_master_key_sources(settings, tmp_path / "new")
    assert "may be used by users other than" not in caplog.text
    assert load_node_keys(settings, tmp_path / "new").keyring == shared
    assert caplog.text.count("may be used by users other than") == 1


def test_a_created_key_is_refused_over_encrypted_shards_and_removed(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    store = open_store(datasets=DATASETS, start_mover=False)
    store.put("enc", "s", payload(10))
    path = tmp_path / "master.keys"
    keys = load_node_keys(EngineSettings(master_key_file=path), tmp_path)
    store = open_store.reopen(store, MemoryTier(), keys.keyring, start_mover=False)
    with pytest.raises(
        FailedPrecondition, match=r"did not exist .* master key 'k1' \(e\.g\. enc/s"
    ):
        check_node_keys(keys, store)
    keys.forget_created()
    assert not path.exists()


def test_a_created_key_is_refused_over_an_archive_with_objects(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    archive = MemoryTier()
    archive.put("enc/00000001.manifest", b"sealed by the key this node had")
    keys = load_node_keys(EngineSettings(), tmp_path)
    store = open_store(archive, keys.keyring, start_mover=False)  # a new hot tier
    with pytest.raises(FailedPrecondition, match="archive holds objects"):
        check_node_keys(keys, store)
    # A new node over an empty archive keeps its new key.
    check_node_keys(keys, open_store(MemoryTier(), keys.keyring, start_mover=False))


def test_keys_that_read_the_shards_pass_and_wrong_ones_are_refused(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    store = open_store(datasets=DATASETS, start_mover=False)
    store.put("enc", "s", payload(10))
    check_node_keys(NodeKeys(KEYRING, tmp_path / "master.keys"), store)
    wrong = LocalKeyring(keys={"k1": os.urandom(32)}, current="k1")
    store = open_store.reopen(store, MemoryTier(), wrong, start_mover=False)
    with pytest.raises(FailedPrecondition, match=r"does not unwrap .* master key 'k1'"):
        check_node_keys(NodeKeys(wrong, tmp_path / "master.keys"), store)


def test_a_base64_key_is_not_rotated(open_store: StoreFactory) -> None:
    keyring = LocalKeyring.from_base64(base64.b64encode(os.urandom(32)).decode())
    store = open_store(keyring=keyring, datasets=DATASETS, start_mover=False)
    with pytest.raises(KeyRotationRefused, match=f'"current": "{keyring.current}"'):
        KeyRotation(NodeKeys(keyring, None), store)()
    assert store.master_key_id == keyring.current


def test_a_rotation_checks_the_new_keyring_once(
    open_store: StoreFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `keys rotate` checked the new keyring against every record before writing the key
    # file, and the store's rotation checked the same keyring again: one more walk of
    # the whole catalog before the rewrap pass.
    store = open_store(datasets=DATASETS, start_mover=False)
    for index in range(25):
        store.put("enc", f"s{index:02d}", payload(100, index))
    path = key_file_of(KEYRING, tmp_path / "master.keys")
    keys = KeyRotation(NodeKeys(KEYRING, path), store)
    read = count_reads_per_txn(monkeypatch, threading.current_thread().name)
    assert keys() == 25
    assert sum(read.values()) == 2 * 25  # the check, and the rewrap pass
    assert store.master_key_id == "k2"
    assert store.master_key_use() == {"k2": 25}


def test_a_rotation_the_store_refuses_leaves_the_key_file_as_it_was(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    store = open_store(datasets=DATASETS, start_mover=False)
    store.put("enc", "s", payload(10))
    path = tmp_path / "master.keys"
    # The node's keyring (and file) lack the k1 the store's records are under.
    other = LocalKeyring.generate_file(path, key_id="k7")
    before = path.read_bytes()
    rotation = KeyRotation(NodeKeys(other, path), store)
    for _ in range(2):  # each retry used to leave one more current key behind
        with pytest.raises(KeyRotationRefused, match="Nothing was changed"):
            rotation()
        assert path.read_bytes() == before
    # With k1 put back in the file and the keyring, it goes through.
    both = LocalKeyring(keys={**KEYRING.keys, "k7": other.keys["k7"]}, current="k7")
    key_text = {key_id: base64.b64encode(key).decode() for key_id, key in both.keys.items()}
    path.write_text(json.dumps({"current": "k7", "keys": key_text}))
    assert KeyRotation(NodeKeys(both, path), store)() == 1
    assert sorted(LocalKeyring.from_file(path).keys) == ["k1", "k7", "k8"]


def key_file_of(keyring: LocalKeyring, path: Path) -> Path:
    """``keyring`` written as a key file at ``path``."""
    keys = {key_id: base64.b64encode(key).decode() for key_id, key in keyring.keys.items()}
    path.write_text(json.dumps({"current": keyring.current, "keys": keys}))
    return path


def test_a_key_is_retired_only_once_nothing_needs_it(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    # Retiring a key was a hand edit of the key file, checked only at the next start.
    archive = MemoryTier()
    store = open_store(archive, datasets=DATASETS, start_mover=False)
    secret = payload(3000)
    store.put("enc", "s", secret)
    path = key_file_of(KEYRING, tmp_path / "master.keys")
    keys = KeyRotation(NodeKeys(KEYRING, path), store)
    refusals: dict[str, tuple[type[Exception], str]] = {
        "k1": (KeyRotationRefused, "is the current key"),  # new data keys use it
        "k9": (NotFound, "holds no master key 'k9'"),
    }
    for key_id, (error, says) in refusals.items():
        with pytest.raises(error, match=says):
            keys.retire(key_id)
        assert LocalKeyring.from_file(path) == KEYRING
    assert keys() == 1  # k2 current, the data key rewrapped
    # The mover has not resealed the archive's metadata under k2 yet.
    with pytest.raises(KeyRotationRefused, match="still to be resealed under 'k2'"):
        keys.retire("k1")
    assert sorted(LocalKeyring.from_file(path).keys) == ["k1", "k2"]
    store.start_background()
    assert store.drain(10)
    assert keys.retire("k1") == ("k2",)
    assert sorted(LocalKeyring.from_file(path).keys) == ["k2"]
    # Not destroyed: kept aside for nodes that share the key file.
    assert LocalKeyring.from_file(retired_keys_path(path)).keys == {"k1": KEYRING.keys["k1"]}
    assert store.get("enc", "s").to_bytes() == secret
    # A restart with the file as it is now reads everything, hot and from the archive.
    store = open_store.reopen(store, archive, LocalKeyring.from_file(path))
    check_node_keys(NodeKeys(LocalKeyring.from_file(path), path), store)
    store.evict("enc", "s")
    assert store.get("enc", "s").to_bytes() == secret


def test_a_retirement_switches_the_keyring_without_a_pass_over_the_catalog(
    open_store: StoreFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its checks passed, `keys retire` switched the node to the keys left through a
    # whole rotation: one more check of them, and a pass over every record in write
    # transactions, a batch at a time, that rewrapped none (on a big catalog, the
    # writer held batch after batch for nothing).
    archive = MemoryTier()
    store = open_store(archive, datasets=DATASETS)
    shards = {f"s{index:02d}": payload(100, index) for index in range(25)}
    for name, data in shards.items():
        store.put("enc", name, data)
    path = key_file_of(KEYRING, tmp_path / "master.keys")
    keys = KeyRotation(NodeKeys(KEYRING, path), store)
    assert keys() == 25
    assert store.drain(10)
    in_writes = records_read_in_write_transactions(monkeypatch)
    real_write = crypto._write_key_file

    def put_then_write(*args: Any, **kwargs: Any) -> None:
        # A put between the retirement's checks and the key file's rewrite is
        # acknowledged under the current key, which stays.
        shards["late"] = payload(100, 99)
        store.put("enc", "late", shards["late"])
        real_write(*args, **kwargs)

    monkeypatch.setattr(crypto, "_write_key_file", put_then_write)
    assert keys.retire("k1") == ("k2",)
    assert sum(in_writes) == 0
    assert store.master_key_id == "k2"
    assert store.master_keys.keyring == LocalKeyring.from_file(path)
    store = open_store.reopen(store, archive, LocalKeyring.from_file(path))
    check_node_keys(NodeKeys(LocalKeyring.from_file(path), path), store)
    for name, data in shards.items():
        assert store.get("enc", name).to_bytes() == data


def records_read_in_write_transactions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, how many records each write transaction (of any thread) reads
    (Catalog.iter_shards), in the order they began."""
    counts: list[int] = []
    writes: list[Any] = []
    real_write = LmdbEnvironment.write
    real_iter = Catalog.iter_shards

    @contextmanager
    def write(env: LmdbEnvironment) -> Iterator[Any]:
        with real_write(env) as txn:
            writes.append(txn)
            counts.append(0)
            try:
                yield txn
            finally:
                writes.pop()

    def iter_shards(catalog: Catalog, txn: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for record in real_iter(catalog, txn, *args, **kwargs):
            if writes and txn is writes[-1]:
                counts[-1] += 1
            yield record

    monkeypatch.setattr(LmdbEnvironment, "write", write)
    monkeypatch.setattr(Catalog, "iter_shards", iter_shards)
    return counts


def test_a_node_sharing_the_key_file_is_pointed_to_the_retired_key(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    # Two nodes, one key file: one rotated and retired k1, which the other's shards
    # were still under; k1 existed nowhere else, and the other node never started again.
    path = key_file_of(KEYRING, tmp_path / "shared.keys")
    mine = open_store(datasets=DATASETS)
    other = open_store(datasets=DATASETS, start_mover=False)
    other.put("enc", "s", payload(10))
    keys = KeyRotation(NodeKeys(KEYRING, path), mine)
    keys()
    assert mine.drain(10)
    keys.retire("k1")
    left = LocalKeyring.from_file(path)
    other = open_store.reopen(other, MemoryTier(), left, start_mover=False)
    with pytest.raises(FailedPrecondition, match=r"'k1' is in .*shared\.keys\.retired"):
        check_node_keys(NodeKeys(left, path), other)
    aside = LocalKeyring.from_file(retired_keys_path(path))
    both = LocalKeyring(keys={**left.keys, **aside.keys}, current=left.current)
    other = open_store.reopen(other, MemoryTier(), both, start_mover=False)
    check_node_keys(NodeKeys(both, path), other)  # the key put back: it starts
    assert other.get("enc", "s").to_bytes() == payload(10)


def test_a_node_sharing_the_key_file_rotates_and_retires_after_the_other_retired_a_key(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    # Once one node had retired k1 from a shared key file, the other, which still held
    # k1 in memory, was refused every rotation and retirement ("put those keys back in
    # the file"), and putting k1 back undid the first node's retirement: the two kept
    # blocking each other until a restart.
    path = key_file_of(KEYRING, tmp_path / "shared.keys")
    mine = open_store(datasets=DATASETS)
    other = open_store(datasets=DATASETS)
    mine.put("enc", "s", payload(10, 1))
    other.put("enc", "s", payload(10, 2))
    my_keys = KeyRotation(NodeKeys(KEYRING, path), mine)
    other_keys = KeyRotation(NodeKeys(KEYRING, path), other)
    assert my_keys() == 1  # k2
    assert other_keys() == 1  # k3, taking up k2
    assert my_keys() == 1  # k4, taking up k3
    assert mine.drain(10) and other.drain(10)
    assert my_keys.retire("k1") == ("k2", "k3", "k4")
    # The other node rotates, keeping k1 (retired from the file) in memory alone ...
    assert other_keys() == 1
    assert sorted(LocalKeyring.from_file(path).keys) == ["k2", "k3", "k4", "k5"]
    assert other.master_key_id == "k5"
    assert other.drain(10)
    # ... and retires it too, the file left without it.
    assert other_keys.retire("k1") == ("k2", "k3", "k4", "k5")
    assert sorted(LocalKeyring.from_file(path).keys) == ["k2", "k3", "k4", "k5"]
    assert LocalKeyring.from_file(retired_keys_path(path)).keys == {"k1": KEYRING.keys["k1"]}
    for store, seed in ((mine, 1), (other, 2)):
        assert store.get("enc", "s").to_bytes() == payload(10, seed)


def test_a_key_file_whose_current_key_changed_behind_the_node_is_not_retired_from(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    # The retirement used to take the edited file's current key up silently, and
    # rewrap every data key of the node under a key it never rotated to.
    store = open_store(MemoryTier(), datasets=DATASETS)
    store.put("enc", "s", payload(3000))
    path = key_file_of(KEYRING, tmp_path / "master.keys")
    keys = KeyRotation(NodeKeys(KEYRING, path), store)
    keys()
    assert store.drain(10)
    on_file = LocalKeyring.from_file(path)
    edited = LocalKeyring(keys={**on_file.keys, "k7": os.urandom(32)}, current="k7")
    key_file_of(edited, path)
    with pytest.raises(KeyRotationRefused, match="names 'k7' as its current key, not 'k2'"):
        keys.retire("k1")
    assert LocalKeyring.from_file(path) == edited
    assert store.get("enc", "s").to_bytes() == payload(3000)
    # The way on: a rotation takes up every key in the file, then the retirement runs.
    assert keys() == 1
    assert store.drain(10)
    assert keys.retire("k1") == ("k2", "k7", "k8")
    assert store.get("enc", "s").to_bytes() == payload(3000)


def test_a_key_records_still_use_is_not_retired(open_store: StoreFactory, tmp_path: Path) -> None:
    store = open_store(datasets=DATASETS, start_mover=False)
    store.put("enc", "s", payload(10))
    # k2 made current in the file by hand, without a rotation: the data key stays
    # wrapped under k1.
    both = LocalKeyring(keys={**KEYRING.keys, "k2": os.urandom(32)}, current="k2")
    path = key_file_of(both, tmp_path / "master.keys")
    store = open_store.reopen(store, MemoryTier(), both, start_mover=False)
    with pytest.raises(KeyRotationRefused, match="k1"):
        KeyRotation(NodeKeys(both, path), store).retire("k1")
    assert LocalKeyring.from_file(path) == both
    assert store.get("enc", "s").to_bytes() == payload(10)


def test_a_base64_key_has_no_key_to_retire(open_store: StoreFactory) -> None:
    keyring = LocalKeyring.from_base64(base64.b64encode(os.urandom(32)).decode())
    store = open_store(keyring=keyring, datasets=DATASETS, start_mover=False)
    with pytest.raises(KeyRotationRefused, match="none to retire"):
        KeyRotation(NodeKeys(keyring, None), store).retire(keyring.current)


def archived_then_stopped(open_store: StoreFactory, archive: MemoryTier) -> Store:
    """A node with a plaintext shard in ``archive``, restarted with its mover stopped."""
    store = open_store(archive, datasets={"plain": DATASETS["plain"]})
    store.put("plain", "s", payload(10))
    assert store.drain(10)
    return open_store.reopen(store, archive, start_mover=False)


def test_a_key_retired_before_the_archive_was_sealed_again_is_named_as_such(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    # A rotation while the archive was down, a restart, and the old key taken out of
    # the file: the archive is still sealed under the old key until the mover uploads
    # the journal. The refusal says so, not only "these are not the archive's keys".
    archive = MemoryTier()
    stopped = archived_then_stopped(open_store, archive)
    both = LocalKeyring(keys={**KEYRING.keys, "k2": os.urandom(32)}, current="k2")
    stopped.rotate_master_key(both)
    assert stopped.stats().journal_entries > 0  # the reseal waits for the mover
    only_new = LocalKeyring(keys={"k2": both.keys["k2"]}, current="k2")
    retired = open_store.reopen(stopped, archive, only_new, start_mover=False)
    with pytest.raises(FailedPrecondition, match="does not verify the seal") as refused:
        check_node_keys(NodeKeys(only_new, tmp_path / "master.keys"), retired)
    assert "a key taken out of the file since the last rotation" in str(refused.value)
    pending = retired.stats().journal_entries
    assert f"the journal still holds {pending} upload{'' if pending == 1 else 's'}:" in str(
        refused.value
    )
    # With the key back, the mover seals the archive again; then the old key may go.
    back = open_store.reopen(retired, archive, both)
    check_node_keys(NodeKeys(both, tmp_path / "master.keys"), back)
    assert back.drain(10)
    done = open_store.reopen(back, archive, only_new, start_mover=False)
    check_node_keys(NodeKeys(only_new, tmp_path / "master.keys"), done)


def test_an_archive_of_a_release_before_seals_is_told_from_the_wrong_keys(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    # An encrypted node's archive whose metadata carries no seal (written before archive
    # seals): the keys read the node's shards, so the refusal says what the archive
    # lacks and how to seal it, not that these are not the archive's keys.
    archive = MemoryTier()
    store = open_store(archive, datasets={"enc": DATASETS["enc"]})
    store.put("enc", "s", payload(10))
    assert store.drain(10)
    store = open_store.reopen(store, archive, start_mover=False)
    for key in archive.list("enc/", limit=100).keys:
        if key.endswith(("_dataset.json", ".manifest")):
            document = json.loads(bytes(archive.get(key) or b""))
            del document["seal"]
            archive.put(key, json.dumps(document).encode())
    keys = NodeKeys(KEYRING, tmp_path / "master.keys")
    with pytest.raises(FailedPrecondition, match=r"enc/_dataset\.json carries no seal") as refused:
        check_node_keys(keys, store)
    assert "start once with --reseal-archive" in str(refused.value)
    assert "not the keys" not in str(refused.value)
    # ...and so sealed, the node starts, and its shard reads back.
    check_node_keys(keys, store, reseal_archive=True)
    store.reseal_archive()
    store.start_background()
    assert store.drain(10)
    resealed = open_store.reopen(store, archive, start_mover=False)
    check_node_keys(keys, resealed)
    assert resealed.get("enc", "s").to_bytes() == payload(10)


def test_uploads_held_for_metadata_cut_short_run_once_it_comes_whole(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    # A node whose archive was down at its start checks its keys again and again; a
    # check that met bodies cut short once held its uploads until a restart.
    archive = CutShort()
    plain = {"plain": DATASETS["plain"]}
    store = open_store(archive, datasets=plain)
    store.put("plain", "s", payload(10))
    assert store.drain(10)
    store = open_store.reopen(store, archive, start_mover=False)
    keys = NodeKeys(KEYRING, tmp_path / "master.keys")
    archive.cutting = True
    with pytest.raises(ArchiveUnavailable):  # at start: serve the hot tier meanwhile
        check_node_keys(keys, store)
    waiting = DeferredKeyCheck(keys, store, interval_s=0.05)
    store.start_background()
    waiting.start()
    try:
        store.put("plain", "t", payload(20))
        assert store.stats().journal_entries > 0
        deadline = time.monotonic() + 5  # a few checks meet the damage
        while time.monotonic() < deadline and len(archive.cut) < 3:
            time.sleep(0.02)
        assert len(archive.cut) >= 3 and store.stats().journal_entries > 0
        archive.cutting = False
        assert store.drain(10), store.stats().mover_error
    finally:
        waiting.stop()


def test_a_node_with_no_dataset_is_not_told_its_archive_answers_before_it_does(
    open_store: StoreFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # With no dataset, the key check makes no archive request: the first check after a
    # start with the archive down passed, and the log said "the archive answers and
    # its seals verify", uploads let run, with nothing listening at the endpoint.
    archive = FaultyTier(MemoryTier())
    store = open_store(archive, datasets={}, start_mover=False)
    archive.failing = True
    waiting = DeferredKeyCheck(NodeKeys(KEYRING, tmp_path / "master.keys"), store, interval_s=0.05)
    caplog.set_level(logging.WARNING, logger="tierstore.cli.masterkeys")
    waiting.start()
    try:
        wait_until(
            lambda: "the keys are not checked against the archive yet" in caplog.text,
            "a check to meet the archive down",
        )
        assert "uploads run" not in caplog.text
        archive.failing = False
        wait_until(lambda: "uploads run" in caplog.text, "the check once the archive answers")
    finally:
        waiting.stop()


def test_other_keys_with_uploads_pending_get_no_hint_of_a_retired_key(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    # Another node's key file (the same key id, other bytes) while an upload waits: no
    # key was retired, so the refusal must not ask for one back.
    archive = MemoryTier()
    stopped = archived_then_stopped(open_store, archive)
    stopped.put("plain", "t", payload(20))
    assert stopped.stats().journal_entries > 0
    other = LocalKeyring(keys={"k1": os.urandom(32)}, current="k1")
    wrong = open_store.reopen(stopped, archive, other, start_mover=False)
    with pytest.raises(FailedPrecondition, match="does not verify the seal") as refused:
        check_node_keys(NodeKeys(other, tmp_path / "master.keys"), wrong)
    assert "taken out of the file" not in str(refused.value)


class Killed(BaseException):
    """The node killed (not an error any code under test handles)."""


def killed_after_commit(cut: int) -> Callable[[LmdbEnvironment], Any]:
    """:meth:`LmdbEnvironment.write` for this thread to be killed right after its write
    transaction number ``cut`` commits (those of other threads, the mover's, go on)."""
    real = LmdbEnvironment.write
    caller = threading.current_thread()
    commits = iter(range(cut))

    @contextmanager
    def write(env: LmdbEnvironment) -> Iterator[Any]:
        with real(env) as txn:
            yield txn
        if threading.current_thread() is caller and next(commits, None) == cut - 1:
            raise Killed  # committed: nothing after it runs

    return write


def test_a_node_killed_anywhere_in_a_reseal_starts_without_the_flag_and_finishes_it(
    open_store: StoreFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A node that lost its key file, started with --reseal-archive, and killed during
    # the reseal (after its write transaction number ``cut``), with the mover having
    # uploaded all it had journaled by then. Its archive is all sealed under the lost
    # key but for what the reseal reached, so the start's seal check must not be made
    # against it; and the start must finish the reseal.
    monkeypatch.setattr(masterkeys, "ROTATION_BATCH", 2)
    plain = {name: DATASETS[name] for name in ("plain", "wt")}
    shards = {(dataset, f"s{i}"): payload(100 + i, i) for dataset in plain for i in range(3)}
    new = LocalKeyring(keys={"k1": os.urandom(32)}, current="k1")  # the key file made anew
    refused: dict[int, str] = {}
    cut = 0
    while True:
        cut += 1
        archive = MemoryTier()
        store = open_store(archive, datasets=plain)
        for (dataset, name), data in shards.items():
            store.put(dataset, name, data)
        assert store.drain(10)
        # serve --reseal-archive: no seal check, the background started, then the reseal.
        store = open_store.reopen(store, archive, new)
        wait_until(lambda: not resuming(), "the start's look for a rotation cut short")
        with monkeypatch.context() as patched:
            patched.setattr(LmdbEnvironment, "write", killed_after_commit(cut))
            try:
                store.reseal_archive()
            except Killed:
                finished = False
            else:
                finished = True
        assert store.drain(10), store.stats().mover_error

        store = open_store.reopen(store, archive, new, start_mover=False)
        try:
            check_node_keys(NodeKeys(new, tmp_path / "master.keys"), store)
        except FailedPrecondition as exc:
            refused[cut] = str(exc)
            continue
        store.start_background()
        wait_until(lambda: not resuming(), "the start's resumption of the reseal")
        assert store.drain(10), store.stats().mover_error
        # Done: a start checks the seals again, and they verify; a rebuild believes all.
        store = open_store.reopen(store, archive, new, start_mover=False)
        check_node_keys(NodeKeys(new, tmp_path / "master.keys"), store)
        assert not store.archive_seal_failure()
        rebuilt = open_store(archive, new, start_mover=False)
        assert rebuilt.rebuild_from_archive() == len(shards), f"killed after commit {cut}"
        for (dataset, name), data in shards.items():
            assert rebuilt.get(dataset, name).to_bytes() == data
        if finished:
            break
    assert cut > 2  # the reseal commits more than its notes
    assert not refused, f"starts refused after a kill at these commits of the reseal: {refused}"
