"""Which slot of the epoch this process reads: its rank, and its DataLoader worker.

The rank and world size come from ``torch.distributed`` when a process group is
initialized, else from the ``RANK`` and ``WORLD_SIZE`` environment variables that
``torchrun`` sets (read here and nowhere else; one without the other is refused), else
rank 0 of 1 — unless the dataset
object was given ``rank=`` and ``world_size=`` (the data-parallel rank, under tensor or
pipeline parallelism, where it is not the global one). The worker comes from
``torch.utils.data.get_worker_info()`` (worker 0 of 1 outside DataLoader workers).

They are resolved when iteration starts, in the process that iterates, so a dataset made
before ``init_process_group`` or before the DataLoader forks its workers still partitions
correctly.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import torch.distributed
import torch.utils.data

from tierstore.errors import InvalidArgument
from tierstore.torch.order import Slot
from tierstore.types import whole_number

__all__ = [
    "current_slot",
    "distributed_rank",
    "given_rank",
    "live_distributed_rank",
    "warn_if_idle",
]


def _env_int(environ: Mapping[str, str], name: str) -> int:
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer, got {value!r}") from None


def live_distributed_rank() -> tuple[int, int] | None:
    """``(rank, world_size)`` of this process's initialized process group, or ``None``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return None


def distributed_rank(
    environ: Mapping[str, str] | None = None, carried: tuple[int, int] | None = None
) -> tuple[int, int]:
    """``(rank, world_size)`` of this process: its process group's, else ``carried`` (the
    rank process's, brought along by a dataset pickled for a spawned or forkserver
    DataLoader worker, which has no process group of its own), else ``RANK`` and
    ``WORLD_SIZE``.

    Rank 0 of 1 when neither is set (an empty value counts as unset), or only
    ``WORLD_SIZE=1`` or only ``RANK=0``. Raises InvalidArgument when only one of them is
    set otherwise, when they are not integers, or when the rank is outside
    ``[0, WORLD_SIZE)``.
    """
    live = live_distributed_rank()
    if live is not None:
        return live
    if carried is not None:
        return carried
    env = os.environ if environ is None else environ
    named = {name: env.get(name, "") for name in ("RANK", "WORLD_SIZE")}
    unset = [name for name, value in named.items() if not value]
    if len(unset) == 2:
        return 0, 1
    if unset:
        # Either default would be a guess: WORLD_SIZE alone read as rank 0 of N in every
        # process, so they all read rank 0's share. But WORLD_SIZE=1 or RANK=0 alone can
        # only be one process (rank 0 of N alone would leave the other ranks nothing to
        # read by, and they would be refused here), as they always read.
        (missing,) = unset
        (present,) = (name for name in named if name != missing)
        if (present, named[present].strip()) in (("WORLD_SIZE", "1"), ("RANK", "0")):
            return 0, 1
        raise InvalidArgument(
            f"{present}={named[present]} is set but {missing} is not: set both (as torchrun "
            "does) or neither, or give the dataset object rank= and world_size="
        )
    world = _env_int(env, "WORLD_SIZE")
    rank = _env_int(env, "RANK")
    if world < 1 or not 0 <= rank < world:
        raise InvalidArgument(f"RANK={rank} and WORLD_SIZE={world} do not name a rank")
    return rank, world


def given_rank(rank: int | None, world_size: int | None) -> tuple[int, int] | None:
    """``(rank, world_size)`` as a dataset object was given them, checked; None when
    neither was given. Raises InvalidArgument for one without the other, or for a rank
    outside ``[0, world_size)``."""
    if rank is None and world_size is None:
        return None
    if rank is None or world_size is None:
        raise InvalidArgument("give rank= and world_size= together (or neither)")
    checked_rank, world = whole_number(rank), whole_number(world_size)  # numpy's too
    if checked_rank is None:
        raise InvalidArgument(f"rank must be an int, got {rank!r}")
    if world is None:
        raise InvalidArgument(f"world_size must be an int, got {world_size!r}")
    rank, world_size = checked_rank, world
    if world_size < 1 or not 0 <= rank < world_size:
        raise InvalidArgument(f"rank={rank} and world_size={world_size} do not name a rank")
    return rank, world_size


def current_slot(
    environ: Mapping[str, str] | None = None,
    carried: tuple[int, int] | None = None,
    given: tuple[int, int] | None = None,
) -> Slot:
    """This process's slot: its rank — ``given`` (the data-parallel rank a dataset object
    was given), else :func:`distributed_rank` — and its worker if it is a DataLoader
    worker."""
    rank, world = given if given is not None else distributed_rank(environ, carried)
    info = torch.utils.data.get_worker_info()
    if info is None:
        return Slot(rank, world)
    return Slot(rank, world, info.id, info.num_workers)


def warn_if_idle(shards: int, slot: Slot) -> None:
    """Warn when there are fewer shards than slots: the surplus slots read nothing.

    Each rank's first worker warns (each rank is its own process, and may be on its own
    host), the others not: every worker said the same, and a review's 8 workers printed
    it 8 times an epoch.
    """
    if shards < slot.count and slot.worker == 0:
        warnings.warn(
            f"{shards} shard(s) for {slot.world} rank(s) x {slot.workers} worker(s) = "
            f"{slot.count} readers: {slot.count - shards} of them get no shard and yield "
            "nothing. Use fewer workers, or write the dataset as more, smaller shards.",
            UserWarning,
            stacklevel=3,
        )
