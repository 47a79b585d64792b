"""The plaintext health port's own lifecycle: it leaves no thread behind; it and the
API's port never share a port with another server.

grpc.aio keeps a poller thread inside gRPC while an asyncio server exists, and gRPC
skips its fork handlers while any thread is inside it; a stopped port must let go.
"""

from __future__ import annotations

import gc
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.server.servers import serving
from tierstore.errors import Unavailable
from tierstore.server.healthport import HealthPort


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
