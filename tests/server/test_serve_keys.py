"""The master keys of a real ``tierstore serve``: where they come from, and a start refused
when they cannot read the shards the node holds (tierstore/cli/masterkeys.py).

A missing key file used to be replaced by a new key under the same id ``k1``, and a
wrong key under the right id was used as it was: the node started, failed every
encrypted read, and acknowledged encrypted puts under a key that could not read the
rest (nor they be read once the real key file was back). ``master_key_file`` in the
settings file and ``TIERSTORE_MASTER_KEY_FILE`` were ignored (the flag's default always
won), and so was ``TIERSTORE_MASTER_KEY_B64``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import raw_s3_client
from tierstore import errors
from tierstore.crypto import LocalKeyring
from tierstore.tiers.seaweedfs import SeaweedServer

from .conftest import ServerProcess, archive_of, poll, serve_error_lines

DATASET = "secret"


def refused_start(
    spawn_server: Callable[..., ServerProcess], data_dir: Path, *args: str, **kwargs: object
) -> str:
    """Start a node that must refuse; its one error line."""
    with pytest.raises(AssertionError, match="the server exited with 1") as refused:
        spawn_server(data_dir, *args, **kwargs)
    lines = serve_error_lines(str(refused.value).split("stderr:\n", 1)[1])
    assert lines and lines[-1].startswith("error: FailedPrecondition: "), lines
    return lines[-1]


def key_file(path: Path, key_id: str) -> Path:
    """A key file with one random key (mode 0600), in a directory made if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = base64.b64encode(os.urandom(32)).decode()
    path.write_text(json.dumps({"current": key_id, "keys": {key_id: key}}))
    path.chmod(0o600)
    return path


def archived_node(
    spawn_server: Callable[..., ServerProcess],
    data_dir: Path,
    dataset: str,
    shards: dict[str, bytes],
    *,
    encrypted: bool = True,
) -> None:
    """Run a node on ``data_dir`` once: a write-through ``dataset`` holding ``shards``
    (in the archive too), then stopped."""
    node = spawn_server(data_dir)
    with node.connect(local_reads=False) as client:
        client.create_dataset(dataset, encrypted=encrypted, durability="write-through")
        for name, data in shards.items():
            client.put(dataset, name, data)
    assert node.stop() == 0


def rebuilt(
    spawn_server: Callable[..., ServerProcess], data_dir: Path, summary: str, *flags: str
) -> ServerProcess:
    """A node started with --rebuild-from-archive (and ``flags``) that rebuilt its
    catalog, as it says: ``summary`` is "<n> shards of <m> datasets"."""
    node = spawn_server(data_dir, "--rebuild-from-archive", *flags)
    assert f"rebuilt the catalog from the archive: {summary}" in node.output()
    return node


#: the shards of a plaintext node's dataset "plain"
PLAIN_SHARDS = {name: name.encode() * 1000 for name in ("a", "b")}


