"""Misbehaving S3 endpoints on 127.0.0.1, shared by the tier and the engine tests.

* :class:`ScriptedServer`: a tiny HTTP server that answers every request from a
  script (5xx, 403, odd ranges: answers a healthy SeaweedFS never gives), and
  :func:`cut_short`, an answer whose body ends early, the connection closed;
  :func:`chunked_answer`, an answer sent in chunks; and :func:`forwarded`, for a
  script that passes a request on to a real store.
* :func:`unreachable_endpoint`: a bound socket that never listens, so every
  connection is refused at once and no other process can take the port.
* :class:`FreezingProxy`: a TCP forwarder to a real store that can freeze, as an
  archive process stopped (SIGSTOP) does: connections are taken, nothing is answered.
* :func:`fast_settings`: :class:`S3Settings` with short timeouts and back-off,
  so failure tests finish quickly.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tierstore.tiers.s3 import S3Settings

__all__ = [
    "FreezingProxy",
    "Script",
    "ScriptedServer",
    "chunked_answer",
    "cut_short",
    "fast_settings",
    "forwarded",
    "s3_error",
    "unreachable_endpoint",
]

Script = Callable[[int, BaseHTTPRequestHandler], tuple[int, dict[str, str], bytes]]

#: a scripted answer's header, not sent: the Content-Length to send in place of the
#: body's own ("" for none), the connection closed after the body (see cut_short)
_DECLARED_LENGTH = "X-Scripted-Declared-Length"
#: a scripted answer's header, not sent: the connection is reset after the body
_RESET = "X-Scripted-Reset"


def s3_error(status: int, code: str) -> tuple[int, dict[str, str], bytes]:
    """An S3-style XML error answer, with the request id a store sends on every answer
    (which alone marks a HEAD's bodyless 404 as the store's)."""
    body = f"<Error><Code>{code}</Code><Message>scripted</Message></Error>".encode()
    return status, {"Content-Type": "application/xml", "x-amz-request-id": "scripted"}, body


def cut_short(
    status: int,
    headers: dict[str, str],
    body: bytes = b"",
    declared: int | None = None,
    *,
    reset: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    """An answer cut on the way, as a store or proxy that died mid-answer leaves it:
    ``body`` (often nothing) sent under a Content-Length of ``declared`` (None: no
    Content-Length, the body ending with the connection), then the connection closed,
    or reset if ``reset``."""
    marked = {**headers, _DECLARED_LENGTH: "" if declared is None else str(declared)}
    if reset:
        marked[_RESET] = "1"
    return status, marked, body


def chunked_answer(
    status: int,
    headers: dict[str, str],
    body: bytes,
    chunk: int = 1000,
    *,
    stale_length: int | None = None,
    cut: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    """An answer sent with ``Transfer-Encoding: chunked``, ``body`` in chunks of
    ``chunk`` bytes; with a Content-Length of ``stale_length`` too (a proxy that
    re-chunked an answer and kept its length), and, if ``cut``, the connection closed
    after the chunks, before the last (empty) one."""
    encoded = b"".join(
        b"%x\r\n" % len(body[i : i + chunk]) + body[i : i + chunk] + b"\r\n"
        for i in range(0, len(body), chunk)
    )
    marked = {**headers, "Transfer-Encoding": "chunked"}
    if stale_length is not None:
        marked["Content-Length"] = str(stale_length)
    if cut:
        return cut_short(status, marked, encoded, declared=None)
    return status, marked, encoded + b"0\r\n\r\n"


class ScriptedServer:
    """An HTTP server on 127.0.0.1 answering every request from ``script(n, request)``.

    The request's body is its handler's ``body``. An answer whose headers hold a
    Content-Length is sent with it as is (a HEAD's, passed on from a store); one sent
    chunked (see :func:`chunked_answer`) gets none of its own."""

    def __init__(self, script: Script) -> None:
        self.requests = 0
        self.methods: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(length)
                with outer._lock:
                    outer.requests += 1
                    outer.methods.append(self.command)
                    number = outer.requests
                status, headers, body = script(number, self)
                headers = dict(headers)
                declared = headers.pop(_DECLARED_LENGTH, None)
                reset = headers.pop(_RESET, None) is not None
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                framed = {"content-length", "transfer-encoding"} & set(map(str.lower, headers))
                if declared is None and not framed:
                    self.send_header("Content-Length", str(len(body)))
                elif declared:
                    self.send_header("Content-Length", declared)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                if declared is not None:  # cut short: the rest never comes
                    self.close_connection = True
                    self.wfile.flush()
                    with contextlib.suppress(OSError):
                        if reset:  # an RST, not a FIN
                            linger = struct.pack("ii", 1, 0)
                            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                            self.connection.close()
                        else:
                            self.connection.shutdown(socket.SHUT_WR)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class FreezingProxy:
    """A TCP forwarder on 127.0.0.1 to ``127.0.0.1:port``. Frozen (:meth:`freeze`), it
    passes nothing on either way and keeps every connection open; :attr:`held` counts
    the requests (client sends) it holds, until :meth:`thaw` lets them through."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._frozen = threading.Event()
        self._thawed = threading.Event()
        self._thawed.set()
        self._lock = threading.Lock()
        self.held = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def freeze(self) -> None:
        self._thawed.clear()
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()
        self._thawed.set()

    def close(self) -> None:
        self.thaw()
        self._listener.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self._target))
                for source, sink, asks in ((client, server, True), (server, client, False)):
                    threading.Thread(
                        target=self._pipe, args=(source, sink, asks), daemon=True
                    ).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, asks: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                if self._frozen.is_set():
                    if asks:
                        with self._lock:
                            self.held += 1
                    self._thawed.wait()
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def forwarded(request: BaseHTTPRequestHandler, port: int) -> tuple[int, dict[str, str], bytes]:
    """``request`` (a ScriptedServer's) passed on to the store at ``127.0.0.1:port``,
    headers as sent (so its signature holds), and the store's answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(
            request.command, request.path, skip_host=True, skip_accept_encoding=True
        )
        for name, value in request.headers.items():
            if name.lower() != "expect":  # the body goes with the headers
                connection.putheader(name, value)
        body: bytes = getattr(request, "body", b"")
        connection.endheaders(body or None)
        answer = connection.getresponse()
        data = answer.read()
    finally:
        connection.close()
    # The server sends its own Date, Server and framing headers.
    dropped = {"transfer-encoding", "connection", "date", "server"}
    if request.command != "HEAD":
        dropped.add("content-length")
    headers = {name: value for name, value in answer.getheaders() if name.lower() not in dropped}
    return answer.status, headers, data


@contextmanager
def unreachable_endpoint() -> Iterator[str]:
    """An ``http://127.0.0.1:<port>`` URL where connections are refused while the block runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))  # bound, never listening: connect() is refused
        yield f"http://127.0.0.1:{holder.getsockname()[1]}"


def fast_settings(endpoint_url: str, max_attempts: int, bucket: str = "scripted") -> S3Settings:
    """Settings that give up quickly: short timeouts, back-off of a few milliseconds."""
    return S3Settings(
        endpoint_url=endpoint_url,
        bucket=bucket,
        access_key_id="key",
        secret_access_key="secret",
        max_attempts=max_attempts,
        connect_timeout_s=2.0,
        read_timeout_s=5.0,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )
