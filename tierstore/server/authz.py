"""Who may call what: principals, their roles per dataset, and one table of RPC rules.

A :class:`Principal` is an authenticated caller — by bearer token or by a mutual-TLS
client certificate — holding :class:`~tierstore.types.Grant` s: a role (reader, writer,
admin; each implies the ones below) on one dataset or on ``"*"`` (every dataset).

:data:`METHOD_RULES` maps every RPC's full method name to the :class:`Rule` it needs.
:func:`authorize` denies by default: a method missing from the table is refused, so a new
RPC is unusable until someone decides who may call it (a test checks that every RPC of
the generated service descriptors has a rule).

Callers without any role on a dataset cannot tell it from one that does not exist:
:func:`authorize` raises :class:`~tierstore.errors.DatasetNotFound` for them (the engine's
own message), and listings are filtered with :func:`visible`. A caller that can see a
dataset but lacks the role gets :class:`~tierstore.errors.PermissionDenied`.

Everything here is pure and immutable: thread-safe, no I/O.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from tierstore.errors import DatasetNotFound, InvalidArgument, PermissionDenied
from tierstore.server.rpc import note_dataset
from tierstore.types import ALL_DATASETS, Grant, Role

__all__ = [
    "ALL_DATASETS",
    "METHOD_RULES",
    "Grant",
    "Principal",
    "Role",
    "Rule",
    "Scope",
    "authorize",
    "check_principal_name",
    "reauthorizer",
    "visible",
]

_PRINCIPAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:/+-]{0,127}")


def check_principal_name(name: object) -> str:
    """Return ``name`` if it is a valid principal name, else raise :class:`InvalidArgument`.

    1-128 characters of ASCII letters, digits and ``. _ @ : / + -``, starting with a letter
    or digit (so ``alice``, ``svc:trainer``, ``bob@example.com`` all work).
    """
    if not isinstance(name, str) or not _PRINCIPAL_RE.fullmatch(name):
        shown = name[:80] if isinstance(name, str) else type(name).__name__
        raise InvalidArgument(
            f"invalid principal name {shown!r}: use 1-128 characters of letters, digits and "
            "'._@:/+-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller and the roles it holds."""

    name: str
    grants: tuple[Grant, ...]
    #: how the caller proved who it is.
    via: Literal["token", "certificate"]
    #: the (public) id of the token that authenticated it, for audit logs; "" for certificates.
    token_id: str = ""
    #: when the credential runs out (seconds since the epoch); 0: never. Grants that
    #: outlive the call (local reads) end no later than this.
    expires_at: float = 0.0

    def role_on(self, dataset: str) -> Role | None:
        """The strongest role held on ``dataset`` (a ``"*"`` grant counts), or ``None``.

        ``role_on("*")`` counts only ``"*"`` grants: the role held on every dataset.
        """
        best: Role | None = None
        for grant in self.grants:
            if grant.dataset in (dataset, ALL_DATASETS) and (
                best is None or grant.role.rank > best.rank
            ):
                best = grant.role
        return best


class Scope(enum.Enum):
    """Where a rule looks for the role it needs."""

    #: any authenticated caller; the server filters what it returns with :func:`visible`.
    AUTHENTICATED = "authenticated"
    #: the role on the dataset the request names.
    DATASET = "dataset"
    #: like DATASET when the request names a dataset, else like AUTHENTICATED.
    DATASET_OR_VISIBLE = "dataset-or-visible"
    #: the role on every dataset (a ``"*"`` grant): server-wide operations.
    GLOBAL = "global"


@dataclass(frozen=True, slots=True)
class Rule:
    """What one RPC needs."""

    scope: Scope
    #: the least role needed (unused for AUTHENTICATED).
    role: Role | None = None


_READ = Rule(Scope.DATASET, Role.READER)
_WRITE = Rule(Scope.DATASET, Role.WRITER)
_ADMIN = Rule(Scope.DATASET, Role.ADMIN)
_SERVER_ADMIN = Rule(Scope.GLOBAL, Role.ADMIN)
_ANY = Rule(Scope.AUTHENTICATED)

