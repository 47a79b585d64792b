"""S3Tier: the conformance suite against a real SeaweedFS, plus failure handling.

Failure tests use a tiny scripted HTTP server on 127.0.0.1 (for 5xx, 403, odd
ranges) and a bound-but-not-listening port (connection refused), so they check
what the tier does when the archive misbehaves without waiting on timeouts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

import botocore.auth
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from tests.conftest import raw_s3_client
from tests.s3_stubs import (
    Script,
    ScriptedServer,
    chunked_answer,
    cut_short,
    fast_settings,
    s3_error,
)
from tests.server.conftest import poll
from tests.server.test_archive_down import SwitchableProxy
from tests.tiers.conformance import LARGE_SIZE, TierConformance, chunked, pattern
from tierstore.config import ArchiveSettings, EngineSettings
from tierstore.engine.bootstrap import open_store
from tierstore.engine.records import is_generation_object_key
from tierstore.errors import (
    ArchiveUnavailable,
    FailedPrecondition,
    InvalidArgument,
    InvalidRange,
    StoreClosed,
)
from tierstore.tiers.base import Tier
from tierstore.tiers.s3 import MiB, S3Settings, S3Tier
from tierstore.tiers.s3_retry import THROTTLED_BACKOFF_S
from tierstore.tiers.seaweedfs import SeaweedServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def raw_client(settings: S3Settings) -> S3Client:
    """A plain boto3 client for the backdoors, one per store (clients are slow to make)."""
    return _store_client(dataclasses.replace(settings, bucket="any", prefix=""))


@functools.cache
def _store_client(settings: S3Settings) -> S3Client:
    return raw_s3_client(settings)


class TestS3Tier(TierConformance):
    # SeaweedFS's StartAfter=K also skips every key under "K/" when K is both an
    # object and a directory, so pagination across such keys loses keys there.
    key_may_also_be_a_directory = False

    @pytest.fixture
    def tier(self, s3_settings: S3Settings) -> Iterator[S3Tier]:
        tier = S3Tier(s3_settings)
        yield tier
        tier.close()

    def backdoor_put(self, tier: Tier, key: str, value: bytes) -> None:
        assert isinstance(tier, S3Tier)
        s = tier.settings
        raw_client(s).put_object(Bucket=s.bucket, Key=s.prefix + key, Body=value)

    def backdoor_get(self, tier: Tier, key: str) -> bytes | None:
        assert isinstance(tier, S3Tier)
        s = tier.settings
        try:
            response = raw_client(s).get_object(Bucket=s.bucket, Key=s.prefix + key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "NoSuchKey":
                return None
            raise
        return bytes(response["Body"].read())

    # What only the S3 tier does.

    def test_keys_live_under_the_prefix(self, tier: S3Tier) -> None:
        tier.put("ds/a", b"1")
        s = tier.settings
        listed = raw_client(s).list_objects_v2(Bucket=s.bucket, Prefix=s.prefix)
        assert [item["Key"] for item in listed["Contents"]] == [s.prefix + "ds/a"]
        assert tier.list().keys == ("ds/a",)

    def test_prefixes_isolate_tiers(self, tier: S3Tier) -> None:
        other = S3Tier(dataclasses.replace(tier.settings, prefix=tier.settings.prefix + "other/"))
        try:
            tier.put("k", b"outer")
            other.put("k", b"inner")
            assert bytes(tier.get("k") or b"") == b"outer"
            assert bytes(other.get("k") or b"") == b"inner"
            assert other.list().keys == ("k",)
            assert tier.list().keys == ("k", "other/k")
        finally:
            other.close()

    @pytest.mark.parametrize("inner", ["sp ace/", "pct%/", "plus+/", "é/", "no-slash"])
    def test_prefixes_of_awkward_characters_or_without_a_slash_list_their_keys(
        self, tier: S3Tier, inner: str
    ) -> None:
        other = S3Tier(dataclasses.replace(tier.settings, prefix=tier.settings.prefix + inner))
        try:
            other.put("ds/a", b"1")
            other.put("ds/b+c d%e", b"2")
            assert other.list().keys == ("ds/a", "ds/b+c d%e")
            assert other.list(prefix="ds/", start_after="ds/a").keys == ("ds/b+c d%e",)
            assert bytes(other.get("ds/b+c d%e") or b"") == b"2"
        finally:
            other.close()

    # SeaweedFS kept "/lead/ds/a" as "lead/ds/a": the listing cut the prefix's length
    # off that and named "s/a" (a rebuild found no dataset); "./" failed every PUT.
    @pytest.mark.parametrize(
        "prefix", ["/lead/", "/", "//", "twice//x/", "./dot/", "a/../b/", "back\\slash/"]
    )
    def test_a_prefix_the_store_would_keep_under_other_keys_is_refused(
        self, seaweedfs: SeaweedServer, s3_bucket: str, prefix: str
    ) -> None:
        with pytest.raises(InvalidArgument, match="archive key prefix"):
            seaweedfs.s3_settings(s3_bucket, prefix=f"t-{uuid.uuid4().hex[:8]}/{prefix}")
        with pytest.raises(InvalidArgument, match="archive key prefix"):
            seaweedfs.s3_settings(s3_bucket, prefix=prefix)

    def test_large_values_use_multipart_and_small_ones_do_not(self, tier: S3Tier) -> None:
        s = tier.settings
        client = raw_client(s)
        tier.put("big", pattern(LARGE_SIZE))
        tier.put("small-chunks", chunked(pattern(3 * MiB), [100_000]))
        tier.put("small", pattern(MiB))
        parts = -(-LARGE_SIZE // s.multipart_part_size)

        def etag(key: str) -> str:
            return str(client.head_object(Bucket=s.bucket, Key=s.prefix + key)["ETag"])

        assert etag("big").strip('"').endswith(f"-{parts}")
        assert "-" not in etag("small-chunks")
        assert "-" not in etag("small")

    def test_failed_multipart_upload_is_aborted(self, tier: S3Tier) -> None:
        def failing_source() -> Iterator[bytes]:
            yield pattern(10 * MiB, seed=1)
            yield pattern(10 * MiB, seed=2)  # past the threshold: parts are being sent
            raise RuntimeError("source broke")

        with pytest.raises(RuntimeError, match="source broke"):
            tier.put("partial", failing_source())
        s = tier.settings
        uploads = raw_client(s).list_multipart_uploads(Bucket=s.bucket, Prefix=s.prefix)
        assert uploads.get("Uploads", []) == []
        assert tier.get("partial") is None

    def test_parts_of_one_upload_are_sent_at_once(self, tier: S3Tier) -> None:
        s = tier.settings
        parallel = S3Tier(dataclasses.replace(s, upload_parallelism=3))
        # The first three parts each wait, at the point of sending, until all three are
        # there: sent one after another, the first waits alone and the barrier breaks.
        together = threading.Barrier(3, timeout=20)
        sent: list[int] = []

        def hold(params: dict[str, Any], **_: Any) -> None:
            sent.append(params["PartNumber"])
            if params["PartNumber"] <= 3:
                together.wait()

        try:
            parallel._client().meta.events.register("before-parameter-build.s3.UploadPart", hold)
            value = pattern(5 * s.multipart_part_size + 12345, seed=5)
            parallel.put("wide", value)
            assert bytes(parallel.get("wide") or b"") == value
        finally:
            parallel.close()
        assert sorted(sent) == [1, 2, 3, 4, 5, 6]
        etag = raw_client(s).head_object(Bucket=s.bucket, Key=s.prefix + "wide")["ETag"]
        assert etag.strip('"').endswith("-6")

    def test_a_failed_part_aborts_the_upload_once_the_parts_in_flight_end(
        self, tier: S3Tier
    ) -> None:
        s = tier.settings
        parallel = S3Tier(dataclasses.replace(s, upload_parallelism=3))
        events: list[str] = []
        part_1_sent = threading.Event()
        part_2_failed = threading.Event()

        def before(params: dict[str, Any], **_: Any) -> None:
            number = params["PartNumber"]
            if number == 2:
                part_1_sent.wait(20)
                part_2_failed.set()
                raise RuntimeError("part 2 broke")
            if number == 3:  # still on its way when part 2's failure is seen
                part_2_failed.wait(20)
                time.sleep(0.5)
            events.append(f"send {number}")

        def after(**_: Any) -> None:
            events.append("answered")
            part_1_sent.set()

        client = parallel._client()
        client.meta.events.register("before-parameter-build.s3.UploadPart", before)
        client.meta.events.register("after-call.s3.UploadPart", after)
        client.meta.events.register(
            "before-call.s3.AbortMultipartUpload", lambda **_: events.append("abort")
        )
        try:
            with pytest.raises(RuntimeError, match="part 2 broke"):
                parallel.put("broken", pattern(5 * s.multipart_part_size, seed=6))
        finally:
            parallel.close()
        poll(lambda: "send 3" in events, 20, "part 3 to be sent")
        # The abort waited for part 3: a part sent after it could outlive the upload.
        assert events.index("send 3") < events.index("abort"), events
        assert events[-1] == "abort", events
        uploads = raw_client(s).list_multipart_uploads(Bucket=s.bucket, Prefix=s.prefix)
        assert uploads.get("Uploads", []) == []
        assert tier.get("broken") is None

    def test_a_failed_part_stops_the_retries_of_the_parts_in_flight(self, tier: S3Tier) -> None:
        # Part 1 keeps failing as a dropped connection would (worth retrying, six tries
        # with backoff); part 2 fails for good meanwhile. Nobody wants part 1 any more.
        s = dataclasses.replace(
            tier.settings, upload_parallelism=2, max_attempts=6, backoff_initial_s=0.3
        )
        parallel = S3Tier(s)
        part_1_tries: list[float] = []

        def before(params: dict[str, Any], **_: Any) -> None:
            if params["PartNumber"] == 1:
                part_1_tries.append(time.monotonic())
                raise EndpointConnectionError(endpoint_url=s.endpoint_url)
            poll(lambda: part_1_tries, 20, "part 1's first try")
            raise RuntimeError("part 2 broke")

        parallel._client().meta.events.register("before-parameter-build.s3.UploadPart", before)
        try:
            with pytest.raises(RuntimeError, match="part 2 broke"):
                parallel.put("broken", pattern(2 * s.multipart_part_size, seed=7))
        finally:
            parallel.close()
        assert 1 <= len(part_1_tries) <= 2, part_1_tries  # not all six
        uploads = raw_client(s).list_multipart_uploads(Bucket=s.bucket, Prefix=s.prefix)
        assert uploads.get("Uploads", []) == []

    def test_no_part_is_sent_once_a_failed_one_is_seen(self, tier: S3Tier) -> None:
        s = dataclasses.replace(
            tier.settings,
            upload_parallelism=3,
            multipart_threshold=tier.settings.multipart_part_size,
        )
        parallel = S3Tier(s)
        sent: list[int] = []

        def before(params: dict[str, Any], **_: Any) -> None:
            if params["PartNumber"] == 1:
                raise RuntimeError("part 1 broke")
            sent.append(params["PartNumber"])

        def source() -> Iterator[bytes]:
            yield pattern(s.multipart_part_size, seed=1)
            # The next part is asked for once part 1 has failed (its thread is gone).
            poll(
                lambda: not any(t.name == "s3-part-1" for t in threading.enumerate()),
                20,
                "part 1 to fail",
            )
            for seed in range(2, 6):
                yield pattern(s.multipart_part_size, seed=seed)

        parallel._client().meta.events.register("before-parameter-build.s3.UploadPart", before)
        try:
            with pytest.raises(RuntimeError, match="part 1 broke"):
                parallel.put("broken-early", source())
        finally:
            parallel.close()
        assert sent == []
        uploads = raw_client(s).list_multipart_uploads(Bucket=s.bucket, Prefix=s.prefix)
        assert uploads.get("Uploads", []) == []

    # SeaweedFS lists "ds\\a" as "ds/a": a key that no get finds by that name.
    @pytest.mark.parametrize("key", ["", "ds/", "ds//a", "ds/./a", "ds/../a", "/ds", "ds\\a"])
    def test_rejects_keys_that_name_directories(self, tier: S3Tier, key: str) -> None:
        tier.put("ds/a", b"1")
        for operation in (tier.get, tier.stat, tier.delete, lambda k: tier.put(k, b"x")):
            with pytest.raises(InvalidArgument):
                operation(key)
        assert tier.list().keys == ("ds/a",)

    def test_a_batch_delete_of_more_keys_than_a_request_takes_goes_in_several(
        self, tier: S3Tier, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("tierstore.tiers.s3.MAX_DELETE_KEYS", 3)
        requests: list[int] = []

        def count(params: Any, **_: Any) -> None:
            requests.append(len(params["Delete"]["Objects"]))

        tier._client().meta.events.register("before-parameter-build.s3.DeleteObjects", count)
        keys = [f"ds/{n}" for n in range(8)]
        for key in keys:
            tier.put(key, key.encode())
        tier.delete_many([*keys[:7], "ds/never"])
        assert requests == [3, 3, 2]
        assert [page for page in tier.list("ds/").keys] == ["ds/7"]
        with pytest.raises(InvalidArgument, match="segments"):
            tier.delete_many(["ds/7", "ds//x"])  # refused before any request
        assert len(requests) == 3 and tier.stat("ds/7") is not None

    def test_get_many_returns_ranges_in_order(self, tier: S3Tier) -> None:
        data = pattern(3 * MiB + 5, seed=7)
        tier.put("frames", data)
        ranges = [(i * 100_000, 100_000) for i in range(31, -1, -1)] + [(len(data) - 3, 10), (0, 0)]
        for workers in (1, 4, 64):
            views = tier.get_many("frames", ranges, max_workers=workers)
            assert views is not None
            assert [bytes(v) for v in views] == [data[o : o + n] for o, n in ranges]
        assert tier.get_many("frames", []) == []

    def test_get_many_missing_and_invalid(self, tier: S3Tier) -> None:
        assert tier.get_many("absent", [(0, 10), (10, 10)]) is None
        tier.put("frames", b"0123456789")
        with pytest.raises(InvalidRange):
            tier.get_many("frames", [(0, 5), (20, 5), (5, 5)])
        with pytest.raises(InvalidRange):
            tier.get_many("frames", [(0, 5), (-1, 5)])
        with pytest.raises(InvalidArgument):
            tier.get_many("frames", [(0, 5)], max_workers=0)

    def test_missing_bucket_is_unavailable_on_get(self, seaweedfs: SeaweedServer) -> None:
        tier = S3Tier(seaweedfs.s3_settings(f"nob-{uuid.uuid4().hex[:12]}"))
        try:
            with pytest.raises(ArchiveUnavailable, match="does not exist"):
                tier.get("k")
        finally:
            tier.close()

    def test_ensure_bucket_creates_it_once(self, seaweedfs: SeaweedServer) -> None:
        bucket = f"ensure-{uuid.uuid4().hex[:12]}"
        tier = S3Tier(seaweedfs.s3_settings(bucket, prefix="p/"))
        client = raw_client(tier.settings)
        try:
            with pytest.raises(ClientError):
                client.head_bucket(Bucket=bucket)
            tier.ensure_bucket()
            client.head_bucket(Bucket=bucket)  # raises if it is still missing
            tier.ensure_bucket()  # idempotent
            tier.put("k", b"v")
            assert bytes(tier.get("k") or b"") == b"v"
            tier.delete("k")
        finally:
            tier.close()

    def test_forked_children_use_their_own_client(self, tier: S3Tier) -> None:
        data = pattern(200_000, seed=8)
        tier.put("shared", data)
        assert bytes(tier.get("shared") or b"") == data  # the parent's client is live
        parent_client = tier._client()
        children = []
        for child in range(6):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                status = 1
                try:
                    ok = tier._client() is not parent_client
                    ok = ok and bytes(tier.get("shared") or b"") == data
                    tier.put(f"child-{child}", pattern(1000, seed=child))
                    status = 0 if ok else 2
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stderr.flush()
                    os._exit(status)
            children.append(pid)
        # The parent keeps reading while the children do.
        for _ in range(5):
            assert bytes(tier.get("shared") or b"") == data
        for pid in children:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        assert tier._client() is parent_client
        for child in range(6):
            assert bytes(tier.get(f"child-{child}") or b"") == pattern(1000, seed=child)

    def test_pickles_as_settings_only(self, tier: S3Tier) -> None:
        tier.put("k", b"v")
        copy = pickle.loads(pickle.dumps(tier))
        try:
            assert copy.settings == tier.settings
            assert bytes(copy.get("k") or b"") == b"v"
        finally:
            copy.close()
        tier.close()
        closed_copy = pickle.loads(pickle.dumps(tier))
        with pytest.raises(StoreClosed):
            closed_copy.get("k")

    def test_settings_validate_and_hide_the_secret(self, tier: S3Tier) -> None:
        s = tier.settings
        assert s.secret_access_key not in repr(s)
        for bad in ({"bucket": "ab"}, {"max_attempts": 0}, {"multipart_part_size": MiB}):
            with pytest.raises(InvalidArgument):
                dataclasses.replace(s, **bad)
        # S3 takes parts, and single PUTs, of at most 5 GiB: a larger setting failed
        # only at the first upload that large, at every retry of the mover's journal.
        for name in ("multipart_part_size", "multipart_threshold"):
            with pytest.raises(InvalidArgument, match=f"{name} must be at most 5 GiB"):
                dataclasses.replace(s, **{name: 5 * 1024 * MiB + 1})
            assert getattr(dataclasses.replace(s, **{name: 5 * 1024 * MiB}), name) > 0
        for url in (
            "http://me:hunter2@127.0.0.1:1",
            "http://hunter2@127.0.0.1:1",
            "me:hunter2@127.0.0.1:1",  # no scheme: "me" was taken for one
        ):
            with pytest.raises(InvalidArgument, match="must not carry a user") as refused:
                dataclasses.replace(s, endpoint_url=url)
            assert "hunter2" not in str(refused.value)


# Scripted S3 stand-ins (tests/s3_stubs.py), for answers a healthy SeaweedFS never gives.


@pytest.fixture
def scripted() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Script) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


OPERATIONS: dict[str, Callable[[S3Tier], object]] = {
    "get": lambda tier: tier.get("k"),
    "get-range": lambda tier: tier.get("k", (0, 10)),
    "get-empty-range": lambda tier: tier.get("k", (0, 0)),
    "stat": lambda tier: tier.stat("k"),
    "put": lambda tier: tier.put("k", b"v"),
    "delete": lambda tier: tier.delete("k"),
    "delete_many": lambda tier: tier.delete_many(["k", "j"]),
    "list": lambda tier: tier.list(),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("status", [500, 503])
def test_5xx_is_retried_then_unavailable_never_missing(
    scripted: Callable[[Script], ScriptedServer], operation: str, status: int
) -> None:
    code = "SlowDown" if status == 503 else "InternalError"
    server = scripted(lambda n, request: s3_error(status, code))
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        with pytest.raises(ArchiveUnavailable, match="after 3 attempts") as caught:
            OPERATIONS[operation](tier)
    finally:
        tier.close()
    assert isinstance(caught.value.__cause__, ClientError)
    assert server.requests == 3


def test_an_archive_asking_to_slow_down_is_given_longer_backoff(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    # Retried 0.1 s, 0.2 s... apart, a few seconds of SlowDown failed a cold read (and
    # a DataLoader) through all its attempts.
    arrived: list[float] = []

    def script(number: int, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        arrived.append(time.monotonic())
        return s3_error(503, "SlowDown")

    server = scripted(script)
    settings = dataclasses.replace(
        fast_settings(server.endpoint_url, max_attempts=3), backoff_max_s=THROTTLED_BACKOFF_S
    )
    tier = S3Tier(settings)
    try:
        with pytest.raises(ArchiveUnavailable, match=r"503 SlowDown .*after 3 attempts in"):
            tier.get("k")
    finally:
        tier.close()
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrived)]
    assert len(gaps) == 2 and min(gaps) >= THROTTLED_BACKOFF_S, gaps


def test_an_attempt_that_ran_past_the_budget_and_broke_is_tried_once_more(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    # A large GET on a slow link may take longer than the budget and then break: with
    # no second attempt, a cold read failed where it used to be tried 4 times more.
    def script(number: int, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if number == 1:
            time.sleep(0.5)  # the first attempt outlasts the budget, then fails
            return s3_error(500, "InternalError")
        return 200, {"Content-Type": "application/octet-stream"}, b"hello"

    server = scripted(script)
    settings = dataclasses.replace(
        fast_settings(server.endpoint_url, max_attempts=5), retry_budget_s=0.2
    )
    tier = S3Tier(settings)
    try:
        assert bytes(tier.get("k") or b"") == b"hello"
    finally:
        tier.close()
    assert server.requests == 2


def test_a_frozen_archive_fails_a_request_within_its_retry_budget() -> None:
    # An archive that takes connections and answers nothing (stopped, SIGSTOP): each
    # attempt waits a read timeout, and no attempt starts past the retry budget. With 5
    # attempts of 60 s a cold read held its caller (and an archive slot) 5 minutes.
    taken: list[socket.socket] = []
    frozen = socket.create_server(("127.0.0.1", 0))

    def take() -> None:
        with contextlib.suppress(OSError):  # closed
            while True:
                taken.append(frozen.accept()[0])

    threading.Thread(target=take, daemon=True).start()
    settings = dataclasses.replace(
        fast_settings(f"http://127.0.0.1:{frozen.getsockname()[1]}", max_attempts=5),
        read_timeout_s=0.5,
        retry_budget_s=1.0,
    )
    tier = S3Tier(settings)
    try:
        with pytest.raises(
            ArchiveUnavailable, match=r"unreachable after [23] attempts in"
        ) as caught:
            tier.get("k")
    finally:
        tier.close()
        frozen.close()
        for connection in taken:
            connection.close()
    assert 2 <= len(taken) <= 3, (len(taken), str(caught.value))


def test_transient_errors_then_success(scripted: Callable[[Script], ScriptedServer]) -> None:
    def script(number: int, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if number <= 2:
            return s3_error(503, "SlowDown")
        return 200, {"Content-Type": "application/octet-stream"}, b"hello"

    server = scripted(script)
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        assert bytes(tier.get("k") or b"") == b"hello"
    finally:
        tier.close()
    assert server.requests == 3


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [(404, "NoSuchKey", None), (403, "AccessDenied", ArchiveUnavailable)],
)
def test_client_errors_are_not_retried(
    scripted: Callable[[Script], ScriptedServer],
    status: int,
    code: str,
    expected: type[Exception] | None,
) -> None:
    server = scripted(lambda n, request: s3_error(status, code))
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=5))
    try:
        if expected is None:
            assert tier.get("k") is None
            assert tier.stat("k") is None
            assert server.requests == 2
        else:
            with pytest.raises(expected):
                tier.get("k")
            assert server.requests == 1
    finally:
        tier.close()


_XML = {"Content-Type": "application/xml"}


def test_a_store_without_batch_deletes_gets_one_delete_a_key(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    def answer(n: int, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if request.command == "POST":
            return s3_error(501, "NotImplemented")
        return 204, {"x-amz-request-id": "scripted"}, b""

    server = scripted(answer)
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        tier.delete_many(["a", "b"])
        assert server.methods == ["POST", "DELETE", "DELETE"]  # the 501 not retried
        tier.delete_many(["c"])  # not asked again
        assert server.methods[3:] == ["DELETE"]
    finally:
        tier.close()


def _batch_delete_refusing(code: str) -> tuple[int, dict[str, str], bytes]:
    """A DeleteObjects answer of 200 in which the store refused key ``k`` with ``code``."""
    body = (
        "<DeleteResult><Deleted><Key>j</Key></Deleted><Error><Key>k</Key>"
        f"<Code>{code}</Code><Message>scripted refusal</Message></Error></DeleteResult>"
    )
    return 200, {**_XML, "x-amz-request-id": "scripted"}, body.encode()


@pytest.mark.parametrize(
    ("code", "attempts", "said"),
    [
        ("NoSuchKey", 1, ""),
        ("InternalError", 3, "answered 200 InternalError to DeleteObjects after 3 attempts"),
        ("AccessDenied", 1, "refused access key 'key' (403 AccessDenied to DeleteObjects)"),
    ],
)
def test_a_key_a_batch_delete_refused_fails_it_as_its_code_would_a_request(
    scripted: Callable[[Script], ScriptedServer], code: str, attempts: int, said: str
) -> None:
    # A 200 answer may still refuse some of its keys: one left in the archive had
    # been taken for deleted, and its journal entry dropped.
    server = scripted(lambda n, request: _batch_delete_refusing(code))
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        if code == "NoSuchKey":
            tier.delete_many(["j", "k"])  # missing is deleted
        else:
            with pytest.raises(ArchiveUnavailable) as caught:
                tier.delete_many(["j", "k"])
            assert said in str(caught.value)
            cause = caught.value.__cause__
            assert isinstance(cause, ClientError)
            assert "1 of 2 keys refused, the first 'k'" in str(cause)
    finally:
        tier.close()
    assert server.requests == attempts


#: a 404 that is not the store's: a gateway's or proxy's page, with no S3 code
_GATEWAY_404 = (404, {"Content-Type": "text/plain"}, b"404 page not found\n")


@pytest.mark.parametrize("operation", ["get", "get-range", "get-empty-range", "stat", "delete"])
def test_a_404_that_is_not_the_stores_is_unavailable_never_missing(
    scripted: Callable[[Script], ScriptedServer], operation: str
) -> None:
    # Any 404 read as a missing key: a GET returned None, a DELETE reported done with
    # nothing deleted, a HEAD found no object, behind a gateway answering for the store.
    server = scripted(lambda n, request: _GATEWAY_404)
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        with pytest.raises(ArchiveUnavailable, match=r"404 .*after 3 attempts"):
            OPERATIONS[operation](tier)
    finally:
        tier.close()


@pytest.mark.parametrize("status", [404, 500])
def test_an_error_answer_whose_body_breaks_off_is_unavailable(
    scripted: Callable[[Script], ScriptedServer], status: int
) -> None:
    # botocore reads a GET's error body outside its own error handling: urllib3's
    # ProtocolError escaped the tier, neither retried nor an ArchiveUnavailable.
    broken = cut_short(status, _XML, b"<Error><Co", declared=200, reset=True)
    server = scripted(lambda n, request: broken)
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        with pytest.raises(ArchiveUnavailable, match="after 3 attempts"):
            tier.get("k")
        assert server.requests == 3
    finally:
        tier.close()


def test_a_bodyless_404_without_the_stores_mark_is_asked_for_again_as_a_get(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    # A HEAD's 404 has no body, so no S3 code: the store's request id marks it as the
    # store's. Without one, a GET of the key tells a missing key from a gateway's page.
    def answer(n: int, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if request.command == "HEAD":
            return 404, {}, b""
        return 404, _XML, b"<Error><Code>NoSuchKey</Code></Error>"

    server = scripted(answer)
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        assert tier.stat("k") is None
        assert server.methods == ["HEAD", "GET"]
    finally:
        tier.close()


def test_a_bodyless_404_to_a_delete_is_missing_only_with_the_stores_mark(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    # Some stores answer a DELETE of a missing key 404 without a body: with the
    # store's request id it is the store's answer (nothing to delete), as a HEAD's is.
    server = scripted(lambda n, request: (404, {"x-amz-request-id": "r"}, b""))
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        tier.delete("k")
        assert server.methods == ["DELETE"]
    finally:
        tier.close()
    unmarked = scripted(lambda n, request: (404, {}, b""))
    tier = S3Tier(fast_settings(unmarked.endpoint_url, max_attempts=3))
    try:
        with pytest.raises(ArchiveUnavailable, match=r"404 .*after 3 attempts"):
            tier.delete("k")
    finally:
        tier.close()


def test_a_head_answered_without_a_size_is_asked_for_again(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    # A bare KeyError escaped the tier, from stat and from the HEAD behind a whole-object
    # answer to a ranged GET.
    def answer(n: int, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if request.command == "HEAD":
            return cut_short(200, {}, b"", declared=None)  # no Content-Length
        return 200, {}, b"012345"

    server = scripted(answer)
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        with pytest.raises(ArchiveUnavailable, match="without its Content-Length"):
            tier.stat("k")
        assert server.methods == ["HEAD"] * 3
        with pytest.raises(ArchiveUnavailable, match="without its Content-Length"):
            tier.get("k", (4, 4))
    finally:
        tier.close()


def test_a_listing_of_keys_without_their_names_is_asked_for_again(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    nameless = _LISTED.replace(b"<Key>a</Key>", b"")
    uploads = (
        b"<ListMultipartUploadsResult><Bucket>scripted</Bucket><IsTruncated>false"
        b"</IsTruncated><Upload><Key>a</Key></Upload></ListMultipartUploadsResult>"
    )
    server = scripted(lambda n, request: (200, _XML, nameless if n <= 3 else uploads))
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        with pytest.raises(ArchiveUnavailable, match="without its Key"):
            tier.list()
        with pytest.raises(ArchiveUnavailable, match="without its Key or UploadId"):
            tier.abort_incomplete_uploads(lambda key: True)
        assert server.requests == 6
    finally:
        tier.close()


def test_unreachable_archive_is_unavailable_never_missing() -> None:
    # A bound socket that never listens: connections are refused, and no other
    # process can take the port while the test runs.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        tier = S3Tier(fast_settings(f"http://127.0.0.1:{port}", max_attempts=2))
        try:
            for operation in OPERATIONS.values():
                with pytest.raises(ArchiveUnavailable, match="after 2 attempts") as caught:
                    operation(tier)
                assert isinstance(caught.value.__cause__, EndpointConnectionError)
        finally:
            tier.close()


def test_range_ignored_by_the_server_is_cut_locally(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    server = scripted(lambda n, request: (200, {}, b"0123456789"))
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=1))
    try:
        assert bytes(tier.get("k", (2, 3)) or b"") == b"234"
        assert bytes(tier.get("k", (8, 10)) or b"") == b"89"
        with pytest.raises(InvalidRange):
            tier.get("k", (10, 1))
    finally:
        tier.close()


def test_wrong_partial_answer_is_refused(scripted: Callable[[Script], ScriptedServer]) -> None:
    # A 206 for another range than the one asked must never be handed out as data.
    server = scripted(lambda n, request: (206, {"Content-Range": "bytes 0-2/10"}, b"012"))
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=1))
    try:
        with pytest.raises(ArchiveUnavailable, match="Content-Range"):
            tier.get("k", (5, 3))
    finally:
        tier.close()


def test_a_range_cut_short_on_the_way_is_asked_for_again(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    # The first answer is cut short with a Content-Length to match (a proxy dropping
    # the rest of the body); it was refused, and the cold read failed, with no retry.
    def answer(n: int, request: object) -> tuple[int, dict[str, str], bytes]:
        if n == 1:  # requests count from 1
            return 206, {"Content-Range": "bytes 2-5/10"}, b"23"
        return 206, {"Content-Range": "bytes 2-5/10"}, b"2345"

    server = scripted(answer)
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        assert bytes(tier.get("k", (2, 4)) or b"") == b"2345"
        assert server.requests == 2
    finally:
        tier.close()


def test_a_whole_object_answer_cut_short_is_asked_for_again(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    # The store ignores the Range and sends the whole object, cut short on the way
    # with a Content-Length to match. The short body was clipped as if the object
    # ended there, and the engine took the missing bytes for data loss.
    def answer(n: int, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if request.command == "HEAD":
            return 200, {}, b"0123456789"
        return 200, {}, b"012345" if n == 1 else b"0123456789"

    server = scripted(answer)
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        assert bytes(tier.get("k", (4, 4)) or b"") == b"4567"
        assert server.methods == ["GET", "HEAD", "GET"]
        # An object that really ends inside the range is clipped after one HEAD.
        assert bytes(tier.get("k", (8, 10)) or b"") == b"89"
        assert server.methods[3:] == ["GET", "HEAD"]
        # A range inside the body needs no HEAD.
        assert bytes(tier.get("k", (0, 3)) or b"") == b"012"
        assert server.methods[5:] == ["GET"]
    finally:
        tier.close()


def test_a_whole_object_read_to_the_connections_close_is_checked_against_its_size(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    # Without a Content-Length a body ends where the connection does: one cut on the
    # way was handed out short, as the whole object.
    def answer(n: int, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if request.command == "HEAD":
            return 200, {}, b"0123456789"
        return cut_short(200, {}, b"0123" if n == 1 else b"0123456789", declared=None)

    server = scripted(answer)
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        assert bytes(tier.get("k") or b"") == b"0123456789"
        assert server.methods == ["GET", "HEAD", "GET", "HEAD"]
    finally:
        tier.close()
    cut = scripted(lambda n, request: answer(1, request))
    tier = S3Tier(fast_settings(cut.endpoint_url, max_attempts=3))
    try:
        with pytest.raises(ArchiveUnavailable, match="the object has 10"):
            tier.get("k")
    finally:
        tier.close()


def test_a_whole_object_sent_chunked_needs_no_head(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    # A chunked body ends with its last (empty) chunk, which urllib3 insists on: one cut
    # short is refused without asking the size. Each such GET cost a HEAD as well.
    value = bytes(range(256)) * 40

    def answer(n: int, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if request.command == "HEAD":
            return 200, {}, value
        return chunked_answer(200, {}, value, cut=n == 2)

    server = scripted(answer)
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        assert bytes(tier.get("k") or b"") == value
        assert server.methods == ["GET"]
        # Cut before its last chunk: asked for again, never handed out short.
        assert bytes(tier.get("k") or b"") == value
        assert server.methods == ["GET", "GET", "GET"]
    finally:
        tier.close()


def test_a_failing_head_behind_a_whole_object_answer_is_named(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    def answer(n: int, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if request.command == "HEAD":
            return s3_error(500, "InternalError")
        return 200, {}, b"012345"

    server = scripted(answer)
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=2))
    try:
        with pytest.raises(ArchiveUnavailable, match=r"500 .*to HeadObject after 2 attempts"):
            tier.get("k", (4, 4))
    finally:
        tier.close()


_LISTED = (
    b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>scripted</Name>'
    b"<Prefix></Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>"
    b"<IsTruncated>false</IsTruncated><Contents><Key>a</Key><Size>1</Size></Contents>"
    b"</ListBucketResult>"
)
LOST_LISTINGS = {
    # The store's 200 headers, then the connection lost: botocore parses no body as {}.
    "cut after the headers": cut_short(200, _XML, b"", declared=600),
    "cut after a whole document": cut_short(200, _XML, _LISTED, declared=len(_LISTED) + 50),
    "an empty body": (200, _XML, b""),
    "a page that is not the store's": (200, {"Content-Type": "text/html"}, b"<html>hi</html>"),
}


@pytest.mark.parametrize("answer", list(LOST_LISTINGS))
def test_a_listing_answer_without_its_body_is_not_an_empty_last_page(
    scripted: Callable[[Script], ScriptedServer], answer: str
) -> None:
    # Parsed as {}, it read as a last page with no keys: a rebuild restored part of the
    # catalog, and a start took a lost hot tier over an archive it found empty.
    server = scripted(lambda n, request: LOST_LISTINGS[answer])
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        with pytest.raises(ArchiveUnavailable, match="3 attempts"):
            tier.list()
        assert server.requests == 3
        with pytest.raises(ArchiveUnavailable, match="3 attempts"):
            tier.abort_incomplete_uploads(lambda key: True)
        assert server.requests == 6
    finally:
        tier.close()


_UPLOADS = (
    b'<?xml version="1.0" encoding="UTF-8"?><ListMultipartUploadsResult>'
    b"<Bucket>scripted</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>"
    b"<IsTruncated>false</IsTruncated><Upload><Key>k</Key><UploadId>u1</UploadId></Upload>"
    b"</ListMultipartUploadsResult>"
)


def test_an_abort_whose_answer_was_lost_is_done_when_the_store_has_no_such_upload(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    # The retry of an abort that landed met NoSuchUpload, and the start's pass over the
    # uploads a killed node left open failed (ArchiveUnavailable) on a store saying so.
    answers = {
        1: (200, _XML, _UPLOADS),
        2: cut_short(204, {}, b"", declared=10),  # the abort landed; its answer did not
        3: s3_error(404, "NoSuchUpload"),
    }
    server = scripted(lambda n, request: answers[n])
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        assert tier.abort_incomplete_uploads(lambda key: True) == 1
        assert server.methods == ["GET", "DELETE", "DELETE"]
    finally:
        tier.close()


def test_a_listing_answer_cut_short_is_asked_for_again(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    cut = LOST_LISTINGS["cut after the headers"]
    server = scripted(lambda n, request: cut if n == 1 else (200, _XML, _LISTED))
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        assert tier.list().keys == ("a",)
        assert server.requests == 2
    finally:
        tier.close()


def test_a_chunked_answer_with_a_stale_content_length_is_read_by_its_chunks(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    # HTTP reads a body sent chunked by its chunks, whatever Content-Length comes with
    # it (a proxy that re-chunked an answer may keep the origin's): such a listing was
    # refused as cut short, every attempt, and the archive read as unavailable.
    server = scripted(lambda n, request: chunked_answer(200, _XML, _LISTED, 100, stale_length=999))
    tier = S3Tier(fast_settings(server.endpoint_url, max_attempts=3))
    try:
        assert tier.list().keys == ("a",)
        assert server.requests == 1
    finally:
        tier.close()


@pytest.mark.parametrize(
    ("endpoint", "signed"),
    [
        ("http://127.0.0.1:8333", False),
        ("http://localhost:8333", False),
        ("https://s3.example.com", False),
        ("http://s3.example.com", True),
        ("http://10.1.2.3:9000", True),
    ],
)
def test_upload_bodies_are_signed_only_off_machine_without_tls(endpoint: str, signed: bool) -> None:
    from tierstore.tiers.s3_connection import new_client

    client = new_client(
        S3Settings(endpoint_url=endpoint, bucket="bucket", access_key_id="a", secret_access_key="b")
    )
    assert client.meta.config.s3["payload_signing_enabled"] is signed


def test_no_request_sends_or_asks_for_a_checksum_the_store_may_reject(
    s3_settings: S3Settings,
) -> None:
    # boto3 1.36 and later add a CRC to every upload (x-amz-checksum-*, in trailers of
    # a chunked body) and ask for one back: some S3-compatible stores refuse those puts.
    tier = S3Tier(s3_settings)
    headers: list[tuple[str, str]] = []
    batch_delete_headers: list[str] = []

    def record(request: Any, **_: Any) -> None:
        headers.extend((request.method, name.lower()) for name in request.headers)
        if request.method == "POST" and request.url.endswith("?delete"):
            batch_delete_headers.extend(name.lower() for name in request.headers)

    try:
        tier._client().meta.events.register("before-send", record)
        tier.put("small", b"small")
        large = pattern(LARGE_SIZE)
        tier.put("large", chunked(large, [5 * MiB]))  # multipart
        assert bytes(tier.get("large", (7, 9)) or b"") == large[7:16]
        assert tier.stat("small") is not None
        tier.delete_many(["small", "large"])  # DeleteObjects, which S3 wants a checksum of
    finally:
        tier.close()
    methods = {method for method, _ in headers}
    assert {"PUT", "POST", "GET", "HEAD"} <= methods, methods
    sent = {name for _, name in headers}
    flexible = {n for n in sent if "checksum" in n or n == "x-amz-trailer"}
    assert flexible == set(), flexible
    assert "content-md5" in batch_delete_headers  # which every store takes


_TORN_OVERWRITE = """
import json, os, sys
import botocore.awsrequest
from tierstore.tiers.s3 import S3Settings, S3Tier

