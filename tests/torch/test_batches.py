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


def test_gathers_of_every_column_kind_match_the_rows() -> None:
    def record_batch(first: int, size: int) -> pa.RecordBatch:
        ids = np.arange(first, first + size)
        images = (np.arange(size * 24, dtype=np.uint8) + first).reshape(size, 24)
        kind = pa.fixed_shape_tensor(pa.uint8(), (2, 3, 4), permutation=[2, 0, 1])
        lists = pa.FixedSizeListArray.from_arrays(pa.array(images.ravel()), 24)
        return pa.record_batch(
            {
                "flag": pa.array(ids % 3 == 0),
                "half": pa.array(ids.astype(np.float16)),
                "image": pa.ExtensionArray.from_storage(kind, lists),
                "pair": pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 2)), 2),
            }
        )

    rows = ShardRows(pa.Table.from_batches([record_batch(0, 5), record_batch(5, 4)]))
    for picks in ([8, 0, 6, 3, 5], [4, 1, 2]):  # across record batches, then within one
        batch = assemble([Part(rows, np.array(picks))], shared=True)
        for name in ("flag", "half", "image", "pair"):
            expected = [rows.row(i)[name] for i in picks]
            assert batch[name].shape == (len(picks), *expected[0].shape), name
            assert all(
                bool((got == want).all()) for got, want in zip(batch[name], expected, strict=True)
            ), name
