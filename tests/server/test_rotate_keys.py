"""Concurrent RotateKeys on a real ``tierstore serve``: no encrypted shard may be lost.

Several admins rotating at the same moment must each get a key of their own: the key
file keeps every key (distinct ids), and after a restart, which loads the keys from that
file alone, every encrypted shard reads back byte-identical, from the hot tier and from
the archive, and a catalog rebuilt from the archive's manifests reads it too.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from tierstore import errors
from tierstore.cli.main import app
from tierstore.client.client import Client
from tierstore.config import EngineSettings
from tierstore.crypto import LocalKeyring
from tierstore.engine.store import Store
from tierstore.tiers.s3 import S3Settings, S3Tier

from .conftest import ServerProcess, poll

ROTATORS = 4  # concurrent RotateKeys calls per round
ROUNDS = 3
SHARDS = 24
DATASET = "secret"


@pytest.fixture
def node(tmp_path: Path, s3_settings: S3Settings) -> Iterator[ServerProcess]:
    """A server on an empty prefix of the session SeaweedFS (stopped at the end)."""
    archive = (
        *("--s3-endpoint", s3_settings.endpoint_url, "--bucket", s3_settings.bucket),
        *("--prefix", s3_settings.prefix),
        *("--s3-access-key", s3_settings.access_key_id),
        *("--s3-secret-key", s3_settings.secret_access_key),
    )
    running = ServerProcess(tmp_path / "node", archive).start()
    yield running
    running.stop()


def rotate_at_once(node: ServerProcess) -> list[tuple[int, str]]:
    """``ROTATORS`` RotateKeys calls, each on its own connection, released together."""
    clients = [node.connect(local_reads=False) for _ in range(ROTATORS)]
    barrier = threading.Barrier(ROTATORS)

    def rotate(client: Client) -> tuple[int, str]:
        barrier.wait(timeout=30)
        return client.rotate_keys()

    try:
        with ThreadPoolExecutor(ROTATORS) as pool:
            calls = [pool.submit(rotate, client) for client in clients]
            return [call.result(timeout=120) for call in calls]  # raises what a call raised
    finally:
        for client in clients:
            client.close()


def key_ids_on_file(path: Path) -> list[str]:
    """Every key id in the key file in order, a repeated one twice (``json.loads`` would
    quietly keep only the last)."""
    document: list[tuple[str, Any]] = json.loads(
        path.read_text(), object_pairs_hook=lambda pairs: pairs
    )
    return [key_id for key_id, _ in dict(document)["keys"]]


def drained(client: Client) -> bool:
    return bool(client.stats()["journal_entries"] == 0)


def assert_all_read_back(client: Client, blobs: dict[str, bytes]) -> None:
    for name, blob in blobs.items():
        assert client.get(DATASET, name).to_pybytes() == blob, name


@pytest.mark.timeout(300)
def test_concurrent_rotations_keep_every_encrypted_shard_readable_after_a_restart(
    node: ServerProcess, s3_settings: S3Settings, tmp_path: Path
) -> None:
    key_file = node.data_dir / "master.keys"
    blobs = {f"s{index:03d}": os.urandom(1000 + index) for index in range(SHARDS)}
    with node.connect(local_reads=False) as client:
        client.create_dataset(DATASET, encrypted=True)
        for name, blob in blobs.items():
            client.put(DATASET, name, blob)

    for round_number in range(1, ROUNDS + 1):
        results = rotate_at_once(node)
        # Run one after another, every rotation finds all shards under the key before
        # its own, and rewraps them all.
        assert [rewrapped for rewrapped, _ in results] == [SHARDS] * ROTATORS
        ids = key_ids_on_file(key_file)
        assert len(ids) == len(set(ids)) == 1 + ROTATORS * round_number, ids
        # Each caller is told the key its own rotation made current.
        assert sorted(key_id for _, key_id in results) == sorted(ids[-ROTATORS:])
        keys = LocalKeyring.from_file(key_file).keys
        assert len(set(keys.values())) == len(keys)  # a fresh key each time

    with node.connect(local_reads=False) as client:
        assert_all_read_back(client, blobs)
        poll(lambda: drained(client), 60, "the archive uploads and manifest rewrites")
    assert node.stop() == 0

    node.start()  # the keys now come from the key file alone
    with node.connect(local_reads=False) as client:
        assert_all_read_back(client, blobs)
        for name in blobs:
            assert client.evict(DATASET, name) > 0
        assert_all_read_back(client, blobs)  # the archive's copies
    assert node.stop() == 0

    # The archive's manifests alone, with the key file, give every shard back.
    archive = S3Tier(s3_settings)
    settings = EngineSettings(data_dir=tmp_path / "rebuilt")
    try:
        with Store(settings, archive, LocalKeyring.from_file(key_file)) as rebuilt:
            assert rebuilt.rebuild_from_archive() == SHARDS
            for name, blob in blobs.items():
                assert rebuilt.get(DATASET, name).to_bytes() == blob, name
    finally:
        archive.close()


def test_a_rotation_that_would_drop_a_key_is_refused_by_name(node: ServerProcess) -> None:
    key_file = node.data_dir / "master.keys"
    first_start = key_file.read_bytes()
    with node.connect(local_reads=False) as client:
        client.create_dataset(DATASET, encrypted=True)
        client.put(DATASET, "s", b"secret")
        assert client.rotate_keys() == (1, "k2")
        key_file.write_bytes(first_start)  # an old copy put back: k2 is gone
        with pytest.raises(errors.KeyRotationRefused, match=r"\['k2'\]"):
            client.rotate_keys()
        assert key_file.read_bytes() == first_start
        assert client.get(DATASET, "s").to_pybytes() == b"secret"


def test_keys_ls_names_the_keys_which_is_current_and_their_shards(
    node: ServerProcess,
) -> None:
    # An admin had no way to see which master key ids a node holds, which is current, or
    # which still wrap data keys: `keys retire` takes an id, and the key file itself
    # shows the keys.
    key_file = node.data_dir / "master.keys"
    env = node.cli_env()
    with node.connect(local_reads=False) as client:
        assert client.list_keys() == [{"key_id": "k1", "current": True, "held": True, "shards": 0}]
        client.create_dataset(DATASET, encrypted=True)
        client.create_dataset("plain", encrypted=False)
        for index in range(3):
            client.put(DATASET, f"s{index}", os.urandom(100))
        client.put("plain", "p", b"not encrypted")
        assert client.list_keys() == [{"key_id": "k1", "current": True, "held": True, "shards": 3}]
        assert client.rotate_keys() == (3, "k2")
        client.put(DATASET, "new", b"under k2")
        assert client.list_keys() == [
            {"key_id": "k1", "current": False, "held": True, "shards": 0},
            {"key_id": "k2", "current": True, "held": True, "shards": 4},
        ]
        keys = LocalKeyring.from_file(key_file).keys
        shown = cli(env, "keys", "ls")
        assert shown.exit_code == 0, shown.stderr
        rows = [
            [cell for cell in line.split() if cell != "│"] for line in shown.stdout.splitlines()
        ]
        assert ["k1", "no", "yes", "0"] in rows and ["k2", "yes", "yes", "4"] in rows
        as_json = cli(env, "--json", "keys", "ls")
        assert json.loads(as_json.stdout) == client.list_keys()
        for key in keys.values():  # never a key, in any form
            for form in (base64.b64encode(key).decode(), key.hex()):
                assert form not in shown.stdout + as_json.stdout

        poll(lambda: drained(client), 60, "the manifest rewrites")
        assert client.retire_key("k1") == (["k2"], "k2")
        assert client.list_keys() == [{"key_id": "k2", "current": True, "held": True, "shards": 4}]


def cli(env: dict[str, str], *args: str) -> Result:
    """``tierstore ARGS`` run in this process with ``env``."""
    return CliRunner().invoke(app, list(args), env=env)


def test_the_key_calls_wait_as_long_as_a_transfer(node: ServerProcess) -> None:
    # RotateKeys rewraps every data key, and RetireKey and ListKeys walk the catalog:
    # on a catalog of a million shards they take longer than a unary call's deadline
    # (30 s by default). The caller was told DeadlineExceeded while the rotation went
    # on, and a retry minted one more key. They now have the transfers' deadline; a
    # unary deadline too short for any of them stands in for the large catalog here.
    with node.connect(local_reads=False) as client:
        client.create_dataset(DATASET, encrypted=True)
        for index in range(20):
            client.put(DATASET, f"s{index}", os.urandom(100))
        with node.connect(local_reads=False, timeout_s=1e-4) as hurried:
            assert hurried.rotate_keys() == (20, "k2")
            assert [k["shards"] for k in hurried.list_keys()] == [0, 20]
            poll(lambda: drained(client), 60, "the manifest rewrites")
            assert hurried.retire_key("k1") == (["k2"], "k2")
        assert key_ids_on_file(node.data_dir / "master.keys") == ["k2"]
