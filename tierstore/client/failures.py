"""How a failed call becomes a :mod:`tierstore.errors` error, and which failures are
worth another attempt: UNAVAILABLE, unless the server named ArchiveUnavailable or the
client rejected the server's certificate (either would fail again at once); for a
call that must not be made twice, only a failure to leave the client at all."""

from __future__ import annotations

import contextvars
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import grpc

from tierstore import errors
from tierstore.errors import Unavailable
from tierstore.wire.status import (
    ERROR_HEADER,
    error_class,
    error_for_status,
    is_certificate_rejection,
)

__all__ = [
    "BUSY_PAUSES_S",
    "BUSY_WAIT_S",
    "RETRY_DELAYS_S",
    "busy_wait",
    "closed_channel_is_unavailable",
    "mapped_responses",
    "raise_mapped",
    "refused_as_busy",
    "retried",
]

T = TypeVar("T")

#: Pauses between the attempts of a call retried because the server was unavailable:
#: 1.5 s in all, more than a channel waits between attempts to reconnect
#: (``channel.MAX_RECONNECT_BACKOFF_MS``, jittered), so that a call made once a
#: restarted server is back reaches it.
RETRY_DELAYS_S = (0.1, 0.2, 0.4, 0.8)
#: How long a call the server refused as busy (ServerBusy: its places for shard streams
#: or archive calls, or the caller's share of them, all taken; nothing of the call
#: done) is tried again, within the call's own deadline:
#: streams beyond the places used to wait in the server's queue, so a refusal there
#: is a queue here. Paused from the first of BUSY_PAUSES_S, doubling up to the second.
BUSY_WAIT_S = 120.0
BUSY_PAUSES_S = (0.05, 2.0)
#: How long the calls made in this context wait so: BUSY_WAIT_S, unless a caller with
#: retries of its own says otherwise (:func:`busy_wait`).
_BUSY_WAIT_S: contextvars.ContextVar[float] = contextvars.ContextVar(
    "tierstore_busy_wait_s", default=BUSY_WAIT_S
)


@contextmanager
def busy_wait(seconds: float) -> Iterator[None]:
    """Within the block, calls of this thread that the server refuses as busy are made
    again for ``seconds`` at most (0: raised at once), not BUSY_WAIT_S: for a caller
    that retries them itself, within limits of its own (the torch plugin's ``retry_s``
    and its stop, which the client's two minutes of waiting heeded neither)."""
    token = _BUSY_WAIT_S.set(seconds)
    try:
        yield
    finally:
        _BUSY_WAIT_S.reset(token)


def _retryable(error: grpc.RpcError) -> bool:
    """Whether a failed call ended UNAVAILABLE: worth another attempt if it is idempotent
    (a spent deadline, which the client also raises as Unavailable, is not; nor is the
    server's ArchiveUnavailable: the server is there, and its archive has just failed
    through all of the server's own retries; nor a server certificate this client
    rejected: the same CA rejects it again)."""
    call: Any = error  # grpc raises objects that are both RpcError and Call
    code = call.code() if hasattr(call, "code") else None
    if code != grpc.StatusCode.UNAVAILABLE:
        return False
    details = call.details() if hasattr(call, "details") else ""
    return not _names_archive_trouble(_error_name(error)) and not is_certificate_rejection(
        code, details or ""
    )


def _names_archive_trouble(name: str | None) -> bool:
    """Whether the server named ArchiveUnavailable, or a class below it (NotArchivedYet:
    done here, so a retry would put or delete again)."""
    cls = error_class(name)
    return cls is not None and issubclass(cls, errors.ArchiveUnavailable)


