"""Reaching the S3 archive: its settings, and one boto3 client and pool per process.

:class:`S3Settings` says where the archive lives and how hard to try (validated
on construction). :func:`new_client` builds the boto3 client those settings
describe: path-style addressing, checksums only where required, botocore's own
retries off (:mod:`tierstore.tiers.s3_retry` is the one retry loop), timeouts and
connection pool size from the settings. boto3 clients are thread-safe but must not
cross ``fork()``, so a :class:`ProcessState` belongs to one process id.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import boto3
import botocore.config
from botocore.exceptions import InvalidRegionError
from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url, validate_region_name

from tierstore.errors import InvalidArgument
from tierstore.loopback import is_loopback_host
from tierstore.tiers.s3_limits import MAX_PART_SIZE, MiB

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "DEFAULT_POOL_CONNECTIONS",
    "MiB",
    "ProcessState",
    "S3Settings",
    "aliased_path",
    "check_bucket_name",
    "check_prefix",
    "new_client",
]

_MIN_PART_SIZE: Final = 5 * MiB  # S3's minimum for every part but the last
#: connections a process keeps to the archive, unless its settings ask for more
DEFAULT_POOL_CONNECTIONS: Final = 32


_NEW_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*[a-z0-9]")


def check_bucket_name(bucket: str, *, strict: bool = False) -> None:
    """InvalidArgument unless ``bucket`` has a length S3 allows (3 to 63 characters)
    and, if ``strict``, follows S3's naming rules for new buckets (lower-case letters,
    digits, dots and hyphens, a letter or digit at each end). Not strict by default:
    a store's older buckets may predate the rules."""
    if not 3 <= len(bucket) <= 63:
        raise InvalidArgument(f"bucket name must be 3-63 characters, got {bucket!r}")
    if strict and not _NEW_BUCKET_NAME.fullmatch(bucket):
        raise InvalidArgument(
            f"bucket name {bucket!r} is not one S3 takes for a new bucket: lower-case "
            "letters, digits, dots and hyphens, starting and ending with a letter or digit"
        )


def aliased_path(path: str) -> bool:
    """Whether a filer-backed store (SeaweedFS, the embedded archive) would keep object
    key ``path`` under another name: one with an empty, ``.`` or ``..`` segment (a
    leading or doubled ``/``), normalised away or refused, or a backslash, which it
    lists as ``/``."""
    return "\\" in path or any(segment in ("", ".", "..") for segment in path.split("/"))


def check_prefix(prefix: str) -> None:
    """InvalidArgument for a key prefix whose objects the store would keep under other
    keys (:func:`aliased_path`; the trailing ``/`` aside): SeaweedFS stored
    ``/team-a/ds/x`` as ``team-a/ds/x``, so a listing cut the prefix's length off the
    wrong key (``s/x``) and a rebuild found no dataset, and with ``./`` in it every
    PUT was refused."""
    if prefix and aliased_path(prefix.removesuffix("/")):
        raise InvalidArgument(
            f"the archive key prefix {prefix!r} may not start with '/', hold '//', a '.' "
            "or '..' segment, or a backslash: the store would keep its objects under other "
            "keys (e.g. 'team-a/')"
        )


