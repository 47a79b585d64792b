"""A GetShard stream the client abandons after its header (tierstore/server/shards.py).

An admitted whole-shard miss is promoted by the stream itself when it reads its first
frame; a client that goes away before that still leaves the shard promoted, as the
policy decided, so that its retry reads it hot. gRPC advances a stream into its first
frame as soon as the header is sent, so a client's cancel mostly arrives after that:
the first test closes the servicer's stream itself, right after the header, as gRPC
does when the cancel wins; the second checks the outcome through a real server.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.engine.faulty_tier import FaultyTier
from tests.engine.stores import FRAME, KEYRING, engine_settings, payload, wait_until
from tests.server.servers import metadata, serving
from tierstore.engine.records import archive_frames_key
from tierstore.engine.sealedpath import SealedRead
from tierstore.engine.store import Store
from tierstore.server.authz import Principal
from tierstore.server.rpc import calling_as
from tierstore.server.shards import ShardServicer
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, Grant, Role
from tierstore.v1 import shards_pb2


class _OpenCall:
    """What GetShard asks of its context before the client goes: that it is there."""

    def is_active(self) -> bool:
        return True


def test_a_stream_closed_after_its_header_queues_the_admitted_promotion(
    tmp_path: Path,
) -> None:
    archive = FaultyTier(MemoryTier())
    store = Store(engine_settings(tmp_path / "node"), archive, KEYRING)
    try:
        store.create_dataset("d", DatasetSettings(policy="lru"))
        data = payload(3 * FRAME, 5)
        store.put("d", "s", data)
        assert store.drain(10)
        store.evict("d", "s")
        servicer = ShardServicer(store, tmp_path / "spool")
        token = calling_as(Principal("reader", (Grant("d", Role.READER),), via="token"))
        try:
            request = shards_pb2.GetShardRequest(dataset="d", shard="s")
            stream = servicer.GetShard(request, _OpenCall())  # type: ignore[arg-type]
            first = next(stream)
            assert first.HasField("header") and not first.header.info.hot
            assert store.promoter.promotions_pending() == 0 and not archive.gets
            stream.close()  # the client went away: GeneratorExit at the header
        finally:
            token.var.reset(token)
        wait_until(lambda: store.stat("d", "s").hot, "the abandoned miss to be promoted")
        # By the promoter's threads: the stream itself read nothing.
        assert archive.gets_by("tierstore-promote-fetch") and not archive.gets_by("tierstore-fetch")
        read = store.get("d", "s")
        assert read.source == "hot" and read.to_bytes() == data
    finally:
        store.close()


def test_an_error_while_abandoning_is_logged_and_the_stream_still_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(engine_settings(tmp_path / "node"), MemoryTier(), KEYRING)
    try:
        store.create_dataset("d")
        store.put("d", "s", payload(FRAME, 1))

        def broken(self: SealedRead) -> None:
            raise RuntimeError("abandon failed (test)")

        monkeypatch.setattr(SealedRead, "abandon", broken)
        servicer = ShardServicer(store, tmp_path / "spool")
        token = calling_as(Principal("reader", (Grant("d", Role.READER),), via="token"))
        try:
            stream = servicer.GetShard(
                shards_pb2.GetShardRequest(dataset="d", shard="s"),
                _OpenCall(),  # type: ignore[arg-type]
            )
            assert next(stream).HasField("header")
            with caplog.at_level(logging.ERROR, logger="tierstore.server.shards"):
                stream.close()  # GeneratorExit, not the RuntimeError, ends the generator
        finally:
            token.var.reset(token)
        assert "abandoning the read of d/s" in caplog.text
        assert "abandon failed (test)" in caplog.text
    finally:
        store.close()


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


def test_a_read_whose_client_left_while_it_waited_is_audited_as_cancelled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = FaultyTier(MemoryTier())
    with serving(
        tmp_path, insecure=True, archive=archive, datasets={"d": DatasetSettings(policy="lru")}
    ) as node:
        node.store.put("d", "s", payload(3 * FRAME, 5))
        assert node.store.drain(10)
        node.store.evict("d", "s")
        generation = node.store.stat("d", "s").generation
        archive.hold_reads(archive_frames_key("d", generation))
        get = node.channel().unary_stream(
            "/tierstore.v1.ShardService/GetShard",
            request_serializer=shards_pb2.GetShardRequest.SerializeToString,
            response_deserializer=shards_pb2.GetShardResponse.FromString,
        )
        token = node.token("reader", ("d", Role.READER))
        caplog.set_level(logging.INFO, logger="tierstore.audit")
        call = get(
            shards_pb2.GetShardRequest(dataset="d", shard="s"), timeout=15, metadata=metadata(token)
        )
        assert archive.read_waiting.wait(10)  # the server waits on the archive...
        call.cancel()  # ...and the client gives up meanwhile
        archive.release_reads()

        def audited() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if r.name == "tierstore.audit"
                and "method=/tierstore.v1.ShardService/GetShard" in r.getMessage()
            ]

        wait_until(lambda: bool(audited()), "the read's audit line")
        assert "outcome=CANCELLED" in audited()[0], audited()  # before: outcome=OK
