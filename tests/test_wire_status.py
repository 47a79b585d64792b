"""The error table between server and client (tierstore/wire/status.py)."""

from __future__ import annotations

import grpc

from tierstore import errors
from tierstore.tiers.lmdb import MapFullOfDeadReaders
from tierstore.wire.status import error_for_status, error_name, status_for_error


def test_a_public_error_travels_as_itself() -> None:
    sent = errors.QuotaExceeded("full")
    assert error_name(sent) == "QuotaExceeded"
    again = error_for_status(status_for_error(sent), "full", error_name(sent))
    assert type(again) is errors.QuotaExceeded


def test_an_engine_subclass_travels_as_its_public_base() -> None:
    # Sent by its own name, the client knew no such class and raised the code's most
    # general one: a full hot tier came back as a bare ResourceExhausted.
    sent = MapFullOfDeadReaders("full while dead readers held pages")
    assert error_name(sent) == "HotTierFull"
    assert status_for_error(sent) is grpc.StatusCode.RESOURCE_EXHAUSTED
    again = error_for_status(status_for_error(sent), str(sent), error_name(sent))
    assert type(again) is errors.HotTierFull
