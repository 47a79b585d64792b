"""AdminService: tokens, master-key rotation, retirement and listing, and trace export
(admin on every dataset)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol

import grpc

from tierstore.engine.store import Store
from tierstore.errors import DatasetNotFound, InvalidArgument, KeyRotationRefused
from tierstore.naming import validate_dataset_name
from tierstore.server.authz import authorize, reauthorizer
from tierstore.server.requestchecks import MAX_TOKEN_GRANTS
from tierstore.server.rpc import caller, handler, note_change, refuse_if_caller_gone, stream_handler
from tierstore.server.tokens import TokenInfo, TokenStore
from tierstore.v1 import admin_pb2, admin_pb2_grpc
from tierstore.wire.grants import grant_from_pb, grant_to_pb
from tierstore.wire.trace import trace_events_to_pb

__all__ = ["AdminServicer", "NodeKeyAdmin"]

_SERVICE = "/tierstore.v1.AdminService/"


def _token_info(info: TokenInfo) -> admin_pb2.TokenInfo:
    return admin_pb2.TokenInfo(
        token_id=info.token_id,
        principal=info.principal,
        grants=[grant_to_pb(g) for g in info.grants],
        created_at=info.created_at,
        expires_at=info.expires_at,
        revoked=info.revoked,
    )


class NodeKeyAdmin(Protocol):
    """Where a node's master keys live, for rotation and retirement: the process that
    owns them supplies it (``tierstore serve``: the key file; a KMS could)."""

    def __call__(self) -> int:
        """Make a new master key current and rewrap every data key; how many were."""
        ...  # pragma: no cover - a protocol

    def retire(self, key_id: str) -> tuple[str, ...]:
        """Drop master key ``key_id``, once nothing needs it; the ids of the keys left.
        Raises KeyRotationRefused."""
        ...  # pragma: no cover - a protocol

    def key_ids(self) -> tuple[str, ...]:
        """The ids of the master keys the node holds (never the keys)."""
        ...  # pragma: no cover - a protocol


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Token management, key rotation and retirement."""

    def __init__(self, store: Store, tokens: TokenStore, keys: NodeKeyAdmin | None = None) -> None:
        self._store = store
        self._tokens = tokens
        # Without where keys live, a rotation rewraps to the current key, and no key
        # can be retired.
        self._keys = keys
        self._rotation = threading.Lock()

    def _check(self, method: str) -> None:
        authorize(caller(), _SERVICE + method, None)

    @handler
    def CreateToken(
        self, request: admin_pb2.CreateTokenRequest, context: grpc.ServicerContext
    ) -> admin_pb2.CreateTokenResponse:
        self._check("CreateToken")
        if len(request.grants) > MAX_TOKEN_GRANTS:
            raise InvalidArgument(f"a token gives at most {MAX_TOKEN_GRANTS:,} grants")
        grants = [grant_from_pb(g) for g in request.grants]
        info, token = self._tokens.create(
            request.principal, grants, request.ttl_s, require_dataset=self._require_dataset
        )
        given = ",".join(f"{grant.dataset}={grant.role.value}" for grant in info.grants)
        note_change(
            f"created token {info.token_id} of {info.principal!r} with {given or 'no grant'}"
        )
        return admin_pb2.CreateTokenResponse(token_id=info.token_id, token=token)

    def _require_dataset(self, name: str) -> int:
        incarnation = self._store.dataset_incarnation(name)
        if incarnation is None:
            raise DatasetNotFound(
                f"no dataset {name!r} to grant a role on: create it first "
                "(grants end with their dataset, and none starts before it)"
            )
        return incarnation

    @handler
    def RevokeToken(
        self, request: admin_pb2.RevokeTokenRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RevokeTokenResponse:
        self._check("RevokeToken")
        revoked = self._tokens.revoke(request.token_id, force=request.force)
        note_change(f"revoked token {revoked.token_id} of {revoked.principal!r}")
        # The work done on the token's behalf stops too: its calls are refused from now
        # on, its streams end at their next message, and the access plans it keeps
        # (steering the prefetcher for up to their TTL past its last report) end here.
        self._store.close_plans_kept_by(revoked.token_id)
        return admin_pb2.RevokeTokenResponse()

    @handler
    def ListTokens(
        self, request: admin_pb2.ListTokensRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListTokensResponse:
        self._check("ListTokens")
        return admin_pb2.ListTokensResponse(tokens=[_token_info(i) for i in self._tokens.list()])

    @handler
    def RotateKeys(
        self, request: admin_pb2.RotateKeysRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RotateKeysResponse:
        self._check("RotateKeys")
        # Held until the key id is read: the next rotation would make another current.
        with self._rotation:
            self._check("RotateKeys")  # again, after the wait: a token revoked meanwhile
            # A caller who gave up while a long rotation went on is told nothing, and
            # may rotate again: this one would make one more key nobody asked for.
            refuse_if_caller_gone(context, "the key rotation")
            rewrapped = self._keys() if self._keys is not None else self._store.rotate_master_key()
            key_id = self._store.master_key_id
        note_change(f"rotated the master key to {key_id!r}")
        return admin_pb2.RotateKeysResponse(rewrapped=rewrapped, key_id=key_id)

    @handler
    def RetireKey(
        self, request: admin_pb2.RetireKeyRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RetireKeyResponse:
        self._check("RetireKey")
        if not request.key_id:
            raise InvalidArgument("name the master key to retire (key_id is empty)")
        if self._keys is None:
            raise KeyRotationRefused("this node's master keys are not in a file it can rewrite")
        with self._rotation:
            self._check("RetireKey")  # again, after the wait: a token revoked meanwhile
            refuse_if_caller_gone(context, f"the retirement of key {request.key_id!r:.40}")
            left = self._keys.retire(request.key_id)
            current = self._store.master_key_id
        note_change(f"retired master key {request.key_id!r}")
        return admin_pb2.RetireKeyResponse(key_ids=left, current=current)

    @handler
    def ListKeys(
        self, request: admin_pb2.ListKeysRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListKeysResponse:
        self._check("ListKeys")
        # Not under the rotation lock: an admin may watch a long rotation go.
        current = self._store.master_key_id
        held = set(self._keys.key_ids()) if self._keys is not None else set()
        held |= {current} - {""}
        use = self._store.master_key_use()
        return admin_pb2.ListKeysResponse(
            keys=[
                admin_pb2.MasterKeyInfo(
                    key_id=key_id,
                    current=key_id == current,
                    held=key_id in held,
                    shards=use.get(key_id, 0),
                )
                for key_id in sorted(held | set(use))
            ]
        )

    @stream_handler
    def ExportTrace(
        self, request: admin_pb2.ExportTraceRequest, context: grpc.ServicerContext
    ) -> Iterator[admin_pb2.ExportTraceResponse]:
        self._check("ExportTrace")
        # Checked again at each batch: a slow reader keeps the stream open for long.
        still_allowed = reauthorizer(
            caller(), self._tokens.principal_now, _SERVICE + "ExportTrace", None
        )
        if request.dataset:
            validate_dataset_name(request.dataset)
        for batch in trace_events_to_pb(self._store.trace_events(request.dataset or None)):
            if not context.is_active():
                return  # the client went away
            still_allowed()
            yield batch
