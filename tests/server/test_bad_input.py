"""Callers' mistakes against the real server: each gets the right status code, never INTERNAL,
and the server keeps serving correct data afterwards.

Requests the client library would refuse to send go through raw grpc calls on a TLS
channel with the admin token. Heavy fuzzing lives in ``test_fuzz.py``; here every case is
a named mistake with the answer it deserves.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest
from grpc_health.v1 import health_pb2

from tierstore import errors
from tierstore.client.client import Client
from tierstore.server.tls import ensure_tls_material
from tierstore.types import Durability, Grant, Role
from tierstore.v1 import (
    admin_pb2,
    common_pb2,
    datasets_pb2,
    placement_pb2,
    shards_pb2,
)
from tierstore.wire.status import ERROR_HEADER

from .conftest import ServerProcess, poll, unique

MiB = 1 << 20
CALL_TIMEOUT_S = 30
CALLER_MISTAKES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
DATASETS = "/tierstore.v1.DatasetService/"
SHARDS = "/tierstore.v1.ShardService/"
PLACEMENT = "/tierstore.v1.PlacementService/"
ADMIN = "/tierstore.v1.AdminService/"
UNARY = [
    DATASETS + "CreateDataset",
    DATASETS + "GetDataset",
    DATASETS + "ListDatasets",
    DATASETS + "UpdateDataset",
    DATASETS + "DeleteDataset",
    SHARDS + "StatShard",
    SHARDS + "ListShards",
    SHARDS + "DeleteShard",
    PLACEMENT + "Pin",
    PLACEMENT + "Unpin",
    PLACEMENT + "Prefetch",
    PLACEMENT + "Evict",
    PLACEMENT + "GetTierStats",
    PLACEMENT + "DeclarePlan",
    PLACEMENT + "ReportPosition",
    PLACEMENT + "ClosePlan",
    ADMIN + "CreateToken",
    ADMIN + "RevokeToken",
    ADMIN + "ListTokens",
    ADMIN + "RotateKeys",
    ADMIN + "RetireKey",
    ADMIN + "ListKeys",
]


class Raw:
    """Raw calls (bytes in, bytes out) to the server, with the admin token."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.channel = server.channel()

    def unary(self, method: str, request: Any, metadata: Any = None) -> bytes:
        payload = request if isinstance(request, bytes) else request.SerializeToString()
        call = self.channel.unary_unary(method)
        return call(  # type: ignore[no-any-return]
            payload,
            metadata=self.server.metadata if metadata is None else metadata,
            timeout=CALL_TIMEOUT_S,
        )

    def put(self, messages: Iterator[Any] | list[Any], metadata: Any = None) -> bytes:
        encoded = (m if isinstance(m, bytes) else m.SerializeToString() for m in messages)
        call = self.channel.stream_unary(SHARDS + "PutShard")
        return call(  # type: ignore[no-any-return]
            encoded,
            metadata=self.server.metadata if metadata is None else metadata,
            timeout=CALL_TIMEOUT_S,
        )

    def stream(self, method: str, request: Any) -> Any:
        call = self.channel.unary_stream(method)
        return call(
            request.SerializeToString(), metadata=self.server.metadata, timeout=CALL_TIMEOUT_S
        )

    def get(self, request: shards_pb2.GetShardRequest) -> Any:
        call = self.channel.unary_stream(SHARDS + "GetShard")
        return call(
            request.SerializeToString(), metadata=self.server.metadata, timeout=CALL_TIMEOUT_S
        )


def refused(action: Any, *args: Any) -> tuple[grpc.StatusCode, str]:
    """Run a raw call that must fail; its status code and ``tierstore-error`` class name."""
    with pytest.raises(grpc.RpcError) as caught:
        result = action(*args)
        if isinstance(result, grpc.Call) or hasattr(result, "__next__"):
            list(result)  # a server stream fails when read
    error: Any = caught.value
    names = [v for k, v in (error.trailing_metadata() or ()) if k == ERROR_HEADER]
    return error.code(), names[0] if names else ""


def header(
    dataset: str,
    shard: str,
    frames: int,
    kind: int = common_pb2.SHARD_KIND_RAW,
    *,
    uncounted: bool = False,
) -> Any:
    return shards_pb2.PutShardRequest(
        header=shards_pb2.PutShardHeader(
            dataset=dataset, shard=shard, kind=kind, frame_count=frames, uncounted=uncounted
        )
    )


