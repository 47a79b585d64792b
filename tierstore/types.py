"""Frozen value types shared by every layer (stdlib only)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "DatasetSettings",
    "Durability",
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
