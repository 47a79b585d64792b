"""The plaintext health port, served by an asyncio gRPC server on a thread of its own.

The port answers anyone: the kubelet's probes speak neither TLS nor tokens. The API's
synchronous server runs each call on a worker of a fixed pool and reads a unary
request on it, so on such a port a few callers that never send their request would
hold every worker and the probes would time out. An asyncio server holds no thread
per call: a stalled call costs a little memory until its connection ends (every
connection ends within ``_MAX_CONNECTION_AGE_MS`` plus a grace, with at most
``_MAX_STREAMS`` calls at once on each), and a probe is answered at once whatever
other callers' calls do. It keeps :data:`MAX_CONNECTIONS` connections open at once,
closing one past them at once and one that has not sent its HTTP/2 preface within
``_HANDSHAKE_TIMEOUT_MS``: it took every connection anyone opened, each a descriptor
of the node's for 12 s, and a thousand of them left a node with the usual 1,024-file
limit none for its probes or its own files. (That many held open keep probes out
while they last.)

It serves ``Check`` and ``List`` of the standard ``grpc.health.v1`` service from
statuses the server sets (:meth:`HealthPort.set`), decodes requests itself (bytes
that do not parse get INVALID_ARGUMENT with the ``tierstore-error`` trailer), and
answers ``Watch`` UNIMPLEMENTED, as the API port does. Nothing else is served.

grpc.aio keeps a poller thread inside gRPC while an asyncio server exists, and gRPC
skips its fork handlers while another thread is inside it: a process must not fork
while it serves this port (``tierstore serve`` starts its helpers first). Stopping
the port drops the server, which ends that thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2

from tierstore.errors import Unavailable
from tierstore.server.decoding import refuse_undecodable
from tierstore.server.healthcheck import UNKNOWN_SERVICE, WATCH_REFUSED, list_reply

__all__ = ["MAX_CONNECTIONS", "HealthPort"]

_T = TypeVar("_T")
_SERVICE = "grpc.health.v1.Health"
#: what a bind failure names: the port and the flag that chose it
_ROLE = "the plaintext health port, --health-listen"
#: calls at once on one connection, and how long a connection lives (then a grace).
_MAX_STREAMS = 16
_MAX_CONNECTION_AGE_MS = 10_000
_MAX_CONNECTION_AGE_GRACE_MS = 2_000
#: connections open at once (a new one past it is closed at once), and how long one
#: may take to send its HTTP/2 preface.
MAX_CONNECTIONS = 64
_HANDSHAKE_TIMEOUT_MS = 5_000
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthPort:
    """A bound (not yet started) health port at ``address``; raises Unavailable when
    it cannot listen there. Thread-safe."""

    def __init__(self, address: str) -> None:
        self._lock = threading.Lock()
        self._statuses: dict[str, int] = {}
        self._shutting_down = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tierstore-health-port", daemon=True
        )
        self._thread.start()
        self._server: grpc.aio.Server | None = None
        try:
            self._server, self.port = self._run(self._bind(address))
        except BaseException:
            self._end_loop()
            raise

    def start(self) -> None:
        assert self._server is not None, "start after stop"
        self._run(self._server.start())

    def set(self, service: str, status: int) -> None:
        """Report ``status`` for ``service`` ("" for the server as a whole); ignored
        once :meth:`enter_graceful_shutdown` was called."""
        with self._lock:
            if not self._shutting_down:
                self._statuses[service] = status

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good."""
        with self._lock:
            self._statuses = dict.fromkeys(self._statuses, _NOT_SERVING)
            self._shutting_down = True

    def stop(self, grace_s: float) -> None:
        """Stop serving (calls under way get ``grace_s``) and end the port's thread.
        Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        try:
            self._run(server.stop(grace_s), timeout=grace_s + 5)
        finally:
            self._end_loop()

    def _run(self, coroutine: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _end_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    async def _bind(self, address: str) -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_concurrent_streams", _MAX_STREAMS),
                ("grpc.max_connection_age_ms", _MAX_CONNECTION_AGE_MS),
                ("grpc.max_connection_age_grace_ms", _MAX_CONNECTION_AGE_GRACE_MS),
                ("grpc.max_allowed_incoming_connections", MAX_CONNECTIONS),
                ("grpc.server_handshake_timeout_ms", _HANDSHAKE_TIMEOUT_MS),
                ("grpc.max_receive_message_length", 64 * 1024),
            ]
        )
        server.add_generic_rpc_handlers((self._handlers(),))
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise Unavailable(f"cannot listen on {address} ({_ROLE}): {exc}") from exc
        if port == 0:
            raise Unavailable(
                f"cannot listen on {address} ({_ROLE}): address in use or not allowed"
            )
        return server, port

    def _handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            _SERVICE,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self._check,
                    response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
                ),
                "List": grpc.unary_unary_rpc_method_handler(
                    self._list,
                    response_serializer=health_pb2.HealthListResponse.SerializeToString,
                ),
                "Watch": grpc.unary_stream_rpc_method_handler(self._watch),
            },
        )

    async def _check(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        request = await _decoded(health_pb2.HealthCheckRequest, raw, context)
        with self._lock:
            status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, UNKNOWN_SERVICE)
        return health_pb2.HealthCheckResponse(status=status)

    async def _list(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        await _decoded(health_pb2.HealthListRequest, raw, context)
        with self._lock:
            return list_reply(self._statuses)

    async def _watch(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, WATCH_REFUSED)


async def _decoded(kind: Any, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    try:
        return kind.FromString(raw)
    except Exception as exc:  # DecodeError, and anything else a parser throws at garbage
        error = refuse_undecodable(context, exc)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
