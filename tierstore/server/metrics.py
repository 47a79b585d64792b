"""Prometheus metrics of a node, served on their own port (``/metrics``).

Request counts and latency by method and status code come from the
authentication interceptor (which sees every call's outcome, those it refuses for
their credentials too; not those grpc itself refuses past its concurrency limit,
RESOURCE_EXHAUSTED before any interceptor runs); bytes served by
tier from the GetShard handler; archive request latency from a timing wrapper
around the archive tier. Gauges — hot-tier usage, archive backlog, hits and
misses, promotions (made and skipped), evictions, pins waiting for room — are read
from the store at scrape time, so the read path pays nothing for them; so are the
shard streams and archive calls served now, beside the most served at once (a node
refuses one more as busy: :mod:`tierstore.server.streamslots`).

The endpoint is plain HTTP without credentials, so it is served by a listener that
anyone who reaches the port cannot make hold the node's threads or descriptors, nor
keep scrapes out by holding connections: one thread reads every connection's request
(:class:`_Gate`), holding at most :data:`MAX_WAITING` of them (a new one closes the
oldest) and closing one whose request has not come ``idle_s`` after it connected; a
request read whole is answered on a thread of its own, :data:`MAX_SCRAPES` at once
(more are closed at once), which a connection holds for ``idle_s`` at most
(prometheus_client's own listener kept a thread and a descriptor for every
connection that sent nothing, for ever; and while a thread waited for each request,
8 connections that sent nothing kept every scrape out). Dataset names are not for
everyone who can reach it (a caller without a role on a dataset is told it does not
exist). So hits and misses carry a ``dataset``
label only when the operator asks for it (``dataset_labels``,
``--metrics-dataset-labels``); by default they are node totals.
"""

from __future__ import annotations

import contextlib
import io
import math
import selectors
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tierstore.engine.store import Store, hot_tier_dir
from tierstore.errors import Unavailable
from tierstore.server.places import Places

__all__ = ["MAX_SCRAPES", "MAX_WAITING", "ServerMetrics", "listen_address"]

