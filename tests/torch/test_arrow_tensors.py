"""Arrow columns to tensors (tierstore.torch.arrow_tensors): zero copies where promised —
the tensor's data pointer is the Arrow buffer's address — one copy elsewhere, and clear
errors for what has no tensor form."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

from tierstore.arrowio import frames_to_table, table_to_frames
from tierstore.errors import InvalidArgument, MalformedArrow, UnsupportedData
from tierstore.tensors import tensor_to_table
from tierstore.torch.arrow_tensors import (
    batch_to_tensors,
    check_schema,
    check_tensor_rows,
    column_to_tensor,
)

NUMERIC = [
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
]  # fmt: skip


def data_address(array: pa.Array) -> int:
    """Where element 0 of a primitive array lives."""
    return int(array.buffers()[1].address + array.offset * array.type.byte_width)


@pytest.mark.parametrize("dtype", NUMERIC)
def test_primitive_columns_are_views_of_the_arrow_buffer(dtype: str) -> None:
    values = np.arange(10).astype(dtype)
    array = pa.array(values).slice(3, 5)  # an offset, too
    tensor = column_to_tensor("c", array)
    assert tensor.data_ptr() == data_address(array)
    assert tensor.dtype == getattr(torch, dtype)
    assert tensor.numpy().tolist() == values[3:8].tolist()


def test_a_decoded_frame_is_not_copied() -> None:
    """The path shards take: frames → table (in place) → tensors (in place)."""
    table = pa.table({"x": np.arange(1000, dtype=np.float32)})
    frames = table_to_frames(table, 1 << 20)
    decoded = frames_to_table(frames)
    tensor = column_to_tensor("x", decoded.column("x").chunks[0])
    frame = frames[1]
    assert frame.address <= tensor.data_ptr() < frame.address + frame.size


def test_fixed_shape_tensor_columns_are_views_reshaped() -> None:
    values = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    array = pa.FixedShapeTensorArray.from_numpy_ndarray(values).slice(1, 2)
    tensor = column_to_tensor("t", array)
    assert tensor.shape == (2, 2, 3)
    assert tensor.data_ptr() == data_address(array.storage.flatten())
    assert np.array_equal(tensor.numpy(), values[1:3])


def test_permuted_tensor_columns_follow_the_arrow_spec() -> None:
    # Physical shape (2, 3, 4), permutation [2, 0, 1]: logical rows are (4, 2, 3).
    physical = np.arange(2 * 2 * 3 * 4, dtype=np.int32).reshape(2, 2, 3, 4)
    dtype = pa.fixed_shape_tensor(pa.int32(), [2, 3, 4], permutation=[2, 0, 1])
    storage = pa.FixedSizeListArray.from_arrays(pa.array(physical.ravel()), 24)
    tensor = column_to_tensor("t", pa.ExtensionArray.from_storage(dtype, storage))
    assert tensor.shape == (2, 4, 2, 3)
    assert np.array_equal(tensor.numpy(), physical.transpose(0, 3, 1, 2))
    assert tensor.data_ptr() == data_address(storage.flatten())  # still a view


def test_fixed_size_lists_are_views() -> None:
    storage = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(12, dtype=np.int16)), 4)
    tensor = column_to_tensor("l", storage)
    assert tensor.shape == (3, 4) and tensor.data_ptr() == data_address(storage.flatten())


def test_booleans_are_unpacked_into_a_copy() -> None:
    tensor = column_to_tensor("b", pa.array([True, False, True]))
    assert tensor.dtype == torch.bool and tensor.tolist() == [True, False, True]


def test_empty_columns_are_empty_tensors() -> None:
    assert column_to_tensor("e", pa.array([], pa.float64())).shape == (0,)


@pytest.mark.parametrize(
    "array",
    [pa.array([1, None, 3]), pa.array([1.5, None]), pa.array([True, None])],
    ids=["int", "float", "bool"],
)
def test_nulls_are_refused(array: pa.Array) -> None:
    with pytest.raises(UnsupportedData, match="column 'c' has 1 null"):
        column_to_tensor("c", array)


@pytest.mark.parametrize(
    "dtype",
    [pa.timestamp("s"), pa.list_(pa.int32()), pa.struct([("a", pa.int8())]), pa.decimal128(5, 2)],
)
def test_types_with_no_tensor_form_are_named(dtype: pa.DataType) -> None:
    schema = pa.schema([pa.field("odd", dtype)])
    with pytest.raises(UnsupportedData, match=r"column 'odd' of type .* cannot become a tensor"):
        check_schema(schema, "list")


def test_strings_are_lists_only_when_asked() -> None:
    batch = pa.record_batch({"s": ["a", "b"], "n": [1, 2]})
    with pytest.raises(UnsupportedData, match="strings='list'"):
        check_schema(batch.schema, "error")
    with pytest.raises(UnsupportedData, match="no tensor form"):
        batch_to_tensors(batch)
    out = batch_to_tensors(batch, "list")
    assert out["s"] == ["a", "b"] and out["n"].tolist() == [1, 2]
    with pytest.raises(InvalidArgument):
        check_schema(batch.schema, "sometimes")  # type: ignore[arg-type]


def test_conversions_leave_pyarrow_compute_unimported() -> None:
    # Its first import costs 0.03 to 0.2 s, which a DataLoader worker forked each epoch
    # would pay before its first batch.
    program = (
        "import sys, numpy as np, pyarrow as pa\n"
        "from tierstore.tensors import table_to_tensor, tensor_to_table\n"
        "from tierstore.torch.arrow_tensors import batch_to_tensors\n"
        "table = tensor_to_table(np.arange(24.0).reshape(2, 3, 4))\n"
        "assert table_to_tensor(table).shape == (2, 3, 4)\n"
        "kind = pa.fixed_shape_tensor(pa.uint8(), (2, 2))\n"
        "lists = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(12, dtype=np.uint8)), 4)\n"
        "images = pa.ExtensionArray.from_storage(kind, lists)\n"
        "batch = pa.record_batch([images, lists], names=['image', 'list']).slice(1)\n"
        "out = batch_to_tensors(batch)\n"
        "assert out['image'].shape == (2, 2, 2) and int(out['image'][0, 0, 0]) == 4\n"
        "assert out['list'].shape == (2, 4) and int(out['list'][1, 3]) == 11\n"
        "print('pyarrow.compute' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randn(6, 3, 4).to(torch.bfloat16),
        torch.randn(5, 2).to(torch.float8_e4m3fn),
        torch.tensor([[True, False], [False, True]]),
    ],
    ids=["bfloat16", "float8_e4m3fn", "bool"],
)
def test_a_tensor_shard_of_a_dtype_arrow_lacks_comes_back_as_that_dtype(
    tensor: torch.Tensor,
) -> None:
    # bfloat16 came back as torch.uint16: the stored bit patterns, not the values.
    table = table_to_frames_and_back(tensor_to_table(tensor))
    (batch,) = table.to_batches()
    column = batch_to_tensors(batch)["tensor"]
    assert isinstance(column, torch.Tensor)
    assert column.dtype == tensor.dtype
    assert torch.equal(column.view(torch.uint8), tensor.view(torch.uint8))


def table_to_frames_and_back(table: pa.Table) -> pa.Table:
    """``table`` as a shard stores and reads it (schema metadata included)."""
    return frames_to_table(table_to_frames(table))


@pytest.mark.parametrize("array", [np.arange(7, dtype=np.int32), np.array(3.5)], ids=["1-d", "0-d"])
def test_a_vector_or_scalar_tensor_shard_gives_one_scalar_sample_per_element(
    array: np.ndarray,
) -> None:
    # A label vector came back as samples of shape (1,), batching to (B, 1): a loss
    # taking (B,) targets broadcast or failed.
    table = table_to_frames_and_back(tensor_to_table(array))
    column = batch_to_tensors(table.to_batches()[0])["tensor"]
    assert isinstance(column, torch.Tensor)
    assert column.shape == (array.size,)
    assert column.tolist() == np.ravel(array).tolist()
    pairs = table_to_frames_and_back(tensor_to_table(np.array([1 + 2j, 3 - 4j])))
    column = batch_to_tensors(pairs.to_batches()[0])["tensor"]  # complex: float pairs still
    assert isinstance(column, torch.Tensor) and column.tolist() == [[1, 2], [3, -4]]


def test_a_tensor_shard_of_rows_wider_than_a_quarter_frame_is_refused_by_name() -> None:
    # Stored one element per row: it was read as 900,000 samples of one number each.
    table = tensor_to_table(np.arange(12, dtype=np.float32).reshape(3, 4), max_frame_bytes=32)
    with pytest.raises(UnsupportedData, match=r"shape \[3, 4\].*one element per row") as refused:
        check_tensor_rows(table.schema, "emb/0")
    assert "emb/0" in str(refused.value) and "read_tensor" in str(refused.value)
    check_tensor_rows(tensor_to_table(np.zeros((3, 4), np.float32)).schema, "rows")  # rows: fine
    check_tensor_rows(tensor_to_table(np.arange(5)).schema, "vector")  # flat, but a vector
    check_tensor_rows(pa.schema([pa.field("x", pa.int64())]), "no tensor")


@pytest.mark.parametrize(
    "shape",
    [
        b'["x"]',
        b"[null]",
        b"[[1]]",
        b'{"a": 1}',
        b"[1e400]",
        b"[3, 1e400]",
        b"\xff",
        b"[" * 100_000,
    ],
    ids=lambda shape: repr(shape[:12]),
)
def test_hostile_tensor_metadata_is_malformed_arrow(shape: bytes) -> None:
    # An Arrow shard may carry any schema metadata: a shape that is no list of sizes
    # raised ValueError, TypeError or OverflowError out of the error tree.
    metadata = {b"tierstore.tensor.layout": b"flat", b"tierstore.tensor.shape": shape}
    schema = pa.schema([pa.field("tensor", pa.int64())], metadata=metadata)
    with pytest.raises(MalformedArrow, match=r"tierstore\.tensor\.shape"):
        check_tensor_rows(schema, "s")


def test_a_tensor_column_of_bool_elements_is_refused_by_name() -> None:
    # It raised KeyError: DataType(bool) when converted directly.
    tensor_type = pa.fixed_shape_tensor(pa.bool_(), [2])
    storage = pa.array([[True, False], [False, True]], pa.list_(pa.bool_(), 2))
    array = pa.ExtensionArray.from_storage(tensor_type, storage)
    with pytest.raises(UnsupportedData, match=r"'flags'.*bool elements"):
        column_to_tensor("flags", array)
    with pytest.raises(UnsupportedData, match=r"'flags'.*bool elements"):
        batch_to_tensors(pa.record_batch([array], names=["flags"]))
    with pytest.raises(UnsupportedData, match=r"'flags'.*bool elements"):
        check_schema(pa.schema([pa.field("flags", tensor_type)]), "error")


def test_columns_of_one_name_are_refused_not_collapsed_into_one() -> None:
    # Samples are dicts keyed by column name: the second 'a' silently replaced the first.
    batch = pa.record_batch([pa.array([1]), pa.array([2.0]), pa.array([3])], names=["a", "b", "a"])
    with pytest.raises(UnsupportedData, match=r"\['a'\].*more than once"):
        batch_to_tensors(batch)
    with pytest.raises(UnsupportedData, match=r"\['a'\].*more than once"):
        check_schema(batch.schema, "error")
