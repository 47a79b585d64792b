"""The error table between server and client (tierstore/wire/status.py)."""

from __future__ import annotations

import grpc

from tierstore import errors
from tierstore.tiers.lmdb import MapFullOfDeadReaders
from tierstore.wire.status import (
    MAX_DETAILS_BYTES,
    error_for_status,
    error_name,
    status_details,
    status_for_error,
)


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


#: what gRPC's client reports for a server certificate signed by another CA
_REJECTED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Ssl "
    "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
    "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED"
)


def test_a_rejected_server_certificate_is_its_own_unavailable() -> None:
    error = error_for_status(grpc.StatusCode.UNAVAILABLE, _REJECTED, None)
    assert type(error) is errors.ServerCertificateRejected
    assert isinstance(error, errors.Unavailable)  # code catching outages still catches it
    # A client given no CA checks the system's roots: the message said "the CA file
    # given" to a review that had given none (TIERSTORE_CA="").
    assert "with none given, the system's trusted roots" in str(error)
    # A server that names its error is believed; other codes keep their class.
    named = error_for_status(grpc.StatusCode.UNAVAILABLE, _REJECTED, "ArchiveUnavailable")
    assert type(named) is errors.ArchiveUnavailable
    refused = "connect: Connection refused"
    assert type(error_for_status(grpc.StatusCode.UNAVAILABLE, refused, None)) is errors.Unavailable
    # Signed by the right CA but for other names: retried for seconds as an outage.
    wrong_name = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
        "Peer name vm is not in peer certificate; Hostname Verification Check failed."
    )
    mismatch = error_for_status(grpc.StatusCode.UNAVAILABLE, wrong_name, None)
    assert type(mismatch) is errors.ServerCertificateRejected


def test_a_message_is_sent_whole_up_to_the_bound() -> None:
    whole = "é" * (MAX_DETAILS_BYTES // 2)  # 2 bytes each: exactly the bound
    assert status_details(whole) == whole


def test_a_longer_message_is_cut_at_a_character_and_says_so() -> None:
    message = "no policy " + "€" * 10_000  # 3 bytes each: a cut may fall inside one
    sent = status_details(message)
    assert len(sent.encode()) <= MAX_DETAILS_BYTES
    assert sent.startswith("no policy €")
    kept = sent.split("...")[0]
    assert sent.endswith(f"({len(message.encode()) - len(kept.encode())} more bytes cut)")


def test_a_call_the_server_does_not_have_says_what_to_check() -> None:
    # The health port (plaintext) has the health calls alone: a library user reaching
    # it got the bare root class and gRPC's "Method not found!".
    error = error_for_status(grpc.StatusCode.UNIMPLEMENTED, "Method not found!", None)
    assert type(error) is errors.FailedPrecondition
    assert "Method not found!" in str(error) and "not its plaintext health port" in str(error)
