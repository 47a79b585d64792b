"""Deadlines for a call's messages, so a stalled caller cannot keep a worker.

grpcio's synchronous server runs each call on a worker thread of a fixed pool, and a
call whose request message never comes waits on that thread for as long as the
caller keeps its connection open (it sets the call's deadline itself, or none); so
does a call whose caller stops taking its response stream (grpc sends each message
on the worker, which waits while HTTP/2 flow control holds the message back). A few
such calls would hold every worker. :class:`RequestArrival` hands out a call's
request messages one by one and cancels the call when one has not arrived within
its deadline of being asked for (the caller sees CANCELLED): ``wait_s`` for a
unary request, the caller's choice for each message of a request stream; and
:meth:`RequestArrival.watch` gives any other wait, such as a response message's
send, the same kind of deadline. One watchdog thread
per server serves every call: it looks over the waiting calls a few times per
``wait_s`` (so a call is cancelled at most a quarter of ``wait_s``, and at most a
second, late), is never woken by a call (so a call costs a dictionary entry, not
a thread switch), and ends after a minute with no call waiting.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any, NoReturn

import grpc

__all__ = ["RequestArrival", "RequestOverdue"]

#: seconds with no call waiting after which the watchdog thread ends.
_IDLE_EXIT_S = 60.0


class RequestOverdue(grpc.RpcError):
    """A call's message did not arrive in time: the watchdog cancelled the call."""


def _overdue(context: grpc.ServicerContext, wait_s: float) -> NoReturn:
    """End the call as cancelled for a message overdue by ``wait_s``, and raise.

    The call is marked aborted first, so grpc ends it quietly when the error leaves
    the handler (as with an error of its own); handlers let ``grpc.RpcError`` pass.
    """
    with contextlib.suppress(Exception):  # abort marks the call, then raises
        context.abort(grpc.StatusCode.CANCELLED, f"cancelled: no message within {wait_s:g} s")
    raise RequestOverdue()


class RequestArrival:
    """Takes each call's request under a deadline for its arrival. Thread-safe."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self._tick_s = min(1.0, wait_s / 4)
        self._lock = threading.Lock()
        #: calls waiting for their request: ticket -> (deadline, call context)
        self._waiting: dict[int, tuple[float, grpc.ServicerContext]] = {}
        self._tickets = itertools.count()
        self._watchdog: threading.Thread | None = None

    def request_of(self, messages: Iterator[Any], context: grpc.ServicerContext) -> Any:
        """The one message of a unary call's ``messages``, within ``wait_s``.

        Raises StopIteration when the call ended without one, and aborts the call
        (CANCELLED) when it was cancelled: by its caller, or for a request that did
        not arrive in time.
        """
        try:
            return self.next_of(messages, context, self.wait_s)
        except grpc.RpcError:
            context.abort(
                grpc.StatusCode.CANCELLED,
                f"cancelled: the request did not arrive within {self.wait_s:g} s, or the "
                "caller gave up",
            )

    def next_of(self, messages: Iterator[Any], context: grpc.ServicerContext, wait_s: float) -> Any:
        """The next message of a call's ``messages``, asked for now.

        Raises StopIteration at their end, and ``grpc.RpcError`` when the call is
        cancelled: by its caller, or here, when the message has not arrived within
        ``wait_s`` (then :class:`RequestOverdue`, whether a message, the end of the
        stream or nothing came after all: the call is ended either way, and nothing
        it sent may be acted on).
        """
        ticket = self.watch(context, wait_s)
        try:
            message = next(messages)
        except StopIteration:
            if self.done(ticket):
                _overdue(context, wait_s)
            raise
        except BaseException:
            self.done(ticket)
            raise
        if self.done(ticket):
            _overdue(context, wait_s)
        return message

    def watch(self, context: grpc.ServicerContext, wait_s: float) -> int:
        """Cancel the call of ``context`` unless :meth:`done` is given the returned
        ticket within ``wait_s`` from now."""
        ticket = next(self._tickets)
        with self._lock:
            self._waiting[ticket] = (time.monotonic() + wait_s, context)
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._watch, name="tierstore-request-arrival", daemon=True
                )
                self._watchdog.start()
        return ticket

    def done(self, ticket: int) -> bool:
        """Forget ``ticket``; whether the watchdog had taken it (and cancelled its call)."""
        with self._lock:
            return self._waiting.pop(ticket, None) is None

    def _watch(self) -> None:
        last_waiting = time.monotonic()
        while True:
            time.sleep(self._tick_s)
            now = time.monotonic()
            with self._lock:
                if self._waiting:
                    last_waiting = now
                elif now - last_waiting > _IDLE_EXIT_S:
                    self._watchdog = None  # the next call starts another
                    return
                expired = [t for t, (deadline, _) in self._waiting.items() if deadline <= now]
                # Under the lock, so a call is either cancelled here or gets its message
                # there, never both (cancel only asks grpc's core; it does not wait on
                # the worker, which takes this lock as it leaves).
                for ticket in expired:
                    self._waiting.pop(ticket)[1].cancel()
