"""Which samples a DataLoader worker reads in an epoch, in which order, and where it stands.

Pure functions and frozen value types, no I/O: the iterable dataset walks exactly these
helpers, and the property tests (``tests/torch/test_order.py``) check them directly.

The order of one epoch, for ``N`` shards sorted by name, ``W`` ranks and ``K`` workers per
rank (``S = W * K`` *slots*; worker ``w`` of rank ``r`` is slot ``r + W * w``):

1. the **global shard order** is ``tierstore.plans.epoch_order(N, kind, seed, epoch)``
   (a seeded permutation for ``shuffle``, name order otherwise);
2. rank ``r`` takes ``order[r::W]``, and its worker ``w`` takes every ``K``-th of those,
   ``order[r::W][w::K] == order[r + W*w :: W*K]`` — exactly what the server regenerates
   from ``SamplerPlan(kind, seed, epoch, rank=r + W*w, world_size=W*K)``;
3. each shard's **row order** is a permutation seeded by (seed, epoch, shard name) — the
   same in every slot and for every ``W`` and ``K``.

So the global order and each shard's row order do not depend on the number of ranks or
workers; only which slot reads a shard does (and, above this module, how the DataLoader
interleaves its workers' outputs). Every (shard, row) is read by exactly one slot, once.

A worker's :class:`Position` is (epoch, shards of its list finished, rows of the next shard
consumed in that shard's row order): resuming from it yields exactly the samples that were
not yet yielded, whatever the batch size. A :class:`ResumeState` is a position plus the
layout it counts in — the shard list (count and digest), shuffle, seed and the slot — as a
plain ``dict`` (JSON- and ``torch.save``-friendly); :meth:`ResumeState.check` refuses to
apply it to another layout, saying what differs, instead of silently resuming elsewhere.
A state at the very start of an epoch means "epoch N from the beginning" and fits any
layout.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import xxhash

from tierstore.errors import InvalidArgument
from tierstore.plans import SamplerKind, SamplerPlan, epoch_order, shard_list_digest
from tierstore.types import whole_number

__all__ = [
    "EPOCH_LIMIT",
    "STATE_FORMAT",
    "Layout",
    "Position",
    "ResumeState",
    "Slot",
    "even_share",
    "global_samples",
    "position_after",
    "row_order",
    "sampler_plan",
    "shard_rows",
    "shards_from",
    "worker_samples",
    "worker_shards",
]

_SEED_MASK = (1 << 63) - 1  # plans take non-negative seeds
#: epochs are below this: an epoch is kept in 64 signed bits (shared with the workers),
#: where a larger one would silently wrap around to another epoch's order
EPOCH_LIMIT = 1 << 63


@dataclass(frozen=True, slots=True)
class Slot:
    """One reader of an epoch: worker ``worker`` of ``workers`` on rank ``rank`` of ``world``.

    Raises InvalidArgument when a count is below 1 or an index outside its count.
    """

    rank: int = 0
    world: int = 1
    worker: int = 0
    workers: int = 1

    def __post_init__(self) -> None:
        if self.world < 1 or self.workers < 1:
            raise InvalidArgument(
                f"world size and worker count must be at least 1, got {self.world} and "
                f"{self.workers}"
            )
        if not 0 <= self.rank < self.world or not 0 <= self.worker < self.workers:
            raise InvalidArgument(
                f"rank {self.rank} of {self.world} or worker {self.worker} of {self.workers} "
                "is out of range"
            )

    @property
    def index(self) -> int:
        """This slot's place among all slots: ``rank + world * worker``."""
        return self.rank + self.world * self.worker

    @property
    def count(self) -> int:
        """How many slots share the epoch: ``world * workers``."""
        return self.world * self.workers


@dataclass(frozen=True, slots=True)
class Position:
    """Where a worker stands in its epoch: ``shard`` shards of its list are finished and
    ``row`` rows of the next one were consumed (in that shard's row order).

    Raises InvalidArgument for a negative field or an epoch of ``EPOCH_LIMIT`` or more.
    """

    epoch: int = 0
    shard: int = 0
    row: int = 0

    def __post_init__(self) -> None:
        if self.epoch < 0 or self.shard < 0 or self.row < 0:
            raise InvalidArgument(f"a position cannot be negative: {self}")
        if self.epoch >= EPOCH_LIMIT:
            raise InvalidArgument(f"epoch must be below {EPOCH_LIMIT}, got {self.epoch}")


def _kind(shuffle: bool) -> SamplerKind:
    return SamplerKind.SHUFFLE if shuffle else SamplerKind.SEQUENTIAL


def sampler_plan(
    shuffle: bool, seed: int, epoch: int, slot: Slot, shards: Sequence[str] = ()
) -> SamplerPlan:
    """The access plan from which the server regenerates ``slot``'s shard order over
    ``shards`` (sorted by name), which it carries the digest of when given: the server
    refuses it once the shards under its prefix are others."""
    return SamplerPlan(
        _kind(shuffle),
        seed=seed,
        epoch=epoch,
        rank=slot.index,
        world_size=slot.count,
        shards_digest=shard_list_digest(shards) if shards else b"",
    )


