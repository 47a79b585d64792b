"""The local-read RPCs on the server side (tierstore/server/localreads.py,
tierstore/engine/localreads.py): grants, data keys and read reports.

An in-process server answers them (the client's side, which maps the hot tier, needs a
server in another process: tests/client/test_local_reads.py). The rule table and the
"hidden datasets read as missing" answers of these RPCs are covered with every other
RPC by test_security.py and test_fuzz.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.engine.stores import payload
from tests.server.servers import RunningServer, error_name, invoke, serving
from tierstore.errors import FailedPrecondition, InvalidArgument
from tierstore.server.authz import Principal
from tierstore.server.localreads import LocalReadService, peer_is_local
from tierstore.types import DatasetSettings, Grant, Role
from tierstore.v1 import shards_pb2
from tierstore.wire.local import MAX_REPORT_ENTRIES, MAX_REPORTED_READS, this_host

SHARD = "/tierstore.v1.ShardService/"
OPEN, KEY, REPORT = SHARD + "OpenLocal", SHARD + "GrantDataKey", SHARD + "ReportLocalReads"
DATASETS = {"plain": DatasetSettings(), "vault": DatasetSettings(encrypted=True)}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("local"), datasets=DATASETS) as running:
        running.store.put("plain", "p.bin", payload(10_000, 1))
        running.store.put("vault", "v.bin", payload(10_000, 2))
        yield running


def refused(channel: grpc.Channel, method: str, request: object, token: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        invoke(channel, method, request, token)
    return caught.value


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        ("ipv4:127.0.0.1:5000", True),
        ("ipv4:127.8.9.1:5000", True),
        ("ipv6:[::1]:5000", True),
        ("ipv6:[::ffff:127.0.0.1]:5000", True),
        ("unix:/run/tierstore.sock", True),
        ("unix-abstract:tierstore", True),
        ("ipv4:10.0.0.7:5000", False),
        ("ipv6:[2001:db8::1]:5000", False),
        ("ipv6:[::ffff:10.0.0.7]:5000", False),
        ("ipv4:localhost:5000", False),  # gRPC reports addresses, never names
        ("", False),
        ("garbage", False),
    ],
)
def test_only_loopback_and_unix_peers_are_local(peer: str, local: bool) -> None:
    assert peer_is_local(peer) is local


def test_a_reader_is_granted_the_hot_tier(node: RunningServer) -> None:
    token = node.token("reader", ("plain", Role.READER))
    (grant,) = invoke(node.channel(), OPEN, shards_pb2.OpenLocalRequest(dataset="plain"), token)
    hot = (node.data_dir / "hot").resolve()
    stat = (hot / "data.mdb").stat()
    assert Path(grant.path) == hot
    assert (grant.data_device, grant.data_inode) == (stat.st_dev, stat.st_ino)
    assert grant.map_size == node.store.settings.effective_map_size
    here = this_host()
    assert (grant.host.boot_id, grant.host.pid_namespace) == (here.boot_id, here.pid_namespace)
    assert grant.server_pid == os.getpid()
    assert grant.ttl_s == 60.0


def test_a_grant_never_outlives_the_token(node: RunningServer) -> None:
    token = node.token("short-reader", ("plain", Role.READER), ttl_s=5)
    (grant,) = invoke(node.channel(), OPEN, shards_pb2.OpenLocalRequest(dataset="plain"), token)
    assert 0 < grant.ttl_s <= 5


def test_callers_off_this_host_are_refused(node: RunningServer) -> None:
    service = LocalReadService(node.store)
    reader = Principal("reader", (Grant("plain", Role.READER),), via="token")
    assert service.open_local(reader, "ipv4:127.0.0.1:1", "plain").ttl_s == 60.0
    with pytest.raises(FailedPrecondition, match="server's host"):
        service.open_local(reader, "ipv4:192.0.2.1:443", "plain")
    with pytest.raises(InvalidArgument):
        LocalReadService(node.store, grant_ttl_s=0)


def test_a_server_with_local_reads_off_refuses_grants_and_keys(tmp_path: Path) -> None:
    with serving(tmp_path, datasets=DATASETS, local_reads=False) as running:
        info = running.store.put("vault", "v.bin", payload(100))
        token = running.token("reader", ("*", Role.READER))
        channel = running.channel()
        for method, request in (
            (OPEN, shards_pb2.OpenLocalRequest(dataset="vault")),
            (
                KEY,
                shards_pb2.GrantDataKeyRequest(
                    dataset="vault", shard="v.bin", generation=info.generation
                ),
            ),
        ):
            error = refused(channel, method, request, token)
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
            assert "turned off" in error.details()  # type: ignore[attr-defined]


def test_data_keys_of_the_current_generation_only(node: RunningServer) -> None:
    token = node.token("vault-reader", ("vault", Role.READER), ("plain", Role.READER))
    channel = node.channel()
    generation = node.store.stat("vault", "v.bin").generation
    request = shards_pb2.GrantDataKeyRequest(dataset="vault", shard="v.bin", generation=generation)
    (key,) = invoke(channel, KEY, request, token)
    sealed = node.store.open_sealed("vault", "v.bin", frame_range=(0, 0))
    assert (key.data_key, key.nonce_prefix) == (sealed.data_key, sealed.nonce_prefix)
    assert len(key.data_key) == 32
    cases = [
        (
            shards_pb2.GrantDataKeyRequest(
                dataset="vault", shard="v.bin", generation=generation - 1
            ),
            "FailedPrecondition",
        ),
        (
            shards_pb2.GrantDataKeyRequest(
                dataset="plain",
                shard="p.bin",
                generation=node.store.stat("plain", "p.bin").generation,
            ),
            "FailedPrecondition",
        ),
        (
            shards_pb2.GrantDataKeyRequest(dataset="vault", shard="nope", generation=1),
            "ShardNotFound",
        ),
        (
            shards_pb2.GrantDataKeyRequest(dataset="vault", shard="../x", generation=1),
            "InvalidName",
        ),
    ]
    for bad, name in cases:
        assert error_name(refused(channel, KEY, bad, token)) == name
    # A generation that never existed was called "no longer current".
    for asked in (generation - 1, generation + 1):
        bad = shards_pb2.GrantDataKeyRequest(dataset="vault", shard="v.bin", generation=asked)
        details = refused(channel, KEY, bad, token).details()  # type: ignore[attr-defined]
        assert f"{asked} of vault/v.bin is not current (the current one is {generation})" in details


def test_reported_reads_count_as_hits_of_the_current_generation(node: RunningServer) -> None:
    token = node.token("plain-reader", ("plain", Role.READER))
    channel = node.channel()
    store = node.store
    generation = store.stat("plain", "p.bin").generation
    hits = store.dataset_usage("plain").hits
    accesses = store.stat("plain", "p.bin").access_count
    request = shards_pb2.ReportLocalReadsRequest(
        dataset="plain",
        reads=[
            shards_pb2.LocalReadCount(shard="p.bin", generation=generation, count=3),
            shards_pb2.LocalReadCount(shard="p.bin", generation=generation - 1, count=50),
            shards_pb2.LocalReadCount(shard="gone.bin", generation=generation, count=50),
        ],
    )
    (reply,) = invoke(channel, REPORT, request, token)
    assert reply.recorded == 3
    assert store.dataset_usage("plain").hits == hits + 3
    assert store.stat("plain", "p.bin").access_count == accesses + 3
    assert store.stat("plain", "p.bin").last_access >= time.time() - 60


@pytest.mark.parametrize(
    "reads",
    [
        [("p.bin", 1, 0)],
        [("../p", 1, 1)],
        [("p.bin", 1, 1)] * (MAX_REPORT_ENTRIES + 1),
        [("p.bin", 1, MAX_REPORTED_READS), ("p.bin", 2, 1)],
    ],
    ids=["zero-count", "bad-name", "too-many-entries", "too-many-reads"],
)
def test_bad_reports_are_the_callers_mistake(
    node: RunningServer, reads: list[tuple[str, int, int]]
) -> None:
    token = node.token("reporter", ("plain", Role.READER))
    request = shards_pb2.ReportLocalReadsRequest(
        dataset="plain",
        reads=[shards_pb2.LocalReadCount(shard=s, generation=g, count=c) for s, g, c in reads],
    )
    error = refused(node.channel(), REPORT, request, token)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
