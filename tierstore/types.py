"""Frozen value types shared by every layer (stdlib only)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "ALL_DATASETS",
    "DatasetSettings",
    "Durability",
    "Grant",
    "Role",
    "ShardInfo",
    "ShardKind",
    "WrappedKey",
]


class Durability(enum.StrEnum):
    """When a put is acknowledged."""

    #: after the local LMDB commit (fsynced); the mover uploads from the journal.
    WRITE_BACK = "write-back"
    #: after the archive holds the shard generation as well.
    WRITE_THROUGH = "write-through"


class ShardKind(enum.StrEnum):
    """What a shard's frames hold."""

    RAW = "raw"  # fixed-size byte frames
    ARROW = "arrow"  # frame 0: IPC schema message; then one record-batch message per frame
    TENSOR = "tensor"  # an ARROW shard holding one fixed_shape_tensor column


@dataclass(frozen=True, slots=True)
class DatasetSettings:
    """Per-dataset settings, fixed at creation except where noted."""

    encrypted: bool = False
    durability: Durability = Durability.WRITE_BACK
    #: bytes this dataset may hold in the hot tier (0: no per-dataset quota).
    hot_quota_bytes: int = 0


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key wrapped (encrypted) by the master key ``key_id``."""

    key_id: str
    blob: bytes


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """What the catalog knows of one shard generation."""

    dataset: str
    name: str
    generation: int
    kind: ShardKind
    #: logical (plaintext) size of each frame, in order.
    frame_sizes: tuple[int, ...]
    created_at: float
    encrypted: bool
    hot: bool
    archived: bool
    #: access count and last access time (seconds since the epoch; 0 if never read).
    access_count: int = 0
    last_access: float = 0.0
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def size(self) -> int:
        """Logical size of the shard in bytes (sum of its frames' plaintext sizes)."""
        return sum(self.frame_sizes)

    @property
    def frame_count(self) -> int:
        """Number of frames."""
        return len(self.frame_sizes)


#: The dataset of a :class:`Grant` that applies to every dataset, present and future.
ALL_DATASETS = "*"


class Role(enum.StrEnum):
    """What a principal may do with a dataset; each role implies the ones below it."""

    READER = "reader"  # get, stat, list
    WRITER = "writer"  # and put, delete, pin, unpin, prefetch, evict
    ADMIN = "admin"  # and create, update, delete the dataset; on "*": tokens and keys

    @property
    def rank(self) -> int:
        """1 for reader, 2 for writer, 3 for admin (the proto's enum numbers)."""
        return _ROLE_RANK[self]

    def implies(self, other: Role) -> bool:
        """Whether holding this role grants everything ``other`` grants."""
        return self.rank >= other.rank


_ROLE_RANK = {Role.READER: 1, Role.WRITER: 2, Role.ADMIN: 3}


@dataclass(frozen=True, slots=True)
class Grant:
    """A role on one dataset, or on every dataset when ``dataset`` is :data:`ALL_DATASETS`."""

    dataset: str
    role: Role
