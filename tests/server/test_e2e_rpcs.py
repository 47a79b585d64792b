"""Every RPC of the service, end to end: the real server, a real SeaweedFS, the client library.

Requests the client library cannot express (frame ranges, small list pages, health and
reflection) go through raw grpc stubs on the same TLS channel, with the admin token.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Callable, Iterator
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import tierstore
from tierstore import errors
from tierstore.client.client import Client
from tierstore.client.deadlines import MAX_TIMEOUT_S
from tierstore.client.failures import raise_mapped
from tierstore.client.receive import open_stream
from tierstore.types import DatasetSettings, Durability, Grant, Role, ShardKind
from tierstore.v1 import common_pb2, shards_pb2, shards_pb2_grpc

from .conftest import ServerProcess, free_port, poll, unique

SERVICES = (
    "tierstore.v1.DatasetService",
    "tierstore.v1.ShardService",
    "tierstore.v1.PlacementService",
    "tierstore.v1.AdminService",
)
FRAME = 64 * 1024


@pytest.fixture
def small_frames(server: ServerProcess) -> Iterator[Client]:
    """A client that cuts puts into 64 KiB frames, so small shards have many frames."""
    with server.connect() as client:
        client.frame_bytes = FRAME
        yield client


def test_datasets_create_get_list_update_delete(admin: Client) -> None:
    plain, secret = unique(), unique()
    assert admin.create_dataset(plain, encrypted=False) == DatasetSettings(
        False, Durability.WRITE_BACK, 0
    )
    created = admin.create_dataset(
        secret, encrypted=True, durability="write-through", hot_quota_bytes=1 << 30
    )
    assert created == DatasetSettings(True, Durability.WRITE_THROUGH, 1 << 30)
    assert admin.get_dataset(secret) == created
    # Encrypted at rest unless asked otherwise: the default was plaintext.
    unsaid = unique()
    assert admin.create_dataset(unsaid).encrypted is True
    admin.put(unsaid, "s", b"secret bytes")
    assert admin.stat(unsaid, "s").encrypted is True
    admin.delete_dataset(unsaid, force=True)
    listed = dict(admin.list_datasets())
    assert listed[plain] == DatasetSettings()
    assert listed[secret] == created
    names = [name for name, _ in admin.list_datasets()]
    assert names == sorted(names)

    updated = admin.update_dataset(plain, durability="write-through", hot_quota_bytes=4096)
    assert updated == DatasetSettings(False, Durability.WRITE_THROUGH, 4096)
    assert admin.get_dataset(plain) == updated
    assert admin.update_dataset(plain, hot_quota_bytes=0).durability is Durability.WRITE_THROUGH
    # A numpy quota was refused (InvalidArgument), as other byte counts are not.
    assert admin.update_dataset(plain, hot_quota_bytes=np.int64(8192)).hot_quota_bytes == 8192
    numpy_quota = admin.create_dataset(
        unique(), encrypted=False, hot_quota_bytes=np.uint32(1 << 20)
    )
    assert numpy_quota.hot_quota_bytes == 1 << 20 and type(numpy_quota.hot_quota_bytes) is int
    # A backlog quota, set at creation and changed later; the other settings stay.
    ingest = unique()
    made = admin.create_dataset(ingest, encrypted=False, backlog_quota_bytes=np.int64(1 << 20))
    assert made == DatasetSettings(backlog_quota_bytes=1 << 20) == admin.get_dataset(ingest)
    changed = admin.update_dataset(ingest, backlog_quota_bytes=2 << 20)
    assert changed == DatasetSettings(backlog_quota_bytes=2 << 20) == admin.get_dataset(ingest)
    quota_too = admin.update_dataset(ingest, hot_quota_bytes=4096)
    assert quota_too == DatasetSettings(hot_quota_bytes=4096, backlog_quota_bytes=2 << 20)
    assert dict(admin.list_datasets())[ingest] == quota_too
    admin.delete_dataset(ingest)

    with pytest.raises(errors.AlreadyExists):
        admin.create_dataset(plain, encrypted=False)
    # exist_ok: the dataset as it is, if it is as asked; else which settings differ.
    again = unique()
    made = admin.create_dataset(again, encrypted=False, hot_quota_bytes=4096)
    assert admin.create_dataset(again, encrypted=False, hot_quota_bytes=4096, exist_ok=True) == made
    with pytest.raises(errors.AlreadyExists) as other:
        admin.create_dataset(again, exist_ok=True, durability="write-through")
    assert str(other.value) == (
        f"dataset {again!r} exists with other settings: encrypted False (asked True), "
        "durability write-back (asked write-through), hot_quota_bytes 4096 (asked 0); "
        "exist_ok takes it only as asked"
    )
    with pytest.raises(errors.AlreadyExists, match=r"no schema \(asked one\); exist_ok"):
        admin.create_dataset(
            again,
            encrypted=False,
            hot_quota_bytes=4096,
            schema=pa.schema([("x", pa.int64())]),
            exist_ok=True,
        )
    assert admin.get_dataset(again) == made  # left as it was
    admin.delete_dataset(again)
    admin.put(plain, "x", b"payload")
    with pytest.raises(errors.FailedPrecondition):
        admin.delete_dataset(plain)  # not empty
    admin.delete_dataset(plain, force=True)
    admin.delete_dataset(secret)
    for name in (plain, secret):
        with pytest.raises(errors.DatasetNotFound):
            admin.get_dataset(name)
        assert name not in dict(admin.list_datasets())
    with pytest.raises(errors.DatasetNotFound):
        admin.delete_dataset(plain)


def test_deleting_a_dataset_ends_the_grants_on_it(server: ServerProcess, admin: Client) -> None:
    dataset, other = unique(), unique()
    for name in (dataset, other):
        admin.create_dataset(name, encrypted=False)
        admin.put(name, "s", b"first tenant")
    _, tenant = admin.create_token(
        "tenant-a", [Grant(dataset, Role.READER), Grant(other, Role.READER)]
    )
    _, everyone = admin.create_token("all-readers", [Grant("*", Role.READER)])
    with pytest.raises(errors.FailedPrecondition):
        admin.delete_dataset(dataset)  # refused (not empty): the grants stay with it
    with server.connect(token=tenant) as client:
        assert client.get(dataset, "s").to_pybytes() == b"first tenant"

    assert admin.delete_dataset(dataset, force=True) == 1  # tenant-a's grant; "*" stays
    admin.create_dataset(dataset, encrypted=True)  # the name, made again for someone else
    admin.put(dataset, "s", b"second tenant")
    with server.connect(token=tenant) as client:
        with pytest.raises(errors.DatasetNotFound):
            client.get(dataset, "s")
        assert client.get(other, "s").to_pybytes() == b"first tenant"
    with server.connect(token=everyone) as client:
        assert client.get(dataset, "s").to_pybytes() == b"second tenant"
    grants = {info["principal"]: info["grants"] for info in admin.list_tokens()}
    assert grants["tenant-a"] == [Grant(other, Role.READER)]
    assert admin.delete_dataset(dataset, force=True) == 0


def test_a_delete_counts_only_live_tokens_among_those_that_lost_a_grant(
    admin: Client,
) -> None:
    # A revoked token's grant on the dataset was counted: "grants on it removed from
    # 1 token(s)" for a token that could no longer be used anyway.
    dataset = unique()
    admin.create_dataset(dataset, encrypted=False)
    revoked_id, _ = admin.create_token("gone", [Grant(dataset, Role.READER)])
    admin.revoke_token(revoked_id)
    admin.create_token("live", [Grant(dataset, Role.WRITER)])
    assert admin.delete_dataset(dataset) == 1  # the live token's grant alone
    grants = {info["token_id"]: info["grants"] for info in admin.list_tokens()}
    assert grants[revoked_id] == []  # its grant goes all the same


def test_put_and_get_whole_and_byte_ranges(
    server: ServerProcess, small_frames: Client, any_dataset: str
) -> None:
    data = os.urandom(5 * FRAME + 123)
    info = small_frames.put(any_dataset, "blob", data)
    assert info.size == len(data)
    assert info.kind is ShardKind.RAW
    assert info.frame_sizes == (FRAME,) * 5 + (123,)
    assert small_frames.get(any_dataset, "blob").to_pybytes() == data
    for offset, length in [
        (0, 10),
        (100, 1000),  # inside one frame
        (FRAME - 7, 20),  # across a frame boundary
        (FRAME, FRAME),  # exactly one frame
        (3, 4 * FRAME),  # across several frames
        (5 * FRAME, 123),  # the short last frame
        (len(data) - 1, 1),
        (17, 0),
    ]:
        got = small_frames.get(any_dataset, "blob", offset=offset, length=length)
        assert got.to_pybytes() == data[offset : offset + length], (offset, length)
    assert (
        small_frames.get(any_dataset, "blob", offset=2 * FRAME + 5).to_pybytes()
        == data[2 * FRAME + 5 :]
    )
    # A range running past the end is cut there; one starting past the end is refused.
    assert (
        small_frames.get(any_dataset, "blob", offset=len(data) - 1, length=9).to_pybytes()
        == (data[-1:])
    )
    assert small_frames.get(any_dataset, "blob", offset=len(data)).size == 0
    with pytest.raises(errors.RangePastEnd, match="past the end"):
        small_frames.get(any_dataset, "blob", offset=len(data) + 1)
    with pytest.raises(errors.ShardNotFound):
        small_frames.get(any_dataset, "missing")
    # Past what the wire carries (uint64): the same answers on either read path.
    huge = 10**23
    for local_reads in (True, False):
        with server.connect(local_reads=local_reads) as client:
            assert client.get(any_dataset, "blob", offset=5, length=huge).to_pybytes() == data[5:]
            with pytest.raises(errors.RangePastEnd, match="past the end"):
                client.get(any_dataset, "blob", offset=huge)
    # Positions are whole numbers: a float, a string or a bool is refused by name.
    bad_values: list[dict[str, Any]] = [{"offset": 1.5}, {"offset": "1"}, {"length": True}]
    for bad in bad_values:
        with pytest.raises(errors.InvalidArgument, match=f"{next(iter(bad))} must be a whole"):
            small_frames.get(any_dataset, "blob", **bad)
    for limit in (1.5, "2", True):  # the same for a listing's limit, and a pin's TTL
        with pytest.raises(errors.InvalidArgument, match="limit must be a whole"):
            small_frames.list(any_dataset, limit=limit)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument, match="ttl_s must be a number of seconds"):
        small_frames.pin(any_dataset, "blob", ttl_s="60")  # type: ignore[arg-type]
    assert (
        small_frames.get(any_dataset, "blob", offset=np.int64(3), length=np.uint8(2)).to_pybytes()
        == data[3:5]
    )

    # A new generation replaces the old one whole.
    again = small_frames.put(any_dataset, "blob", b"short")
    assert again.generation > info.generation
    assert small_frames.get(any_dataset, "blob").to_pybytes() == b"short"


def test_the_largest_frame_a_node_takes_is_read_back(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # The client took messages of at most 64 MiB, the server sent up to 80: a node of
    # max_frame_bytes 64 MiB stored a frame that no client could read back.
    largest = 64 << 20
    node = spawn_server(tmp_path / "node", env={"TIERSTORE_MAX_FRAME_BYTES": str(largest)})
    data = os.urandom(largest)
    with node.connect(local_reads=False) as client:
        client.create_dataset("big", encrypted=True)
        client.frame_bytes = largest
        assert client.put("big", "one-frame", data).frame_count == 1
        assert client.get("big", "one-frame").to_pybytes() == data


def test_bad_client_settings_and_selections_are_refused_before_anything_is_sent(
    server: ServerProcess, admin: Client, any_dataset: str
) -> None:
    admin.put(any_dataset, "kept", b"important data " * 100)
    with server.connect() as client:
        # A frame size of -1 stored an empty shard over this one, acknowledged; 0 was a
        # raw ValueError.
        # One past 64 MiB fits in no message: the put failed as ResourceExhausted.
        for frame_bytes in (-1, 0, True, "4096", 1.5, (64 << 20) + 1):
            with pytest.raises(errors.InvalidArgument, match="frame_bytes must"):
                client.frame_bytes = frame_bytes  # type: ignore[assignment]
        assert client.frame_bytes == 4 << 20  # unchanged by the refusals
        assert client.put(any_dataset, "kept", b"new data " * 100).size == 900
        # A deadline of 0, NaN, infinity or past about 9e9 s (gRPC's clock overflows)
        # failed every call at once (DEADLINE_EXCEEDED).
        # 10**400 raised OverflowError, not a refusal.
        past = (1e10, MAX_TIMEOUT_S * 1.01, 10**400, Fraction(10**400))
        for seconds in (0, -1, float("nan"), float("inf"), *past, "5", True):
            for name in ("timeout_s", "stream_timeout_s"):
                with pytest.raises(errors.InvalidArgument, match=f"{name} must be"):
                    setattr(client, name, seconds)
            with pytest.raises(errors.InvalidArgument, match="timeout_s must be"):
                server.connect(timeout_s=seconds)  # type: ignore[arg-type]
        client.timeout_s = client.stream_timeout_s = MAX_TIMEOUT_S  # "no practical limit"
        assert client.list(any_dataset, limit=1)
        assert client.get(any_dataset, "kept").to_pybytes() == b"new data " * 100
        client.timeout_s = 7
        assert client.timeout_s == 7.0 and client.list(any_dataset, limit=1)
        # A negative limit listed nothing, as if the dataset were empty.
        with pytest.raises(errors.InvalidArgument, match="limit must not be negative"):
            client.list(any_dataset, limit=-1)
    assert admin.get(any_dataset, "kept").to_pybytes() == b"new data " * 100
    # A bare string of columns read the columns named by its letters.
    admin.put(any_dataset, "table", pa.table({"x": [1], "s": ["a"], "xs": [2.0]}))
    for local_reads in (True, False):
        with server.connect(local_reads=local_reads) as client:
            with pytest.raises(errors.InvalidArgument, match=r"columns=\['xs'\]"):
                client.read_table(any_dataset, "table", columns="xs")
            assert client.read_table(any_dataset, "table", columns=["xs"]).column_names == ["xs"]
            # A generator selected no columns at all.
            chosen = client.read_table(any_dataset, "table", columns=(c for c in ["s", "x"]))
            assert chosen.column_names == ["s", "x"]


def test_arguments_of_a_wrong_type_or_not_utf8_are_invalid_argument(
    server: ServerProcess, admin: Client, any_dataset: str
) -> None:
    # Each escaped as a bare TypeError, AttributeError or UnicodeEncodeError (an
    # undecodable byte of a command line arrives as a lone surrogate), or was taken:
    # insecure="no" connected in plaintext.
    job = admin.declare_plan(any_dataset, shards=[])
    settings = admin.get_dataset(any_dataset)
    bad_calls: dict[str, Callable[[], object]] = {
        "prefix": lambda: admin.list(any_dataset, prefix=3),  # type: ignore[arg-type]
        "prefix ": lambda: admin.list(any_dataset, "tr\udcffain/"),
        "start_after": lambda: admin.list(any_dataset, start_after="\udc80"),
        "ttl_s": lambda: admin.declare_plan(any_dataset, shards=[], ttl_s="5"),  # type: ignore[arg-type]
        "job": lambda: admin.declare_plan(any_dataset, shards=[], job=5),  # type: ignore[arg-type]
        "prefix  ": lambda: admin.declare_plan(any_dataset, shards=[], prefix="\udc80"),
        "job ": lambda: admin.report_position(5, 0),  # type: ignore[arg-type]
        "job  ": lambda: admin.close_plan("j\udc80"),
        "sizing": lambda: admin.stats(sizing="yes"),  # type: ignore[arg-type]
        "principal": lambda: admin.create_token("p\udcff", []),
        "grants": lambda: admin.create_token("p", [(any_dataset, "reader")]),  # type: ignore[list-item]
        "grants ": lambda: admin.create_token("p", f"{any_dataset}=reader"),  # type: ignore[arg-type]
        "token_id": lambda: admin.revoke_token("k\udcff"),
        "token_id ": lambda: admin.revoke_token(5),  # type: ignore[arg-type]
        "policy": lambda: admin.set_policy(any_dataset, "lru\udcff"),
        "policy ": lambda: admin.create_dataset(unique(), encrypted=False, policy=5),  # type: ignore[arg-type]
        # None was update_dataset's "unchanged": a silent no-op.
        "policy  ": lambda: admin.set_policy(any_dataset, None),  # type: ignore[arg-type]
        # A raw protobuf ValueError or TypeError each, as create_dataset's were not.
        **{
            f"hot_quota_bytes{' ' * i}": partial(
                admin.update_dataset, any_dataset, hot_quota_bytes=q
            )
            for i, q in enumerate((-1, 1 << 64, 1.5, "100", True))
        },
        **{
            f"backlog_quota_bytes{' ' * i}": partial(
                admin.update_dataset, any_dataset, backlog_quota_bytes=q
            )
            for i, q in enumerate((-1, 1 << 64, 1.5))
        },
        "backlog_quota_bytes   ": lambda: admin.create_dataset(
            unique(),
            backlog_quota_bytes="100",  # type: ignore[arg-type]
        ),
        # A str is a sequence of its characters: each was prefetched.
        "shards": lambda: admin.prefetch(any_dataset, "kept"),
        "key_id": lambda: admin.retire_key("k\udcff"),
        "insecure": lambda: server.connect(insecure="no", ca=None),
        "local_reads": lambda: server.connect(local_reads="no"),
        "pin_memory": lambda: tierstore.client.local.LocalReadOptions(pin_memory="yes"),  # type: ignore[arg-type]
        # Made without a word, then an AttributeError at the first call (or its repr).
        "settings": lambda: tierstore.Client(server.address),  # type: ignore[arg-type]
        "local": lambda: tierstore.Client(admin._channel.settings, local=True),  # type: ignore[arg-type]
        # Each a bare TypeError or AttributeError too, or (a TTL out of range) sent.
        "shards ": lambda: admin.prefetch(any_dataset, None),  # type: ignore[arg-type]
        "force": lambda: admin.delete_dataset(any_dataset, force="no"),  # type: ignore[arg-type]
        **{
            f"ttl_s{' ' * i}": partial(admin.create_token, "p", [], ttl_s=ttl)
            for i, ttl in enumerate(("5", True, -5, 0.5, float("nan"), 10**400), start=1)
        },
        "sampler": lambda: admin.declare_plan(any_dataset, sampler="x"),  # type: ignore[arg-type]
        "position": lambda: admin.report_position(job, 1.0),  # type: ignore[arg-type]
        "path": lambda: admin.download(any_dataset, "kept", None),  # type: ignore[arg-type]
        "path ": lambda: admin.download(any_dataset, "kept", b"out.bin"),  # type: ignore[arg-type]
        # Each was taken: a falsy prefix for every shard, a falsy dataset for every
        # dataset, bytes as a plan's shard name; "" a directory, and None protobuf's words.
        "prefix   ": lambda: admin.list(any_dataset, prefix=0),  # type: ignore[arg-type]
        "prefix    ": lambda: admin.declare_plan(any_dataset, shards=[], prefix=[]),  # type: ignore[arg-type]
        "dataset name": lambda: admin.stats(0),  # type: ignore[arg-type]
        "dataset name ": lambda: admin.stats(b""),  # type: ignore[arg-type]
        "shard name": lambda: admin.declare_plan(any_dataset, shards=[b"kept"]),  # type: ignore[list-item]
        "shard name ": lambda: admin.declare_plan(any_dataset, shards=[None]),  # type: ignore[list-item]
        "path  ": lambda: admin.download(any_dataset, "kept", ""),
    }
    for name, call in bad_calls.items():
        with pytest.raises(errors.InvalidArgument, match=f"^{name.strip()} ") as refused:
            call()
        assert "\\udc" not in str(refused.value) or "surrogate" in str(refused.value), name
    # Refused here, before any call: a token's TTL out of range was the server's to refuse.
    nobody = tierstore.connect(f"127.0.0.1:{free_port()}", insecure=True, token="ts_x")
    with nobody, pytest.raises(errors.InvalidArgument, match=r"^ttl_s "):
        nobody.create_token("p", [], ttl_s=-5)
    # Nothing to change was an "OK" that changed nothing (the CLI refused it).
    with pytest.raises(errors.InvalidArgument, match="nothing to update"):
        admin.update_dataset(any_dataset)
    # Nothing was made, and the server and the client go on as before.
    assert [token["principal"] for token in admin.list_tokens()].count("p") == 0
    admin.report_position(job, np.int64(0))  # a numpy position was refused
    admin.close_plan(job)
    assert "sizing" in admin.stats(sizing=np.bool_(True))
    assert admin.list(any_dataset, prefix=None) == admin.list(any_dataset)  # type: ignore[arg-type]
    assert admin.stats(None)["datasets"].keys() == admin.stats()["datasets"].keys()  # type: ignore[arg-type]
    # A generator of grants made a token with none: the check had used it up.
    token_id, _ = admin.create_token("gen", (g for g in [Grant(any_dataset, Role.READER)]))
    made = next(t for t in admin.list_tokens() if t["token_id"] == token_id)
    assert made["grants"] == [Grant(any_dataset, Role.READER)]
    admin.revoke_token(token_id)
    assert admin.get_dataset(any_dataset) == settings


def test_a_put_cut_off_before_the_answer_says_its_outcome_is_unknown(
    server: ServerProcess, any_dataset: str
) -> None:
    # It said "DEADLINE_EXCEEDED: Deadline Exceeded" (or grpc's "Stream removed"), and
    # nothing of whether the shard had been stored.
    with server.connect() as client:
        client.stream_timeout_s = 0.001
        with pytest.raises(errors.Unavailable, match="may or may not have been made") as cut:
            client.put(any_dataset, "cut", os.urandom(8 << 20))
    assert "DEADLINE_EXCEEDED" in str(cut.value) and f"{any_dataset}/cut" in str(cut.value)
    assert cut.value.outcome_unknown  # for a caller (the CLI's --json) to tell by
    # A put that never reached a server certainly stored nothing: no such doubt.
    address = f"127.0.0.1:{free_port()}"
    nowhere = tierstore.connect(address, token=server.token, ca=server.ca_path)
    with nowhere, pytest.raises(errors.Unavailable) as unsent:
        nowhere.put(any_dataset, "never", b"x")
    assert "may or may not" not in str(unsent.value) and not unsent.value.outcome_unknown


def test_other_calls_cut_off_before_the_answer_say_their_outcome_is_unknown(
    server: ServerProcess, any_dataset: str
) -> None:
    # Only a put said so: a cut-off delete, pin, unpin or evict (the CLI's rm, pin,
    # unpin, evict) was reported as not done, never as in doubt. The server is stopped
    # (SIGSTOP): each request reaches its socket, and no answer comes before the deadline.
    with server.connect() as client:
        client.put(any_dataset, "kept", b"x")
        calls = {
            "delete": lambda: client.delete(any_dataset, "kept"),
            "pin": lambda: client.pin(any_dataset, "kept"),
            "unpin": lambda: client.unpin(any_dataset, "kept"),
            "evict": lambda: client.evict(any_dataset, "kept"),
        }
        # A delete's deadline is the transfers' (a write-through one waits on its archive).
        client.timeout_s = client.stream_timeout_s = 0.5
        os.kill(server.pid, signal.SIGSTOP)
        try:
            for name, call in calls.items():
                with pytest.raises(errors.Unavailable, match="may or may not have been") as cut:
                    call()
                assert cut.value.outcome_unknown, name
                assert f"the {name} of {any_dataset}/kept" in str(cut.value)
            # A call that changes nothing has no outcome to doubt.
            with pytest.raises(errors.Unavailable) as read:
                client.stat(any_dataset, "kept")
            assert not read.value.outcome_unknown
        finally:
            os.kill(server.pid, signal.SIGCONT)


def test_a_client_without_a_token_is_told_so(
    server: ServerProcess, admin: Client, any_dataset: str
) -> None:
    # The server's "missing or invalid credentials" did not say which, and a script
    # whose TIERSTORE_TOKEN was unset looked like one with a wrong token.
    admin.put(any_dataset, "s", b"data")
    with server.connect(token=None, environ={}) as anonymous:
        calls: list[Callable[[], object]] = [
            anonymous.list_datasets,
            lambda: anonymous.get(any_dataset, "s"),
            lambda: anonymous.put(any_dataset, "t", b"more"),
        ]
        for call in calls:
            with pytest.raises(errors.Unauthenticated, match="this client has no token"):
                call()
    with server.connect(token="ts_0_" + "x" * 40) as wrong:
        with pytest.raises(errors.Unauthenticated) as refused:
            wrong.list_datasets()
        assert "no token" not in str(refused.value)


def test_a_stream_cut_by_a_closed_channel_says_the_client_was_closed(
    server: ServerProcess, admin: Client, any_dataset: str
) -> None:
    # A stream in flight when close() ran said gRPC's "CANCELLED: Stream removed
    # (Channel closed!)", and nothing of why.
    admin.put(any_dataset, "big", os.urandom(64 << 20))
    channel = server.channel()
    stub = shards_pb2_grpc.ShardServiceStub(channel)
    request = shards_pb2.GetShardRequest(dataset=any_dataset, shard="big")
    responses = stub.GetShard(request, metadata=server.metadata)
    next(responses)  # the header: the stream is open, most of its frames still to come
    channel.close()
    with pytest.raises(grpc.RpcError) as cut:
        for _ in responses:
            pass
    assert cut.value.code() is grpc.StatusCode.CANCELLED
    with pytest.raises(errors.Unavailable, match="the client was closed while this call"):
        raise_mapped(cut.value)


def test_get_frame_ranges(server: ServerProcess, small_frames: Client, any_dataset: str) -> None:
    data = os.urandom(4 * FRAME + 10)
    small_frames.put(any_dataset, "frames", data)
    stub = shards_pb2_grpc.ShardServiceStub(server.channel())

    def frames(first: int, count: int) -> bytes:
        request = shards_pb2.GetShardRequest(
            dataset=any_dataset,
            shard="frames",
            frame_range=common_pb2.FrameRange(first=first, count=count),
        )
        responses = stub.GetShard(request, metadata=server.metadata, timeout=30)
        stream = open_stream(iter(responses), request)  # verifies every frame
        if stream.frame_count:
            assert (stream.first_frame, stream.frame_count) == (first, min(count, 5 - first))
        return b"".join(buffer.to_pybytes() for buffer in stream.frames())

    assert frames(0, 5) == data
    assert frames(1, 2) == data[FRAME : 3 * FRAME]
    assert frames(3, 9) == data[3 * FRAME :]  # cut at the end
    assert frames(4, 1) == data[4 * FRAME :]
    assert frames(5, 1) == b""  # an empty range at the end
    # Past the end is OUT_OF_RANGE (the shard may grow); a negative count cannot be met.
    with pytest.raises(grpc.RpcError) as caught:
        frames(6, 1)
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(errors.RangePastEnd, match="past the end"):
        raise_mapped(caught.value)


def test_stat_list_with_pagination_and_delete(
    server: ServerProcess, admin: Client, dataset: str
) -> None:
    names = [f"p/{i:02d}" for i in range(7)] + ["q/0"]
    for i, name in enumerate(names):
        admin.put(dataset, name, bytes([i]) * (i + 1))
    info = admin.stat(dataset, "p/03")
    assert (info.dataset, info.name, info.size, info.kind) == (dataset, "p/03", 4, ShardKind.RAW)
    assert info.hot and not info.encrypted and info.created_at > 0

    assert [s.name for s in admin.list(dataset)] == names
    assert [s.name for s in admin.list(dataset, "p/")] == names[:7]
    assert [s.name for s in admin.list(dataset, "q/")] == ["q/0"]
    assert admin.list(dataset, "zzz") == []
    assert [s.name for s in admin.list(dataset, limit=2)] == names[:2]
    # Paging on from the last name of a listing; a name that is no shard works too.
    assert [s.name for s in admin.list(dataset, start_after="p/01", limit=2)] == names[2:4]
    assert [s.name for s in admin.list(dataset, "p/", start_after="p/05x")] == ["p/06"]
    assert admin.list(dataset, start_after="q/0") == []
    with pytest.raises(errors.InvalidArgument, match="start_after"):
        admin.list(dataset, start_after=b"p/01")  # type: ignore[arg-type]

    # Pages as the server cuts them: 3 + 3 + 2, the last without a next token.
    stub = shards_pb2_grpc.ShardServiceStub(server.channel())
    pages, start_after = [], ""
    while True:
        reply = stub.ListShards(
            shards_pb2.ListShardsRequest(dataset=dataset, start_after=start_after, limit=3),
            metadata=server.metadata,
            timeout=10,
        )
        pages.append([s.name for s in reply.shards])
        start_after = reply.next_start_after
        if not start_after:
            break
    assert pages == [names[0:3], names[3:6], names[6:8]]

    admin.delete(dataset, "p/03")
    with pytest.raises(errors.ShardNotFound):
        admin.stat(dataset, "p/03")
    with pytest.raises(errors.ShardNotFound):
        admin.delete(dataset, "p/03")
    assert "p/03" not in [s.name for s in admin.list(dataset)]
    with pytest.raises(errors.DatasetNotFound):
        admin.list(unique())


def test_placement_pin_unpin_evict_prefetch_and_stats(admin: Client) -> None:
    dataset = unique()
    # archived when acknowledged
    admin.create_dataset(dataset, encrypted=False, durability="write-through")
    data = os.urandom(300_000)
    assert admin.put(dataset, "a", data).archived
    admin.put(dataset, "b", b"b" * 1000)
    before = admin.stats(dataset)
    usage = before["datasets"][dataset]
    assert (usage["shards"], usage["bytes"], usage["hot_shards"]) == (2, 301_000, 2)
    assert before["hot_bytes"] >= usage["hot_bytes"] > 301_000 - 1
    # Write-through: the archive holds both, stored as the hot tier stores them.
    assert (usage["archived_shards"], usage["archived_bytes"]) == (2, usage["hot_bytes"])
    assert before["hot_capacity_bytes"] > 0

    assert admin.pin(dataset, "a") == 0  # already hot: nothing to promote
    assert admin.evict(dataset, "a") == 0  # pinned shards stay
    assert admin.stat(dataset, "a").hot
    admin.unpin(dataset, "a")
    freed = admin.evict(dataset, "a")
    assert freed >= len(data)
    assert not admin.stat(dataset, "a").hot
    after = admin.stats(dataset)["datasets"][dataset]
    assert (after["hot_shards"], after["archived_shards"]) == (1, 2)  # evicted: archive only
    assert after["hot_bytes"] == usage["hot_bytes"] - freed
    assert after["archived_bytes"] == usage["archived_bytes"]

    # Prefetch brings it back without a read; any sequence of names will do (a generator
    # sent none: the name checks had used it up).
    assert admin.prefetch(dataset, (name for name in ["a", "b", "no-such-shard"])) == 1
    poll(lambda: admin.stat(dataset, "a").hot, 20, "the prefetch to promote the shard")

    # Pinning a cold shard queues its promotion.
    admin.unpin(dataset, "a")
    assert admin.evict(dataset, "a") == freed
    assert admin.pin(dataset, "a") == freed
    poll(lambda: admin.stat(dataset, "a").hot, 20, "the pin to promote the shard")
    assert admin.evict(dataset, "a") == 0
    admin.unpin(dataset, "a")

    # A cold read is a miss, a hot read a hit.
    assert admin.evict(dataset, "a") == freed
    hits0 = admin.stats(dataset)["datasets"][dataset]
    assert admin.get(dataset, "a").to_pybytes() == data
    assert admin.get(dataset, "b").to_pybytes() == b"b" * 1000
    counts = admin.stats(dataset)["datasets"][dataset]
    assert counts["misses"] == hits0["misses"] + 1
    assert counts["hits"] == hits0["hits"] + 1
    assert 0 < counts["hit_ratio"] < 1
    # The cold read queued a promotion: let it land, so no later test sees it happen.
    poll(lambda: admin.stat(dataset, "a").hot, 20, "the cold read to promote the shard")
    every = admin.stats()
    assert dataset in every["datasets"]
    assert set(every) >= {"hot_bytes", "hot_capacity_bytes", "backlog_bytes", "journal_entries"}
    for call in (admin.pin, admin.unpin, admin.evict):
        with pytest.raises(errors.ShardNotFound):
            call(dataset, "no-such-shard")
    with pytest.raises(errors.DatasetNotFound):
        admin.prefetch(unique(), ["a"])
    with pytest.raises(errors.DatasetNotFound):
        admin.stats(unique())


def test_admin_tokens(server: ServerProcess, admin: Client, dataset: str) -> None:
    admin.put(dataset, "s", b"secret bytes")
    token_id, token = admin.create_token("alice", [Grant(dataset, Role.READER)])
    assert token.startswith(f"ts_{token_id}_")
    listed = {t["token_id"]: t for t in admin.list_tokens()}
    assert listed[token_id]["principal"] == "alice"
    assert listed[token_id]["grants"] == [Grant(dataset, Role.READER)]
    assert listed[token_id]["expires_at"] == 0 and not listed[token_id]["revoked"]
    assert all(token not in repr(t) for t in listed.values())  # never the token itself

    # Through the service, which refuses a revoked token at once (local reads stop within
    # their grant's lifetime instead: tests/client/test_local_reads.py).
    with server.connect(token=token, local_reads=False) as alice:
        assert alice.get(dataset, "s").to_pybytes() == b"secret bytes"
        assert [name for name, _ in alice.list_datasets()] == [dataset]
        with pytest.raises(errors.PermissionDenied):
            alice.put(dataset, "s", b"overwrite")
        with pytest.raises(errors.PermissionDenied):
            alice.list_tokens()
        admin.revoke_token(token_id)
        with pytest.raises(errors.Unauthenticated):
            alice.get(dataset, "s")
    assert {t["token_id"]: t for t in admin.list_tokens()}[token_id]["revoked"]
    admin.revoke_token(token_id)  # again: a no-op
    with pytest.raises(errors.NotFound):
        admin.revoke_token("000000000000")


def test_rotate_keys_rewraps_and_keeps_data_readable(admin: Client) -> None:
    dataset = unique()
    admin.create_dataset(dataset, encrypted=True)
    blobs = {f"s{i}": os.urandom(1000 + i) for i in range(3)}
    for name, blob in blobs.items():
        admin.put(dataset, name, blob)
    rewrapped, key_id = admin.rotate_keys()
    assert rewrapped >= len(blobs)
    assert key_id
    again, next_id = admin.rotate_keys()
    assert next_id != key_id
    assert again >= len(blobs)
    for name, blob in blobs.items():
        assert admin.get(dataset, name).to_pybytes() == blob


def test_an_old_master_key_is_retired_once_the_archive_no_longer_needs_it(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # Retiring a key was a hand edit of master.keys, checked at the next start only.
    node = spawn_server(tmp_path / "node")
    key_file = node.data_dir / "master.keys"
    with node.connect() as admin:
        dataset = unique()
        admin.create_dataset(dataset, encrypted=True)
        admin.put(dataset, "s", b"secret" * 1000)
        with pytest.raises(errors.KeyRotationRefused, match="current key"):
            admin.retire_key("k1")
        _, current = admin.rotate_keys()
        assert current == "k2"

        def retired() -> tuple[list[str], str] | None:
            try:  # refused while the mover reseals the archive's metadata under k2
                return admin.retire_key("k1")
            except errors.KeyRotationRefused as refused:
                assert "resealed" in str(refused), refused
                return None

        assert poll(retired, 60, "k1 to be retired") == (["k2"], "k2")
        assert sorted(json.loads(key_file.read_text())["keys"]) == ["k2"]
        with pytest.raises(errors.NotFound, match="holds no master key 'k1'"):
            admin.retire_key("k1")  # retired already: as for an unknown id
        # Kept aside, not destroyed: a node sharing the key file may still need it.
        aside = node.data_dir / "master.keys.retired"
        assert sorted(json.loads(aside.read_text())["keys"]) == ["k1"]
        assert stat.S_IMODE(aside.stat().st_mode) == 0o600
        _, reader_token = admin.create_token("reader", [Grant(dataset, Role.READER)])
        with node.connect(token=reader_token) as reader, pytest.raises(errors.PermissionDenied):
            reader.retire_key("k2")
    assert node.stop() == 0
    # An operator's `chmod -R g+rX` for local readers reaches it too: a restart takes
    # the group's bits off, as off master.keys (the group read the retired key).
    aside.chmod(0o640)
    node.start()  # the start-up check reads the catalog and the archive with k2 alone
    assert stat.S_IMODE(aside.stat().st_mode) == 0o600
    with node.connect() as admin:
        admin.evict(dataset, "s")
        assert admin.get(dataset, "s").to_pybytes() == b"secret" * 1000


def test_health_on_both_ports(server: ServerProcess) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", *SERVICES):
        assert server.health(service) == serving  # plaintext port, no credentials
    with pytest.raises(grpc.RpcError) as caught:
        server.health("no.such.Service")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    # The API port answers health over TLS, to a caller with a token.
    stub = health_pb2_grpc.HealthStub(server.channel())
    for service in ("", *SERVICES):
        reply = stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5, metadata=server.metadata
        )
        assert reply.status == serving
    listed = stub.List(health_pb2.HealthListRequest(), timeout=5, metadata=server.metadata)
    assert {name: s.status for name, s in listed.statuses.items()} == dict.fromkeys(
        ("", *SERVICES), serving
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for check in (
        server.health,
        lambda service: stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5, metadata=server.metadata
        ),
    ):  # the same answer on both ports (the API port's had no message)
        with pytest.raises(grpc.RpcError) as caught:
            check("no.such.Service")
        assert (caught.value.code(), caught.value.details()) == (
            grpc.StatusCode.NOT_FOUND,
            "unknown service",
        )

    # The plaintext port serves health and nothing else.
    with grpc.insecure_channel(f"127.0.0.1:{server.health_port}") as plain:
        listing = plain.unary_unary("/tierstore.v1.DatasetService/ListDatasets")
        with pytest.raises(grpc.RpcError) as caught:
            listing(b"", metadata=server.metadata, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_lists_services(server: ServerProcess) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel())
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = list(stub.ServerReflectionInfo(iter([request]), metadata=server.metadata, timeout=5))
    names = {s.name for s in replies[0].list_services_response.service}
    assert names >= {*SERVICES, "grpc.health.v1.Health"}
    assert any("reflection" in name for name in names)

    described = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICES[1])
    reply = next(stub.ServerReflectionInfo(iter([described]), metadata=server.metadata, timeout=5))
    assert reply.file_descriptor_response.file_descriptor_proto

    with pytest.raises(grpc.RpcError) as caught:
        list(stub.ServerReflectionInfo(iter([request]), timeout=5))  # no token
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_file_that_shrinks_while_it_is_put_is_refused_and_stores_nothing(
    admin: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A memory map of it killed the client with SIGBUS at the first page past its new end.
    dataset = unique()
    admin.create_dataset(dataset, encrypted=False)
    path = tmp_path / "shrinking.bin"
    path.write_bytes(os.urandom(3 * admin.frame_bytes))
    pread = os.pread

    def read_then_cut(fd: int, length: int, offset: int) -> bytes:
        data = pread(fd, length, offset)
        if offset == 0:  # someone cuts the file once its first frame has been read
            os.truncate(path, admin.frame_bytes + 10)
        return data

    monkeypatch.setattr(os, "pread", read_then_cut)
    with pytest.raises(errors.InvalidArgument, match="shrank while it was read"):
        admin.put(dataset, "s", path)
    monkeypatch.undo()
    with pytest.raises(errors.ShardNotFound):
        admin.stat(dataset, "s")
    admin.put(dataset, "s", str(path))  # the file as it is now
    assert admin.get(dataset, "s").to_pybytes() == path.read_bytes()


def test_a_file_whose_size_says_less_than_it_holds_is_put_whole(admin: Client) -> None:
    # A /proc file's size is 0: sized by it, the put stored an empty shard and said
    # nothing (the CLI printed "uploaded", 0 bytes).
    dataset = unique()
    admin.create_dataset(dataset, encrypted=False)
    cmdline = Path("/proc/self/cmdline")  # this process's: the same for the put
    assert cmdline.stat().st_size == 0 and cmdline.read_bytes()
    admin.put(dataset, "cmdline", cmdline)
    assert admin.get(dataset, "cmdline").to_pybytes() == cmdline.read_bytes()
    with open(cmdline, "rb") as opened:
        admin.put(dataset, "opened", opened)
    assert admin.get(dataset, "opened").to_pybytes() == cmdline.read_bytes()
