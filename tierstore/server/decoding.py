"""Decoding requests inside the call, so undecodable bytes are the caller's mistake.

grpcio decodes a request before the handler runs and answers INTERNAL ("Exception
deserializing request!") when the bytes are no valid message — a server error for
what is a caller's mistake. :class:`DecodeInterceptor` takes decoding over: the
handler receives the raw bytes, decodes them in the call and answers
INVALID_ARGUMENT (with the ``tierstore-error`` trailer) when they do not parse.
Messages of a request stream are decoded one by one as the handler consumes them.

A unary request is read inside the call as well, from the call's request stream,
under a deadline for its arrival (:mod:`tierstore.server.arrival`): grpcio would
otherwise read it on the worker thread before the handler runs, with no limit.
Each message of a request stream gets a (longer) deadline too, and so does the
caller's taking of each message of a response stream (a caller that stops reading
would otherwise hold the worker that sends to it).

A method may name a *request check* (``checks``): a function of the raw bytes that
refuses, before they are parsed, requests no valid one of that method encodes — where
parsing costs far more than the bytes (ReportLocalReads: an object of some 60 bytes
for every 2-byte entry). The refusal is INVALID_ARGUMENT, with the check's message.

Placed after the authentication interceptor, so a caller without credentials learns
nothing about how its bytes parse, and is refused before its request is read.
Thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc

from tierstore.errors import InvalidArgument
from tierstore.server.arrival import RequestArrival
from tierstore.wire.status import ERROR_HEADER

__all__ = ["DecodeInterceptor", "RequestCheck", "refuse_undecodable"]

#: Looks at a request's raw bytes before they are parsed; raises InvalidArgument for
#: bytes that no valid request of its method is.
RequestCheck = Callable[[bytes], None]


def refuse_undecodable(context: Any, exc: Exception) -> InvalidArgument:
    """Mark the call INVALID_ARGUMENT (code, details, error trailer) for a request that
    did not parse, or that a request check refused (an InvalidArgument, whose class
    and message are kept), and return the error to raise (or abort with). ``context``: a
    synchronous or an asyncio servicer context."""
    # The code and trailer are set here as well, so a handler that does not map tierstore
    # errors (health, reflection) still answers INVALID_ARGUMENT when the error escapes it.
    error_class: type[InvalidArgument] = InvalidArgument
    if isinstance(exc, InvalidArgument):
        message, error_class = str(exc)[:300], type(exc)
    else:
        message = f"the request is not a valid message: {str(exc) or type(exc).__name__}"[:300]
    context.set_trailing_metadata(((ERROR_HEADER, error_class.__name__),))
    context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
    context.set_details(message)
    return error_class(message)


def _decode(decode: Callable[[bytes], Any], data: bytes, context: grpc.ServicerContext) -> Any:
    try:
        return decode(data)
    except Exception as exc:  # DecodeError, and anything else a parser throws at garbage
        error = refuse_undecodable(context, exc)
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))


def _request(
    decode: Callable[[bytes], Any],
    messages: Iterator[bytes],
    context: grpc.ServicerContext,
    arrival: RequestArrival,
) -> Any:
    """A unary call's request, taken from its stream under ``arrival`` and decoded."""
    try:
        data = arrival.request_of(messages, context)
    except StopIteration:
        error = refuse_undecodable(context, ValueError("the call carried no request"))
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    return _decode(decode, data, context)


def _decoded_stream(
    decode: Callable[[bytes], Any],
    messages: Iterator[bytes],
    context: grpc.ServicerContext,
    arrival: RequestArrival,
    wait_s: float,
) -> Iterator[Any]:
    while True:
        try:
            data = arrival.next_of(messages, context, wait_s)
        except StopIteration:
            return
        try:
            message = decode(data)
        except Exception as exc:
            # Raised, not aborted: the handler's error mapping turns it into the answer.
            raise refuse_undecodable(context, exc) from exc
        yield message


