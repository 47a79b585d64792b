"""A deadline for a call's request to arrive, so a stalled caller cannot keep a worker.

grpcio's synchronous server runs each call on a worker thread of a fixed pool, and a
call whose request message never comes waits on that thread for as long as the
caller keeps its connection open (it sets the call's deadline itself, or none). A
few such calls would hold every worker. :class:`RequestArrival` hands out a call's
one request message and cancels the call when it has not arrived within
``wait_s`` of being asked for (the caller sees CANCELLED). One watchdog thread
per server serves every call, started with the first and idle (waiting on a
condition) while no call waits.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

__all__ = ["RequestArrival"]


class RequestArrival:
    """Takes each call's request under a deadline for its arrival. Thread-safe."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self._cond = threading.Condition()
        #: calls waiting for their request: ticket -> (deadline, call context)
        self._waiting: dict[int, tuple[float, grpc.ServicerContext]] = {}
        self._tickets = itertools.count()
        self._watchdog: threading.Thread | None = None

    def request_of(self, messages: Iterator[Any], context: grpc.ServicerContext) -> Any:
        """The first message of ``messages`` (a call's requests).

        The call is cancelled (and this raises) when it has not arrived within
        ``wait_s``; a call that ends with no message at all aborts with
        INVALID_ARGUMENT.
        """
        ticket = next(self._tickets)
        with self._cond:
            self._waiting[ticket] = (time.monotonic() + self.wait_s, context)
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._watch, name="tierstore-request-arrival", daemon=True
                )
                self._watchdog.start()
            self._cond.notify()
        try:
            return next(messages)
        except StopIteration:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request")
        except grpc.RpcError:  # cancelled: by the watchdog, or by the caller
            context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request did not arrive within {self.wait_s:g} s",
            )
        finally:
            with self._cond:
                self._waiting.pop(ticket, None)

    def _watch(self) -> None:
        while True:
            with self._cond:
                while not self._waiting:
                    self._cond.wait()
                now = time.monotonic()
                expired = [t for t, (deadline, _) in self._waiting.items() if deadline <= now]
                overdue = [self._waiting.pop(ticket)[1] for ticket in expired]
                if not overdue:
                    soonest = min(deadline for deadline, _ in self._waiting.values())
                    self._cond.wait(max(soonest - now, 0.01))
            # Outside the lock: a cancelled call's worker takes the lock as it leaves.
            for context in overdue:
                context.cancel()
