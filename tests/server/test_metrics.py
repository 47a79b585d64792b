"""The /metrics endpoint: plain HTTP without credentials, so no dataset names by default."""

from __future__ import annotations

import secrets
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import Gauge

from tests.engine.stores import StoreFactory
from tests.server.conftest import ServerProcess
from tests.server.servers import serving
from tierstore.engine.catalog import Catalog
from tierstore.server.callerworkers import CallerWorkers
from tierstore.server.metrics import MAX_SCRAPES, MAX_WAITING, ServerMetrics, listen_address
from tierstore.server.places import Places
from tierstore.types import DatasetSettings
from tierstore.v1 import datasets_pb2, datasets_pb2_grpc

SECRET = "secret-project-x"


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[StoreFactory]:
    stores = StoreFactory(tmp_path)
    yield stores
    stores.close_all()


def scrape(dataset_labels: bool, factory: StoreFactory) -> str:
    """What a scrape of a node holding two read datasets returns over HTTP."""
    store = factory(datasets={SECRET: DatasetSettings(), "other": DatasetSettings()})
    for dataset in (SECRET, "other"):
        store.put(dataset, "s", b"x" * 100)
        store.get(dataset, "s")  # a hit each
    metrics = ServerMetrics(dataset_labels=dataset_labels)
    metrics.watch_store(store)
    port = metrics.serve("127.0.0.1:0")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            return str(reply.read().decode())
    finally:
        metrics.stop_serving()


def test_by_default_metrics_name_no_dataset(factory: StoreFactory) -> None:
    text = scrape(False, factory)
    assert SECRET not in text and 'dataset="' not in text
    assert "tierstore_hits_total 2.0" in text.splitlines()


def test_dataset_labels_are_the_operators_choice(factory: StoreFactory) -> None:
    text = scrape(True, factory)
    assert f'tierstore_hits_total{{dataset="{SECRET}"}} 1.0' in text.splitlines()


@pytest.mark.parametrize(
    "path", ["/", "/index.html", "/metricsx", "/metrics/extra", "/favicon.ico"]
)
def test_only_the_metrics_path_answers(path: str) -> None:
    # prometheus_client answers every path with the metrics: a scanner probing for
    # /admin or /.env got a page of them, with a 200.
    metrics = ServerMetrics()
    metrics.observe_call("GetShard", "OK", 0.01)
    port = metrics.serve("127.0.0.1:0")
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
        assert refused.value.code == 404
        assert b"/metrics" in refused.value.read()  # says where the metrics are
        url = f"http://127.0.0.1:{port}/metrics?name[]=tierstore_requests_total"
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert reply.status == 200
            text = reply.read().decode()
        assert 'tierstore_requests_total{code="OK",method="GetShard"} 1.0' in text.splitlines()
    finally:
        metrics.stop_serving()


def test_the_worker_calls_help_names_the_places_kept_for_the_nodes_admins() -> None:
    # It named a caller's share only: an operator seeing ServerBusy at 30 of 32 calls
    # found no word of the 2 kept for admins.
    metrics = ServerMetrics()
    metrics.watch_places(Places(8), Places(8), CallerWorkers(32))
    helps = {
        family.name: family.documentation
        for family in metrics.registry.collect()
        if family.name.startswith("tierstore_worker_calls")
    }
    assert (
        "than the 30 of them that callers other than the node's admins"
        in helps["tierstore_worker_calls"]
    )
    assert "2 are kept for callers with the admin role on *" in helps["tierstore_worker_calls"]


def test_a_stopped_server_closes_its_metrics_port(tmp_path: Path) -> None:
    listeners_before = metrics_listener_threads()
    with serving(tmp_path, metrics=True) as running:
        port = running.server.metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        assert "tierstore_hot_bytes " in text
        assert "tierstore_promotions_skipped_total 0.0" in text.splitlines()
        servers_listener = metrics_listener_threads() - listeners_before
        assert len(servers_listener) == 1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    assert not any(thread.is_alive() for thread in servers_listener)


