"""PlacementService: pins, prefetches, evictions, access plans and tier statistics.

Access plans belong to the principal that declared them: the engine knows a plan
by ``<length of the principal's name>:<principal>/<job>`` (the length, since names
may hold ``/``: principal ``a/b`` with job ``c`` must not be principal ``a`` with
job ``b/c``), so two callers may use the same job id without meeting,
and one caller can never report on, or close, another's plan (it is unknown to
it: PlanNotFound). Reporting and closing also need the reader role on the plan's
dataset; a caller without any role there hears PlanNotFound too.

A plan is kept by the token that declared it or reported on it last: revoking that
token ends it (``AdminServicer.RevokeToken``), and it expires when the token runs out
at the latest, so a revoked or run-out job's plan no longer steers the prefetcher and
the evictions for the rest of its TTL. A declaration or
report whose token is revoked while it runs ends the plan itself (and is refused),
so none slips past the revocation.
"""

from __future__ import annotations

import time
import uuid

import grpc

from tierstore.engine.store import Store
from tierstore.errors import (
    DatasetNotFound,
    InvalidArgument,
    PlanNotFound,
    Unauthenticated,
)
from tierstore.naming import validate_dataset_name, validate_shard_name
from tierstore.plans import DEFAULT_PLAN_TTL_S
from tierstore.server.authz import Principal, authorize, visible
from tierstore.server.requestchecks import MAX_PREFETCH_SHARDS
from tierstore.server.rpc import caller, handler, note_shard
from tierstore.types import ALL_DATASETS
from tierstore.v1 import placement_pb2, placement_pb2_grpc
from tierstore.wire.limits import ENTRY_OVERHEAD, MAX_MESSAGE_BYTES, answer_budget
from tierstore.wire.plans import sampler_from_pb
from tierstore.wire.trace import sizing_to_pb

__all__ = ["PlacementServicer"]

_SERVICE = "/tierstore.v1.PlacementService/"
#: characters of a caller's job id (the engine's id adds the principal's name).
MAX_CALLER_JOB_CHARS = 256


def _scoped(principal: Principal, job: str) -> str:
    """The engine's id of ``principal``'s ``job`` (validated here)."""
    if not 0 < len(job) <= MAX_CALLER_JOB_CHARS or not job.isprintable():
        raise InvalidArgument(f"a job id is 1-{MAX_CALLER_JOB_CHARS} printable characters")
    return f"{len(principal.name)}:{principal.name}/{job}"


