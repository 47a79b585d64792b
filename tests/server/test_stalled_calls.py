"""Callers that never send their request, or keep a call open, cannot hold the workers.

grpcio's synchronous server runs each call on a worker of a fixed pool, and reads a
unary request on it before any handler runs. Each test opens more such calls than
the port has workers, in a real server, and then checks that a proper call is
still answered: at once for callers without a token (refused before their request
is read), within the request-arrival deadline for the rest.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow as pa
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.server.conftest import poll
from tests.server.servers import RunningServer, error_name, invoke, metadata, payload_of, serving
from tierstore.client.connect import connect
from tierstore.errors import InvalidArgument, ShardNotFound, Unavailable
from tierstore.server.app import ServerSettings, connection_cap
from tierstore.server.callerworkers import CallerWorkers
from tierstore.server.streamslots import ShardStreams
from tierstore.types import DatasetSettings, Role
from tierstore.v1 import common_pb2, datasets_pb2, shards_pb2, shards_pb2_grpc

LIST_DATASETS = "/tierstore.v1.DatasetService/ListDatasets"
PUT_SHARD = "/tierstore.v1.ShardService/PutShard"
GET_SHARD = "/tierstore.v1.ShardService/GetShard"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
WORKERS = 4
#: the get and put streams a server of WORKERS serves at once
STREAM_SLOTS = ShardStreams.for_workers(WORKERS).slots
#: the workers one caller's calls may hold at once
WORKER_SHARE = CallerWorkers(WORKERS).per_caller
ARRIVAL_S = 1.0


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningServer]:
    with serving(
        tmp_path,
        datasets={"d": DatasetSettings()},
        max_workers=WORKERS,
        request_arrival_s=ARRIVAL_S,
        stream_message_s=2 * ARRIVAL_S,
    ) as server:
        yield server


class Stalls:
    """Calls whose request never comes (until :meth:`release`): each sends its headers
    and then blocks in its request iterator."""

    def __init__(self) -> None:
        self._release = threading.Event()
        self.futures: list[grpc.Future] = []

    def _never(self, first: tuple[bytes, ...]) -> Iterator[bytes]:
        yield from first
        self._release.wait()
        yield b""

    def open(
        self,
        channel: grpc.Channel,
        method: str,
        count: int,
        token: str | None,
        first: tuple[bytes, ...] = (),
    ) -> None:
        """``count`` calls of ``method`` that send the messages ``first`` and then stall."""
        call = channel.stream_unary(method)
        for _ in range(count):
            self.futures.append(call.future(self._never(first), metadata=metadata(token)))

    def codes(self, timeout: float) -> list[grpc.StatusCode]:
        """How each call ended (waiting up to ``timeout`` for each)."""
        codes = []
        for future in self.futures:
            try:
                future.result(timeout=timeout)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
        return codes

    def release(self) -> None:
        self._release.set()
        for future in self.futures:
            future.cancel()

    def __enter__(self) -> Stalls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def list_datasets(server: RunningServer, token: str, timeout: float) -> float:
    """Seconds an authenticated ListDatasets took (raises if it failed)."""
    call = server.channel().unary_unary(
        LIST_DATASETS,
        request_serializer=datasets_pb2.ListDatasetsRequest.SerializeToString,
        response_deserializer=datasets_pb2.ListDatasetsResponse.FromString,
    )
    started = time.monotonic()
    call(datasets_pb2.ListDatasetsRequest(), timeout=timeout, metadata=metadata(token))
    return time.monotonic() - started


def test_calls_without_a_token_are_refused_before_their_request_is_read(
    running: RunningServer,
) -> None:
    admin = running.token("admin", ("*", Role.ADMIN))
    with Stalls() as stalls:
        stalls.open(running.channel(), LIST_DATASETS, 4 * WORKERS, token=None)
        stalls.open(running.channel(), HEALTH_CHECK, 4 * WORKERS, token="not-a-token")
        # Refused without their requests, which never come.
        assert set(stalls.codes(timeout=10)) == {grpc.StatusCode.UNAUTHENTICATED}
        assert list_datasets(running, admin, timeout=10) < ARRIVAL_S


def test_a_request_that_never_arrives_ends_its_call_and_frees_its_worker(
    running: RunningServer,
) -> None:
    # Callers with a token (widely handed-out readers', say) hold a worker for the
    # arrival deadline at most; the calls queued behind them then run. (Two of them:
    # one caller holds at most its share of the workers.)
    readers = [running.token(f"svc:reader-{n}", ("*", Role.READER)) for n in range(3)]
    with Stalls() as stalls:
        for reader in readers[:2]:
            stalls.open(running.channel(), LIST_DATASETS, WORKER_SHARE, token=reader)
        workers = running.server.auth.workers
        assert workers is not None
        poll(lambda: workers.in_use == WORKERS, 10, "the stalls to take every worker")
        took = list_datasets(running, readers[2], timeout=30)
        assert took < 10 * ARRIVAL_S
        assert set(stalls.codes(timeout=10)) == {grpc.StatusCode.CANCELLED}


def test_one_caller_holds_at_most_its_share_of_the_workers_and_the_admin_is_served_at_once(
    running: RunningServer,
) -> None:
    # A review's token of no grant at all kept every worker with calls whose request
    # never came, opened again as the node ended them: the admin's calls, RevokeToken
    # (the way to stop it) too, timed out.
    greedy = running.token("svc:nothing")
    admin = running.token("admin", ("*", Role.ADMIN))
    workers = running.server.auth.workers
    assert workers is not None and workers.per_caller == WORKER_SHARE
    with Stalls() as stalls:
        stalls.open(running.channel(), LIST_DATASETS, 2 * WORKERS, token=greedy)
        poll(lambda: workers.in_use == WORKER_SHARE, 10, "the stalls to take their share")
        scraped = running.server.metrics.registry.get_sample_value
        assert scraped("tierstore_worker_calls") == WORKER_SHARE
        assert scraped("tierstore_worker_calls_places") == WORKERS
        assert list_datasets(running, admin, timeout=30) < ARRIVAL_S
        # Past its share: refused at once, saying whose share is taken; the rest ended
        # at their deadline.
        codes = stalls.codes(timeout=10)
        assert codes.count(grpc.StatusCode.CANCELLED) == WORKER_SHARE, codes
        assert codes.count(grpc.StatusCode.UNAVAILABLE) == 2 * WORKERS - WORKER_SHARE, codes
    with pytest.raises(grpc.RpcError) as refused, Stalls() as more:
        more.open(running.channel(), LIST_DATASETS, WORKER_SHARE, token=greedy)
        poll(lambda: workers.in_use == WORKER_SHARE, 10, "the second stalls to start")
        list_datasets(running, greedy, timeout=30)
    assert error_name(refused.value) == "ServerBusy"
    assert (
        f"a ListDatasets call: svc:nothing holds {WORKER_SHARE} of the node's {WORKERS} "
        "calls in progress already" in refused.value.details()  # type: ignore[attr-defined]
    )
    poll(lambda: workers.in_use == 0, 10, "the places to be given back")
    assert list_datasets(running, admin, timeout=30) < ARRIVAL_S


def test_callers_who_are_not_the_node_s_admins_leave_it_the_workers_kept_for_its_admins(
    tmp_path: Path,
) -> None:
    # Two callers that each took their share held every worker between them, the
    # admin's way in (RevokeToken) too.
    pool = 16  # the smallest pool that keeps a worker for the admins
    with serving(tmp_path, max_workers=pool, request_arrival_s=ARRIVAL_S) as running:
        greedy = [running.token(f"svc:greedy-{n}", ("*", Role.READER)) for n in range(3)]
        admin = running.token("admin", ("*", Role.ADMIN))
        workers = running.server.auth.workers
        assert workers is not None and workers.kept_for_admins == 1
        others, share = pool - 1, workers.per_caller
        with Stalls() as stalls:
            stalls.open(running.channel(), LIST_DATASETS, share, token=greedy[0])
            poll(lambda: workers.in_use == share, 10, "the first caller's stalls to start")
            stalls.open(running.channel(), LIST_DATASETS, others - share + 1, token=greedy[1])
            poll(lambda: workers.in_use == others, 10, "the second caller's stalls to start")
            # The admin is served at once; a third caller is refused at once, told why.
            assert list_datasets(running, admin, timeout=30) < ARRIVAL_S
            with pytest.raises(grpc.RpcError) as refused:
                list_datasets(running, greedy[2], timeout=30)
            assert error_name(refused.value) == "ServerBusy"
            said = refused.value.details()  # type: ignore[attr-defined]
            assert (
                f"a ListDatasets call: the node's callers hold {others} of its {pool} calls "
                "in progress, all but the 1 kept for its admins" in said
            )
            codes = stalls.codes(timeout=10)
            assert codes.count(grpc.StatusCode.CANCELLED) == others, codes
            assert codes.count(grpc.StatusCode.UNAVAILABLE) == 1, codes
        poll(lambda: workers.in_use == 0, 10, "the places to be given back")
        assert list_datasets(running, greedy[2], timeout=30) < ARRIVAL_S


def test_a_put_stream_that_stops_sending_ends_and_stores_nothing(running: RunningServer) -> None:
    # As many writers as places: one caller holds at most its share of them.
    writers = [running.token(f"svc:writer-{n}", ("d", Role.WRITER)) for n in range(STREAM_SLOTS)]
    header = shards_pb2.PutShardRequest(
        header=shards_pb2.PutShardHeader(
            dataset="d", shard="s", kind=common_pb2.SHARD_KIND_RAW, frame_count=2
        )
    )
    first = (header.SerializeToString(), shards_pb2.PutShardRequest(frame=b"x").SerializeToString())
    with Stalls() as stalls:
        for number in range(2 * WORKERS):
            stalls.open(running.channel(), PUT_SHARD, 1, writers[number % STREAM_SLOTS], first)
        metrics = running.server.metrics.registry
        poll(
            lambda: metrics.get_sample_value("tierstore_shard_streams") == STREAM_SLOTS,
            10,
            "the stalls to take every shard stream's place",
        )
        assert list_datasets(running, writers[0], timeout=30) < 10 * ARRIVAL_S
        # Those past the shard streams' places refused at once, the rest ended.
        codes = stalls.codes(timeout=10)
        assert codes.count(grpc.StatusCode.CANCELLED) == STREAM_SLOTS, codes
        assert codes.count(grpc.StatusCode.UNAVAILABLE) == 2 * WORKERS - STREAM_SLOTS, codes
    with pytest.raises(ShardNotFound):
        running.store.stat("d", "s")


def test_a_put_takes_no_shard_streams_place_before_its_caller_s_right_is_checked(
    running: RunningServer,
) -> None:
    # A review's token of no grant at all held 21 of 28 places with puts that sent
    # nothing: a put took its place before its header said where it puts.
    nothing = running.token("svc:nothing")
    workers = running.server.auth.workers
    assert workers is not None
    streams = running.server.metrics.registry
    with Stalls() as stalls:
        stalls.open(running.channel(), PUT_SHARD, WORKER_SHARE, token=nothing)
        poll(lambda: workers.in_use == WORKER_SHARE, 10, "the puts to start")
        assert streams.get_sample_value("tierstore_shard_streams") == 0
    header = shards_pb2.PutShardRequest(
        header=shards_pb2.PutShardHeader(dataset="d", shard="s", kind=common_pb2.SHARD_KIND_RAW)
    )
    with Stalls() as stalls:
        stalls.open(running.channel(), PUT_SHARD, 1, nothing, (header.SerializeToString(),))
        # Refused at once: the dataset is none of the caller's (so it is not found).
        assert stalls.codes(timeout=ARRIVAL_S) == [grpc.StatusCode.NOT_FOUND]


def test_a_caller_that_stops_reading_its_shard_frees_its_worker(
    running: RunningServer,
) -> None:
    # grpc sends each response message on the call's worker, which waits while flow
    # control holds the message back: a reader that stops reading would keep it.
    # As many readers as places: one caller holds at most its share of them.
    readers = [running.token(f"svc:reader-{n}", ("*", Role.READER)) for n in range(STREAM_SLOTS)]
    reader = readers[0]
    running.store.put("d", "big", bytes(32 << 20))  # far more than a flow-control window
    request = shards_pb2.GetShardRequest(dataset="d", shard="big")
    stalled = []
    for number in range(STREAM_SLOTS):
        stub = shards_pb2_grpc.ShardServiceStub(running.channel(own_connection=True))
        stream = stub.GetShard(request, timeout=60, metadata=metadata(readers[number]))
        assert next(stream).HasField("header")  # started, then no longer read
        stalled.append(stream)
    # Past the shard streams' places: refused at once, saying why, however many come
    # (they took the workers: a review's 300 unread streams on one connection kept
    # every caller, the admin too, out for minutes).
    for _ in range(2 * WORKERS):
        stub = shards_pb2_grpc.ShardServiceStub(running.channel())
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.GetShard(request, timeout=30, metadata=metadata(reader)))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shard streams already" in refused.value.details()  # type: ignore[attr-defined]
    # The calls that stream no shard are served while the stalled readers hold theirs.
    list_datasets(running, reader, timeout=30)
    assert not any(stream.done() for stream in stalled)  # type: ignore[attr-defined]
    # ...and their calls end once they have taken no message for stream_message_s,
    # giving every place back: as many streams as there are places start at once.
    stub = shards_pb2_grpc.ShardServiceStub(running.channel())

    def all_places_free() -> bool:
        probes = [
            stub.GetShard(request, timeout=30, metadata=metadata(readers[number]))
            for number in range(STREAM_SLOTS)
        ]
        try:
            return all(next(probe).HasField("header") for probe in probes)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return False
        finally:
            for probe in probes:
                probe.cancel()

    poll(all_places_free, 30, "the stalled reads to give their places back")
    for stream in stalled:
        with pytest.raises(grpc.RpcError) as caught:
            for _ in stream:  # what grpc had taken in before the call was ended
                pass
        assert caught.value.code() == grpc.StatusCode.CANCELLED


def test_one_caller_holds_at_most_its_share_of_the_places_and_others_are_served(
    running: RunningServer,
) -> None:
    # A load review's one process held every place with streams it did not read, and
    # every other caller's streams waited (in their retries) until the node ended them.
    share = ShardStreams.for_workers(WORKERS).per_caller
    assert 1 <= share < STREAM_SLOTS
    greedy = running.token("svc:greedy", ("*", Role.READER))
    other = running.token("svc:other", ("*", Role.READER))
    # 32 MiB: far more than a flow-control window, for the streams left unread; the
    # reads taken whole are of a small shard (this node cancels a reader that took no
    # message for 2 s, and a whole 32 MiB read on a busy machine was cancelled so).
    running.store.put("d", "big", bytes(32 << 20))
    request = shards_pb2.GetShardRequest(dataset="d", shard="big")
    data = bytes(range(256)) * 64
    running.store.put("d", "small", data)
    small = shards_pb2.GetShardRequest(dataset="d", shard="small")
    stalled = []
    for _ in range(share):
        stub = shards_pb2_grpc.ShardServiceStub(running.channel(own_connection=True))
        stream = stub.GetShard(request, timeout=60, metadata=metadata(greedy))
        assert next(stream).HasField("header")  # started, then no longer read
        stalled.append(stream)
    metrics = running.server.metrics.registry
    assert metrics.get_sample_value("tierstore_shard_streams") == share
    assert metrics.get_sample_value("tierstore_shard_streams_places") == STREAM_SLOTS
    # Its next stream is refused at once, saying whose share is taken.
    stub = shards_pb2_grpc.ShardServiceStub(running.channel())
    with pytest.raises(grpc.RpcError) as refused:
        next(stub.GetShard(request, timeout=30, metadata=metadata(greedy)))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_name(refused.value) == "ServerBusy"
    assert (
        f"svc:greedy holds {share} of the node's {STREAM_SLOTS} shard streams already"
        in refused.value.details()  # type: ignore[attr-defined]
    )
    # Another caller reads the whole shard meanwhile, and again: the place comes back.
    for _ in range(2):
        got = invoke(running.channel(), GET_SHARD, small, other, timeout=30)
        assert payload_of(got) == data
    assert not any(stream.done() for stream in stalled)  # type: ignore[attr-defined]
    for stream in stalled:
        stream.cancel()  # type: ignore[attr-defined]
    # Its streams ended, their places are given back, and its share is its own again.
    poll(
        lambda: metrics.get_sample_value("tierstore_shard_streams") == 0,
        30,
        "the greedy caller's cancelled streams to give their places back",
    )
    assert payload_of(invoke(running.channel(), GET_SHARD, small, greedy, timeout=30)) == data


def test_probes_are_answered_at_once_whatever_stalled_calls_the_health_port_holds(
    running: RunningServer,
) -> None:
    # The health port answers anyone, so its server holds no thread per call: however
    # many calls stall there, a probe (Kubernetes gives it 1 s by default) is answered.
    with Stalls() as stalls, contextlib.ExitStack() as channels:

        def connection() -> grpc.Channel:
            # A connection of its own, as each kubelet probe opens (grpc would share one).
            return channels.enter_context(
                grpc.insecure_channel(
                    running.health_address, options=[("grpc.use_local_subchannel_pool", 1)]
                )
            )

        for _ in range(4):
            stalls.open(connection(), HEALTH_CHECK, 16, token=None)
        for _ in range(5):
            probe = health_pb2_grpc.HealthStub(connection())
            reply = probe.Check(health_pb2.HealthCheckRequest(), timeout=1)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # And the stalled calls end with their connections (10 s of age, 2 s of grace).
        assert grpc.StatusCode.OK not in stalls.codes(timeout=30)


def test_watch_is_not_served_so_it_holds_no_worker(running: RunningServer) -> None:
    admin = running.token("admin", ("*", Role.ADMIN))
    # A caller each on the API port: one caller holds at most its share of the workers.
    callers = [running.token(f"svc:watcher-{n}") for n in range(4 * WORKERS)]
    health_port = running.channel(address=running.health_address, plaintext=True)
    for channel, tokens in ((health_port, [None] * len(callers)), (running.channel(), callers)):
        watches = [
            health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=10, metadata=metadata(token)
            )
            for token in tokens
        ]
        for watch in watches:
            with pytest.raises(grpc.RpcError) as caught:
                next(watch)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "poll Check" in (caught.value.details() or "")
    reply = health_pb2_grpc.HealthStub(health_port).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert list_datasets(running, admin, timeout=5) < 5


def test_a_unary_call_that_ends_without_its_request_is_invalid(running: RunningServer) -> None:
    reader = running.token("svc:reader", ("*", Role.READER))
    call = running.channel().stream_unary(LIST_DATASETS)
    with pytest.raises(grpc.RpcError) as caught:
        call(iter(()), timeout=10, metadata=metadata(reader))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_name(caught.value) == "InvalidArgument"
    assert "carried no request" in (caught.value.details() or "")


@pytest.mark.parametrize("field", ["request_arrival_s", "stream_message_s"])
def test_the_deadlines_must_be_positive(field: str) -> None:
    with pytest.raises(InvalidArgument, match="must be positive"):
        ServerSettings(insecure=True, **{field: 0.0})


def test_an_idle_connection_is_closed_and_the_next_call_opens_another(tmp_path: Path) -> None:
    # Connections with no call in flight, with a token or without, were kept for ever:
    # a descriptor each, up to the process's limit.
    with (
        serving(tmp_path, insecure=True, connection_idle_s=0.5) as node,
        grpc.insecure_channel(node.address) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as caught:  # no token: refused, but connected
            health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        states: list[grpc.ChannelConnectivity] = []
        channel.subscribe(states.append)
        deadline = time.monotonic() + 20
        while grpc.ChannelConnectivity.IDLE not in states[1:]:  # the server let it go
            assert time.monotonic() < deadline, f"the connection stayed: {states}"
            time.sleep(0.05)
        token = node.token("reader", ("d", Role.READER))
        request = health_pb2.HealthCheckRequest()
        reply = health.Check(request, timeout=10, metadata=metadata(token))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("idle_s", [0.0, -1.0, float("inf"), float("nan")])
def test_the_idle_connection_time_must_be_positive(idle_s: float) -> None:
    with pytest.raises(InvalidArgument, match="connection_idle_s must be a positive number"):
        ServerSettings(insecure=True, connection_idle_s=idle_s)


def health_check(channel: grpc.Channel, token: str) -> grpc.StatusCode:
    """The code of a health check over ``channel`` (OK when answered)."""
    try:
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5, metadata=metadata(token)
        )
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def own_connection(address: str) -> grpc.Channel:
    """A channel that shares no connection with other channels in this process."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def test_connections_past_the_cap_are_refused_and_the_node_serves_the_rest(
    tmp_path: Path,
) -> None:
    # Connections open at once had no cap: callers that kept theirs open (each
    # calling now and then, so none went idle) held descriptors up to the process's
    # limit, and then the node could open no file of its own.
    with serving(tmp_path, insecure=True, max_connections=2) as node:
        token = node.token("reader", ("d", Role.READER))
        first, second, third = (own_connection(node.address) for _ in range(3))
        try:
            assert health_check(first, token) == grpc.StatusCode.OK
            assert health_check(second, token) == grpc.StatusCode.OK
            assert health_check(third, token) == grpc.StatusCode.UNAVAILABLE
            assert health_check(first, token) == grpc.StatusCode.OK  # still served
            first.close()  # a place comes free: the next connection is taken
            deadline = time.monotonic() + 20
            while health_check(third, token) != grpc.StatusCode.OK:
                assert time.monotonic() < deadline, "a freed place was never taken"
                time.sleep(0.1)
        finally:
            for channel in (first, second, third):
                channel.close()