def metrics_listener_threads() -> set[threading.Thread]:
    """The threads serving a /metrics listener (prometheus_client runs ``serve_forever``)."""
    return {
        thread
        for thread in threading.enumerate()
        if getattr(thread, "_target", None) is not None
        and getattr(thread._target, "__name__", "") == "serve_forever"  # type: ignore[attr-defined]
    }


def test_a_scrape_walks_no_shard_record(
    factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hits and misses are counted in memory; a scrape once added them up through
    # dataset_usage, which walks every shard record (seconds over millions of shards).
    store = factory(datasets={"a": DatasetSettings(), "b": DatasetSettings()})
    for name in ("s1", "s2", "s3"):
        store.put("a", name, b"x" * 100)
        store.get("a", name)
    store.get("a", "s1")
    walked: list[str] = []
    original = Catalog.iter_shards

    def counting(self: Catalog, txn: Any, dataset: str, *args: Any, **kwargs: Any) -> Any:
        walked.append(dataset)
        return original(self, txn, dataset, *args, **kwargs)

    monkeypatch.setattr(Catalog, "iter_shards", counting)
    metrics = ServerMetrics(dataset_labels=True)
    metrics.watch_store(store)
    port = metrics.serve("127.0.0.1:0")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            lines = reply.read().decode().splitlines()
    finally:
        metrics.stop_serving()
    assert 'tierstore_hits_total{dataset="a"} 4.0' in lines
    assert 'tierstore_hits_total{dataset="b"} 0.0' in lines  # never read: still reported
    assert walked == []
    assert store.dataset_usage("a").hits == 4 and walked == ["a"]  # the usage call does walk


def test_deleting_a_dataset_keeps_the_node_totals_and_a_new_one_starts_at_zero(
    factory: StoreFactory,
) -> None:
    store = factory(datasets={"a": DatasetSettings(), "b": DatasetSettings()})
    for dataset in ("a", "b"):
        store.put(dataset, "s", b"x" * 100)
    for _ in range(3):
        store.get("b", "s")
    store.get("a", "s")
    metrics = ServerMetrics(dataset_labels=False)
    metrics.watch_store(store)
    port = metrics.serve("127.0.0.1:0")

    def hits_line() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            lines = reply.read().decode().splitlines()
        return next(line for line in lines if line.startswith("tierstore_hits_total"))

    try:
        assert hits_line() == "tierstore_hits_total 4.0"
        store.delete_dataset("b", force=True)
        assert hits_line() == "tierstore_hits_total 4.0"  # a counter never goes down
        store.create_dataset("b")
        assert store.dataset_usage("b").hits == 0  # the new dataset's reads only
        assert store.read_counts()["b"] == (0, 0)
        assert hits_line() == "tierstore_hits_total 4.0"
    finally:
        metrics.stop_serving()


def sample(server: ServerProcess, series: str) -> float:
    """The value of the node's ``series`` (name and labels, as exposed), 0 if absent."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    lines = [line for line in text.splitlines() if line.startswith(f"{series} ")]
    return float(lines[0].split()[-1]) if lines else 0.0


def unauthenticated_calls(server: ServerProcess, method: str) -> float:
    """The node's ``tierstore_requests_total`` of ``method`` answered UNAUTHENTICATED."""
    return sample(server, f'tierstore_requests_total{{code="UNAUTHENTICATED",method="{method}"}}')


def test_calls_refused_for_their_credentials_are_counted(server: ServerProcess) -> None:
    # They were audited, but never reached the counter: alerts on refused
    # credentials saw nothing.
    method = "/tierstore.v1.DatasetService/ListDatasets"
    before = unauthenticated_calls(server, method)
    timed = f'tierstore_request_seconds_count{{method="{method}"}}'
    timed_before = sample(server, timed)
    stub = datasets_pb2_grpc.DatasetServiceStub(server.channel())
    for token in ("ts_000000000000_nope", "garbage"):
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListDatasets(
                datasets_pb2.ListDatasetsRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert unauthenticated_calls(server, method) == before + 2
    # Counted, not timed: a flood of refusals pulled the method's latency toward zero.
    assert sample(server, timed) == timed_before


def test_the_backlog_cap_and_the_free_disk_are_exported(
    server: ServerProcess, tmp_path: Path
) -> None:
    # Neither was: "backlog / cap" could not be computed, and a full disk showed only
    # as puts failing.
    assert sample(server, "tierstore_archive_backlog_cap_bytes") > 0
    free = sample(server, "tierstore_data_disk_free_bytes")
    assert free > 0
    assert abs(free - shutil.disk_usage(server.data_dir).free) < 256 << 20  # the same disk


def closed_by_the_server(connection: socket.socket) -> bool:
    """Whether the server closed ``connection`` (it reads the end of the stream), within
    the connection's timeout; a read that times out fails the test."""
    return connection.recv(1) == b""


def metrics_threads() -> int:
    """The metrics endpoints' threads running in this process (another test's threads,
    which may start or end meanwhile, are not counted)."""
    return sum(thread.name.startswith("tierstore-metrics") for thread in threading.enumerate())


def test_connections_past_the_cap_are_closed_oldest_first_and_hold_no_thread() -> None:
    # The endpoint answers anyone who reaches the port, and each connection that sent
    # nothing held a thread and a descriptor for ever: 500 of them took 500 threads.
    metrics = ServerMetrics(idle_s=60)
    port = metrics.serve("127.0.0.1:0")
    before = metrics_threads()
    extra = 10
    idle = []
    try:
        for _ in range(MAX_WAITING + extra):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=20))
        # A new connection closes the oldest: held ones do not keep a scrape out.
        assert all(closed_by_the_server(oldest) for oldest in idle[:extra])
        assert metrics_threads() <= before  # none waits on a thread
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            assert reply.status == 200
        # The scrape closed the next oldest; the newer ones are still held.
        assert closed_by_the_server(idle[extra])
        idle[-1].setblocking(False)
        with pytest.raises(BlockingIOError):
            idle[-1].recv(1)
    finally:
        for connection in idle:
            connection.close()
        metrics.stop_serving()


