"""The plaintext health port's own lifecycle: it leaves no thread behind; it and the
API's port never share a port with another server.

grpc.aio keeps a poller thread inside gRPC while an asyncio server exists, and gRPC
skips its fork handlers while any thread is inside it; a stopped port must let go.
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.server.conftest import ServerProcess, poll
from tests.server.servers import serving
from tierstore.errors import Unavailable
from tierstore.server.healthport import MAX_CONNECTIONS, HealthPort


def thread_names() -> set[str]:
    return {thread.name for thread in threading.enumerate()}


def test_a_stopped_health_port_leaves_no_thread_and_stops_twice() -> None:
    before = thread_names()
    port = HealthPort("127.0.0.1:0")
    port.start()
    port.set("", health_pb2.HealthCheckResponse.SERVING)
    with grpc.insecure_channel(f"127.0.0.1:{port.port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert thread_names() - before  # its loop thread, and grpc's poller
    port.stop(0.1)
    port.stop(0.1)  # idempotent
    gc.collect()
    deadline = time.monotonic() + 10
    while thread_names() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not thread_names() - before, thread_names() - before


def test_a_port_another_grpc_server_holds_is_refused_not_shared(tmp_path: Path) -> None:
    # gRPC sets SO_REUSEPORT unless told not to: two servers, each with it on, bind one
    # port and the kernel splits the connections between them (probes and calls went
    # to whichever, a stale node or another program).
    holder = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # SO_REUSEPORT on
    port = holder.add_insecure_port("127.0.0.1:0")
    holder.start()
    try:
        api = serving(tmp_path, insecure=True, listen=f"127.0.0.1:{port}")
        with pytest.raises(Unavailable, match=rf"cannot listen on 127.0.0.1:{port} \(the API"):
            api.__enter__()
        with pytest.raises(Unavailable, match=rf"cannot listen on 127.0.0.1:{port} \("):
            HealthPort(f"127.0.0.1:{port}")
    finally:
        holder.stop(0)


def test_connections_past_the_cap_are_closed_and_hold_no_descriptor(
    server: ServerProcess,
) -> None:
    # The port took every connection anyone opened, each a descriptor of the node's
    # for 12 s: 1,000 of them, opened again as they were closed, took a node with the
    # usual limit of 1,024 open files out of descriptors (probes timed out, and the
    # node's own files could not be opened).
    before = len(os.listdir(f"/proc/{server.pid}/fd"))
    extra = 50
    held = [
        socket.create_connection(("127.0.0.1", server.health_port), timeout=20)
        for _ in range(MAX_CONNECTIONS + extra)
    ]
    try:
        for connection in held:
            connection.setblocking(False)

        def closed(connection: socket.socket) -> bool:
            try:
                return connection.recv(1) == b""
            except BlockingIOError:
                return False

        poll(lambda: all(closed(late) for late in held[-extra:]), 20, "the late ones closed")
        # Closed for the cap, not for their age: the first ones are still open.
        assert not closed(held[0])
        assert len(os.listdir(f"/proc/{server.pid}/fd")) <= before + MAX_CONNECTIONS + 5
    finally:
        for connection in held:
            connection.close()
    # And a probe is answered once they are gone.
    poll(lambda: server.health() == health_pb2.HealthCheckResponse.SERVING, 30, "a probe")
