"""Access plans: the order in which a reader will read a dataset's shards.

A loader declares its plan compactly — a :class:`SamplerPlan` (sampler kind, seed,
epoch, rank, world size, number of epochs) — and the server regenerates the very
same order from it, or it sends an explicit list of shard names. Both sides call
:func:`rank_order` on the same sorted shard list, so the order is defined once, here.

Orders are stable across platforms and library versions: the shuffle sorts by a
SplitMix64 hash of (seed, epoch, index) computed with numpy integer arithmetic, not
by a library's random stream (whose output may change between versions).

The global order of an epoch is independent of rank and worker counts; a rank takes
every ``world_size``-th entry of it starting at ``rank`` (so ranks interleave and the
union over ranks is the global order, each entry exactly once).

The order is of the shard list, so a reader that lists its shards once and a server that
lists them at the declaration disagree once shards are added or deleted in between: a
plan may carry :func:`shard_list_digest` of the names its reader listed, and the server
refuses it (PlanShardsChanged) when its own list differs.
"""

from __future__ import annotations

import enum
import hashlib
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tierstore.errors import InvalidArgument
from tierstore.types import seconds_up_to, whole_number

__all__ = [
    "DEFAULT_PLAN_TTL_S",
    "MAX_PLAN_EPOCHS",
    "MAX_PLAN_TTL_S",
    "SHARD_LIST_DIGEST_BYTES",
    "SamplerKind",
    "SamplerPlan",
    "check_plan_ttl",
    "epoch_order",
    "plan_indices",
    "rank_order",
    "shard_list_digest",
]

#: the most epochs one plan may declare (a longer job declares again).
MAX_PLAN_EPOCHS = 64
#: the longest a plan may live without a position report (a week).
MAX_PLAN_TTL_S = 7 * 86400.0
#: how long a plan lives without a position report when its declarer names no time.
DEFAULT_PLAN_TTL_S = 300.0

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
#: the length of :func:`shard_list_digest` (SHA-256)
SHARD_LIST_DIGEST_BYTES = 32


class SamplerKind(enum.StrEnum):
    """How a sampler orders one epoch."""

    #: every shard once, in name order.
    SEQUENTIAL = "sequential"
    #: every shard once, in a seeded permutation.
    SHUFFLE = "shuffle"
    #: ``samples_per_epoch`` draws with replacement.
    REPLACEMENT = "replacement"


@dataclass(frozen=True, slots=True)
class SamplerPlan:
    """A reader's plan, from which the order is regenerated.

    ``samples_per_epoch`` is only for :attr:`SamplerKind.REPLACEMENT` (0 = as many
    draws as there are shards). ``shards_digest``: :func:`shard_list_digest` of the
    names the reader's order is made over, in catalog order (as the service lists them),
    which the server checks against the names it regenerates from (empty: not
    checked). Raises InvalidArgument from :meth:`validate`.
    """

    kind: SamplerKind
    seed: int = 0
    epoch: int = 0
    rank: int = 0
    world_size: int = 1
    epochs: int = 1
    samples_per_epoch: int = 0
    shards_digest: bytes = b""

    def __post_init__(self) -> None:
        # A kind given by its name ("shuffle") is that kind, as on the wire: left a
        # plain string, it matched no kind below and ordered as draws with replacement.
        object.__setattr__(self, "kind", _sampler_kind(self.kind))
        # Numpy integers become the ints they are (a numpy seed overflowed the
        # SplitMix64 mask); a float or a string is refused here, not deep in numpy.
        for name in ("seed", "epoch", "rank", "world_size", "epochs", "samples_per_epoch"):
            value = getattr(self, name)
            number = whole_number(value)
            if number is None:
                raise InvalidArgument(f"{name} must be a whole number, got {value!r:.40}")
            object.__setattr__(self, name, number)
        if not isinstance(self.shards_digest, bytes | bytearray | memoryview):
            raise InvalidArgument(
                f"shards_digest must be bytes, got {type(self.shards_digest).__name__}"
            )
        object.__setattr__(self, "shards_digest", bytes(self.shards_digest))

    def validate(self) -> None:
        """Raise InvalidArgument if the fields do not describe a plan."""
        if self.world_size < 1:
            raise InvalidArgument(f"world_size must be at least 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise InvalidArgument(
                f"rank must be in [0, world_size={self.world_size}), got {self.rank}"
            )
        if not 1 <= self.epochs <= MAX_PLAN_EPOCHS:
            raise InvalidArgument(f"epochs must be in [1, {MAX_PLAN_EPOCHS}], got {self.epochs}")
        if self.epoch < 0 or self.seed < 0:
            raise InvalidArgument("seed and epoch must not be negative")
        # Both are uint64 on the wire and in the hash: a larger one ordered as another
        # (a seed of 2**64 as 0), and the last epoch of a plan must be one too.
        if self.seed >= 1 << 64:
            raise InvalidArgument(f"seed must be below 2**64, got {self.seed}")
        if self.epoch + self.epochs > 1 << 64:
            raise InvalidArgument(
                f"epoch must leave room for the plan's {self.epochs} epochs below 2**64, "
                f"got {self.epoch}"
            )
        if self.samples_per_epoch < 0:
            raise InvalidArgument("samples_per_epoch must not be negative")
        if self.samples_per_epoch and self.kind is not SamplerKind.REPLACEMENT:
            raise InvalidArgument("samples_per_epoch applies only to the replacement sampler")
        if self.shards_digest and len(self.shards_digest) != SHARD_LIST_DIGEST_BYTES:
            raise InvalidArgument(
                f"shards_digest is {SHARD_LIST_DIGEST_BYTES} bytes (shard_list_digest) or "
                f"empty, got {len(self.shards_digest)}"
            )


