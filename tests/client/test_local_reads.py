"""The local read path, end to end (tierstore/client/local.py and its helpers).

A real ``tierstore serve`` process on this host grants its hot tier; the client maps it
read-only in this process. Each test checks *which* path served a read
(``Client.read_counts``) as well as what it returned:

* plaintext reads are zero-copy: the Arrow buffers, the numpy array and the torch
  tensor all point into this process's mapping of the server's ``data.mdb``;
* encrypted reads allocate exactly one buffer and call ``decrypt_into`` exactly once
  per frame, and the table's buffers lie in those allocations;
* a damaged frame is DataLoss (a zeroed buffer, never wrong bytes); a cold shard goes
  through the service and is promoted; local reads turned off (client, environment,
  server) go through the service; no role, no grant; a revoked token stops local
  reads within the grant lifetime; reported reads reach the server's hit counts and
  access statistics; forked children read in place with their own environment.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest

from tests.server.conftest import ServerProcess, poll, unique
from tests.server.servers import error_name
from tierstore import errors
from tierstore.client import failures
from tierstore.client.channel import ChannelSettings
from tierstore.client.client import Client
from tierstore.client.hotmap import HotMap
from tierstore.client.local import LocalReadOptions, ReadCounts
from tierstore.crypto import FrameCipher
from tierstore.types import Grant, Role
from tierstore.v1 import shards_pb2, shards_pb2_grpc

#: Frames of puts in these tests: small, so shards of a few hundred KiB have many.
FRAME = 64 * 1024


def mapped_ranges(data_file: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of ``data_file`` (from /proc/self/maps)."""
    target = os.path.realpath(data_file)
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] == target:
            start, stop = (int(x, 16) for x in parts[0].split("-"))
            ranges.append((start, stop))
    return ranges


def inside(ranges: list[tuple[int, int]], address: int, size: int) -> bool:
    return any(start <= address and address + size <= stop for start, stop in ranges)


def table_buffers(table: pa.Table) -> Iterator[pa.Buffer]:
    for column in table.columns:
        for chunk in column.chunks:
            yield from (buffer for buffer in chunk.buffers() if buffer is not None)


def data_file(server: ServerProcess) -> Path:
    return server.data_dir / "hot" / "data.mdb"


def reader_client(server: ServerProcess, token: str | None = None, **options: Any) -> Client:
    """A fresh client (its own read counts) with ``options`` for its local path."""
    settings = ChannelSettings(
        address=server.address, token=token or server.token, ca=server.ca_path
    )
    client = Client(settings, local=LocalReadOptions(**options))
    client.frame_bytes = FRAME
    return client


def counted(client: Client, before: ReadCounts) -> tuple[int, int]:
    """(local, grpc) reads since ``before``."""
    now = client.read_counts
    return now.local - before.local, now.grpc - before.grpc


# What a local read returns, and where it points.


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_snapshots", "4"),
        ("max_snapshots", 1.5),
        ("max_snapshots", -1),
        ("report_every_reads", 2.5),
        ("report_every_reads", True),
        ("max_keys", None),
        ("report_interval_s", "1"),
        ("report_interval_s", 0),
    ],
)
def test_bad_local_read_options_are_refused_by_name(name: str, value: Any) -> None:
    # A str or None was a raw TypeError ("'<' not supported"), and 1.5 snapshots passed.
    with pytest.raises(errors.InvalidArgument, match=f"^{name} must be"):
        LocalReadOptions(**{name: value})
    assert LocalReadOptions(max_snapshots=np.int64(4)).max_snapshots == 4