def _taken_in_time(
    responses: Iterator[Any],
    context: grpc.ServicerContext,
    arrival: RequestArrival,
    wait_s: float,
) -> Iterator[Any]:
    """``responses``, each of which the caller must take within ``wait_s``, or the call
    is cancelled (the caller sees CANCELLED) and its worker freed.

    grpc sends a yielded message on the worker and asks for the next one once it is
    sent, so the time from a yield to the next request is the send's, flow control
    included; the time the handler takes to make a message is not counted.
    """
    for response in responses:
        ticket = arrival.watch(context, wait_s)
        try:
            yield response
        finally:
            arrival.done(ticket)


class DecodeInterceptor(grpc.ServerInterceptor):
    """Moves request reading and decoding into the call: undecodable requests get
    INVALID_ARGUMENT, and a unary request that does not arrive within
    ``request_arrival_s``, or a request stream's next message within
    ``stream_message_s``, ends its call (cancelled) and frees its worker; so does a
    response stream's message that the caller does not take within
    ``stream_message_s``. ``checks``:
    request checks by full method name (``/tierstore.v1.ShardService/ReportLocalReads``),
    run on each request's bytes before they are parsed."""

    def __init__(
        self,
        request_arrival_s: float,
        stream_message_s: float,
        checks: Mapping[str, RequestCheck] | None = None,
    ) -> None:
        self._arrival = RequestArrival(request_arrival_s)
        self._stream_message_s = stream_message_s
        self._checks = dict(checks or {})

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        check = self._checks.get(handler_call_details.method)
        if check is not None:
            decode = _checked(check, decode)
        return _decoding(handler, decode, self._arrival, self._stream_message_s)


def _checked(check: RequestCheck, decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``decode``, refusing first what ``check`` refuses (an InvalidArgument)."""

    def check_then_decode(data: bytes) -> Any:
        check(data)
        return decode(data)

    return check_then_decode


def _decoding(
    handler: grpc.RpcMethodHandler[Any, Any],
    decode: Callable[[bytes], Any],
    arrival: RequestArrival,
    stream_message_s: float,
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` taking raw request streams: a unary request is taken from the
    stream (under ``arrival``'s deadline) and decoded, a request stream decoded
    message by message (each under ``stream_message_s``)."""
    serializer = handler.response_serializer
    if handler.unary_unary:
        unary_unary = handler.unary_unary

        def call_unary_unary(messages: Iterator[bytes], context: grpc.ServicerContext) -> Any:
            return unary_unary(_request(decode, messages, context, arrival), context)

        return grpc.stream_unary_rpc_method_handler(
            call_unary_unary, response_serializer=serializer
        )
    if handler.unary_stream:
        unary_stream = handler.unary_stream

        def call_unary_stream(
            messages: Iterator[bytes], context: grpc.ServicerContext
        ) -> Iterator[Any]:
            responses = unary_stream(_request(decode, messages, context, arrival), context)
            yield from _taken_in_time(responses, context, arrival, stream_message_s)

        return grpc.stream_stream_rpc_method_handler(
            call_unary_stream, response_serializer=serializer
        )
    if handler.stream_unary:
        stream_unary = handler.stream_unary

        def call_stream_unary(messages: Iterator[bytes], context: grpc.ServicerContext) -> Any:
            requests = _decoded_stream(decode, messages, context, arrival, stream_message_s)
            return stream_unary(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            call_stream_unary, response_serializer=serializer
        )
    stream_stream = handler.stream_stream
    assert stream_stream is not None  # a handler has exactly one behavior

    def call_stream_stream(
        messages: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        requests = _decoded_stream(decode, messages, context, arrival, stream_message_s)
        responses = stream_stream(requests, context)
        yield from _taken_in_time(responses, context, arrival, stream_message_s)

    return grpc.stream_stream_rpc_method_handler(call_stream_stream, response_serializer=serializer)
