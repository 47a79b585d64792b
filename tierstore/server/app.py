"""Assembling the gRPC server: services, security, health, reflection, graceful stop.

``create_server(settings, store, tokens) -> (server, port)``. The API listens
with TLS (mutual TLS when ``require_client_cert``), or in plaintext only when
``insecure`` is set and the address is loopback. The standard health service
(not ``Watch``: :mod:`tierstore.server.healthcheck`) answers on the API port,
with a token like every call there, and, for probes that speak neither TLS nor
tokens, on its own plaintext port that serves nothing else, from an asyncio
server that holds no thread per call (:mod:`tierstore.server.healthport`). On
the API port a unary request must arrive within ``request_arrival_s``, and each
message of a request stream within ``stream_message_s``, and the caller must take
each message of a response stream within ``stream_message_s`` too, so a caller that
stops sending or reading holds a worker no longer than that. ``grpc.so_reuseport`` is off
and every bound port is checked, so two servers never share a port silently.
"""

from __future__ import annotations

import datetime as dt
import logging
import resource
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tierstore.addresses import split_host_port
from tierstore.engine.allocator import IdleTrim
from tierstore.engine.store import Store
from tierstore.errors import InvalidArgument, Unavailable
from tierstore.loopback import is_loopback_address
from tierstore.server.admin import AdminServicer, NodeKeyAdmin
from tierstore.server.archivecalls import ArchiveCalls
from tierstore.server.auth import AuthInterceptor
from tierstore.server.callerworkers import CallerWorkers
from tierstore.server.datasets import DatasetServicer
from tierstore.server.decoding import DecodeInterceptor
from tierstore.server.healthcheck import CheckOnlyHealth
from tierstore.server.healthport import HealthPort
from tierstore.server.localreads import DEFAULT_GRANT_TTL_S, LocalReadService
from tierstore.server.metrics import ServerMetrics
from tierstore.server.placement import PlacementServicer
from tierstore.server.places import CALLER_SHARE, check_caller_share
from tierstore.server.requestchecks import REQUEST_CHECKS
from tierstore.server.shards import ShardServicer
from tierstore.server.streamslots import ShardStreams
from tierstore.server.tls import (
    RENEW_BEFORE_DAYS,
    SERVER_VALIDITY_DAYS,
    ServerCertificateRenewal,
    TlsMaterial,
)
from tierstore.server.tokens import TokenStore
from tierstore.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    datasets_pb2,
    datasets_pb2_grpc,
    placement_pb2,
    placement_pb2_grpc,
    shards_pb2,
    shards_pb2_grpc,
)
from tierstore.wire.limits import MAX_MESSAGE_BYTES

