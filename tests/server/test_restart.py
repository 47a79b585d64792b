"""What ``tierstore serve`` keeps in its data directory, across a restart and a tampered disk.

First start: the admin token, the CA and the other secrets exist with mode 0600. A
restart reuses them (the same token and CA work; no new admin token is issued). A
byte flipped in a hot-tier frame while the server is stopped (through the ``lmdb``
package, sub-database ``frames``) makes the client raise DataLoss, plaintext or
encrypted, and every other shard still reads back intact.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest

from tierstore import errors
from tierstore.client.client import Client
from tierstore.config import EngineSettings
from tierstore.engine.records import frame_key
from tierstore.tiers.seaweedfs import _alive

from .conftest import ServerProcess, poll

SECRETS = (
    "admin.token",
    "tokens.json",
    "master.keys",
    "tls/ca.pem",
    "tls/ca.key",
    "tls/server.key",
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def flip_hot_frame(data_dir: Path, generation: int, index: int, position: int) -> None:
    """Invert one byte of a stored frame in the stopped server's LMDB hot tier."""
    # The map size the server uses (default settings), so the environment is left as it was.
    map_size = EngineSettings().effective_map_size
    env = lmdb.open(str(data_dir / "hot"), max_dbs=16, map_size=map_size, lock=True)
    try:
        frames = env.open_db(b"frames", create=False)
        key = frame_key(generation, index).encode()
        with env.begin(write=True, db=frames) as txn:
            stored = bytearray(txn.get(key))
            stored[position] ^= 0xFF
            txn.put(key, bytes(stored))
    finally:
        env.close()