@pytest.mark.timeout(240)
def test_a_node_whose_keys_do_not_read_its_shards_refuses_to_start(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    keys = data_dir / "master.keys"
    archived_node(spawn_server, data_dir, DATASET, {"old": b"written under the first key"})
    real = keys.read_bytes()

    keys.unlink()  # the data directory restored without its secrets
    line = refused_start(spawn_server, data_dir)
    assert f"master key file {keys} did not exist" in line
    assert not keys.exists()  # the key it made is no node's key
    typo = tmp_path / "master.kyes"
    line = refused_start(spawn_server, data_dir, "--master-key-file", str(typo))
    assert f"master key file {typo} did not exist" in line and not typo.exists()

    key_file(keys, "k1")  # the wrong key under the right id
    wrong = keys.read_bytes()
    line = refused_start(spawn_server, data_dir)
    assert f"master key file {keys} does not unwrap" in line and "'k1'" in line
    assert "secret/old" in line and keys.read_bytes() == wrong
    key_file(keys, "k2")  # a key file that lacks k1
    line = refused_start(spawn_server, data_dir)
    assert "does not unwrap" in line and "'k1'" in line

    keys.write_bytes(real)
    again = spawn_server(data_dir)
    with again.connect(local_reads=False) as client:
        assert client.get(DATASET, "old").to_pybytes() == b"written under the first key"
        client.put(DATASET, "new", b"after the key came back")
        assert client.get(DATASET, "new").to_pybytes() == b"after the key came back"


def rotated(node: ServerProcess) -> str:
    """Rotate the node's master key; the new key's id."""
    with node.connect(local_reads=False) as client:
        _, key_id = client.rotate_keys()
    return str(key_id)


@pytest.mark.timeout(240)
def test_the_key_file_comes_from_the_settings_file_then_the_environment_then_the_flag(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    in_config, in_env, in_flag = (
        key_file(tmp_path / f"{name}.keys", f"{name}1") for name in ("config", "env", "flag")
    )
    config = tmp_path / "node.toml"
    config.write_text(f'master_key_file = "{in_config}"\n')
    env = {"TIERSTORE_MASTER_KEY_FILE": str(in_env)}
    steps: list[tuple[tuple[str, ...], dict[str, str], Path]] = [
        (("--config", str(config)), {}, in_config),
        (("--config", str(config)), env, in_env),
        (("--config", str(config), "--master-key-file", str(in_flag)), env, in_flag),
    ]
    for args, variables, used in steps:
        before = {path: path.read_bytes() for path in (in_config, in_env, in_flag)}
        node = spawn_server(data_dir, *args, env=variables)
        assert rotated(node) == "k1"  # the first k<n> in a file of "<name>1" keys
        assert node.stop() == 0
        for path, contents in before.items():
            changed = path.read_bytes() != contents
            assert changed == (path == used), (path, used)
        assert set(LocalKeyring.from_file(used).keys) == {f"{used.stem}1", "k1"}
    assert not (data_dir / "master.keys").exists()


@pytest.mark.timeout(240)
def test_a_base64_master_key_is_used_and_a_rotation_of_it_is_refused(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    key = base64.b64encode(os.urandom(32)).decode()
    key_id = LocalKeyring.from_base64(key).current
    env = {"TIERSTORE_MASTER_KEY_B64": key}
    node = spawn_server(data_dir, env=env)
    with node.connect(local_reads=False) as client:
        client.create_dataset(DATASET, encrypted=True, durability="write-through")
        client.put(DATASET, "s", b"under the base64 key")
        with pytest.raises(errors.KeyRotationRefused, match="Move it to a key file") as refused:
            client.rotate_keys()
        assert f'"current": "{key_id}"' in str(refused.value)
    assert node.stop() == 0
    assert not (data_dir / "master.keys").exists()

    again = spawn_server(data_dir, env=env)
    with again.connect(local_reads=False) as client:
        assert client.get(DATASET, "s").to_pybytes() == b"under the base64 key"
    assert again.stop() == 0
    # Without it the node would make itself a new key file: refused, and none is left.
    line = refused_start(spawn_server, data_dir)
    assert "did not exist" in line and not (data_dir / "master.keys").exists()


@pytest.mark.timeout(240)
def test_a_rebuild_that_believes_nothing_of_the_archive_refuses_to_serve(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # A lost hot tier and the wrong key file: the new catalog is empty, so the keys
    # check passes, and the rebuild trusts no sealed object. Serving that empty
    # catalog would hide every archived shard (and number new ones over them).
    data_dir = tmp_path / "node"
    keys = data_dir / "master.keys"
    archived_node(spawn_server, data_dir, DATASET, {"kept": b"in the archive"})
    real = keys.read_bytes()
    shutil.rmtree(data_dir / "hot")
    key_file(keys, "k1")

    line = refused_start(spawn_server, data_dir, "--rebuild-from-archive")
    assert "the rebuild believed none of them" in line

    keys.write_bytes(real)
    again = rebuilt(spawn_server, data_dir, "1 shards of 1 datasets")
    with again.connect(local_reads=False) as client:
        assert client.get(DATASET, "kept").to_pybytes() == b"in the archive"


@pytest.mark.timeout(300)
def test_a_plaintext_node_tells_the_wrong_keys_by_the_archives_seals(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # No encrypted shard, so no data key to unwrap: the archive's sealed metadata is
    # what shows the keys are not the node's. A lost key file is replaced only on
    # request, and then the archive is sealed again under the new key, so a rebuild
    # from the archive still believes every object.
    data_dir = tmp_path / "node"
    keys = data_dir / "master.keys"
    archived_node(spawn_server, data_dir, "plain", PLAIN_SHARDS, encrypted=False)

    key_file(keys, "k1")  # another key under the same id
    line = refused_start(spawn_server, data_dir)
    assert "does not verify the seal of the archive's plain/_dataset.json" in line
    assert "--reseal-archive" in line
    keys.unlink()  # lost: a new key would be made, and is refused, saying the way on
    line = refused_start(spawn_server, data_dir)
    assert "did not exist" in line and "--reseal-archive" in line and not keys.exists()

    resealed = spawn_server(data_dir, "--reseal-archive")
    assert "sealed under these keys" in resealed.output()
    with resealed.connect(local_reads=False) as client:
        poll(lambda: client.stats()["journal_entries"] == 0, 60, "the archive resealed")
    assert resealed.stop() == 0
    shutil.rmtree(data_dir / "hot")  # and now the hot tier is lost too
    with rebuilt(spawn_server, data_dir, "2 shards of 1 datasets").connect(
        local_reads=False
    ) as client:
        assert client.get("plain", "b").to_pybytes() == b"b" * 1000


@pytest.mark.timeout(300)
def test_a_plaintext_node_that_lost_its_disk_keys_included_is_rebuilt_on_request(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # The hot tier and master.keys share the node's disk by default. The archive's
    # metadata is sealed under the lost keys, so a rebuild believed none of it, and the
    # way on the refusal named (--reseal-archive) was refused too: plaintext data in
    # the archive could not be had back.
    data_dir = tmp_path / "node"
    keys = data_dir / "master.keys"
    archived_node(spawn_server, data_dir, "plain", PLAIN_SHARDS, encrypted=False)
    shutil.rmtree(data_dir / "hot")
    keys.unlink()

    line = refused_start(spawn_server, data_dir, "--rebuild-from-archive")
    assert "--reseal-archive (with --rebuild-from-archive too" in line and not keys.exists()
    resealed = rebuilt(spawn_server, data_dir, "2 shards of 1 datasets", "--reseal-archive")
    assert "without checking its seals" in resealed.errors()
    with resealed.connect(local_reads=False) as client:
        for name, data in PLAIN_SHARDS.items():
            assert client.get("plain", name).to_pybytes() == data
        poll(lambda: client.stats()["journal_entries"] == 0, 60, "the archive resealed")
    assert resealed.stop() == 0

    # Sealed under the new key now: a later rebuild believes it with no flag but its own.
    shutil.rmtree(data_dir / "hot")
    again = rebuilt(spawn_server, data_dir, "2 shards of 1 datasets")
    with again.connect(local_reads=False) as client:
        assert client.get("plain", "b").to_pybytes() == PLAIN_SHARDS["b"]


@pytest.mark.timeout(300)
def test_lost_keys_never_rebuild_an_archive_that_holds_encrypted_data(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # Nothing reads those without the keys, and believing the archive's word that a
    # dataset is plaintext is what the seals are there to stop.
    data_dir = tmp_path / "node"
    keys = data_dir / "master.keys"
    archived_node(spawn_server, data_dir, DATASET, {"kept": b"under the old key"})
    real = keys.read_bytes()
    shutil.rmtree(data_dir / "hot")
    keys.unlink()

    line = refused_start(spawn_server, data_dir, "--rebuild-from-archive", "--reseal-archive")
    assert f"the archive holds encrypted datasets ({DATASET})" in line
    assert not keys.exists()

    keys.write_bytes(real)  # found after all: nothing was changed meanwhile
    keys.chmod(0o600)
    again = rebuilt(spawn_server, data_dir, "1 shards of 1 datasets")
    with again.connect(local_reads=False) as client:
        assert client.get(DATASET, "kept").to_pybytes() == b"under the old key"


@pytest.mark.timeout(120)
def test_a_key_file_linked_into_the_data_directory_keeps_its_own_mode(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # The start takes group and other bits off the secrets in the data directory; it
    # followed a link to a key file kept elsewhere and changed that file's mode (or,
    # where it could not, refused to start and blamed the data directory).
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    kept = key_file(tmp_path / "secret-mount" / "shared.keys", "k1")
    kept.chmod(0o640)  # readable by the pod's group, as a mounted Secret is
    (data_dir / "master.keys").symlink_to(kept)
    node = spawn_server(data_dir)
    assert node.stop() == 0
    assert kept.stat().st_mode & 0o777 == 0o640
    assert (data_dir / "admin.token").stat().st_mode & 0o777 == 0o600


@pytest.mark.timeout(300)
def test_a_rebuild_that_would_leave_a_dataset_out_is_refused_unless_accepted(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path, seaweedfs: SeaweedServer
) -> None:
    # One damaged _dataset.json: the rebuild skipped the whole dataset with a warning,
    # said "ready", and the dataset made again under the name (it was missing) had the
    # old one's archived, acknowledged shards deleted by the next rebuild.
    data_dir = tmp_path / "node"
    node = spawn_server(data_dir)
    with node.connect(local_reads=False) as client:
        for dataset in ("wt", "other"):
            client.create_dataset(dataset, encrypted=False, durability="write-through")
            client.put(dataset, "s", dataset.encode() * 1000)
    settings = archive_of(node, seaweedfs)
    assert node.stop() == 0
    shutil.rmtree(data_dir / "hot")
    s3 = raw_s3_client(settings)
    key = f"{settings.prefix}wt/_dataset.json"
    whole = s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=settings.bucket, Key=key, Body=whole[: len(whole) // 2])

    line = refused_start(spawn_server, data_dir, "--rebuild-from-archive")
    assert "would leave out 1 archive objects it does not believe, of datasets 'wt'" in line
    assert "nothing was rebuilt" in line and "--accept-partial-rebuild" in line

    s3.put_object(Bucket=settings.bucket, Key=key, Body=whole)  # repaired: all of it back
    # Someone else's object beside them is warned of, and refuses nothing.
    s3.put_object(Bucket=settings.bucket, Key=f"{settings.prefix}notes/readme.manifest", Body=b"hi")
    again = rebuilt(spawn_server, data_dir, "2 shards of 2 datasets")
    with again.connect(local_reads=False) as client:
        assert client.get("wt", "s").to_pybytes() == b"wt" * 1000
    assert again.stop() == 0

    shutil.rmtree(data_dir / "hot")  # lost again, and this time accepted without "wt"
    s3.put_object(Bucket=settings.bucket, Key=key, Body=whole[: len(whole) // 2])
    partial = rebuilt(spawn_server, data_dir, "1 shards of 1 datasets", "--accept-partial-rebuild")
    assert "left out of the rebuild (--accept-partial-rebuild): 1 archive objects" in (
        partial.output()
    )
    assert "of datasets 'wt'" in partial.output() and "Make no dataset of" in partial.output()
    with partial.connect(local_reads=False) as client:
        assert client.get("other", "s").to_pybytes() == b"other" * 1000
        with pytest.raises(errors.DatasetNotFound):
            client.get("wt", "s")