def check_endpoint_url(url: str) -> None:
    """InvalidArgument for an archive endpoint URL that is not ``http(s)://HOST[:PORT]``
    ("" passes: no endpoint, the embedded archive). A malformed one reached botocore,
    whose bare ValueError came out of ``serve`` as a traceback, and one of another
    scheme failed as an unreachable archive, after every retry.

    A URL that carries credentials (``http://user:secret@host``, or
    ``user:secret@host`` without a scheme) is refused first, and not echoed back: the
    URL is named in errors and logs, where the secret would be printed (a review saw
    it so), and the node signs its requests with the access key and secret it is
    given, not with these."""
    if not url:
        return
    authority = url.split("://", 1)[-1].split("/", 1)[0]
    if "@" in authority:
        raise InvalidArgument(
            "the archive's endpoint URL must not carry a user or password (user:secret@): "
            "give the access key and secret key settings instead"
        )

    def refuse(why: str) -> InvalidArgument:
        return InvalidArgument(
            f"the archive's endpoint URL {url!r} {why} (e.g. http://127.0.0.1:8333)"
        )

    if any(char.isspace() for char in url):
        raise refuse("must not contain spaces")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # "http://[::1": an IPv6 address without its closing bracket
        raise refuse("is not a URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise refuse("must start with http:// or https://")
    try:
        port = parts.port  # checked on reading: digits only, 0..65535
    except ValueError:
        port = -1
    if port is not None and not 0 < port <= 65535:
        raise refuse("has a port that is not a number from 1 to 65535")
    if not parts.hostname:
        raise refuse("names no host")
    if parts.query or parts.fragment:
        raise refuse("must not carry a query or a fragment")
    # What botocore takes (it raised a bare ValueError for the rest): a host name of
    # letters, digits, dots and hyphens, an IPv4 address or a bracketed IPv6 one.
    if not (is_valid_endpoint_url(url) or is_valid_ipv6_endpoint_url(url)):
        raise refuse("names a host that is not a valid host name or IP address")


@dataclass(frozen=True, slots=True, kw_only=True)
class S3Settings:
    """Where the archive lives and how hard to try. Validated on construction.

    Raises :class:`InvalidArgument` for a bucket name outside 3-63 characters, a
    prefix the store would alias (:func:`check_prefix`), an empty access key or secret
    key, a region botocore refuses, ``max_attempts < 1``, a part size under 5 MiB, a part size or
    multipart threshold over 5 GiB, or non-positive sizes, timeouts and retry budget.
    """

    endpoint_url: str
    bucket: str
    prefix: str = ""
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str = "us-east-1"
    max_attempts: int = 5
    connect_timeout_s: float = 5.0
    #: the longest one socket read of an answer may wait (not the whole body's time).
    read_timeout_s: float = 20.0
    #: no attempt of a request after its second starts once this long has passed since
    #: its first: a frozen archive fails a request in two read timeouts (or this plus
    #: one), not ``max_attempts`` of them (which held a cold read 5 minutes).
    retry_budget_s: float = 30.0
    max_pool_connections: int = DEFAULT_POOL_CONNECTIONS
    multipart_threshold: int = 16 * MiB
    multipart_part_size: int = 8 * MiB
    #: parts of one multipart upload sent at once (the engine's ``mover_threads``; 1:
    #: one after another on the uploading thread).
    upload_parallelism: int = 1
    #: First retry backoff; it doubles per attempt (plus up to this much jitter).
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        check_bucket_name(self.bucket)
        check_prefix(self.prefix)
        check_endpoint_url(self.endpoint_url)
        if not self.access_key_id or not self.secret_access_key:
            # boto3 takes two empty keys for none given, and signs with the environment's
            # AWS credentials (a user's own, an instance's role) or fails as unreachable.
            raise InvalidArgument(
                "the archive's access key and secret key must not be empty (serve's "
                "--s3-access-key and --s3-secret-key, or the settings' [archive] "
                "access_key_id and secret_access_key)"
            )
        try:  # else botocore refused it on the first request, by a traceback of its own
            validate_region_name(self.region)
        except InvalidRegionError:
            raise InvalidArgument(
                f"the archive's region {self.region!r} is not a region name (letters, "
                "digits and hyphens, e.g. us-east-1)"
            ) from None
        if self.max_attempts < 1:
            raise InvalidArgument(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.multipart_part_size < _MIN_PART_SIZE:
            raise InvalidArgument(f"multipart_part_size must be at least {_MIN_PART_SIZE} bytes")
        # S3 refuses a part, and a single PUT, of over 5 GiB: found here, not at the
        # first upload that large (and at every retry of the mover's journal after it).
        for name, size in (
            ("multipart_part_size", self.multipart_part_size),
            ("multipart_threshold", self.multipart_threshold),
        ):
            if size > MAX_PART_SIZE:
                raise InvalidArgument(f"{name} must be at most 5 GiB, got {size:,} bytes")
        positive = {
            "connect_timeout_s": self.connect_timeout_s,
            "read_timeout_s": self.read_timeout_s,
            "retry_budget_s": self.retry_budget_s,
            "max_pool_connections": self.max_pool_connections,
            "upload_parallelism": self.upload_parallelism,
            "multipart_threshold": self.multipart_threshold,
            "backoff_max_s": self.backoff_max_s,
        }
        for name, number in positive.items():
            if number <= 0:
                raise InvalidArgument(f"{name} must be positive, got {number}")
        if self.backoff_initial_s < 0:
            raise InvalidArgument(
                f"backoff_initial_s must not be negative, got {self.backoff_initial_s}"
            )


class ProcessState:
    """The boto3 client and thread pool of one process; never used after ``fork()``."""

    __slots__ = ("client", "executor", "left_open", "lock", "pid")

    def __init__(self, pid: int, client: S3Client) -> None:
        self.pid = pid
        self.client = client
        # Created with the state, so a child never inherits it in a locked state.
        self.lock = threading.Lock()
        self.executor: ThreadPoolExecutor | None = None
        #: (key, upload id) of the failed multipart uploads whose abort failed too,
        #: aborted once the archive answers again (guarded by ``lock``).
        self.left_open: set[tuple[str, str]] = set()

    def pool(self, workers: int) -> ThreadPoolExecutor:
        """The process's thread pool, created on first use with ``workers`` threads."""
        with self.lock:
            if self.executor is None:
                self.executor = ThreadPoolExecutor(workers, thread_name_prefix="s3tier")
            return self.executor


def _trusted(endpoint_url: str) -> bool:
    """Whether requests to ``endpoint_url`` are protected by TLS or stay on this machine."""
    parsed = urllib.parse.urlsplit(endpoint_url)
    if parsed.scheme == "https":
        return True
    return is_loopback_host(parsed.hostname or "")


def new_client(settings: S3Settings) -> S3Client:
    """A new boto3 S3 client for ``settings``; use it in the creating process only."""
    s = settings
    config = botocore.config.Config(
        # Every frame carries its own checksum or AEAD tag and every read verifies it,
        # so SigV4's SHA-256 over each upload body (1.7 GiB/s here, a quarter of the
        # mover's CPU) buys nothing where the transport is TLS or never leaves the
        # machine. Elsewhere (plain HTTP to another host) the body stays signed.
        s3={"addressing_style": "path", "payload_signing_enabled": not _trusted(s.endpoint_url)},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # total_max_attempts=1: botocore never retries; s3_retry does (with
        # "max_attempts": 1 botocore would still retry once).
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=s.connect_timeout_s,
        read_timeout=s.read_timeout_s,
        max_pool_connections=s.max_pool_connections,
    )
    session = boto3.session.Session(
        aws_access_key_id=s.access_key_id,
        aws_secret_access_key=s.secret_access_key,
        region_name=s.region,
    )
    client = session.client("s3", endpoint_url=s.endpoint_url, config=config)
    client.meta.events.register("before-sign.s3.DeleteObjects", _content_md5_instead)
    return client


def _content_md5_instead(request: Any, **_: Any) -> None:
    """Give a DeleteObjects request, which must carry a checksum of its body, Content-MD5
    in place of the CRC32 that botocore (1.36 on) sends: stores that predate S3's
    flexible checksums (older MinIO and Ceph, s3proxy) refuse a batch delete without
    Content-MD5 or with a header they do not know; AWS takes either. Before signing,
    so the headers signed are the headers sent."""
    body = request.body
    if not isinstance(body, bytes | bytearray):
        return  # not a body botocore built whole: leave its checksum be
    for name in list(request.headers.keys()):
        lowered = name.lower()
        if lowered.startswith("x-amz-checksum-") or lowered == "x-amz-sdk-checksum-algorithm":
            del request.headers[name]
    digest = hashlib.md5(body, usedforsecurity=False).digest()
    request.headers["Content-MD5"] = base64.b64encode(digest).decode()
