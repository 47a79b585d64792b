"""The client's placement calls: pins, evictions, prefetches, tier statistics and
access plans (:class:`PlacementCalls`, a part of :class:`~tierstore.client.client.Client`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from tierstore.client.arguments import checked_prefix, checked_text
from tierstore.client.core import ClientCore
from tierstore.errors import InvalidArgument, InvalidPlan
from tierstore.naming import validate_dataset_name, validate_shard_name
from tierstore.plans import DEFAULT_PLAN_TTL_S, SamplerPlan, check_plan_ttl
from tierstore.types import check_bool, check_pin_ttl, whole_number
from tierstore.v1 import placement_pb2, placement_pb2_grpc
from tierstore.wire.plans import sampler_to_pb
from tierstore.wire.trace import sizing_from_pb

__all__ = ["ARCHIVE_DATASET_FIGURES", "PlacementCalls", "TierStats"]


#: TierStats figures a node older than them does not send (absent, not 0).
_NEWER_FIGURES = (
    "high_watermark_bytes",
    "low_watermark_bytes",
    "promotions",
    "promotions_skipped",
    "evictions",
    "pins_waiting_for_room",
    "pins_waiting_for_room_bytes",
)
#: DatasetStats figures a node older than them does not send (absent, not 0).
_NEWER_DATASET_FIGURES = (
    "pinned_shards",
    "pinned_bytes",
    "pinned_cold_shards",
    "pinned_cold_bytes",
    "largest_shard_bytes",
)
#: A dataset's figures that were plain fields at first: a node of then left a 0 out.
#: One that sends the pinned figures knows them all, and a figure it leaves out is 0;
#: from one that does not, a figure left out is left out here too (unknown).
ARCHIVE_DATASET_FIGURES = ("archived_shards", "archived_bytes", "backlog_shards", "backlog_bytes")


def _archive_figures(d: Any) -> dict[str, int]:
    """A dataset's archive figures (``ARCHIVE_DATASET_FIGURES``) as its node knows them."""
    knows_all = d.HasField("pinned_shards")
    return {
        name: getattr(d, name) for name in ARCHIVE_DATASET_FIGURES if knows_all or d.HasField(name)
    }


class TierStats(dict[str, Any]):
    """Tier statistics as a plain mapping: ``hot_bytes``, ``hot_capacity_bytes``,
    ``high_watermark_bytes`` and ``low_watermark_bytes`` (where eviction starts and
    stops), ``promotions``, ``promotions_skipped`` (no room could be made below the
    high watermark or the dataset's quota) and ``evictions`` (since the node started),
    ``pins_waiting_for_room`` and ``pins_waiting_for_room_bytes`` (node-wide: pinned
    shards left cold because no room could be made for them, and their stored bytes)
    (these seven left out by a node older than them), ``backlog_bytes``,
    ``journal_entries``, ``oldest_journal_age_s`` (seconds since the
    oldest pending journal entry committed; 0 when none is pending), ``archive_error``
    (why the archive is failing, or None: the mover's last archive operation's error,
    else the last archive request of any kind, a cold read's or a promotion's, that
    failed for want of the archive, with when, until one answers again; the reason
    itself only for a caller with a role on ``*``), ``data_loss`` (the shards of the
    datasets shown that the node reports lost, ``"dataset/name: why"``; the first 16 MiB
    of them),
    ``data_loss_omitted`` (how many more the node reports: its log has them),
    ``datasets`` (per dataset: shards, bytes, hot_shards, hot_bytes, archived_shards,
    archived_bytes, backlog_shards and backlog_bytes (its uploads waiting for the
    archive, stored bytes as hot_bytes counts them; each left out by a node older than
    it, and a 0 by one older than the pinned figures too), pinned_shards, pinned_bytes,
    pinned_cold_shards and pinned_cold_bytes (its shards whose pin holds, and of those
    the cold ones), largest_shard_bytes (its largest shard's stored bytes) (these five
    left out by a node older than them), hits, misses, hit_ratio (None
    before its first read: no ratio, rather than a 0 % that looks like all misses),
    policy) and,
    when asked for, ``sizing`` (a list of ``{"capacity_bytes", "miss_ratio"}``) and
    ``traced_reads``."""


