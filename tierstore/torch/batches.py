"""Samples and batches out of a shard's converted record batches.

A shard arrives as an Arrow table of one or more record batches (one per frame);
:class:`ShardRows` keeps each record batch's columns as tensors (views of the frames, see
:mod:`tierstore.torch.arrow_tensors`) and finds row ``i`` without concatenating them.

- :meth:`ShardRows.row` is one sample: views of the shard's memory, no copy.
- :func:`assemble` builds one batch from rows of one or more shards: a view when the rows
  are one contiguous run of one record batch and the batch stays in this process, else
  one gather into a fresh tensor — allocated in shared memory when ``shared`` (a
  DataLoader worker), because a worker's batch is moved to shared memory to reach the main
  process anyway, and a view would drag its whole record batch along; in page-locked
  memory when ``pinned`` (torch's caching host allocator reuses its blocks).

Thread safety: a ShardRows is read-only after construction; share it freely.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import torch

from tierstore.torch.arrow_tensors import Column, Strings, batch_to_tensors

__all__ = ["Part", "ShardRows", "assemble"]

Sample = dict[str, Any]


class ShardRows:
    """A shard's rows as tensors, one group of columns per record batch.

    Raises UnsupportedData (from the conversion) for a column with nulls or no tensor form.
    """

    def __init__(
        self, table: pa.Table, strings: Strings = "error", generation: int | None = None
    ) -> None:
        #: the shard generation the rows came from (None: not known)
        self.generation = generation
        self.names: list[str] = list(table.schema.names)
        self.groups: list[dict[str, Column]] = [
            batch_to_tensors(batch, strings) for batch in table.to_batches() if batch.num_rows
        ]
        #: the tensor columns again as numpy arrays over the same memory (see _as_numpy):
        #: the batch gathers copy with numpy (see _copy_rows)
        self.arrays: list[dict[str, npt.NDArray[Any]]] = [
            {
                name: _as_numpy(column)
                for name, column in group.items()
                if isinstance(column, torch.Tensor)
            }
            for group in self.groups
        ]
        sizes = [_length(group, self.names) for group in self.groups]
        #: first row of each record batch, and the total at the end
        self.starts: npt.NDArray[np.int64] = np.concatenate(
            [[0], np.cumsum(sizes, dtype=np.int64)]
        ).astype(np.int64)
        self.rows = int(self.starts[-1])

    def __len__(self) -> int:
        return self.rows

    def locate(
        self, rows: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(record batch, row within it) of each of ``rows``."""
        groups = np.searchsorted(self.starts, rows, side="right") - 1
        return groups, rows - self.starts[groups]

    def row(self, index: int) -> Sample:
        """Row ``index`` as a sample: tensor views (no copy) and list items."""
        if not 0 <= index < self.rows:
            raise IndexError(f"row {index} of a {self.rows}-row shard")
        group = int(np.searchsorted(self.starts, index, side="right")) - 1
        local = index - int(self.starts[group])
        return {name: column[local] for name, column in self.groups[group].items()}


#: an integer dtype of each element width, to copy the bits of dtypes numpy lacks
_BITS: dict[int, torch.dtype] = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _as_numpy(tensor: torch.Tensor) -> npt.NDArray[Any]:
    """``tensor`` as a numpy array over the same memory. A dtype numpy lacks (bfloat16,
    float8: tensor shards view their stored integers back as those) becomes an integer
    of the same width, so a gather copies its exact bits; gather into a tensor of the same
    dtype through this function too, and the batch holds the same values."""
    try:
        return tensor.numpy()
    except TypeError:  # "Got unsupported ScalarType ..."
        return tensor.view(_BITS[tensor.dtype.itemsize]).numpy()


def _length(group: Mapping[str, Column], names: Sequence[str]) -> int:
    return len(group[names[0]]) if names else 0


@dataclass(frozen=True, slots=True)
class Part:
    """Rows ``rows`` (in this order) of ``shard``: one shard's share of a batch."""

    shard: ShardRows
    rows: npt.NDArray[np.int64]


