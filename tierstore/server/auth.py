"""The authentication interceptor: every call on the API port needs a valid bearer token.

The token is checked in :meth:`AuthInterceptor.intercept_service`, from the call's
headers, before anything else happens: a call without valid credentials is answered
UNAUTHENTICATED by a handler that never reads its request. (grpcio reads a unary
request on a worker thread before the handler runs, so a check inside the handler
would let a caller with no token hold a worker by never sending its request.)
Calls that pass have the principal recorded for the handlers (:func:`rpc.caller`,
which checks the token again when a handler asks: the handler may run long after the
call arrived, once a worker is free and the request has come) and get one audit line
each (principal, token id, method, dataset, outcome — never the token). With mutual
TLS on, the verified client certificate's common name (the calling service) is added
to the audit line; the roles still come from the token, so a service identity alone
grants nothing. Health checks without credentials are served on the separate health
port only.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from tierstore.errors import ServerBusy, Unauthenticated
from tierstore.server.authz import Principal
from tierstore.server.callerworkers import CallerWorkers
from tierstore.server.refusallog import RefusalLog, peer_host
from tierstore.server.rpc import abort_with, called_on, called_on_shard, calling_as, noted_change
from tierstore.server.tokens import AuthFailure, TokenStore
from tierstore.types import ALL_DATASETS, Role
from tierstore.wire.status import ERROR_HEADER

__all__ = ["AuthInterceptor"]

audit = logging.getLogger("tierstore.audit")

#: an authorization header's start, the scheme lowercased
_SCHEME = "bearer "


def _bearer(metadata: Any) -> str:
    """The token of the call's one ``authorization: Bearer <token>`` header, the scheme
    in any case (RFC 7235: ``bearer`` and ``BEARER`` are ``Bearer``), one space after it.
    Two authorization headers are refused rather than one picked: a proxy that adds its
    own in front of the caller's would otherwise decide whose call this is."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if len(values) > 1:
        raise Unauthenticated(reason=AuthFailure.SEVERAL_HEADERS)
    value = values[0] if values else None
    if not isinstance(value, str) or value[: len(_SCHEME)].lower() != _SCHEME:
        raise Unauthenticated(reason=AuthFailure.NO_TOKEN)
    return value[len(_SCHEME) :]


def _audit(event: str, **fields: str | float) -> None:
    """Write one audit line: ``event k=v ...`` as its message, and the same fields as
    the record's ``fields`` attribute, which ``tierstore serve``'s JSON log lines carry
    as top-level keys (so a log pipeline need not parse the message)."""
    text = " ".join(
        f"{key}={value:.1f}" if isinstance(value, float) else f"{key}={value}"
        for key, value in fields.items()
    )
    audit.info("%s %s", event, text, extra={"fields": {"event": event, **fields}})


def _audit_unsaid(kind: tuple[str, ...], count: int) -> None:
    """The audit line of ``count`` refusals of ``kind`` (host, reason, token id) that went
    without one, their kind forgotten (RefusalLog)."""
    host, reason, token = kind
    _audit("denied", reason=reason, token=token, peer=host, repeats=str(count))