def test_plaintext_reads_point_into_the_servers_map(server: ServerProcess, dataset: str) -> None:
    table = pa.table(
        {
            "id": pa.array(np.arange(50_000, dtype=np.int64)),
            "name": pa.array([f"row-{i}" for i in range(50_000)]),
        }
    )
    image = np.arange(128 * 96, dtype=np.float32).reshape(128, 96)
    blob = os.urandom(5 * FRAME + 123)
    with reader_client(server) as client:
        client.put(dataset, "table", table)
        client.put(dataset, "image", image)
        client.put(dataset, "blob", blob)
        before = client.read_counts

        got = client.read_table(dataset, "table")
        array = client.read_tensor(dataset, "image")
        piece = client.get(dataset, "blob", offset=FRAME + 10, length=1000)
        whole = client.get(dataset, "blob")

        assert counted(client, before) == (4, 0)
        assert got.equals(table)
        np.testing.assert_array_equal(array, image)
        assert piece.to_pybytes() == blob[FRAME + 10 : FRAME + 1010]
        assert whole.to_pybytes() == blob
        ranges = mapped_ranges(data_file(server))
        assert ranges, "the hot tier is not mapped in this process"
        buffers = list(table_buffers(got))
        assert len(buffers) >= 4
        for buffer in buffers:
            assert inside(ranges, buffer.address, buffer.size), "a table buffer was copied"
        address = array.__array_interface__["data"][0]
        assert inside(ranges, address, array.nbytes), "the tensor was copied"
        # get() promises one contiguous 64-byte-aligned buffer: the one copy it costs.
        for buffer in (piece, whole):
            assert buffer.address % 64 == 0 and not inside(ranges, buffer.address, buffer.size)
        # A frame small enough to share a B-tree page is copied to an address Arrow
        # may use; every frame the tests above read in place was 8-byte aligned too.
        tiny = pa.table({"x": pa.array([1, 2, 3], pa.int64())})
        client.put(dataset, "tiny", tiny)
        small = client.read_table(dataset, "tiny")
        assert small.equals(tiny)
        assert all(buffer.address % 8 == 0 for buffer in [*table_buffers(small), *buffers])
        torch = pytest.importorskip("torch")
        with pytest.warns(UserWarning, match="not writable"):  # read-only memory: do not write
            tensor = torch.from_numpy(array)
        assert inside(ranges, tensor.data_ptr(), tensor.nbytes), "torch copied the tensor"
        assert torch.equal(tensor, torch.from_numpy(image))


