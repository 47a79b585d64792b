"""What a reader's placement calls may take from a node and what their errors say, and
tier statistics gathered while datasets come and go (an in-process server, so the bounds
can be made small)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.server.servers import RunningServer, error_name, invoke, serving
from tierstore.client.connect import connect
from tierstore.engine import planbook
from tierstore.errors import InvalidArgument
from tierstore.types import DatasetSettings, Role
from tierstore.v1 import placement_pb2

DECLARE = "/tierstore.v1.PlacementService/DeclarePlan"
STATS = "/tierstore.v1.PlacementService/GetTierStats"
REPORT = "/tierstore.v1.PlacementService/ReportPosition"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningServer]:
    with serving(tmp_path, datasets={"d": DatasetSettings(), "e": DatasetSettings()}) as running:
        running.store.put("d", "s", b"x" * 100)
        yield running


def declare(node: RunningServer, token: str, job: str) -> placement_pb2.DeclarePlanResponse:
    request = placement_pb2.DeclarePlanRequest(
        dataset="d", explicit=placement_pb2.ShardList(shards=["s"]), job=job
    )
    (reply,) = invoke(node.channel(), DECLARE, request, token)
    return reply  # type: ignore[no-any-return]


def test_a_readers_plans_are_bounded_and_leave_room_for_others(
    node: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before the bounds, a reader's token declaring plans with fresh job ids grew the
    # server's memory without end (about 8 MB a plan over 3,000 shards).
    monkeypatch.setattr(planbook, "MAX_OWNER_PLANS", 2)
    reader = node.token("reader", ("d", Role.READER))
    first = declare(node, reader, "j1")
    assert (first.length, first.position) == (1, 0)
    declare(node, reader, "j2")
    with pytest.raises(grpc.RpcError) as refused:
        declare(node, reader, "j3")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_name(refused.value) == "PlanLimitReached"
    assert "2 live plans of this caller" in (refused.value.details() or "")
    declare(node, reader, "j1")  # replacing a plan of one's own takes no more room
    other = node.token("other", ("d", Role.READER))
    declare(node, other, "j3")  # another principal has its own share


def test_tier_stats_leave_out_a_dataset_deleted_while_they_are_gathered(
    node: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = node.store
    listed = store.dataset_names

    def listed_then_one_deleted() -> list[str]:
        names = listed()
        store.delete_dataset("e")  # as another caller's delete landing just then
        return names

    monkeypatch.setattr(store, "dataset_names", listed_then_one_deleted)
    admin = node.token("ops", ("*", Role.ADMIN))
    (stats,) = invoke(node.channel(), STATS, placement_pb2.GetTierStatsRequest(), admin)
    assert [figures.dataset for figures in stats.datasets] == ["d"]
    assert stats.datasets[0].shards == 1
    # A dataset the caller names is still reported missing when it is.
    with pytest.raises(grpc.RpcError) as missing:
        invoke(node.channel(), STATS, placement_pb2.GetTierStatsRequest(dataset="e"), admin)
    assert error_name(missing.value) == "DatasetNotFound"


def test_a_position_past_the_end_is_refused_without_the_servers_id_of_the_job(
    node: RunningServer,
) -> None:
    reader = node.token("reader", ("d", Role.READER))
    declare(node, reader, "mine")
    request = placement_pb2.ReportPositionRequest(job="mine", position=2)
    with pytest.raises(grpc.RpcError) as refused:
        invoke(node.channel(), REPORT, request, reader)
    assert error_name(refused.value) == "InvalidArgument"
    details = refused.value.details() or ""
    assert "position 2 is past the end of the plan (1 entries)" in details
    assert "reader/" not in details  # the engine's id of the job: "6:reader/mine"


def test_a_plan_is_declared_at_its_position_and_one_past_its_end_is_refused(
    node: RunningServer,
) -> None:
    # A resumed epoch declared its plan, then reported its start position a round trip
    # later, which the clairvoyant policy rated as entries read in those milliseconds:
    # DeclarePlan carries the position now.
    node.store.put("d", "t", b"y" * 100)
    reader = node.token("reader", ("d", Role.READER))
    request = placement_pb2.DeclarePlanRequest(
        dataset="d", explicit=placement_pb2.ShardList(shards=["s", "t"]), job="mine", position=2
    )
    (reply,) = invoke(node.channel(), DECLARE, request, reader)
    # The answer says the position the plan starts at: a client told nothing of it
    # (a server that predates the field) reports it instead.
    assert (reply.length, reply.position) == (2, 2)
    assert node.store.plan_info("6:reader/mine").position == 2
    for position in (3, (1 << 64) - 1):
        request.position, request.explicit.shards[:] = position, ["t"]
        with pytest.raises(grpc.RpcError) as refused:
            invoke(node.channel(), DECLARE, request, reader)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_name(refused.value) == "InvalidArgument"
        details = refused.value.details() or ""
        assert f"position {position} is past the end of the plan (1 entries)" in details
        assert "reader/" not in details  # the engine's id of the job
    info = node.store.plan_info("6:reader/mine")  # the plan declared before stays
    assert (info.length, info.position) == (2, 2)


def test_the_client_declares_a_plan_at_its_position(tmp_path: Path) -> None:
    with serving(tmp_path, insecure=True, datasets={"d": DatasetSettings()}) as running:
        running.store.put("d", "s", b"x" * 100)
        token = running.token("reader", ("d", Role.READER))
        with connect(running.address, token=token, insecure=True, local_reads=False) as client:
            job = client.declare_plan("d", shards=["s", "s", "s"], job="mine", position=2)
            assert running.store.plan_info(f"6:reader/{job}").position == 2
            client.declare_plan("d", shards=["s"], job="mine")  # from the start
            assert running.store.plan_info("6:reader/mine").position == 0
            client.declare_plan("d", shards=["s"], job="mine", position=np.int64(1))
            assert running.store.plan_info("6:reader/mine").position == 1
            with pytest.raises(InvalidArgument, match=r"past the end of the plan \(1 entries\)"):
                client.declare_plan("d", shards=["s"], job="mine", position=2)
            for bad in (-1, 1 << 64, 1.0, True, "1", None):
                with pytest.raises(InvalidArgument, match=r"^position "):
                    client.declare_plan("d", shards=["s"], job="mine", position=bad)
            assert running.store.plan_info("6:reader/mine").position == 1