class PlacementServicer(placement_pb2_grpc.PlacementServiceServicer):
    """Steering shards between the tiers."""

    def __init__(self, store: Store, message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._store = store
        #: the most GetTierStats's reports of lost shards carry: a node reports every
        #: unreadable record, and with very many its stats passed the message limit
        self._data_loss_bytes = answer_budget(message_bytes)

    def _check_shard(
        self, method: str, request: placement_pb2.ShardRef | placement_pb2.PinRequest
    ) -> None:
        validate_dataset_name(request.dataset)
        note_shard(validate_shard_name(request.shard))  # for the call's audit line
        authorize(caller(), _SERVICE + method, request.dataset)

    @handler
    def Pin(
        self, request: placement_pb2.PinRequest, context: grpc.ServicerContext
    ) -> placement_pb2.PlacementResponse:
        self._check_shard("Pin", request)
        ttl_s = request.ttl_s if request.ttl_s != 0 else None
        return placement_pb2.PlacementResponse(
            bytes=self._store.pin(request.dataset, request.shard, ttl_s)
        )

    @handler
    def Unpin(
        self, request: placement_pb2.ShardRef, context: grpc.ServicerContext
    ) -> placement_pb2.PlacementResponse:
        self._check_shard("Unpin", request)
        self._store.unpin(request.dataset, request.shard)
        return placement_pb2.PlacementResponse()

    @handler
    def Evict(
        self, request: placement_pb2.ShardRef, context: grpc.ServicerContext
    ) -> placement_pb2.PlacementResponse:
        self._check_shard("Evict", request)
        freed = self._store.evict(request.dataset, request.shard)
        return placement_pb2.PlacementResponse(bytes=freed)

    @handler
    def Prefetch(
        self, request: placement_pb2.PrefetchRequest, context: grpc.ServicerContext
    ) -> placement_pb2.PrefetchResponse:
        validate_dataset_name(request.dataset)
        authorize(caller(), _SERVICE + "Prefetch", request.dataset)
        if len(request.shards) > MAX_PREFETCH_SHARDS:
            raise InvalidArgument(f"at most {MAX_PREFETCH_SHARDS} shards per prefetch")
        for name in request.shards:
            validate_shard_name(name)
        queued = self._store.prefetch(request.dataset, list(request.shards))
        return placement_pb2.PrefetchResponse(queued=queued)

    @handler
    def GetTierStats(
        self, request: placement_pb2.GetTierStatsRequest, context: grpc.ServicerContext
    ) -> placement_pb2.TierStats:
        principal = caller()
        if request.dataset:
            validate_dataset_name(request.dataset)
        authorize(principal, _SERVICE + "GetTierStats", request.dataset or None)
        stats = self._store.stats()
        names = (
            [request.dataset]
            if request.dataset
            else [name for name in self._store.dataset_names() if visible(principal, name)]
        )
        reply = placement_pb2.TierStats(
            hot_bytes=stats.hot_bytes,
            hot_capacity_bytes=stats.hot_capacity_bytes,
            high_watermark_bytes=stats.high_watermark_bytes,
            low_watermark_bytes=stats.low_watermark_bytes,
            promotions=stats.promotions,
            promotions_skipped=stats.promotions_skipped,
            evictions=stats.evictions,
            pins_waiting_for_room=stats.pins_waiting_for_room,
            pins_waiting_for_room_bytes=stats.pins_waiting_for_room_bytes,
            backlog_bytes=stats.backlog_bytes,
            journal_entries=stats.journal_entries,
            oldest_journal_age_s=stats.oldest_journal_age_s,
            datasets=self._dataset_stats(names, listed=not request.dataset),
            # Of the datasets shown only: an entry names its shard.
            archive_error=_archive_error_for(principal, stats.mover_error),
        )
        # Of the datasets shown only: an entry names its shard.
        lost = [entry for entry in stats.data_loss if entry.split("/", 1)[0] in names]
        room = self._data_loss_bytes
        for entry in lost:
            room -= len(entry.encode("utf-8", "surrogateescape")) + ENTRY_OVERHEAD
            if room < 0:
                break
            reply.data_loss.append(entry)
        unnamed = sum(stats.data_loss_unnamed.get(name, 0) for name in names)
        reply.data_loss_omitted = len(lost) - len(reply.data_loss) + unnamed
        if request.sizing:
            # Over the listed datasets only: a caller learns nothing of others' reads.
            points, reads = self._store.sizing_curve(set(names))
            reply.sizing.extend(sizing_to_pb(points))
            reply.traced_reads = reads
        return reply

    def _dataset_stats(self, names: list[str], *, listed: bool) -> list[placement_pb2.DatasetStats]:
        """Each dataset's figures. A ``listed`` dataset (not one the caller named) that
        was deleted since it was listed is left out: the caller did not ask about it,
        and must not be told another dataset is missing."""
        figures = []
        for name in names:
            try:
                usage = self._store.dataset_usage(name)
            except DatasetNotFound:
                if listed:
                    continue
                raise
            figures.append(
                placement_pb2.DatasetStats(
                    dataset=name,
                    shards=usage.shards,
                    bytes=usage.bytes,
                    hot_shards=usage.hot_shards,
                    hot_bytes=usage.hot_bytes,
                    hits=usage.hits,
                    misses=usage.misses,
                    policy=self._store.policy_name(name),
                    archived_shards=usage.archived_shards,
                    archived_bytes=usage.archived_bytes,
                    backlog_shards=usage.backlog_shards,
                    backlog_bytes=usage.backlog_bytes,
                    pinned_shards=usage.pinned_shards,
                    pinned_bytes=usage.pinned_bytes,
                    pinned_cold_shards=usage.pinned_cold_shards,
                    pinned_cold_bytes=usage.pinned_cold_bytes,
                    largest_shard_bytes=usage.largest_shard_bytes,
                )
            )
        return figures

    # Access plans.

    @handler
    def DeclarePlan(
        self, request: placement_pb2.DeclarePlanRequest, context: grpc.ServicerContext
    ) -> placement_pb2.DeclarePlanResponse:
        principal = caller()
        validate_dataset_name(request.dataset)
        authorize(principal, _SERVICE + "DeclarePlan", request.dataset)
        job = request.job or uuid.uuid4().hex
        scoped = _scoped(principal, job)
        which = request.WhichOneof("plan")
        sampler = sampler_from_pb(request.sampler) if which == "sampler" else None
        # The names as parsed: the engine checks their number against the dataset's
        # before it takes them in (a list of them first grew the server by gigabytes).
        shards = request.explicit.shards if which == "explicit" else None
        ttl_s = request.ttl_s or DEFAULT_PLAN_TTL_S
        self._store.declare_plan(
            request.dataset,
            sampler=sampler,
            shards=shards,
            prefix=request.prefix,
            job=scoped,
            ttl_s=ttl_s,
            owner=principal.name,
            keeper=principal.token_id,
            keeper_left_s=_time_left(principal),
            # Checked against the plan's length there (InvalidArgument past its end).
            position=request.position,
        )
        self._still_kept(principal)
        try:
            info = self._store.plan_info(scoped)
        except PlanNotFound:  # in the caller's words, not the engine's scoped id
            raise PlanNotFound(
                f"job {job[:200]!r}'s access plan expired before its declaration returned "
                f"(ttl_s {ttl_s:g} s): give it a ttl_s of seconds, not less"
            ) from None
        # The position echoed says the plan starts there: a client that asked for one
        # and reads 0 (a server older than the field) reports it instead.
        return placement_pb2.DeclarePlanResponse(
            job=job, length=info.length, position=info.position
        )

    def _still_kept(self, principal: Principal) -> None:
        """After ``principal`` declared or reported on a plan: if its token was revoked
        meanwhile (the revocation may have ended the token's plans before this one was
        kept by it), end the token's plans and raise Unauthenticated."""
        try:
            caller()
        except Unauthenticated:
            self._store.close_plans_kept_by(principal.token_id)
            raise

    def _own_plan(self, method: str, job: str) -> str:
        """The engine's id of the caller's ``job``, once the caller may touch it."""
        principal = caller()
        scoped = _scoped(principal, job)
        try:
            dataset = self._store.plan_info(scoped).dataset
            authorize(principal, _SERVICE + method, dataset)
        except (PlanNotFound, DatasetNotFound):
            # One answer for unknown, closed, expired and hidden: the caller's own words.
            raise PlanNotFound(f"no live access plan for job {job[:200]!r}") from None
        return scoped

    @handler
    def ReportPosition(
        self, request: placement_pb2.ReportPositionRequest, context: grpc.ServicerContext
    ) -> placement_pb2.ReportPositionResponse:
        principal = caller()
        scoped = self._own_plan("ReportPosition", request.job)
        self._store.report_position(
            scoped, request.position, principal.token_id, _time_left(principal)
        )
        self._still_kept(principal)
        return placement_pb2.ReportPositionResponse()

    @handler
    def ClosePlan(
        self, request: placement_pb2.ClosePlanRequest, context: grpc.ServicerContext
    ) -> placement_pb2.ClosePlanResponse:
        scoped = self._own_plan("ClosePlan", request.job)
        self._store.close_plan(scoped)
        return placement_pb2.ClosePlanResponse()


def _time_left(principal: Principal) -> float | None:
    """How long ``principal``'s credential lasts from now (None: it never runs out): a
    plan it keeps ends with it, as it would with its revocation."""
    return principal.expires_at - time.time() if principal.expires_at else None


def _archive_error_for(principal: Principal, error: str | None) -> str:
    """Why the archive is failing (the engine's ``StoreStats.mover_error``) as
    ``principal`` may see it: whole for a caller with a role on every dataset (it may
    name any dataset's shard), else only that there is one."""
    if not error:
        return ""
    if principal.role_on(ALL_DATASETS) is not None:
        return error
    return "archive operations are failing (the reason is shown to a caller with a role on '*')"
