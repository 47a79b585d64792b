"""The S3 archive tier: any S3-compatible object store, through boto3.

Contract highlights (beyond :class:`tierstore.tiers.base.Tier`):

* **Missing vs unavailable.** Only the store saying the key does not exist
  (``NoSuchKey``, or a bodyless 404 that is the store's, to a HEAD or a DELETE) is
  "missing" (``None``; a DELETE is done).
  Connection errors, timeouts, 5xx, 408/429 and throttling answers are retried
  with exponential backoff and jitter (``tenacity``); when ``max_attempts`` are
  spent they raise :class:`ArchiveUnavailable` chained to the last error. Any
  other error answer (403, a missing bucket on GET, ...) raises
  :class:`ArchiveUnavailable` at once. A 5xx is never reported as missing.
  The policy lives in :mod:`tierstore.tiers.s3_retry`.
* **Ranges** follow :func:`resolve_range` exactly; the store's 416 answer is
  turned into the same result with one HEAD.
* **Large writes** stream as multipart uploads of parts of one size (aborted on any
  failure), so an iterable of buffers is never joined in memory
  (:mod:`tierstore.tiers.s3_parts`): ``multipart_part_size``, or for a value of known
  length (one buffer, a :class:`SizedStream`) too large for 10,000 such parts, a
  10,000th of it (:func:`tierstore.tiers.s3_limits.part_size_for`).
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

import base64
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from functools import partial
from itertools import chain
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from botocore.exceptions import ClientError

from tierstore.errors import ArchiveUnavailable, InvalidArgument, InvalidRange, StoreClosed
from tierstore.tiers.base import (
    BytesLike,
    ListPage,
    ObjectStat,
    SizedStream,
    byte_view,
    resolve_range,
    value_chunks,
)
from tierstore.tiers.s3_connection import MiB, ProcessState, S3Settings, aliased_path, new_client
from tierstore.tiers.s3_limits import MAX_DELETE_KEYS, part_size_for
from tierstore.tiers.s3_parts import fixed_parts, put_multipart
from tierstore.tiers.s3_retry import (
    WrongAnswer,
    call_with_retries,
    check_body_length,
    error_code,
    head_size,
    http_status,
    is_marked_404,
    is_missing_key,
    is_missing_upload,
    refused_delete,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.literals import BucketLocationConstraintType

__all__ = ["MiB", "S3Settings", "S3Tier"]

log = logging.getLogger(__name__)

_MAX_LIST_KEYS: Final = 1000
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

T = TypeVar("T")


class _NoBatchDeletes(Exception):
    """The store does not implement DeleteObjects (it answered 501)."""


class _Unsatisfiable:
    """Marker: the store answered 416 to a ranged GET."""


_UNSATISFIABLE: Final = _Unsatisfiable()


class S3Tier:
    """A ``Tier`` over one bucket (and key prefix) of an S3-compatible store.

    Thread-safe. Fork-safe in the sense that a child process builds its own
    client on first use and never touches the parent's.
    """

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._closed = False
        self._process: ProcessState | None = None
        #: False once the store answered DeleteObjects 501 (see delete_many)
        self._batch_deletes = True

    def __getstate__(self) -> dict[str, Any]:
        # Only settings travel: a client or pool must never cross processes.
        return {"settings": self.settings, "closed": self._closed}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.settings = state["settings"]
        self._closed = state["closed"]
        self._process = None
        self._batch_deletes = True

    def __repr__(self) -> str:
        s = self.settings
        return f"S3Tier({s.endpoint_url}/{s.bucket}/{s.prefix})"

    # Plumbing.

    def _state(self) -> ProcessState:
        if self._closed:
            raise StoreClosed(f"{self!r} is closed")
        state = self._process
        if state is None or state.pid != os.getpid():
            # Two threads racing here may both build a client; one is kept and
            # the other dropped, which is harmless. No lock: a lock held by
            # another thread at fork() time would stay held in the child.
            client = new_client(self.settings)
            client.meta.events.register("before-parse.s3", check_body_length)
            state = ProcessState(os.getpid(), client)
            self._process = state
        return state

    def _client(self) -> S3Client:
        return self._state().client

    def _key(self, key: str) -> str:
        """The object key for ``key``; refuses keys a filer-backed store would alias.

        An empty, ``.`` or ``..`` segment (which includes a trailing ``/``) names
        a directory or a normalised path in SeaweedFS and S3 consoles, not an
        object; SeaweedFS lists a backslash as ``/``, so a listing named another key.
        """
        if aliased_path(key):
            raise InvalidArgument(
                f"S3 tier keys may not have empty, '.' or '..' segments or a backslash: {key!r}"
            )
        return self.settings.prefix + key

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with retries; translate what escapes (see :mod:`.s3_retry`)."""
        return call_with_retries(self.settings, what, fn)

    # The Tier protocol.

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> memoryview | None:
        """Return the value or ``byte_range`` = ``(offset, length)`` of it; ``None`` if absent.

        One GET (ranged when ``byte_range`` is given); a HEAD is added for a
        zero-length range, when the store answers 416, when it ignores the range and
        sends a whole object that ends before the range does, and when a whole object
        comes neither with a Content-Length nor chunked, its body ended only by the
        connection's close (one cut short on the way is asked for again, not taken for
        the object's end). Raises
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
            if is_missing_key(exc):
                return None
            if http_status(exc) == 416 or error_code(exc) == "InvalidRange":
                return _UNSATISFIABLE
            raise
        body = response["Body"].read()
        if byte_range is None:
            headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            if "content-length" not in headers and not chunked:
                # No length to check the body against (botocore checks one it has): a
                # body ended by the connection's close looks whole when cut short. A
                # chunked one ends with its last, empty chunk, which urllib3 insists on.
                self._check_whole_body(client, full_key, None, len(body))
            return memoryview(body)
        if response["ResponseMetadata"]["HTTPStatusCode"] != 206:
            # The store ignored the Range header and sent the whole object.
            if sum(byte_range) > len(body):
                self._check_whole_body(client, full_key, byte_range, len(body))
            start, stop = resolve_range(len(body), byte_range)
            return memoryview(body)[start:stop]
        self._check_content_range(full_key, byte_range, response.get("ContentRange", ""), len(body))
        return memoryview(body)

    def _check_whole_body(
        self, client: S3Client, full_key: str, byte_range: tuple[int, int] | None, received: int
    ) -> None:
        """Refuse a whole-object answer shorter than the object (one HEAD): a body cut
        short on the way, with a Content-Length to match (or none), would otherwise clip
        the range as if the object ended there, or be handed out as the whole object
        (``byte_range`` None). WrongAnswer, which the retries try again."""
        size = head_size(client, self.settings.bucket, full_key)  # None: gone since the GET
        if size != received:
            found = "is gone" if size is None else f"has {size}"
            asked = "the whole object" if byte_range is None else f"range {byte_range}"
            raise WrongAnswer(
                f"asked for {asked}, the store sent "
                f"{received} bytes of the whole object, and the object {found}"
            )

    def _check_content_range(
        self, full_key: str, byte_range: tuple[int, int], header: str, received: int
    ) -> None:
        """Refuse a partial answer that is not the range asked for (never hand out wrong
        bytes): WrongAnswer, which the request's retries try again."""
        offset, length = byte_range
        match = _CONTENT_RANGE.fullmatch(header)
        if match is not None:
            first, last = int(match[1]), int(match[2])
            total = int(match[3]) if match[3] != "*" else None
            stop = offset + length if total is None else min(offset + length, total)
            expected_last = stop - 1
            if first == offset and last == expected_last and received == last - first + 1:
                return
        raise WrongAnswer(
            f"asked for range {byte_range}, got Content-Range {header!r} with {received} bytes"
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
        before it) is one PUT; anything larger streams as a multipart upload whose
        parts (but the last) are all one size: ``multipart_part_size``, or for a value
        whose length is known up front (one buffer, or a :class:`SizedStream`) and
        that needs more than 10,000 such parts, the least whole number of MiB that
        fits it in 10,000 (at most 5 GiB). It holds about one threshold of bytes, or
        ``upload_parallelism`` + 1 parts, in memory. A failed multipart upload is
        aborted. Durable when it returns.
        Raises :class:`ArchiveUnavailable`; :class:`InvalidArgument` up front for a
        value of known length over 10,000 parts of 5 GiB, for an iterable of unknown
        length once it runs past 10,000 parts (give its length: a SizedStream), and
        for a SizedStream that does not hold its size; :class:`TypeError` for a
        value not made of buffers; :class:`StoreClosed` after ``close``. Thread-safe.
        """
        state = self._state()
        client = state.client
        s = self.settings
        full_key = self._key(key)
        # An earlier put of this key whose completion may still land (its answer lost)
        # is aborted first, or it could replace this put's object after it.
        self._abort_left_open(state, only=full_key)
        single = byte_view(value)
        if single is not None and single.nbytes < s.multipart_threshold:
            data = value if isinstance(value, bytes) else single.tobytes()
            self._put_small(client, full_key, data)
            self._abort_left_open(state)
            return
        length = (
            single.nbytes
            if single is not None
            else value.size
            if isinstance(value, SizedStream)
            else None
        )
        # One part size for the whole upload (some stores refuse parts of two sizes).
        part_size = (
            s.multipart_part_size
            if length is None
            else part_size_for(length, s.multipart_part_size)
        )
        parts = fixed_parts(value_chunks(value), part_size)
        head: list[bytes] = []
        size = 0
        for part in parts:
            head.append(part)
            size += len(part)
            if size >= s.multipart_threshold:
                break
        else:
            if length is not None and size != length:
                raise InvalidArgument(
                    f"PUT {s.bucket}/{full_key}: the value holds {size:,} bytes, not its {length:,}"
                )
            self._put_small(client, full_key, b"".join(head))
            self._abort_left_open(state)
            return

        def left_open(key: str, upload_id: str) -> None:
            with state.lock:
                state.left_open.add((key, upload_id))

        put_multipart(client, self.settings, full_key, chain(head, parts), left_open, length)
        self._abort_left_open(state)

    def _abort_left_open(self, state: ProcessState, only: str | None = None) -> None:
        """Abort the failed multipart uploads left open (their abort failed, the archive
        down, or their completion may still land), now that a put or delete went
        through, or (``only``: those of that key) before a put of their key: their
        parts cost storage, unseen, until a store next opened on the prefix. One that
        fails again is kept for the next."""
        with state.lock:
            if only is None:
                left, state.left_open = state.left_open, set()
            else:
                left = {entry for entry in state.left_open if entry[0] == only}
                state.left_open -= left
        if not left:
            return
        bucket = self.settings.bucket
        for full_key, upload_id in left:
            try:
                self._call(
                    f"ABORT upload {bucket}/{full_key}",
                    partial(_abort_upload, state.client, bucket, full_key, upload_id),
                )
            except ArchiveUnavailable as exc:
                log.warning("multipart upload %s left open for now: %s", upload_id, exc)
                with state.lock:
                    state.left_open.add((full_key, upload_id))

    def _put_small(self, client: S3Client, full_key: str, data: bytes) -> None:
        bucket = self.settings.bucket
        # The body's MD5, so that the store refuses a body cut short. Over loopback the
        # body is not signed, and SeaweedFS stored a PUT whose client was killed after
        # its headers as an empty object, in place of the old one: manifests and
        # dataset records are rewritten in place (a key rotation), and were lost so.
        # Multipart parts go without: nothing is replaced until the upload completes.
        digest = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        put = partial(client.put_object, Bucket=bucket, Key=full_key, Body=data, ContentMD5=digest)
        self._call(f"PUT {bucket}/{full_key}", put)

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error. Raises :class:`ArchiveUnavailable`."""
        state = self._state()
        client = state.client
        bucket, full_key = self.settings.bucket, self._key(key)

        def delete_once() -> None:
            try:
                client.delete_object(Bucket=bucket, Key=full_key)
            except ClientError as exc:
                # S3 answers 204 for a missing key; some stores 404 NoSuchKey, or a
                # bodyless 404 with their request id. Any other 404 (a gateway's page)
                # is not the store's: nothing was deleted.
                if not (is_missing_key(exc) or is_marked_404(exc)):
                    raise

        self._call(f"DELETE {bucket}/{full_key}", delete_once)
        # A shard deleted while its upload waited for the archive: no put may follow.
        self._abort_left_open(state)

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove every key of ``keys`` (missing ones are no error) by DeleteObjects, up
        to 1,000 keys a request, each request retried as any other. A key the store
        refused in its answer fails the request as an error answer would: retried if
        its code is transient (``InternalError``, ``SlowDown``), ArchiveUnavailable
        naming it otherwise. A store that answers DeleteObjects 501 (not implemented)
        gets one DELETE a key, from then on. Not atomic (see the protocol)."""
        state = self._state()
        client = state.client
        bucket = self.settings.bucket
        full_keys = [self._key(key) for key in keys]  # every key checked before any request
        for start in range(0, len(full_keys), MAX_DELETE_KEYS):
            batch = full_keys[start : start + MAX_DELETE_KEYS]

            def delete_batch(batch: list[str] = batch) -> None:
                objects: Any = [{"Key": key} for key in batch]
                try:
                    answer = client.delete_objects(
                        Bucket=bucket, Delete={"Objects": objects, "Quiet": True}
                    )
                except ClientError as exc:
                    if http_status(exc) == 501 or error_code(exc) == "NotImplemented":
                        raise _NoBatchDeletes from exc  # not retried
                    raise
                refused = refused_delete(answer, len(batch))
                if refused is not None:
                    raise refused

            if self._batch_deletes:
                try:
                    self._call(
                        f"DELETE {len(batch)} keys from {bucket}/{batch[0]}...", delete_batch
                    )
                    continue
                except _NoBatchDeletes:
                    log.warning(
                        "archive %s does not implement DeleteObjects: one DELETE a key",
                        self.settings.endpoint_url,
                    )
                    self._batch_deletes = False
            for key in keys[start:]:
                self.delete(key)
            return
        if full_keys:
            self._abort_left_open(state)  # as after a delete

    def stat(self, key: str) -> ObjectStat | None:
        """Return the size of ``key`` (one HEAD), or ``None`` if absent. Thread-safe.

        A HEAD answer has no body, so a missing bucket also reads as ``None``
        here; :meth:`ensure_bucket` at start-up rules that out.
        """
        client = self._client()
        bucket, full_key = self.settings.bucket, self._key(key)

        def head_once() -> ObjectStat | None:
            size = head_size(client, bucket, full_key)
            return None if size is None else ObjectStat(key=key, size=size)

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
        response = self._call(what, partial(_listed, client.list_objects_v2, request, "Contents"))
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
                if http_status(exc) == 404:
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
                if error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        if not self._call(f"HEAD bucket {s.bucket}", exists):
            self._call(f"CREATE bucket {s.bucket}", create)

    def abort_incomplete_uploads(self, ours: Callable[[str], bool]) -> int:
        """Abort the multipart uploads under this tier's prefix whose keys (without the
        prefix) ``ours`` accepts; returns how many.

        For a store opening, before its mover starts: an upload is aborted when it
        fails, but one whose process was killed (or whose archive went down before the
        abort) stays, its parts costing storage for good. ``ours`` keeps others' uploads
        safe where the prefix is shared: the empty prefix, or ``team-a`` listing
        ``team-ab/...`` too. Call it only while none of our uploads under the prefix is
        in flight (one node per prefix). Raises :class:`ArchiveUnavailable` when the
        archive fails. Thread-safe.
        """
        client = self._client()
        s = self.settings
        aborted = 0
        key_marker = upload_marker = ""
        while True:
            request = {
                "Bucket": s.bucket,
                "Prefix": s.prefix,
                "KeyMarker": key_marker,
                "UploadIdMarker": upload_marker,
            }
            page = self._call(
                f"LIST uploads {s.bucket}/{s.prefix}",
                partial(_listed, client.list_multipart_uploads, request, "Uploads", "UploadId"),
            )
            for upload in page.get("Uploads", []):
                key, upload_id = upload["Key"], upload["UploadId"]
                if not ours(key[len(s.prefix) :]):
                    continue
                self._call(
                    f"ABORT upload {s.bucket}/{key}",
                    partial(_abort_upload, client, s.bucket, key, upload_id),
                )
                aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            markers = (page.get("NextKeyMarker", ""), page.get("NextUploadIdMarker", ""))
            if markers == (key_marker, upload_marker):  # a page that leads nowhere
                raise ArchiveUnavailable(f"LIST uploads {s.bucket}: a truncated page going nowhere")
            key_marker, upload_marker = markers

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


def _abort_upload(client: Any, bucket: str, key: str, upload_id: str) -> None:
    """Abort multipart upload ``upload_id`` of ``key``; one the store no longer has
    (NoSuchUpload) is done: a retry after an abort whose answer was lost meets that
    (the start's pass failed for it, on a store that says so), and so does an upload
    another aborted or completed since it was listed."""
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        if not is_missing_upload(exc):
            raise


def _listed(
    list_once: Callable[..., Any], request: dict[str, Any], items: str, *fields: str
) -> Any:
    """``list_once(**request)``'s page, WrongAnswer unless it has the fields every
    listing has, and each of its ``items`` a ``Key`` and ``fields``: an answer whose
    body was lost parses as ``{}``, which read as a last page with no keys (a rebuild
    restored part of a catalog, and a start took a lost hot tier for a new node's over
    an archive it found empty)."""
    page = list_once(**request)
    if "IsTruncated" not in page or not ({"Name", "Bucket"} & page.keys()):
        raise WrongAnswer("a listing answer without its IsTruncated and bucket name")
    listed = page.get(items, [])
    if "KeyCount" in page and page["KeyCount"] != len(listed):
        raise WrongAnswer(
            f"a listing answer counting {page['KeyCount']} keys and holding {len(listed)}"
        )
    needed = ("Key", *fields)
    if any(name not in item for item in listed for name in needed):
        raise WrongAnswer(f"a listing answer with an entry without its {' or '.join(needed)}")
    return page