def _peer_service(context: grpc.ServicerContext) -> str:
    names = context.auth_context().get("x509_common_name")
    if isinstance(names, bytes):
        return names.decode(errors="replace")
    first = next(iter(names or []), b"")
    return first.decode(errors="replace")


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates every call and audits it; with ``workers``, each call holds one of
    its places for its caller while it runs (refused with ServerBusy past the caller's
    share)."""

    def __init__(
        self,
        tokens: TokenStore,
        observe: Callable[[str, str, float | None], None] | None = None,
        workers: CallerWorkers | None = None,
    ) -> None:
        self._tokens = tokens
        #: the places its calls hold while they run (None: none taken)
        self.workers = workers
        #: called with (method, status code name, seconds) after every authenticated call
        self._observe = observe or (lambda method, code, seconds: None)
        #: which refused calls get an audit line (the first of each kind in a window)
        self.refusals = RefusalLog(forgotten=_audit_unsaid)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return None
        try:
            principal = self._tokens.authenticate(_bearer(handler_call_details.invocation_metadata))
        except Unauthenticated as exc:
            return _refusal(handler, method, exc, self._observe, self.refusals)
        return _wrap(
            handler, principal, self._tokens.principal_now, method, self._observe, self.workers
        )


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any],
    method: str,
    refused: Unauthenticated,
    observe: Callable[[str, str, float | None], None],
    refusals: RefusalLog,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of ``handler``'s response shape that answers UNAUTHENTICATED at once
    (counted by ``observe``, as every call is, so refusals show in the metrics). Its
    audit line says why (``refused``'s reason) and, for a token of the right shape,
    which token: an operator can see which revoked or expired token is still in use.
    Only the first refusal of its kind in a window is audited (``refusals``), with how
    many went unaudited before it: a client without credentials filled the log.

    It takes its requests as a stream and never reads them, so no worker waits for
    the request of a caller without credentials.
    """

    def refuse(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        observe(method, "UNAUTHENTICATED", None)  # counted, not timed
        peer = context.peer()
        # A token id the node does not know is the caller's to make up: no part of the kind.
        known = refused.reason not in (AuthFailure.UNKNOWN, AuthFailure.MALFORMED)
        kind = (peer_host(peer), refused.reason, refused.token_id if known else "")
        repeats = refusals.admit(kind)
        if repeats is not None:  # else one of its kind was audited this window
            _audit(
                "denied",
                method=method,
                reason=refused.reason,
                token=refused.token_id,
                peer=peer,
                service=_peer_service(context),
                **({"repeats": str(repeats)} if repeats else {}),
            )
        context.set_trailing_metadata(((ERROR_HEADER, "Unauthenticated"),))
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid credentials")

    def refuse_streaming(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        yield refuse(requests, context)  # aborts: nothing is ever yielded

    serializer = handler.response_serializer
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            refuse_streaming, response_serializer=serializer
        )
    return grpc.stream_unary_rpc_method_handler(refuse, response_serializer=serializer)


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    principal: Principal,
    now: Callable[[Principal], Principal],
    method: str,
    observe: Callable[[str, str, float | None], None],
    workers: CallerWorkers | None,
) -> grpc.RpcMethodHandler[Any, Any]:
    what = f"a {method.rsplit('/', 1)[-1]} call"
    node_admin = principal.role_on(ALL_DATASETS) is Role.ADMIN

    def hold_a_worker(context: grpc.ServicerContext) -> bool:
        """Take the call's place for its caller (False: none to take); refuse the call
        (ServerBusy) when its caller holds its share of them."""
        if workers is None:
            return False
        try:
            workers.take(what, principal.name, in_group=not node_admin)
        except ServerBusy as exc:
            abort_with(context, exc)
        return True

    def finish(
        principal: Principal, context: grpc.ServicerContext, started: float, outcome: str
    ) -> None:
        shard, change = called_on_shard(), noted_change()
        _audit(
            "call",
            method=method,
            dataset=called_on(),
            # Quoted: a shard's name may hold spaces and "=" (and be read as fields).
            **({"shard": json.dumps(shard)} if shard else {}),
            **({"change": json.dumps(change)} if change else {}),
            principal=principal.name,
            token=principal.token_id,
            service=_peer_service(context),
            outcome=outcome,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        observe(method, outcome, time.monotonic() - started)

    def outcome_of(exc: BaseException | None, context: grpc.ServicerContext) -> str:
        if exc is None:
            # A handler that saw its caller gone (cancelled, or past its deadline) and
            # stopped: nobody got an answer, so it is not a success.
            return "OK" if context.is_active() else "CANCELLED"
        code = getattr(context, "code", lambda: None)()  # set by the handler's abort
        return code.name if isinstance(code, grpc.StatusCode) else "CANCELLED"

    @contextmanager
    def running(context: grpc.ServicerContext) -> Iterator[None]:
        """The call's run: its caller recorded and its worker's place held while the
        block runs, then its audit line and metrics."""
        started = time.monotonic()
        token = calling_as(principal, now)
        error: BaseException | None = None
        held = False
        try:
            held = hold_a_worker(context)
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            if held:
                assert workers is not None
                workers.give_back(principal.name, in_group=not node_admin)
            finish(principal, context, started, outcome_of(error, context))
            token.var.reset(token)

    def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            with running(context):
                return behavior(request, context)

        return call

    def streaming(behavior: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with running(context):
                yield from behavior(request, context)

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