#: requests the /metrics listener answers at once; it closes more at once.
MAX_SCRAPES = 8
#: connections it holds while their request comes; a new one closes the oldest.
MAX_WAITING = 64
#: the most bytes a request line and its headers may take.
_MAX_REQUEST_HEAD = 16 * 1024

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def listen_address(address: str) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    """The address family and socket address to bind for ``HOST:PORT``, as the other
    ports take it: an empty host is every interface, and an IPv6 address comes in
    brackets. Raises OSError (a name that does not resolve) or ValueError (no port)."""
    host, _, port = address.rpartition(":")
    family, *_, where = socket.getaddrinfo(
        host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, tuple(where[:2])


class ServerMetrics:
    """The node's metrics registry; its ``observe_*`` methods are safe from any thread."""

    def __init__(self, *, dataset_labels: bool = False, idle_s: float = 10.0) -> None:
        self.registry = CollectorRegistry()
        #: how long a /metrics connection may keep the listener waiting for its next bytes
        self.idle_s = idle_s
        #: whether hits and misses are labelled by dataset (names visible to scrapers).
        self.dataset_labels = dataset_labels
        self._requests = Counter(
            "tierstore_requests",
            "RPCs by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "tierstore_request_seconds",
            "RPC latency by method",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._served = Counter(
            "tierstore_served_bytes",
            "shard bytes sent to readers, by tier",
            ["tier"],
            registry=self.registry,
        )
        self._archive = Histogram(
            "tierstore_archive_request_seconds",
            "archive (S3) request latency",
            ["operation", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    def observe_call(self, method: str, code: str, seconds: float | None) -> None:
        """Count a call; ``seconds`` (its latency) None for a call refused before it ran
        (its credentials): counted, but not timed, or a flood of refusals would pull
        the method's latency toward zero."""
        self._requests.labels(method, code).inc()
        if seconds is not None:
            self._latency.labels(method).observe(seconds)

    def observe_served(self, tier: str, nbytes: int) -> None:
        self._served.labels(tier).inc(nbytes)

    def observe_archive(self, operation: str, seconds: float, failed: bool) -> None:
        self._archive.labels(operation, "error" if failed else "ok").observe(seconds)

    def watch_store(self, store: Store) -> None:
        """Report the store's gauges and counters at every scrape."""
        self.registry.register(_StoreCollector(store, self.dataset_labels))

    def watch_places(
        self, streams: Places, archive_calls: Places, workers: Places | None = None
    ) -> None:
        """Report, at every scrape, the shard streams and the calls waiting on the
        archive that the node serves now, and with ``workers`` the calls running on its
        workers, each beside the most it serves at once."""
        self.registry.register(_PlacesCollector(streams, archive_calls, workers))

    def serve(self, address: str) -> int:
        """Serve ``/metrics`` over plain HTTP at ``HOST:PORT`` (``:PORT``: every
        interface; ``[IPV6]:PORT``) until :meth:`stop_serving`; returns the bound port.
        One listener per registry. Raises Unavailable when it cannot listen there."""
        if self._http is not None:
            raise RuntimeError("metrics are already served")
        try:
            family, where = listen_address(address)
            server = _Listener(family, where, self.idle_s)
        except (OSError, ValueError) as exc:  # in use, not ours to bind, or not HOST:PORT
            raise Unavailable(
                f"cannot listen on {address} (/metrics, --metrics-listen): {exc}"
            ) from exc
        server.set_app(_only_metrics_path(make_wsgi_app(self.registry)))
        thread = threading.Thread(target=server.serve_forever, name="tierstore-metrics")
        thread.daemon = True
        thread.start()
        self._http = (server, thread)
        return int(server.server_address[1])

    def stop_serving(self) -> None:
        """Close the listener, end the answers under way (a reader that takes its answer
        slowly is cut off) and wait for every thread of it. Idempotent; nothing to do
        when metrics were never served."""
        if self._http is None:
            return
        server, thread = self._http
        self._http = None
        server.shutdown()
        server.server_close()
        thread.join()


class _Handler(WSGIRequestHandler):
    """One connection's request, read already (:class:`_Gate`); it logs nothing (scrapes
    come every few seconds)."""

    server: _Listener

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # else it keeps the socket's descriptor open past its close
        self.rfile = io.BytesIO(self.server.take_head(self.request))

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Listener(WSGIServer):
    """Each connection's request read by the gate's thread, then answered on a thread
    of its own, for at most :data:`MAX_SCRAPES` at once, each connection closed once
    it has held its thread ``idle_s`` (a reader that takes the answer a byte at a time).
    Its close ends the answers under way and waits for their threads (daemon threads,
    which socketserver's ThreadingMixIn does not wait for)."""

    def __init__(self, family: int, address: tuple[Any, ...], idle_s: float) -> None:
        self.address_family = family
        self._idle_s = idle_s
        self._answering: list[threading.Thread] = []  # on the gate's thread only
        self._slots = threading.BoundedSemaphore(MAX_SCRAPES)
        self._deadlines = _Deadlines(idle_s)
        self._heads: dict[socket.socket, bytes] = {}
        self._gate = _Gate(idle_s, self._answer)
        handler = type("_IdleHandler", (_Handler,), {"timeout": idle_s})
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._gate.admit(request, client_address)

    def _answer(self, request: socket.socket, client_address: Any, head: bytes) -> None:
        """On the gate's thread: answer ``request``, whose ``head`` was read."""
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # closed at once: no thread, no descriptor kept
            return
        self._heads[request] = head
        thread = threading.Thread(
            target=self._answer_thread,
            args=(request, client_address),
            name="tierstore-metrics-answer",
            daemon=True,
        )
        try:
            thread.start()
        except Exception:  # no thread started (none to be had): the gate goes on
            self._heads.pop(request, None)
            self._slots.release()
            self.shutdown_request(request)
            return
        self._answering = [*(t for t in self._answering if t.is_alive()), thread]

    def take_head(self, request: socket.socket) -> bytes:
        return self._heads.pop(request, b"")

    def _answer_thread(self, request: socket.socket, client_address: Any) -> None:
        self._deadlines.opened(request)
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._deadlines.closed(request)  # before its close: never ended once closed
            self.shutdown_request(request)
            self._slots.release()

    def server_close(self) -> None:
        self._gate.stop()  # first: it hands on no request once the answers are waited for
        self._deadlines.stop()  # ends the answers under way, and any that start now
        super().server_close()
        for thread in self._answering:
            thread.join(self._idle_s)  # a scrape being collected finishes, unsent

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A caller that went silent (the idle time-out) or away: nothing to report, and
        # socketserver's report is a traceback on stderr.
        pass


class _Gate:
    """One thread that reads each connection's request line and headers, without a
    thread per connection, and hands the connection and those bytes to ``ready``. It
    holds at most :data:`MAX_WAITING` connections (a new one closes the oldest, so
    that connections held open do not keep a scrape out), and closes one that closes,
    sends more than :data:`_MAX_REQUEST_HEAD` bytes, or has not sent its request
    ``lifetime_s`` after it was admitted."""

    def __init__(
        self, lifetime_s: float, ready: Callable[[socket.socket, Any, bytes], None]
    ) -> None:
        self._lifetime_s = lifetime_s
        self._ready = ready
        self._selector = selectors.DefaultSelector()
        self._wake_up, self._waker = socket.socketpair()
        for end in (self._wake_up, self._waker):
            end.setblocking(False)
        self._selector.register(self._wake_up, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._admitted: list[tuple[socket.socket, Any]] = []
        self._stopped = False
        # On the gate's thread only: each connection's address, deadline and bytes so
        # far, the oldest first.
        self._waiting: dict[socket.socket, tuple[Any, float, bytearray]] = {}
        self._thread = threading.Thread(target=self._run, name="tierstore-metrics-gate")
        self._thread.daemon = True
        self._thread.start()

    def admit(self, connection: socket.socket, address: Any) -> None:
        with self._lock:
            if self._stopped:
                connection.close()
                return
            self._admitted.append((connection, address))
        self._wake()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._wake()
        self._thread.join(10)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # its buffer full: a wake-up is pending already
            self._waker.send(b"\0")

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._stopped:
                        return
                    admitted, self._admitted = self._admitted, []
                for connection, address in admitted:
                    self._wait_for(connection, address)
                now = time.monotonic()
                for connection, (_, deadline, _) in list(self._waiting.items()):
                    if deadline <= now:
                        self._drop(connection)
                soonest = min((entry[1] for entry in self._waiting.values()), default=None)
                timeout = None if soonest is None else max(soonest - now, 0.01)
                for key, _ in self._selector.select(timeout):
                    if key.fileobj is self._wake_up:
                        with contextlib.suppress(OSError):
                            self._wake_up.recv(4096)
                    else:
                        self._read(key.fileobj)  # type: ignore[arg-type]
        finally:
            with self._lock:
                self._stopped = True
                left = [connection for connection, _ in self._admitted]
            for connection in [*self._waiting, *left]:
                connection.close()
            self._waiting.clear()
            self._selector.close()
            self._wake_up.close()
            self._waker.close()

    def _wait_for(self, connection: socket.socket, address: Any) -> None:
        while len(self._waiting) >= MAX_WAITING:
            self._drop(next(iter(self._waiting)))  # the oldest
        connection.setblocking(False)
        self._selector.register(connection, selectors.EVENT_READ)
        self._waiting[connection] = (address, time.monotonic() + self._lifetime_s, bytearray())

    def _read(self, connection: socket.socket) -> None:
        address, _, head = self._waiting[connection]
        try:
            data = connection.recv(_MAX_REQUEST_HEAD + 1 - len(head))
        except BlockingIOError:
            return
        except OSError:
            data = b""
        head += data
        if not data or len(head) > _MAX_REQUEST_HEAD:
            self._drop(connection)  # gone, or not a scrape
        elif b"\n\r\n" in head or b"\n\n" in head:  # the blank line after the headers
            self._selector.unregister(connection)
            del self._waiting[connection]
            connection.setblocking(True)
            self._ready(connection, address, bytes(head))

    def _drop(self, connection: socket.socket) -> None:
        self._selector.unregister(connection)
        del self._waiting[connection]
        connection.close()


class _Deadlines:
    """One thread that ends the connections open longer than ``lifetime_s``."""

    def __init__(self, lifetime_s: float) -> None:
        self._lifetime_s = lifetime_s
        self._open: dict[socket.socket, float] = {}  # connection -> its deadline
        self._changed = threading.Condition()
        self._stopped = False
        self._watcher = threading.Thread(target=self._watch, name="tierstore-metrics-deadlines")
        self._watcher.daemon = True
        self._watcher.start()

    def opened(self, connection: socket.socket) -> None:
        with self._changed:
            if self._stopped:
                _end(connection)
                return
            self._open[connection] = time.monotonic() + self._lifetime_s
            self._changed.notify()

    def closed(self, connection: socket.socket) -> None:
        with self._changed:
            self._open.pop(connection, None)

    def stop(self) -> None:
        """End the connections open now, and any opened from now on, at once; wait for
        the watching thread."""
        with self._changed:
            self._stopped = True
            for connection in self._open:
                _end(connection)
            self._open.clear()
            self._changed.notify()
        self._watcher.join()

    def _watch(self) -> None:
        with self._changed:
            while not self._stopped:
                now = time.monotonic()
                for connection, deadline in list(self._open.items()):
                    if deadline <= now:
                        del self._open[connection]
                        _end(connection)
                soonest = min(self._open.values(), default=None)
                self._changed.wait(None if soonest is None else max(soonest - now, 0.01))


def _end(connection: socket.socket) -> None:
    """End ``connection`` (not yet closed): its handler's writes fail at once."""
    with contextlib.suppress(OSError):  # the peer gone already
        connection.shutdown(socket.SHUT_RDWR)


#: The one path the listener answers (with or without a trailing slash).
METRICS_PATH = "/metrics"


def _only_metrics_path(metrics_app: WSGIApplication) -> WSGIApplication:
    """``metrics_app`` at :data:`METRICS_PATH`, and 404 everywhere else.

    prometheus_client answers every path with the metrics, so a scanner probing a node
    for ``/admin`` or ``/.env`` got a page of them and a 200."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").rstrip("/") == METRICS_PATH:
            return metrics_app(environ, start_response)
        body = f"not found: the metrics are at {METRICS_PATH}\n".encode()
        start_response(
            "404 Not Found",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


#: what is refused as busy, by bound: past the workers a call waits in gRPC's queue
_PAST_ALL = "one more than tierstore_{name}_places, or than a caller's share of them,"
_PAST_SHARE = "one more than a caller's share of tierstore_{name}_places"


class _PlacesCollector(Collector):
    def __init__(self, streams: Places, archive_calls: Places, workers: Places | None) -> None:
        self._bounds = [
            ("shard_streams", "shard streams (gets and puts)", streams, _PAST_ALL),
            (
                "archive_calls",
                "calls waiting on the archive (cold reads, write-through puts and deletes)",
                archive_calls,
                _PAST_ALL,
            ),
        ]
        if workers is not None:
            what = "authenticated calls running on the node's workers"
            past = _PAST_SHARE
            if workers.group_bound < workers.slots:
                past += (
                    f", or than the {workers.group_bound} of them that callers other than "
                    f"the node's admins may hold together ({workers.slots - workers.group_bound}"
                    " are kept for callers with the admin role on *),"
                )
            self._bounds.append(("worker_calls", what, workers, past))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, what, places, past in self._bounds:
            yield GaugeMetricFamily(
                f"tierstore_{name}",
                f"{what} served now; {past.format(name=name)} is refused as busy "
                "(ServerBusy), and clients retry it",
                places.in_use,
            )
            yield GaugeMetricFamily(
                f"tierstore_{name}_places", f"the most {what} served at once", places.slots
            )


class _StoreCollector(Collector):
    def __init__(self, store: Store, dataset_labels: bool = False) -> None:
        self._store = store
        self._dataset_labels = dataset_labels

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._store.stats()
        yield GaugeMetricFamily(
            "tierstore_hot_bytes", "stored bytes in the hot tier", stats.hot_bytes
        )
        yield GaugeMetricFamily(
            "tierstore_hot_capacity_bytes", "configured hot-tier capacity", stats.hot_capacity_bytes
        )
        yield GaugeMetricFamily(
            "tierstore_hot_file_bytes", "size of the LMDB data file", stats.lmdb_file_bytes
        )
        yield GaugeMetricFamily(
            "tierstore_archive_backlog_bytes", "bytes waiting for the archive", stats.backlog_bytes
        )
        yield GaugeMetricFamily(
            "tierstore_archive_backlog_cap_bytes",
            "the backlog past which puts fail RESOURCE_EXHAUSTED (backlog_cap_bytes)",
            self._store.settings.backlog_cap_bytes,
        )
        yield GaugeMetricFamily(
            "tierstore_data_disk_free_bytes",
            "bytes free to the node on the hot tier's file system (the disk reserve not "
            "counted); puts fail RESOURCE_EXHAUSTED when it runs out",
            _disk_free(hot_tier_dir(self._store.settings.data_dir)),
        )
        yield GaugeMetricFamily(
            "tierstore_journal_entries", "archive operations pending", stats.journal_entries
        )
        yield GaugeMetricFamily(
            "tierstore_journal_oldest_age_seconds",
            "seconds since the oldest pending archive operation committed (0: none pending)",
            stats.oldest_journal_age_s,
        )
        yield GaugeMetricFamily(
            "tierstore_archive_failing",
            "1 while the mover's last archive operation failed (the archive down or "
            "failing, or uploads held; stats and the log say why), or the one in progress "
            "has handed the archive no data for 30 s per part in flight (a frozen archive), "
            "or a pinned shard's promotion from the archive failed and waits, or the last "
            "archive request of any kind (a cold read's, a promotion's) failed for want of "
            "the archive and none has answered since, else 0",
            1 if stats.mover_error else 0,
        )
        yield GaugeMetricFamily(
            "tierstore_puts_waiting_for_quota",
            "puts waiting for the mover to make room in their dataset's quota",
            stats.quota_waiting_puts,
        )
        yield GaugeMetricFamily(
            "tierstore_pins_waiting_for_room",
            "pinned shards left cold because their promotion was skipped for want of room "
            "(their dataset's quota, or the high watermark: the tier full of pinned or "
            "un-archived shards); they turn hot once other pins end or the room grows",
            stats.pins_waiting_for_room,
        )
        yield GaugeMetricFamily(
            "tierstore_pins_waiting_for_room_bytes",
            "stored bytes of the pinned shards left cold for want of room",
            stats.pins_waiting_for_room_bytes,
        )
        yield GaugeMetricFamily(
            "tierstore_data_loss_reports",
            "shards reported lost (the log names them): hot copies that failed "
            "verification before their upload, and unreadable catalog records",
            len(stats.data_loss) + sum(stats.data_loss_unnamed.values()),
        )
        yield CounterMetricFamily(
            "tierstore_promotions",
            "shards promoted into the hot tier",
            self._store.promoter.promotions,
        )
        yield CounterMetricFamily(
            "tierstore_promotions_skipped",
            "promotions skipped: eviction could not make room below the high watermark or quota",
            self._store.promoter.promotions_skipped,
        )
        yield CounterMetricFamily(
            "tierstore_evictions",
            "shards evicted from the hot tier",
            self._store.hot_room.evictions,
        )
        labels = ["dataset"] if self._dataset_labels else []
        # Counted as a read starts (the policies' access record), served or not: a read
        # that then fails (the archive down) still counts.
        hits = CounterMetricFamily(
            "tierstore_hits", "reads that found their shard hot, as they started", labels=labels
        )
        misses = CounterMetricFamily(
            "tierstore_misses",
            "reads that found their shard cold (the archive asked), as they started",
            labels=labels,
        )
        # From memory: a scrape must not walk the catalog's shard records (dataset_usage
        # does, for its shard and byte counts), which took seconds over millions of shards.
        if self._dataset_labels:
            # A dataset deleted and made again starts at zero: a counter reset.
            for name, (dataset_hits, dataset_misses) in self._store.read_counts().items():
                hits.add_metric([name], dataset_hits)
                misses.add_metric([name], dataset_misses)
        else:
            total_hits, total_misses = self._store.read_totals()
            hits.add_metric([], total_hits)
            misses.add_metric([], total_misses)
        yield hits
        yield misses


def _disk_free(path: Path) -> float:
    """Bytes free to unprivileged users on ``path``'s file system (NaN if it cannot be
    read: a scrape must not fail for it)."""
    try:
        return float(shutil.disk_usage(path).free)
    except OSError:
        return math.nan
