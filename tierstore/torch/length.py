"""How many samples or batches a rank's epoch holds: the streaming dataset's ``len()``.

Pure: worked out from the shard list, each shard's row count and the epoch's shard
order (:mod:`tierstore.torch.order`), the same partition the readers iterate. Every
reader (rank x DataLoader worker) makes its own batches, and with even ranks has its own
share, so the count of batches depends on the worker count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tierstore.errors import InvalidArgument
from tierstore.torch.order import Slot, even_share, worker_shards

__all__ = ["EpochShape", "checked_even_share", "epoch_items"]


@dataclass(frozen=True, slots=True)
class EpochShape:
    """What decides an epoch's partition and batching, besides the slot and the epoch."""

    shuffle: bool
    seed: int
    batch_size: int | None
    drop_last: bool
    even_ranks: bool


def checked_even_share(
    rows: Sequence[int], shuffle: bool, seed: int, epoch: int, slot: Slot
) -> int:
    """:func:`~tierstore.torch.order.even_share`, refused (InvalidArgument) when some
    reader of ``slot``'s layout has no rows while others have some: every reader would
    yield nothing."""
    share = even_share(rows, shuffle, seed, epoch, slot)
    if share == 0 and any(rows):
        raise InvalidArgument(
            f"even_ranks: among {slot.world} rank(s) x {slot.workers} worker(s) some "
            f"reader gets no rows of the {len(rows)} shard(s) in epoch {epoch}, so "
            "every reader would yield nothing; use fewer workers, or write the dataset "
            "as more, smaller shards"
        )
    return share


def epoch_items(
    names: Sequence[str],
    rows: Sequence[int],
    shape: EpochShape,
    epoch: int,
    rank: int,
    world: int,
    workers: int,
) -> int:
    """Samples (or batches, with ``shape.batch_size``) that rank ``rank`` of ``world``
    yields in ``epoch``, summed over its ``workers`` readers; ``rows`` per shard of
    ``names`` (sorted by name). Raises InvalidArgument as :func:`checked_even_share`."""
    slots = [Slot(rank, world, worker, workers) for worker in range(workers)]
    if shape.even_ranks:
        share = checked_even_share(rows, shape.shuffle, shape.seed, epoch, slots[0])
        per_reader = [share] * workers
    else:
        count = dict(zip(names, rows, strict=True))
        shards = [worker_shards(names, shape.shuffle, shape.seed, epoch, slot) for slot in slots]
        per_reader = [sum(count[name] for name in reader) for reader in shards]
    size = shape.batch_size
    if size is None:
        return sum(per_reader)
    return sum(n // size if shape.drop_last else -(-n // size) for n in per_reader)
