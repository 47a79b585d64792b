"""Requests whose parse would cost far more than their bytes are refused before they are
parsed (tierstore/server/requestchecks.py): DeclarePlan's explicit shard list, Prefetch's
shard names, CreateToken's grants, ReportLocalReads' entries (that one:
tests/server/test_local_read_limits.py).

The field count is compiled by numba and has a plain-Python twin; they must agree on any
bytes. The end-to-end test watches a real server's peak memory while it refuses a plan of
22 million 1-character names (parsed, it grew a server by some 1.2 GB).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.server.conftest import ServerProcess
from tests.server.servers import error_name, invoke, varint
from tierstore.engine.planbook import MAX_PLAN_ENTRIES
from tierstore.errors import InvalidArgument, InvalidPlan
from tierstore.server.requestchecks import (
    MAX_PREFETCH_SHARDS,
    MAX_TOKEN_GRANTS,
    check_plan_encoding,
    check_prefetch_encoding,
    check_token_encoding,
    count_fields,
    count_fields_py,
)
from tierstore.types import Grant, Role
from tierstore.v1 import admin_pb2, placement_pb2

DECLARE = "/tierstore.v1.PlacementService/DeclarePlan"
PREFETCH = "/tierstore.v1.PlacementService/Prefetch"
CREATE_TOKEN = "/tierstore.v1.AdminService/CreateToken"
#: One explicit-list entry: field 1, length 1, one character.
ENTRY = b"\x0a\x01a"


def plan_request(*lists: bytes, dataset: bytes = b"d") -> bytes:
    """A DeclarePlan request's encoding with the explicit list given in ``lists`` pieces."""
    head = b"\x0a" + varint(len(dataset)) + dataset
    return head + b"".join(b"\x1a" + varint(len(piece)) + piece for piece in lists)


# The field count: compiled and plain agree.


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=64), cap=st.integers(0, 20), start=st.integers(0, 8))
def test_the_compiled_count_agrees_with_its_twin_on_any_bytes(
    data: bytes, cap: int, start: int
) -> None:
    start = min(start, len(data))
    raw = np.frombuffer(data, dtype=np.uint8)
    assert count_fields(raw, start, len(data), cap) == count_fields_py(data, start, len(data), cap)


@settings(max_examples=100, deadline=None)
@given(names=st.lists(st.text(max_size=40), max_size=60), cap=st.integers(0, 80))
def test_the_count_of_a_valid_list_is_its_length_up_to_the_cap(names: list[str], cap: int) -> None:
    encoded = placement_pb2.ShardList(shards=names).SerializeToString()
    raw = np.frombuffer(encoded, dtype=np.uint8)
    assert count_fields(raw, 0, len(raw), cap) == min(len(names), cap + 1)


def test_groups_and_invalid_wire_types_are_told_apart() -> None:
    for wire_type in (3, 4, 6, 7):
        data = b"\x0a\x01a" + bytes([0x10 | wire_type])
        raw = np.frombuffer(data, dtype=np.uint8)
        assert count_fields(raw, 0, len(raw), 10) == -1 - wire_type
    with pytest.raises(InvalidArgument, match="wire type 3"):
        check_plan_encoding(b"\x0a\x01d\x1b")


# The plan and prefetch checks.


def test_a_plan_of_the_most_entries_passes_and_one_more_is_refused() -> None:
    check_plan_encoding(plan_request(ENTRY * MAX_PLAN_ENTRIES))
    with pytest.raises(InvalidPlan, match="at most 10,000,000 entries"):
        check_plan_encoding(plan_request(ENTRY * (MAX_PLAN_ENTRIES + 1)))
    # A parser merges a list sent in pieces: the pieces are counted together.
    half = MAX_PLAN_ENTRIES // 2
    check_plan_encoding(plan_request(ENTRY * half, ENTRY * half))
    with pytest.raises(InvalidPlan):
        check_plan_encoding(plan_request(ENTRY * half, ENTRY * (half + 1)))


def test_a_plan_request_of_many_top_level_fields_is_refused() -> None:
    # Each piece of a list is a top-level field: a million one-entry pieces.
    with pytest.raises(InvalidArgument, match="more than 32 fields"):
        check_plan_encoding(plan_request(*[ENTRY] * 1_000_000))
    check_plan_encoding(plan_request(*[ENTRY] * 31))


