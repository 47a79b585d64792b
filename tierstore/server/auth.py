"""The authentication interceptor: every call but health checks needs a valid bearer token.

The interceptor wraps each method handler so that, inside the call, it reads
the ``authorization: Bearer <token>`` metadata, authenticates it against the
token store, records the principal for the handlers (:func:`rpc.caller`) and
writes one audit line per call (principal, token id, method, outcome — never
the token). With mutual TLS on, the verified client certificate's common name
(the calling service) is added to the audit line; the roles still come from the
token, so a service identity alone grants nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from tierstore.errors import Unauthenticated
from tierstore.server.authz import Principal, is_public
from tierstore.server.rpc import calling_as
from tierstore.server.tokens import TokenStore
from tierstore.wire.status import ERROR_HEADER

__all__ = ["AuthInterceptor"]

audit = logging.getLogger("tierstore.audit")


def _bearer(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    raise Unauthenticated("missing bearer token")


def _peer_service(context: grpc.ServicerContext) -> str:
    names = context.auth_context().get("x509_common_name")
    if isinstance(names, bytes):
        return names.decode(errors="replace")
    first = next(iter(names or []), b"")
    return first.decode(errors="replace")


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates every non-public call and audits it."""

    def __init__(
        self, tokens: TokenStore, observe: Callable[[str, str, float], None] | None = None
    ) -> None:
        self._tokens = tokens
        #: called with (method, status code name, seconds) after every authenticated call
        self._observe = observe or (lambda method, code, seconds: None)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_public(method):
            return handler
        return _wrap(handler, self._authenticate, method, self._observe)

    def _authenticate(self, context: grpc.ServicerContext) -> Principal:
        return self._tokens.authenticate(_bearer(context))


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    authenticate: Callable[[grpc.ServicerContext], Principal],
    method: str,
    observe: Callable[[str, str, float], None],
) -> grpc.RpcMethodHandler[Any, Any]:
    def begin(context: grpc.ServicerContext) -> tuple[Principal, Any]:
        try:
            principal = authenticate(context)
        except Unauthenticated as exc:
            audit.info(
                "denied method=%s reason=%s peer=%s service=%s",
                method,
                getattr(exc, "reason", ""),
                context.peer(),
                _peer_service(context),
            )
            context.set_trailing_metadata(((ERROR_HEADER, "Unauthenticated"),))
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid credentials")
            raise
        return principal, calling_as(principal)

    def finish(
        principal: Principal, context: grpc.ServicerContext, started: float, outcome: str
    ) -> None:
        audit.info(
            "call method=%s principal=%s token=%s service=%s outcome=%s ms=%.1f",
            method,
            principal.name,
            principal.token_id,
            _peer_service(context),
            outcome,
            (time.monotonic() - started) * 1000,
        )
        observe(method, outcome, time.monotonic() - started)

    def outcome_of(exc: BaseException | None, context: grpc.ServicerContext) -> str:
        if exc is None:
            return "OK"
        code = getattr(context, "code", lambda: None)()  # set by the handler's abort
        return code.name if isinstance(code, grpc.StatusCode) else "CANCELLED"

    def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.monotonic()
            principal, token = begin(context)
            error: BaseException | None = None
            try:
                return behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                finish(principal, context, started, outcome_of(error, context))
                token.var.reset(token)

        return call

    def streaming(behavior: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.monotonic()
            principal, token = begin(context)
            error: BaseException | None = None
            try:
                yield from behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                finish(principal, context, started, outcome_of(error, context))
                token.var.reset(token)

        return call

    wrap: Callable[[Any], Any] = streaming if handler.response_streaming else unary
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **kwargs)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **kwargs)