def test_a_node_answers_a_scrape_while_connections_that_send_nothing_are_held(
    server: ServerProcess,
) -> None:
    # Each connection held a thread from its accept until its request came: eight that
    # sent nothing (or a request a byte at a time) kept every scrape out, closed at
    # once, for as long as they were held (10 s each, then again).
    address = ("127.0.0.1", server.metrics_port)
    held = [socket.create_connection(address, timeout=20) for _ in range(4 * MAX_SCRAPES)]
    try:
        for connection in held[::2]:
            connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never ended
        for _ in range(3):
            url = f"http://127.0.0.1:{server.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as reply:
                assert reply.status == 200
                assert "tierstore_hot_bytes " in reply.read().decode()
    finally:
        for connection in held:
            connection.close()


def test_a_connection_that_sends_nothing_is_closed_and_a_scrape_is_answered_after() -> None:
    metrics = ServerMetrics(idle_s=0.5)
    metrics.observe_call("GetShard", "OK", 0.01)
    port = metrics.serve("127.0.0.1:0")
    try:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(3)]
        for connection in idle:
            with connection:
                assert closed_by_the_server(connection)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        assert 'tierstore_requests_total{code="OK",method="GetShard"} 1.0' in text.splitlines()
    finally:
        metrics.stop_serving()


