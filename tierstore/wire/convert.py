"""Engine value types ⇄ tierstore.v1 messages (pure; every field validated on the way in).

Random bytes often decode as a valid, empty message, so nothing here trusts a
message's shape: enum values outside the known set and missing required parts
raise :class:`InvalidArgument`, never INTERNAL.
"""

from __future__ import annotations

from tierstore.errors import InvalidArgument
from tierstore.types import DEFAULT_POLICY_NAME, DatasetSettings, Durability, ShardInfo, ShardKind
from tierstore.v1 import common_pb2 as pb

__all__ = [
    "dataset_settings_from_pb",
    "dataset_settings_to_pb",
    "durability_from_pb",
    "durability_to_pb",
    "shard_info_from_pb",
    "shard_info_to_pb",
    "shard_kind_from_pb",
    "shard_kind_to_pb",
]

_DURABILITY = {
    pb.DURABILITY_UNSPECIFIED: Durability.WRITE_BACK,
    pb.DURABILITY_WRITE_BACK: Durability.WRITE_BACK,
    pb.DURABILITY_WRITE_THROUGH: Durability.WRITE_THROUGH,
}
_DURABILITY_PB = {
    Durability.WRITE_BACK: pb.DURABILITY_WRITE_BACK,
    Durability.WRITE_THROUGH: pb.DURABILITY_WRITE_THROUGH,
}
_KIND = {
    pb.SHARD_KIND_RAW: ShardKind.RAW,
    pb.SHARD_KIND_ARROW: ShardKind.ARROW,
    pb.SHARD_KIND_TENSOR: ShardKind.TENSOR,
}
_KIND_PB = {kind: value for value, kind in _KIND.items()}


def durability_from_pb(value: int) -> Durability:
    """Raises InvalidArgument for an unknown enum value."""
    try:
        return _DURABILITY[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(f"unknown durability value {value}") from None


def durability_to_pb(value: Durability) -> pb.Durability:
    return _DURABILITY_PB[value]


def shard_kind_from_pb(value: int) -> ShardKind:
    """Raises InvalidArgument for an unknown or unspecified kind."""
    try:
        return _KIND[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(f"unknown or unspecified shard kind {value}") from None


def shard_kind_to_pb(value: ShardKind) -> pb.ShardKind:
    return _KIND_PB[value]


def dataset_settings_from_pb(message: pb.DatasetSettings) -> DatasetSettings:
    """An empty policy name means the default policy. (Whether a name is a known
    policy is for the engine to say: UnknownPolicy.)"""
    return DatasetSettings(
        encrypted=message.encrypted,
        durability=durability_from_pb(message.durability),
        hot_quota_bytes=message.hot_quota_bytes,
        policy=message.policy or DEFAULT_POLICY_NAME,
        arrow_schema=message.arrow_schema,
        backlog_quota_bytes=message.backlog_quota_bytes,
    )


def dataset_settings_to_pb(settings: DatasetSettings) -> pb.DatasetSettings:
    return pb.DatasetSettings(
        encrypted=settings.encrypted,
        durability=durability_to_pb(settings.durability),
        hot_quota_bytes=settings.hot_quota_bytes,
        policy=settings.policy,
        arrow_schema=settings.arrow_schema,
        backlog_quota_bytes=settings.backlog_quota_bytes,
    )


def shard_info_to_pb(info: ShardInfo) -> pb.ShardInfo:
    return pb.ShardInfo(
        dataset=info.dataset,
        name=info.name,
        generation=info.generation,
        kind=shard_kind_to_pb(info.kind),
        frame_sizes=info.frame_sizes,
        size=info.size,
        created_at=info.created_at,
        encrypted=info.encrypted,
        hot=info.hot,
        archived=info.archived,
        access_count=info.access_count,
        last_access=info.last_access,
        access_frequency=info.access_frequency,
        pinned=info.pinned,
        pinned_until=info.pinned_until,
        rows=info.rows,
        waiting_for_room=info.waiting_for_room,
    )


def shard_info_from_pb(message: pb.ShardInfo) -> ShardInfo:
    return ShardInfo(
        dataset=message.dataset,
        name=message.name,
        generation=message.generation,
        kind=shard_kind_from_pb(message.kind),
        frame_sizes=tuple(message.frame_sizes),
        created_at=message.created_at,
        encrypted=message.encrypted,
        hot=message.hot,
        archived=message.archived,
        access_count=message.access_count,
        last_access=message.last_access,
        access_frequency=message.access_frequency,
        pinned=message.pinned,
        pinned_until=message.pinned_until,
        rows=message.rows if message.HasField("rows") else None,
        waiting_for_room=message.waiting_for_room,
    )