@pytest.mark.timeout(120)
def test_restart_reuses_secrets_and_tampering_is_data_loss(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    first = spawn_server(data_dir)
    assert "a new admin token was written" in first.output()
    assert mode(data_dir) == 0o700
    for name in SECRETS:
        assert mode(data_dir / name) == 0o600, name
    token, ca = first.token, first.ca_path.read_bytes()

    client = first.connect()
    blobs = {"victim": os.urandom(5 * 1024 * 1024), "intact": os.urandom(1000)}
    array = np.arange(10_000, dtype=np.float32)
    generations = {}
    for encrypted in (False, True):
        dataset = "secret" if encrypted else "plain"
        client.create_dataset(dataset, encrypted=encrypted, durability="write-through")
        for name, blob in blobs.items():
            info = client.put(dataset, name, blob)
            generations[dataset, name] = info.generation
        generations[dataset, "tensor"] = client.put(dataset, "tensor", array).generation
    client.close()
    assert first.stop() == 0

    for dataset in ("plain", "secret"):
        flip_hot_frame(data_dir, generations[dataset, "victim"], 0, 1234)
        # frame 0 of an Arrow shard is its schema; frame 1 holds the values
        flip_hot_frame(data_dir, generations[dataset, "tensor"], 1, 100)

    # The documented shared-group setup for local reads (group read and search) is
    # kept over a restart; other users' bits and group write are taken away. An
    # operator's `chmod -R g+rX` for it reaches the secrets too: they go back to 0600
    # (the group would otherwise read the admin token and the master keys).
    data_dir.chmod(0o777)
    for name in SECRETS:
        (data_dir / name).chmod(0o644)
    second = spawn_server(data_dir)
    assert mode(data_dir) == 0o750
    assert "a new admin token was written" not in second.output()
    assert second.token == token
    assert second.ca_path.read_bytes() == ca
    for name in SECRETS:
        assert mode(data_dir / name) == 0o600, name

    with second.connect(token=token) as again:
        for dataset in ("plain", "secret"):
            assert again.stat(dataset, "victim").hot  # read from the tampered hot copy
            with pytest.raises(errors.DataLoss):
                again.get(dataset, "victim")
            with pytest.raises(errors.DataLoss):
                again.get(dataset, "victim", offset=1000, length=10)
            with pytest.raises(errors.DataLoss):
                again.read_tensor(dataset, "tensor")
            assert again.get(dataset, "intact").to_pybytes() == blobs["intact"]
            # Bytes of the undamaged second frame are still served.
            tail = again.get(dataset, "victim", offset=4 * 1024 * 1024)
            assert tail.to_pybytes() == blobs["victim"][4 * 1024 * 1024 :]
    assert second.stop() == 0


@pytest.mark.timeout(180)
def test_a_node_killed_outright_starts_again_with_its_embedded_archive(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # kill -9 of the node alone (not its process group): its weed used to live on,
    # holding the archive's store lock, and the restart failed ("weed exited with
    # status 255") until someone found and killed it by hand.
    data_dir = tmp_path / "node"
    first = spawn_server(data_dir, embedded=True)
    blob = os.urandom(3 * 1024 * 1024)
    with first.connect() as client:
        # write-back: acknowledged before the archive has it
        client.create_dataset("d", encrypted=False)
        client.put("d", "s", blob)
    os.kill(first.pid, signal.SIGKILL)
    first.process.wait()  # type: ignore[union-attr]

    second = spawn_server(data_dir, embedded=True)
    with second.connect() as client:
        assert client.get("d", "s").to_pybytes() == blob
        poll(lambda: client.stat("d", "s").archived, 60, "the journal to reach the archive")
        assert client.evict("d", "s") > 0
        assert client.get("d", "s").to_pybytes() == blob  # from the embedded archive


def test_a_test_nodes_kill_takes_its_weed_along_at_once(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # Weed runs in a process group of its own (out of reach of a terminal's Ctrl-C), so
    # the fixture's SIGKILL of the node's group no longer reached it: only the parent-
    # death SIGTERM did, which weed may take its time over, between tests.
    node = spawn_server(tmp_path / "node", embedded=True)
    weed = int((tmp_path / "node" / "archive" / "weed.pid").read_text().split()[0])
    assert _alive(weed)
    node.kill()
    assert not _alive(weed)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("same_ports", [False, True])
def test_a_second_node_on_a_data_directory_in_use_is_refused(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path, same_ports: bool
) -> None:
    data_dir = tmp_path / "node"
    first = spawn_server(data_dir)
    with first.connect() as client:
        client.create_dataset("d", encrypted=False)
        client.put("d", "s", b"kept")
    second = ServerProcess(data_dir, first.extra_args)
    if same_ports:
        # `tierstore serve` run twice: the ports are taken too. It said only that it
        # could not listen on the API port, not that a node runs there already.
        second.port, second.health_port, second.metrics_port = (
            first.port,
            first.health_port,
            first.metrics_port,
        )
    with pytest.raises(AssertionError, match="exited with"):
        second.start(same_ports=same_ports)
    assert second.process is not None and second.process.returncode != 0
    # One error line, no traceback. Warnings logged before it are no error: a disk with
    # less room than the hot tier's 64 GiB default, as on a small CI machine.
    logged = second.errors().strip().splitlines()
    (line,) = [entry for entry in logged if '"level": "warning"' not in entry]
    assert f"in use by another tierstore serve (process {first.pid})" in line
    with first.connect() as client:  # the running node is untouched
        assert client.get("d", "s").to_pybytes() == b"kept"


@pytest.mark.timeout(180)
def test_a_lost_hot_tier_is_refused_until_asked_to_rebuild_from_the_archive(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    first = spawn_server(data_dir, "--rebuild-from-archive")  # a new node: nothing to do
    assert "rebuilt" not in first.output()
    blobs = {"a": os.urandom(3000), "b/c": os.urandom(70_000)}
    with first.connect() as client:
        client.create_dataset("plain", encrypted=False, durability="write-through")
        client.create_dataset("secret", encrypted=True, durability="write-through")
        client.create_dataset("empty", encrypted=False)
        for dataset in ("plain", "secret"):
            for name, blob in blobs.items():
                client.put(dataset, name, blob)
        table = np.arange(100, dtype=np.int64)
        client.put("plain", "tensor", table)
    assert first.stop() == 0
    shutil.rmtree(data_dir / "hot")  # the NVMe device is gone; keys, tokens, TLS remain

    unchecked = data_dir / "hot-tier.unchecked"
    for _ in range(2):  # a start stopped before the check passed leaves it to the next
        with pytest.raises(AssertionError, match="the server exited") as refused:
            spawn_server(data_dir)
        assert "--rebuild-from-archive" in str(refused.value)
        assert "hot tier was lost" in str(refused.value)
        # The hot tier it made stays (as after a SIGKILL mid-rebuild); the mark says
        # that it was never checked.
        assert (data_dir / "hot" / "data.mdb").exists() and unchecked.exists()

    again = spawn_server(data_dir, "--rebuild-from-archive")
    assert "rebuilt the catalog from the archive: 5 shards of 3 datasets" in again.output()
    assert not unchecked.exists()
    with again.connect() as client:
        assert {name for name, _ in client.list_datasets()} == {"plain", "secret", "empty"}
        assert client.get_dataset("secret").encrypted
        for dataset in ("plain", "secret"):
            for name, blob in blobs.items():
                assert client.get(dataset, name).to_pybytes() == blob
        assert np.array_equal(client.read_tensor("plain", "tensor"), table)
        client.put("plain", "after", b"new writes work")
    assert again.stop() == 0
    # A plain restart with the flag: the catalog is there, nothing is rebuilt.
    third = spawn_server(data_dir, "--rebuild-from-archive")
    assert "rebuilt" not in third.output()
    with third.connect() as client:
        assert client.get("plain", "after").to_pybytes() == b"new writes work"
        for name, _ in client.list_datasets():
            client.delete_dataset(name, force=True)
    assert third.stop() == 0  # most likely before the archive's objects are all removed
    # The hot tier exists, with an empty catalog: a restart, not a lost hot tier.
    fourth = spawn_server(data_dir)
    with fourth.connect() as client:
        assert client.list_datasets() == []


def reaches(client: Client) -> bool:
    """Whether ``client`` gets an answer from its node now."""
    try:
        client.list_datasets()
    except errors.Unavailable:
        return False
    return True


@pytest.mark.timeout(180)
def test_a_local_reader_leaves_a_hot_tier_the_node_replaced(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    first = spawn_server(data_dir, "--rebuild-from-archive")
    with first.connect() as admin:
        admin.create_dataset("d", encrypted=False, durability="write-through")
        admin.put("d", "x", b"version 1")
        admin.put("d", "gone", b"deleted later")
    reader, other = first.connect(), first.connect()  # two clients, one map per process
    try:
        assert reader.get("d", "x").to_pybytes() == b"version 1"
        assert reader.get("d", "gone").to_pybytes() == b"deleted later"
        assert reader.read_counts.local == 2  # in place: its grant and map are cached
        assert other.get("d", "x").to_pybytes() == b"version 1"
        assert other.read_counts.local == 1
        child = os.fork()  # as a DataLoader does: an idle map is closed for it, reopened later
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)
        # The hot tier is lost; the node comes back at the same address on a rebuilt one.
        first.stop()
        shutil.rmtree(data_dir / "hot")
        first.start(same_ports=True)
        with first.connect() as admin:
            admin.put("d", "x", b"version 2")
            admin.delete("d", "gone")
        # Its channel failed while the node was down, and reconnects with a backoff.
        poll(lambda: reaches(reader), 30, "the reader's channel to reach the node again")
        # Before: the old, unlinked file stayed mapped and served version 1 and the
        # deleted shard, checksums and all, until the grant ran out (60 s).
        assert reader.get("d", "x").to_pybytes() == b"version 2"
        with pytest.raises(errors.ShardNotFound):
            reader.get("d", "gone")
        poll(
            lambda: (
                reader.get("d", "x").to_pybytes() == b"version 2" and reader.read_counts.local > 2
            ),
            30,
            "reads in place again, from the new hot tier",
        )
        # The old file's map is closed: it held the lost hot tier's disk space.
        maps = Path("/proc/self/maps").read_text().splitlines()
        assert not [line for line in maps if "data.mdb (deleted)" in line], maps
        # The other client's route still named the closed map: it leaves it too.
        poll(lambda: reaches(other), 30, "the other client's channel to reach the node again")
        poll(
            lambda: (
                other.get("d", "x").to_pybytes() == b"version 2" and other.read_counts.local > 1
            ),
            30,
            "the other client to read in place again, from the new hot tier",
        )
    finally:
        reader.close()
        other.close()


@pytest.mark.timeout(180)
def test_local_reads_go_on_when_a_restart_with_a_larger_map_grows_the_file(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    small, large = tmp_path / "small.toml", tmp_path / "large.toml"
    small.write_text(f"map_size_bytes = {40 << 20}\nhot_capacity_bytes = {24 << 20}\n")
    large.write_text(f"map_size_bytes = {512 << 20}\nhot_capacity_bytes = {400 << 20}\n")
    first = spawn_server(data_dir, "--config", str(small))
    with first.connect() as admin:
        admin.create_dataset("d", encrypted=False)
        admin.put("d", "a", b"first")
    reader = first.connect()
    try:
        assert reader.get("d", "a").to_pybytes() == b"first"
        assert reader.read_counts.local == 1
        first.stop()
        second = spawn_server(data_dir, "--config", str(large))
        last = b""
        with second.connect() as admin:
            for index in range(10):  # 100 MB: the file grows past the first map's 40 MiB
                last = os.urandom(10 << 20)
                admin.put("d", f"big{index}", last)
        assert (data_dir / "hot" / "data.mdb").stat().st_size > 40 << 20
        # A client of this process maps the same file (one map per file per process).
        with second.connect() as later:
            assert later.get("d", "big9").to_pybytes() == last
            assert later.get("d", "a").to_pybytes() == b"first"
            # Before: every transaction was MDB_MAP_RESIZED, and every read fell back.
            assert later.read_counts.local == 2 and later.read_counts.fallbacks == 0
    finally:
        reader.close()


def reader_of_one_shard(node: ServerProcess, shard: str, value: bytes, **settings: Any) -> Client:
    """Dataset ``d`` made on ``node`` (with ``settings``) holding ``shard`` = ``value``;
    a new client of the node, for the caller to close."""
    with node.connect() as admin:
        admin.create_dataset("d", **{"encrypted": False, **settings})
        admin.put("d", shard, value)
    return node.connect()


@pytest.mark.timeout(120)
def test_local_reads_made_as_a_restarted_node_comes_back_are_counted(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # The client's channel is still reconnecting when the first reads are reported:
    # a report failed at once then, and was dropped (it is not retried once it may
    # have arrived, as it would count twice). It is now tried again while it fails
    # without having left the client (that one cannot have arrived).
    node = spawn_server(tmp_path / "node")
    reader = reader_of_one_shard(node, "a", b"x" * 1000)
    try:
        assert reader.get("d", "a").to_pybytes() == b"x" * 1000
        assert reader.read_counts.local == 1
        reader.report_local_reads()
        node.stop()
        assert reader.get("d", "a").to_pybytes() == b"x" * 1000  # in place, node down
        reader.report_local_reads()  # fails (dropped): the channel now backs off
        node.start(same_ports=True)  # hit counts start at zero
        for _ in range(5):
            assert reader.get("d", "a").to_pybytes() == b"x" * 1000
        assert reader.read_counts.local == 7  # in place: the grant is still good
        assert reader.stats("d")["datasets"]["d"]["hits"] == 5
    finally:
        reader.close()


def reads_in_place(reader: Client, before: int) -> bool:
    """Whether ``reader`` reads shard d/x in place now (its count of local reads passed
    ``before``)."""
    return (
        reader.get("d", "x").to_pybytes() == b"kept in the archive"
        and reader.read_counts.local > before
    )


@pytest.mark.timeout(120)
def test_a_replaced_hot_tiers_map_is_closed_when_a_renewed_grant_names_the_new_file(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # The old map was closed only when a read ran into the replaced file: a grant that
    # ran out first got a map of the new file, and the old one, deleted, stayed mapped
    # (its disk space held) for the life of the process, one more per replacement.
    data_dir = tmp_path / "node"
    node = spawn_server(data_dir, "--rebuild-from-archive", "--local-grant-ttl", "1")
    reader = reader_of_one_shard(node, "x", b"kept in the archive", durability="write-through")
    try:
        assert reader.get("d", "x").to_pybytes() == b"kept in the archive"
        for _ in range(2):
            node.stop()
            shutil.rmtree(data_dir / "hot")
            node.start(same_ports=True)
            poll(lambda: reaches(reader), 30, "the reader's channel to reach the node again")
            poll(
                partial(reads_in_place, reader, reader.read_counts.local),
                30,
                "reads in place again, from the new hot tier",
            )
            maps = Path("/proc/self/maps").read_text().splitlines()
            assert not [line for line in maps if "data.mdb (deleted)" in line], maps
    finally:
        reader.close()


@pytest.mark.timeout(120)
def test_a_restart_without_local_reads_turns_a_readers_grant_off_at_its_next_report(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # Its grant was trusted until it ran out (60 s): every read stayed in place, and
    # every report of them was refused and dropped, so none was counted.
    node = spawn_server(tmp_path / "node")
    reader = reader_of_one_shard(node, "x", b"hot")
    try:
        assert reader.get("d", "x").to_pybytes() == b"hot"
        assert reader.read_counts.local == 1
        reader.report_local_reads()
        node.stop()
        node.extra_args = (*node.extra_args, "--no-local-reads")
        node.start(same_ports=True)
        poll(lambda: reaches(reader), 30, "the reader's channel to reach the node again")
        grpc_before = reader.read_counts.grpc

        def through_the_service() -> bool:
            assert reader.get("d", "x").to_pybytes() == b"hot"
            reader.report_local_reads()  # as the reporter's thread does every second
            return reader.read_counts.grpc > grpc_before

        poll(through_the_service, 20, "reads through the service")
        served = reader.read_counts.grpc - grpc_before
        assert reader.stats("d")["datasets"]["d"]["hits"] >= served
    finally:
        reader.close()
