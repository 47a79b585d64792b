"""The client's administration calls: datasets, tokens, master keys and the trace
(:class:`AdminCalls`, a part of :class:`~tierstore.client.client.Client`)."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from tierstore.arrowio import schema_of_message
from tierstore.client.arguments import (
    backlog_quota,
    checked_text,
    durability_named,
    grant_list,
    hot_quota,
    token_ttl,
)
from tierstore.client.core import ClientCore
from tierstore.client.failures import closed_channel_is_unavailable, mapped_responses
from tierstore.errors import AlreadyExists, DatasetNotFound, FailedPrecondition, InvalidArgument
from tierstore.naming import validate_dataset_name
from tierstore.types import (
    DEFAULT_POLICY_NAME,
    DatasetSettings,
    Grant,
    TraceEvent,
    check_bool,
)
from tierstore.v1 import admin_pb2, admin_pb2_grpc, datasets_pb2, datasets_pb2_grpc
from tierstore.wire.convert import (
    dataset_settings_from_pb,
    dataset_settings_to_pb,
    durability_to_pb,
)
from tierstore.wire.grants import grant_from_pb, grant_to_pb
from tierstore.wire.limits import DEFAULT_PAGE_ENTRIES
from tierstore.wire.trace import trace_events_from_pb

__all__ = ["AdminCalls", "create_or_take", "dataset_settings_asked"]


class AdminCalls(ClientCore):
    """Datasets, tokens, master keys and the trace: the calls of an administrator
    (and :meth:`list_datasets` / :meth:`get_dataset`, of anyone with a role)."""

    # Datasets.

    def create_dataset(
        self,
        name: str,
        *,
        encrypted: bool = True,
        durability: str = "write-back",
        hot_quota_bytes: int = 0,
        policy: str = DEFAULT_POLICY_NAME,
        schema: pa.Schema | None = None,
        backlog_quota_bytes: int = 0,
        exist_ok: bool = False,
    ) -> DatasetSettings:
        """Create a dataset.

        ``encrypted``: encrypt its shards at rest in both tiers (fixed at creation);
        the default, as security is (``False``, plaintext, reads faster: the hot tier's
        bytes are checked, not decrypted). A node without a master key refuses an
        encrypted dataset (EncryptionUnavailable).
        ``durability``: ``"write-back"`` (acknowledged after the local commit) or
        ``"write-through"`` (after the archive holds it too). ``hot_quota_bytes``: 0
        for none. ``policy``: the placement policy of its shards (see
        :meth:`set_policy`). ``schema``: the Arrow schema every shard put into it
        must have, metadata aside (fixed at creation; raw bytes are refused there:
        SchemaMismatch); the returned settings hold it as an IPC message
        (``pyarrow.ipc.read_schema`` reads it). ``backlog_quota_bytes``: the most
        stored bytes of it that may wait for the archive at once, a share of the
        node's backlog cap (0: only that cap; puts past it fail BacklogFull).
        ``exist_ok``: a dataset of that name made with these very settings (schema
        metadata aside) is taken as it is, and its settings returned (a setup run
        again); one of other settings is still AlreadyExists, naming those that differ
        (it is left as it is: the changeable ones change with :meth:`update_dataset`
        and :meth:`set_policy`). Raises InvalidName, AlreadyExists, PermissionDenied,
        UnknownPolicy.
        """
        validate_dataset_name(name)
        settings = dataset_settings_asked(
            encrypted=encrypted,
            durability=durability,
            hot_quota_bytes=hot_quota_bytes,
            policy=policy,
            schema=schema,
            backlog_quota_bytes=backlog_quota_bytes,
        )
        if check_bool("exist_ok", exist_ok):
            made, _ = create_or_take(
                name,
                settings,
                lambda: self._create_dataset(name, settings),
                lambda: self.get_dataset(name),
            )
            return made
        return self._create_dataset(name, settings)

    def _create_dataset(self, name: str, settings: DatasetSettings) -> DatasetSettings:
        stub = self._stub(datasets_pb2_grpc.DatasetServiceStub)
        reply = self._call(
            stub.CreateDataset,
            datasets_pb2.CreateDatasetRequest(name=name, settings=dataset_settings_to_pb(settings)),
            idempotent=False,
            changes=f"the creation of dataset {name}",
        )
        made = dataset_settings_from_pb(reply.settings)
        if made.arrow_schema != settings.arrow_schema:  # a node older than dataset schemas drops it
            raise FailedPrecondition(
                f"the node made dataset {name!r} without its schema: it is older than "
                "this client, and has no dataset schemas. Delete the dataset, or make it "
                "without schema="
            )
        _check_backlog_quota_kept(name, made, settings.backlog_quota_bytes)
        return made

    def get_dataset(self, name: str) -> DatasetSettings:
        """A dataset's settings. Raises DatasetNotFound (also for datasets you may not see)."""
        validate_dataset_name(name)
        stub = self._stub(datasets_pb2_grpc.DatasetServiceStub)
        reply = self._call(
            stub.GetDataset, datasets_pb2.GetDatasetRequest(name=name), idempotent=True
        )
        return dataset_settings_from_pb(reply.settings)

    def list_datasets(self) -> builtins.list[tuple[str, DatasetSettings]]:
        """The datasets you hold a role on, sorted by name (fetched page by page)."""
        stub = self._stub(datasets_pb2_grpc.DatasetServiceStub)
        datasets: builtins.list[tuple[str, DatasetSettings]] = []
        start_after = ""
        while True:
            reply = self._call(
                stub.ListDatasets,
                # A limit asks for pages: without one a node answers all at once.
                datasets_pb2.ListDatasetsRequest(
                    start_after=start_after, limit=DEFAULT_PAGE_ENTRIES
                ),
                idempotent=True,
            )
            datasets.extend((d.name, dataset_settings_from_pb(d.settings)) for d in reply.datasets)
            if not reply.next_start_after:  # the last page (a node before pages sends one)
                return datasets
            start_after = reply.next_start_after

    def update_dataset(
        self,
        name: str,
        *,
        durability: str | None = None,
        hot_quota_bytes: int | None = None,
        policy: str | None = None,
        backlog_quota_bytes: int | None = None,
    ) -> DatasetSettings:
        """Change a dataset's durability, hot quota, placement policy or backlog quota
        (admin on the dataset); None leaves one as it is. A backlog quota below what
        the dataset has waiting for the archive refuses its puts (BacklogFull) until
        the mover has uploaded it down. Raises DatasetNotFound, UnknownPolicy,
        PermissionDenied, and InvalidArgument when all are None (nothing to update: a
        silent success would hide a forgotten argument)."""
        validate_dataset_name(name)
        changes = (durability, hot_quota_bytes, policy, backlog_quota_bytes)
        if all(change is None for change in changes):
            raise InvalidArgument(
                "nothing to update: give durability, hot_quota_bytes, policy or backlog_quota_bytes"
            )
        request = datasets_pb2.UpdateDatasetRequest(name=name)
        if durability is not None:
            request.durability = durability_to_pb(durability_named(durability))
        if hot_quota_bytes is not None:
            request.hot_quota_bytes = hot_quota(hot_quota_bytes)
        if policy is not None:
            request.policy = checked_text("policy", policy, "a placement policy's name")
        if backlog_quota_bytes is not None:
            request.backlog_quota_bytes = backlog_quota(backlog_quota_bytes)
        stub = self._stub(datasets_pb2_grpc.DatasetServiceStub)
        reply = self._call(
            stub.UpdateDataset, request, idempotent=True, changes=f"the update of dataset {name}"
        )
        updated = dataset_settings_from_pb(reply.settings)
        if request.HasField("backlog_quota_bytes"):
            _check_backlog_quota_kept(name, updated, request.backlog_quota_bytes)
        return updated

    def set_policy(self, dataset: str, name: str) -> DatasetSettings:
        """Switch ``dataset`` to the placement policy ``name`` (``lru``, ``s3fifo``,
        ``epoch-pin``, ``clairvoyant``, ...) at once; returns the new settings. The new
        policy starts from the dataset's hot shards and live plans. Admin on the
        dataset. Raises UnknownPolicy, DatasetNotFound, PermissionDenied."""
        # Checked here: update_dataset takes None as "unchanged", a silent no-op here.
        return self.update_dataset(
            dataset, policy=checked_text("policy", name, "a placement policy's name")
        )

    def delete_dataset(self, name: str, *, force: bool = False) -> int:
        """Delete a dataset; ``force`` also deletes its shards (admin on the dataset).
        Every token's grant on it goes too (the caller's own included): returns how many
        tokens lost one. The call's deadline is the transfers' (``stream_timeout_s``), as
        :meth:`delete`'s is: a forced delete waits on the archive for each shard."""
        validate_dataset_name(name)
        force = check_bool("force", force)
        stub = self._stub(datasets_pb2_grpc.DatasetServiceStub)
        reply = self._call(
            stub.DeleteDataset,
            datasets_pb2.DeleteDatasetRequest(name=name, force=force),
            idempotent=False,
            timeout_s=self.stream_timeout_s,
            changes=f"the delete of dataset {name}",
        )
        return int(reply.grants_removed)

    # Administration.

    def create_token(
        self, principal: str, grants: Sequence[Grant], *, ttl_s: float = 0
    ) -> tuple[str, str]:
        """Issue a token (admin on "*"); returns ``(token_id, token)`` — the token is shown once.

        ``grants``: :class:`~tierstore.types.Grant` values. ``ttl_s``: the token's
        lifetime, 0 (never expires) or from 1 s to ten years. Raises InvalidArgument (a
        principal that is not text, grants that are not Grants, a TTL out of range),
        PermissionDenied."""
        principal = checked_text("principal", principal, "a name for whom the token is")
        grants = grant_list(grants)
        ttl_s = token_ttl(ttl_s)
        stub = self._stub(admin_pb2_grpc.AdminServiceStub)
        reply = self._call(
            stub.CreateToken,
            admin_pb2.CreateTokenRequest(
                principal=principal, grants=[grant_to_pb(g) for g in grants], ttl_s=ttl_s
            ),
            idempotent=False,
            changes=f"a token for {principal}",
        )
        return reply.token_id, reply.token

    def revoke_token(self, token_id: str, *, force: bool = False) -> None:
        """Revoke a token for good (admin on "*"). The last live token with the admin
        role on "*" is revoked only with ``force`` (FailedPrecondition without): every
        admin call would then fail until the node restarts and writes a new
        admin.token."""
        token_id = checked_text("token_id", token_id, "a token's id")
        force = check_bool("force", force)
        stub = self._stub(admin_pb2_grpc.AdminServiceStub)
        self._call(
            stub.RevokeToken,
            admin_pb2.RevokeTokenRequest(token_id=token_id, force=force),
            idempotent=True,
            changes=f"the revocation of token {token_id}",
        )

    def list_tokens(self) -> builtins.list[dict[str, Any]]:
        """Every token's id, principal, grants, times and state (never the token)."""
        stub = self._stub(admin_pb2_grpc.AdminServiceStub)
        reply = self._call(stub.ListTokens, admin_pb2.ListTokensRequest(), idempotent=True)
        return [
            {
                "token_id": t.token_id,
                "principal": t.principal,
                "grants": [grant_from_pb(g) for g in t.grants],
                "created_at": t.created_at,
                "expires_at": t.expires_at,
                "revoked": t.revoked,
            }
            for t in reply.tokens
        ]

    def rotate_keys(self) -> tuple[int, str]:
        """Rotate the master key (admin on "*"); returns ``(rewrapped, new key id)``.
        It rewraps every data key, which on a large catalog takes minutes: the call has
        the transfers' deadline (``stream_timeout_s``), as :meth:`retire_key` and
        :meth:`list_keys` have, which walk the catalog too."""
        stub = self._stub(admin_pb2_grpc.AdminServiceStub)
        reply = self._call(
            stub.RotateKeys,
            admin_pb2.RotateKeysRequest(),
            idempotent=False,
            timeout_s=self.stream_timeout_s,
            changes="the rotation of the master key",
        )
        return int(reply.rewrapped), reply.key_id

    def retire_key(self, key_id: str) -> tuple[builtins.list[str], str]:
        """Drop master key ``key_id`` from the node's key file, once no data key and no
        archive object needs it (admin on "*"); returns ``(the key ids left, the
        current one)``. The node keeps the key in ``<key file>.retired``, for nodes
        sharing the key file. Raises NotFound for an id the key file does not hold
        (retired already?), KeyRotationRefused (nothing changed) for the current key or
        a key still needed: after a rotation, until the mover has resealed the
        archive's metadata under the new key."""
        if not checked_text("key_id", key_id, "a master key's id"):
            raise InvalidArgument("key_id must be a master key's id, not ''")
        stub = self._stub(admin_pb2_grpc.AdminServiceStub)
        request = admin_pb2.RetireKeyRequest(key_id=key_id)
        reply = self._call(
            stub.RetireKey,
            request,
            idempotent=False,
            timeout_s=self.stream_timeout_s,  # see rotate_keys
            changes=f"the retirement of key {key_id}",
        )
        return list(reply.key_ids), reply.current

    def list_keys(self) -> builtins.list[dict[str, Any]]:
        """The master key ids the node holds and those its shards' data keys are wrapped
        with, by id (admin on "*"): each ``{"key_id", "current", "held", "shards"}``,
        ``held`` false for an id shards use that the node lacks, ``shards`` how many
        shards' data keys it wraps. Never key material."""
        stub = self._stub(admin_pb2_grpc.AdminServiceStub)
        reply = self._call(
            stub.ListKeys,
            admin_pb2.ListKeysRequest(),
            idempotent=True,
            timeout_s=self.stream_timeout_s,  # see rotate_keys
        )
        return [
            {"key_id": k.key_id, "current": k.current, "held": k.held, "shards": int(k.shards)}
            for k in reply.keys
        ]

    def export_trace(self, dataset: str | None = None) -> Iterator[TraceEvent]:
        """The server's recent reads and plan events (of ``dataset``, or all), oldest
        first, as :class:`~tierstore.types.TracedRead` / ``TracedPlan`` /
        ``TracedPosition`` / ``TracedClose`` (admin on "*"). Streamed: consume it to the
        end, or close it. Raises PermissionDenied, InvalidName."""
        if dataset is not None:
            validate_dataset_name(dataset)
        self.report_local_reads()
        stub = self._stub(admin_pb2_grpc.AdminServiceStub)
        # Not in the fork gate: the gate cannot be held across the caller's iteration.
        # Do not fork while a trace stream is open (nor an iter_bytes one: see forkgate).
        with closed_channel_is_unavailable():
            responses = stub.ExportTrace(
                admin_pb2.ExportTraceRequest(dataset=dataset or ""),
                timeout=self.stream_timeout_s,
                metadata=self._channel.metadata,
            )
        return trace_events_from_pb(mapped_responses(responses))


