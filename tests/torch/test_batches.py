"""Samples and batches out of a shard's record batches (tierstore.torch.batches): views
when the rows are one run of one record batch, one gather otherwise, shared memory for
batches made in DataLoader workers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tierstore.torch.batches import Part, ShardRows, assemble


def shard(first: int, sizes: list[int]) -> ShardRows:
    """A shard of record batches of ``sizes`` rows, numbered from ``first``."""
    batches, at = [], first
    for size in sizes:
        values = np.arange(at, at + size, dtype=np.int64)
        batches.append(pa.record_batch({"v": values, "w": values.astype(np.float32) * 2}))
        at += size
    return ShardRows(pa.Table.from_batches(batches))


def test_rows_are_found_across_record_batches() -> None:
    rows = shard(0, [3, 0, 4, 2])
    assert len(rows) == 9
    assert [int(rows.row(i)["v"]) for i in range(9)] == list(range(9))
    with pytest.raises(IndexError):
        rows.row(9)


def test_a_contiguous_run_is_a_view_and_anything_else_one_gather() -> None:
    rows = shard(0, [5, 5])
    view = assemble([Part(rows, np.arange(1, 4))])
    assert view["v"].tolist() == [1, 2, 3]
    assert view["v"].data_ptr() == rows.groups[0]["v"].data_ptr() + 8  # type: ignore[union-attr]
    mixed = assemble([Part(rows, np.array([9, 0, 5, 4])), Part(shard(100, [2]), np.array([1]))])
    assert mixed["v"].tolist() == [9, 0, 5, 4, 101]
    assert mixed["w"].tolist() == [18.0, 0.0, 10.0, 8.0, 202.0]
    assert mixed["v"].is_contiguous()


def test_worker_batches_are_gathered_into_shared_memory() -> None:
    rows = shard(0, [6])
    batch = assemble([Part(rows, np.arange(2, 5))], shared=True)
    assert batch["v"].is_shared() and batch["v"].tolist() == [2, 3, 4]
    assert batch["v"].untyped_storage().nbytes() == 3 * 8  # not the whole record batch
