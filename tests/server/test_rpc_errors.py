"""How a handler's error becomes the call's status (tierstore/server/rpc.py)."""

from __future__ import annotations

import errno
from typing import Any

import grpc
import pytest

from tierstore.server.rpc import handler
from tierstore.wire.status import ERROR_HEADER

FULL = "ResourceExhausted"


class Aborted(Exception):
    """What the recording context's abort raises, as grpc's does."""


class RecordingContext:
    """Records the status a handler's abort gives."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailer: Any = ()

    def set_trailing_metadata(self, trailer: Any) -> None:
        self.trailer = trailer

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted


@pytest.mark.parametrize(
    ("failure", "code", "name"),
    [
        # A token store write on a full disk answered INTERNAL "internal error".
        (
            OSError(errno.ENOSPC, "No space left on device"),
            "RESOURCE_EXHAUSTED",
            "ResourceExhausted",
        ),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "RESOURCE_EXHAUSTED", "ResourceExhausted"),
        (OSError(errno.EACCES, "Permission denied"), "INTERNAL", None),  # a bug or setup
    ],
)
def test_a_full_disk_is_resource_exhausted_not_internal(
    failure: OSError, code: str, name: str | None
) -> None:
    @handler
    def write_tokens(self: object, request: object, context: Any) -> None:
        raise failure

    context = RecordingContext()
    with pytest.raises(Aborted):
        write_tokens(object(), object(), context)
    assert context.code == grpc.StatusCode[code]
    if name is not None:
        assert context.trailer == ((ERROR_HEADER, name),)
        assert "disk is full" in context.details
    else:
        assert context.details == "internal error"
