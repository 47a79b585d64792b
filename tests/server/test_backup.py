"""The backup that docs/service.md ("Backups") tells an operator to keep is enough.

A node on an external archive loses its whole data directory. A new directory holding
only the files of the backup (``master.keys``, ``tokens.json``, ``admin.token`` and
``tls/``), started with ``--rebuild-from-archive``, serves every archived shard at its
bytes to the clients it had: their tokens and their copy of the CA still work.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import tierstore
from tierstore import errors
from tierstore.types import Grant, Role

from .conftest import ServerProcess, poll

#: what docs/service.md says to back up, relative to the data directory
BACKUP = ("master.keys", "tokens.json", "admin.token", "tls")


def copy_backup(source: Path, target: Path) -> None:
    """Copy the files of the backup from ``source`` (a running node's data directory,
    or a backup) into ``target``, a new directory."""
    target.mkdir(mode=0o700)
    for name in BACKUP:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, ignore=shutil.ignore_patterns(".lock"))
        else:
            shutil.copy2(source / name, target / name)


@pytest.mark.timeout(240)
def test_a_data_directory_restored_from_its_backup_serves_the_same_clients(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    node = spawn_server(data_dir)
    blobs = {"a": os.urandom(5000), "b/c": os.urandom(300_000)}
    with node.connect() as admin:
        admin.create_dataset("secret", encrypted=True)  # write-back: archived later
        admin.create_dataset("plain", encrypted=False)
        for dataset in ("secret", "plain"):
            for name, blob in blobs.items():
                admin.put(dataset, name, blob)
        _, reader_token = admin.create_token("trainer", [Grant("secret", Role.READER)])
        # The backup covers what the archive holds: wait for the journal to drain.
        poll(lambda: admin.stats()["journal_entries"] == 0, 60, "the uploads", interval_s=0.2)
    copy_backup(data_dir, tmp_path / "backup")
    clients_ca = tmp_path / "clients-ca.pem"  # the copy each client was handed
    shutil.copy2(data_dir / "tls" / "ca.pem", clients_ca)
    assert node.stop() == 0

    shutil.rmtree(data_dir)  # the disk is gone
    copy_backup(tmp_path / "backup", data_dir)
    with pytest.raises(AssertionError, match="the server exited") as refused:
        spawn_server(data_dir)  # a new hot tier over an archive that holds objects
    assert "--rebuild-from-archive" in str(refused.value)

    restored = spawn_server(data_dir, "--rebuild-from-archive")
    assert "rebuilt the catalog from the archive: 4 shards of 2 datasets" in restored.output()
    with tierstore.connect(restored.address, token=reader_token, ca=clients_ca) as trainer:
        for name, blob in blobs.items():
            assert trainer.get("secret", name).to_pybytes() == blob
        with pytest.raises(errors.PermissionDenied):
            trainer.put("secret", "more", b"a reader still may not write")
    admin_token = (tmp_path / "backup" / "admin.token").read_text().strip()
    with tierstore.connect(restored.address, token=admin_token, ca=clients_ca) as admin:
        for name, blob in blobs.items():
            assert admin.get("plain", name).to_pybytes() == blob
        admin.put("plain", "after", b"new writes work")
        assert admin.get("plain", "after").to_pybytes() == b"new writes work"


@pytest.mark.timeout(240)
def test_a_stopped_node_with_the_embedded_archive_is_backed_up_by_a_copy_of_its_directory(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # The embedded archive lives in the data directory: a copy of the whole directory,
    # taken while the node is stopped, is the backup, and holds the write-back puts the
    # journal had not uploaded yet too.
    data_dir = tmp_path / "node"
    node = spawn_server(data_dir, embedded=True)
    blob = os.urandom(200_000)
    with node.connect() as admin:
        admin.create_dataset("secret", encrypted=True)
        admin.put("secret", "s", blob)
    assert node.stop() == 0
    shutil.copytree(data_dir, tmp_path / "backup", symlinks=True)
    shutil.rmtree(data_dir)  # the disk is gone
    shutil.copytree(tmp_path / "backup", data_dir, symlinks=True)

    restored = spawn_server(data_dir, embedded=True)
    assert "rebuilt" not in restored.output()
    with restored.connect(ca=tmp_path / "backup" / "tls" / "ca.pem") as admin:
        assert admin.get("secret", "s").to_pybytes() == blob
        poll(lambda: admin.stats()["journal_entries"] == 0, 60, "the uploads", interval_s=0.2)
        assert admin.evict("secret", "s") >= len(blob)
        assert not admin.stat("secret", "s").hot
        assert admin.get("secret", "s").to_pybytes() == blob  # from the archive


@pytest.mark.timeout(240)
def test_a_restored_token_file_gives_no_role_on_a_namesake_made_since(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # The token file of a backup taken before a dataset was deleted holds the old
    # tenant's grant on it; restored once someone else had made a dataset of the name,
    # it let the old tenant read the new one's shards. The node drops it as it starts.
    data_dir = tmp_path / "node"
    node = spawn_server(data_dir)
    with node.connect() as admin:
        admin.create_dataset("team", encrypted=False)
        _, old_tenant = admin.create_token("team-a", [Grant("team", Role.READER)])
        admin.create_dataset("other", encrypted=False)
        _, keeps = admin.create_token("team-c", [Grant("other", Role.READER)])
        admin.put("other", "s", b"still readable")
    shutil.copy2(data_dir / "tokens.json", tmp_path / "tokens.backup")
    with node.connect() as admin:
        admin.delete_dataset("team")  # takes team-a's grant
        admin.create_dataset("team", encrypted=False)  # someone else's now
        admin.put("team", "b", b"team b's own bytes")
    assert node.stop() == 0
    shutil.copy2(tmp_path / "tokens.backup", data_dir / "tokens.json")  # restored

    restarted = spawn_server(data_dir)
    assert "removed 1 grant(s) made for datasets deleted since" in restarted.output()
    poll(lambda: "removed a stale grant" in restarted.errors(), 10, "the node's warning")
    assert "its reader grant on 'team'" in restarted.errors()
    ca = data_dir / "tls" / "ca.pem"
    with (
        tierstore.connect(restarted.address, token=old_tenant, ca=ca) as a,
        pytest.raises((errors.DatasetNotFound, errors.PermissionDenied)),
    ):
        a.get("team", "b")
    with tierstore.connect(restarted.address, token=keeps, ca=ca) as c:
        assert c.get("other", "s").to_pybytes() == b"still readable"  # its dataset is the same


@pytest.mark.timeout(240)
def test_a_restore_without_the_admin_token_or_the_ca_says_so_and_gets_an_admin_back(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # The banner told the operator to export an admin.token that was not there (the
    # token file held a live admin token, so none was written), gave no way back but
    # editing tokens.json, and made a new CA without a word to hand the clients.
    data_dir = tmp_path / "node"
    node = spawn_server(data_dir)
    with node.connect() as admin:
        admin.create_dataset("kept", encrypted=False)
        admin.put("kept", "s", b"still here")
        old_admin = node.token
    assert node.stop() == 0
    (data_dir / "admin.token").unlink()
    shutil.rmtree(data_dir / "tls")

    restarted = spawn_server(data_dir)
    banner = restarted.output()
    assert "admin.token is missing, and tokens.json holds a live admin token" in banner
    assert "--new-admin-token" in banner
    assert "made a new TLS CA (tls/ca.pem was missing): hand every client" in banner
    assert restarted.stop() == 0
    shutil.rmtree(data_dir / "tls")  # and again: the start that writes a token says so too
    again = spawn_server(data_dir, "--new-admin-token")
    assert "a new admin token was written to" in again.output()
    assert "made a new TLS CA" in again.output()
    with again.connect() as admin:
        assert admin.get("kept", "s").to_pybytes() == b"still here"
    assert again.token != old_admin  # another token
    with again.connect(token=old_admin) as old:  # the lost one stays live until revoked
        assert old.get("kept", "s").to_pybytes() == b"still here"
