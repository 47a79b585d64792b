"""Access plans ⇄ tierstore.v1 messages: sampler specs and explicit shard lists.

The server regenerates a sampler's order itself (:mod:`tierstore.plans`), so only
the spec travels. Unset numbers read as proto3 zeros: ``world_size`` and
``epochs`` of 0 count as 1, and an empty ``shards_digest`` is none (a client older than
the field). Every field is validated on the way in.
"""

from __future__ import annotations

from tierstore.errors import InvalidArgument
from tierstore.plans import SamplerKind, SamplerPlan
from tierstore.v1 import placement_pb2 as pb

__all__ = ["sampler_from_pb", "sampler_to_pb"]

_KINDS = {
    pb.SAMPLER_KIND_SEQUENTIAL: SamplerKind.SEQUENTIAL,
    pb.SAMPLER_KIND_SHUFFLE: SamplerKind.SHUFFLE,
    pb.SAMPLER_KIND_REPLACEMENT: SamplerKind.REPLACEMENT,
}
_KINDS_PB = {kind: value for value, kind in _KINDS.items()}


def sampler_from_pb(message: pb.SamplerSpec) -> SamplerPlan:
    """Raises InvalidArgument for an unknown kind or fields that describe no plan."""
    kind = _KINDS.get(message.kind)
    if kind is None:
        raise InvalidArgument(f"unknown or unspecified sampler kind {message.kind}")
    plan = SamplerPlan(
        kind=kind,
        seed=message.seed,
        epoch=message.epoch,
        rank=message.rank,
        world_size=message.world_size or 1,
        epochs=message.epochs or 1,
        samples_per_epoch=message.samples_per_epoch,
        shards_digest=message.shards_digest,
    )
    plan.validate()
    return plan


def sampler_to_pb(plan: SamplerPlan) -> pb.SamplerSpec:
    """Raises InvalidArgument for a plan that does not validate, or fields too large for
    the wire (seed, epoch and samples below 2**64; rank and world size below 2**32)."""
    plan.validate()
    try:
        return pb.SamplerSpec(
            kind=_KINDS_PB[plan.kind],
            seed=plan.seed,
            epoch=plan.epoch,
            rank=plan.rank,
            world_size=plan.world_size,
            epochs=plan.epochs,
            samples_per_epoch=plan.samples_per_epoch,
            shards_digest=plan.shards_digest,
        )
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"the sampler plan does not fit the wire: {exc}") from None
