"""A call is checked when its handler takes it up, not only when it arrives.

The interceptor authenticates a call as it arrives, on gRPC's polling thread; its handler
runs later, once a worker is free (every one may be busy for minutes) and its request has
come. A token revoked or run out meanwhile, or a grant gone with its dataset (a dataset
of the name made again for someone else), must not be honoured then. A real server with
one worker, held by a put stream that sends nothing, keeps a read waiting while that
happens.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.engine.stores import payload
from tests.server.servers import RunningServer, error_name, invoke, metadata, serving
from tierstore.server.authz import Principal
from tierstore.types import DatasetSettings, Role
from tierstore.v1 import shards_pb2

GET = "/tierstore.v1.ShardService/GetShard"
PUT = "/tierstore.v1.ShardService/PutShard"
WAIT_S = 15.0


def _spy_on_authentication(running: RunningServer, *tokens: str) -> dict[str, threading.Event]:
    """An event per token of ``tokens``, set once the server has authenticated a call
    made with it (and so has queued the call's handler for a worker)."""
    seen = {token: threading.Event() for token in tokens}
    authenticate = running.tokens.authenticate

    def spying(token: str) -> Principal:
        principal = authenticate(token)
        if token in seen:
            seen[token].set()
        return principal

    running.tokens.authenticate = spying  # type: ignore[method-assign]
    return seen


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningServer]:
    with serving(tmp_path, datasets={"alpha": DatasetSettings()}, max_workers=1) as running:
        running.store.put("alpha", "a.bin", payload(20_000, seed=1))
        yield running


@pytest.mark.parametrize("change", ["revoked", "expired", "dataset made again"])
def test_a_call_waiting_for_a_worker_is_checked_when_it_runs(
    node: RunningServer, change: str
) -> None:
    admin = node.token("admin", ("*", Role.ADMIN))
    reader = node.token("reader", ("alpha", Role.READER), ttl_s=3600)
    seen = _spy_on_authentication(node, admin, reader)
    channel = node.channel()
    # The one worker waits for this put's header, until the put is cancelled.
    release = threading.Event()

    def nothing_yet() -> Iterator[shards_pb2.PutShardRequest]:
        release.wait(WAIT_S)
        yield from ()

    holder = channel.stream_unary(PUT).future(
        nothing_yet(), metadata=metadata(admin), timeout=WAIT_S
    )
    try:
        # Calls are handed to the workers in the order they were authenticated.
        assert seen[admin].wait(WAIT_S), "the put never reached the server"
        received: list[object] = []
        outcome: dict[str, grpc.RpcError] = {}

        def read() -> None:
            request = shards_pb2.GetShardRequest(dataset="alpha", shard="a.bin")
            try:
                invoke(channel, GET, request, reader, received=received, timeout=WAIT_S)
            except grpc.RpcError as exc:
                outcome["error"] = exc

        reading = threading.Thread(target=read)
        reading.start()
        assert seen[reader].wait(WAIT_S), "the read never reached the server"
        if change == "revoked":
            node.tokens.revoke(reader.split("_")[1], force=True)
        elif change == "expired":
            node.clock.offset += 7200
        else:
            node.store.delete_dataset("alpha", force=True)
            node.tokens.remove_grants_on("alpha")
            node.store.create_dataset("alpha")
            node.store.put("alpha", "a.bin", payload(20_000, seed=2))
        holder.cancel()  # the worker is free: the read runs now
        reading.join(WAIT_S)
        assert not reading.is_alive()
    finally:
        holder.cancel()
        release.set()
    assert received == [], f"{len(received)} messages of the shard were sent"
    error = outcome["error"]
    if change == "dataset made again":
        assert error.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        assert error_name(error) == "DatasetNotFound"
    else:
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        assert error_name(error) == "Unauthenticated"
