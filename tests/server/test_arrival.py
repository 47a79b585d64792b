"""The request-arrival watchdog: a call it cancelled is never acted on.

Unit tests with a stand-in call context (it records cancel and abort as grpc's
does) and request iterators that answer only once the call was cancelled: grpc may
then hand over a message that was in flight, or end the stream, rather than raise.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tierstore.server.arrival import RequestArrival, RequestOverdue

WAIT_S = 0.2


class StandInContext:
    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Exception(details)  # as grpc's: abort raises once it has marked the call


def after_cancel(context: StandInContext, message: bytes | None) -> Iterator[bytes]:
    """Waits for the call to be cancelled, then yields ``message`` (or ends)."""
    assert context.cancelled.wait(10)
    if message is not None:
        yield message


@pytest.mark.parametrize("late", [b"a message in flight", None], ids=["message", "end"])
def test_what_comes_after_the_watchdog_cancelled_the_call_is_not_acted_on(
    late: bytes | None,
) -> None:
    arrival = RequestArrival(WAIT_S)
    context = StandInContext()
    stand_in: Any = context
    with pytest.raises(RequestOverdue):
        arrival.next_of(after_cancel(context, late), stand_in, WAIT_S)
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.CANCELLED


def test_messages_that_arrive_in_time_pass_and_the_stream_ends_cleanly() -> None:
    arrival = RequestArrival(WAIT_S)
    context: Any = StandInContext()
    messages = iter([b"one", b"two"])
    assert arrival.next_of(messages, context, WAIT_S) == b"one"
    assert arrival.next_of(messages, context, WAIT_S) == b"two"
    with pytest.raises(StopIteration):
        arrival.next_of(messages, context, WAIT_S)
    assert not context.cancelled.is_set() and context.aborted is None