__all__ = ["ServerSettings", "TierstoreServer", "create_server"]

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    datasets_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
    shards_pb2.DESCRIPTOR.services_by_name["ShardService"].full_name,
    placement_pb2.DESCRIPTOR.services_by_name["PlacementService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


#: the most connections a node takes when ``max_connections`` is 0 (automatic)
_AUTO_CONNECTIONS = 4096
#: the most ``max_connections`` may be set to: a bound for typing mistakes (a million
#: connections would need as many descriptors)
_MAX_CONNECTIONS_CAP = 1 << 20


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How the service listens and protects itself."""

    listen: str = "127.0.0.1:7443"
    #: plaintext health-only port for probes; "" disables it.
    health_listen: str = "127.0.0.1:7444"
    insecure: bool = False
    require_client_cert: bool = False
    tls: TlsMaterial | None = field(default=None, repr=False)
    max_workers: int = 32
    max_concurrent_rpcs: int = 256
    #: how long a call may take to send its unary request before it is ended (seconds).
    request_arrival_s: float = 10.0
    #: how long a request stream (PutShard) may take to send its next message, and a
    #: caller to take each message of a response stream (GetShard), in seconds.
    stream_message_s: float = 60.0
    spool_dir: Path = Path("./spool")
    #: Prometheus ``/metrics`` over plain HTTP; "" disables it.
    metrics_listen: str = ""
    #: let readers on this host map the hot tier and read in place (docs/local-reads.md).
    local_reads: bool = True
    #: how long a local-read grant holds; a revoked token stops local reads within it.
    local_grant_ttl_s: float = DEFAULT_GRANT_TTL_S
    #: how long a connection with no call in flight is kept before the server closes it
    #: (seconds): idle connections, authenticated or not, held a descriptor each for
    #: ever. A client opens a new one at its next call.
    connection_idle_s: float = 300.0
    #: connections open at once, from any caller; past it a new one is closed at once
    #: (the caller sees UNAVAILABLE). 0: half the process's open-file limit, at most
    #: 4096 (:func:`connection_cap`), so that descriptors remain for the node's own files.
    max_connections: int = 0
    #: how long a new connection may take to finish its TLS handshake (seconds), after
    #: which the server closes it: gRPC's default of 120 s let anyone who opened
    #: connections and sent nothing hold every place under ``max_connections``.
    handshake_timeout_s: float = 10.0
    #: how long before its end the server certificate is reissued while the node serves
    #: (seconds); internal: only tests shorten it (``tierstore serve`` takes it from no
    #: flag or setting).
    renew_certificate_before_s: float = RENEW_BEFORE_DAYS * 86400.0
    #: of the workers, the shard streams and the calls waiting on the archive the node
    #: serves at once, the share one caller (principal) may hold, in (0, 1]; 1: no share.
    caller_share: float = CALLER_SHARE

    def __post_init__(self) -> None:
        check_listen_addresses(self.listen, self.health_listen, self.metrics_listen)
        if self.insecure and not is_loopback_address(self.listen):
            raise InvalidArgument("plaintext (--insecure) serving is allowed only on loopback")
        if self.insecure and self.require_client_cert:
            # Taken, it served plaintext and asked no caller for a certificate.
            raise InvalidArgument(
                "--require-client-cert needs TLS: it cannot be given with --insecure"
            )
        if not self.insecure and self.tls is None:
            raise InvalidArgument("TLS material is required unless insecure is set")
        if not (self.request_arrival_s > 0 and self.stream_message_s > 0):
            raise InvalidArgument("request_arrival_s and stream_message_s must be positive")
        for name in ("connection_idle_s", "handshake_timeout_s"):
            value = getattr(self, name)
            if not 0 < value < float("inf"):
                raise InvalidArgument(f"{name} must be a positive number, got {value}")
        if not 0 < self.renew_certificate_before_s < SERVER_VALIDITY_DAYS * 86400:
            # Else every certificate made would be due at once, and made again at once.
            raise InvalidArgument(
                "renew_certificate_before_s must be above 0 and below the certificate's "
                f"validity, not {self.renew_certificate_before_s}"
            )
        check_caller_share(self.caller_share)
        if isinstance(self.max_connections, bool) or not isinstance(self.max_connections, int):
            raise InvalidArgument(f"max_connections must be an int, got {self.max_connections!r}")
        if not 0 <= self.max_connections <= _MAX_CONNECTIONS_CAP:
            raise InvalidArgument(
                f"max_connections must be from 0 (automatic) to {_MAX_CONNECTIONS_CAP}, "
                f"got {self.max_connections}"
            )


def connection_cap(settings: ServerSettings) -> int:
    """How many connections the node keeps open at once: ``settings.max_connections``,
    or for 0 half the process's open-file limit (each connection holds a descriptor,
    and the hot tier, the spool and the archive need theirs), at least 16 and at most
    4096."""
    if settings.max_connections:
        return settings.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _AUTO_CONNECTIONS
    return max(16, min(_AUTO_CONNECTIONS, soft // 2))


def check_listen_addresses(listen: str, health_listen: str, metrics_listen: str) -> None:
    """Raise InvalidArgument unless each address is ``HOST:PORT`` with a port from 0 to
    65535 (an empty host, ``:PORT``, is every interface; the health and metrics ones
    may be "": off), and no two of them share a port. Cheap, so that a node refuses a
    mistyped address before it starts anything."""
    bound: list[tuple[str, str, int]] = []
    for address, option, optional in (
        (listen, "--listen", False),
        (health_listen, "--health-listen", True),
        (metrics_listen, "--metrics-listen", True),
    ):
        if optional and address == "":
            continue
        split = split_host_port(address)
        if split is None:
            raise InvalidArgument(
                f"{option} must be HOST:PORT with a port from 0 to 65535, not {address!r}"
            )
        host, port = split
        # Each port was free when probed alone, and the second bind failed "in use"
        # only once the node had started everything else.
        for other_option, other_host, other_port in bound:
            if port and port == other_port and _overlap(host, other_host):
                raise InvalidArgument(
                    f"{other_option} and {option} both name port {port}: give each its own"
                )
        bound.append((option, host, port))


def _overlap(host: str, other: str) -> bool:
    """Whether listening on ``host`` and on ``other`` (as ``split_host_port`` gives them)
    at one port clashes: the same host, or either one every interface."""
    return host == other or bool({host, other} & {"", "0.0.0.0", "::", "[::]"})


def check_listen_ports_free(listen: str, health_listen: str, metrics_listen: str) -> None:
    """Raise Unavailable, naming the option, for an address (checked already by
    :func:`check_listen_addresses`) that cannot be listened on now: for ``tierstore
    serve`` to say so before it starts its archive and opens its store, not after,
    behind a line of gRPC's own."""
    for address, option in (
        (listen, "--listen"),
        (health_listen, "--health-listen"),
        (metrics_listen, "--metrics-listen"),
    ):
        refused = _cannot_bind(address) if address else None
        if refused is not None:
            raise Unavailable(f"cannot listen on {address} ({option}): {refused}")


