"""A loopback TCP proxy that makes a local archive cost what a real object store costs.

SeaweedFS on loopback answers in well under a millisecond and streams at memory speed, so a
benchmark or test against it says nothing about cold reads from a real S3 store. Put
:class:`ThrottlingProxy` between the client and the archive and point the client at
:attr:`ThrottlingProxy.endpoint_url`; every connection then pays:

* **time to first byte** (:attr:`ThrottleSettings.ttfb_s`): the first response byte of each
  HTTP request reaches the client no earlier than ``ttfb_s`` after the request's last byte
  went upstream. The upstream's own processing time counts towards it (it stands in for part of
  the real store's), so the delay is a floor, not an addition. The proxy does not parse HTTP:
  a request is a burst of client bytes, and its response starts with the first upstream bytes
  after that burst. That is exact for HTTP/1.1 keep-alive without pipelining (what boto3 does);
  an ``Expect: 100-continue`` upload pays the delay twice (once for the ``100 Continue``, once
  for the final response), as it pays a round trip twice against a real store.
* **bandwidth** on the response direction (store to client): a token bucket per connection
  (:attr:`ThrottleSettings.per_connection_bytes_per_s`) and, optionally, one shared by all
  connections (:attr:`ThrottleSettings.total_bytes_per_s`, "archive bandwidth limited to b").
  A bucket holds at most ``max(256 KiB, 10 ms of its rate)``, so over any interval ``t`` a
  bucket passes at most that burst plus ``rate * t`` bytes. Uploads are not throttled.

Bytes pass through unchanged in both directions, half-closes are forwarded, and a client whose
upstream connection cannot be opened is disconnected at once. The proxy listens on
``127.0.0.1`` only and forwards only to a loopback upstream (DESIGN.md, section 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from tierstore.errors import InvalidArgument
from tierstore.loopback import is_loopback_host

__all__ = ["ProxyProcess", "ThrottleSettings", "ThrottlingProxy", "bucket_burst_bytes"]

_LISTEN_HOST: Final = "127.0.0.1"
_CHUNK: Final = 64 * 1024
# A bucket's burst must exceed one chunk, or a chunk could never be paid for at once.
_MIN_BURST_BYTES: Final = 4 * _CHUNK
_BURST_S: Final = 0.01
_LOOP_CALL_TIMEOUT_S: Final = 10.0
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ThrottleSettings:
    """What each request and connection through the proxy costs. Validated on construction.

    ``None`` for a rate means unlimited. Raises :class:`InvalidArgument` for a negative or
    non-finite ``ttfb_s`` or a rate that is not a positive finite number.
    """

    #: Minimum time from a request's last byte to its response's first byte, in seconds.
    ttfb_s: float = 0.02
    #: Response bytes per second on each connection.
    per_connection_bytes_per_s: float | None = 100e6
    #: Response bytes per second over all connections together.
    total_bytes_per_s: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ttfb_s) and self.ttfb_s >= 0):
            raise InvalidArgument(f"ttfb_s must be a finite number >= 0, got {self.ttfb_s!r}")
        for name in ("per_connection_bytes_per_s", "total_bytes_per_s"):
            rate = getattr(self, name)
            if rate is not None and not (math.isfinite(rate) and rate > 0):
                raise InvalidArgument(f"{name} must be a positive finite number or None")


def bucket_burst_bytes(bytes_per_s: float) -> int:
    """How many bytes one of the proxy's token buckets of ``bytes_per_s`` lets through
    at once after idling (what a model of the link should count as its burst)."""
    return int(max(float(_MIN_BURST_BYTES), bytes_per_s * _BURST_S))


class _TokenBucket:
    """A bytes-per-second limit that takers pay before they send.

    A taker withdraws what it is about to send at once, even into debt, and then sleeps until
    the debt would be repaid. Nothing awaits between the refill and the withdrawal, so takers
    sharing one bucket on one event loop queue up in arrival order and together get the rate.
    Not thread-safe: used only on the proxy's event loop.
    """

    def __init__(self, bytes_per_s: float) -> None:
        self._rate = bytes_per_s
        self._capacity = float(bucket_burst_bytes(bytes_per_s))
        self._tokens = self._capacity
        self._stamp = time.monotonic()

    async def take(self, nbytes: int) -> None:
        now = time.monotonic()
        # The bucket refills with real time, also while its taker waits on another bucket,
        # so waiting on two buckets in turn costs the slower one's time, not the sum.
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        self._tokens -= nbytes
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self._rate)


class _Exchange:
    """Per-connection state shared by its two pumps. Used only on the proxy's event loop."""

    def __init__(self, buckets: list[_TokenBucket]) -> None:
        self.buckets = buckets
        #: When the current request's last byte went upstream; None once its response began.
        self.request_sent_at: float | None = None


