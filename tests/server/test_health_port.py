"""The plaintext health port's own lifecycle: it leaves no thread behind.

grpc.aio keeps a poller thread inside gRPC while an asyncio server exists, and gRPC
skips its fork handlers while any thread is inside it; a stopped port must let go.
"""

from __future__ import annotations

import gc
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