def worker_shards(
    shards: Sequence[str], shuffle: bool, seed: int, epoch: int, slot: Slot
) -> list[str]:
    """The shards ``slot`` reads in ``epoch``, in order (``shards`` sorted by name).

    Equals ``tierstore.plans.rank_order(sampler_plan(shuffle, seed, epoch, slot), shards)``.
    Empty when there are fewer shards than slots and this slot's turn never comes.
    """
    order = epoch_order(len(shards), _kind(shuffle), seed, epoch)
    return [shards[int(i)] for i in order[slot.index :: slot.count]]


def even_share(rows: Sequence[int], shuffle: bool, seed: int, epoch: int, slot: Slot) -> int:
    """With even ranks: how many samples every slot of ``slot``'s layout yields in
    ``epoch`` — the fewest rows any slot's shards hold (``rows`` per shard, in name
    order). So every rank runs the same number of steps whatever its shards hold (and,
    with the same batch size and ``drop_last`` in every worker, the same number of
    batches); each slot's rows beyond the share are left out of the epoch."""
    order = epoch_order(len(rows), _kind(shuffle), seed, epoch)
    in_order = np.asarray(rows, dtype=np.int64)[order]
    return min(int(in_order[index :: slot.count].sum()) for index in range(slot.count))


def row_order(rows: int, shard: str, shuffle: bool, seed: int, epoch: int) -> npt.NDArray[np.int64]:
    """The order in which a shard's ``rows`` rows are read: a permutation determined by
    (seed, epoch, shard name) when shuffling, ``0..rows-1`` otherwise."""
    if not shuffle:
        return np.arange(rows, dtype=np.int64)
    # The shard's name (not its place in any list) seeds its rows, so the permutation is the
    # same whichever slot reads the shard.
    shard_seed = xxhash.xxh64_intdigest(shard.encode(), seed=seed & 0xFFFFFFFFFFFFFFFF)
    return epoch_order(rows, SamplerKind.SHUFFLE, shard_seed & _SEED_MASK, epoch)


def shards_from(shards: Sequence[str], start: Position) -> Iterator[tuple[int, str]]:
    """``(index, name)`` of the worker's shards still to read from ``start`` on."""
    for index in range(start.shard, len(shards)):
        yield index, shards[index]


def shard_rows(
    index: int, shard: str, rows: int, shuffle: bool, seed: int, start: Position
) -> npt.NDArray[np.int64]:
    """The rows of the worker's shard ``index`` still to read, in order: its row order,
    less the first ``start.row`` rows when ``index`` is the shard ``start`` points into."""
    skip = start.row if index == start.shard else 0
    return row_order(rows, shard, shuffle, seed, start.epoch)[skip:]


def position_after(epoch: int, index: int, consumed: int, rows: int) -> Position:
    """The position once ``consumed`` of the ``rows`` rows of the worker's shard ``index``
    are read. A finished shard points at the next one (row 0), so a state saved between two
    shards means the same thing however it was reached."""
    if consumed >= rows:
        return Position(epoch, index + 1, 0)
    return Position(epoch, index, consumed)


def worker_samples(
    shards: Sequence[str],
    rows: Mapping[str, int],
    shuffle: bool,
    seed: int,
    start: Position,
) -> Iterator[tuple[str, int, Position]]:
    """``(shard, row, position after it)`` for every sample of a worker's shard list from
    ``start`` on: the walk the iterable dataset makes, with the row counts given up front."""
    for index, shard in shards_from(shards, start):
        count = rows[shard]
        remaining = shard_rows(index, shard, count, shuffle, seed, start)
        done = count - len(remaining)
        for offset, row in enumerate(remaining.tolist(), start=1):
            yield shard, row, position_after(start.epoch, index, done + offset, count)


def global_samples(
    shards: Sequence[str], rows: Mapping[str, int], shuffle: bool, seed: int, epoch: int
) -> list[tuple[str, int]]:
    """Every ``(shard, row)`` of the epoch in the global order: shards in the global shard
    order, each shard's rows in its row order. Independent of ranks and workers."""
    return [
        (shard, row)
        for shard, row, _ in worker_samples(
            worker_shards(shards, shuffle, seed, epoch, Slot()),
            rows,
            shuffle,
            seed,
            Position(epoch),
        )
    ]


# Resume states.

STATE_FORMAT = "tierstore.torch.IterableDataset/1"


@dataclass(frozen=True, slots=True)
class Layout:
    """What a position is relative to; ``slot`` is None until iteration has started."""

    shards: int
    digest: str
    shuffle: bool
    seed: int
    slot: Slot | None = None
    #: fingerprint of the shards' generations ("" when unknown: a state saved before
    #: states carried it, which is then not checked for rewritten shards)
    contents: str = ""