class ThrottlingProxy:
    """A throttling TCP proxy from ``127.0.0.1:<port>`` to a loopback upstream.

    Starts listening (on an ephemeral port) and serving in a background thread on construction;
    use it as a context manager or call :meth:`close`. See the module docstring for what it
    models.

    Raises :class:`InvalidArgument` when ``upstream_host`` is not a loopback host or
    ``upstream_port`` is outside 1-65535. The upstream is not contacted until a client connects.

    Thread-safe: :attr:`port`, :attr:`endpoint_url` and :meth:`close` may be used from any
    thread except the proxy's own.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        settings: ThrottleSettings | None = None,
    ) -> None:
        if not is_loopback_host(upstream_host):
            raise InvalidArgument(f"upstream must be a loopback host, got {upstream_host!r}")
        if not 1 <= upstream_port <= 65535:
            raise InvalidArgument(f"upstream port must be 1-65535, got {upstream_port}")
        self._upstream = (upstream_host.strip("[]"), upstream_port)
        self._settings = settings if settings is not None else ThrottleSettings()
        self._total_bucket = (
            _TokenBucket(self._settings.total_bytes_per_s)
            if self._settings.total_bytes_per_s is not None
            else None
        )
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._close_lock = threading.Lock()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"throttle-proxy->{upstream_port}", daemon=True
        )
        self._thread.start()
        try:
            self._port = self._call(self._start())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def settings(self) -> ThrottleSettings:
        """The costs this proxy imposes."""
        return self._settings

    @property
    def port(self) -> int:
        """The port the proxy listens on, on ``127.0.0.1``."""
        return self._port

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``: give this to a client in place of the upstream's."""
        return f"http://{_LISTEN_HOST}:{self._port}"

    def close(self) -> None:
        """Stop listening, drop every open connection and stop the thread. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._call(self._shutdown())
        finally:
            self._stop_loop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"port={self._port}"
        return f"ThrottlingProxy({state} -> {self._upstream[0]}:{self._upstream[1]})"

    # Thread side.

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_LOOP_CALL_TIMEOUT_S)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    # Loop side: everything below runs on the proxy's event loop only.

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, _LISTEN_HOST, 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._relay(client_r, client_w)
        except asyncio.CancelledError:
            # Only _shutdown cancels a handler. Python 3.11's stream callback calls
            # task.exception() on the finished handler, which raises (and logs an error)
            # for a cancelled task: end normally instead.
            pass
        finally:
            client_w.close()
            self._handlers.discard(task)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self._upstream)
        except OSError:
            return  # the client sees its connection closed, as with a dead store
        buckets = [] if self._total_bucket is None else [self._total_bucket]
        if self._settings.per_connection_bytes_per_s is not None:
            buckets.insert(0, _TokenBucket(self._settings.per_connection_bytes_per_s))
        exchange = _Exchange(buckets)
        pumps = [
            asyncio.create_task(self._pump_requests(client_r, upstream_w, exchange)),
            asyncio.create_task(self._pump_responses(upstream_r, client_w, exchange)),
        ]
        try:
            # Each direction ends on its own (half-close); an error in either (a reset raises
            # OSError) ends both.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for pump in pumps:
                pump.cancel()
            # Also retrieves the pumps' exceptions, so none is logged as never retrieved.
            await asyncio.gather(*pumps, return_exceptions=True)
            upstream_w.close()

    async def _pump_requests(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, exchange: _Exchange
    ) -> None:
        while data := await source.read(_CHUNK):
            sink.write(data)
            await sink.drain()
            exchange.request_sent_at = time.monotonic()
        if sink.can_write_eof():
            sink.write_eof()

    async def _pump_responses(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, exchange: _Exchange
    ) -> None:
        ttfb = self._settings.ttfb_s
        while data := await source.read(_CHUNK):
            # Re-read the stamp after each sleep: a request still arriving moves it on.
            while exchange.request_sent_at is not None:
                wait = exchange.request_sent_at + ttfb - time.monotonic()
                if wait <= 0:
                    exchange.request_sent_at = None
                else:
                    await asyncio.sleep(wait)
            for bucket in exchange.buckets:
                await bucket.take(len(data))
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()


# The proxy in a spawned child process, so its event loop does not share the caller's GIL.

PROXY_START_TIMEOUT_S: Final = 180.0


def _proxy_main(upstream_port: int, settings: ThrottleSettings, pipe: Connection) -> None:
    with ThrottlingProxy("127.0.0.1", upstream_port, settings) as proxy:
        pipe.send(proxy.port)
        with contextlib.suppress(EOFError):
            pipe.recv()  # until the parent says stop, or dies


class ProxyProcess:
    """A :class:`ThrottlingProxy` served by a spawned child process."""

    def __init__(self, upstream_port: int, settings: ThrottleSettings) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(
            target=_proxy_main, args=(upstream_port, settings, child), daemon=True
        )
        self._process.start()
        child.close()
        try:
            if not self._pipe.poll(PROXY_START_TIMEOUT_S):
                raise EOFError
            self.port = int(self._pipe.recv())
        except EOFError:  # no answer in time, or the child died first
            self.close()
            raise RuntimeError("the throttling proxy did not start") from None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop the child: ask, then SIGTERM, then SIGKILL. Idempotent."""
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._pipe.send("stop")
            self._process.join(5.0)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._pipe.close()
