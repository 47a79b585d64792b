"""The standard gRPC health service, serving ``Check`` (and ``List``), not ``Watch``.

This servicer answers health on the API port. ``Watch`` keeps its call open for as
long as the caller likes, and grpcio's synchronous server runs each open call on a
worker thread of a fixed pool (the servicer's non-blocking mode does not survive the
server's interceptors), so a few watches would hold every worker. Probes
(Kubernetes' gRPC probe among them) call ``Check``; ``Watch`` is answered
UNIMPLEMENTED at once, so callers poll ``Check`` instead. The plaintext health
port does the same (:mod:`tierstore.server.healthport`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

__all__ = ["UNKNOWN_SERVICE", "WATCH_REFUSED", "CheckOnlyHealth", "list_reply"]

#: What a ``Watch`` is answered (UNIMPLEMENTED), on either health port.
WATCH_REFUSED = "Watch is not served: poll Check instead"
#: What a ``Check`` of a service the node does not serve is answered (NOT_FOUND).
UNKNOWN_SERVICE = "unknown service"


def list_reply(statuses: Mapping[str, int]) -> health_pb2.HealthListResponse:
    """The ``List`` answer for these statuses by service name, on either port."""
    reply = health_pb2.HealthListResponse()
    for service, status in statuses.items():
        reply.statuses[service].status = status
    return reply


class CheckOnlyHealth(health.HealthServicer):  # type: ignore[misc]
    """``HealthServicer`` that serves ``List`` too (the library's is a stub answering
    UNIMPLEMENTED) and whose ``Watch`` ends at once with UNIMPLEMENTED."""

    def __init__(self) -> None:
        super().__init__(experimental_non_blocking=False)

    def Check(self, request: Any, context: grpc.ServicerContext) -> health_pb2.HealthCheckResponse:
        # The library's answers NOT_FOUND with no message; the health port says why.
        with self._lock:
            status = self._server_status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, UNKNOWN_SERVICE)
        return health_pb2.HealthCheckResponse(status=status)

    def List(self, request: Any, context: grpc.ServicerContext) -> health_pb2.HealthListResponse:
        # The statuses live in the library servicer's map, which set() and
        # enter_graceful_shutdown() update under its lock.
        with self._lock:
            return list_reply(self._server_status)

    def Watch(
        self,
        request: Any,
        context: grpc.ServicerContext,
        send_response_callback: Callable[[Any], None] | None = None,
    ) -> Iterator[Any]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, WATCH_REFUSED)
        yield  # a generator, as the streaming method it replaces (never reached)
