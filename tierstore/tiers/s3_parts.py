"""Multipart uploads: a stream of buffers re-cut into parts and sent as one upload.

Every part of an upload but the last has one size, as some stores want
(:mod:`tierstore.tiers.s3_limits`): the caller picks it, from the object's length when
known. An upload is refused past S3's 10,000 parts. Up to ``upload_parallelism`` parts
are sent at once (one request each, on threads of the upload's own), while the
caller's thread cuts the next: one connection to an object store rarely carries more
than a fraction of its bandwidth. The stream is never joined in memory: the parts in
flight, the part being cut and the chunks it is cut from are held, and each part's
bytes are copied once. An upload that
fails at any point is aborted, so no orphaned parts are left to cost storage; one
whose abort failed too (the archive down) is handed to ``left_open``, and the tier
aborts it once the archive answers again; one whose process was killed is aborted
when a store next opens on the prefix (``S3Tier.abort_incomplete_uploads``).

A completion counts only once the store has said so and the object is there: an
answer cut short is asked for again; a 200 without the upload's result (an empty
body, or a store that leaves the ETag out) is not. An answer that does not settle it
(that 200, or any to a completion sent again) is checked with a HEAD before the put
returns: the key must hold the upload's object (:func:`_check_object`). An upload
whose completion may have landed is not aborted at once when the put fails: it goes
to ``left_open``, for an abort once a later request goes through.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future, wait
from functools import partial
from typing import TYPE_CHECKING, Final, TypeVar

from botocore.exceptions import ClientError

from tierstore.errors import ArchiveUnavailable, InvalidArgument
from tierstore.tiers import s3_limits
from tierstore.tiers.s3_connection import S3Settings
from tierstore.tiers.s3_retry import (
    WrongAnswer,
    call_with_retries,
    head_object,
    is_missing_upload,
    is_transient,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

__all__ = ["fixed_parts", "multipart_etag", "put_multipart"]

_MD5_HEX: Final = re.compile(r"[0-9a-f]{32}")
#: a multipart object's ETag on most stores: ``-`` and the count of its parts at the end
_PART_COUNT: Final = re.compile(r".+-([0-9]+)")

T = TypeVar("T")


def fixed_parts(chunks: Iterable[memoryview], size: int) -> Iterator[bytes]:
    """Re-cut a stream of chunks into parts of exactly ``size`` bytes (the last may be shorter).

    Each part is built with one copy of its bytes (a join of views into the chunks,
    which also skips the zero-fill a preallocated buffer would need). Holds the
    chunks that make up the part being built: at most one part plus two chunks of
    the stream. Never yields an empty part.
    """
    pieces: list[memoryview] = []
    filled = 0
    for chunk in chunks:
        position = 0
        while len(chunk) - position >= size - filled:
            end = position + size - filled
            pieces.append(chunk[position:end])
            position = end
            yield b"".join(pieces)
            pieces.clear()
            filled = 0
        if position < len(chunk):
            pieces.append(chunk[position:])
            filled += len(chunk) - position
    if filled:
        yield b"".join(pieces)


def put_multipart(
    client: S3Client,
    settings: S3Settings,
    full_key: str,
    parts: Iterable[bytes],
    left_open: Callable[[str, str], None] = lambda key, upload_id: None,
    size: int | None = None,
) -> None:
    """Upload ``parts``, in order, as one multipart upload of ``full_key``, sending up
    to ``settings.upload_parallelism`` of them at once. ``parts`` is consumed on the
    calling thread only (it may read thread-bound state, such as a read transaction).

    Aborts the upload on any failure (after the parts in flight end their current
    attempt: none is tried again, and no new part is sent once a failure is seen), then
    re-raises it; an upload whose abort fails too, or whose completion may have landed
    (an abort now could race it), is given to ``left_open(full_key, upload_id)``, for
    an abort later. Returns once the store answered the completion 200 with its ETag
    at the first try, or else a HEAD found the upload's object at the key, holding
    every byte of ``parts``. Raises ArchiveUnavailable, and
    InvalidArgument past 10,000 parts (naming :class:`SizedStream
    <tierstore.tiers.base.SizedStream>`, which sizes the parts to fit) and when
    ``parts`` do not hold ``size`` bytes (given: the length the parts were sized by).
    Thread-safe.
    """
    bucket = settings.bucket
    what = f"multipart PUT {bucket}/{full_key}"

    def create() -> str:
        # An upload made whose answer was lost is left open: aborted when a store next
        # opens on the prefix, as a killed node's are.
        created = client.create_multipart_upload(Bucket=bucket, Key=full_key)
        if "UploadId" not in created:
            raise WrongAnswer("a 200 answer without its UploadId")
        return created["UploadId"]

    upload_id = call_with_retries(settings, what, create)

    def upload(number: int, part: bytes) -> str:
        answer = client.upload_part(
            Bucket=bucket, Key=full_key, UploadId=upload_id, PartNumber=number, Body=part
        )
        if "ETag" not in answer:  # the completion needs it: send the part again
            raise WrongAnswer("a 200 answer without its ETag")
        return answer["ETag"]

    def send(number: int, part: bytes) -> CompletedPartTypeDef:
        sent = partial(upload, number, part)
        etag = call_with_retries(settings, f"{what} part {number}", sent, give_up=failed)
        return {"ETag": etag, "PartNumber": number}

    in_flight: set[Future[CompletedPartTypeDef]] = set()
    #: set once the upload fails: the parts in flight stop retrying
    failed = threading.Event()
    total = 0  # bytes sent, which the completed object must hold
    completions = 0
    #: a completion was sent and not refused outright: the upload may be completed, and
    #: an abort sent now could race a completion the store is still carrying out
    maybe_completed = False

    def complete(parts: list[CompletedPartTypeDef]) -> bool:
        """Whether the store's answer settles it (else a HEAD must)."""
        nonlocal completions, maybe_completed
        completions += 1
        try:
            answer = client.complete_multipart_upload(
                Bucket=bucket, Key=full_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except ClientError as exc:
            # A completion tried again after one whose answer was lost: the first may
            # have landed, and the store then forgets the upload (the HEAD decides).
            if completions > 1 and is_missing_upload(exc):
                return False
            maybe_completed = maybe_completed or is_transient(exc)
            raise
        except BaseException:  # no answer, or one cut short: it may have landed
            maybe_completed = True
            raise
        maybe_completed = True
        # botocore reads an error only from a body: a 200 whose body was lost after its
        # headers parses as an empty result (a cut body is refused before that, and
        # asked again: the body may have held an error). One with no result at all, or
        # without the ETag (a store that leaves it out), is the store's 200, the upload
        # likely completed: not asked again, nor aborted; the HEAD below decides. So
        # does one answering a completion sent again (the first's answer lost).
        return completions == 1 and bool(answer.get("ETag"))

    try:
        done: list[CompletedPartTypeDef] = []

        def collect(when: str, timeout: float | None = None) -> None:
            finished, _ = wait(in_flight, timeout, return_when=when)
            for future in finished:
                in_flight.discard(future)
                done.append(future.result())  # a failed part raises here

        for number, part in enumerate(parts, start=1):
            if number > s3_limits.MAX_PARTS:
                raise InvalidArgument(
                    f"{what}: over {s3_limits.MAX_PARTS:,} parts of {len(part):,} bytes; "
                    "give its length (a SizedStream) or raise the part size"
                )
            total += len(part)
            if settings.upload_parallelism == 1:
                done.append(send(number, part))  # on this thread: no second one cutting
                continue
            # A part that failed meanwhile ends the upload before another is sent.
            collect(FIRST_EXCEPTION, timeout=0)
            if len(in_flight) >= settings.upload_parallelism:
                collect(FIRST_COMPLETED)
            in_flight.add(_in_background(partial(send, number, part), f"s3-part-{number}"))
        while in_flight:
            collect(FIRST_EXCEPTION)  # every part sent, or the first that failed
        if size is not None and total != size:  # the parts were sized by a wrong length
            raise InvalidArgument(f"{what}: the value holds {total:,} bytes, not its {size:,}")
        done.sort(key=lambda item: item["PartNumber"])
        settled = call_with_retries(settings, f"{what} complete", partial(complete, done))
    except BaseException as exc:
        failed.set()  # no part in flight starts another attempt
        wait(in_flight)  # a part still being sent would otherwise land after the abort
        if maybe_completed:
            exc.add_note(
                f"multipart upload {upload_id} is aborted later: its completion may have landed"
            )
            left_open(full_key, upload_id)
            raise
        try:
            call_with_retries(
                settings,
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
            left_open(full_key, upload_id)
        raise
    if settled:
        return
    etags = [part["ETag"] for part in done]
    check = partial(_check_object, client, bucket, full_key, total, etags)
    try:
        call_with_retries(settings, f"{what} HEAD", check)
    except ArchiveUnavailable:
        # The completion may yet land, or may never have: an abort once a later request
        # goes through ends the upload either way (a completed one is NoSuchUpload).
        left_open(full_key, upload_id)
        raise


def multipart_etag(part_etags: Sequence[str]) -> str | None:
    """The ETag S3 gives the object an upload of parts with ``part_etags`` (as the store
    answered them) makes: the hex MD5 of their binary digests back to back, then ``-``
    and their count. None unless every part's ETag is an MD5 in hex (a store whose part
    ETags are something else may well make its objects' otherwise). Pure."""
    digests = [etag.strip('"').lower() for etag in part_etags]
    if not digests or not all(_MD5_HEX.fullmatch(digest) for digest in digests):
        return None
    joined = b"".join(bytes.fromhex(digest) for digest in digests)
    return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(digests)}"


def _check_object(
    client: S3Client, bucket: str, full_key: str, expected: int, part_etags: Sequence[str]
) -> None:
    """WrongAnswer unless ``full_key`` (one HEAD) is the object the upload of parts with
    ``part_etags``, ``expected`` bytes in all, made: for a completion whose answer did
    not settle it (a 200 without its result, or a completion sent again, perhaps
    answered NoSuchUpload), the upload may or may not have landed, and an older object
    may be at the key.

    Compared: the size; where the store's part ETags are MD5s (S3's, and most stores'),
    the object's ETag with :func:`multipart_etag` (an older object at the key, or a
    single PUT's, has another); else, where the object's ETag ends in ``-N`` (a
    multipart object's on most stores), N with the count of parts. An opaque ETag is
    not compared: a store that makes them would fail every such check.
    """
    head = head_object(client, bucket, full_key)
    if head is None or head.size != expected:
        found = "is missing" if head is None else f"holds {head.size} bytes"
        raise WrongAnswer(f"completed, but the object {found}, not the {expected} bytes sent")
    # A proxy may mark the tag weak (W/"..."); the tag itself is what is compared.
    etag = head.etag.removeprefix("W/").strip('"').lower()
    ours = multipart_etag(part_etags)
    if ours is not None:
        matches = etag == ours
    else:
        count = _PART_COUNT.fullmatch(etag)
        matches = count is None or int(count[1]) == len(part_etags)
    if not matches:
        raise WrongAnswer(
            f"completed, but the object's ETag {head.etag or 'none'} is not the upload's "
            f"({ours or f'-{len(part_etags)}'}): another object at the key"
        )


def _in_background(work: Callable[[], T], name: str) -> Future[T]:
    """``work()`` on a daemon thread of its own; its outcome in the future returned.
    Not a ThreadPoolExecutor: the interpreter joins those workers at exit, and a part
    sent to a frozen archive then held a stopping process for minutes (its time-outs
    and retries), after the store had closed."""
    future: Future[T] = Future()
    future.set_running_or_notify_cancel()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:  # handed to whoever waits on the part
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