def test_a_connection_that_trickles_is_closed_too() -> None:
    # The idle limit was per read: a connection sending a byte now and then kept its
    # place for ever, and MAX_SCRAPES of them kept every scrape out.
    metrics = ServerMetrics(idle_s=0.5)
    port = metrics.serve("127.0.0.1:0")
    tricklers = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(3)]
    try:
        deadline = time.monotonic() + 20
        open_ones = list(tricklers)
        while open_ones and time.monotonic() < deadline:
            for connection in list(open_ones):
                try:
                    connection.sendall(b"G")  # never a whole request line
                except OSError:
                    open_ones.remove(connection)  # closed by the server
            time.sleep(0.1)  # less than the idle limit: each read gets its byte in time
        assert not open_ones, "a connection sending a byte each 0.1 s was never closed"
    finally:
        for connection in tricklers:
            connection.close()
        metrics.stop_serving()


def test_an_empty_listen_host_is_every_interface() -> None:
    # It was looked up as a name: "cannot listen on :7445 ... Name or service not
    # known", and the node did not start. (Resolved only: a test binds loopback alone.)
    assert listen_address(":7445")[1] in (("0.0.0.0", 7445), ("::", 7445))


@pytest.mark.parametrize(("address", "reach"), [("[::1]:0", "[::1]"), ("localhost:0", "localhost")])
def test_the_listen_address_takes_the_forms_the_other_ports_take(address: str, reach: str) -> None:
    # A bracketed IPv6 address was looked up as a name, and the node did not start.
    if reach == "[::1]" and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    metrics = ServerMetrics()
    port = metrics.serve(address)
    try:
        with urllib.request.urlopen(f"http://{reach}:{port}/metrics", timeout=10) as reply:
            assert reply.status == 200
    finally:
        metrics.stop_serving()


def test_a_stop_ends_the_answers_under_way_and_waits_for_their_threads() -> None:
    # The answering threads were daemon threads, which socketserver does not wait for:
    # the stop returned while answers to readers that took nothing went on, each with
    # its thread and the node's descriptor for up to idle_s more per write, the watch
    # that ends them at idle_s stopped already.
    metrics = ServerMetrics(idle_s=60)
    padding = Gauge("padding", "makes a page larger than the sockets buffer", ["key"])
    metrics.registry.register(padding)
    # A page of about 8 MB, of few samples: 100,000 of them took past 20 s to make on
    # a busy machine, before the first byte of the answer.
    for key in range(2_000):
        padding.labels(f"{key:04096d}").set(key)
    before = set(threading.enumerate())
    port = metrics.serve("127.0.0.1:0")
    readers = []
    try:
        for _ in range(2):
            reader = socket.socket()
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.settimeout(60)
            reader.connect(("127.0.0.1", port))
            reader.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            readers.append(reader)
        for reader in readers:
            assert reader.recv(1) == b"H"  # its answer is under way, and read no further
    finally:
        metrics.stop_serving()
    try:  # (each answer's thread closes its connection as it ends)
        # The metrics' threads only: another test's may start meanwhile.
        new = [thread for thread in threading.enumerate() if thread not in before]
        assert [thread for thread in new if thread.name.startswith("tierstore-metrics")] == []
    finally:
        for reader in readers:
            reader.close()


def test_a_flood_of_refused_calls_is_counted_whole_and_audited_once(
    server: ServerProcess,
) -> None:
    # Each refusal was an audit line of its own: a client without a valid token grew
    # the node's log by 1.3 GB an hour. The first of its kind is audited; the count
    # stays whole in the metrics.
    # A token id made up for every call (one the node does not know) is no new kind.
    method = "/tierstore.v1.DatasetService/ListDatasets"
    before = unauthenticated_calls(server, method)
    logged = len(server.errors().splitlines())
    stub = datasets_pb2_grpc.DatasetServiceStub(server.channel())
    for _ in range(50):
        with pytest.raises(grpc.RpcError):
            stub.ListDatasets(
                datasets_pb2.ListDatasetsRequest(),
                metadata=(("authorization", f"Bearer ts_{secrets.token_hex(6)}_{'x' * 43}"),),
                timeout=10,
            )
    assert unauthenticated_calls(server, method) == before + 50
    lines = [line for line in server.errors().splitlines()[logged:] if "reason=unknown" in line]
    assert len(lines) <= 2, lines  # one a 10 s window, and the flood takes well under 10 s
