"""What local readers may cost the server (tierstore/server/localreads.py,
server/decoding.py, server/requestchecks.py, engine/localreads.py, engine/readlog.py,
wire/local.py).

* A read report is checked before it is parsed: its size and its number of entries
  (a 2-byte empty entry becomes an object of some 60 bytes once parsed).
* Reports come only from callers a grant could be for (local reads on, caller on
  this host), and weigh a few reads each in the node-wide trace and in the policy,
  however large their counts: statistics and hit counts take every read.
* IPv6 loopback callers are local, in the form gRPC reports them.
* Grants keep half of LMDB's reader table for the server's own reads.

In-process servers (tests/server/servers.py): none of this needs a reader that maps
the hot tier (the client's side of it: tests/client/test_local_reserve.py).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as Field

from tests.engine.stores import payload
from tests.reader_slots import holding_reader_slots
from tests.server.servers import RunningServer, error_name, invoke, serving
from tierstore.engine.localreads import ReaderTable
from tierstore.engine.readlog import REPORTED_READS_TOLD
from tierstore.errors import DatasetNotFound, FailedPrecondition, InvalidArgument
from tierstore.server.localreads import LocalReadService, peer_is_local
from tierstore.server.requestchecks import check_report_encoding
from tierstore.tiers.lmdb import MAX_READERS
from tierstore.types import DatasetSettings, Role, TracedRead
from tierstore.v1 import shards_pb2
from tierstore.wire.local import (
    MAX_REPORT_BYTES,
    MAX_REPORT_ENTRIES,
    MAX_REPORTED_READS,
    read_counts_from_pb,
)

SHARD = "/tierstore.v1.ShardService/"
OPEN, GET, REPORT = SHARD + "OpenLocal", SHARD + "GetShard", SHARD + "ReportLocalReads"
DATASETS = {"mine": DatasetSettings(), "theirs": DatasetSettings()}
#: A small trace ring, so that a report that could flood it would do so at once.
TRACE_CAPACITY = 1000


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("limits")
    with serving(root, datasets=DATASETS, trace_capacity=TRACE_CAPACITY) as running:
        running.store.put("mine", "s", payload(5000, 1))
        running.store.put("theirs", "t", payload(5000, 2))
        yield running


def report(dataset: str, *entries: tuple[str, int, int]) -> shards_pb2.ReportLocalReadsRequest:
    return shards_pb2.ReportLocalReadsRequest(
        dataset=dataset,
        reads=[shards_pb2.LocalReadCount(shard=s, generation=g, count=c) for s, g, c in entries],
    )


def refused(channel: grpc.Channel, method: str, request: object, token: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        invoke(channel, method, request, token, raw=isinstance(request, bytes))
    return caught.value


def reads_in_trace(running: RunningServer, dataset: str) -> int:
    return sum(isinstance(e, TracedRead) for e in running.store.trace_events(dataset))


# A report's size, before parsing.


def test_the_report_bound_is_the_longest_valid_encoding() -> None:
    # Every field at its longest: the names, and varints of the largest values.
    longest = shards_pb2.ReportLocalReadsRequest(
        dataset="d" * 63,
        reads=[
            shards_pb2.LocalReadCount(shard=f"{i:04}" + "x" * 1020, generation=2**64 - 1, count=1)
            for i in range(MAX_REPORT_ENTRIES)
        ],
    )
    for entry in longest.reads:
        entry.count = 2**32 - 1
    data = longest.SerializeToString()
    assert len(data) == MAX_REPORT_BYTES == 4_288_577
    check_report_encoding(data)
    with pytest.raises(InvalidArgument, match="bytes"):
        check_report_encoding(data + b"\x08\x01")
    # The bound holds for these fields only: one added to either message needs a new one.
    request, entry = (
        shards_pb2.ReportLocalReadsRequest.DESCRIPTOR,
        shards_pb2.LocalReadCount.DESCRIPTOR,
    )
    assert [(f.name, f.number, f.type) for f in request.fields] == [
        ("dataset", 1, Field.TYPE_STRING),
        ("reads", 2, Field.TYPE_MESSAGE),
    ]
    assert [(f.name, f.number, f.type) for f in entry.fields] == [
        ("shard", 1, Field.TYPE_STRING),
        ("generation", 2, Field.TYPE_UINT64),
        ("count", 3, Field.TYPE_UINT32),
    ]


def test_the_encoding_check_counts_fields_and_leaves_the_rest_to_the_parser() -> None:
    full = report("d", *[("s", 1, 1)] * MAX_REPORT_ENTRIES).SerializeToString()
    check_report_encoding(full)
    for more in (b"\x12\x00", b"\x08\x01", b"\x1d\x00\x00\x00\x00", b"\x19" + bytes(8)):
        with pytest.raises(InvalidArgument, match="fields"):
            check_report_encoding(full + more)
    with pytest.raises(InvalidArgument, match="wire type 3"):
        check_report_encoding(b"\x1b\x1c" + b"\x12\x00" * 10)  # an unknown group
    for cut in (b"\x12", b"\x12\x05ab", b"\x80", b"\x12\xff\xff"):  # ends mid-field
        check_report_encoding(cut)


def test_a_report_of_too_many_entries_is_refused_before_it_is_parsed(
    node: RunningServer,
) -> None:
    token = node.token("flooder", ("mine", Role.READER))
    channel = node.channel()
    # 2,000,000 empty entries: 4 MB on the wire, some 120 MB parsed.
    entries = report("mine").SerializeToString() + b"\x12\x00" * 2_000_000
    assert len(entries) < MAX_REPORT_BYTES
    error = refused(channel, REPORT, entries, token)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert error_name(error) == "InvalidArgument"
    assert "fields" in error.details()  # type: ignore[attr-defined]
    # Longer than any report: refused for its size, even when it is no message at all.
    error = refused(channel, REPORT, b"\xff" * (MAX_REPORT_BYTES + 1), token)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert f"at most {MAX_REPORT_BYTES} bytes" in error.details()  # type: ignore[attr-defined]
    # Other methods take the same bytes to their parser as before.
    error = refused(channel, GET, b"\xff" * (MAX_REPORT_BYTES + 1), token)
    assert "not a valid message" in error.details()  # type: ignore[attr-defined]


def test_the_largest_valid_report_is_accepted(node: RunningServer) -> None:
    token = node.token("big-reporter", ("mine", Role.READER))
    each = MAX_REPORTED_READS // MAX_REPORT_ENTRIES
    request = report(
        "mine", *[(f"{i:04}" + "x" * 1020, 2**64 - 1, each) for i in range(MAX_REPORT_ENTRIES)]
    )
    assert len(read_counts_from_pb(request)) == MAX_REPORT_ENTRIES
    (reply,) = invoke(node.channel(), REPORT, request, token)
    assert reply.recorded == 0  # no such shards


# Who may report, and what a report weighs.


def test_reports_are_refused_where_local_reads_are_off(tmp_path: Path) -> None:
    with serving(tmp_path, datasets=DATASETS, local_reads=False) as running:
        info = running.store.put("mine", "s", payload(100))
        token = running.token("reader", ("mine", Role.READER))
        # Refused before the entries are looked at: a bad name gets the same answer.
        for request in (
            report("mine", ("s", info.generation, 100)),
            report("mine", ("../x", 1, 1)),
        ):
            error = refused(running.channel(), REPORT, request, token)
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
            assert "turned off" in error.details()  # type: ignore[attr-defined]
        assert running.store.stat("mine", "s").access_count == 0
        assert running.store.dataset_usage("mine").hits == 0


def test_reports_from_off_this_host_are_refused(node: RunningServer) -> None:
    service = LocalReadService(node.store)
    service.check_local_caller("ipv4:127.0.0.1:1", "mine")
    service.check_local_caller("ipv6:%5B::1%5D:1", "mine")
    with pytest.raises(FailedPrecondition, match="server's host"):
        service.check_local_caller("ipv4:192.0.2.1:443", "mine")
    with pytest.raises(DatasetNotFound):
        service.check_local_caller("ipv4:127.0.0.1:1", "nope")


def test_a_report_weighs_a_few_reads_in_the_trace_and_the_policy(node: RunningServer) -> None:
    store = node.store
    token = node.token("mine-reader", ("mine", Role.READER))
    channel = node.channel()
    for _ in range(10):
        store.get("theirs", "t")
    theirs = reads_in_trace(node, "theirs")
    assert theirs >= 10
    mine = reads_in_trace(node, "mine")
    accesses = store.stat("mine", "s").access_count
    hits = store.dataset_usage("mine").hits
    generation = store.stat("mine", "s").generation

    # 16 reports of 33 bytes, each counting the most reads a report may.
    request = report("mine", ("s", generation, MAX_REPORTED_READS))
    for _ in range(16):
        (reply,) = invoke(channel, REPORT, request, token)
        assert reply.recorded == MAX_REPORTED_READS
    # Entries of one generation are added up: one entry's weight again.
    split = report("mine", *[("s", generation, 16)] * MAX_REPORT_ENTRIES)
    (reply,) = invoke(channel, REPORT, split, token)
    assert reply.recorded == MAX_REPORTED_READS

    # Statistics and hit counts take every read...
    assert store.stat("mine", "s").access_count == accesses + 17 * MAX_REPORTED_READS
    assert store.dataset_usage("mine").hits == hits + 17 * MAX_REPORTED_READS
    # ...the trace (and the policy) a few of each report, and other datasets' reads stay.
    assert reads_in_trace(node, "mine") == mine + 17 * REPORTED_READS_TOLD
    assert reads_in_trace(node, "theirs") == theirs
    # A count below the cap is told in full.
    (reply,) = invoke(channel, REPORT, report("mine", ("s", generation, 2)), token)
    assert reads_in_trace(node, "mine") == mine + 17 * REPORTED_READS_TOLD + 2


def test_reads_of_a_shard_evicted_since_count_but_the_policy_hears_none(
    node: RunningServer,
) -> None:
    """A reader's reads reach the node up to a second later in a batch; a shard
    evicted meanwhile was still a hit when read (they were dropped: a review lost a
    fifth of a busy reader's reads), but its policy no longer holds it."""
    store = node.store
    token = node.token("evicted-reader", ("mine", Role.READER))
    store.put("mine", "cooled", payload(5000, 3))
    assert store.drain(30)  # archived: evictable
    generation = store.stat("mine", "cooled").generation
    assert store.evict("mine", "cooled") > 0
    assert not store.stat("mine", "cooled").hot
    accesses = store.stat("mine", "cooled").access_count
    hits, traced = store.dataset_usage("mine").hits, reads_in_trace(node, "mine")

    (reply,) = invoke(node.channel(), REPORT, report("mine", ("cooled", generation, 5)), token)
    assert reply.recorded == 5
    assert store.dataset_usage("mine").hits == hits + 5
    assert store.stat("mine", "cooled").access_count == accesses + 5
    assert reads_in_trace(node, "mine") == traced  # what the policy heard: nothing
    assert not store.stat("mine", "cooled").hot


# Who is local.


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        ("ipv6:[::1]:5000", True),
        ("ipv6:%5B::1%5D:54621", True),  # as grpcio 1.48 and later write it
        ("ipv6:%5B::ffff:127.0.0.1%5D:54621", True),
        ("ipv6:%5B2001:db8::1%5D:54621", False),
        ("ipv6:%5B::ffff:10.0.0.7%5D:54621", False),
    ],
)
def test_ipv6_peers_are_read_in_both_forms(peer: str, local: bool) -> None:
    assert peer_is_local(peer) is local


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_a_caller_over_ipv6_loopback_is_granted(tmp_path: Path) -> None:
    with serving(tmp_path, datasets=DATASETS, listen="[::1]:0") as running:
        token = running.token("reader", ("mine", Role.READER))
        channel = running.channel(address=f"[::1]:{running.port}")
        (grant,) = invoke(channel, OPEN, shards_pb2.OpenLocalRequest(dataset="mine"), token)
        assert grant.ttl_s == 60.0