def test_connections_that_never_finish_their_handshake_are_closed(tmp_path: Path) -> None:
    # gRPC gives a handshake 120 s: anyone who opened connections and sent nothing held
    # every place under the cap that long, and no caller with a token got in.
    with serving(tmp_path, max_connections=2, handshake_timeout_s=1.0) as node:
        silent = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(2)]
        try:
            for connection in silent:
                connection.settimeout(20)
                assert connection.recv(1) == b""  # closed by the server, not timed out
        finally:
            for connection in silent:
                connection.close()
        token = node.token("reader", ("d", Role.READER))
        with node.channel(own_connection=True) as channel:
            assert health_check(channel, token) == grpc.StatusCode.OK


@pytest.mark.parametrize("handshake_s", [0.0, -1.0, float("inf"), float("nan")])
def test_the_handshake_time_must_be_positive(handshake_s: float) -> None:
    with pytest.raises(InvalidArgument, match="handshake_timeout_s must be a positive number"):
        ServerSettings(insecure=True, handshake_timeout_s=handshake_s)


def test_the_automatic_connection_cap_leaves_descriptors_for_the_node() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    automatic = connection_cap(ServerSettings(insecure=True))
    assert 16 <= automatic <= 4096
    if soft != resource.RLIM_INFINITY:
        assert automatic <= max(16, soft // 2)
    assert connection_cap(ServerSettings(insecure=True, max_connections=7)) == 7


@pytest.mark.parametrize("bad", [-1, 1 << 21, True, 2.5])
def test_the_connection_cap_must_be_a_whole_number_in_range(bad: object) -> None:
    with pytest.raises(InvalidArgument, match="max_connections must be"):
        ServerSettings(insecure=True, max_connections=bad)  # type: ignore[arg-type]


_IDLE_CLIENT = """
import sys, time
from pathlib import Path
from tierstore.client import channel
from tierstore.client.client import Client
from tierstore.client.channel import ChannelSettings
channel.CLIENT_IDLE_MS = int(sys.argv[4])
settings = ChannelSettings(address=sys.argv[1], token=sys.argv[2], ca=Path(sys.argv[3]),
                           server_name="localhost")
with Client(settings) as client:
    client.put("d", "s", b"x")
    time.sleep(2.0)
    assert bytes(client.get("d", "s")) == b"x"
print("read after idling", flush=True)
"""


@pytest.mark.parametrize(("client_idle_ms", "logged"), [(300, False), (240_000, True)])
def test_a_client_lets_an_idle_connection_go_before_the_server_does(
    tmp_path: Path, client_idle_ms: int, logged: bool
) -> None:
    # Closed by the server, gRPC's core logged the GOAWAY on the client's stderr (every
    # DataLoader worker idle through an eval, once the server closed idle connections).
    # The client's own idle time is below the server's; the second case is the control.
    datasets = {"d": DatasetSettings()}
    with serving(tmp_path, datasets=datasets, connection_idle_s=1.0) as node:
        assert node.tls is not None
        token = node.token("w", ("d", Role.WRITER))
        env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
        args = [node.address, token, str(node.tls.ca_cert_path), str(client_idle_ms)]
        child = subprocess.run(
            [sys.executable, "-c", _IDLE_CLIENT, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert child.returncode == 0 and "read after idling" in child.stdout, child.stderr[-2000:]
    # The control logs the GOAWAY only when the close reaches the client's core while
    # it watches (it did not in one CI run): only its absence is asserted.
    if not logged:
        assert "goaway" not in child.stderr.lower(), child.stderr[-2000:]


def test_a_put_whose_data_stalls_is_ended_saying_so_and_that_nothing_was_stored(
    tmp_path: Path,
) -> None:
    # The node ends a put stream whose next frame takes longer than stream_message_s:
    # the caller saw a bare "CANCELLED", and an outcome unknown that was not (the end
    # of the stream, which commits the put, had not been sent).
    def slow() -> Iterator[pa.RecordBatch]:
        yield pa.record_batch({"a": [1]})
        time.sleep(4 * ARRIVAL_S + 2)  # past the node's 2 s for the next message
        yield pa.record_batch({"a": [2]})

    with serving(
        tmp_path, insecure=True, datasets={"d": DatasetSettings()}, stream_message_s=2 * ARRIVAL_S
    ) as node:
        token = node.token("w", ("d", Role.WRITER))
        with connect(node.address, token=token, insecure=True, local_reads=False) as client:
            with pytest.raises(Unavailable, match="had given no next frame") as ended:
                client.put("d", "slow", slow())
            assert "Nothing was stored" in str(ended.value)
            assert not ended.value.outcome_unknown
            with pytest.raises(ShardNotFound):
                client.stat("d", "slow")


def test_a_put_closed_under_while_its_data_is_slow_is_not_said_to_have_stalled(
    tmp_path: Path,
) -> None:
    # The client's own close() cancels the call too: a review's was said to be the node
    # ending a stalled put, and "give data that is read faster".
    def slow() -> Iterator[pa.RecordBatch]:
        yield pa.record_batch({"a": [1]})
        time.sleep(4)
        yield pa.record_batch({"a": [2]})

    with serving(tmp_path, insecure=True, datasets={"d": DatasetSettings()}) as node:
        token = node.token("w", ("d", Role.WRITER))
        client = connect(node.address, token=token, insecure=True, local_reads=False)
        closer = threading.Timer(1.5, client.close)
        closer.start()
        try:
            with pytest.raises(Unavailable) as ended:
                client.put("d", "slow", slow())
        finally:
            closer.join()
        assert "had given no next frame" not in str(ended.value)
        assert "the client was closed" in str(ended.value)