def _error_name(error: grpc.RpcError) -> str | None:
    """The error class the server named in the trailers of a failed call, if any."""
    call: Any = error  # grpc raises objects that are both RpcError and Call
    trailers = call.trailing_metadata() if hasattr(call, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == ERROR_HEADER:
            return value if isinstance(value, str) else bytes(value).decode()
    return None


#: What grpc's ValueError says of a channel closed under a call (its wording varies),
#: and a stream's CANCELLED status too ("Stream removed (Channel closed!)").
_CLOSED_CHANNEL = ("closed channel", "Channel closed")
_CLOSED_UNDER_CALL = (
    "the client was closed while this call was being made: close() ends the calls in "
    "flight (a call made after it opens a new channel)"
)


@contextmanager
def closed_channel_is_unavailable() -> Iterator[None]:
    """Turn grpc's ValueError for a channel another thread closed under a call into
    Unavailable, saying so; other ValueErrors pass."""
    try:
        yield
    except ValueError as error:
        if not any(text in str(error) for text in _CLOSED_CHANNEL):
            raise
        raise Unavailable(_CLOSED_UNDER_CALL) from None


def cancelled_here(error: grpc.RpcError) -> bool:
    """Whether gRPC says this side ended the call: its channel closed under it (another
    thread's close()), or the call cancelled here."""
    details = getattr(error, "details", lambda: "")() or ""
    return any(text in details for text in (*_CLOSED_CHANNEL, "Locally cancelled"))


#: The least time an attempt after a pause is left before the deadline: a pause that
#: would leave less is shortened, and with no room at all the call ends with the failure
#: before it (an attempt with no time left failed DEADLINE_EXCEEDED, "outcome unknown",
#: which hid the refusals of a busy node, or a node that could not be reached).
_LAST_ATTEMPT_S = 0.25


def retried(
    attempt: Callable[[], T],
    retry: bool,
    deadline: float | None = None,
    changes: str | None = None,
    retry_unsent: bool = True,
    busy_deadline: float | None = None,
) -> T:
    """``attempt()``, made again after each pause of ``RETRY_DELAYS_S`` while it fails
    UNAVAILABLE and ``retry`` — or, with ``retry_unsent``, while it fails never having
    left the client, which a call that must not be made twice may be; and while the
    server refuses it as busy (ServerBusy: nothing of it done), paused as BUSY_PAUSES_S
    say, for up to BUSY_WAIT_S (or what :func:`busy_wait` says), the call made again
    whether it may be made twice or not. ``deadline``: the ``time.monotonic()`` reading
    the attempts share (a transfer's): no pause leaves the attempt after it less than
    ``_LAST_ATTEMPT_S``. ``busy_deadline``: one that ends the waits for a busy node only
    (a call whose every attempt has a deadline of its own: its pauses for a node that
    could not be reached keep their length). Raises the mapped error of the failure
    that ends it (:func:`raise_mapped`, with ``changes``: what the call changes, if
    anything)."""
    delays = iter(RETRY_DELAYS_S)
    busy_until = time.monotonic() + _BUSY_WAIT_S.get()
    for limit in (deadline, busy_deadline):
        if limit is not None:
            busy_until = min(busy_until, limit)
    busy_pause = BUSY_PAUSES_S[0]
    while True:
        try:
            with closed_channel_is_unavailable():
                return attempt()
        except grpc.RpcError as error:
            pause: float | None
            if (retry or retry_unsent) and refused_as_busy(error):
                # A client-side queue: tried again, paused longer each time (jittered,
                # so that many callers do not come back in step), until BUSY_WAIT_S.
                pause = busy_pause * random.uniform(0.5, 1.0)
                busy_pause = min(busy_pause * 2, BUSY_PAUSES_S[1])
                end: float | None = busy_until
            else:
                pause = next(delays, None)
                again = retry or (retry_unsent and _never_sent(error))
                if not (again and _retryable(error)):
                    pause = None
                end = deadline
            if pause is not None and end is not None:
                room = end - time.monotonic() - _LAST_ATTEMPT_S
                pause = min(pause, room) if room > 0 else None
            if pause is None:
                raise_mapped(error, changes)
        time.sleep(pause)


#: what gRPC says of a call that never reached a server (nothing it asked was done)
_NOT_CONNECTED = "failed to connect to all addresses"
#: codes a call ends with when it was cut off (no answer of the server's own)
_CUT_OFF = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
)


def refused_as_busy(error: grpc.RpcError) -> bool:
    """Whether the server refused the call as it came, having done nothing of it
    (ServerBusy): as safe to make again as a call that never left the client."""
    return _error_name(error) == errors.ServerBusy.__name__


def _never_sent(error: grpc.RpcError) -> bool:
    """Whether a failed call never reached a server: its channel could not connect."""
    call: Any = error  # grpc raises objects that are both RpcError and Call
    details = call.details() if hasattr(call, "details") else ""
    return _NOT_CONNECTED in (details or "")


def raise_mapped(error: grpc.RpcError, changes: str | None = None) -> NoReturn:
    """Raise the tierstore error a failed call stands for (the class the server named).

    ``changes``: what the call would have changed, for a call cut off before the server
    answered (transport failure, deadline, cancel): its message then says that the
    change may or may not have been made, and the error's ``outcome_unknown`` is set.
    """
    call: Any = error  # grpc raises objects that are both RpcError and Call
    code = call.code() if hasattr(call, "code") else grpc.StatusCode.UNKNOWN
    details = (call.details() if hasattr(call, "details") else str(error)) or ""
    name = _error_name(error)
    if code == grpc.StatusCode.CANCELLED and any(text in details for text in _CLOSED_CHANNEL):
        details = f"{_CLOSED_UNDER_CALL}; gRPC said: {details}"
    never_sent = _NOT_CONNECTED in details or is_certificate_rejection(code, details)
    if changes is not None and name is None and code in _CUT_OFF and not never_sent:
        details = (
            f"{details} (the call was cut off before the server answered: {changes} may or "
            "may not have been made; look, or make the call again)"
        )
        in_doubt = error_for_status(code, details, name)
        in_doubt.outcome_unknown = True
        raise in_doubt from None
    raise error_for_status(code, details, name) from None


def mapped_responses(responses: Any) -> Iterator[Any]:
    """A response stream's messages; a failure of the stream raises the tierstore
    error it stands for (:func:`raise_mapped`)."""
    try:
        with closed_channel_is_unavailable():
            yield from responses
    except grpc.RpcError as error:
        raise_mapped(error)