def dataset_settings_asked(
    *,
    encrypted: bool = True,
    durability: str = "write-back",
    hot_quota_bytes: int = 0,
    policy: str = DEFAULT_POLICY_NAME,
    schema: pa.Schema | None = None,
    backlog_quota_bytes: int = 0,
) -> DatasetSettings:
    """The settings :meth:`AdminCalls.create_dataset` asks for with these arguments (its
    defaults); InvalidArgument for a bad one."""
    # "" is the node's default, as the wire reads it: asked again, it is that one.
    policy = checked_text("policy", policy, "a placement policy's name") or DEFAULT_POLICY_NAME
    quota = hot_quota(hot_quota_bytes)
    most_waiting = backlog_quota(backlog_quota_bytes)
    if schema is not None and not isinstance(schema, pa.Schema):
        raise InvalidArgument(f"schema must be a pyarrow.Schema or None, not {schema!r:.60}")
    message = schema.serialize().to_pybytes() if schema is not None else b""
    return DatasetSettings(
        encrypted, durability_named(durability), quota, policy, message, most_waiting
    )


def create_or_take(
    name: str,
    asked: DatasetSettings,
    create: Callable[[], DatasetSettings],
    get: Callable[[], DatasetSettings],
    option: str = "exist_ok",
) -> tuple[DatasetSettings, bool]:
    """Dataset ``name`` made by ``create``, or, if it exists already, read by ``get``
    and taken if it is as ``asked`` (:func:`_check_as_asked`, naming ``option``); whether
    it was made. One deleted between the two is made again (at most twice more): a
    create must not say the dataset is not found."""
    for _ in range(2):
        try:
            return create(), True
        except AlreadyExists:
            pass
        try:
            existing = get()
        except DatasetNotFound:
            continue
        _check_as_asked(name, existing, asked, option)
        return existing, False
    return create(), True