def test_what_the_client_sends_passes_the_checks() -> None:
    sampler = placement_pb2.DeclarePlanRequest(
        dataset="d",
        sampler=placement_pb2.SamplerSpec(seed=2**64 - 1, epoch=3, world_size=8),
        prefix="p/",
        job="j" * 256,
        ttl_s=30.5,
        position=2**64 - 1,
    )
    explicit = placement_pb2.DeclarePlanRequest(
        dataset="d", explicit=placement_pb2.ShardList(shards=["s" * 1024] * 1000)
    )
    for request in (sampler, explicit):
        check_plan_encoding(request.SerializeToString())
    shards = [f"{i:06}" for i in range(MAX_PREFETCH_SHARDS)]
    prefetch = placement_pb2.PrefetchRequest(dataset="d", shards=shards)
    check_prefetch_encoding(prefetch.SerializeToString())
    shards.append("one-more")
    with pytest.raises(InvalidArgument, match=f"at most {MAX_PREFETCH_SHARDS} shards"):
        check_prefetch_encoding(
            placement_pb2.PrefetchRequest(dataset="d", shards=shards).SerializeToString()
        )
    grants = [
        admin_pb2.Grant(dataset=f"d{i}", role=admin_pb2.ROLE_READER)
        for i in range(MAX_TOKEN_GRANTS)
    ]
    token = admin_pb2.CreateTokenRequest(principal="p" * 200, grants=grants, ttl_s=3600)
    check_token_encoding(token.SerializeToString())
    token.grants.append(admin_pb2.Grant(dataset="one-more", role=admin_pb2.ROLE_ADMIN))
    with pytest.raises(InvalidArgument, match=f"at most {MAX_TOKEN_GRANTS:,} grants"):
        check_token_encoding(token.SerializeToString())


# End to end: the server refuses before parsing.


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset the peak resident set


def test_the_server_refuses_a_huge_plan_without_parsing_it(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    server = spawn_server()
    admin = server.connect()
    admin.create_dataset("d", encrypted=False)
    admin.put("d", "a", b"x" * 100)
    channel = server.channel()
    request = plan_request(ENTRY * 22_000_000)  # 63 MiB, under both ends' message limits
    assert len(request) < 64 << 20
    reset_peak_rss(server.pid)
    before = peak_rss_bytes(server.pid)
    with pytest.raises(grpc.RpcError) as refused:
        invoke(channel, DECLARE, request, server.token, raw=True, timeout=60)
    grown = peak_rss_bytes(server.pid) - before
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert error_name(refused.value) == "InvalidPlan"
    assert "at most 10,000,000 entries" in (refused.value.details() or "")  # type: ignore[attr-defined]
    # The request is held a few times on its way in (some 210 MiB measured); parsed,
    # it grew the server by some 1.2 GB.
    assert grown < 450 << 20, f"the server grew by {grown >> 20} MiB"
    # The server goes on serving, the same caller too.
    reply = placement_pb2.DeclarePlanResponse.FromString(
        invoke(channel, DECLARE, plan_request(ENTRY), server.token, raw=True)[0]
    )
    assert reply.length == 1
    admin.close()


def test_any_token_holder_is_refused_a_huge_token_request_without_its_parse(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    # CreateToken is for admins on "*", but that is checked once the request is parsed,
    # and any token's holder could send one: 30 million empty grants (60 MB) grew the
    # server by some 1.6 GB, and a few such calls at once ended it.
    server = spawn_server()
    admin = server.connect()
    admin.create_dataset("d", encrypted=False)
    _, reader = admin.create_token("reader", [Grant("d", Role.READER)])
    channel = server.channel()
    request = b"\x0a\x01p" + b"\x12\x00" * 30_000_000  # principal "p", then empty grants
    reset_peak_rss(server.pid)
    before = peak_rss_bytes(server.pid)
    with pytest.raises(grpc.RpcError) as refused:
        invoke(channel, CREATE_TOKEN, request, reader, raw=True, timeout=60)
    grown = peak_rss_bytes(server.pid) - before
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert f"at most {MAX_TOKEN_GRANTS:,} grants" in (refused.value.details() or "")  # type: ignore[attr-defined]
    # Held a few times on its way in, as the plan above.
    assert grown < 450 << 20, f"the server grew by {grown >> 20} MiB"
    # A token request of a few grants is still answered: refused for this caller,
    # issued for the admin.
    small = admin_pb2.CreateTokenRequest(
        principal="p", grants=[admin_pb2.Grant(dataset="d", role=admin_pb2.ROLE_READER)]
    )
    with pytest.raises(grpc.RpcError) as denied:
        invoke(channel, CREATE_TOKEN, small, reader)
    assert error_name(denied.value) == "PermissionDenied"
    assert invoke(channel, CREATE_TOKEN, small, server.token)[0].token
    # Past the limit without a ttl_s, the request passes the count (one field fewer);
    # the handler refuses it.
    too_many = admin_pb2.CreateTokenRequest(principal="p", grants=[small.grants[0]])
    too_many.grants.extend([small.grants[0]] * MAX_TOKEN_GRANTS)
    with pytest.raises(grpc.RpcError) as refused:
        invoke(channel, CREATE_TOKEN, too_many, server.token)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert f"at most {MAX_TOKEN_GRANTS:,} grants" in (refused.value.details() or "")  # type: ignore[attr-defined]
    admin.close()
