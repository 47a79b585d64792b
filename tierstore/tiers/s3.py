"""The S3 archive tier: any S3-compatible object store, through boto3.

Contract highlights (beyond :class:`tierstore.tiers.base.Tier`):

* **Missing vs unavailable.** Only a 404 for the key is "missing" (``None``).
  Connection errors, timeouts, 5xx, 408/429 and throttling answers are retried
  with exponential backoff and jitter (``tenacity``); when ``max_attempts`` are
  spent they raise :class:`ArchiveUnavailable` chained to the last error. Any
  other error answer (403, a missing bucket on GET, ...) raises
  :class:`ArchiveUnavailable` at once. A 5xx is never reported as missing.
* **Ranges** follow :func:`resolve_range` exactly; the store's 416 answer is
  turned into the same result with one HEAD.
* **Large writes** stream as multipart uploads of ``multipart_part_size`` parts
  (aborted on any failure), so an iterable of buffers is never joined in memory.
* **Fork and thread safety.** boto3 clients are thread-safe but must not cross
  ``fork()`` (a child sharing the parent's pooled connections can read the
  other's bytes). The client and the thread pool are therefore created lazily
  per process id and rebuilt in a child; a pickled tier carries only settings.

Keys are stored under ``settings.prefix`` (usually ending in ``/``); keys given
to and returned by the tier are relative to it. Listing order is the store's:
byte order on AWS S3, but SeaweedFS (a filer) orders by ``/``-separated path
segment, which differs when a segment is compared with a character below ``/``
(e.g. ``"a.b"`` vs ``"a/b"``). Pagination with ``next_start_after`` is complete
either way.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import boto3
import botocore.config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from tierstore.errors import ArchiveUnavailable, InvalidArgument, InvalidRange, StoreClosed
from tierstore.tiers.base import (
    BytesLike,
    ListPage,
    ObjectStat,
    byte_view,
    resolve_range,
    value_chunks,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.literals import BucketLocationConstraintType
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

__all__ = ["MiB", "S3Settings", "S3Tier"]

MiB: Final = 1024 * 1024
_MIN_PART_SIZE: Final = 5 * MiB  # S3's minimum for every part but the last
_MAX_PARTS: Final = 10_000
_MAX_LIST_KEYS: Final = 1000
_RETRYABLE_CODES: Final = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
    }
)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class S3Settings:
    """Where the archive lives and how hard to try. Validated on construction.

    Raises :class:`InvalidArgument` for a bucket name outside 3-63 characters,
    ``max_attempts < 1``, a part size under 5 MiB, or non-positive sizes and
    timeouts.
    """

    endpoint_url: str
    bucket: str
    prefix: str = ""
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str = "us-east-1"
    max_attempts: int = 5
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    max_pool_connections: int = 32
    multipart_threshold: int = 16 * MiB
    multipart_part_size: int = 8 * MiB
    #: First retry backoff; it doubles per attempt (plus up to this much jitter).
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        if not 3 <= len(self.bucket) <= 63:
            raise InvalidArgument(f"bucket name must be 3-63 characters, got {self.bucket!r}")
        if self.max_attempts < 1:
            raise InvalidArgument(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.multipart_part_size < _MIN_PART_SIZE:
            raise InvalidArgument(f"multipart_part_size must be at least {_MIN_PART_SIZE} bytes")
        positive = {
            "connect_timeout_s": self.connect_timeout_s,
            "read_timeout_s": self.read_timeout_s,
            "max_pool_connections": self.max_pool_connections,
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


class _Unsatisfiable:
    """Marker: the store answered 416 to a ranged GET."""


_UNSATISFIABLE: Final = _Unsatisfiable()


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _is_missing_key(exc: ClientError) -> bool:
    """A 404 about the key. (A HEAD carries no body, so a missing bucket looks the same.)"""
    return _status(exc) == 404 and _code(exc) != "NoSuchBucket"


def _is_transient(exc: BaseException) -> bool:
    """True for failures that may pass on retry: the network, timeouts, 5xx, throttling."""
    if isinstance(exc, ClientError):
        status = _status(exc)
        return status >= 500 or status in (408, 429) or _code(exc) in _RETRYABLE_CODES
    if isinstance(exc, BotoCoreError):
        # HTTPClientError covers read timeouts, dropped connections and broken
        # bodies; ConnectionError covers refused connections and connect timeouts.
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError, IncompleteReadError

        return isinstance(exc, HTTPClientError | BotoConnectionError | IncompleteReadError)
    return isinstance(exc, ConnectionError | TimeoutError)


def _fixed_parts(chunks: Iterable[memoryview], size: int) -> Iterator[bytes]:
    """Re-cut a stream of chunks into parts of exactly ``size`` bytes (the last may be shorter).

    Holds at most one part in memory besides the chunk being cut. Never yields
    an empty part.
    """
    pending = bytearray()
    for chunk in chunks:
        position = 0
        if pending:
            position = min(size - len(pending), len(chunk))
            pending += chunk[:position]
            if len(pending) < size:
                continue
            yield bytes(pending)
            pending.clear()
        while len(chunk) - position >= size:
            yield chunk[position : position + size].tobytes()
            position += size
        pending += chunk[position:]
    if pending:
        yield bytes(pending)


class _ProcessState:
    """The boto3 client and thread pool of one process; never used after ``fork()``."""

    __slots__ = ("client", "executor", "lock", "pid")

    def __init__(self, pid: int, client: S3Client) -> None:
        self.pid = pid
        self.client = client
        # Created with the state, so a child never inherits it in a locked state.
        self.lock = threading.Lock()
        self.executor: ThreadPoolExecutor | None = None

    def pool(self, workers: int) -> ThreadPoolExecutor:
        with self.lock:
            if self.executor is None:
                self.executor = ThreadPoolExecutor(workers, thread_name_prefix="s3tier")
            return self.executor


class S3Tier:
    """A ``Tier`` over one bucket (and key prefix) of an S3-compatible store.

    Thread-safe. Fork-safe in the sense that a child process builds its own
    client on first use and never touches the parent's.
    """

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._closed = False
        self._process: _ProcessState | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Only settings travel: a client or pool must never cross processes.
        return {"settings": self.settings, "closed": self._closed}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.settings = state["settings"]
        self._closed = state["closed"]
        self._process = None

    def __repr__(self) -> str:
        s = self.settings
        return f"S3Tier({s.endpoint_url}/{s.bucket}/{s.prefix})"

    # Plumbing.

    def _state(self) -> _ProcessState:
        if self._closed:
            raise StoreClosed(f"{self!r} is closed")
        state = self._process
        if state is None or state.pid != os.getpid():
            # Two threads racing here may both build a client; one is kept and
            # the other dropped, which is harmless. No lock: a lock held by
            # another thread at fork() time would stay held in the child.
            state = _ProcessState(os.getpid(), self._new_client())
            self._process = state
        return state

    def _client(self) -> S3Client:
        return self._state().client

    def _new_client(self) -> S3Client:
        s = self.settings
        config = botocore.config.Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # total_max_attempts=1: botocore never retries; _call does (with
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
        return session.client("s3", endpoint_url=s.endpoint_url, config=config)

    def _key(self, key: str) -> str:
        """The object key for ``key``; refuses keys a filer-backed store would alias.

        An empty, ``.`` or ``..`` segment (which includes a trailing ``/``) names
        a directory or a normalised path in SeaweedFS and S3 consoles, not an
        object; such keys are never valid shard names either.
        """
        if any(segment in ("", ".", "..") for segment in key.split("/")):
            raise InvalidArgument(f"S3 tier keys may not have empty, '.' or '..' segments: {key!r}")
        return self.settings.prefix + key

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with retries; translate what escapes into the tierstore error tree."""
        s = self.settings
        retrying = Retrying(
            stop=stop_after_attempt(s.max_attempts),
            # Exponential backoff plus jitter, so that many clients do not retry in step.
            wait=wait_exponential(multiplier=s.backoff_initial_s, max=s.backoff_max_s)
            + wait_random(0, s.backoff_initial_s),
            retry=retry_if_exception(_is_transient),
            reraise=True,
        )
        try:
            return retrying(fn)
        except ClientError as exc:
            code, status = _code(exc), _status(exc)
            if code == "KeyTooLongError":
                raise InvalidArgument(f"{what}: key too long for the archive") from exc
            if code == "NoSuchBucket":
                raise ArchiveUnavailable(
                    f"{what}: bucket {s.bucket!r} does not exist at {s.endpoint_url}"
                ) from exc
            tries = f" after {s.max_attempts} attempts" if _is_transient(exc) else ""
            raise ArchiveUnavailable(
                f"{what}: archive {s.endpoint_url} answered {status} {code}{tries}"
            ) from exc
        except ParamValidationError as exc:
            raise InvalidArgument(f"{what}: {exc}") from exc
        except (BotoCoreError, ConnectionError, TimeoutError) as exc:
            raise ArchiveUnavailable(
                f"{what}: archive {s.endpoint_url} unreachable "
                f"after {s.max_attempts} attempts: {exc}"
            ) from exc

    # The Tier protocol.

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> memoryview | None:
        """Return the value or ``byte_range`` = ``(offset, length)`` of it; ``None`` if absent.

        One GET (ranged when ``byte_range`` is given); a HEAD is added for a
        zero-length range or when the store answers 416. Raises
        :class:`InvalidRange` as :func:`resolve_range` does,
        :class:`ArchiveUnavailable` when the archive fails, and
        :class:`StoreClosed` after ``close``. Thread-safe.
        """
        client = self._client()
        bucket, full_key = self.settings.bucket, self._key(key)
        if byte_range is None:
            what = f"GET {bucket}/{full_key}"
            whole = self._call(what, partial(self._get_once, client, full_key, None))
            if isinstance(whole, _Unsatisfiable):
                raise ArchiveUnavailable(f"{what}: 416 to a request without a range")
            return whole
        offset, length = byte_range
        if offset < 0 or length < 0:
            raise InvalidRange(f"range ({offset}, {length}) has a negative offset or length")
        for _ in range(3):
            if length > 0:
                found = self._call(
                    f"GET {bucket}/{full_key} range {byte_range}",
                    partial(self._get_once, client, full_key, byte_range),
                )
                if not isinstance(found, _Unsatisfiable):
                    return found
            # A zero-length range, or one the store found unsatisfiable: the
            # size decides between an empty read and InvalidRange.
            stat = self.stat(key)
            if stat is None:
                return None
            start, stop = resolve_range(stat.size, byte_range)
            if start == stop:
                return memoryview(b"")
            # The object was replaced by a larger one between the GET and the HEAD.
        raise ArchiveUnavailable(f"GET {bucket}/{full_key}: object kept changing during the read")

    def _get_once(
        self, client: S3Client, full_key: str, byte_range: tuple[int, int] | None
    ) -> memoryview | _Unsatisfiable | None:
        bucket = self.settings.bucket
        try:
            if byte_range is None:
                response = client.get_object(Bucket=bucket, Key=full_key)
            else:
                offset, length = byte_range
                request = f"bytes={offset}-{offset + length - 1}"
                response = client.get_object(Bucket=bucket, Key=full_key, Range=request)
        except ClientError as exc:
            if _is_missing_key(exc):
                return None
            if _status(exc) == 416 or _code(exc) == "InvalidRange":
                return _UNSATISFIABLE
            raise
        body = response["Body"].read()
        if byte_range is None:
            return memoryview(body)
        if response["ResponseMetadata"]["HTTPStatusCode"] != 206:
            # The store ignored the Range header and sent the whole object.
            start, stop = resolve_range(len(body), byte_range)
            return memoryview(body)[start:stop]
        self._check_content_range(full_key, byte_range, response.get("ContentRange", ""), len(body))
        return memoryview(body)

    def _check_content_range(
        self, full_key: str, byte_range: tuple[int, int], header: str, received: int
    ) -> None:
        """Refuse a partial answer that is not the range asked for (never hand out wrong bytes)."""
        offset, length = byte_range
        match = _CONTENT_RANGE.fullmatch(header)
        if match is not None:
            first, last = int(match[1]), int(match[2])
            total = int(match[3]) if match[3] != "*" else None
            stop = offset + length if total is None else min(offset + length, total)
            expected_last = stop - 1
            if first == offset and last == expected_last and received == last - first + 1:
                return
        raise ArchiveUnavailable(
            f"GET {self.settings.bucket}/{full_key}: asked for range {byte_range}, "
            f"got Content-Range {header!r} with {received} bytes"
        )

    def get_many(
        self, key: str, ranges: Sequence[tuple[int, int]], max_workers: int = 8
    ) -> list[memoryview] | None:
        """Fetch several ``(offset, length)`` ranges of one object with parallel ranged GETs.

        Returns the views in the order of ``ranges`` (each clipped at the end of
        the object as :meth:`get` does), or ``None`` if the object is absent
        (also when it disappears part-way). An empty ``ranges`` returns ``[]``
        without contacting the archive. At most ``max_workers`` requests of this
        call run at once, on a pool shared by the tier (sized by
        ``max_pool_connections``). Raises like :meth:`get`; the first failure
        wins and requests not yet started are cancelled. Thread-safe.
        """
        state = self._state()
        if max_workers < 1:
            raise InvalidArgument(f"max_workers must be at least 1, got {max_workers}")
        for offset, length in ranges:
            if offset < 0 or length < 0:
                raise InvalidRange(f"range ({offset}, {length}) has a negative offset or length")
        results: list[memoryview | None] = [None] * len(ranges)
        if max_workers == 1 or len(ranges) == 1:
            for index, byte_range in enumerate(ranges):
                results[index] = self.get(key, byte_range)
                if results[index] is None:
                    return None
            return [view for view in results if view is not None]
        pool = state.pool(self.settings.max_pool_connections)
        todo = iter(enumerate(ranges))
        running: dict[Future[memoryview | None], int] = {}
        try:
            while True:
                for index, byte_range in todo:
                    running[pool.submit(self.get, key, byte_range)] = index
                    if len(running) >= max_workers:
                        break
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    view = future.result()
                    if view is None:
                        return None
                    results[running.pop(future)] = view
        finally:
            for future in running:
                future.cancel()
        return [view for view in results if view is not None]

    def put(self, key: str, value: BytesLike | Iterable[BytesLike]) -> None:
        """Store ``value`` (one buffer or an iterable of buffers, back to back) under ``key``.

        A single buffer under ``multipart_threshold`` (or an iterable that ends
        before it) is one PUT; anything larger streams as a multipart upload of
        ``multipart_part_size`` parts, holding about one threshold of bytes in
        memory. A failed multipart upload is aborted. Durable when it returns.
        Raises :class:`ArchiveUnavailable`, :class:`TypeError` for a value not
        made of buffers, :class:`StoreClosed` after ``close``. Thread-safe.
        """
        client = self._client()
        s = self.settings
        full_key = self._key(key)
        single = byte_view(value)
        if single is not None and single.nbytes < s.multipart_threshold:
            data = value if isinstance(value, bytes) else single.tobytes()
            self._put_small(client, full_key, data)
            return
        parts = _fixed_parts(value_chunks(value), s.multipart_part_size)
        head: list[bytes] = []
        size = 0
        for part in parts:
            head.append(part)
            size += len(part)
            if size >= s.multipart_threshold:
                break
        else:
            self._put_small(client, full_key, b"".join(head))
            return
        self._put_multipart(client, full_key, chain(head, parts))

    def _put_small(self, client: S3Client, full_key: str, data: bytes) -> None:
        bucket = self.settings.bucket
        put = partial(client.put_object, Bucket=bucket, Key=full_key, Body=data)
        self._call(f"PUT {bucket}/{full_key}", put)

    def _put_multipart(self, client: S3Client, full_key: str, parts: Iterable[bytes]) -> None:
        bucket = self.settings.bucket
        what = f"multipart PUT {bucket}/{full_key}"
        create = partial(client.create_multipart_upload, Bucket=bucket, Key=full_key)
        created = self._call(what, create)
        upload_id = created["UploadId"]
        try:
            done: list[CompletedPartTypeDef] = []
            for number, part in enumerate(parts, start=1):
                if number > _MAX_PARTS:
                    raise InvalidArgument(f"{what}: over {_MAX_PARTS} parts; raise the part size")
                answer = self._call(
                    f"{what} part {number}",
                    partial(
                        client.upload_part,
                        Bucket=bucket,
                        Key=full_key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=part,
                    ),
                )
                done.append({"ETag": answer["ETag"], "PartNumber": number})
            self._call(
                f"{what} complete",
                partial(
                    client.complete_multipart_upload,
                    Bucket=bucket,
                    Key=full_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": done},
                ),
            )
        except BaseException as exc:
            try:
                self._call(
                    f"{what} abort",
                    partial(
                        client.abort_multipart_upload,
                        Bucket=bucket,
                        Key=full_key,
                        UploadId=upload_id,
                    ),
                )
            except ArchiveUnavailable as abort_exc:
                exc.add_note(f"aborting multipart upload {upload_id} also failed: {abort_exc}")
            raise

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error. Raises :class:`ArchiveUnavailable`."""
        client = self._client()
        bucket, full_key = self.settings.bucket, self._key(key)

        def delete_once() -> None:
            try:
                client.delete_object(Bucket=bucket, Key=full_key)
            except ClientError as exc:
                if not _is_missing_key(exc):  # some stores answer 404 instead of 204
                    raise

        self._call(f"DELETE {bucket}/{full_key}", delete_once)

    def stat(self, key: str) -> ObjectStat | None:
        """Return the size of ``key`` (one HEAD), or ``None`` if absent. Thread-safe.

        A HEAD answer has no body, so a missing bucket also reads as ``None``
        here; :meth:`ensure_bucket` at start-up rules that out.
        """
        client = self._client()
        bucket, full_key = self.settings.bucket, self._key(key)

        def head_once() -> ObjectStat | None:
            try:
                response = client.head_object(Bucket=bucket, Key=full_key)
            except ClientError as exc:
                if _is_missing_key(exc):
                    return None
                raise
            return ObjectStat(key=key, size=int(response["ContentLength"]))

        return self._call(f"HEAD {bucket}/{full_key}", head_once)

    def list(self, prefix: str = "", start_after: str | None = None, limit: int = 1000) -> ListPage:
        """One ``list_objects_v2`` page of keys under ``prefix`` after ``start_after``.

        Returns at most ``min(limit, 1000)`` keys, relative to the tier's prefix,
        in the store's order (see the module docstring); ``next_start_after`` is
        set while the store reports more. Raises :class:`InvalidArgument` for
        ``limit < 1`` and :class:`ArchiveUnavailable`. Thread-safe.
        """
        if limit < 1:
            raise InvalidArgument(f"list limit must be at least 1, got {limit}")
        client = self._client()
        s = self.settings
        request: dict[str, Any] = {
            "Bucket": s.bucket,
            "Prefix": s.prefix + prefix,
            "MaxKeys": min(limit, _MAX_LIST_KEYS),
        }
        if start_after is not None:
            request["StartAfter"] = s.prefix + start_after
        what = f"LIST {s.bucket}/{request['Prefix']}"
        response = self._call(what, partial(client.list_objects_v2, **request))
        keys = tuple(item["Key"][len(s.prefix) :] for item in response.get("Contents", []))
        if not response.get("IsTruncated", False):
            return ListPage(keys, None)
        if not keys:
            # Returning None here would silently end the listing early.
            raise ArchiveUnavailable(f"LIST {s.bucket}: a truncated page with no keys")
        return ListPage(keys, keys[-1])

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (idempotent, safe to race). Thread-safe.

        Raises :class:`ArchiveUnavailable` when the archive fails or refuses.
        """
        client = self._client()
        s = self.settings

        def exists() -> bool:
            try:
                client.head_bucket(Bucket=s.bucket)
            except ClientError as exc:
                if _status(exc) == 404:
                    return False
                raise
            return True

        def create() -> None:
            try:
                if s.region == "us-east-1":
                    client.create_bucket(Bucket=s.bucket)
                else:
                    client.create_bucket(
                        Bucket=s.bucket,
                        CreateBucketConfiguration={
                            "LocationConstraint": cast("BucketLocationConstraintType", s.region)
                        },
                    )
            except ClientError as exc:
                if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        if not self._call(f"HEAD bucket {s.bucket}", exists):
            self._call(f"CREATE bucket {s.bucket}", create)

    def close(self) -> None:
        """Close this process's client and pool; later calls raise :class:`StoreClosed`.

        Idempotent. Requests already running finish; queued ``get_many`` reads
        are cancelled.
        """
        self._closed = True
        state, self._process = self._process, None
        if state is not None and state.pid == os.getpid():
            if state.executor is not None:
                state.executor.shutdown(wait=True, cancel_futures=True)
            state.client.close()