class PlacementCalls(ClientCore):
    """Where shards live and when: pin, unpin, evict, prefetch, the tiers' statistics,
    and the access plans that let a policy fetch ahead of a reader."""

    # Placement.

    def _placement(self, method: str, dataset: str, shard: str) -> int:
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        stub = self._stub(placement_pb2_grpc.PlacementServiceStub)
        reply = self._call(
            getattr(stub, method),
            placement_pb2.ShardRef(dataset=dataset, shard=shard),
            idempotent=True,
            changes=f"the {method.lower()} of {dataset}/{shard}",
        )
        return int(reply.bytes)

    def pin(self, dataset: str, shard: str, *, ttl_s: float | None = None) -> int:
        """Keep a shard hot whatever the placement policy says (a cold one is promoted),
        for ``ttl_s`` seconds or, without one, until :meth:`unpin`; pinning again
        replaces the TTL. Returns bytes queued for promotion. Raises InvalidArgument
        (``ttl_s`` not a number of seconds in (0, ten years]), ShardNotFound,
        PermissionDenied, HotTierFull (a cold shard larger than the hot tier takes below
        its high watermark) or QuotaExceeded (one larger than its dataset's hot-tier
        quota): it could never be made hot, and is not pinned."""
        validate_dataset_name(dataset)
        validate_shard_name(shard)
        ttl_s = check_pin_ttl(ttl_s)
        stub = self._stub(placement_pb2_grpc.PlacementServiceStub)
        reply = self._call(
            stub.Pin,
            placement_pb2.PinRequest(dataset=dataset, shard=shard, ttl_s=ttl_s or 0.0),
            idempotent=True,
            changes=f"the pin of {dataset}/{shard}",
        )
        return int(reply.bytes)

    def unpin(self, dataset: str, shard: str) -> None:
        """Let the placement policy evict a shard again."""
        self._placement("Unpin", dataset, shard)

    def evict(self, dataset: str, shard: str) -> int:
        """Drop a shard from the hot tier if the archive holds it; returns bytes freed."""
        return self._placement("Evict", dataset, shard)

    def prefetch(self, dataset: str, shards: Sequence[str]) -> int:
        """Queue promotion of the named shards that are cold; returns how many were
        queued. A name of no shard is not counted, as one hot already or on its way
        is not: a prefetch is a hint, so :meth:`stat` tells a typo. ``shards`` is a
        sequence of names: one name alone is InvalidArgument (a str is a sequence of
        its characters, each of which was asked for). Raises HotTierFull, nothing
        queued, when a cold shard named is larger than the hot tier takes below its
        high watermark, and QuotaExceeded when one is larger than its dataset's hot-tier
        quota (it could never be made hot)."""
        validate_dataset_name(dataset)
        names = _shard_names(shards, InvalidArgument)
        stub = self._stub(placement_pb2_grpc.PlacementServiceStub)
        reply = self._call(
            stub.Prefetch,
            placement_pb2.PrefetchRequest(dataset=dataset, shards=names),
            idempotent=True,
        )
        return int(reply.queued)

    def stats(self, dataset: str = "", *, sizing: bool = False) -> TierStats:
        """Hot-tier usage, archive backlog, and per dataset: shards, bytes, hits, misses,
        hit ratio (since the server started) and policy. With ``sizing``, also the
        sizing curve: the miss ratio the server's recently traced reads (of the datasets
        shown) would have had with a hot tier of 1/8 to 4 times its capacity (costs the
        server a pass over its trace: up to a second or two)."""
        if dataset not in ("", None):  # every dataset; anything else must be a name
            validate_dataset_name(dataset)
        sizing = check_bool("sizing", sizing)
        self.report_local_reads()
        stub = self._stub(placement_pb2_grpc.PlacementServiceStub)
        reply = self._call(
            stub.GetTierStats,
            placement_pb2.GetTierStatsRequest(dataset=dataset, sizing=sizing),
            idempotent=True,
        )
        extra: dict[str, Any] = {}
        if sizing:
            extra["sizing"] = [
                {"capacity_bytes": p.capacity_bytes, "miss_ratio": p.miss_ratio}
                for p in sizing_from_pb(reply.sizing)
            ]
            extra["traced_reads"] = reply.traced_reads
        for name in _NEWER_FIGURES:  # left out when the node sends none (an older one)
            if reply.HasField(name):
                extra[name] = getattr(reply, name)
        return TierStats(
            **extra,
            hot_bytes=reply.hot_bytes,
            hot_capacity_bytes=reply.hot_capacity_bytes,
            backlog_bytes=reply.backlog_bytes,
            journal_entries=reply.journal_entries,
            oldest_journal_age_s=reply.oldest_journal_age_s,
            data_loss=list(reply.data_loss),
            data_loss_omitted=reply.data_loss_omitted,
            archive_error=reply.archive_error or None,
            datasets={
                d.dataset: {
                    **{
                        name: getattr(d, name)
                        for name in _NEWER_DATASET_FIGURES
                        if d.HasField(name)
                    },
                    "shards": d.shards,
                    "bytes": d.bytes,
                    "hot_shards": d.hot_shards,
                    "hot_bytes": d.hot_bytes,
                    **_archive_figures(d),
                    "hits": d.hits,
                    "misses": d.misses,
                    "hit_ratio": d.hits / (d.hits + d.misses) if d.hits + d.misses else None,
                    "policy": d.policy,
                }
                for d in reply.datasets
            },
        )

    # Access plans.

    def declare_plan(
        self,
        dataset: str,
        *,
        sampler: SamplerPlan | None = None,
        shards: Sequence[str] | None = None,
        prefix: str | None = "",
        job: str | None = None,
        ttl_s: float = DEFAULT_PLAN_TTL_S,
        position: int = 0,
    ) -> str:
        """Tell the server the order in which this reader will read ``dataset``, so its
        placement policy can fetch shards just ahead of need; returns the job id.

        Exactly one of ``sampler`` (a :class:`~tierstore.plans.SamplerPlan`: the server
        regenerates the very order :func:`~tierstore.plans.rank_order` gives over the
        dataset's shard names under ``prefix``, sorted) and ``shards`` (names in
        reading order). ``job``: your id for the plan (declaring it again replaces the
        plan; other callers' ids never clash with yours); a random one if None.
        ``ttl_s``: the plan ends this long after the last :meth:`report_position`.
        ``position``: entries of the plan already read (a resumed epoch; 0: none), at
        most its length. Give it here rather than report it right after: the policy
        measures the reader's rate between reports, and took a start reported a moment
        after the declaration for entries read in that moment. A server older than the
        field starts the plan at 0 and says no position in its answer: then the position
        is reported at once (:meth:`report_position`, whose errors it raises), as before
        the field, rather than leave the server fetching entries already read until the
        next report.
        A sampler with ``shards_digest`` (:func:`~tierstore.plans.shard_list_digest` of
        the names you listed) is refused as PlanShardsChanged when the names under
        ``prefix`` are others now: declare your order as ``shards`` then.
        Needs the reader role. Raises InvalidPlan (unknown shard, too long, not exactly
        one of sampler and shards), InvalidArgument (``position`` past the plan's end
        among others), DatasetNotFound, PlanShardsChanged.
        """
        validate_dataset_name(dataset)
        ttl_s = check_plan_ttl(ttl_s)
        start = _plan_position(position)
        prefix = checked_prefix(prefix)
        job = "" if job is None else checked_text("job", job, "a plan's id")
        self.report_local_reads()  # the server hears this reader's reads before its plan
        request = placement_pb2.DeclarePlanRequest(
            dataset=dataset,
            prefix=prefix,
            job=job or uuid.uuid4().hex,
            ttl_s=float(ttl_s),
            position=start,
        )
        if (sampler is None) == (shards is None):
            raise InvalidPlan("a plan is either a sampler or a list of shards (exactly one)")
        if sampler is not None:
            if not isinstance(sampler, SamplerPlan):
                raise InvalidArgument(
                    f"sampler must be a tierstore.plans.SamplerPlan, not {sampler!r:.80}"
                )
            request.sampler.CopyFrom(sampler_to_pb(sampler))
        else:
            assert shards is not None
            request.explicit.SetInParent()
            request.explicit.shards.extend(_shard_names(shards, InvalidPlan))
        stub = self._stub(placement_pb2_grpc.PlacementServiceStub)
        # Idempotent: the job id is chosen here, and declaring it again replaces the plan.
        reply = self._call(stub.DeclarePlan, request, idempotent=True)
        job = str(reply.job)
        if start and not reply.position:  # a server that dropped the field: from 0
            self.report_position(job, start)
        return job

    def report_position(self, job: str, position: int) -> None:
        """``job`` has read the first ``position`` entries of its plan; keeps the plan
        alive. Raises PlanNotFound (unknown, closed or expired), InvalidArgument
        (``position`` negative or past the plan's end)."""
        count = _plan_position(position)
        job = checked_text("job", job, "a plan's id")
        self.report_local_reads()  # the reads come before the position that covers them
        stub = self._stub(placement_pb2_grpc.PlacementServiceStub)
        self._call(
            stub.ReportPosition,
            placement_pb2.ReportPositionRequest(job=job, position=count),
            idempotent=True,
        )

    def close_plan(self, job: str) -> None:
        """End ``job``'s plan. Raises PlanNotFound (unknown, closed or expired)."""
        job = checked_text("job", job, "a plan's id")
        self.report_local_reads()
        stub = self._stub(placement_pb2_grpc.PlacementServiceStub)
        self._call(stub.ClosePlan, placement_pb2.ClosePlanRequest(job=job), idempotent=False)


def _plan_position(position: object) -> int:
    """``position`` as entries of a plan read (what the wire carries), else
    InvalidArgument; the server checks it against the plan's length."""
    count = whole_number(position)  # numpy's integers too (a sampler's positions)
    if count is None or not 0 <= count < 2**64:
        raise InvalidArgument(
            "position must be a whole number from 0 to the plan's length (entries read "
            f"so far), got {position!r:.40}"
        )
    return count


def _shard_names(shards: object, error: type[InvalidArgument]) -> list[str]:
    """``shards`` read once into a list of shard names (a generator has nothing left
    after a check). Raises ``error`` for one name, or anything but a sequence of them,
    and InvalidName for an entry that is no shard name (bytes, None)."""
    if isinstance(shards, str | bytes):
        raise error(
            f"shards must be a sequence of shard names, not one name ({shards!r:.80}): give [name]"
        )
    if not isinstance(shards, Iterable):
        raise error(f"shards must be a sequence of shard names, not {shards!r:.80}")
    names = list(shards)
    for shard in names:
        validate_shard_name(shard)
    return names
