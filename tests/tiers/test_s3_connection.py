"""The archive endpoint URL check (tierstore/tiers/s3_connection.py), without a server.

A malformed endpoint reached botocore, which raised a bare ValueError: ``tierstore
serve`` printed a traceback. One with another scheme failed as an unreachable
archive, after every retry, though the setting was at fault.
"""

from __future__ import annotations

import pytest

from tierstore.errors import InvalidArgument
from tierstore.tiers.s3_connection import check_endpoint_url


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8333",
        "https://s3.example.com",
        "http://[::1]:9000/",
        "HTTP://host:1",
        "http://node-1.internal:9000/path",
    ],
)
def test_an_endpoint_url_with_a_scheme_and_a_host_passes(url: str) -> None:
    check_endpoint_url(url)


def test_no_endpoint_url_means_the_embedded_archive() -> None:
    check_endpoint_url("")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("127.0.0.1:9000", "must start with http:// or https://"),
        ("localhost:9000", "must start with http:// or https://"),
        ("s3.example.com", "must start with http:// or https://"),
        ("ftp://127.0.0.1:9000", "must start with http:// or https://"),
        ("http://", "names no host"),
        ("http://:9000", "names no host"),
        ("http://exa mple:9000", "must not contain spaces"),
        ("http://127.0.0.1:99999", "port"),
        ("http://127.0.0.1:port", "port"),
        ("http://127.0.0.1:0", "port that is not a number from 1"),
        ("http://[::1", "is not a URL"),  # urlsplit's own ValueError
        ("http://minio_1:9000", "not a valid host name"),  # botocore's ValueError
        ("http://-host:9000", "not a valid host name"),
        ("http://host:9000/?x=1", "query or a fragment"),
        ("http://host:9000#f", "query or a fragment"),
    ],
)
def test_a_malformed_endpoint_url_is_refused_by_name(url: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why) as refused:
        check_endpoint_url(url)
    assert "archive's endpoint URL" in str(refused.value)


def test_a_refused_url_with_a_secret_is_not_echoed() -> None:
    with pytest.raises(InvalidArgument, match="must not carry a user") as refused:
        check_endpoint_url("ftp://me:hunter2@host:1")
    assert "hunter2" not in str(refused.value)