# The reader table.


def test_grants_keep_half_of_the_reader_table_for_the_server(node: RunningServer) -> None:
    token = node.token("table-reader", ("mine", Role.READER))
    channel = node.channel()
    open_local = shards_pb2.OpenLocalRequest(dataset="mine")
    table = node.store.local_reads.reader_table()
    assert table.size == MAX_READERS
    assert table.used < 100  # the server's own transactions, idle or not
    env = node.store._env.env  # a backdoor: this process's handle on the hot tier
    held = [env.begin() for _ in range(table.size // 2 + 1 - table.used)]
    try:
        assert node.store.local_reads.reader_table().used > table.size // 2
        error = refused(channel, OPEN, open_local, token)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert error_name(error) == "ResourceExhausted"
        assert "reader slots are taken" in error.details()  # type: ignore[attr-defined]
        # The server's own reads find the slots it kept.
        get = shards_pb2.GetShardRequest(dataset="mine", shard="s")
        assert invoke(channel, GET, get, token)[-1].frame.data
    finally:
        while held:  # each transaction's slot is freed when its object goes
            held.pop().abort()
    (grant,) = invoke(channel, OPEN, open_local, token)
    assert grant.ttl_s > 0


def test_half_the_table_is_the_line(node: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = node.token("line-reader", ("mine", Role.READER))
    channel = node.channel()
    open_local = shards_pb2.OpenLocalRequest(dataset="mine")
    support = node.store.local_reads
    monkeypatch.setattr(support, "reader_table", lambda: ReaderTable(2048, 4096))
    assert invoke(channel, OPEN, open_local, reader)[0].ttl_s > 0
    monkeypatch.setattr(support, "reader_table", lambda: ReaderTable(2049, 4096))
    error = refused(channel, OPEN, open_local, reader)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


@pytest.mark.timeout(60)
def test_slots_of_dead_readers_never_cost_a_grant(node: RunningServer) -> None:
    token = node.token("after-the-epoch", ("mine", Role.READER))
    channel = node.channel()
    open_local = shards_pb2.OpenLocalRequest(dataset="mine")
    invoke(channel, OPEN, open_local, token)  # the periodic check of dead slots runs now
    table = node.store.local_reads.reader_table()
    # Another process takes more than half the table (a reader that ignores its budget)...
    with holding_reader_slots(node.data_dir / "hot", table.size // 2 + 1):
        error = refused(channel, OPEN, open_local, token)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    # ...and dies holding them: the next grant frees them first, without waiting for the
    # periodic check, and is given.
    assert node.store.local_reads.reader_table().used > table.size // 2
    (grant,) = invoke(channel, OPEN, open_local, token)
    assert grant.ttl_s > 0
    assert node.store.local_reads.reader_table().used < table.size // 2
