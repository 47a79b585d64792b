"""Roles, the RPC rule table and deny-by-default (tierstore/server/authz.py)."""

from __future__ import annotations

import pytest

from tierstore.errors import DatasetNotFound, InvalidArgument, PermissionDenied
from tierstore.server.authz import (
    METHOD_RULES,
    Principal,
    Scope,
    authorize,
    check_principal_name,
    visible,
)
from tierstore.types import ALL_DATASETS, Grant, Role
from tierstore.v1 import admin_pb2, datasets_pb2, placement_pb2, shards_pb2

GET = "/tierstore.v1.ShardService/GetShard"
PUT = "/tierstore.v1.ShardService/PutShard"
CREATE = "/tierstore.v1.DatasetService/CreateDataset"
DELETE_DATASET = "/tierstore.v1.DatasetService/DeleteDataset"
LIST_DATASETS = "/tierstore.v1.DatasetService/ListDatasets"
STATS = "/tierstore.v1.PlacementService/GetTierStats"
CREATE_TOKEN = "/tierstore.v1.AdminService/CreateToken"


def principal(*grants: tuple[str, Role]) -> Principal:
    return Principal("alice", tuple(Grant(d, r) for d, r in grants), via="token", token_id="t")


def generated_methods() -> list[str]:
    return [
        f"/{service.full_name}/{method.name}"
        for module in (admin_pb2, datasets_pb2, placement_pb2, shards_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def test_every_generated_rpc_has_a_rule() -> None:
    methods = generated_methods()
    assert len(methods) >= 19
    missing = [m for m in methods if m not in METHOD_RULES]
    assert not missing, f"RPCs without an authorization rule: {missing}"


def test_rules_name_a_role_where_they_need_one() -> None:
    for method, rule in METHOD_RULES.items():
        if rule.scope in (Scope.DATASET, Scope.DATASET_OR_VISIBLE, Scope.GLOBAL):
            assert rule.role is not None, method


def test_every_method_on_the_api_port_needs_a_credential() -> None:
    # Health included: a method open to everyone would let anyone hold the workers
    # (grpcio reads a unary request on one). Probes use the plaintext health port.
    assert {rule.scope for rule in METHOD_RULES.values()} <= {
        Scope.AUTHENTICATED,
        Scope.DATASET,
        Scope.DATASET_OR_VISIBLE,
        Scope.GLOBAL,
    }
    assert METHOD_RULES["/grpc.health.v1.Health/Check"].scope is Scope.AUTHENTICATED


def test_unknown_method_is_denied_even_for_a_global_admin() -> None:
    root = principal((ALL_DATASETS, Role.ADMIN))
    for method in ("/tierstore.v1.ShardService/Nope", "", "/x/y", GET.lower()):
        with pytest.raises(PermissionDenied):
            authorize(root, method, "ds")


@pytest.mark.parametrize(
    ("held", "needed", "allowed"),
    [
        (Role.READER, Role.READER, True),
        (Role.READER, Role.WRITER, False),
        (Role.WRITER, Role.READER, True),
        (Role.WRITER, Role.WRITER, True),
        (Role.WRITER, Role.ADMIN, False),
        (Role.ADMIN, Role.READER, True),
        (Role.ADMIN, Role.WRITER, True),
        (Role.ADMIN, Role.ADMIN, True),
    ],
)
def test_role_implication(held: Role, needed: Role, allowed: bool) -> None:
    assert held.implies(needed) is allowed


def test_role_on_takes_the_strongest_grant_and_counts_star() -> None:
    p = principal(("a", Role.READER), (ALL_DATASETS, Role.WRITER), ("b", Role.ADMIN))
    assert p.role_on("a") is Role.WRITER
    assert p.role_on("b") is Role.ADMIN
    assert p.role_on("zzz") is Role.WRITER
    assert p.role_on(ALL_DATASETS) is Role.WRITER
    assert principal(("a", Role.ADMIN)).role_on(ALL_DATASETS) is None
    assert principal().role_on("a") is None


def test_reader_reads_but_does_not_write() -> None:
    p = principal(("ds", Role.READER))
    authorize(p, GET, "ds")
    with pytest.raises(PermissionDenied, match="writer"):
        authorize(p, PUT, "ds")


def test_writer_writes_but_does_not_delete_the_dataset() -> None:
    p = principal(("ds", Role.WRITER))
    authorize(p, PUT, "ds")
    authorize(p, GET, "ds")
    authorize(p, "/tierstore.v1.PlacementService/Evict", "ds")
    with pytest.raises(PermissionDenied):
        authorize(p, DELETE_DATASET, "ds")


def test_a_dataset_without_any_role_looks_absent() -> None:
    p = principal(("mine", Role.ADMIN))
    for method in (GET, PUT, DELETE_DATASET, STATS):
        with pytest.raises(DatasetNotFound) as caught:
            authorize(p, method, "theirs")
        assert str(caught.value) == "no dataset 'theirs'"  # the engine's own wording
    assert visible(p, "mine")
    assert not visible(p, "theirs")


def test_create_dataset_needs_admin_on_star() -> None:
    # A grant names a dataset that exists and ends with it, so none on the
    # dataset-to-be can be held: the refusal said "the admin role" on the new name.
    authorize(principal((ALL_DATASETS, Role.ADMIN)), CREATE, "new")
    for grant in (("new", Role.ADMIN), ("new", Role.WRITER), ("other", Role.ADMIN)):
        # Not hidden: the dataset need not exist, and refusing reveals nothing.
        with pytest.raises(PermissionDenied, match="admin role on every dataset"):
            authorize(principal(grant), CREATE, "new")


def test_dataset_rules_need_a_dataset() -> None:
    with pytest.raises(PermissionDenied):
        authorize(principal((ALL_DATASETS, Role.ADMIN)), GET, None)
    with pytest.raises(PermissionDenied):
        authorize(principal((ALL_DATASETS, Role.ADMIN)), GET, "")


def test_listings_need_only_authentication() -> None:
    authorize(principal(), LIST_DATASETS, None)
    authorize(principal(), STATS, None)
    authorize(principal(("ds", Role.READER)), STATS, "ds")


def test_admin_service_needs_admin_on_every_dataset() -> None:
    authorize(principal((ALL_DATASETS, Role.ADMIN)), CREATE_TOKEN, None)
    for grants in [(("ds", Role.ADMIN),), ((ALL_DATASETS, Role.WRITER),), ()]:
        with pytest.raises(PermissionDenied):
            authorize(principal(*grants), CREATE_TOKEN, None)
        # Naming a dataset the caller administers does not help.
        with pytest.raises(PermissionDenied):
            authorize(principal(*grants), CREATE_TOKEN, "ds")


def test_principal_names() -> None:
    for good in ("admin", "svc:trainer", "bob@example.com", "a", "x" * 128):
        assert check_principal_name(good) == good
    for bad in ("", " alice", "alice bob", "-x", "x" * 129, "ä", None, "a\n"):
        with pytest.raises(InvalidArgument):
            check_principal_name(bad)
