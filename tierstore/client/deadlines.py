"""The client's default call deadlines, in a module of their own so that the CLI can name
them without importing gRPC."""

from __future__ import annotations

__all__ = ["DEFAULT_STREAM_TIMEOUT_S", "DEFAULT_TIMEOUT_S"]

#: Seconds a unary call may take by default.
DEFAULT_TIMEOUT_S = 30.0
#: Seconds a streamed transfer (a get or a put) may take by default.
DEFAULT_STREAM_TIMEOUT_S = 3600.0
