"""An archive that fails a cold read shows in GetTierStats' ``archive_error`` and in
``tierstore_archive_failing``, with the journal empty; health stays SERVING.

A reviewer froze a node's archive: cold reads failed, yet stats said "journal empty"
with no archive error, /metrics had ``tierstore_archive_failing 0.0``: only the
mover's errors (and a pinned shard's failed promotion) were reported.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import FRAME, payload
from tests.server.servers import RunningServer, error_name, invoke, serving
from tierstore.engine.records import archive_frames_key
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, Role
from tierstore.v1 import placement_pb2, shards_pb2

GET = "/tierstore.v1.ShardService/GetShard"
STATS = "/tierstore.v1.PlacementService/GetTierStats"


def archive_failing(node: RunningServer) -> str:
    """The ``tierstore_archive_failing`` line of a scrape of ``node``'s /metrics."""
    url = f"http://127.0.0.1:{node.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = str(reply.read().decode())
    return next(line for line in text.splitlines() if line.startswith("tierstore_archive_failing"))


def test_a_failed_cold_read_shows_in_stats_and_metrics_until_the_archive_answers(
    tmp_path: Path,
) -> None:
    archive = FaultyTier(MemoryTier())
    datasets = {"d": DatasetSettings()}
    with serving(tmp_path, archive=archive, datasets=datasets, metrics=True) as node:
        generation = node.store.put("d", "s", payload(2 * FRAME, 1)).generation
        assert node.store.drain(10)
        node.store.evict("d", "s")
        admin = node.token("a", ("*", Role.ADMIN))
        reader = node.token("r", ("d", Role.READER))
        channel = node.channel()

        def stats(token: str) -> placement_pb2.TierStats:
            reply: placement_pb2.TierStats = invoke(
                channel, STATS, placement_pb2.GetTierStatsRequest(), token
            )[0]
            return reply

        def read() -> list[shards_pb2.GetShardResponse]:
            return invoke(channel, GET, shards_pb2.GetShardRequest(dataset="d", shard="s"), reader)

        assert archive_failing(node) == "tierstore_archive_failing 0.0"
        archive.failing = True
        with pytest.raises(grpc.RpcError) as failed:
            read()
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, error_name(failed.value)
        shown = stats(admin)
        assert shown.journal_entries == 0
        assert archive_frames_key("d", generation) in shown.archive_error
        assert "s ago" in shown.archive_error
        assert "shown to a caller with a role on '*'" in stats(reader).archive_error
        assert archive_failing(node) == "tierstore_archive_failing 1.0"
        # Health says whether the node serves: its hot tier does, without the archive.
        with grpc.insecure_channel(node.health_address) as probe:
            checked = health_pb2_grpc.HealthStub(probe).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
        archive.failing = False
        assert read()  # the archive answers again
        assert stats(admin).archive_error == ""
        assert archive_failing(node) == "tierstore_archive_failing 0.0"
