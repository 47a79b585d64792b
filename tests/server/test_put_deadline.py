"""A put's wait for quota room ends before its caller's deadline (the computation, and
the servicer passing it on to the engine in a real server); a put or delete whose
caller gave up while it waited for the writer changes nothing."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.engine.backdoor import holding_the_writer
from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import FRAME, payload, wait_until
from tests.server.servers import (
    RunningServer,
    error_name,
    invoke,
    metadata,
    once_the_server_sees_the_caller_gone,
    serving,
)
from tierstore.server import datasets as dataset_service
from tierstore.server import shards as shard_service
from tierstore.server.shards import _wait_within
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, Role
from tierstore.v1 import common_pb2, datasets_pb2, shards_pb2


class Deadline:
    """The one ServicerContext method _wait_within reads."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.mark.parametrize(
    "remaining, wait",
    [(None, None), (30.0, 29.0), (1.5, 0.5), (0.2, 0.0), (0.0, 0.0)],
)
def test_the_wait_leaves_the_commit_a_second_of_the_deadline(
    remaining: float | None, wait: float | None
) -> None:
    assert _wait_within(Deadline(remaining)) == pytest.approx(wait)  # type: ignore[arg-type]


#: the put's RPC deadline: long enough that a loaded machine still answers within it.
DEADLINE_S = 4.0


def put_call(node: RunningServer) -> grpc.StreamUnaryMultiCallable:
    return node.channel().stream_unary(
        "/tierstore.v1.ShardService/PutShard",
        request_serializer=shards_pb2.PutShardRequest.SerializeToString,
        response_deserializer=common_pb2.ShardInfo.FromString,
    )


def put_requests(shard: str, data: bytes) -> list[shards_pb2.PutShardRequest]:
    return [
        shards_pb2.PutShardRequest(
            header=shards_pb2.PutShardHeader(
                dataset="capped", shard=shard, kind=common_pb2.SHARD_KIND_RAW, frame_count=1
            )
        ),
        shards_pb2.PutShardRequest(frame=data),
        shards_pb2.PutShardRequest(end=shards_pb2.PutShardEnd()),
    ]


@contextlib.contextmanager
def full_quota_node(root: Path) -> Iterator[tuple[RunningServer, FaultyTier]]:
    """A server whose dataset ``capped`` is full of shards whose uploads the archive
    holds: a put into it may wait for room (quota_wait_s is 30 s)."""
    archive = FaultyTier(MemoryTier())
    archive.hold_writes()
    capped = {"capped": DatasetSettings(policy="lru", hot_quota_bytes=3 * (FRAME + 8))}
    with serving(root, insecure=True, archive=archive, datasets=capped) as node:
        try:
            for index in range(3):
                node.store.put("capped", f"s{index}", payload(FRAME, index))
            assert archive.write_waiting.wait(10)
            yield node, archive
        finally:
            archive.release_writes()  # before the store closes: its mover stops then


def test_a_put_at_a_full_quota_gives_up_before_its_rpc_deadline(tmp_path: Path) -> None:
    with full_quota_node(tmp_path) as (node, archive):
        token = node.token("writer", ("capped", Role.WRITER))
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            put_call(node)(
                iter(put_requests("s3", payload(FRAME, 3))),
                timeout=DEADLINE_S,
                metadata=metadata(token),
            )
        took = time.monotonic() - started
        # Refused by the server, with its reason, not cut off by the deadline, after
        # waiting what the deadline allowed less the second kept for the commit.
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_name(caught.value) == "QuotaExceeded"
        allowed = re.search(r"quota_wait_s \(([0-9.]+) s\)", caught.value.details() or "")
        assert allowed is not None, caught.value.details()
        # (gRPC rounds the deadline it passes on: a few ms over it are no error)
        assert DEADLINE_S - 2.5 < float(allowed.group(1)) < DEADLINE_S - 0.9
        assert float(allowed.group(1)) <= took < DEADLINE_S
        assert not node.store.list("capped", prefix="s3")[0]
        assert not archive.hold_timed_out


def test_a_cancelled_put_stops_waiting_for_room(tmp_path: Path) -> None:
    with full_quota_node(tmp_path) as (node, archive):
        token = node.token("writer", ("capped", Role.WRITER))
        call = put_call(node).future(
            iter(put_requests("s3", payload(FRAME, 3))), metadata=metadata(token)
        )  # no deadline: only the cancel can end its wait early
        wait_until(lambda: node.store.stats().quota_waiting_puts == 1, "the put to wait")
        call.cancel()
        # Well within quota_wait_s (30 s): the server noticed, gave the place back and
        # stored nothing.
        wait_until(lambda: node.store.stats().quota_waiting_puts == 0, "the wait to end")
        assert not archive.hold_timed_out
        assert not node.store.list("capped", prefix="s3")[0]


SHARDS = "/tierstore.v1.ShardService/"
DATASETS = "/tierstore.v1.DatasetService/"
#: each change a caller may give up on while it waits for the writer: its method, what
#: it sends, and the role it needs
CHANGES: dict[str, tuple[str, Callable[[], Any], Role]] = {
    "put": (SHARDS + "PutShard", lambda: put_requests("s", b"v1, given up on"), Role.WRITER),
    "delete": (
        SHARDS + "DeleteShard",
        lambda: shards_pb2.DeleteShardRequest(dataset="capped", shard="s"),
        Role.WRITER,
    ),
    "dataset delete": (
        DATASETS + "DeleteDataset",
        lambda: datasets_pb2.DeleteDatasetRequest(name="capped", force=True),
        Role.ADMIN,
    ),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_change_whose_caller_gave_up_while_it_waited_for_the_writer_changes_nothing(
    tmp_path: Path, change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A caller told DEADLINE_EXCEEDED takes the change for failed, and may put or delete
    # again: the change must not land after, when the writer comes free, or it could undo
    # what the caller did next (a put deleted by the delete it had given up on).
    method, request, role = CHANGES[change]
    once_the_server_sees_the_caller_gone(monkeypatch, shard_service, dataset_service)
    with serving(tmp_path, insecure=True, datasets={"capped": DatasetSettings()}) as node:
        token = node.token("caller", ("capped", role))
        node.store.put("capped", "s", b"v0")
        registry = node.server.metrics.registry

        def answered() -> float:
            return sum(
                registry.get_sample_value(
                    "tierstore_requests_total", {"method": method, "code": code}
                )
                or 0.0
                for code in grpc.StatusCode.__members__
            )

        with holding_the_writer(node.store):
            with pytest.raises(grpc.RpcError) as caught:
                invoke(node.channel(), method, request(), token, timeout=2.0)
            assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: answered() == 1, f"the given-up {change}'s handler to end")
        assert b"".join(bytes(frame) for frame in node.store.get("capped", "s").frames) == b"v0"