def frame(data: bytes) -> Any:
    return shards_pb2.PutShardRequest(frame=data)


def end() -> Any:
    return shards_pb2.PutShardRequest(end=shards_pb2.PutShardEnd())


def plan_request(dataset: str, shards: list[str], **fields: Any) -> Any:
    return placement_pb2.DeclarePlanRequest(
        dataset=dataset, explicit=placement_pb2.ShardList(shards=shards), **fields
    )


@pytest.fixture(scope="module")
def raw(server: ServerProcess) -> Raw:
    return Raw(server)


def still_serving(server: ServerProcess, admin: Client) -> None:
    """The server is up and serves the right bytes."""
    assert server.process is not None and server.process.poll() is None
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
    canary = unique()
    admin.create_dataset(canary, encrypted=False)
    payload = os.urandom(1000)
    admin.put(canary, "canary", payload)
    assert admin.get(canary, "canary").to_pybytes() == payload
    admin.delete_dataset(canary, force=True)


BAD_DATASETS = ["", "Bad", "a b", "-lead", "x" * 64, "ds/x", "é", "a\x00b"]
BAD_SHARDS = ["", "/abs", "../up", "a/../b", "a/..", "x" * 1025, "tab\there", "nul\x00", "\n"]


def test_invalid_names(raw: Raw, server: ServerProcess, admin: Client, dataset: str) -> None:
    admin.put(dataset, "ok", b"fine")
    cases: list[tuple[str, Any]] = []
    for bad in BAD_DATASETS:
        cases += [
            (DATASETS + "CreateDataset", datasets_pb2.CreateDatasetRequest(name=bad)),
            (DATASETS + "GetDataset", datasets_pb2.GetDatasetRequest(name=bad)),
            (DATASETS + "DeleteDataset", datasets_pb2.DeleteDatasetRequest(name=bad)),
            (SHARDS + "StatShard", shards_pb2.StatShardRequest(dataset=bad, shard="ok")),
            (SHARDS + "ListShards", shards_pb2.ListShardsRequest(dataset=bad)),
            (PLACEMENT + "Prefetch", placement_pb2.PrefetchRequest(dataset=bad, shards=["ok"])),
            (PLACEMENT + "DeclarePlan", plan_request(bad, ["ok"])),
            (ADMIN + "ExportTrace", admin_pb2.ExportTraceRequest(dataset=bad or "-x")),
        ]
    for bad in BAD_SHARDS:
        cases += [
            (SHARDS + "StatShard", shards_pb2.StatShardRequest(dataset=dataset, shard=bad)),
            (SHARDS + "DeleteShard", shards_pb2.DeleteShardRequest(dataset=dataset, shard=bad)),
            (PLACEMENT + "Pin", placement_pb2.PinRequest(dataset=dataset, shard=bad)),
            (PLACEMENT + "DeclarePlan", plan_request(dataset, ["ok", bad])),
            (PLACEMENT + "Evict", placement_pb2.ShardRef(dataset=dataset, shard=bad)),
            (
                PLACEMENT + "Prefetch",
                placement_pb2.PrefetchRequest(dataset=dataset, shards=["ok", bad]),
            ),
        ]
    for method, request in cases:
        call = raw.stream if method == ADMIN + "ExportTrace" else raw.unary
        code, name = refused(call, method, request)
        assert (code, name) == (grpc.StatusCode.INVALID_ARGUMENT, "InvalidName"), (method, request)
    for bad in BAD_SHARDS:
        code, name = refused(raw.get, shards_pb2.GetShardRequest(dataset=dataset, shard=bad))
        assert (code, name) == (grpc.StatusCode.INVALID_ARGUMENT, "InvalidName"), bad
        code, name = refused(raw.put, [header(dataset, bad, 1), frame(b"x"), end()])
        assert (code, name) == (grpc.StatusCode.INVALID_ARGUMENT, "InvalidName"), bad
    for bad in BAD_DATASETS:
        code, name = refused(raw.put, [header(bad, "s", 1), frame(b"x"), end()])
        assert (code, name) == (grpc.StatusCode.INVALID_ARGUMENT, "InvalidName"), bad
    assert [s.name for s in admin.list(dataset)] == ["ok"]
    still_serving(server, admin)