def _check_as_asked(
    name: str, existing: DatasetSettings, asked: DatasetSettings, option: str = "exist_ok"
) -> None:
    """AlreadyExists unless dataset ``name``'s ``existing`` settings are those ``asked``
    for (its schema's metadata aside, as a put's schema is checked), naming each that
    differs: ``option`` (``exist_ok``, ``--exist-ok``) takes a dataset only as asked."""
    differences = [
        f"{field} {getattr(existing, field)} (asked {getattr(asked, field)})"
        for field in _FIELDS_ASKED
        if getattr(existing, field) != getattr(asked, field)
    ]
    schema = _schema_difference(existing.arrow_schema, asked.arrow_schema)
    if schema:
        differences.append(schema)
    if differences:
        raise AlreadyExists(
            f"dataset {name!r} exists with other settings: {', '.join(differences)}; "
            f"{option} takes it only as asked"
        )


#: the settings _check_as_asked compares as they are (the schema apart)
_FIELDS_ASKED = ("encrypted", "durability", "hot_quota_bytes", "policy", "backlog_quota_bytes")


def _schema_difference(existing: bytes, asked: bytes) -> str:
    """How a dataset's schema differs from the one asked for ("": it does not)."""
    if not existing and not asked:
        return ""
    if not existing or not asked:
        return "no schema (asked one)" if asked else "a schema (asked none)"
    if schema_of_message(existing).equals(schema_of_message(asked), check_metadata=False):
        return ""
    return "another schema than the one asked"


def _check_backlog_quota_kept(name: str, settings: DatasetSettings, wanted: int) -> None:
    """FailedPrecondition when a node answered a create or update that set dataset
    ``name``'s backlog quota to ``wanted`` with ``settings`` that lack it: a node older
    than backlog quotas drops the field, and the caller would believe it holds."""
    if settings.backlog_quota_bytes != wanted:
        raise FailedPrecondition(
            f"the node left dataset {name!r} without the backlog quota asked for "
            f"({wanted:,} bytes): it is older than this client, and has no dataset "
            "backlog quotas (its node-wide backlog cap still holds). The rest of the call "
            "was done: a dataset created stays, other settings given are set"
        )