def _sampler_kind(kind: object) -> SamplerKind:
    """``kind`` as a :class:`SamplerKind` (a member or its name). Raises InvalidArgument."""
    try:
        return SamplerKind(kind)  # type: ignore[arg-type]  # checked here
    except ValueError:
        raise InvalidArgument(
            f"unknown sampler kind {kind!r:.40}: one of {', '.join(SamplerKind)}"
        ) from None


def _splitmix64(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finaliser, elementwise (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _stream(
    seed: int, epoch: int, count: int, start: int = 0, step: int = 1
) -> npt.NDArray[np.uint64]:
    """Pseudo-random uint64 values determined by (seed, epoch) alone: those at positions
    ``start, start + step, ...`` below ``count`` of one stream (each value depends on its
    position only, so a rank's share costs its own length, not the whole stream's)."""
    # operator.index: a numpy seed or epoch is masked as the int it is (np.int64 & 2**64 - 1
    # overflowed).
    seed, epoch = operator.index(seed), operator.index(epoch)
    base = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    base = _splitmix64(np.array([base ^ np.uint64(epoch & 0xFFFFFFFFFFFFFFFF)], dtype=np.uint64))[0]
    positions = np.arange(start, count, step, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _splitmix64(positions * np.uint64(0x9E3779B97F4A7C15) + base)


def _draws(
    count: int, seed: int, epoch: int, samples: int, start: int = 0, step: int = 1
) -> npt.NDArray[np.int64]:
    """Draws with replacement from ``count`` shards (``samples`` of them, or ``count``):
    those at positions ``start, start + step, ...`` of the epoch's draws."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    values = _stream(seed, epoch, samples or count, start, step)
    return (values % np.uint64(count)).astype(np.int64)


def epoch_order(
    count: int, kind: SamplerKind, seed: int, epoch: int, samples: int = 0
) -> npt.NDArray[np.int64]:
    """The global order of one epoch over ``count`` shards, as indices into them.
    Raises InvalidArgument for an unknown ``kind``."""
    kind = _sampler_kind(kind)
    if kind is SamplerKind.SEQUENTIAL:
        return np.arange(count, dtype=np.int64)
    if kind is SamplerKind.SHUFFLE:
        return np.argsort(_stream(seed, epoch, count), kind="stable").astype(np.int64)
    return _draws(count, seed, epoch, samples)


def plan_indices(plan: SamplerPlan, count: int) -> npt.NDArray[np.int64]:
    """The indices (into the sorted shard list of ``count`` shards) that ``plan``'s
    rank reads, over all its epochs in order. Raises InvalidArgument."""
    plan.validate()
    rank, world = plan.rank, plan.world_size
    if plan.kind is SamplerKind.REPLACEMENT:
        # Only this rank's draws are made: the epoch's may be far more than its share
        # (a plan of 64 entries asked the server for 40 million draws, a GiB).
        parts = [
            _draws(count, plan.seed, plan.epoch + offset, plan.samples_per_epoch, rank, world)
            for offset in range(plan.epochs)
        ]
    else:
        parts = [
            epoch_order(count, plan.kind, plan.seed, plan.epoch + offset)[rank::world]
            for offset in range(plan.epochs)
        ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def rank_order(plan: SamplerPlan, shards: Sequence[str]) -> list[str]:
    """The shard names ``plan``'s rank reads, in order. ``shards`` must be sorted by
    name (the catalog's order). Raises InvalidArgument."""
    return [shards[int(index)] for index in plan_indices(plan, len(shards))]


def shard_list_digest(names: Iterable[str]) -> bytes:
    """SHA-256 of ``names`` in their order and of their count: each name's UTF-8 length
    (8 bytes, big-endian) then the name, then the count, so no two lists share one by
    where their names' joins fall. What a :class:`SamplerPlan` carries as
    ``shards_digest``. Pure and thread-safe."""
    digest = hashlib.sha256()
    count = 0
    for name in names:
        encoded = name.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
        count += 1
    digest.update(count.to_bytes(8, "big"))
    return digest.digest()


def check_plan_ttl(ttl_s: object, name: str = "ttl_s") -> float:
    """``ttl_s`` as a float: how long a plan lives without a position report, a number
    of seconds above 0 and at most :data:`MAX_PLAN_TTL_S` (not a bool, not NaN).
    InvalidArgument naming the argument ``name`` otherwise."""
    seconds = seconds_up_to(ttl_s, MAX_PLAN_TTL_S)
    if seconds is None:
        raise InvalidArgument(
            f"{name} must be a number of seconds above 0 and at most {MAX_PLAN_TTL_S:.0f} "
            f"(a week), got {ttl_s!r:.40}"
        )
    return seconds
