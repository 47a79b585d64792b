"""In-process tierstore servers for the security and fuzz tests, and generic RPC calls.

:func:`serving` builds a real :class:`~tierstore.server.app.TierstoreServer` (TLS from a
local CA, or plaintext on loopback) over a :class:`~tierstore.engine.store.Store` on a
MemoryTier archive, with a token store whose clock a test can move. :data:`RPCS` lists
every tierstore RPC from the generated descriptors, and :func:`invoke` calls any of them
with any request (a message or raw bytes), so tests need no per-RPC stub code.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message

from tests.engine.stores import KEYRING, engine_settings
from tierstore.engine.store import Store
from tierstore.frames import CHECKSUM_BYTES
from tierstore.server.app import ServerSettings, TierstoreServer, create_server
from tierstore.server.tls import TlsMaterial, ensure_tls_material
from tierstore.server.tokens import TokenStore
from tierstore.tiers.base import Tier
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, Grant, Role
from tierstore.v1 import admin_pb2, datasets_pb2, placement_pb2, shards_pb2
from tierstore.wire.status import ERROR_HEADER

__all__ = [
    "RPCS",
    "Clock",
    "Rpc",
    "RunningServer",
    "error_name",
    "grants",
    "invoke",
    "serving",
]

#: Every call gets a deadline: a hung server fails the test instead of hanging it.
CALL_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class Rpc:
    """One tierstore RPC, from the generated service descriptors."""

    method: str
    request: type[Message]
    response: type[Message]
    client_streaming: bool
    server_streaming: bool


def _rpcs() -> dict[str, Rpc]:
    found: dict[str, Rpc] = {}
    for module in (datasets_pb2, shards_pb2, placement_pb2, admin_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                name = f"/{service.full_name}/{method.name}"
                found[name] = Rpc(
                    method=name,
                    request=message_factory.GetMessageClass(method.input_type),
                    response=message_factory.GetMessageClass(method.output_type),
                    client_streaming=method.client_streaming,
                    server_streaming=method.server_streaming,
                )
    return found


#: Every tierstore RPC by full method name (``/tierstore.v1.ShardService/GetShard``).
RPCS: dict[str, Rpc] = _rpcs()


class Clock:
    """A wall clock a test can move (for the token store's expiry checks)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def grants(*pairs: tuple[str, Role]) -> list[Grant]:
    return [Grant(dataset, role) for dataset, role in pairs]


@dataclass
class RunningServer:
    """A started server and what a test needs to reach it."""

    server: TierstoreServer
    port: int
    store: Store
    tokens: TokenStore
    clock: Clock
    tls: TlsMaterial | None
    data_dir: Path
    _channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def health_address(self) -> str:
        return f"127.0.0.1:{self.server.health_port}"

    def token(self, principal: str, *pairs: tuple[str, Role], ttl_s: float = 0) -> str:
        """Issue a token for ``principal`` with the given (dataset, role) grants."""
        return self.tokens.create(principal, grants(*pairs), ttl_s)[1]

    def channel(
        self,
        *,
        ca: bytes | None = None,
        client_cert: tuple[bytes, bytes] | None = None,
        plaintext: bool | None = None,
        address: str | None = None,
        own_connection: bool = False,
    ) -> grpc.Channel:
        """A channel to the API port: TLS trusting ``ca`` (default: this server's CA),
        presenting ``client_cert`` (``(cert_pem, key_pem)``) if given; plaintext when the
        server is insecure or ``plaintext`` is set; over a connection of its own if
        ``own_connection`` (grpc shares one between alike channels otherwise), whose
        flow-control window keeps its first size: grpc grows a window it sees filled
        fast (BDP probing), up to megabytes, so a caller that stops reading would
        otherwise not hold the server back until then. Closed when the server stops."""
        target = address or self.address
        options = (
            [("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0)]
            if own_connection
            else []
        )
        if plaintext or (plaintext is None and self.tls is None):
            channel = grpc.insecure_channel(target, options=options)
        else:
            assert self.tls is not None or ca is not None
            root = ca if ca is not None else self.tls.ca_pem  # type: ignore[union-attr]
            cert, key = client_cert if client_cert is not None else (None, None)
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root, private_key=key, certificate_chain=cert
            )
            channel = grpc.secure_channel(
                target,
                credentials,
                options=[("grpc.ssl_target_name_override", "localhost"), *options],
            )
        self._channels.append(channel)
        return channel

    def close_channels(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()


@contextlib.contextmanager
def serving(
    root: Path,
    *,
    insecure: bool = False,
    require_client_cert: bool = False,
    health: bool = True,
    metrics: bool = False,
    datasets: dict[str, DatasetSettings] | None = None,
    max_workers: int = 16,
    local_reads: bool = True,
    local_grant_ttl_s: float = 60.0,
    request_arrival_s: float = 10.0,
    stream_message_s: float = 60.0,
    connection_idle_s: float = 300.0,
    max_connections: int = 0,
    handshake_timeout_s: float = 10.0,
    archive: Tier | None = None,
    listen: str = "127.0.0.1:0",
    **engine: Any,
) -> Iterator[RunningServer]:
    """Start a server under ``root`` (TLS from a fresh local CA unless ``insecure``).

    The store has 4 KiB frames, a master key, ``archive`` (a MemoryTier if none) and ``datasets``;
    ``engine`` overrides other engine settings; ``local_reads`` and ``local_grant_ttl_s``
    are the server's local-read settings, ``request_arrival_s`` and ``stream_message_s`` its
    deadlines for a unary request and for each message of a request stream
    (``connection_idle_s``: how long it keeps an idle connection, ``max_connections``:
    how many it keeps open at once, ``handshake_timeout_s``: how long a new one may
    take to finish its TLS handshake); ``metrics``
    serves ``/metrics`` on a port of its own; ``listen`` is the API's address (reach
    another than 127.0.0.1 with ``channel(address=...)``). Everything is stopped and
    closed on exit.
    """
    data_dir = root / "node"
    archive = MemoryTier() if archive is None else archive
    store = Store(engine_settings(data_dir, **engine), archive, KEYRING)
    try:
        for name, settings in (datasets or {}).items():
            store.create_dataset(name, settings)
        clock = Clock()
        tokens = TokenStore(data_dir / "tokens.json", clock=clock)
        tls = None if insecure else ensure_tls_material(data_dir)
        server, port = create_server(
            ServerSettings(
                listen=listen,
                health_listen="127.0.0.1:0" if health else "",
                metrics_listen="127.0.0.1:0" if metrics else "",
                insecure=insecure,
                require_client_cert=require_client_cert,
                tls=tls,
                max_workers=max_workers,
                spool_dir=data_dir / "spool",
                local_reads=local_reads,
                local_grant_ttl_s=local_grant_ttl_s,
                request_arrival_s=request_arrival_s,
                stream_message_s=stream_message_s,
                connection_idle_s=connection_idle_s,
                max_connections=max_connections,
                handshake_timeout_s=handshake_timeout_s,
            ),
            store,
            tokens,
        )
    except BaseException:
        store.close()
        raise
    server.start()
    running = RunningServer(server, port, store, tokens, clock, tls, data_dir)
    try:
        yield running
    finally:
        running.close_channels()
        server.stop(grace_s=2.0)  # also closes the store


def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token is not None else ()


def invoke(
    channel: grpc.Channel,
    method: str,
    request: Any,
    token: str | None = None,
    *,
    raw: bool = False,
    timeout: float = CALL_TIMEOUT_S,
    received: list[Any] | None = None,
    call_metadata: tuple[tuple[str, str], ...] | None = None,
) -> list[Any]:
    """Call ``method`` and return its responses (one for a unary RPC).

    ``request`` is a message, or for client-streaming RPCs an iterable of messages. With
    ``raw`` the requests are bytes sent as they are and the responses come back as bytes.
    Responses of a server stream are appended to ``received`` as they arrive, so a test
    sees what came before a failure. Raises :class:`grpc.RpcError` on failure.
    """
    rpc = RPCS[method]
    serializer = None if raw else rpc.request.SerializeToString
    deserializer = None if raw else rpc.response.FromString
    md = call_metadata if call_metadata is not None else metadata(token)
    got = received if received is not None else []
    if rpc.client_streaming and rpc.server_streaming:  # pragma: no cover - none so far
        raise AssertionError("bidirectional RPCs are not handled here")
    if rpc.client_streaming:
        call = channel.stream_unary(
            method, request_serializer=serializer, response_deserializer=deserializer
        )
        got.append(call(iter(request), timeout=timeout, metadata=md))
    elif rpc.server_streaming:
        stream = channel.unary_stream(
            method, request_serializer=serializer, response_deserializer=deserializer
        )
        for item in stream(request, timeout=timeout, metadata=md):
            got.append(item)
    else:
        call = channel.unary_unary(
            method, request_serializer=serializer, response_deserializer=deserializer
        )
        got.append(call(request, timeout=timeout, metadata=md))
    return got


def payload_of(responses: list[shards_pb2.GetShardResponse]) -> bytes:
    """The plaintext shard a GetShard stream carried (each stored frame ends in its
    checksum)."""
    return b"".join(m.frame.data[:-CHECKSUM_BYTES] for m in responses if m.HasField("frame"))


def varint(value: int) -> bytes:
    """``value`` (>= 0) as a protobuf varint, for requests built byte by byte."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def error_name(error: grpc.RpcError) -> str | None:
    """The ``tierstore-error`` trailer of a failed call (the error class the server raised)."""
    trailers: Iterable[tuple[str, Any]] = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    for key, value in trailers:
        if key == ERROR_HEADER:
            return value if isinstance(value, str) else bytes(value).decode()
    return None


def once_the_server_sees_the_caller_gone(monkeypatch: Any, *modules: Any) -> None:
    """Make the handlers of ``modules`` check that their caller gave up
    (``refuse_if_caller_gone``) only once the server has seen it too: the caller's
    deadline passes a moment before the server's (which counts from the call's arrival),
    and a check in between would find the caller still there."""
    from tierstore.server import rpc

    def checked_once_gone(context: grpc.ServicerContext, change: str) -> None:
        deadline = time.monotonic() + 30
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.01)
        rpc.refuse_if_caller_gone(context, change)

    for module in modules:
        monkeypatch.setattr(module, "refuse_if_caller_gone", checked_once_gone)
