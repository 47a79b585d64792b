"""How S3 failures are classified and retried, and how they become tierstore errors.

* **Missing**: only the store saying so: S3's ``NoSuchKey`` (``NoSuchUpload`` for an
  upload), or a bodyless 404 carrying the store's request id (:func:`is_marked_404`)
  to a HEAD (:func:`head_size`) or a DELETE (some stores answer a DELETE of a missing
  key so). A 404 without an S3 code or that mark (a gateway's or proxy's page) is
  transient, never missing. Caveat: a HEAD's 404 for a missing bucket carries the
  request id too and cannot be told from a missing key's, so a stat reads a missing
  bucket as a missing key (the tier's ``ensure_bucket`` at start-up rules that out; a
  GET, which has a body, says ``NoSuchBucket``). A DELETE's so read is harmless: a
  missing bucket holds no key either.
* **Transient**: connection errors, timeouts, 5xx, 408/429 and throttling codes, and
  answers that are not what was asked for (:class:`WrongAnswer`): one whose body is
  not as long as its Content-Length (:func:`check_body_length`), a listing or a
  completion without the fields every real one has.
  They are retried with exponential backoff and jitter (``tenacity``) up to the
  settings' ``max_attempts``, no attempt after the second starting past its
  ``retry_budget_s``, then raised as :class:`ArchiveUnavailable`. An archive asking
  to slow down (503, 429, ``SlowDown`` and the other throttling codes) is given a
  longer backoff, from :data:`THROTTLED_BACKOFF_S`: its 0.1 s start let a few
  seconds of throttling fail a read through all its attempts.
* **Anything else** is raised at once: :class:`InvalidArgument` for a key that is
  too long or bad request parameters, :class:`ArchiveUnavailable` for every other
  answer (403, a missing bucket, ...), chained to the original error. A 403 for a
  request signed too far from the archive's clock (``RequestTimeTooSkewed``, or a
  bodyless answer whose ``Date`` is over 15 minutes off) names the clock, not the keys.

botocore's own retries are switched off in the tier's client: this is the one
retry loop, so attempts are counted in one place.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

import botocore.auth
import urllib3.exceptions
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from tierstore.errors import ArchiveUnavailable, InvalidArgument
from tierstore.tiers.s3_connection import S3Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "GaveUp",
    "Head",
    "WrongAnswer",
    "call_with_retries",
    "check_body_length",
    "error_code",
    "head_object",
    "head_size",
    "http_status",
    "is_marked_404",
    "is_missing_key",
    "is_missing_upload",
    "is_throttling",
    "is_transient",
    "refused_delete",
]


class GaveUp(Exception):
    """A request whose caller gave up on it (``call_with_retries``' ``give_up``) before
    it succeeded: not tried again."""


class WrongAnswer(Exception):
    """An answer that is not what was asked for, such as a range cut short on the way
    (with a Content-Length to match): never handed out, and worth another try. Its
    message says what is wrong with the answer; ``call_with_retries`` names the request."""


RETRYABLE_CODES: Final = frozenset(
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

#: The codes of an archive asking its clients to slow down (with 429 and 503).
THROTTLING_CODES: Final = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}
)
#: The first backoff after an archive asked to slow down (doubled per attempt, up to
#: the settings' ``backoff_max_s``).
THROTTLED_BACKOFF_S: Final = 1.0

#: urllib3's errors for an answer's body that broke off or stalled: botocore reads the
#: error body of a streaming operation (a GET's) outside its own error handling, so
#: these reach the tier as they are.
_BODY_BROKEN: Final = (urllib3.exceptions.ProtocolError, urllib3.exceptions.TimeoutError)

#: how far from the archive's clock a request may be signed (S3's limit, SeaweedFS's too).
SKEW_LIMIT_S: Final = 15 * 60

T = TypeVar("T")


def http_status(exc: ClientError) -> int:
    """The HTTP status of an error answer (0 when there is none)."""
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def error_code(exc: ClientError) -> str:
    """The S3 error code of an error answer (empty when there is none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_missing_key(exc: ClientError) -> bool:
    """The store saying the key does not exist (``NoSuchKey``, in a GET's error body, or
    a DELETE's on stores that answer 404 there). Any other 404, such as a gateway's or
    proxy's page with no S3 code, is not: the key may well be there. For a HEAD's
    bodyless answer, see :func:`head_size`."""
    return error_code(exc) == "NoSuchKey"


def is_marked_404(exc: ClientError) -> bool:
    """A 404 without a body (no S3 code: a HEAD's, or a DELETE's on some stores) that
    carries the store's request id (``x-amz-request-id``, on every answer of AWS S3 and
    SeaweedFS): the store's own "not found", not a gateway's or proxy's page."""
    if http_status(exc) != 404 or error_code(exc) not in ("", "404"):
        return False
    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return "x-amz-request-id" in headers


def is_missing_upload(exc: ClientError) -> bool:
    """The store saying the multipart upload does not exist (``NoSuchUpload``): aborted
    or completed already."""
    return error_code(exc) == "NoSuchUpload"


@dataclass(frozen=True, slots=True)
class Head:
    """What a HEAD found of an object: its size, and its ETag as sent (quotes and all;
    empty when the store sent none)."""

    size: int
    etag: str


def head_size(client: S3Client, bucket: str, full_key: str) -> int | None:
    """The size of ``full_key`` (one HEAD, as :func:`head_object`); None when the store
    says it does not exist."""
    head = head_object(client, bucket, full_key)
    return None if head is None else head.size


def head_object(client: S3Client, bucket: str, full_key: str) -> Head | None:
    """The size and ETag of ``full_key`` (one HEAD); None when the store says it does
    not exist.

    A HEAD's answer has no body, so no S3 code: its 404 counts as missing when it
    carries the store's request id (``x-amz-request-id``, on every answer of AWS S3 and
    SeaweedFS). One without it (a gateway's page, or a store that sends no id) is asked
    again as a GET of the key's first byte, whose ``NoSuchKey`` decides. Raises
    ClientError and WrongAnswer (also for a 200 without a Content-Length), for
    :func:`call_with_retries`. Thread-safe.
    """
    try:
        response = client.head_object(Bucket=bucket, Key=full_key)
    except ClientError as exc:
        if http_status(exc) != 404:
            raise
        if not is_marked_404(exc):
            _confirm_missing(client, bucket, full_key)
        return None
    if "ContentLength" not in response:
        raise WrongAnswer("a HEAD answer without its Content-Length")
    return Head(int(response["ContentLength"]), str(response.get("ETag", "")))


def _confirm_missing(client: S3Client, bucket: str, full_key: str) -> None:
    """Return if a GET of ``full_key``'s first byte is answered ``NoSuchKey``; raise
    what else it is answered (WrongAnswer when it finds the key)."""
    try:
        client.get_object(Bucket=bucket, Key=full_key, Range="bytes=0-0")["Body"].close()
    except ClientError as exc:
        if is_missing_key(exc):
            return
        if http_status(exc) != 416:  # 416: an empty object, there after all
            raise
    raise WrongAnswer("a HEAD answered 404 without the store's request id; a GET found the key")


def refused_delete(answer: Any, asked: int) -> ClientError | None:
    """The error of a DeleteObjects ``answer`` (to a request of ``asked`` keys) in which
    the store refused a key, as a ClientError of that key's code, so that it is retried
    and translated as the same code of a whole answer would be; None when every key
    went (a missing key is gone too)."""
    refused = [error for error in answer.get("Errors", []) if error.get("Code") != "NoSuchKey"]
    if not refused:
        return None
    first = refused[0]
    code = str(first.get("Code", ""))
    metadata = dict(answer.get("ResponseMetadata", {}))
    if code == "AccessDenied":  # the keys' rights, which a 403 answer names
        metadata["HTTPStatusCode"] = 403
    message = (
        f"{len(refused)} of {asked} keys refused, the first {first.get('Key')!r}: "
        f"{first.get('Message', '')}"
    )
    error: Any = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": metadata}
    return ClientError(error, "DeleteObjects")


def clock_skew_s(exc: ClientError) -> float | None:
    """For a 403 refusing a request signed too far from the archive's clock: seconds
    the clock requests are signed with is ahead of the archive's (negative: behind),
    from the answer's ``Date`` (0.0 when it has none). None for any other answer."""
    if http_status(exc) != 403:
        return None
    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    skew = None
    try:
        theirs = email.utils.parsedate_to_datetime(headers.get("date", ""))
        # Now by the clock requests are signed with (naive UTC; not in botocore's stubs).
        ours: datetime = botocore.auth.get_current_datetime()  # type: ignore[attr-defined]
        skew = (ours.replace(tzinfo=ours.tzinfo or UTC) - theirs).total_seconds()
    except (TypeError, ValueError):  # no Date, or not one
        pass
    if error_code(exc) == "RequestTimeTooSkewed":
        return 0.0 if skew is None else skew
    # A HEAD's answer has no body, so no code: its Date says it.
    return skew if skew is not None and abs(skew) > SKEW_LIMIT_S else None


def check_body_length(response_dict: dict[str, Any], operation_model: Any, **_: Any) -> None:
    """A botocore ``before-parse`` handler: WrongAnswer for an answer read whole whose
    body is not as long as its Content-Length says.

    botocore opens answers with ``enforce_content_length=False`` and checks the length
    only of a streaming body (a GET's): an answer lost after its headers reached the
    parser as an empty body, which reads as an empty result (a last page of a listing
    with no keys). A HEAD's Content-Length is the object's, and an answer without one
    (chunked, or ended by the connection's close) has nothing to check here. Nor has
    one sent chunked that carries a Content-Length as well (a proxy that re-chunked
    an answer may keep the origin's): HTTP reads such a body by its chunks, ignoring
    the length, and urllib3 refuses one cut before its last chunk.
    """
    if operation_model.http.get("method") == "HEAD":
        return
    body = response_dict.get("body")
    headers = response_dict.get("headers", {})
    declared = headers.get("content-length")
    if not isinstance(body, bytes) or declared is None or "transfer-encoding" in headers:
        return
    try:
        expected = int(declared)
    except ValueError:
        return  # not a length: urllib3 refuses it before this is called
    if len(body) != expected:
        raise WrongAnswer(
            f"the answer to {operation_model.name} has {len(body)} bytes of the {expected} "
            "its Content-Length says (cut short on the way)"
        )


def is_transient(exc: BaseException) -> bool:
    """True for failures that may pass on retry: the network, timeouts, 5xx, throttling."""
    if isinstance(exc, ClientError):
        status, code = http_status(exc), error_code(exc)
        # A 404 without an S3 code is not the store's answer: a gateway's or proxy's page.
        unmarked_404 = status == 404 and code in ("", "404")
        return status >= 500 or status in (408, 429) or code in RETRYABLE_CODES or unmarked_404
    if isinstance(exc, BotoCoreError):
        # HTTPClientError covers read timeouts, dropped connections and broken
        # bodies; ConnectionError covers refused connections and connect timeouts.
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError, IncompleteReadError

        return isinstance(exc, HTTPClientError | BotoConnectionError | IncompleteReadError)
    return isinstance(exc, (ConnectionError, TimeoutError, WrongAnswer, *_BODY_BROKEN))


def is_throttling(exc: BaseException | None) -> bool:
    """Whether ``exc`` is an archive asking to slow down: 429, 503 or a throttling code."""
    if not isinstance(exc, ClientError):
        return False
    return http_status(exc) in (429, 503) or error_code(exc) in THROTTLING_CODES


def _backoff(s: S3Settings) -> Callable[[RetryCallState], float]:
    """The wait before a request's next attempt: exponential, from the settings'
    ``backoff_initial_s``, or from THROTTLED_BACKOFF_S after an answer asking to slow
    down (at most ``backoff_max_s`` either way); plus jitter, so that many clients do
    not retry in step."""
    usual = wait_exponential(multiplier=s.backoff_initial_s, max=s.backoff_max_s) + wait_random(
        0, s.backoff_initial_s
    )
    initial = min(max(s.backoff_initial_s, THROTTLED_BACKOFF_S), s.backoff_max_s)
    throttled = wait_exponential(multiplier=initial, max=s.backoff_max_s) + wait_random(0, initial)

    def wait(state: RetryCallState) -> float:
        failed = state.outcome.exception() if state.outcome is not None else None
        return float((throttled if is_throttling(failed) else usual)(state))

    return wait


def call_with_retries(
    settings: S3Settings,
    what: str,
    fn: Callable[[], T],
    *,
    give_up: threading.Event | None = None,
) -> T:
    """Run ``fn`` with retries; translate what escapes into the tierstore error tree.

    ``what`` names the request in error messages. Once ``give_up`` is set, no attempt
    starts and a backoff wait ends at once: GaveUp is raised instead (for a request
    whose result nobody wants any more, such as a part of an upload that failed).
    Raises ArchiveUnavailable (chained to the last error) and InvalidArgument (key too
    long, bad parameters). Thread-safe.
    """
    s = settings

    def attempt() -> T:
        if give_up is not None and give_up.is_set():
            raise GaveUp(f"{what}: given up")
        return fn()

    def pause(seconds: float) -> None:
        if give_up is None:
            time.sleep(seconds)
        else:
            give_up.wait(seconds)

    retrying = Retrying(
        # The budget stops a third attempt, not a second: an attempt that ran long (a
        # large GET on a slow link) and then broke is tried once more.
        stop=stop_after_attempt(s.max_attempts)
        | (stop_after_attempt(2) & stop_after_delay(s.retry_budget_s)),
        wait=_backoff(s),
        retry=retry_if_exception(is_transient),
        sleep=pause,
        reraise=True,
    )
    started = time.monotonic()

    def tries() -> str:
        """How many attempts were made, and for how long: fewer than max_attempts once
        the retry budget ran out."""
        made = int(retrying.statistics.get("attempt_number", s.max_attempts))
        return f"{made} attempt{'s' if made != 1 else ''} in {time.monotonic() - started:.1f} s"

    try:
        return retrying(attempt)
    except ClientError as exc:
        code, status = error_code(exc), http_status(exc)
        if code == "KeyTooLongError":
            raise InvalidArgument(f"{what}: key too long for the archive") from exc
        if code == "NoSuchBucket":
            raise ArchiveUnavailable(
                f"{what}: bucket {s.bucket!r} does not exist at {s.endpoint_url}"
            ) from exc
        made = f" after {tries()}" if is_transient(exc) else ""
        # The request that failed: one of ``what``'s may be a HEAD behind its GET, say.
        request = f" to {exc.operation_name}" if exc.operation_name else ""
        # A HEAD's error has no body: its code is the status again.
        answer = f"{status}" if code in ("", str(status)) else f"{status} {code}"
        skew = clock_skew_s(exc)
        if skew is not None:  # the keys are fine: the clock is not
            off = (
                f"about {round(abs(skew) / 60)} minutes {'ahead of' if skew > 0 else 'behind'}"
                if abs(skew) >= 60
                else "over 15 minutes off"
            )
            raise ArchiveUnavailable(
                f"{what}: archive {s.endpoint_url} refused the request for the time it was "
                f"signed at ({answer}{request}): this node's clock is {off} the archive's, "
                f"which takes requests signed at most {SKEW_LIMIT_S // 60} minutes off; set "
                "the clocks right (NTP)"
            ) from exc
        if status == 403:  # the keys, most often: say which, and where they are set
            raise ArchiveUnavailable(
                f"{what}: archive {s.endpoint_url} refused access key {s.access_key_id!r} "
                f"({answer}{request}): check the archive's access key and secret key "
                "(serve's --s3-access-key and --s3-secret-key, or the settings' [archive] "
                f"access_key_id and secret_access_key) and their rights on bucket {s.bucket!r}"
            ) from exc
        raise ArchiveUnavailable(
            f"{what}: archive {s.endpoint_url} answered {answer}{request}{made}"
        ) from exc
    except ParamValidationError as exc:
        raise InvalidArgument(f"{what}: {exc}") from exc
    except WrongAnswer as exc:
        raise ArchiveUnavailable(f"{what}: {exc} ({tries()})") from exc
    except (BotoCoreError, ConnectionError, TimeoutError, *_BODY_BROKEN) as exc:
        raise ArchiveUnavailable(
            f"{what}: archive {s.endpoint_url} unreachable after {tries()}: {exc}"
        ) from exc