def test_bad_values(raw: Raw, server: ServerProcess, admin: Client, dataset: str) -> None:
    admin.put(dataset, "s", b"0123456789")
    cases: list[tuple[str, Any, grpc.StatusCode]] = [
        (
            DATASETS + "CreateDataset",
            datasets_pb2.CreateDatasetRequest(
                name=unique(),
                settings=common_pb2.DatasetSettings(durability=7),  # type: ignore[arg-type]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            DATASETS + "UpdateDataset",
            datasets_pb2.UpdateDatasetRequest(name=dataset, durability=99),  # type: ignore[arg-type]
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            ADMIN + "CreateToken",
            admin_pb2.CreateTokenRequest(principal="p", ttl_s=float("nan")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            ADMIN + "CreateToken",
            admin_pb2.CreateTokenRequest(principal="p", ttl_s=-5),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            ADMIN + "CreateToken",
            admin_pb2.CreateTokenRequest(principal="bad principal"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            ADMIN + "CreateToken",
            admin_pb2.CreateTokenRequest(
                principal="p",
                grants=[admin_pb2.Grant(dataset=dataset, role=42)],  # type: ignore[arg-type]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            ADMIN + "CreateToken",
            admin_pb2.CreateTokenRequest(
                principal="p", grants=[admin_pb2.Grant(dataset="Bad Name", role=1)]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            ADMIN + "RevokeToken",
            admin_pb2.RevokeTokenRequest(token_id=""),  # was NOT_FOUND "no token ''"
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            ADMIN + "RevokeToken",
            admin_pb2.RevokeTokenRequest(token_id="x" * 10_000),  # was NOT_FOUND
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            ADMIN + "RevokeToken",
            admin_pb2.RevokeTokenRequest(token_id="0123456789ab"),  # well formed, unknown
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            SHARDS + "StatShard",
            shards_pb2.StatShardRequest(dataset=dataset, shard="nope"),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]
    for method, request, expected in cases:
        code, _ = refused(raw.unary, method, request)
        assert code == expected, (method, request)
    # Durability set but unspecified made a write-through dataset write-back.
    admin.update_dataset(dataset, durability="write-through")
    unspecified = datasets_pb2.UpdateDatasetRequest(
        name=dataset, durability=common_pb2.DURABILITY_UNSPECIFIED
    )
    assert unspecified.HasField("durability")
    code, name = refused(raw.unary, DATASETS + "UpdateDataset", unspecified)
    assert (code, name) == (grpc.StatusCode.INVALID_ARGUMENT, "InvalidArgument")
    assert admin.get_dataset(dataset).durability is Durability.WRITE_THROUGH
    plan_cases: list[tuple[str, Any, str]] = [
        (
            DATASETS + "UpdateDataset",
            datasets_pb2.UpdateDatasetRequest(name=dataset, policy="x"),
            "UnknownPolicy",
        ),
        (
            DATASETS + "UpdateDataset",
            datasets_pb2.UpdateDatasetRequest(name=dataset, policy="belady"),
            "InvalidArgument",
        ),
        (
            # Its echo in the message once passed the client's limit for a trailer: the
            # caller got a transport failure (RESOURCE_EXHAUSTED) instead of the error.
            DATASETS + "UpdateDataset",
            datasets_pb2.UpdateDatasetRequest(name=dataset, policy="p" * 20_000),
            "UnknownPolicy",
        ),
        (
            DATASETS + "CreateDataset",
            datasets_pb2.CreateDatasetRequest(
                name=unique(), settings=common_pb2.DatasetSettings(policy="x")
            ),
            "UnknownPolicy",
        ),
        (
            PLACEMENT + "Pin",
            placement_pb2.PinRequest(dataset=dataset, shard="s", ttl_s=-1),
            "InvalidArgument",
        ),
        (
            PLACEMENT + "Pin",
            placement_pb2.PinRequest(dataset=dataset, shard="s", ttl_s=float("nan")),
            "InvalidArgument",
        ),
        (
            PLACEMENT + "DeclarePlan",
            placement_pb2.DeclarePlanRequest(dataset=dataset),
            "InvalidPlan",
        ),
        (PLACEMENT + "DeclarePlan", plan_request(dataset, ["s", "nope"]), "InvalidPlan"),
        (PLACEMENT + "DeclarePlan", plan_request(dataset, ["s"] * 65), "InvalidPlan"),
        (PLACEMENT + "DeclarePlan", plan_request(dataset, ["s"], prefix="s"), "InvalidPlan"),
        (
            PLACEMENT + "DeclarePlan",
            plan_request(dataset, ["s"], ttl_s=float("inf")),
            "InvalidArgument",
        ),
        (PLACEMENT + "DeclarePlan", plan_request(dataset, ["s"], job="\n"), "InvalidArgument"),
        (PLACEMENT + "DeclarePlan", plan_request(unique(), ["s"]), "DatasetNotFound"),
        (
            PLACEMENT + "DeclarePlan",
            placement_pb2.DeclarePlanRequest(dataset=dataset, sampler=placement_pb2.SamplerSpec()),
            "InvalidArgument",  # an unspecified sampler kind
        ),
        (
            PLACEMENT + "DeclarePlan",
            placement_pb2.DeclarePlanRequest(
                dataset=dataset,
                sampler=placement_pb2.SamplerSpec(kind=3, samples_per_epoch=(1 << 64) - 1),
            ),
            "InvalidPlan",
        ),
        (
            PLACEMENT + "DeclarePlan",
            placement_pb2.DeclarePlanRequest(
                dataset=dataset, sampler=placement_pb2.SamplerSpec(kind=2, rank=5, world_size=5)
            ),
            "InvalidArgument",
        ),
        (
            PLACEMENT + "ReportPosition",
            placement_pb2.ReportPositionRequest(job="nope"),
            "PlanNotFound",
        ),
        (
            PLACEMENT + "ReportPosition",
            placement_pb2.ReportPositionRequest(job=""),
            "InvalidArgument",
        ),
        (PLACEMENT + "ClosePlan", placement_pb2.ClosePlanRequest(job="nope"), "PlanNotFound"),
    ]
    for method, request, name in plan_cases:
        code, got = refused(raw.unary, method, request)
        assert got == name, (method, request, got)
    unknown_trace = admin_pb2.ExportTraceRequest(dataset=unique())  # a typo: not an empty trace
    assert refused(raw.stream, ADMIN + "ExportTrace", unknown_trace) == (
        grpc.StatusCode.NOT_FOUND,
        "DatasetNotFound",
    )
    job = placement_pb2.DeclarePlanResponse.FromString(
        raw.unary(PLACEMENT + "DeclarePlan", plan_request(dataset, ["s", "s"], job="j"))
    ).job
    for position in (3, (1 << 64) - 1):
        request = placement_pb2.ReportPositionRequest(job=job, position=position)
        assert refused(raw.unary, PLACEMENT + "ReportPosition", request)[1] == "InvalidArgument"
    raw.unary(PLACEMENT + "ClosePlan", placement_pb2.ClosePlanRequest(job=job))
    for request in [
        shards_pb2.GetShardRequest(
            dataset=dataset, shard="s", byte_range=common_pb2.ByteRange(offset=(1 << 64) - 1)
        ),
        shards_pb2.GetShardRequest(
            dataset=dataset, shard="s", frame_range=common_pb2.FrameRange(first=(1 << 32) - 1)
        ),
    ]:
        code, name = refused(raw.get, request)
        assert (code, name) == (grpc.StatusCode.OUT_OF_RANGE, "RangePastEnd")
    huge_length = shards_pb2.GetShardRequest(
        dataset=dataset, shard="s", byte_range=common_pb2.ByteRange(offset=3, length=(1 << 64) - 1)
    )
    messages = list(raw.get(huge_length))  # cut at the end
    assert shards_pb2.GetShardResponse.FromString(messages[0]).header.length == 7
    for kind in (common_pb2.SHARD_KIND_UNSPECIFIED, 77):
        code, _ = refused(raw.put, [header(dataset, "k", 1, kind=kind), frame(b"x"), end()])
        assert code == grpc.StatusCode.INVALID_ARGUMENT, kind
    code, name = refused(
        raw.put,
        [header(dataset, "arrow", 1, kind=common_pb2.SHARD_KIND_ARROW), frame(b"junk"), end()],
    )
    assert (code, name) == (grpc.StatusCode.INVALID_ARGUMENT, "MalformedArrow")
    still_serving(server, admin)


def test_oversize_frame(raw: Raw, server: ServerProcess, admin: Client, dataset: str) -> None:
    limit = 4 * MiB
    code, name = refused(raw.put, [header(dataset, "big", 1), frame(b"\0" * (limit + 1))])
    assert (code, name) == (grpc.StatusCode.INVALID_ARGUMENT, "OversizeFrame")
    code, name = refused(
        raw.put, [header(dataset, "big", 2), frame(b"\1" * 100), frame(b"\0" * (limit + 1))]
    )
    assert (code, name) == (grpc.StatusCode.INVALID_ARGUMENT, "OversizeFrame")
    with pytest.raises(errors.ShardNotFound):
        admin.stat(dataset, "big")
    raw.put([header(dataset, "big", 1), frame(b"\2" * limit), end()])  # the limit is fine
    assert admin.get(dataset, "big").to_pybytes() == b"\2" * limit
    still_serving(server, admin)


def test_put_past_the_datasets_hot_quota(server: ServerProcess, admin: Client) -> None:
    capped = unique()
    admin.create_dataset(capped, encrypted=False, hot_quota_bytes=64 * 1024)
    with pytest.raises(errors.QuotaExceeded, match="quota") as caught:
        admin.put(capped, "huge", os.urandom(64 * 1024 + 1))
    assert isinstance(caught.value, errors.ResourceExhausted)  # RESOURCE_EXHAUSTED on the wire
    with pytest.raises(errors.ShardNotFound):
        admin.stat(capped, "huge")
    admin.put(capped, "fits", b"x" * 1000)
    assert admin.get(capped, "fits").to_pybytes() == b"x" * 1000
    admin.delete_dataset(capped, force=True)
    still_serving(server, admin)


def test_a_pipe_bigger_than_its_quota_is_refused_as_it_is_sent(
    server: ServerProcess, admin: Client
) -> None:
    # A pipe or device was read whole before a byte was sent: /dev/zero into a 10 MiB
    # quota took the client to 10 GB and MemoryError, and the server never got to
    # refuse it. Sent as it comes, the quota stops it after about the quota's bytes.
    capped = unique()
    admin.create_dataset(capped, encrypted=False, hot_quota_bytes=1 * MiB)
    offered = 64 * MiB
    written = 0
    read_end, write_end = os.pipe()

    def write() -> None:
        nonlocal written
        with contextlib.suppress(BrokenPipeError), os.fdopen(write_end, "wb") as writer:
            for _ in range(offered // MiB):
                writer.write(b"\0" * MiB)
                written += MiB

    with ThreadPoolExecutor(1) as pool:
        writing = pool.submit(write)
        with os.fdopen(read_end, "rb") as reader, pytest.raises(errors.QuotaExceeded):
            admin.put(capped, "endless", reader)
        writing.result(timeout=30)  # the reader's end closed: the writer stops
    assert written < offered / 2, written
    with pytest.raises(errors.ShardNotFound):
        admin.stat(capped, "endless")
    admin.delete_dataset(capped, force=True)
    still_serving(server, admin)


def refused_before_the_rest(raw: Raw, first: list[Any]) -> tuple[grpc.StatusCode, str]:
    """A put that sends the messages ``first`` and then waits: it must be refused before
    the rest is sent (see :func:`refused`)."""
    release = threading.Event()

    def messages() -> Iterator[Any]:
        yield from first
        release.wait(CALL_TIMEOUT_S)  # the rest never comes before the answer
        yield frame(b"\0")

    try:
        answer = refused(raw.put, messages())
        assert not release.is_set()
    finally:
        release.set()
    return answer


def test_a_put_bigger_than_its_quota_is_refused_before_it_is_all_sent(
    raw: Raw, server: ServerProcess, admin: Client
) -> None:
    # The frames of a put are spooled to disk until the last one is in: one that could
    # never be stored must not get to fill the disk first.
    capped = unique()
    admin.create_dataset(capped, encrypted=False, hot_quota_bytes=64 * 1024)
    first = [header(capped, "endless", 1_000_000)]
    first += [frame(b"\0" * 32 * 1024)] * 3  # 96 KiB: past the quota
    code, name = refused_before_the_rest(raw, first)
    assert (code, name) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QuotaExceeded")
    with pytest.raises(errors.ShardNotFound):
        admin.stat(capped, "endless")
    admin.delete_dataset(capped, force=True)
    still_serving(server, admin)


@pytest.mark.parametrize("kind", ["raw", "other schema"])
def test_a_put_of_another_schema_is_refused_at_its_first_frame(
    raw: Raw, server: ServerProcess, admin: Client, kind: str
) -> None:
    # A dataset with an Arrow schema refuses the shard at its first frame, not once its
    # sender has sent (and the node spooled) the whole of it.
    schema = pa.schema([pa.field("label", pa.int64())])
    typed = unique()
    admin.create_dataset(typed, encrypted=False, schema=schema)
    if kind == "raw":
        first, shard_kind = b"\0" * 1024, common_pb2.SHARD_KIND_RAW
    else:
        other = pa.schema([pa.field("label", pa.string())])
        first, shard_kind = other.serialize().to_pybytes(), common_pb2.SHARD_KIND_ARROW
    code, name = refused_before_the_rest(
        raw, [header(typed, "other", 1_000, shard_kind), frame(first)]
    )
    assert (code, name) == (grpc.StatusCode.INVALID_ARGUMENT, "SchemaMismatch")
    with pytest.raises(errors.ShardNotFound):
        admin.stat(typed, "other")
    admin.delete_dataset(typed, force=True)
    still_serving(server, admin)


def test_frame_count_differs_from_header(
    raw: Raw, server: ServerProcess, admin: Client, dataset: str
) -> None:
    streams = {
        "fewer frames": [header(dataset, "s", 3), frame(b"a"), frame(b"b"), end()],
        "more frames": [header(dataset, "s", 1), frame(b"a"), frame(b"b"), end()],
        # Every frame, but no end: a cancelled stream may look like this to the server.
        "no end": [header(dataset, "s", 2), frame(b"a"), frame(b"b")],
        "end before the frames": [header(dataset, "s", 2), end(), frame(b"a"), frame(b"b")],
        "no frames": [header(dataset, "s", 2)],
        "no header": [frame(b"a")],
        "nothing": [],
        "two headers": [header(dataset, "s", 1), header(dataset, "s", 1), frame(b"a")],
        "empty message": [shards_pb2.PutShardRequest(), frame(b"a")],
        # Uncounted, yet announcing a count: one or the other.
        "uncounted with a count": [header(dataset, "s", 1, uncounted=True), frame(b"a"), end()],
    }
    for what, messages in streams.items():
        code, _ = refused(raw.put, messages)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, what
    with pytest.raises(errors.ShardNotFound):
        admin.stat(dataset, "s")
    # ...and so does a client of a release before end messages: it is told to upgrade.
    with pytest.raises(grpc.RpcError) as no_end:
        raw.put(streams["no end"])
    assert "a client of a release before put end messages" in no_end.value.details()  # type: ignore[attr-defined]
    raw.put([header(dataset, "s", 2), frame(b"a"), frame(b"b"), end()])
    assert admin.get(dataset, "s").to_pybytes() == b"ab"
    still_serving(server, admin)


def test_put_cancelled_mid_stream_leaves_nothing(
    raw: Raw, server: ServerProcess, admin: Client, dataset: str
) -> None:
    hot_before = admin.stats()["hot_bytes"]
    chunk = os.urandom(4 * MiB)
    sent = threading.Event()
    release = threading.Event()

    def messages() -> Iterator[bytes]:
        yield header(dataset, "cancelled", 40).SerializeToString()
        for index in range(40):
            if index == 20:  # 80 MiB sent: past the spool's memory limit, on disk now
                sent.set()
                release.wait(30)
            yield frame(chunk).SerializeToString()

    call = raw.channel.stream_unary(SHARDS + "PutShard")
    future = call.future(messages(), metadata=server.metadata, timeout=60)
    assert sent.wait(30)
    poll(server.spool_fds, 30, "the server to spool the put to a file")
    future.cancel()
    release.set()
    with pytest.raises(grpc.FutureCancelledError):
        future.result()
    poll(lambda: not server.spool_fds(), 30, "the server to drop the spool file")
    spool = server.data_dir / "spool"
    assert not spool.exists() or list(spool.iterdir()) == []
    with pytest.raises(errors.ShardNotFound):
        admin.stat(dataset, "cancelled")
    stats = admin.stats()
    assert stats["hot_bytes"] == hot_before
    assert stats["datasets"][dataset]["shards"] == 0
    still_serving(server, admin)


def test_concurrent_writers_of_one_shard(server: ServerProcess, dataset: str) -> None:
    client = server.connect()
    client.frame_bytes = 64 * 1024  # several frames each, so a mix would show
    payloads = [bytes([i]) * (3 * 64 * 1024 + i) for i in range(8)]
    seen: list[bytes] = []
    stop = threading.Event()

    def write(payload: bytes) -> int:
        return client.put(dataset, "contended", payload).size

    def read() -> None:
        while not stop.is_set() or not seen:  # at least one read, so the check below holds one
            # Not written yet, or replaced mid-read (the client then retries).
            with contextlib.suppress(errors.ShardNotFound, errors.Unavailable):
                seen.append(client.get(dataset, "contended").to_pybytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            sizes = list(pool.map(write, payloads * 3))
    finally:
        stop.set()
        reader.join()
    assert sizes == [len(p) for p in payloads * 3]  # every writer succeeded
    final = client.get(dataset, "contended").to_pybytes()
    assert final in payloads
    assert seen and all(got in payloads for got in seen)  # never a mix of generations
    assert [s.name for s in client.list(dataset)] == ["contended"]
    client.close()


def test_client_disconnecting_mid_get(server: ServerProcess, admin: Client, dataset: str) -> None:
    data = os.urandom(24 * MiB)
    admin.put(dataset, "big", data)
    request = shards_pb2.GetShardRequest(dataset=dataset, shard="big")
    for how in ("cancel", "close"):
        channel = server.channel()
        call = channel.unary_stream(SHARDS + "GetShard")(
            request.SerializeToString(), metadata=server.metadata, timeout=30
        )
        first = shards_pb2.GetShardResponse.FromString(next(call))
        assert first.header.frame_count == 6
        next(call)  # one frame, then go away
        if how == "cancel":
            call.cancel()
        else:
            channel.close()
    # Many abandoned streams at once, too.
    channels = [server.channel() for _ in range(16)]
    for channel in channels:
        next(
            channel.unary_stream(SHARDS + "GetShard")(
                request.SerializeToString(), metadata=server.metadata, timeout=30
            )
        )
    for channel in channels:
        channel.close()
    assert admin.get(dataset, "big").to_pybytes() == data
    still_serving(server, admin)


def test_expired_token(server: ServerProcess, admin: Client, dataset: str) -> None:
    token_id, token = admin.create_token("short-lived", [Grant(dataset, Role.READER)], ttl_s=1)
    info = {t["token_id"]: t for t in admin.list_tokens()}[token_id]
    assert info["expires_at"] == pytest.approx(info["created_at"] + 1)
    with server.connect(token=token) as client:

        def rejected() -> bool:
            try:
                client.list(dataset)
            except errors.Unauthenticated:
                return True
            return False

        poll(rejected, 15, "the token to expire", interval_s=0.1)
        with pytest.raises(errors.Unauthenticated):
            client.get(dataset, "anything")
    still_serving(server, admin)


def test_wrong_tokens(raw: Raw, server: ServerProcess, admin: Client, dataset: str) -> None:
    admin.put(dataset, "s", b"secret")
    real = server.token
    token_id = real.split("_")[1]
    wrong = [
        (("authorization", f"Bearer ts_{token_id}_{'A' * 43}"),),  # right id, wrong secret
        (("authorization", f"Bearer ts_000000000000_{'A' * 43}"),),  # unknown id
        (("authorization", "Bearer not-a-token"),),
        (("authorization", real),),  # no "Bearer "
        (("authorization", f"Basic {real}"),),
        (("authorization", f"Bearer {real}x"),),
        (("x-token", real),),
        (),
        # two: refused even when one is right, whichever comes first
        (("authorization", f"Bearer {real}"), ("authorization", "Bearer not-a-token")),
        (("authorization", "Bearer not-a-token"), ("authorization", f"Bearer {real}")),
        (("authorization", f"Bearer {real}"), ("authorization", f"Bearer {real}")),
    ]
    request = shards_pb2.StatShardRequest(dataset=dataset, shard="s")
    for metadata in wrong:
        code, name = refused(raw.unary, SHARDS + "StatShard", request, metadata)
        assert (code, name) == (grpc.StatusCode.UNAUTHENTICATED, "Unauthenticated"), metadata
        code, _ = refused(
            lambda md=metadata: list(
                raw.channel.unary_stream(SHARDS + "GetShard")(
                    shards_pb2.GetShardRequest(dataset=dataset, shard="s").SerializeToString(),
                    metadata=md,
                    timeout=CALL_TIMEOUT_S,
                )
            )
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED, metadata
        code, _ = refused(raw.put, [header(dataset, "w", 1), frame(b"x"), end()], metadata)
        assert code == grpc.StatusCode.UNAUTHENTICATED, metadata
    client = server.connect(token=f"ts_{token_id}_{'B' * 43}")
    with client, pytest.raises(errors.Unauthenticated):
        client.get(dataset, "s")
    with pytest.raises(errors.ShardNotFound):
        admin.stat(dataset, "w")
    still_serving(server, admin)


def test_wrong_ca_and_plaintext_client(
    server: ServerProcess, admin: Client, dataset: str, tmp_path: Path
) -> None:
    admin.put(dataset, "s", b"secret")
    other = ensure_tls_material(tmp_path / "other-node")
    with server.connect(ca=other.ca_cert_path, timeout_s=5) as client:
        # Its own class, raised without retries: the same CA rejects the same certificate.
        with pytest.raises(errors.ServerCertificateRejected) as caught:
            client.get(dataset, "s")
        assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
        assert "TIERSTORE_CA" in str(caught.value)  # where the CA file is named
        with pytest.raises(errors.ServerCertificateRejected):
            client.list_datasets()
    plain = server.connect(insecure=True, ca=None, timeout_s=5)
    with plain, pytest.raises(errors.Unavailable) as dropped:
        plain.get(dataset, "s")
    assert not isinstance(dropped.value, errors.ServerCertificateRejected)
    still_serving(server, admin)


def test_unknown_fields_are_ignored(raw: Raw, server: ServerProcess, dataset: str) -> None:
    extra = bytes([0x98, 0x06, 0x2A])  # field 99, varint 42
    extra += bytes([0xA2, 0x06, 0x03]) + b"abc"  # field 100, 3 bytes
    reply = raw.unary(
        DATASETS + "GetDataset",
        datasets_pb2.GetDatasetRequest(name=dataset).SerializeToString() + extra,
    )
    assert common_pb2.Dataset.FromString(reply).name == dataset
    raw.put(
        [
            header(dataset, "u", 1).SerializeToString() + extra,
            frame(b"xyz").SerializeToString() + extra,
            end().SerializeToString() + extra,
        ]
    )
    got = list(raw.get(shards_pb2.GetShardRequest(dataset=dataset, shard="u")))
    assert len(got) == 2


def test_random_bytes_never_internal(raw: Raw, server: ServerProcess, admin: Client) -> None:
    rng = random.Random(3)
    payloads = [b"", b"\x00", b"\xff" * 7, b"\x0a\x05hello", b"\x12\xff\xff\xff\xff\x0f"]
    payloads += [rng.randbytes(rng.randint(1, 200)) for _ in range(12)]
    for method in UNARY:
        for payload in payloads:
            try:
                raw.unary(method, payload)
            except grpc.RpcError as error:
                code: Any = error.code()  # type: ignore[attr-defined]
                assert code in CALLER_MISTAKES, (method, payload, code, error)
    for payload in payloads:
        for method in (SHARDS + "GetShard", ADMIN + "ExportTrace"):
            try:
                list(
                    raw.channel.unary_stream(method)(
                        payload, metadata=server.metadata, timeout=CALL_TIMEOUT_S
                    )
                )
            except grpc.RpcError as error:
                assert error.code() in CALLER_MISTAKES, (method, payload, error)  # type: ignore[attr-defined]
        try:
            raw.put([payload, payload])
        except grpc.RpcError as error:
            assert error.code() in CALLER_MISTAKES, (payload, error)  # type: ignore[attr-defined]
    still_serving(server, admin)