tier = S3Tier(S3Settings(**json.loads(sys.argv[1])))
send = botocore.awsrequest.AWSConnection.send

def die_before_the_body(self, data):
    # The request line and headers have gone out; the body has not.
    if isinstance(data, (bytes, bytearray)) and data.startswith(b"NEW!"):
        os.kill(os.getpid(), 9)
    return send(self, data)

botocore.awsrequest.AWSConnection.send = die_before_the_body
tier.put("object", b"NEW!" * 50)
"""


def test_an_overwrite_torn_by_a_kill_keeps_the_old_object(s3_settings: S3Settings) -> None:
    # Over loopback the body is not signed, and SeaweedFS took a PUT whose client died
    # after its headers as an empty object, replacing the old one: a manifest rewritten
    # in place (a key rotation) was lost. The body's MD5 makes the server refuse it.
    tier = S3Tier(s3_settings)
    try:
        tier.put("object", b"GOOD" * 50)
        child = subprocess.run(
            [sys.executable, "-c", _TORN_OVERWRITE, json.dumps(dataclasses.asdict(s3_settings))],
            capture_output=True,
            timeout=60,
        )
        assert child.returncode == -9, child.stderr.decode()[-2000:]
        # The server finishes the torn request on its own time: watch for a while.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            stored = tier.get("object")
            assert stored is not None and bytes(stored) == b"GOOD" * 50
            time.sleep(0.05)
    finally:
        tier.close()


def test_an_open_store_refused_for_a_directory_in_use_leaves_its_uploads_alone(
    s3_settings: S3Settings, s3_admin: S3Client, tmp_path: Path
) -> None:
    # The second open aborted the running store's uploads in flight (its start-up's
    # clean-up of a killed node's), and only then was refused by the store's lock.
    settings = EngineSettings(
        data_dir=tmp_path / "node",
        archive=ArchiveSettings(
            endpoint_url=s3_settings.endpoint_url,
            bucket=s3_settings.bucket,
            prefix=s3_settings.prefix,
            access_key_id=s3_settings.access_key_id,
            secret_access_key=s3_settings.secret_access_key,
        ),
    )
    running = open_store(settings, start_mover=False)
    key = s3_settings.prefix + f"ds/{7:016x}.frames"  # as the running node's upload
    upload_id = s3_admin.create_multipart_upload(Bucket=s3_settings.bucket, Key=key)["UploadId"]
    try:
        with pytest.raises(FailedPrecondition, match="open in another store"):
            open_store(settings, start_mover=False)
        listed = s3_admin.list_multipart_uploads(Bucket=s3_settings.bucket, Prefix=key)
        assert [u["UploadId"] for u in listed.get("Uploads", [])] == [upload_id]
    finally:
        running.close()
        s3_admin.abort_multipart_upload(Bucket=s3_settings.bucket, Key=key, UploadId=upload_id)
    open_store(settings, start_mover=False).close()  # closed, the directory is free again


def test_uploads_a_killed_node_left_are_aborted_under_its_prefix_only(
    s3_settings: S3Settings, s3_admin: S3Client, tmp_path: Path
) -> None:
    # A node killed mid-upload (or whose archive died before the abort) left the
    # upload open, its parts costing storage for good: a store opening aborts them.
    bucket = s3_settings.bucket
    other_prefix = f"t-{uuid.uuid4().hex[:16]}/"

    def started(key: str) -> str:
        upload = s3_admin.create_multipart_upload(Bucket=bucket, Key=key)
        upload_id = upload["UploadId"]
        s3_admin.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * (5 * MiB)
        )
        return upload_id

    def open_uploads(prefix: str) -> list[str]:
        listed = s3_admin.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
        return [upload["UploadId"] for upload in listed.get("Uploads", [])]

    frames = f"ds/{1:016x}.frames"
    started(s3_settings.prefix + frames)
    started(s3_settings.prefix + f"ds/{2:016x}.frames")
    kept = started(other_prefix + frames)  # another node's
    # Under the prefix, but not a key of ours (a prefix such as "team-a" lists the keys
    # of "team-ab/" too, and the empty prefix everyone's).
    foreign = started(s3_settings.prefix + "b/" + frames)
    tier = S3Tier(s3_settings)
    try:
        assert len(open_uploads(s3_settings.prefix)) == 3
        assert tier.abort_incomplete_uploads(is_generation_object_key) == 2
        assert open_uploads(s3_settings.prefix) == [foreign]
        assert open_uploads(other_prefix) == [kept]
        assert tier.abort_incomplete_uploads(is_generation_object_key) == 0
        # And a store opening on the prefix does it itself.
        started(s3_settings.prefix + f"ds/{3:016x}.frames")
        settings = EngineSettings(
            data_dir=tmp_path / "node",
            archive=ArchiveSettings(
                endpoint_url=s3_settings.endpoint_url,
                bucket=bucket,
                prefix=s3_settings.prefix,
                access_key_id=s3_settings.access_key_id,
                secret_access_key=s3_settings.secret_access_key,
            ),
        )
        store = open_store(dataclasses.replace(settings, mover_threads=5), start_mover=False)
        # The setting reaches the archive: parts of one upload in flight at once.
        assert store._archive.inner.settings.upload_parallelism == 5  # type: ignore[attr-defined]
        # Not before its background work runs (tierstore serve checks the archive's
        # claim first: the uploads may be another node's), then by its mover.
        assert len(open_uploads(s3_settings.prefix)) == 2
        store.start_background()
        poll(lambda: open_uploads(s3_settings.prefix) == [foreign], 30, "the mover's abort")
        store.close()
        assert open_uploads(s3_settings.prefix) == [foreign]
        assert open_uploads(other_prefix) == [kept]
    finally:
        tier.close()
        s3_admin.abort_multipart_upload(Bucket=bucket, Key=other_prefix + frames, UploadId=kept)
        s3_admin.abort_multipart_upload(
            Bucket=bucket, Key=s3_settings.prefix + "b/" + frames, UploadId=foreign
        )


@pytest.mark.parametrize("answered", ["put", "delete"])
def test_an_upload_whose_abort_failed_is_aborted_once_the_archive_answers_again(
    s3_settings: S3Settings, s3_admin: S3Client, answered: str
) -> None:
    # An upload that failed while the archive was down failed to abort too, and its
    # parts cost storage, unseen, until a store next opened on the prefix: a node that
    # ran for months through archive outages piled them up. And after a delete too (the
    # shard deleted while its upload waited for the archive: no put follows).
    target = ("127.0.0.1", int(s3_settings.endpoint_url.rsplit(":", 1)[1]))
    proxy = SwitchableProxy(target)
    proxy.up()
    settings = dataclasses.replace(
        s3_settings,
        endpoint_url=proxy.url,
        max_attempts=2,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
        multipart_threshold=5 * MiB,
        multipart_part_size=5 * MiB,
    )
    tier = S3Tier(settings)

    def open_uploads() -> list[str]:
        listed = s3_admin.list_multipart_uploads(Bucket=settings.bucket, Prefix=settings.prefix)
        return [upload["Key"] for upload in listed.get("Uploads", [])]

    def cut_off_after_the_first_part() -> Iterator[bytes]:
        yield pattern(5 * MiB, seed=1)
        proxy.down()  # as the second part is sent
        yield pattern(5 * MiB, seed=2)

    try:
        with pytest.raises(ArchiveUnavailable) as failed:
            tier.put("big", cut_off_after_the_first_part())
        assert "aborting multipart upload" in "".join(failed.value.__notes__)
        assert open_uploads() == [settings.prefix + "big"]
        proxy.up()
        if answered == "put":
            tier.put("small", b"the archive answers again")
        else:
            tier.delete("big")
        assert open_uploads() == []
        assert tier.get("big") is None
        tier.put("big", pattern(10 * MiB, seed=3))  # and the next upload is whole
        assert bytes(tier.get("big") or b"") == pattern(10 * MiB, seed=3)
    finally:
        tier.close()
        proxy.down()


def _node_a_killed_run_left_an_upload(
    tmp_path: Path, s3_settings: S3Settings, s3_admin: S3Client, backlog: int = 0
) -> tuple[SwitchableProxy, EngineSettings, str, Callable[[], list[str]]]:
    """A proxy to the archive (left down), a node's settings (its archive behind the
    proxy), the key of the multipart upload its killed run left open (one part sent),
    and a listing of the uploads open under its prefix. The killed run also left
    ``backlog`` shards on its journal, put while the archive was down."""
    bucket, prefix = s3_settings.bucket, s3_settings.prefix
    target = ("127.0.0.1", int(s3_settings.endpoint_url.rsplit(":", 1)[1]))
    proxy = SwitchableProxy(target)
    proxy.up()
    settings = EngineSettings(
        data_dir=tmp_path / "node",
        mover_retry_max_s=0.5,
        archive=ArchiveSettings(
            endpoint_url=proxy.url,
            bucket=bucket,
            prefix=prefix,
            access_key_id=s3_settings.access_key_id,
            secret_access_key=s3_settings.secret_access_key,
        ),
    )

    def open_uploads() -> list[str]:
        listed = s3_admin.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
        return [upload["Key"] for upload in listed.get("Uploads", [])]

    store = open_store(settings)
    try:
        store.create_dataset("ds")
        store.put("ds", "first", b"archived before the kill")
        assert store.drain(30)
        proxy.down()
        for n in range(backlog):
            store.put("ds", f"backlog-{n}", b"put while the archive was down")
    finally:
        store.close()
    # What the killed run left: an upload of a generation's frames, one part sent.
    left = prefix + f"ds/{9:016x}.frames"
    upload_id = s3_admin.create_multipart_upload(Bucket=bucket, Key=left)["UploadId"]
    s3_admin.upload_part(
        Bucket=bucket, Key=left, UploadId=upload_id, PartNumber=1, Body=b"x" * (5 * MiB)
    )
    return proxy, settings, left, open_uploads


def test_uploads_a_killed_node_left_are_aborted_once_the_archive_answers_after_a_start(
    tmp_path: Path, s3_settings: S3Settings, s3_admin: S3Client
) -> None:
    # A node restarted while its archive was unreachable (it serves its hot tier) never
    # aborted the uploads its killed run left open: their parts cost storage, unseen,
    # until a later start found the archive up.
    proxy, settings, left, open_uploads = _node_a_killed_run_left_an_upload(
        tmp_path, s3_settings, s3_admin
    )
    store = open_store(settings)  # serves its hot tier; nothing aborted yet
    try:
        assert open_uploads() == [left]
        store.put("ds", "second", b"archived once the archive is back")
        proxy.up()
        poll(lambda: store.stat("ds", "second").archived, 60, "the mover to drain")
        poll(lambda: not open_uploads(), 30, "the killed run's upload to be aborted")
        assert store.get("ds", "second").to_bytes() == b"archived once the archive is back"
    finally:
        store.close()
        proxy.down()


def test_uploads_a_killed_node_left_are_aborted_under_a_steady_write_load(
    tmp_path: Path, s3_settings: S3Settings, s3_admin: S3Client
) -> None:
    # The mover aborted them only once its journal was empty, which a node under a
    # steady write-back load never has: they stayed open until it went idle.
    proxy, settings, left, open_uploads = _node_a_killed_run_left_an_upload(
        tmp_path, s3_settings, s3_admin, backlog=200
    )
    store = open_store(settings)  # its journal never empty from here on
    stop = threading.Event()
    written: list[str] = []

    def write() -> None:  # faster than the mover uploads: the journal never empties
        while not stop.is_set():
            name = f"load-{len(written)}"
            store.put("ds", name, name.encode())
            written.append(name)

    writer = threading.Thread(target=write, daemon=True)
    try:
        assert open_uploads() == [left]
        writer.start()
        proxy.up()
        poll(lambda: not open_uploads(), 30, "the killed run's upload to be aborted")
        assert store.mover.pending() > 0  # aborted while the journal was not empty
        stop.set()
        writer.join(30)
        # This run's own uploads went through: none was aborted under it.
        assert store.drain(120)
        for name in written[:50]:
            assert store.stat("ds", name).archived
            assert store.get("ds", name).to_bytes() == name.encode()
    finally:
        stop.set()
        writer.join(30)
        store.close()
        proxy.down()


_EXIT_DURING_UPLOAD = """
import threading, time
from tests.s3_stubs import ScriptedServer, fast_settings, s3_error
from tierstore.tiers.s3 import MiB, S3Tier

