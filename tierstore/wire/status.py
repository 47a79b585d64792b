"""One table between tierstore errors and gRPC status codes, shared by server and client.

The server aborts a call with the code of the error's class and the class name in
the ``tierstore-error`` trailing metadata; the client raises the same class again,
so a caller sees the exception the engine raised, wherever it ran.
"""

from __future__ import annotations

import grpc

from tierstore import errors

__all__ = [
    "ERROR_HEADER",
    "MAX_DETAILS_BYTES",
    "error_class",
    "error_for_status",
    "error_name",
    "is_certificate_rejection",
    "status_details",
    "status_for_error",
]

ERROR_HEADER = "tierstore-error"

_BY_NAME: dict[str, type[errors.TierstoreError]] = {
    name: cls
    for name in errors.__all__
    if isinstance(cls := getattr(errors, name), type) and issubclass(cls, errors.TierstoreError)
}

# The most general class for each code, used when the trailer names no known class.
_BY_CODE: dict[grpc.StatusCode, type[errors.TierstoreError]] = {}
for _cls in _BY_NAME.values():
    _code = grpc.StatusCode[_cls.status_code]
    _known = _BY_CODE.get(_code)
    if _known is None or issubclass(_known, _cls):
        _BY_CODE[_code] = _cls


#: The most UTF-8 bytes of an error message the server sends. The message travels
#: percent-encoded in a trailer (up to 3 bytes for each), and a client refuses a
#: trailer block past 16 KiB: an error echoing a huge caller-made value would then
#: reach the caller as a transport failure instead of itself.
MAX_DETAILS_BYTES = 2048


def status_details(message: str) -> str:
    """``message`` as the server sends it: cut to :data:`MAX_DETAILS_BYTES` (at a
    character boundary), with what was cut said at its end."""
    encoded = message.encode("utf-8", "replace")
    if len(encoded) <= MAX_DETAILS_BYTES:
        return message
    kept = encoded[: MAX_DETAILS_BYTES - 64].decode("utf-8", "ignore")
    return f"{kept}... ({len(encoded) - len(kept.encode())} more bytes cut)"


def error_class(name: str | None) -> type[errors.TierstoreError] | None:
    """The public error class a server names ``name`` (None for an unknown name)."""
    return _BY_NAME.get(name or "")


def error_name(error: errors.TierstoreError) -> str:
    """The name the server sends for ``error``: its class's, or, for a class of the
    engine's own below the public tree, its nearest public base's (which the client
    knows and raises)."""
    for cls in type(error).__mro__:
        if _BY_NAME.get(cls.__name__) is cls:
            return cls.__name__
    return errors.TierstoreError.__name__


def status_for_error(error: errors.TierstoreError) -> grpc.StatusCode:
    """The gRPC code of ``error`` (INTERNAL for the root class itself)."""
    return grpc.StatusCode[type(error).status_code]


#: what gRPC's TLS stack says when the server's certificate does not verify: not
#: signed by the CA given, or not for the name the client connected to
_CERTIFICATE_REJECTED = ("CERTIFICATE_VERIFY_FAILED", "Hostname Verification Check failed")


def is_certificate_rejection(code: grpc.StatusCode, message: str) -> bool:
    """Whether a call failed because the client rejected the server's certificate
    (gRPC reports it as UNAVAILABLE, like an outage, but retrying cannot help)."""
    return code == grpc.StatusCode.UNAVAILABLE and any(
        text in message for text in _CERTIFICATE_REJECTED
    )


#: what a call the server does not have most often means: an address that is not the
#: node's API port (its health port speaks plaintext, and has the health calls alone)
NO_SUCH_CALL = (
    "the server has no such call: is the address the node's API port, not its plaintext "
    "health port, and the node the same release of tierstore?"
)


def error_for_status(
    code: grpc.StatusCode, message: str, error_name: str | None
) -> errors.TierstoreError:
    """The exception a client raises for a failed call.

    ``error_name`` is the class name the server sent; an unknown or missing one
    falls back to the general class of ``code``, and codes outside the table
    (e.g. CANCELLED, DEADLINE_EXCEEDED, INTERNAL) to :class:`Unavailable` or the root;
    UNIMPLEMENTED, a call the server does not have, is FailedPrecondition.
    A rejected server certificate is :class:`ServerCertificateRejected`.
    """
    if error_name is None and is_certificate_rejection(code, message):
        return errors.ServerCertificateRejected(
            "the server's TLS certificate did not verify against the CA file given (or, "
            "with none given, the system's trusted roots, which hold no node's own CA), or "
            "is not for the host name connected to (the CA file: TIERSTORE_CA, the CLI's "
            "--ca or connect()'s ca=; it should be "
            "the server's <data-dir>/tls/ca.pem; the address: a name or IP the server's "
            f"certificate holds, such as its banner's; not retried): {message}"
        )
    cls = error_class(error_name)
    if cls is not None and grpc.StatusCode[cls.status_code] == code:
        return cls(message)
    fallback = _BY_CODE.get(code)
    if fallback is not None:
        return fallback(message)
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return errors.Unavailable(f"{code.name}: {message}")
    if code == grpc.StatusCode.UNIMPLEMENTED:  # a setup to mend, not an outage
        return errors.FailedPrecondition(f"{code.name}: {message} ({NO_SUCH_CALL})")
    return errors.TierstoreError(f"{code.name}: {message}")
