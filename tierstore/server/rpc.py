"""What every RPC handler shares: error mapping and the caller's identity.

Handlers raise :class:`TierstoreError`; :func:`handler` turns that into the
status code of the error's class (with the class name in the
``tierstore-error`` trailer, so the client raises the same class). Anything
else is a bug: it is logged with a stack trace and answered INTERNAL without
detail. The authentication interceptor stores the caller's principal for the
duration of the call; handlers read it with :func:`caller`.
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from tierstore.errors import TierstoreError, Unauthenticated
from tierstore.wire.status import ERROR_HEADER, error_name, status_for_error

__all__ = ["caller", "calling_as", "handler", "stream_handler"]

log = logging.getLogger(__name__)

_CALLER: contextvars.ContextVar[Any] = contextvars.ContextVar("tierstore_caller", default=None)

R = TypeVar("R")


def calling_as(principal: Any) -> contextvars.Token[Any]:
    """Record the authenticated caller for the current call (used by the interceptor)."""
    return _CALLER.set(principal)


def caller() -> Any:
    """The authenticated principal of the current call; Unauthenticated if none."""
    principal = _CALLER.get()
    if principal is None:
        raise Unauthenticated("no credentials")
    return principal


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, grpc.RpcError):
        # grpc's own request iterator raises this when the client cancelled or went
        # away mid-stream: there is no one to answer, and grpc recognizes the error it
        # raised when the handler re-raises it. Not a bug, so not logged as one.
        return
    if isinstance(exc, TierstoreError):
        name = error_name(exc)
        context.set_trailing_metadata(((ERROR_HEADER, name),))
        context.abort(status_for_error(exc), str(exc) or name)
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