release = threading.Event()
def frozen(n, request):  # answers the create at once; the parts never
    if request.command == "POST" and "uploads" in request.path:
        body = (
            b"<InitiateMultipartUploadResult><UploadId>u1</UploadId>"
            b"</InitiateMultipartUploadResult>"
        )
        return 200, {"Content-Type": "application/xml"}, body
    release.wait(600)
    return s3_error(500, "InternalError")

server = ScriptedServer(frozen)
settings = fast_settings(server.endpoint_url, 3)
import dataclasses
settings = dataclasses.replace(settings, read_timeout_s=120, upload_parallelism=2)
tier = S3Tier(settings)
worker = threading.Thread(
    target=lambda: tier.put("big", b"x" * (40 * MiB)), daemon=True
)  # as the mover's thread is
worker.start()
deadline = time.monotonic() + 30
while server.methods.count("PUT") < 2:
    assert time.monotonic() < deadline, server.methods
    time.sleep(0.02)
print("parts in flight", flush=True)
"""


def test_a_process_exits_while_parts_are_in_flight_to_a_frozen_archive() -> None:
    # The parts went on a ThreadPoolExecutor's threads, which the interpreter joins at
    # exit: a node stopping while the archive was frozen lingered for minutes (the
    # parts' time-outs and retries) after the store had closed.
    child = subprocess.run(
        [sys.executable, "-c", _EXIT_DURING_UPLOAD],
        capture_output=True,
        timeout=100,  # a joined part would wait out its 120 s read time-out
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.returncode == 0, child.stderr.decode()[-2000:]
    assert b"parts in flight" in child.stdout


def test_refused_credentials_are_named_as_such(s3_settings: S3Settings) -> None:
    # "answered 403 403 to HeadBucket": a HEAD's error has no body, so its code was the
    # status again, and nothing said that the keys were the trouble.
    wrong = dataclasses.replace(s3_settings, access_key_id="nobody", secret_access_key="x" * 40)
    tier = S3Tier(wrong)
    try:
        for operation in (tier.ensure_bucket, lambda: tier.get("k"), lambda: tier.put("k", b"v")):
            with pytest.raises(ArchiveUnavailable) as refused:
                operation()
            message = str(refused.value)
            assert "refused access key 'nobody' (403" in message, message
            assert "403 403" not in message and "x" * 40 not in message
            assert "--s3-access-key" in message and "access_key_id" in message
    finally:
        tier.close()


@pytest.mark.parametrize("hours", [2, -2])
def test_a_clock_off_the_archives_is_named_not_taken_for_wrong_keys(
    s3_settings: S3Settings, monkeypatch: pytest.MonkeyPatch, hours: int
) -> None:
    # The archive refuses a request signed more than 15 minutes off its clock (403
    # RequestTimeTooSkewed; a HEAD's answer has no body, only its Date). The error said
    # to check the access key and secret key, which were right.
    tier = S3Tier(s3_settings)
    try:
        tier.put("k", b"v")
        signing_clock = botocore.auth.get_current_datetime
        monkeypatch.setattr(
            botocore.auth,
            "get_current_datetime",
            lambda *args, **kwargs: signing_clock(*args, **kwargs) + timedelta(hours=hours),
        )
        operations = (lambda: tier.get("k"), lambda: tier.stat("k"), lambda: tier.put("k", b"w"))
        for operation in operations:
            with pytest.raises(ArchiveUnavailable) as refused:
                operation()
            message = str(refused.value)
            assert "clock" in message and "NTP" in message, message
            ahead = "ahead of" if hours > 0 else "behind"
            assert f"this node's clock is about {abs(hours) * 60} minutes {ahead}" in message
            assert "access key" not in message, message
    finally:
        tier.close()


@pytest.mark.parametrize(
    "empty", [("access_key_id",), ("secret_access_key",), ("access_key_id", "secret_access_key")]
)
def test_empty_credentials_are_refused_not_taken_from_the_environment(
    s3_settings: S3Settings, monkeypatch: pytest.MonkeyPatch, empty: tuple[str, ...]
) -> None:
    # boto3 takes two empty keys for none given, and signed with whatever AWS credentials
    # the environment held (a user's own, an instance's role); with none there, the
    # error said the archive was "unreachable after 5 attempts".
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_settings.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_settings.secret_access_key)
    with pytest.raises(InvalidArgument, match="must not be empty"):
        S3Tier(dataclasses.replace(s3_settings, **dict.fromkeys(empty, ""))).put("k", b"v")
    listed = raw_s3_client(s3_settings).list_objects_v2(
        Bucket=s3_settings.bucket, Prefix=s3_settings.prefix
    )
    assert listed.get("Contents", []) == []


@pytest.mark.parametrize("region", ["us east-1", "eu/west-1"])
def test_a_region_botocore_refuses_is_a_bad_setting_by_name(
    s3_settings: S3Settings, region: str
) -> None:
    # botocore refused it when the tier made its client, on the first request: its own
    # InvalidRegionError came out of every call, and out of `serve` as a traceback.
    with pytest.raises(InvalidArgument, match=f"region {region!r}"):
        S3Tier(dataclasses.replace(s3_settings, region=region)).get("k")
