"""Tests of tierstore.testing.throttle against a real HTTP server on loopback (and SeaweedFS).

Timing assertions are one-sided where load on a shared machine could only make them pass more
easily: a delay or a rate cap is checked as a floor on elapsed time. The one ceiling (the
throttled transfer is not absurdly slower than its cap) has a wide margin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.client
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import raw_s3_client
from tierstore.errors import InvalidArgument
from tierstore.testing.throttle import ThrottleSettings, ThrottlingProxy
from tierstore.tiers.s3 import S3Settings

MiB = 1024 * 1024
#: The module promises at most this burst plus rate * t bytes in any interval t.
_BURST_FLOOR = 256 * 1024
_JOIN_TIMEOUT_S = 60.0


@functools.lru_cache(maxsize=8)
def payload(nbytes: int) -> bytes:
    """The bytes ``GET /bytes/<n>`` answers: random-looking, the same on every call."""
    return random.Random(nbytes).randbytes(nbytes)


def burst_bytes(rate: float) -> float:
    return max(_BURST_FLOOR, rate * 0.01)


class _Upstream(ThreadingHTTPServer):
    daemon_threads = True
    #: The client port of every request served, to see connections reused through the proxy.
    peer_ports: list[int]


class _Handler(BaseHTTPRequestHandler):
    """``GET /bytes/<n>``: ``payload(n)``; ``PUT`` or ``POST`` anything: the body echoed."""

    protocol_version = "HTTP/1.1"  # keep-alive, as boto3 uses it
    server: _Upstream

    def do_GET(self) -> None:
        self._answer(payload(int(self.path.rsplit("/", 1)[1])))

    def do_PUT(self) -> None:
        self._answer(self.rfile.read(int(self.headers["Content-Length"])))

    do_POST = do_PUT

    def _answer(self, body: bytes) -> None:
        self.server.peer_ports.append(self.client_address[1])
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[_Upstream]:
    server = _Upstream(("127.0.0.1", 0), _Handler)
    server.peer_ports = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(_JOIN_TIMEOUT_S)


def proxy_to(upstream: _Upstream, settings: ThrottleSettings) -> ThrottlingProxy:
    return ThrottlingProxy("127.0.0.1", upstream.server_address[1], settings)


def fetch(port: int, path: str, body: bytes | None = None) -> bytes:
    """One request on a new connection; the response body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=_JOIN_TIMEOUT_S)
    try:
        conn.request("GET" if body is None else "PUT", path, body=body)
        response = conn.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        conn.close()


def test_bytes_pass_through_unchanged_both_ways(upstream: _Upstream) -> None:
    upload = random.Random(7).randbytes(3 * MiB + 17)
    with proxy_to(
        upstream, ThrottleSettings(ttfb_s=0.001, per_connection_bytes_per_s=200e6)
    ) as proxy:
        assert proxy.endpoint_url == f"http://127.0.0.1:{proxy.port}"
        assert fetch(proxy.port, f"/bytes/{5 * MiB + 3}") == payload(5 * MiB + 3)
        assert fetch(proxy.port, "/echo", body=upload) == upload
        assert fetch(proxy.port, "/bytes/0") == b""


def test_every_request_on_a_keepalive_connection_waits_for_its_first_byte(
    upstream: _Upstream,
) -> None:
    ttfb = 0.05
    with proxy_to(
        upstream, ThrottleSettings(ttfb_s=ttfb, per_connection_bytes_per_s=None)
    ) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=_JOIN_TIMEOUT_S)
        first_served = len(upstream.peer_ports)
        try:
            for size in (10, 100_000, 10):
                started = time.monotonic()
                conn.request("GET", f"/bytes/{size}")
                response = conn.getresponse()  # returns once the status line has arrived
                waited = time.monotonic() - started
                assert response.read() == payload(size)
                assert waited >= ttfb
        finally:
            conn.close()
        # One upstream connection carried all three: the proxy kept the keep-alive intact.
        assert len(set(upstream.peer_ports[first_served:])) == 1


