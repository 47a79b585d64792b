"""Graceful shutdown of ``tierstore serve`` on SIGTERM.

Health turns NOT_SERVING at once (seen on the plaintext health port), new calls are
refused, calls in flight — a put stream and a get stream — finish, and the process
exits 0 well within 25 s.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tierstore import errors
from tierstore.client.receive import open_stream
from tierstore.v1 import common_pb2, shards_pb2, shards_pb2_grpc

from .conftest import (
    READY_LINE,
    ServerProcess,
    children,
    clean_env,
    endpoint,
    free_ports,
    poll,
    silent_archive,
    tierstore_command,
)

MiB = 1 << 20


@pytest.mark.timeout(120)
def test_sigterm_finishes_in_flight_calls_and_exits_0(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    server = spawn_server()
    client = server.connect()
    client.create_dataset("ds", encrypted=False)
    big = os.urandom(12 * MiB)  # three 4 MiB frames
    client.put("ds", "big", big)
    stub = shards_pb2_grpc.ShardServiceStub(server.channel())

    # A put in flight: 17 of 20 frames sent (past the spool's memory limit, so the
    # server holds a spool file we can see), the rest held back until after SIGTERM.
    chunk = os.urandom(4 * MiB)
    held, go = threading.Event(), threading.Event()

    def put_messages() -> Iterator[shards_pb2.PutShardRequest]:
        yield shards_pb2.PutShardRequest(
            header=shards_pb2.PutShardHeader(
                dataset="ds", shard="late", kind=common_pb2.SHARD_KIND_RAW, frame_count=20
            )
        )
        for index in range(20):
            if index == 17:
                held.set()
                go.wait(60)
            yield shards_pb2.PutShardRequest(frame=chunk)
        yield shards_pb2.PutShardRequest(end=shards_pb2.PutShardEnd())

    put = stub.PutShard.future(put_messages(), metadata=server.metadata, timeout=90)
    assert held.wait(30)
    poll(server.spool_fds, 30, "the put to reach the server")

    # A get in flight: its header read, its frames not yet.
    request = shards_pb2.GetShardRequest(dataset="ds", shard="big")
    get = open_stream(iter(stub.GetShard(request, metadata=server.metadata, timeout=90)), request)

    assert server.health() == health_pb2.HealthCheckResponse.SERVING
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    poll(
        lambda: server.health() == health_pb2.HealthCheckResponse.NOT_SERVING,
        5,
        "health to turn NOT_SERVING",
    )
    assert time.monotonic() - signalled < 5

    # New calls are refused while the old ones finish.
    late = server.connect(timeout_s=5)
    with pytest.raises(errors.Unavailable):
        late.stat("ds", "big")
    late.close()

    go.set()
    info = put.result(timeout=60)
    assert sum(info.frame_sizes) == 20 * 4 * MiB
    out = bytearray(get.length)
    assert get.into(memoryview(out)) == len(big)
    assert bytes(out) == big

    code = server.process.wait(25)
    assert code == 0, str(server)
    assert time.monotonic() - signalled < 25
    output = server.output()
    assert "tierstore: stopping" in output and "tierstore: stopped" in output
    with pytest.raises(grpc.RpcError):
        server.health()  # the health port is gone too
    client.close()


@pytest.mark.timeout(120)
def test_a_hangup_stops_the_node_gracefully_unless_it_was_started_to_ignore_it(
    tmp_path: Path, spawn_server: Callable[..., ServerProcess]
) -> None:
    # Its terminal closed (SIGHUP): the node died at once, calls in flight cut, its
    # embedded archive taken along, and not a word in its output.
    server = spawn_server(tmp_path / "node")
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)
    assert server.process.wait(25) == 0, str(server)
    assert "tierstore: stopping" in server.output() and "tierstore: stopped" in server.output()
    # Started under nohup (SIGHUP ignored, as the child inherits it): a hangup is
    # dropped as it is sent, and the node serves on.
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        ignoring = spawn_server(tmp_path / "nohup", own_prefix=True)  # another node
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert ignoring.process is not None
    ignoring.process.send_signal(signal.SIGHUP)
    assert ignoring.health() == health_pb2.HealthCheckResponse.SERVING
    assert ignoring.stop() == 0
    assert "second signal" not in ignoring.output()
    assert ignoring.output().count("tierstore: stopping") == 1


@pytest.mark.timeout(120)
def test_a_second_signal_exits_at_once_and_takes_the_embedded_archive_along(
    tmp_path: Path, spawn_server: Callable[..., ServerProcess]
) -> None:
    # It was ignored: the node waited out the whole grace of its calls in flight.
    server = spawn_server(tmp_path / "node", embedded=True)
    assert server.process is not None
    (archive,) = children(server.process.pid)
    server.connect().create_dataset("ds", encrypted=False)
    stub = shards_pb2_grpc.ShardServiceStub(server.channel())
    held = threading.Event()
    chunk = os.urandom(4 * MiB)

    def stalled_put() -> Iterator[shards_pb2.PutShardRequest]:
        yield shards_pb2.PutShardRequest(
            header=shards_pb2.PutShardHeader(
                dataset="ds", shard="s", kind=common_pb2.SHARD_KIND_RAW, frame_count=20
            )
        )
        for _ in range(17):  # past the spool's memory limit: a spool file shows it arrived
            yield shards_pb2.PutShardRequest(frame=chunk)
        held.wait(60)  # never sends the rest: the call stays in flight

    put = stub.PutShard.future(stalled_put(), metadata=server.metadata, timeout=90)
    poll(server.spool_fds, 30, "the put to reach the server")
    server.process.send_signal(signal.SIGTERM)
    poll(lambda: "tierstore: stopping" in server.output(), 10, "the graceful stop")
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(10) == 143
    assert time.monotonic() - signalled < 10  # not the 20 s grace
    assert "second signal: exiting now" in server.output()
    poll(lambda: not Path(f"/proc/{archive}").exists(), 10, "the embedded archive to go")
    held.set()
    with pytest.raises(grpc.RpcError):
        put.result(timeout=30)


@pytest.mark.timeout(120)
def test_sigterm_stops_a_start_that_waits_on_a_silent_archive(tmp_path: Path) -> None:
    # A start whose archive took connections and answered nothing went on with its
    # requests' time-outs and retries for minutes, the signal set aside until then.
    with silent_archive() as silent:
        starting = ServerProcess(
            tmp_path / "node",  # a new node: its start waits for its archive
            ("--s3-endpoint", endpoint(silent), "--bucket", "silent"),
        )
        process = starting.launch()
        try:
            silent.settimeout(60)
            held, _ = silent.accept()  # the start waits on the archive now (for minutes)
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0, str(starting)
            assert "tierstore: stopped before it was ready" in starting.output()
            held.close()
        finally:
            starting.kill()


@pytest.mark.timeout(120)
def test_a_node_whose_stdout_went_away_still_stops_gracefully(tmp_path: Path) -> None:
    # Its stdout a pipe whose reader went away (a `| tee` or log shipper restarted): the
    # "stopping" line raised BrokenPipeError before the server's graceful stop, and the
    # node exited 1 without a word, its calls in flight cut.
    port, health, metrics = free_ports(3)
    command = [
        tierstore_command(),
        *("serve", "--data-dir", str(tmp_path / "node"), "--listen", f"127.0.0.1:{port}"),
        *("--health-listen", f"127.0.0.1:{health}", "--metrics-listen", f"127.0.0.1:{metrics}"),
    ]
    errors = tmp_path / "serve.err"
    with errors.open("wb") as err:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=clean_env(),
            start_new_session=True,
        )
    assert process.stdout is not None
    try:
        printed = b""
        deadline = time.monotonic() + 90
        while READY_LINE.encode() not in printed:
            assert time.monotonic() < deadline, printed.decode(errors="replace")
            readable, _, _ = select.select([process.stdout], [], [], 1.0)
            if readable:
                chunk = os.read(process.stdout.fileno(), 65536)
                assert chunk, f"the node exited first:\n{errors.read_text()}"
                printed += chunk
        process.stdout.close()  # the reader goes away
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, errors.read_text()
        assert "stdout is gone" in errors.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
