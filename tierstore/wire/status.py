"""One table between tierstore errors and gRPC status codes, shared by server and client.

The server aborts a call with the code of the error's class and the class name in
the ``tierstore-error`` trailing metadata; the client raises the same class again,
so a caller sees the exception the engine raised, wherever it ran.
"""

from __future__ import annotations

import grpc

from tierstore import errors

__all__ = ["ERROR_HEADER", "error_for_status", "error_name", "status_for_error"]

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


def error_for_status(
    code: grpc.StatusCode, message: str, error_name: str | None
) -> errors.TierstoreError:
    """The exception a client raises for a failed call.

    ``error_name`` is the class name the server sent; an unknown or missing one
    falls back to the general class of ``code``, and codes outside the table
    (e.g. CANCELLED, DEADLINE_EXCEEDED, INTERNAL) to :class:`Unavailable` or the root.
    """
    cls = _BY_NAME.get(error_name or "")
    if cls is not None and grpc.StatusCode[cls.status_code] == code:
        return cls(message)
    fallback = _BY_CODE.get(code)
    if fallback is not None:
        return fallback(message)
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return errors.Unavailable(f"{code.name}: {message}")
    return errors.TierstoreError(f"{code.name}: {message}")
