"""A GetShard stream the client abandons after its header (tierstore/server/shards.py).

An admitted whole-shard miss is promoted by the stream itself when it reads its first
frame; a client that cancels before that still leaves the shard promoted, as the
policy decided, so that its retry reads it hot. gRPC may advance the stream into its
first frame before the cancel arrives (the stream then promotes the shard itself), so
this test checks the outcome either way; tests/engine/test_policies_live.py checks the
abandoned path alone.
"""

from __future__ import annotations

from pathlib import Path

from tests.engine.stores import FRAME, payload, wait_until
from tests.server.servers import metadata, serving
from tierstore.types import DatasetSettings, Role
from tierstore.v1 import shards_pb2


def test_an_admitted_miss_is_promoted_when_the_client_cancels_after_the_header(
    tmp_path: Path,
) -> None:
    data = payload(3 * FRAME, 5)
    with serving(tmp_path, insecure=True, datasets={"d": DatasetSettings(policy="lru")}) as node:
        node.store.put("d", "s", data)
        assert node.store.drain(10)
        node.store.evict("d", "s")
        get = node.channel().unary_stream(
            "/tierstore.v1.ShardService/GetShard",
            request_serializer=shards_pb2.GetShardRequest.SerializeToString,
            response_deserializer=shards_pb2.GetShardResponse.FromString,
        )
        token = node.token("reader", ("d", Role.READER))
        call = get(
            shards_pb2.GetShardRequest(dataset="d", shard="s"),
            timeout=15,
            metadata=metadata(token),
        )
        first = next(call)
        assert first.HasField("header") and not first.header.info.hot
        call.cancel()
        wait_until(lambda: node.store.stat("d", "s").hot, "the abandoned miss to be promoted")
        read = node.store.get("d", "s")
        assert read.source == "hot" and read.to_bytes() == data
