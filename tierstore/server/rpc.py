"""What every RPC handler shares: error mapping and the caller's identity.

Handlers raise :class:`TierstoreError`; :func:`handler` turns that into the
status code of the error's class (with the class name in the
``tierstore-error`` trailer, so the client raises the same class). Anything
else is a bug: it is logged with a stack trace and answered INTERNAL without
detail. The authentication interceptor stores the caller's principal for the
duration of the call; handlers read it with :func:`caller`, as its credential
stands when they do.
"""

from __future__ import annotations

import contextvars
import errno
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc

from tierstore.errors import (
    FailedPrecondition,
    ResourceExhausted,
    TierstoreError,
    Unauthenticated,
)
from tierstore.naming import is_dataset_name
from tierstore.wire.status import ERROR_HEADER, error_name, status_details, status_for_error

__all__ = [
    "abort_with",
    "called_on",
    "called_on_shard",
    "caller",
    "calling_as",
    "handler",
    "note_change",
    "note_dataset",
    "note_shard",
    "noted_change",
    "refuse_if_caller_gone",
    "stream_handler",
]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Call:
    """What the current call's audit line says beyond the interceptor's view."""

    principal: Any
    #: ``principal`` as its credential stands now (TokenStore.principal_now); None: as
    #: it was authenticated
    now: Callable[[Any], Any] | None = None
    #: the dataset the call was last authorized against ("": none)
    dataset: str = ""
    #: the shard it names, a valid name ("": none)
    shard: str = ""
    #: what an admin call changed, as it did it ("": nothing said)
    change: str = ""


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("tierstore_call", default=None)

R = TypeVar("R")


def calling_as(
    principal: Any, now: Callable[[Any], Any] | None = None
) -> contextvars.Token[_Call | None]:
    """Record the authenticated caller for the current call (used by the interceptor);
    ``now(principal)`` gives it as its credential stands at the time :func:`caller`
    is called."""
    return _CALL.set(_Call(principal, now))


def caller() -> Any:
    """The principal of the current call, as its credential stands now.

    A call is authenticated as it arrives, and its handler runs once a worker is free
    and its request has come (minutes later on a busy node): a token revoked or run
    out meanwhile is refused here (Unauthenticated), and a grant gone with its dataset
    is gone from the principal. Unauthenticated too if the call has no principal.
    """
    call = _CALL.get()
    if call is None:
        raise Unauthenticated("no credentials")
    return call.principal if call.now is None else call.now(call.principal)


def note_dataset(dataset: str) -> None:
    """Record the dataset the current call is being authorized against, for its audit
    line (no call in progress: nothing). Only a valid name is kept as it is, so the
    audit log carries no caller-made text."""
    call = _CALL.get()
    if call is not None and dataset:
        call.dataset = dataset if is_dataset_name(dataset) else "(invalid name)"


def called_on() -> str:
    """The dataset :func:`note_dataset` recorded for the current call ("" if none)."""
    call = _CALL.get()
    return call.dataset if call is not None else ""


def note_shard(shard: str) -> None:
    """Record the shard the current call names, once its name was validated, for its
    audit line (no call in progress: nothing): who read or deleted which shard."""
    call = _CALL.get()
    if call is not None:
        call.shard = shard


def note_change(change: str) -> None:
    """Record what the current admin call changed (a token made or revoked, a
    dataset's settings, a key), once it is done, for its audit line: the trail said
    who called RevokeToken, not which token it revoked. Only text the node made or
    checked (ids, valid names, numbers), never a secret."""
    call = _CALL.get()
    if call is not None:
        call.change = change


def noted_change() -> str:
    """What :func:`note_change` recorded for the current call ("" if nothing)."""
    call = _CALL.get()
    return call.change if call is not None else ""


def called_on_shard() -> str:
    """The shard :func:`note_shard` recorded for the current call ("" if none)."""
    call = _CALL.get()
    return call.shard if call is not None else ""


def refuse_if_caller_gone(context: grpc.ServicerContext, change: str) -> None:
    """Raise FailedPrecondition, for ``change`` (a put or delete, named), when the
    caller is no longer waiting for its answer: for a check inside the change's own
    write transaction. A caller told DEADLINE_EXCEEDED or CANCELLED takes the change
    for failed, and may have put or deleted again since: a change that waited for the
    writer and landed after that could undo what the caller did next."""
    if not context.is_active():
        raise FailedPrecondition(
            f"the caller of {change} gave up (cancelled, or past its deadline) before it "
            "could commit: nothing was changed"
        )


def abort_with(context: grpc.ServicerContext, exc: TierstoreError) -> NoReturn:
    """End the call with ``exc``'s status code and message, its class named in the
    ``tierstore-error`` trailer (so the client raises the same class); raises."""
    name = error_name(exc)
    context.set_trailing_metadata(((ERROR_HEADER, name),))
    context.abort(status_for_error(exc), status_details(str(exc) or name))


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, grpc.RpcError):
        # grpc's own request iterator raises this when the client cancelled or went
        # away mid-stream: there is no one to answer, and grpc recognizes the error it
        # raised when the handler re-raises it. Not a bug, so not logged as one.
        return
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        # A token or spool file that did not fit: the caller's retry may fit later.
        exc = ResourceExhausted(f"the node's data disk is full: {exc}")
    if isinstance(exc, TierstoreError):
        abort_with(context, exc)
    log.exception("internal error in an RPC handler", exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, "internal error")


def handler(fn: Callable[..., R]) -> Callable[..., R]:
    """Wrap a unary (or client-streaming) handler ``fn(self, request, context)``."""

    @functools.wraps(fn)
    def wrapped(self: Any, request: Any, context: grpc.ServicerContext) -> R:
        try:
            return fn(self, request, context)
        except Exception as exc:
            _abort(context, exc)
            raise  # reached only for grpc's own RpcError; abort raises otherwise

    return wrapped


def stream_handler(fn: Callable[..., Iterator[R]]) -> Callable[..., Iterator[R]]:
    """Wrap a server-streaming handler; errors raised mid-stream are mapped too."""

    @functools.wraps(fn)
    def wrapped(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[R]:
        try:
            yield from fn(self, request, context)
        except Exception as exc:
            _abort(context, exc)
            raise

    return wrapped