def _contiguous(part: Part) -> tuple[int, int, int] | None:
    """(record batch, first row, stop) when the part is one ascending run inside one
    record batch (what an unshuffled read produces), else None."""
    rows = part.rows
    if len(rows) == 0 or int(rows[-1]) - int(rows[0]) != len(rows) - 1:
        return None
    if len(rows) > 1 and not bool(np.all(np.diff(rows) == 1)):
        return None
    groups, local = part.shard.locate(rows[[0, -1]])
    if groups[0] != groups[1]:
        return None
    return int(groups[0]), int(local[0]), int(local[1]) + 1


def _empty(shape: tuple[int, ...], dtype: torch.dtype, shared: bool, pinned: bool) -> torch.Tensor:
    if pinned:
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    if not shared:
        return torch.empty(shape, dtype=dtype)
    # Like torch's default_collate in a worker: allocate straight in shared memory, so the
    # batch crosses to the main process without another copy.
    numel = int(np.prod(shape, dtype=np.int64))
    storage = torch.UntypedStorage._new_shared(numel * dtype.itemsize)  # type: ignore[no-untyped-call]
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


#: each part's shard with (record batch, row within it) of each of its rows
Located: TypeAlias = Sequence[tuple[ShardRows, npt.NDArray[np.int64], npt.NDArray[np.int64]]]


def _gather(name: str, located: Located, shared: bool, pinned: bool) -> torch.Tensor:
    first = located[0][0].groups[0][name]
    assert isinstance(first, torch.Tensor)
    total = sum(len(local) for _, _, local in located)
    out = _empty((total, *first.shape[1:]), first.dtype, shared, pinned)
    if len(located) == 1 and bool((located[0][1] == located[0][1][0]).all()):
        # One record batch: gather straight into place.
        shard, groups, local = located[0]
        _take_rows(shard, int(groups[0]), name, local, out)
        return out
    _copy_rows(name, located, out)
    return out


# The copies run on numpy: numpy copies on the calling thread and releases the GIL, whereas
# a torch copy of a large tensor opens an intra-op parallel region. From several batch
# threads at once those regions oversubscribe the cores: with 4 threads on 2 cores,
# torch.stack gathered 3.9 GB/s and np.stack 8.9 GB/s (12 to 15 GB/s each alone).


def _take_rows(
    shard: ShardRows, group: int, name: str, local: npt.NDArray[np.int64], out: torch.Tensor
) -> None:
    source = shard.arrays[group][name]
    np.take(source, local, axis=0, out=_as_numpy(out), mode="clip")  # the rows are in range


def _copy_rows(name: str, located: Located, out: torch.Tensor) -> None:
    """Rows from several record batches: each row copied once, in order, straight into
    ``out``. (index_copy_ of an index_select temporary copies every row twice and, for
    small-dtype rows, runs an order of magnitude slower on CPU.)"""
    rows: list[npt.NDArray[Any]] = []
    for shard, groups, local in located:
        columns = shard.arrays
        for group, row in zip(groups.tolist(), local.tolist(), strict=True):
            rows.append(columns[group][name][row])
    np.stack(rows, out=_as_numpy(out))


def _pick(name: str, located: Located) -> list[Any]:
    picked: list[Any] = []
    for shard, groups, local in located:
        for group, row in zip(groups.tolist(), local.tolist(), strict=True):
            picked.append(shard.groups[group][name][row])
    return picked


def assemble(parts: Sequence[Part], *, shared: bool = False, pinned: bool = False) -> Sample:
    """One batch of the given rows, in order: a ``dict`` of tensors (``batch[0]`` is the
    first row) and lists for list columns.

    A single contiguous run of one record batch is returned as views when neither
    ``shared`` nor ``pinned``; anything else is gathered once into new tensors (in shared
    memory when ``shared``, page-locked when ``pinned``: that needs CUDA).
    ``parts`` must be non-empty, share one schema, and hold at least one row in all.
    """
    parts = [part for part in parts if len(part.rows)]
    names = parts[0].shard.names
    run = _contiguous(parts[0]) if len(parts) == 1 and not (shared or pinned) else None
    # Where each row lives, found once for every column.
    located = [(part.shard, *part.shard.locate(part.rows)) for part in parts] if run is None else []
    out: Sample = {}
    for name in names:
        if run is not None:
            group, start, stop = run
            out[name] = parts[0].shard.groups[group][name][start:stop]
            continue
        if isinstance(parts[0].shard.groups[0][name], list):
            out[name] = _pick(name, located)
        else:
            out[name] = _gather(name, located, shared, pinned)
    return out