_RULES: dict[str, Rule] = {
    # Creating a dataset needs admin on "*": a grant names a dataset that exists (and
    # ends with it), so no grant on the dataset-to-be can be held. Said so: the refusal
    # named "the admin role" on the new name, which no one could be given.
    "/tierstore.v1.DatasetService/CreateDataset": _SERVER_ADMIN,
    "/tierstore.v1.DatasetService/GetDataset": _READ,
    "/tierstore.v1.DatasetService/ListDatasets": _ANY,
    "/tierstore.v1.DatasetService/UpdateDataset": _ADMIN,
    "/tierstore.v1.DatasetService/DeleteDataset": _ADMIN,
    "/tierstore.v1.ShardService/PutShard": _WRITE,
    "/tierstore.v1.ShardService/GetShard": _READ,
    "/tierstore.v1.ShardService/StatShard": _READ,
    "/tierstore.v1.ShardService/ListShards": _READ,
    "/tierstore.v1.ShardService/DeleteShard": _WRITE,
    # Local reads hand out only what GetShard would (the place of the hot tier, a data
    # key of a shard the caller may read) and count reads the caller made.
    "/tierstore.v1.ShardService/OpenLocal": _READ,
    "/tierstore.v1.ShardService/GrantDataKey": _READ,
    "/tierstore.v1.ShardService/ReportLocalReads": _READ,
    # Placement changes spend the shared hot tier (and can push other tenants' shards out),
    # so they are writes even though they change no bytes.
    "/tierstore.v1.PlacementService/Pin": _WRITE,
    "/tierstore.v1.PlacementService/Unpin": _WRITE,
    "/tierstore.v1.PlacementService/Prefetch": _WRITE,
    "/tierstore.v1.PlacementService/Evict": _WRITE,
    "/tierstore.v1.PlacementService/GetTierStats": Rule(Scope.DATASET_OR_VISIBLE, Role.READER),
    # A plan only steers placement for what the caller may read anyway. Reporting and
    # closing name the plan's dataset (the server looks it up; plans are per principal).
    "/tierstore.v1.PlacementService/DeclarePlan": _READ,
    "/tierstore.v1.PlacementService/ReportPosition": _READ,
    "/tierstore.v1.PlacementService/ClosePlan": _READ,
    "/tierstore.v1.AdminService/CreateToken": _SERVER_ADMIN,
    "/tierstore.v1.AdminService/RevokeToken": _SERVER_ADMIN,
    "/tierstore.v1.AdminService/ListTokens": _SERVER_ADMIN,
    "/tierstore.v1.AdminService/RotateKeys": _SERVER_ADMIN,
    "/tierstore.v1.AdminService/RetireKey": _SERVER_ADMIN,
    "/tierstore.v1.AdminService/ListKeys": _SERVER_ADMIN,
    # Traces name every dataset's shards and every job: server admins only.
    "/tierstore.v1.AdminService/ExportTrace": _SERVER_ADMIN,
    # On the API port health needs a credential too: grpcio reads a unary request on a
    # worker thread, so any method open to everyone would let anyone hold the workers.
    # Probes without credentials use the plaintext health port.
    "/grpc.health.v1.Health/Check": _ANY,
    "/grpc.health.v1.Health/Watch": _ANY,
    "/grpc.health.v1.Health/List": _ANY,
    # Reflection describes the API, not the data; it still needs a valid credential.
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _ANY,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": _ANY,
}

#: Every RPC the server may serve, by full method name (``/package.Service/Method``).
METHOD_RULES: Mapping[str, Rule] = MappingProxyType(_RULES)


def visible(principal: Principal, dataset: str) -> bool:
    """Whether ``principal`` may know that ``dataset`` exists (it holds any role on it).

    Listings keep only visible datasets; for the rest the server answers as if they did
    not exist.
    """
    return principal.role_on(dataset) is not None


def authorize(principal: Principal, method: str, dataset: str | None) -> None:
    """Allow ``principal`` to call ``method`` on ``dataset``, or raise.

    ``method`` is the full method name (``/tierstore.v1.ShardService/GetShard``);
    ``dataset`` is the dataset the request names (``None`` or ``""`` when it names none).

    Raises :class:`~tierstore.errors.PermissionDenied` when the method has no rule (deny
    by default), when a dataset-scoped rule gets no dataset, or when the role held is too
    weak; :class:`~tierstore.errors.DatasetNotFound` when the caller holds no role at all
    on the named dataset (so it cannot probe which datasets exist).
    """
    if dataset:
        note_dataset(dataset)  # for the call's audit line, allowed or not
    rule = METHOD_RULES.get(method)
    if rule is None:
        raise PermissionDenied(f"{method or 'this method'} is not served")
    if rule.scope is Scope.AUTHENTICATED:
        return
    # Every rule past this point names a role; a rule table without one is a bug here.
    assert rule.role is not None, method
    if rule.scope is Scope.GLOBAL:
        held = principal.role_on(ALL_DATASETS)
        if held is None or not held.implies(rule.role):
            raise PermissionDenied(
                f"principal {principal.name!r} may not call {method}: "
                f"it needs the {rule.role} role on every dataset"
            )
        return
    if not dataset:
        if rule.scope is Scope.DATASET_OR_VISIBLE:
            return
        raise PermissionDenied(f"{method} must name a dataset")
    held = principal.role_on(dataset)
    if held is None:
        # The same message as the engine's, so "hidden" and "absent" read alike.
        raise DatasetNotFound(f"no dataset {dataset!r}")
    if not held.implies(rule.role):
        raise PermissionDenied(
            f"principal {principal.name!r} may not call {method} on dataset {dataset!r}: "
            f"it needs the {rule.role} role"
        )


def reauthorizer(
    principal: Principal,
    now: Callable[[Principal], Principal],
    method: str,
    dataset: str | None,
) -> Callable[[], None]:
    """The check a long call (a put or read stream) makes again at each message it takes
    or sends: it raises what :func:`authorize` would for ``method`` on ``dataset`` if the
    call started then, with ``principal`` as ``now`` gives it (its credential as it
    stands then: ``TokenStore.principal_now``).

    A stream may last hours (a reader taking a frame a minute): meanwhile its token may
    be revoked or run out (``now`` raises Unauthenticated), or its dataset deleted,
    taking the grant with it (DatasetNotFound, as for a dataset never seen). Calling the
    check before each message ends such a stream at its next one rather than keep its
    worker to the end. It is a lookup in memory, no I/O, cheap enough for every message.
    """

    def check() -> None:
        authorize(now(principal), method, dataset)

    return check