def test_encrypted_reads_decrypt_each_frame_once_into_its_own_buffer(
    server: ServerProcess, admin: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = unique()
    admin.create_dataset(dataset, encrypted=True)
    table = pa.table({"x": pa.array(np.arange(100_000, dtype=np.int64))})  # 800 KB
    blob = os.urandom(3 * FRAME + 7)
    allocations: list[tuple[int, int]] = []
    decrypted: list[int] = []

    def allocate(size: int) -> pa.Buffer:
        buffer = pa.allocate_buffer(size)
        allocations.append((buffer.address, size))
        return buffer

    real_decrypt_into = FrameCipher.decrypt_into

    def decrypt_into(self: FrameCipher, index: int, *args: Any) -> None:
        decrypted.append(index)
        real_decrypt_into(self, index, *args)

    monkeypatch.setattr(FrameCipher, "decrypt_into", decrypt_into)
    with reader_client(server, allocate=allocate) as client:
        client.put(dataset, "table", table)
        client.put(dataset, "blob", blob)
        frames = len(client.stat(dataset, "table").frame_sizes)
        assert frames >= 8
        before = client.read_counts
        allocations.clear()
        got = client.read_table(dataset, "table")
        assert counted(client, before) == (1, 0)
        assert got.equals(table)
        assert len(allocations) == frames, "not one buffer per frame"
        # Frames are decrypted on two threads at once (tierstore.verifyahead): in any order.
        assert sorted(decrypted) == list(range(frames)), "not one decrypt_into per frame"
        for buffer in table_buffers(got):
            assert any(
                a <= buffer.address and buffer.address + buffer.size <= a + n
                for a, n in allocations
            ), "the table does not use the decrypted frames"
        assert all(address % 64 == 0 for address, _ in allocations)
        # A byte range decrypts its whole frames straight into the one result buffer.
        allocations.clear()
        decrypted.clear()
        assert client.get(dataset, "blob").to_pybytes() == blob
        assert len(allocations) == 1 and sorted(decrypted) == [0, 1, 2, 3]
        assert counted(client, before) == (2, 0)


# Damage, cold shards, and turning it off.


def short_grants(spawn_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A server of the test's own (its file is damaged on purpose), granting local reads
    for one second at a time."""
    return spawn_server(None, "--local-grant-ttl", "1")


def flip_byte_of(path: Path, pattern: bytes, at: int) -> None:
    """Flip one byte ``at`` bytes past the one place ``pattern`` occurs in ``path``."""
    data = path.read_bytes()
    where = data.find(pattern)
    assert where >= 0 and data.find(pattern, where + 1) < 0, "the pattern is not unique"
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes([data[where + at] ^ 0x55]), where + at)
    finally:
        os.close(fd)


def test_a_damaged_frame_is_data_loss_never_other_bytes(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    server = short_grants(spawn_server)
    admin = server.connect(local_reads=False)
    plain, secret = unique(), unique()
    admin.create_dataset(plain, encrypted=False, durability="write-through")
    admin.create_dataset(secret, encrypted=True, durability="write-through")
    blob = os.urandom(3 * FRAME)
    allocations: list[pa.Buffer] = []

    def allocate(size: int) -> pa.Buffer:
        allocations.append(pa.allocate_buffer(size))
        return allocations[-1]

    with reader_client(server, allocate=allocate) as client:
        client.put(plain, "blob", blob)
        sealed = os.urandom(FRAME)
        info = client.put(secret, "blob", sealed)
        assert client.get(plain, "blob").to_pybytes() == blob  # in place, intact
        before = client.read_counts
        assert before.local == 1
        flip_byte_of(data_file(server), blob[FRAME : FRAME + 64], 100)
        with pytest.raises(errors.DataLoss):
            client.get(plain, "blob")
        with pytest.raises(errors.DataLoss):
            client.get(plain, "blob", offset=FRAME + 50, length=100)
        _download_fails_leaving_the_file(client, plain, server.data_dir.parent, FRAME + 50)
        assert info.encrypted and sealed[:64] not in data_file(server).read_bytes()
        with pytest.raises(errors.DataLoss):
            _damage_and_read_encrypted(server, client, secret, allocations)
        _download_fails_leaving_the_file(client, secret, server.data_dir.parent, 50)
        assert client.read_counts.grpc == before.grpc, "the local path itself found the damage"
    admin.close()


def _download_fails_leaving_the_file(
    client: Client, dataset: str, directory: Path, damaged_at: int
) -> None:
    """A download of the damaged "blob", whole or a range from its damaged frame (at
    ``damaged_at``), raises IntegrityError, leaving its target as it was and no
    partial file."""
    target = directory / "out.bin"
    target.write_bytes(b"as it was")
    before = sorted(p.name for p in directory.iterdir())
    for offset, length in [(0, None), (damaged_at, 100)]:
        with pytest.raises(errors.IntegrityError):
            client.download(dataset, "blob", target, offset=offset, length=length)
        assert target.read_bytes() == b"as it was"
        assert sorted(p.name for p in directory.iterdir()) == before
    target.unlink()


def _damage_and_read_encrypted(
    server: ServerProcess, client: Client, dataset: str, allocations: list[pa.Buffer]
) -> None:
    allocations.clear()
    good = client.get(dataset, "blob")  # fetches and caches the key; one buffer
    assert len(allocations) == 1
    # Find the stored ciphertext: LMDB holds it once; locate it through a gRPC read.
    stub = shards_pb2_grpc.ShardServiceStub(server.channel())
    stored = [
        m.frame.data
        for m in stub.GetShard(
            shards_pb2.GetShardRequest(dataset=dataset, shard="blob"),
            metadata=server.metadata,
            timeout=30,
        )
        if m.WhichOneof("item") == "frame"
    ]
    flip_byte_of(data_file(server), stored[0][:64], 200)
    allocations.clear()
    del good
    try:
        client.get(dataset, "blob")
    finally:
        assert len(allocations) == 1
        assert not any(memoryview(allocations[0]).cast("B")), "the failed buffer was not zeroed"


def test_read_table_of_a_raw_shard_is_refused_before_any_frame_is_read(
    server: ServerProcess, admin: Client, any_dataset: str
) -> None:
    """The local path read (and decrypted) the whole raw shard, and counted a local
    read, before it raised WrongShardKind; the stream raises at its header. The
    record's kind is looked at first now: nothing is read, in place or through the
    service."""
    admin.put(any_dataset, "raw", os.urandom(3 * FRAME))
    with reader_client(server) as client:
        with pytest.raises(errors.WrongShardKind, match="raw bytes, not Arrow data"):
            client.read_table(any_dataset, "raw")
        assert client.read_counts == ReadCounts()
        assert client.get(any_dataset, "raw", length=1).size == 1  # in place: it is hot
        before = client.read_counts
        assert before == ReadCounts(local=1)
        with pytest.raises(errors.WrongShardKind):
            client.read_table(any_dataset, "raw")
        assert client.read_counts == before


def test_a_cold_shard_goes_through_the_service_and_is_promoted(
    server: ServerProcess, admin: Client
) -> None:
    dataset = unique()
    admin.create_dataset(dataset, encrypted=False, durability="write-through", policy="lru")
    blob = os.urandom(2 * FRAME)
    with reader_client(server) as client:
        client.put(dataset, "cold", blob)
        assert admin.evict(dataset, "cold") > 0
        before = client.read_counts
        assert client.get(dataset, "cold").to_pybytes() == blob
        assert counted(client, before) == (0, 1)
        assert client.read_counts.fallbacks == before.fallbacks + 1
        poll(lambda: admin.stat(dataset, "cold").hot, 20, "the miss to promote the shard")
        assert client.get(dataset, "cold").to_pybytes() == blob
        assert counted(client, before) == (1, 1)


def test_local_reads_turned_off_go_through_the_service(
    server: ServerProcess, dataset: str, spawn_server: Callable[..., ServerProcess]
) -> None:
    blob = os.urandom(1000)
    off = [
        server.connect(local_reads=False),
        server.connect(environ={"TIERSTORE_LOCAL_READS": "0"}),
    ]
    off[0].put(dataset, "b", blob)
    for client in off:
        with client:
            assert client.get(dataset, "b").to_pybytes() == blob
            assert client.read_counts == ReadCounts(grpc=1)
    with pytest.raises(errors.InvalidArgument):
        server.connect(environ={"TIERSTORE_LOCAL_READS": "maybe"})
    # A server with local reads off refuses the grant: the client reads through it.
    closed = spawn_server(None, "--no-local-reads")
    with closed.connect() as client:
        client.create_dataset("d", encrypted=False)
        client.put("d", "b", blob)
        assert client.get("d", "b").to_pybytes() == blob
        assert client.get("d", "b").to_pybytes() == blob
        assert client.read_counts == ReadCounts(grpc=2, fallbacks=2)
        with pytest.raises(grpc.RpcError) as refused:
            shards_pb2_grpc.ShardServiceStub(closed.channel()).OpenLocal(
                shards_pb2.OpenLocalRequest(dataset="d"), metadata=closed.metadata, timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert "turned off" in refused.value.details()  # type: ignore[attr-defined]


def retry_pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses between the attempts of calls retried from now on on this thread (they
    still pause; only the retries' clock is watched, not every thread's ``time.sleep``,
    and not the retries of the reporter's thread: a report that cannot leave the client
    is tried again)."""
    pauses: list[float] = []
    caller = threading.get_ident()

    def pause(seconds: float) -> None:
        if threading.get_ident() == caller:
            pauses.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(failures, "time", SimpleNamespace(sleep=pause, monotonic=time.monotonic))
    return pauses


def test_with_no_server_reachable_a_read_waits_no_longer_than_without_local_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The grant was asked for with the retries of a read (1.5 s of pauses) before the
    # read itself went through the service and paused as long again: twice the wait
    # of a client reading without local reads, for the same Unavailable.
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    pauses = retry_pauses(monkeypatch)
    waited = []
    for local in (False, True):
        pauses.clear()
        with Client(ChannelSettings(address), local=LocalReadOptions(enabled=local)) as client:
            with pytest.raises(errors.Unavailable, match="failed to connect"):
                client.get("d", "b")
            assert client.read_counts == ReadCounts(grpc=1, fallbacks=int(local))
        waited.append(list(pauses))
    assert waited[0] and waited[1] == waited[0]


def test_a_data_key_is_asked_for_once_when_the_server_has_gone(
    spawn_server: Callable[..., ServerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Granted, then the node went away: the key of a shard not read yet was asked for
    # with a read's retries, and the read then went through the service and retried
    # as long again.
    node = spawn_server(None)
    with node.connect(local_reads=False) as admin:
        admin.create_dataset("d", encrypted=True)
        admin.put("d", "a", b"a" * 5000)
        admin.put("d", "b", b"b" * 5000)
    with reader_client(node) as client:
        assert client.get("d", "a").to_pybytes() == b"a" * 5000
        assert client.read_counts.local == 1  # granted, for a minute
        node.stop()
        pauses = retry_pauses(monkeypatch)
        with pytest.raises(errors.Unavailable):
            client.get("d", "b")  # its key is not here yet
        assert client.read_counts == ReadCounts(local=1, grpc=1, fallbacks=1)
        assert pauses == list(failures.RETRY_DELAYS_S)  # the service's read's, only


def test_a_shard_newer_than_the_grant_leaves_the_grant_to_the_others_while_the_node_is_down(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    # A shard written after the grant is read under a grant asked for again; with the
    # node down that fails, and the failure ended the grant too: the shards it covers,
    # read in place with the node down before, failed with Unavailable as well.
    node = spawn_server(None)
    with node.connect(local_reads=False) as admin:
        admin.create_dataset("d", encrypted=False)
        admin.put("d", "old", b"o" * 5000)
        with reader_client(node) as client:
            assert client.get("d", "old").to_pybytes() == b"o" * 5000
            admin.put("d", "new", b"n" * 5000)
            node.stop()
            with pytest.raises(errors.Unavailable):
                client.get("d", "new")
            assert client.get("d", "old").to_pybytes() == b"o" * 5000
            assert client.read_counts == ReadCounts(local=2, grpc=1, fallbacks=1)


def run_script(
    script: str, server: ServerProcess, dataset: str
) -> subprocess.CompletedProcess[bytes]:
    """``script`` run in a fresh interpreter, given the node's address, CA, admin token
    and ``dataset`` as its arguments."""
    arguments = [server.address, str(server.ca_path), server.token, dataset]
    return subprocess.run(
        [sys.executable, "-c", script, *arguments], capture_output=True, timeout=240
    )


_READ_UNDER_AN_ADDRESS_LIMIT = """
import resource, sys
import tierstore
resource.setrlimit(resource.RLIMIT_AS, (512 << 30, 512 << 30))  # the grant's map fits, 1 TiB not
address, ca, token, dataset = sys.argv[1:]
with tierstore.connect(address, token=token, ca=ca) as client:
    data = client.get(dataset, "b").to_pybytes()
    print(len(data), client.read_counts.local, client.read_counts.fallbacks)
"""


def test_a_reader_under_an_address_space_limit_still_reads_in_place(
    server: ServerProcess, admin: Client, dataset: str
) -> None:
    admin.put(dataset, "b", b"x" * 5000)
    child = run_script(_READ_UNDER_AN_ADDRESS_LIMIT, server, dataset)
    assert child.returncode == 0, child.stderr.decode()[-2000:]
    assert child.stdout.split() == [b"5000", b"1", b"0"]  # in place, no fallback


_FORK_WHILE_A_THREAD_READS = """
import os, sys, threading, time
import tierstore  # first: nothing else has loaded concurrent.futures.thread yet
from tierstore.client.forkgate import GATE
address, ca, token, dataset = sys.argv[1:]
client = tierstore.connect(address, token=token, ca=ca)
stop = threading.Event()
def read():
    while not stop.is_set():
        client.get(dataset, "frames")
reader = threading.Thread(target=read)
reader.start()
longest = 0.0
for _ in range(10):
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    longest = max(longest, time.monotonic() - started)
    time.sleep(0.02)
stop.set()
reader.join()
print(f"{longest:.3f}", GATE.expired_holds, client.read_counts.local > 10)
"""


def test_a_fork_waits_only_for_the_local_reads_in_flight(
    server: ServerProcess, admin: Client, dataset: str
) -> None:
    # A fresh interpreter, with tierstore imported first: concurrent.futures.thread,
    # which the first multi-frame local read loads, registers a fork handler that takes
    # its lock. Registered after the gate's, it ran first, and a read in the gate that
    # was starting its verify-ahead thread waited for that lock, the fork for the read:
    # 40 s a fork (the gate's limit, then the hot map's).
    admin.put(dataset, "frames", os.urandom((12 << 20) + 5))  # 4 frames
    child = run_script(_FORK_WHILE_A_THREAD_READS, server, dataset)
    assert child.returncode == 0, child.stderr.decode()[-2000:]
    longest, expired, read_in_place = child.stdout.split()
    assert (expired, read_in_place) == (b"0", b"True"), child.stdout
    assert float(longest) < 10.0, child.stdout  # a read's time, never the gate's 30 s


# Authorization: grants, revocation.


def test_no_role_no_grant(server: ServerProcess, admin: Client, dataset: str) -> None:
    """A caller without a role on the dataset hears what it hears for a missing one."""
    admin.put(dataset, "b", b"secret")
    other = unique()
    admin.create_dataset(other, encrypted=False)
    _, token = admin.create_token("other-team", [Grant(other, Role.READER)])
    stub = shards_pb2_grpc.ShardServiceStub(server.channel())
    answers = []
    for name, metadata in (
        (dataset, (("authorization", f"Bearer {token}"),)),
        (unique(), server.metadata),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            stub.OpenLocal(shards_pb2.OpenLocalRequest(dataset=name), metadata=metadata, timeout=10)
        answers.append((refused.value.code(), error_name(refused.value)))  # type: ignore[attr-defined]
    assert answers == [(grpc.StatusCode.NOT_FOUND, "DatasetNotFound")] * 2
    with reader_client(server, token) as client:
        with pytest.raises(errors.DatasetNotFound):
            client.get(dataset, "b")
        assert client.read_counts == ReadCounts(grpc=1, fallbacks=1)


def test_a_revoked_token_stops_local_reads_within_the_grant_lifetime(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    server = short_grants(spawn_server)
    admin = server.connect(local_reads=False)
    dataset = unique()
    admin.create_dataset(dataset, encrypted=False)
    admin.put(dataset, "b", b"x" * 5000)
    token_id, token = admin.create_token("revoked-reader", [Grant(dataset, Role.READER)])
    with reader_client(server, token) as client:
        assert client.get(dataset, "b").to_pybytes() == b"x" * 5000
        assert client.read_counts.local == 1
        admin.revoke_token(token_id)
        revoked_at = time.monotonic()
        last_success = revoked_at

        def refused() -> bool:
            nonlocal last_success
            started = time.monotonic()
            try:
                client.get(dataset, "b")
            except errors.Unauthenticated:
                return True
            last_success = started
            return False

        poll(refused, 15, "the revoked token to stop local reads")
        # The grant was asked for before the revocation and holds one second from then:
        # no read that started later than that was served.
        assert last_success - revoked_at <= 1.0, "local reads outlived the grant"
        counts = client.read_counts
        assert counts.grpc >= 1 and counts.local >= 1
    admin.close()


def test_a_dataset_deleted_and_made_again_is_not_read_under_a_grant_of_the_old_one(
    server: ServerProcess, admin: Client
) -> None:
    # The grant (60 s) named the dataset, not the one of that name it was made for:
    # deleted with its grants and made again for others, the new one's shards were read
    # in place by the old one's readers until the grant ran out.
    name = unique()
    admin.create_dataset(name, encrypted=False)
    admin.put(name, "a", b"theirs to read")
    _, token = admin.create_token("reader-of-the-first", [Grant(name, Role.READER)])
    with reader_client(server, token) as client:
        assert client.get(name, "a").to_pybytes() == b"theirs to read"
        # A shard written after the grant is read in place too (under a grant asked for
        # again, as it is newer than the one held).
        admin.put(name, "b", b"written later")
        assert client.get(name, "b").to_pybytes() == b"written later"
        assert client.read_counts.local == 2
        admin.delete_dataset(name, force=True)
        admin.create_dataset(name, encrypted=False)
        admin.put(name, "a", b"another team's")
        admin.put(name, "c", b"another team's too")
        for shard in ("a", "c"):
            with pytest.raises(errors.DatasetNotFound):
                client.get(name, shard)
        assert client.read_counts.local == 2


# Reads reach the policy.


def test_local_reads_reach_the_servers_hit_counts_and_access_statistics(
    server: ServerProcess, admin: Client, dataset: str
) -> None:
    admin.put(dataset, "s", b"s" * 3000)
    hits = admin.stats(dataset)["datasets"][dataset]["hits"]
    accesses = admin.stat(dataset, "s").access_count
    _, token = admin.create_token("local-reader", [Grant(dataset, Role.READER)])
    with reader_client(server, token) as client:
        for _ in range(5):
            client.get(dataset, "s")
        assert client.read_counts.local == 5
        # Reported in the background, without the reader doing anything more.
        poll(
            lambda: admin.stats(dataset)["datasets"][dataset]["hits"] == hits + 5,
            15,
            "the local reads to reach the hit counts",
        )
        assert admin.stat(dataset, "s").access_count == accesses + 5
        # A client's own statistics include its own local reads at once.
        client.get(dataset, "s")
        assert client.stat(dataset, "s").access_count == accesses + 6


# Fork safety.


def _child_reads(client: Client, dataset: str, expected: dict[str, bytes], in_place: bool) -> int:
    """What a forked child does: read every shard, check it; 0 when all went as expected."""
    try:
        before = client.read_counts
        for name, data in expected.items():
            if client.get(dataset, name).to_pybytes() != data:
                return 3
        local, remote = counted(client, before)
        if in_place and (local, remote) != (len(expected), 0):
            return 4
        if not in_place and (local, remote) != (0, len(expected)):
            return 5
        return 0
    except BaseException:
        return 6


def _fork_children(count: int, work: Callable[[], int]) -> list[int]:
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 7
            try:
                code = work()
            finally:
                os._exit(code)
        pids.append(pid)
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]


@pytest.mark.timeout(120)
def test_forked_children_read_in_place_with_their_own_environment(
    server: ServerProcess, dataset: str
) -> None:
    expected = {f"s{i}": os.urandom(FRAME // 2 + i) for i in range(4)}
    with reader_client(server) as client:
        for name, data in expected.items():
            client.put(dataset, name, data)
        table = pa.table({"x": pa.array(np.arange(20_000, dtype=np.int64))})
        client.put(dataset, "table", table)
        first = client.read_table(dataset, "table")  # in place: the parent holds a snapshot
        assert client.read_counts.local == 1
        hot = hot_map_of(client, dataset)
        assert hot.leases.live >= 1
        # With a snapshot alive at the fork the children cannot map the hot tier: they
        # read through the service, and the parent's snapshot is left alone.
        codes = _fork_children(4, lambda: _child_reads(client, dataset, expected, False))
        assert codes == [0] * 4
        assert first.equals(table)
        assert str(os.getpid()) in hot._env.readers()
        del first
        gc.collect()
        assert hot.leases.live == 0
        # Without one, every child opens its own environment and reads in place.
        for _ in range(3):
            codes = _fork_children(4, lambda: _child_reads(client, dataset, expected, True))
            assert codes == [0] * 4
            assert client.get(dataset, "s1").to_pybytes() == expected["s1"]  # the parent too
        assert client.read_counts.local >= 2

        # A child that dies holding a snapshot leaves its reader slot behind; whoever
        # opens the map next frees it (here the parent, which closed its map for the
        # fork), so dead workers' slots never pile up.
        def die_holding_a_snapshot() -> int:
            held = client.read_table(dataset, "table")
            os._exit(0 if client.read_counts.local and held.equals(table) else 8)

        assert _fork_children(1, die_holding_a_snapshot) == [0]
        assert client.read_table(dataset, "table").equals(table)
        readers = [line.split() for line in hot._env.readers().splitlines()[1:]]
        assert all(_alive(int(fields[0])) for fields in readers if fields), readers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def hot_map_of(client: Client, dataset: str) -> HotMap:
    """The map this process reads ``dataset`` through (a backdoor for the test)."""
    assert client._local is not None
    route = client._local._routes[dataset]
    assert route.hot is not None
    return route.hot