def _cannot_bind(address: str) -> str | None:
    """Why ``address`` cannot be listened on now (in use, not this host's, not allowed),
    found by binding a probe socket and closing it; None when it can, or when it is not
    something this check can tell (port 0, a name that does not resolve: the server
    says). A port taken between this and the server's bind is still refused there."""
    host, _, port = address.rpartition(":")
    if int(port) == 0:
        return None
    try:
        found = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError):
        return None
    family, kind, protocol, _, where = found[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
        try:
            probe.bind(where)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _options(settings: ServerSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_connection_idle_ms", int(settings.connection_idle_s * 1000)),
        ("grpc.max_allowed_incoming_connections", connection_cap(settings)),
        ("grpc.server_handshake_timeout_ms", max(1, int(settings.handshake_timeout_s * 1000))),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


def _renewing_credentials(settings: ServerSettings) -> grpc.ServerCredentials:
    """TLS (mutual TLS if ``require_client_cert``) with the node's certificate, reissued
    while it serves as it nears its end: gRPC asks before each new connection's
    handshake, and connections already open keep the certificate they were shown."""
    assert settings.tls is not None  # checked by ServerSettings
    renewal = ServerCertificateRenewal(
        settings.tls, dt.timedelta(seconds=settings.renew_certificate_before_s)
    )

    def configuration(tls: TlsMaterial) -> grpc.ServerCertificateConfiguration:
        # The CA verifies client certificates; it is never replaced.
        return grpc.ssl_server_certificate_configuration(
            [(tls.server_key_pem, tls.server_cert_pem)], root_certificates=tls.ca_pem
        )

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        renewed = renewal.renewed()
        return None if renewed is None else configuration(renewed)

    return grpc.dynamic_ssl_server_credentials(
        configuration(settings.tls),
        fetch,  # type: ignore[arg-type]  # None means no change (gRPC's docs; not its stubs)
        require_client_authentication=settings.require_client_cert,
    )


def _bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise Unavailable(f"cannot listen on {address} (the API, --listen): {exc}") from exc
    if port == 0:
        raise Unavailable(
            f"cannot listen on {address} (the API, --listen): address in use or not allowed"
        )
    return port


class TierstoreServer:
    """The running service: API server, health (two ports), and a graceful stop."""

    def __init__(
        self,
        settings: ServerSettings,
        store: Store,
        tokens: TokenStore,
        keys: NodeKeyAdmin | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or ServerMetrics()
        self.metrics.watch_store(store)
        self.health = CheckOnlyHealth()
        #: gives freed heap memory back to the OS once puts stop (tierstore.engine.allocator)
        self._idle_trim = IdleTrim()
        # Promotions, cache fills and uploads hold shards' frames in the heap too.
        store.promoter.work_in_flight = self._idle_trim.busy
        store.mover.after_heap_work = self._idle_trim.owe
        #: authenticates and audits every call
        self.auth = AuthInterceptor(
            tokens,
            self.metrics.observe_call,
            CallerWorkers(settings.max_workers, settings.caller_share),
        )
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="rpc"),
            # Authenticate first, then decode: see tierstore.server.decoding.
            interceptors=[
                self.auth,
                DecodeInterceptor(
                    settings.request_arrival_s, settings.stream_message_s, REQUEST_CHECKS
                ),
            ],
            options=_options(settings),
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        # One bound for every call that may wait on the archive, whatever its service.
        archive_calls = ArchiveCalls.for_workers(settings.max_workers, settings.caller_share)
        streams = ShardStreams.for_workers(settings.max_workers, settings.caller_share)
        self.metrics.watch_places(streams, archive_calls, self.auth.workers)
        registrations: list[tuple[Callable[[Any, grpc.Server], None], Any]] = [
            (
                datasets_pb2_grpc.add_DatasetServiceServicer_to_server,
                DatasetServicer(store, tokens, archive_calls, MAX_MESSAGE_BYTES),
            ),
            (
                shards_pb2_grpc.add_ShardServiceServicer_to_server,
                ShardServicer(
                    store,
                    settings.spool_dir,
                    served=self.metrics.observe_served,
                    local=LocalReadService(
                        store,
                        enabled=settings.local_reads,
                        grant_ttl_s=settings.local_grant_ttl_s,
                    ),
                    principal_now=tokens.principal_now,
                    idle_trim=self._idle_trim,
                    archive_calls=archive_calls,
                    message_bytes=MAX_MESSAGE_BYTES,
                    streams=streams,
                ),
            ),
            (
                placement_pb2_grpc.add_PlacementServiceServicer_to_server,
                PlacementServicer(store, MAX_MESSAGE_BYTES),
            ),
            (
                admin_pb2_grpc.add_AdminServiceServicer_to_server,
                AdminServicer(store, tokens, keys),
            ),
        ]
        for register, servicer in registrations:
            register(servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        credentials = None if settings.insecure else _renewing_credentials(settings)
        self.port = _bind(self._server, settings.listen, credentials)
        #: the plaintext health port, for probes (asyncio: see tierstore.server.healthport).
        self._health_port = HealthPort(settings.health_listen) if settings.health_listen else None
        self.health_port = 0 if self._health_port is None else self._health_port.port
        try:
            self.metrics_port = (
                self.metrics.serve(settings.metrics_listen) if settings.metrics_listen else 0
            )
        except BaseException:
            if self._health_port is not None:
                self._health_port.stop(0)
            raise
        self._stopped = threading.Event()

    def start(self) -> None:
        """Start serving and mark every service SERVING."""
        self._server.start()
        if self._health_port is not None:
            self._health_port.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
            if self._health_port is not None:
                self._health_port.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_s: float = 20.0) -> None:
        """Graceful stop: health turns NOT_SERVING at once, in-flight calls get ``grace_s``
        to finish, then the store closes. Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        if self._health_port is not None:
            self._health_port.enter_graceful_shutdown()
        self._server.stop(grace_s).wait()
        self._idle_trim.close()
        if self._health_port is not None:
            self._health_port.stop(1)
        self.metrics.stop_serving()
        self.store.close()

    def wait(self) -> None:
        """Block until the server stops."""
        self._server.wait_for_termination()


def create_server(
    settings: ServerSettings,
    store: Store,
    tokens: TokenStore,
    keys: NodeKeyAdmin | None = None,
    metrics: ServerMetrics | None = None,
) -> tuple[TierstoreServer, int]:
    """Build (not start) the server; returns it and the bound API port.

    ``keys``: where the master keys live, for RotateKeys (a new current key, data keys
    rewrapped) and RetireKey; without it a rotation only rewraps to the current key
    and no key can be retired.
    """
    server = TierstoreServer(settings, store, tokens, keys, metrics)
    return server, server.port
