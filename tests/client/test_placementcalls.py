"""The client's access-plan calls against servers old and new: a plan declared at a
position (a resumed epoch) starts there on either.

A server older than ``DeclarePlanRequest.position`` drops the field and starts the plan
at 0, and its answer has no ``DeclarePlanResponse.position`` (read as 0): the client
then reports the position at once, as readers did before the field, rather than leave
the server prefetching entries already read until the reader's next report.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.server.servers import serving
from tierstore.client.client import Client
from tierstore.client.connect import connect
from tierstore.types import DatasetSettings, Role
from tierstore.v1 import placement_pb2, placement_pb2_grpc


class OlderPlacement(placement_pb2_grpc.PlacementServiceServicer):
    """DeclarePlan and ReportPosition as a server before the plan's start position
    answered them: the declaration's answer says nothing of a position. ``calls``: what
    it was sent, in order (``("declare", job)``, ``("report", job, position)``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def DeclarePlan(
        self, request: placement_pb2.DeclarePlanRequest, context: grpc.ServicerContext
    ) -> placement_pb2.DeclarePlanResponse:
        self.calls.append(("declare", request.job))
        return placement_pb2.DeclarePlanResponse(job=request.job, length=10)

    def ReportPosition(
        self, request: placement_pb2.ReportPositionRequest, context: grpc.ServicerContext
    ) -> placement_pb2.ReportPositionResponse:
        self.calls.append(("report", request.job, request.position))
        return placement_pb2.ReportPositionResponse()

    def GetTierStats(
        self, request: placement_pb2.GetTierStatsRequest, context: grpc.ServicerContext
    ) -> placement_pb2.TierStats:
        # Before the watermarks and the promotion and eviction counts (fields 12-16).
        # A dataset's archive figures were plain fields, left out when 0: "older" is a
        # dataset of a node before them (or one holding none), "then" one of a node
        # that sends the pinned figures, and so knows the archive ones.
        return placement_pb2.TierStats(
            hot_bytes=9,
            hot_capacity_bytes=100,
            datasets=[
                placement_pb2.DatasetStats(dataset="older", shards=2),
                placement_pb2.DatasetStats(dataset="then", shards=2, pinned_shards=0),
            ],
        )


@pytest.fixture
def older() -> Iterator[tuple[OlderPlacement, Client]]:
    """An :class:`OlderPlacement` on 127.0.0.1, and a client of it."""
    servicer = OlderPlacement()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    placement_pb2_grpc.add_PlacementServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = connect(f"127.0.0.1:{port}", token="t", insecure=True, environ={}, local_reads=False)
    yield servicer, client
    client.close()
    server.stop(grace=None)


def test_a_server_that_ignored_the_position_hears_it_in_a_report(
    older: tuple[OlderPlacement, Client],
) -> None:
    # The older server started the plan at 0: until the reader's next report (0.25 s
    # at the soonest, from the torch plugin) it prefetched shards already read.
    servicer, client = older
    job = client.declare_plan("d", shards=["s"] * 10, job="mine", position=3)
    assert job == "mine"
    assert servicer.calls == [("declare", "mine"), ("report", "mine", 3)]


def test_a_plan_from_its_start_sends_no_report_to_an_older_server(
    older: tuple[OlderPlacement, Client],
) -> None:
    servicer, client = older
    client.declare_plan("d", shards=["s"] * 10, job="mine")
    client.declare_plan("d", shards=["s"] * 10, job="mine", position=0)
    assert servicer.calls == [("declare", "mine")] * 2


def test_a_server_that_applied_the_position_hears_no_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A report right after the declaration is what the position spares the policy: it
    # rated the reader by it as entries read in a round trip.
    with serving(tmp_path, insecure=True, datasets={"d": DatasetSettings()}) as running:
        running.store.put("d", "s", b"x" * 100)
        reported: list[tuple[object, ...]] = []
        report = running.store.report_position

        def recorded(*args: object) -> None:
            reported.append(args)
            report(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(running.store, "report_position", recorded)
        token = running.token("reader", ("d", Role.READER))
        with connect(running.address, token=token, insecure=True, local_reads=False) as client:
            job = client.declare_plan("d", shards=["s"] * 5, job="mine", position=2)
            assert running.store.plan_info(f"6:reader/{job}").position == 2
            assert reported == []
            client.report_position(job, 3)  # the store's reports are seen
            assert len(reported) == 1


def test_figures_an_older_server_does_not_send_are_left_out_not_zero(
    older: tuple[OlderPlacement, Client], tmp_path: Path
) -> None:
    # Read as 0, they showed as "since start 0 promoted, 0 evicted" and a watermark of 0.
    _, client = older
    figures = client.stats()
    assert (figures["hot_bytes"], figures["hot_capacity_bytes"]) == (9, 100)
    newer = {"high_watermark_bytes", "low_watermark_bytes", "promotions", "evictions"}
    assert not newer & set(figures)
    archive = {"archived_shards", "archived_bytes", "backlog_shards", "backlog_bytes"}
    assert not archive & set(figures["datasets"]["older"])  # unknown: not 0
    assert {name: figures["datasets"]["then"][name] for name in archive} == dict.fromkeys(
        archive, 0
    )
    with serving(tmp_path, insecure=True, datasets={"d": DatasetSettings()}) as running:
        token = running.token("admin", ("*", Role.ADMIN))
        with connect(running.address, token=token, insecure=True, local_reads=False) as client:
            figures = client.stats()
    assert newer <= set(figures) and figures["promotions_skipped"] == 0
    assert archive <= set(figures["datasets"]["d"])
    assert figures["high_watermark_bytes"] > figures["low_watermark_bytes"] > 0
