"""Zero trust, end to end: authentication, authorization, transport and audit (tierstore/server/*).

Real servers run in this process (TLS from a local CA over a MemoryTier archive; see
:mod:`tests.server.servers`). Every refused call is checked twice: it gets the expected
status code, and nothing succeeded — no response at all (for GetShard: not even the
header that would carry a data key), and the data, datasets and tokens are unchanged.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.engine.stores import FRAME, payload
from tests.server.servers import RPCS, RunningServer, error_name, invoke, serving
from tierstore.errors import InvalidArgument
from tierstore.server.app import ServerSettings
from tierstore.server.authz import METHOD_RULES, Scope
from tierstore.server.refusallog import RefusalLog
from tierstore.server.tls import ensure_tls_material, issue_client_certificate
from tierstore.types import DatasetSettings, Role
from tierstore.v1 import (
    admin_pb2,
    common_pb2,
    datasets_pb2,
    placement_pb2,
    shards_pb2,
)

DATASET = "/tierstore.v1.DatasetService/"
SHARD = "/tierstore.v1.ShardService/"
PLACEMENT = "/tierstore.v1.PlacementService/"
ADMIN = "/tierstore.v1.AdminService/"
GET = SHARD + "GetShard"
PUT = SHARD + "PutShard"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

DATASETS = {
    "alpha": DatasetSettings(),
    "beta": DatasetSettings(),
    "vault": DatasetSettings(encrypted=True),
}
#: The shard each dataset holds, and its size.
SHARDS = {"alpha": ("a.bin", 3 * FRAME + 5), "beta": ("b.bin", 2 * FRAME), "vault": ("v.bin", 9000)}
#: A dataset that exists nowhere.
GHOST = "ghost"
#: A principal no refused call may ever create a token for.
MALLORY = "mallory"
#: The job id of the access plans the requests name.
JOB = "epoch-0"


def request_for(method: str, dataset: str = "alpha", shard: str | None = None) -> Any:
    """A well-formed request of ``method`` aimed at ``dataset`` (a message list for PutShard)."""
    shard = shard or SHARDS.get(dataset, ("x.bin", 0))[0]
    name = method.rsplit("/", 1)[1]
    ref = placement_pb2.ShardRef(dataset=dataset, shard=shard)
    requests: dict[str, Any] = {
        "CreateDataset": datasets_pb2.CreateDatasetRequest(name=dataset),
        "GetDataset": datasets_pb2.GetDatasetRequest(name=dataset),
        "ListDatasets": datasets_pb2.ListDatasetsRequest(),
        "UpdateDataset": datasets_pb2.UpdateDatasetRequest(name=dataset, hot_quota_bytes=1),
        "DeleteDataset": datasets_pb2.DeleteDatasetRequest(name=dataset, force=True),
        "PutShard": [
            shards_pb2.PutShardRequest(
                header=shards_pb2.PutShardHeader(
                    dataset=dataset, shard=shard, kind=common_pb2.SHARD_KIND_RAW, frame_count=1
                )
            ),
            shards_pb2.PutShardRequest(frame=b"overwritten!"),
            shards_pb2.PutShardRequest(end=shards_pb2.PutShardEnd()),
        ],
        "GetShard": shards_pb2.GetShardRequest(dataset=dataset, shard=shard),
        "StatShard": shards_pb2.StatShardRequest(dataset=dataset, shard=shard),
        "ListShards": shards_pb2.ListShardsRequest(dataset=dataset),
        "DeleteShard": shards_pb2.DeleteShardRequest(dataset=dataset, shard=shard),
        "OpenLocal": shards_pb2.OpenLocalRequest(dataset=dataset),
        "GrantDataKey": shards_pb2.GrantDataKeyRequest(dataset=dataset, shard=shard, generation=1),
        "ReportLocalReads": shards_pb2.ReportLocalReadsRequest(
            dataset=dataset, reads=[shards_pb2.LocalReadCount(shard=shard, generation=1, count=1)]
        ),
        "Pin": placement_pb2.PinRequest(dataset=dataset, shard=shard, ttl_s=60),
        "Unpin": ref,
        "Evict": ref,
        "Prefetch": placement_pb2.PrefetchRequest(dataset=dataset, shards=[shard]),
        "GetTierStats": placement_pb2.GetTierStatsRequest(dataset=dataset, sizing=True),
        "DeclarePlan": placement_pb2.DeclarePlanRequest(
            dataset=dataset, explicit=placement_pb2.ShardList(shards=[shard]), job=JOB
        ),
        "ReportPosition": placement_pb2.ReportPositionRequest(job=JOB, position=1),
        "ClosePlan": placement_pb2.ClosePlanRequest(job=JOB),
        "CreateToken": admin_pb2.CreateTokenRequest(
            principal=MALLORY, grants=[admin_pb2.Grant(dataset="*", role=admin_pb2.ROLE_ADMIN)]
        ),
        "RevokeToken": admin_pb2.RevokeTokenRequest(token_id="0" * 12),
        "ListTokens": admin_pb2.ListTokensRequest(),
        "RotateKeys": admin_pb2.RotateKeysRequest(),
        "RetireKey": admin_pb2.RetireKeyRequest(key_id="k1"),
        "ListKeys": admin_pb2.ListKeysRequest(),
        "ExportTrace": admin_pb2.ExportTraceRequest(),
    }
    return requests[name]


@dataclass
class Node:
    """The shared TLS server, its tokens (by principal) and what its shards hold."""

    running: RunningServer
    tokens: dict[str, str]
    contents: dict[str, bytes]
    channel: grpc.Channel

    def token_id(self, who: str) -> str:
        return self.tokens[who].split("_")[1]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with serving(tmp_path_factory.mktemp("secure"), datasets=DATASETS) as running:
        contents = {}
        for dataset, (shard, size) in SHARDS.items():
            contents[dataset] = payload(size, seed=len(dataset))
            running.store.put(dataset, shard, contents[dataset])
        tokens = {
            "admin": _admin_token_with_a_letter_in_its_id(running),
            "reader_a": running.token("reader-a", ("alpha", Role.READER)),
            "writer_a": running.token("writer-a", ("alpha", Role.WRITER)),
            "owner_a": running.token("owner-a", ("alpha", Role.ADMIN)),
            "reader_vault": running.token("reader-vault", ("vault", Role.READER)),
            "nobody": running.token("nobody", (GHOST, Role.ADMIN)),
        }
        yield Node(running, tokens, contents, running.channel())


def _admin_token_with_a_letter_in_its_id(running: RunningServer) -> str:
    """An admin token whose (hex) id has a letter in it, so that upper-casing the id
    really changes it (an all-digit id, about 1 in 300, would make that case moot)."""
    while True:
        token = running.token("admin", ("*", Role.ADMIN))
        if any(char.isalpha() for char in token[3:15]):
            return token


def expect_refused(
    channel: grpc.Channel,
    method: str,
    request: Any,
    token: str | None,
    code: grpc.StatusCode,
    *,
    call_metadata: tuple[tuple[str, str], ...] | None = None,
) -> grpc.RpcError:
    """Call, and assert the call failed with ``code`` having sent back nothing at all."""
    received: list[Any] = []
    with pytest.raises(grpc.RpcError) as caught:
        invoke(
            channel,
            method,
            request,
            token,
            received=received,
            call_metadata=call_metadata,
            timeout=10,
        )
    error = caught.value
    assert error.code() == code, (method, error.code(), error.details())  # type: ignore[attr-defined]
    assert received == [], f"{method} sent {len(received)} responses before failing"
    return error


def assert_intact(node: Node) -> None:
    """Every dataset and shard is as the fixture left it, and no refused token was made."""
    store = node.running.store
    assert {name for name, _ in store.list_datasets()} >= set(DATASETS)
    for dataset, (shard, _) in SHARDS.items():
        assert store.get(dataset, shard).to_bytes() == node.contents[dataset], dataset
    assert store.get_dataset("alpha").hot_quota_bytes == 0
    assert MALLORY not in {info.principal for info in node.running.tokens.list()}


# Authentication.


@pytest.mark.parametrize("method", sorted(RPCS))
def test_every_rpc_refuses_a_call_without_a_token(node: Node, method: str) -> None:
    error = expect_refused(
        node.channel, method, request_for(method), None, grpc.StatusCode.UNAUTHENTICATED
    )
    assert error_name(error) == "Unauthenticated"
    assert_intact(node)


@pytest.mark.parametrize("method", sorted(RPCS))
def test_garbage_without_a_token_learns_nothing_about_parsing(node: Node, method: str) -> None:
    """Authentication comes before decoding: bytes that are no message still get
    UNAUTHENTICATED, so an anonymous caller cannot probe the server's parser."""
    garbage: Any = [b"\xff\xff\xff", b"A"] if RPCS[method].client_streaming else b"\xff\xff\xff"
    received: list[Any] = []
    with pytest.raises(grpc.RpcError) as caught:
        invoke(node.channel, method, garbage, None, raw=True, received=received, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert received == []
    # With a token, the same bytes are the caller's mistake, never a server error.
    with pytest.raises(grpc.RpcError) as caught:
        invoke(node.channel, method, garbage, node.tokens["admin"], raw=True, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert error_name(caught.value) == "InvalidArgument"
    assert_intact(node)


def _malformed(node: Node) -> dict[str, tuple[tuple[str, str], ...]]:
    good = node.tokens["admin"]
    return {
        "empty-bearer": (("authorization", "Bearer "),),
        "garbage": (("authorization", "Bearer garbage"),),
        "no-scheme": (("authorization", good),),
        "basic-scheme": (("authorization", f"Basic {good}"),),
        "no-space": (("authorization", f"Bearer{good}"),),
        "scheme-only": (("authorization", "bearer"),),
        "double-space": (("authorization", f"Bearer  {good}"),),
        "trailing-junk": (("authorization", f"Bearer {good}x"),),
        "truncated": (("authorization", f"Bearer {good[:-1]}"),),
        "uppercase-id": (
            ("authorization", "Bearer " + good.replace(good[3:15], good[3:15].upper())),
        ),
        "other-header": (("x-token", good),),
    }


MALFORMED = [
    "empty-bearer",
    "garbage",
    "no-scheme",
    "basic-scheme",
    "no-space",
    "scheme-only",
    "double-space",
    "trailing-junk",
    "truncated",
    "uppercase-id",
    "other-header",
]
#: One RPC of each shape, each of which would change or reveal something.
SHAPES = [GET, PUT, DATASET + "DeleteDataset", ADMIN + "CreateToken"]


@pytest.mark.parametrize("variant", MALFORMED)
@pytest.mark.parametrize("method", SHAPES)
def test_malformed_credentials_are_refused(node: Node, method: str, variant: str) -> None:
    metadata = _malformed(node)[variant]
    expect_refused(
        node.channel,
        method,
        request_for(method),
        None,
        grpc.StatusCode.UNAUTHENTICATED,
        call_metadata=metadata,
    )
    assert_intact(node)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
def test_the_auth_scheme_is_taken_in_any_case(node: Node, scheme: str) -> None:
    # RFC 7235: the scheme is case-insensitive (some HTTP/2 proxies and clients lowercase it).
    reader = node.running.token("scheme-reader", ("alpha", Role.READER))
    got = invoke(
        node.channel,
        SHARD + "StatShard",
        request_for(SHARD + "StatShard"),
        call_metadata=(("authorization", f"{scheme} {reader}"),),
    )
    assert got[0].name == SHARDS["alpha"][0]
    # Only the scheme's case: the token still has to match exactly.
    expect_refused(
        node.channel,
        SHARD + "StatShard",
        request_for(SHARD + "StatShard"),
        None,
        grpc.StatusCode.UNAUTHENTICATED,
        call_metadata=(("authorization", f"{scheme} {reader.upper()}"),),
    )


def _wrong_secret(token: str) -> str:
    last = token[-1]
    return token[:-1] + ("A" if last != "A" else "B")


@pytest.mark.parametrize("method", SHAPES)
def test_the_right_token_id_with_a_wrong_secret_is_refused(node: Node, method: str) -> None:
    forged = _wrong_secret(node.tokens["admin"])
    assert forged.split("_")[1] == node.token_id("admin")
    expect_refused(
        node.channel, method, request_for(method), forged, grpc.StatusCode.UNAUTHENTICATED
    )
    assert_intact(node)


def test_a_well_formed_token_with_an_unknown_id_is_refused(node: Node) -> None:
    good = node.tokens["admin"]
    forged = "ts_" + "0123456789ab" + good[15:]
    expect_refused(node.channel, GET, request_for(GET), forged, grpc.StatusCode.UNAUTHENTICATED)


def test_a_revoked_token_is_refused(node: Node) -> None:
    token = node.running.token("revoked-writer", ("*", Role.ADMIN))
    # It works until it is revoked...
    invoke(node.channel, SHARD + "StatShard", request_for(SHARD + "StatShard"), token)
    invoke(
        node.channel,
        ADMIN + "RevokeToken",
        admin_pb2.RevokeTokenRequest(token_id=token.split("_")[1]),
        node.tokens["admin"],
    )
    # ...and nothing works after, even revoking itself or making a new token.
    for method in (*SHAPES, ADMIN + "RevokeToken", SHARD + "StatShard"):
        expect_refused(
            node.channel, method, request_for(method), token, grpc.StatusCode.UNAUTHENTICATED
        )
    assert_intact(node)


def test_an_expired_token_is_refused(node: Node) -> None:
    clock = node.running.clock
    clock.offset = -7200.0  # issued two hours ago, valid for one
    try:
        token = node.running.token("expired-admin", ("*", Role.ADMIN), ttl_s=3600)
    finally:
        clock.offset = 0.0
    for method in SHAPES:
        expect_refused(
            node.channel, method, request_for(method), token, grpc.StatusCode.UNAUTHENTICATED
        )
    # A token of the same lifetime issued now still works.
    fresh = node.running.token("fresh-admin", ("*", Role.ADMIN), ttl_s=3600)
    invoke(node.channel, SHARD + "StatShard", request_for(SHARD + "StatShard"), fresh)
    assert_intact(node)


def test_every_authentication_failure_reads_alike(node: Node) -> None:
    revoked = node.running.token("revoked-reader", ("alpha", Role.READER))
    node.running.tokens.revoke(revoked.split("_")[1], force=True)
    expired = node.running.token("expired-reader", ("alpha", Role.READER), ttl_s=1)
    node.running.clock.offset = 10.0
    try:
        answers = set()
        for token in (None, "garbage", _wrong_secret(node.tokens["admin"]), revoked, expired):
            error = expect_refused(
                node.channel, GET, request_for(GET), token, grpc.StatusCode.UNAUTHENTICATED
            )
            answers.add((error.details(), error_name(error)))  # type: ignore[attr-defined]
    finally:
        node.running.clock.offset = 0.0
    assert len(answers) == 1, answers


# Authorization.

WRITES = [
    PUT,
    SHARD + "DeleteShard",
    PLACEMENT + "Pin",
    PLACEMENT + "Unpin",
    PLACEMENT + "Evict",
    PLACEMENT + "Prefetch",
    DATASET + "UpdateDataset",
    DATASET + "DeleteDataset",
]


@pytest.mark.parametrize("method", WRITES)
def test_a_reader_cannot_write(node: Node, method: str) -> None:
    error = expect_refused(
        node.channel,
        method,
        request_for(method, "alpha"),
        node.tokens["reader_a"],
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert error_name(error) == "PermissionDenied"
    assert_intact(node)


def test_a_reader_reads(node: Node) -> None:
    token = node.tokens["reader_a"]
    header, *frames = invoke(node.channel, GET, request_for(GET, "alpha"), token)
    assert header.WhichOneof("item") == "header"
    assert header.header.info.size == len(node.contents["alpha"])
    assert len(frames) == 4
    assert header.header.seal.data_key == b""  # a plaintext shard has no key to hand out
    listed = invoke(node.channel, SHARD + "ListShards", request_for(SHARD + "ListShards"), token)
    assert [s.name for s in listed[0].shards] == ["a.bin"]


#: Every RPC that names a dataset, for a caller holding no role on it.
NAMED = [
    GET,
    PUT,
    SHARD + "StatShard",
    SHARD + "ListShards",
    SHARD + "DeleteShard",
    SHARD + "OpenLocal",
    SHARD + "GrantDataKey",
    SHARD + "ReportLocalReads",
    DATASET + "GetDataset",
    DATASET + "UpdateDataset",
    DATASET + "DeleteDataset",
    PLACEMENT + "Pin",
    PLACEMENT + "Unpin",
    PLACEMENT + "Evict",
    PLACEMENT + "Prefetch",
    PLACEMENT + "GetTierStats",
    PLACEMENT + "DeclarePlan",
]


def test_every_rpc_that_names_a_dataset_is_checked_for_a_hidden_one() -> None:
    # Each handler checks its own request (the interceptor cannot read requests), so a
    # new RPC must join NAMED: one that forgot its check would otherwise pass unnoticed.
    concealed = {
        method
        for method, rule in METHOD_RULES.items()
        if rule.scope in (Scope.DATASET, Scope.DATASET_OR_VISIBLE)
    }
    # Checked against the plan's dataset: test_access_plans_belong_to_the_principal...
    by_plan = {PLACEMENT + "ReportPosition", PLACEMENT + "ClosePlan"}
    assert concealed - by_plan == set(NAMED)


@pytest.mark.parametrize("method", NAMED)
def test_another_teams_dataset_reads_as_missing(node: Node, method: str) -> None:
    """A writer of alpha touching beta hears exactly what anyone hears for a missing dataset."""
    hidden = expect_refused(
        node.channel,
        method,
        request_for(method, "beta", "b.bin"),
        node.tokens["writer_a"],
        grpc.StatusCode.NOT_FOUND,
    )
    missing = expect_refused(
        node.channel,
        method,
        request_for(method, GHOST, "b.bin"),
        node.tokens["admin"],
        grpc.StatusCode.NOT_FOUND,
    )
    assert error_name(hidden) == error_name(missing) == "DatasetNotFound"
    assert hidden.details().replace("beta", GHOST) == missing.details()  # type: ignore[attr-defined]
    assert_intact(node)


@pytest.mark.parametrize(
    ("who", "name"),
    [
        ("writer_a", "alpha-2"),
        ("writer_a", "beta"),
        ("writer_a", GHOST),
        ("reader_a", "gamma"),
        ("owner_a", "gamma"),
        ("reader_vault", "alpha"),
    ],
)
def test_only_admins_create_datasets(node: Node, who: str, name: str) -> None:
    method = DATASET + "CreateDataset"
    error = expect_refused(
        node.channel,
        method,
        datasets_pb2.CreateDatasetRequest(name=name),
        node.tokens[who],
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert error_name(error) == "PermissionDenied"
    # The same answer whether the name exists or not: creation probes nothing.
    unused = expect_refused(
        node.channel,
        method,
        datasets_pb2.CreateDatasetRequest(name="never-made"),
        node.tokens[who],
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert error.details().replace(name, "never-made") == unused.details()  # type: ignore[attr-defined]
    listed = {n for n, _ in node.running.store.list_datasets()}
    assert listed.isdisjoint({"alpha-2", GHOST, "gamma", "never-made"})
    assert_intact(node)


ADMIN_RPCS = [
    ADMIN + name
    for name in (
        "CreateToken",
        "RevokeToken",
        "ListTokens",
        "RotateKeys",
        "RetireKey",
        "ListKeys",
        "ExportTrace",
    )
]


@pytest.mark.parametrize("who", ["reader_a", "writer_a", "owner_a", "reader_vault", "nobody"])
@pytest.mark.parametrize("method", ADMIN_RPCS)
def test_only_server_admins_call_admin_rpcs(node: Node, method: str, who: str) -> None:
    before = node.running.tokens.list()
    request = request_for(method)
    if method.endswith("RevokeToken"):
        request = admin_pb2.RevokeTokenRequest(token_id=node.token_id("admin"))
    expect_refused(
        node.channel, method, request, node.tokens[who], grpc.StatusCode.PERMISSION_DENIED
    )
    assert node.running.tokens.list() == before
    assert_intact(node)


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("reader_a", {"alpha"}),
        ("writer_a", {"alpha"}),
        ("owner_a", {"alpha"}),
        ("reader_vault", {"vault"}),
        ("nobody", set()),
    ],
)
def test_list_datasets_shows_only_visible_datasets(
    node: Node, who: str, expected: set[str]
) -> None:
    method = DATASET + "ListDatasets"
    (reply,) = invoke(node.channel, method, request_for(method), node.tokens[who])
    assert {d.name for d in reply.datasets} == expected
    (everything,) = invoke(node.channel, method, request_for(method), node.tokens["admin"])
    assert {d.name for d in everything.datasets} >= set(DATASETS)


@pytest.mark.parametrize("who", ["reader_a", "writer_a", "reader_vault", "nobody"])
def test_tier_stats_do_not_leak_other_datasets(node: Node, who: str) -> None:
    method = PLACEMENT + "GetTierStats"
    store = node.running.store
    store.get("beta", "b.bin")  # a read no one but beta's readers may learn of
    request = placement_pb2.GetTierStatsRequest(sizing=True)
    (reply,) = invoke(node.channel, method, request, node.tokens[who])
    visible = {"reader_a": {"alpha"}, "writer_a": {"alpha"}, "reader_vault": {"vault"}}
    assert {d.dataset for d in reply.datasets} == visible.get(who, set())
    # The sizing curve is made of the visible datasets' reads alone.
    reads = [e for e in store.trace_events() if getattr(e, "dataset", "") in visible.get(who, ())]
    assert reply.traced_reads == sum(1 for e in reads if type(e).__name__ == "TracedRead")
    assert len(reply.sizing) == (6 if reply.traced_reads else 0)  # no reads: no curve
    for other in set(DATASETS) - visible.get(who, set()):
        expect_refused(
            node.channel,
            method,
            placement_pb2.GetTierStatsRequest(dataset=other),
            node.tokens[who],
            grpc.StatusCode.NOT_FOUND,
        )


def test_access_plans_belong_to_the_principal_that_declared_them(node: Node) -> None:
    declare, report, close = (
        PLACEMENT + name for name in ("DeclarePlan", "ReportPosition", "ClosePlan")
    )
    reader = node.tokens["reader_a"]
    (declared,) = invoke(node.channel, declare, request_for(declare), reader)
    assert (declared.job, declared.length) == (JOB, 1)
    invoke(node.channel, report, request_for(report), reader)
    # Nobody else knows that job: not another principal with more rights, not an admin.
    for who in ("writer_a", "owner_a", "admin", "reader_vault"):
        for method in (report, close):
            error = expect_refused(
                node.channel,
                method,
                request_for(method),
                node.tokens[who],
                grpc.StatusCode.NOT_FOUND,
            )
            assert error_name(error) == "PlanNotFound"
    # The same job id is another plan for another principal.
    (theirs,) = invoke(node.channel, declare, request_for(declare), node.tokens["owner_a"])
    invoke(node.channel, close, request_for(close), node.tokens["owner_a"])
    assert theirs.job == JOB
    invoke(node.channel, report, request_for(report), reader)  # the reader's plan lives on
    invoke(node.channel, close, request_for(close), reader)
    expect_refused(node.channel, close, request_for(close), reader, grpc.StatusCode.NOT_FOUND)
    # A reader declares plans only where it reads (elsewhere the dataset "does not exist").
    error = expect_refused(
        node.channel,
        declare,
        request_for(declare, "alpha"),
        node.tokens["reader_vault"],
        grpc.StatusCode.NOT_FOUND,
    )
    assert error_name(error) == "DatasetNotFound"
    assert_intact(node)


def test_a_principal_whose_name_holds_a_slash_cannot_take_over_anothers_plan(
    node: Node,
) -> None:
    # Principal names may hold "/", and job ids too: principal "reader-a/x" with job
    # "epoch-0" must not be principal "reader-a" with job "x/epoch-0".
    declare, report, close = (
        PLACEMENT + name for name in ("DeclarePlan", "ReportPosition", "ClosePlan")
    )
    reader = node.tokens["reader_a"]
    nested = node.running.token("reader-a/x", ("vault", Role.READER))
    job = "x/" + JOB
    mine = placement_pb2.DeclarePlanRequest(
        dataset="alpha", explicit=placement_pb2.ShardList(shards=[SHARDS["alpha"][0]]), job=job
    )
    invoke(node.channel, declare, mine, reader)
    theirs = placement_pb2.DeclarePlanRequest(
        dataset="vault", explicit=placement_pb2.ShardList(shards=[SHARDS["vault"][0]]), job=JOB
    )
    invoke(node.channel, declare, theirs, nested)  # its own plan, not a redeclaration of mine
    # Mine still names alpha (were it redeclared onto vault, where this reader has
    # no role, the report would be refused as PlanNotFound), and each closes its own.
    position = placement_pb2.ReportPositionRequest(job=job, position=1)
    invoke(node.channel, report, position, reader)
    invoke(node.channel, close, placement_pb2.ClosePlanRequest(job=job), reader)
    invoke(node.channel, close, placement_pb2.ClosePlanRequest(job=JOB), nested)


def test_only_a_server_admin_exports_the_trace(node: Node) -> None:
    method = ADMIN + "ExportTrace"
    node.running.store.get("vault", "v.bin")
    batches = invoke(node.channel, method, request_for(method), node.tokens["admin"])
    reads = {(e.read.dataset, e.read.shard) for b in batches for e in b.events if e.read.shard}
    assert ("vault", "v.bin") in reads
    # Dataset owners and readers are refused (the trace names every dataset's shards).
    for who in ("owner_a", "reader_vault"):
        request = admin_pb2.ExportTraceRequest(dataset="alpha" if who == "owner_a" else "vault")
        expect_refused(
            node.channel, method, request, node.tokens[who], grpc.StatusCode.PERMISSION_DENIED
        )


@pytest.mark.parametrize(
    ("who", "code"),
    [
        ("reader_a", grpc.StatusCode.NOT_FOUND),
        ("writer_a", grpc.StatusCode.NOT_FOUND),
        ("owner_a", grpc.StatusCode.NOT_FOUND),
        ("nobody", grpc.StatusCode.NOT_FOUND),
        ("no token", grpc.StatusCode.UNAUTHENTICATED),
        ("revoked vault reader", grpc.StatusCode.UNAUTHENTICATED),
    ],
)
def test_an_encrypted_shards_key_reaches_only_its_readers(
    node: Node, who: str, code: grpc.StatusCode
) -> None:
    if who == "no token":
        token = None
    elif who == "revoked vault reader":
        token = node.running.token("revoked-vault", ("vault", Role.READER))
        node.running.tokens.revoke(token.split("_")[1], force=True)
    else:
        token = node.tokens[who]
    for ranged in (
        shards_pb2.GetShardRequest(dataset="vault", shard="v.bin"),
        shards_pb2.GetShardRequest(
            dataset="vault", shard="v.bin", frame_range=common_pb2.FrameRange(first=1, count=1)
        ),
    ):
        expect_refused(node.channel, GET, ranged, token, code)
    # The one reader of vault gets the key in the header; no other answer carries it.
    header, *_ = invoke(node.channel, GET, request_for(GET, "vault"), node.tokens["reader_vault"])
    key = header.header.seal.data_key
    assert len(key) == 32
    assert header.header.info.encrypted
    for method in (SHARD + "StatShard", SHARD + "ListShards", PLACEMENT + "GetTierStats"):
        (reply,) = invoke(
            node.channel, method, request_for(method, "vault"), node.tokens["reader_vault"]
        )
        assert key not in reply.SerializeToString(), method


# Transport: TLS, mutual TLS, plaintext health.


def test_tls_with_a_token_works(node: Node) -> None:
    method = DATASET + "ListDatasets"
    (reply,) = invoke(node.channel, method, request_for(method), node.tokens["reader_a"])
    assert [d.name for d in reply.datasets] == ["alpha"]


def test_a_plaintext_client_cannot_use_the_tls_port(node: Node) -> None:
    channel = node.running.channel(plaintext=True)
    for method in (DATASET + "ListDatasets", GET, PUT):
        expect_refused(
            channel, method, request_for(method), node.tokens["admin"], grpc.StatusCode.UNAVAILABLE
        )
    with pytest.raises(grpc.RpcError) as caught:
        _health_check(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert_intact(node)


def test_a_client_trusting_another_ca_cannot_connect(node: Node, tmp_path: Path) -> None:
    other = ensure_tls_material(tmp_path / "other")
    channel = node.running.channel(ca=other.ca_pem)
    expect_refused(
        channel,
        DATASET + "ListDatasets",
        request_for(DATASET + "ListDatasets"),
        node.tokens["admin"],
        grpc.StatusCode.UNAVAILABLE,
    )


@pytest.fixture(scope="module")
def mtls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("mtls")
    with serving(root, require_client_cert=True, datasets={"alpha": DatasetSettings()}) as running:
        running.store.put("alpha", "a.bin", b"mutual")
        yield running


def test_mtls_refuses_a_client_without_a_certificate(mtls_node: RunningServer) -> None:
    token = mtls_node.token("svc-a", ("alpha", Role.READER))
    channel = mtls_node.channel()
    for method in (DATASET + "ListDatasets", GET):
        expect_refused(channel, method, request_for(method), token, grpc.StatusCode.UNAVAILABLE)


def test_mtls_accepts_a_certificate_from_its_ca_with_a_token(
    mtls_node: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert mtls_node.tls is not None
    token = mtls_node.token("svc-a", ("alpha", Role.READER))
    channel = mtls_node.channel(client_cert=issue_client_certificate(mtls_node.tls, "svc:trainer"))
    with caplog.at_level(logging.INFO, logger="tierstore.audit"):
        header, *frames = invoke(channel, GET, request_for(GET, "alpha", "a.bin"), token)
    assert header.header.info.size == len(b"mutual")
    assert len(frames) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "tierstore.audit"]
    assert any(f"method={GET}" in line and "service=svc:trainer" in line for line in lines), lines
    # Which shard, quoted (a name may hold spaces and "="): "who read what" needs it.
    read = [r for r in caplog.records if r.name == "tierstore.audit" and GET in r.getMessage()]
    assert any('dataset=alpha shard="a.bin" principal=svc-a' in r.getMessage() for r in read)
    assert any(getattr(r, "fields", {}).get("shard") == '"a.bin"' for r in read)


def test_mtls_certificate_alone_grants_nothing(mtls_node: RunningServer) -> None:
    assert mtls_node.tls is not None
    channel = mtls_node.channel(client_cert=issue_client_certificate(mtls_node.tls, "admin"))
    for method in (DATASET + "ListDatasets", GET, ADMIN + "CreateToken"):
        expect_refused(channel, method, request_for(method), None, grpc.StatusCode.UNAUTHENTICATED)


def test_mtls_refuses_a_certificate_from_another_ca(
    mtls_node: RunningServer, tmp_path: Path
) -> None:
    other = ensure_tls_material(tmp_path / "other")
    token = mtls_node.token("svc-a", ("alpha", Role.READER))
    channel = mtls_node.channel(client_cert=issue_client_certificate(other, "svc:trainer"))
    for method in (DATASET + "ListDatasets", GET):
        expect_refused(channel, method, request_for(method), token, grpc.StatusCode.UNAVAILABLE)


def _health_check(channel: grpc.Channel, service: str = "", token: str | None = None) -> int:
    check = channel.unary_unary(
        HEALTH_CHECK,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    reply = check(health_pb2.HealthCheckRequest(service=service), timeout=10, metadata=metadata)
    return int(reply.status)


def test_the_health_port_answers_without_credentials(node: Node) -> None:
    channel = grpc.insecure_channel(node.running.health_address)
    try:
        for service in ("", "tierstore.v1.ShardService", "tierstore.v1.DatasetService"):
            assert _health_check(channel, service) == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()


#: What the plaintext health port must not serve, credentials or not.
NOT_ON_HEALTH_PORT = [
    DATASET + "ListDatasets",
    DATASET + "DeleteDataset",
    GET,
    PUT,
    SHARD + "StatShard",
    ADMIN + "ListTokens",
    REFLECTION,
]


@pytest.mark.parametrize("method", NOT_ON_HEALTH_PORT)
def test_the_health_port_serves_nothing_else(node: Node, method: str) -> None:
    channel = node.running.channel(address=node.running.health_address, plaintext=True)
    for token in (None, node.tokens["admin"]):
        if method == REFLECTION:
            received: list[Any] = []
            with pytest.raises(grpc.RpcError) as caught:
                _reflect(channel, token, received)
            assert received == []
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
        else:
            expect_refused(
                channel, method, request_for(method), token, grpc.StatusCode.UNIMPLEMENTED
            )
    assert_intact(node)


def test_health_on_the_api_port_needs_a_token(node: Node) -> None:
    # Any valid token will do, even one with no role; probes without one use the
    # plaintext health port.
    with pytest.raises(grpc.RpcError) as caught:
        _health_check(node.channel)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    token = node.running.token("svc:no-roles")
    assert _health_check(node.channel, token=token) == health_pb2.HealthCheckResponse.SERVING
    assert (
        _health_check(node.channel, "tierstore.v1.PlacementService", token)
        == health_pb2.HealthCheckResponse.SERVING
    )


def _reflect(channel: grpc.Channel, token: str | None, received: list[Any]) -> list[str]:
    call = channel.stream_stream(
        REFLECTION,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    requests = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    for reply in call(requests, timeout=10, metadata=metadata):
        received.append(reply)
    return [s.name for r in received for s in r.list_services_response.service]


def test_reflection_needs_a_token(node: Node) -> None:
    for token in (None, "garbage", _wrong_secret(node.tokens["reader_a"])):
        received: list[Any] = []
        with pytest.raises(grpc.RpcError) as caught:
            _reflect(node.channel, token, received)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        assert received == []
    services = _reflect(node.channel, node.tokens["reader_a"], [])
    assert "tierstore.v1.ShardService" in services


# Audit.


def reader_of_alpha(node: Node, principal: str) -> admin_pb2.CreateTokenResponse:
    """A token made through the API for ``principal``, a reader of dataset alpha."""
    (made,) = invoke(
        node.channel,
        ADMIN + "CreateToken",
        admin_pb2.CreateTokenRequest(
            principal=principal,
            grants=[admin_pb2.Grant(dataset="alpha", role=admin_pb2.ROLE_READER)],
        ),
        node.tokens["admin"],
    )
    return cast(admin_pb2.CreateTokenResponse, made)


def test_the_audit_log_says_what_an_admin_call_changed(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    # The trail said who called RevokeToken, CreateToken or UpdateDataset, and nothing
    # of which token, which grants or which setting.
    admin = node.tokens["admin"]
    with caplog.at_level(logging.INFO, "tierstore.audit"):
        made = reader_of_alpha(node, "changes")
        invoke(
            node.channel,
            ADMIN + "RevokeToken",
            admin_pb2.RevokeTokenRequest(token_id=made.token_id),
            admin,
        )
        invoke(
            node.channel,
            DATASET + "UpdateDataset",
            datasets_pb2.UpdateDatasetRequest(name="beta", hot_quota_bytes=1 << 30),
            admin,
        )
    lines = {
        record.getMessage().split()[1]: record.getMessage()
        for record in caplog.records
        if record.name == "tierstore.audit"
    }
    created = lines[f"method={ADMIN}CreateToken"]
    assert f"token {made.token_id} of 'changes' with alpha=reader" in created
    assert made.token not in created and made.token[16:] not in created
    assert f"revoked token {made.token_id} of 'changes'" in lines[f"method={ADMIN}RevokeToken"]
    assert 'change="hot_quota_bytes=1073741824"' in lines[f"method={DATASET}UpdateDataset"]


def test_the_audit_log_records_denials_and_never_a_token(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    secrets_seen: list[str] = []
    # The module's earlier refusals of these kinds are forgotten: each kind is audited
    # once a window (tierstore.server.refusallog), and this test reads each one's line.
    node.running.server.auth.refusals = RefusalLog()
    with caplog.at_level(logging.DEBUG):
        # A token made through the API appears in its response only.
        made = reader_of_alpha(node, "audited")
        secrets_seen.append(made.token)
        wrong = _wrong_secret(node.tokens["writer_a"])
        revoked = node.running.token("revoked-audit", ("alpha", Role.READER))
        node.running.tokens.revoke(revoked.split("_")[1], force=True)
        secrets_seen += [wrong, revoked, *node.tokens.values()]
        invoke(node.channel, GET, request_for(GET), made.token)
        for token in (None, "garbage-token-value", wrong, revoked):
            expect_refused(
                node.channel, GET, request_for(GET), token, grpc.StatusCode.UNAUTHENTICATED
            )
        expect_refused(
            node.channel,
            SHARD + "DeleteShard",
            request_for(SHARD + "DeleteShard"),
            node.tokens["reader_a"],
            grpc.StatusCode.PERMISSION_DENIED,
        )
        expect_refused(
            node.channel,
            GET,
            request_for(GET, "beta"),
            node.tokens["writer_a"],
            grpc.StatusCode.NOT_FOUND,
        )
    everything = "\n".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )
    for token in secrets_seen:
        assert token not in everything
        secret = token[len("ts_0123456789ab_") :]  # the secret may itself hold "_"
        assert len(secret) == 43
        assert secret not in everything  # not even the secret part
    assert "garbage-token-value" not in everything
    audit = [r.getMessage() for r in caplog.records if r.name == "tierstore.audit"]
    denied = [line for line in audit if line.startswith("denied ") and f"method={GET}" in line]
    reasons = {line.split("reason=")[1].split()[0] for line in denied if "reason=" in line}
    # Every refusal says why: no header at all once left the reason empty.
    assert {"no-token", "mismatch", "revoked", "malformed"} <= reasons, denied
    assert len(denied) >= 4
    # A refused token of the right shape is named by its (public) id, so an operator can
    # see which revoked or expired token is still in use; a malformed one is not echoed.
    revoked_id, wrong_id = revoked.split("_")[1], wrong.split("_")[1]
    assert any("reason=revoked" in line and f"token={revoked_id}" in line for line in denied)
    assert any("reason=mismatch" in line and f"token={wrong_id}" in line for line in denied)
    assert all("token= " in line for line in denied if "reason=malformed" in line), denied
    made_id = made.token_id
    assert any(f"token={made_id}" in line and "outcome=OK" in line for line in audit), audit
    # A call's line names the dataset it was about, allowed or not: a probe of a
    # dataset the caller may not see reads as such, not as a typo.
    assert any(
        "dataset=alpha" in line
        and "principal=reader-a" in line
        and "outcome=PERMISSION_DENIED" in line
        for line in audit
    ), audit
    assert any(
        "dataset=beta" in line and "principal=writer-a" in line and "outcome=NOT_FOUND" in line
        for line in audit
    ), audit


# Plaintext serving is for loopback only.


@pytest.mark.parametrize(
    "listen",
    ["0.0.0.0:7443", "[::]:7443", ":7443", "10.1.2.3:7443", "example.com:7443", "localhost.evil:1"],
)
def test_insecure_is_refused_on_a_non_loopback_address(listen: str) -> None:
    with pytest.raises(InvalidArgument, match="loopback"):
        ServerSettings(listen=listen, insecure=True)


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "localhost:0", "[::1]:0"])
def test_insecure_is_allowed_on_loopback(listen: str) -> None:
    assert ServerSettings(listen=listen, insecure=True).insecure


def test_mutual_tls_is_refused_with_plaintext() -> None:
    # It was taken: the node served plaintext, asking no caller for a certificate.
    with pytest.raises(InvalidArgument, match="--require-client-cert needs TLS"):
        ServerSettings(listen="127.0.0.1:0", insecure=True, require_client_cert=True)


def test_secure_settings_need_tls_material() -> None:
    with pytest.raises(InvalidArgument):
        ServerSettings(listen="0.0.0.0:7443")


def test_the_cli_refuses_insecure_on_a_non_loopback_address(
    tmp_path: Path, seaweedfs: Any, s3_bucket: str
) -> None:
    s3 = seaweedfs.s3_settings(s3_bucket, prefix="insecure-cli/")
    command = Path(sys.executable).with_name("tierstore")
    result = subprocess.run(
        [
            str(command),
            "serve",
            "--insecure",
            "--listen",
            "0.0.0.0:0",
            "--health-listen",
            "",
            "--data-dir",
            str(tmp_path / "data"),
            "--s3-endpoint",
            s3.endpoint_url,
            "--bucket",
            s3.bucket,
            "--prefix",
            s3.prefix,
        ],
        env={
            "PATH": "/usr/bin:/bin",
            "TIERSTORE_S3_ACCESS_KEY": s3.access_key_id,
            "TIERSTORE_S3_SECRET_KEY": s3.secret_access_key,
            "GRPC_VERBOSITY": "ERROR",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0, result.stdout
    assert "loopback" in result.stderr, result.stderr
    assert "serving on" not in result.stdout