@dataclass(frozen=True, slots=True)
class ResumeState:
    """A position and the layout it was taken in.

    ``generation``: the generation of the shard the position is inside, as it was read
    (None at a shard boundary, or when the source cannot tell). ``tracks_generation``:
    the state says so (states saved before they did are checked against ``contents``,
    a digest of every shard's generation as listed when the dataset object was made).
    """

    position: Position
    layout: Layout
    generation: int | None = None
    tracks_generation: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The state as a plain dict (the form ``state_dict()`` returns)."""
        slot = self.layout.slot
        return {
            "format": STATE_FORMAT,
            "epoch": self.position.epoch,
            "shard": self.position.shard,
            "row": self.position.row,
            "shards": self.layout.shards,
            "digest": self.layout.digest,
            "shuffle": self.layout.shuffle,
            "seed": self.layout.seed,
            "slot": None if slot is None else [slot.rank, slot.world, slot.worker, slot.workers],
            "contents": self.layout.contents,
            "generation": self.generation,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> ResumeState:
        """Parse :meth:`to_dict`'s form. Raises InvalidArgument for anything else."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise InvalidArgument(
                f"not a tierstore.torch IterableDataset state (expected format "
                f"{STATE_FORMAT!r}): {str(state)[:200]}"
            )
        try:
            if not isinstance(state["shuffle"], bool):  # bool("False") is True
                raise TypeError(f"shuffle is {state['shuffle']!r}, not True or False")
            slot_value = state["slot"]
            slot = None if slot_value is None else Slot(*(_count(v) for v in slot_value))
            generation = state.get("generation")
            return cls(
                Position(_count(state["epoch"]), _count(state["shard"]), _count(state["row"])),
                Layout(
                    shards=_count(state["shards"]),
                    digest=str(state["digest"]),
                    shuffle=state["shuffle"],
                    seed=_count(state["seed"]),
                    slot=slot,
                    contents=str(state.get("contents", "")),
                ),
                generation=None if generation is None else _count(generation),
                tracks_generation="generation" in state,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"malformed tierstore.torch state ({exc!r}): {state}") from exc

    @property
    def at_epoch_start(self) -> bool:
        """True when nothing of the epoch was read yet."""
        return self.position.shard == 0 and self.position.row == 0

    @property
    def _generation_checked(self) -> bool:
        """Whether the shard the position is inside is checked when it is read (see
        :meth:`check_generation`) rather than every shard's generation here: only that
        shard's rows are counted by the position (the shards before it are done, the
        ones after it are read whole, at their generation then)."""
        return self.tracks_generation and (self.position.row == 0 or self.generation is not None)

    def check_generation(self, shard: str, read: int | None) -> None:
        """Raise InvalidArgument when ``shard``, the one the position is inside, was read
        at generation ``read`` but the state counted rows of another generation."""
        if self.position.row and None not in (self.generation, read) and read != self.generation:
            raise InvalidArgument(
                f"this resume state does not fit this loader: shard {shard!r} was rewritten "
                f"since the state was saved inside it (generation {self.generation} then, "
                f"{read} now), so its position would name other rows. Restart the epoch "
                "with set_epoch()."
            )

    def check(self, layout: Layout, worker_shards: int) -> None:
        """Raise InvalidArgument unless this state can resume a worker with ``layout``
        reading ``worker_shards`` shards (an epoch-start state fits any layout)."""
        if self.at_epoch_start:
            return
        saved = self.layout
        problems = []
        if (saved.shards, saved.digest) != (layout.shards, layout.digest):
            problems.append(
                f"the shard list changed ({saved.shards} shards then, {layout.shards} now)"
            )
        elif (
            not self._generation_checked
            and saved.contents
            and layout.contents
            and saved.contents != layout.contents
        ):
            problems.append(
                "a shard was rewritten since it was saved (its generation differs), so a "
                "position inside it would name other rows"
            )
        if (saved.shuffle, saved.seed) != (layout.shuffle, layout.seed):
            problems.append(
                f"shuffle/seed differ (saved {saved.shuffle}/{saved.seed}, "
                f"now {layout.shuffle}/{layout.seed})"
            )
        if saved.slot != layout.slot:
            problems.append(
                f"it was saved by {_describe(saved.slot)}, this is {_describe(layout.slot)}"
            )
        if not problems and self.position.shard > worker_shards:
            problems.append(f"it points past the worker's {worker_shards} shards")
        if problems:
            raise InvalidArgument(
                "this resume state does not fit this loader: "
                + "; ".join(problems)
                + ". A mid-epoch state resumes only the same shards, seed, world size and "
                "num_workers (or restart the epoch with set_epoch())."
            )


def _count(value: object) -> int:
    """A state's field as the whole number >= 0 it must be; TypeError or ValueError
    (the state is malformed) for anything else: ``int()`` made an epoch of 1.9 epoch 1,
    and a seed of "0" seed 0."""
    number = whole_number(value)
    if number is None:
        raise TypeError(f"{value!r:.40} is not a whole number")
    if number < 0:
        raise ValueError(f"{number} is negative")
    return number


def _describe(slot: Slot | None) -> str:
    if slot is None:
        return "a dataset that had not started iterating"
    return f"rank {slot.rank} of {slot.world}, worker {slot.worker} of {slot.workers}"