def test_one_connection_is_held_to_its_rate(upstream: _Upstream) -> None:
    rate, size = 16e6, 8 * MiB
    with proxy_to(upstream, ThrottleSettings(ttfb_s=0, per_connection_bytes_per_s=rate)) as proxy:
        started = time.monotonic()
        assert fetch(proxy.port, f"/bytes/{size}") == payload(size)
        elapsed = time.monotonic() - started
    # The response also carries headers, so the true floor is a little higher still.
    assert elapsed >= (size - burst_bytes(rate)) / rate
    assert size / elapsed >= 0.25 * rate, "throttled far below the configured rate"


def test_total_rate_is_shared_by_all_connections(upstream: _Upstream) -> None:
    rate, size, clients = 16e6, 4 * MiB, 3
    errors: list[BaseException] = []

    def client(port: int) -> None:
        try:
            assert fetch(port, f"/bytes/{size}") == payload(size)
        except BaseException as exc:
            errors.append(exc)

    settings = ThrottleSettings(ttfb_s=0, per_connection_bytes_per_s=None, total_bytes_per_s=rate)
    with proxy_to(upstream, settings) as proxy:
        threads = [threading.Thread(target=client, args=(proxy.port,)) for _ in range(clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        deadline = started + _JOIN_TIMEOUT_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        elapsed = time.monotonic() - started
        assert not any(thread.is_alive() for thread in threads)
    assert not errors
    assert elapsed >= (clients * size - burst_bytes(rate)) / rate


def test_a_dead_upstream_closes_the_client_connection(upstream: _Upstream) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on any more
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    with (
        ThrottlingProxy("127.0.0.1", dead_port, ThrottleSettings()) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port), timeout=_JOIN_TIMEOUT_S) as conn,
    ):
        conn.sendall(b"GET /bytes/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):  # closed either way is right
            assert conn.recv(1) == b""


def test_close_is_idempotent_and_stops_listening(upstream: _Upstream) -> None:
    proxy = proxy_to(upstream, ThrottleSettings())
    port = proxy.port
    assert fetch(port, "/bytes/5") == payload(5)
    proxy.close()
    proxy.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=_JOIN_TIMEOUT_S).close()
    assert "closed" in repr(proxy)


@pytest.mark.parametrize("host", ["10.0.0.1", "0.0.0.0", "example.com", ""])
def test_refuses_an_upstream_off_loopback(host: str) -> None:
    with pytest.raises(InvalidArgument, match="loopback"):
        ThrottlingProxy(host, 9000)


def test_refuses_a_bad_upstream_port() -> None:
    with pytest.raises(InvalidArgument, match="port"):
        ThrottlingProxy("127.0.0.1", 0)


@pytest.mark.parametrize(
    "bad",
    [
        {"ttfb_s": -0.001},
        {"ttfb_s": float("nan")},
        {"per_connection_bytes_per_s": 0},
        {"per_connection_bytes_per_s": float("inf")},
        {"total_bytes_per_s": -1.0},
    ],
)
def test_settings_are_validated(bad: dict[str, float]) -> None:
    with pytest.raises(InvalidArgument):
        ThrottleSettings(**bad)


def test_boto3_through_the_proxy_to_seaweedfs(s3_settings: S3Settings) -> None:
    endpoint = s3_settings.endpoint_url.removeprefix("http://")
    host, port = endpoint.rsplit(":", 1)
    ttfb, body = 0.03, random.Random(11).randbytes(3 * MiB)
    settings = ThrottleSettings(ttfb_s=ttfb, per_connection_bytes_per_s=50e6)
    with ThrottlingProxy(host, int(port), settings) as proxy:
        client = raw_s3_client(dataclasses.replace(s3_settings, endpoint_url=proxy.endpoint_url))
        key = f"{s3_settings.prefix}throttle-{uuid.uuid4().hex}"
        client.put_object(Bucket=s3_settings.bucket, Key=key, Body=body)
        started = time.monotonic()
        head = client.head_object(Bucket=s3_settings.bucket, Key=key)
        assert time.monotonic() - started >= ttfb
        assert head["ContentLength"] == len(body)
        got = client.get_object(Bucket=s3_settings.bucket, Key=key, Range="bytes=5-1048580")
        assert got["Body"].read() == body[5:1048581]
        assert client.get_object(Bucket=s3_settings.bucket, Key=key)["Body"].read() == body
        client.close()
