"""Every call of the client has a deadline: against a server that takes each call and
never answers, every public method ends (DESIGN.md, section 5: every RPC gets one)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from tierstore import errors
from tierstore.client.channel import ChannelSettings
from tierstore.client.client import Client
from tierstore.client.connect import connect
from tierstore.client.local import LocalReadOptions
from tierstore.types import Grant, Role

#: Each attempt's deadline (unary calls and streams alike).
DEADLINE_S = 0.5
#: What all the calls together may take: far past their deadlines and retries, far
#: short of forever.
ALL_DONE_S = 60.0


class _Silent(grpc.GenericRpcHandler):
    """Takes every call (any method, any kind) and holds it without a word."""

    def __init__(self, release: threading.Event) -> None:
        self._release = release

    def service(self, details: Any) -> grpc.RpcMethodHandler:
        return grpc.stream_stream_rpc_method_handler(self._hold)

    def _hold(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        self._release.wait(ALL_DONE_S * 2)
        return iter(())


CALLS: dict[str, Callable[[Client], object]] = {
    "put": lambda c: c.put("d", "s", b"bytes"),
    "get": lambda c: c.get("d", "s"),
    "get-range": lambda c: c.get("d", "s", offset=1, length=2),
    "iter_bytes": lambda c: list(c.iter_bytes("d", "s")),
    "read_table": lambda c: c.read_table("d", "s"),
    "read_tensor": lambda c: c.read_tensor("d", "s"),
    "stat": lambda c: c.stat("d", "s"),
    "list": lambda c: c.list("d"),
    "delete": lambda c: c.delete("d", "s"),
    "create_dataset": lambda c: c.create_dataset("d", encrypted=False),
    "get_dataset": lambda c: c.get_dataset("d"),
    "list_datasets": lambda c: c.list_datasets(),
    "update_dataset": lambda c: c.update_dataset("d", hot_quota_bytes=1 << 20),
    "delete_dataset": lambda c: c.delete_dataset("d"),
    "create_token": lambda c: c.create_token("p", [Grant("d", Role.READER)]),
    "revoke_token": lambda c: c.revoke_token("t"),
    "list_tokens": lambda c: c.list_tokens(),
    "rotate_keys": lambda c: c.rotate_keys(),
    "retire_key": lambda c: c.retire_key("k"),
    "list_keys": lambda c: c.list_keys(),
    "export_trace": lambda c: list(c.export_trace()),
    "pin": lambda c: c.pin("d", "s"),
    "unpin": lambda c: c.unpin("d", "s"),
    "evict": lambda c: c.evict("d", "s"),
    "prefetch": lambda c: c.prefetch("d", ["s"]),
    "stats": lambda c: c.stats(),
    "declare_plan": lambda c: c.declare_plan("d", shards=["s"]),
    "report_position": lambda c: c.report_position("j", 1),
    "close_plan": lambda c: c.close_plan("j"),
}


@pytest.fixture
def silent_port() -> Iterator[int]:
    """The port of a server on 127.0.0.1 that takes every call and never answers."""
    release = threading.Event()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4 * (len(CALLS) + 1)),
        handlers=[_Silent(release)],
        options=[("grpc.so_reuseport", 0)],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        release.set()
        server.stop(0)


@pytest.mark.parametrize("local_reads", [True, False], ids=["local-reads", "grpc-only"])
def test_every_call_ends_against_a_server_that_never_answers(
    local_reads: bool, tmp_path: Path, silent_port: int
) -> None:
    calls = CALLS | {"download": lambda c: c.download("d", "s", tmp_path / "shard")}
    client = Client(
        ChannelSettings(f"127.0.0.1:{silent_port}", insecure=True),
        timeout_s=DEADLINE_S,
        stream_timeout_s=DEADLINE_S,
        local=LocalReadOptions(enabled=local_reads),
    )
    pool = futures.ThreadPoolExecutor(len(calls))
    try:
        started = time.monotonic()
        running = {name: pool.submit(call, client) for name, call in calls.items()}
        _, hung = futures.wait(running.values(), timeout=ALL_DONE_S)
        assert not hung, sorted(name for name, f in running.items() if f in hung)
        for name, future in running.items():
            failure = future.exception()
            assert isinstance(failure, errors.TierstoreError), (name, failure)
        assert time.monotonic() - started < ALL_DONE_S
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        client.close()


def test_connect_sets_the_deadline_of_transfers_too(silent_port: int) -> None:
    # connect() took timeout_s (unary calls) only: a transfer from a node that stopped
    # answering waited out the default hour, with no way to ask for less but to set
    # the attribute after. The CLI's --timeout sets both.
    with pytest.raises(errors.InvalidArgument, match="stream_timeout_s"):
        connect("127.0.0.1:1", insecure=True, stream_timeout_s=0)
    with connect(
        f"127.0.0.1:{silent_port}", insecure=True, local_reads=False, stream_timeout_s=DEADLINE_S
    ) as client:
        assert client.stream_timeout_s == DEADLINE_S
        started = time.monotonic()
        with pytest.raises(errors.Unavailable):
            client.get("d", "s")
        assert time.monotonic() - started < ALL_DONE_S
