"""Tests for tierstore.tensors: numpy arrays and torch tensors as Arrow shards."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.buffers import KIB, detached, misaligned_body, within
from tierstore import tensors
from tierstore.arrowio import LettingGo, frames_to_table, table_to_frames, validate_arrow_frames
from tierstore.errors import MalformedArrow, UnsupportedData, WrongShardKind
from tierstore.tensors import (
    check_tensor_schema,
    is_tensor_schema,
    table_to_tensor,
    tensor_to_frames,
    tensor_to_table,
)

# ---------------------------------------------------------------- tensors

NUMPY_DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
]  # fmt: skip
SHAPES = [(), (1,), (7,), (3, 4), (2, 3, 4), (0, 5), (5, 0), (0,), (4, 1, 1, 2)]


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8)
    array = raw.view(dtype).reshape(shape) if dtype != "bool" else (raw % 2 == 1).reshape(shape)
    return array


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert isinstance(b, np.ndarray)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()  # bitwise: NaN payloads and -0.0 included


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_numpy_tensor_roundtrip(dtype: str, shape: tuple[int, ...]) -> None:
    array = sample(dtype, shape)
    frames = detached(tensor_to_frames(array, 64 * KIB))
    schema = validate_arrow_frames(frames)
    assert is_tensor_schema(schema)
    assert_same(array, table_to_tensor(frames_to_table(frames)))


def test_a_tensor_whose_body_is_not_8_byte_aligned_is_refused() -> None:
    # It was stored, and read back as an array whose flags.aligned was False.
    frames = tensor_to_frames(np.arange(64, dtype=np.float64).reshape(8, 8))
    with pytest.raises(MalformedArrow, match="not 8-byte aligned"):
        validate_arrow_frames([frames[0], misaligned_body(frames[1])])


def test_tensor_layouts() -> None:
    table = tensor_to_table(np.zeros((10, 3, 4), np.float32))
    assert table.schema.metadata[b"tierstore.tensor.layout"] == b"rows"
    assert table.num_rows == 10 and table.column("tensor").type.shape == [3, 4]
    wide = tensor_to_table(np.zeros((2, 1000), np.float64), max_frame_bytes=16 * KIB)
    assert wide.schema.metadata[b"tierstore.tensor.layout"] == b"flat"
    assert wide.num_rows == 2000 and wide.column("tensor").type.shape == [1]
    complex_rows = tensor_to_table(np.zeros((4, 3), np.complex64))
    assert complex_rows.column("tensor").type.shape == [3, 2]
    assert not tensor_to_table(np.zeros(3)).schema.field("tensor").nullable


def test_large_multi_frame_tensor() -> None:
    array = np.random.default_rng(1).standard_normal((400, 64, 32)).astype(np.float32)
    frames = tensor_to_frames(array, 256 * KIB)
    assert len(frames) > 10 and all(frame.size <= 256 * KIB for frame in frames)
    table = frames_to_table(detached(frames))
    assert table.column("tensor").num_chunks == len(frames) - 1
    assert_same(array, table_to_tensor(table))
    flat = np.arange(300_000, dtype=np.int64)  # 1-d: flat layout, still many frames
    frames = tensor_to_frames(flat, 64 * KIB)
    assert len(frames) > 30
    assert_same(flat, table_to_tensor(frames_to_table(frames)))


def test_tensor_zero_copy_both_ways() -> None:
    array = np.arange(1000, dtype=np.float32).reshape(100, 10)
    table = tensor_to_table(array)
    values = table.column("tensor").chunk(0).storage.flatten()
    assert values.buffers()[1].address == array.ctypes.data
    frames = detached(tensor_to_frames(array))
    assert len(frames) == 2
    back = table_to_tensor(frames_to_table(frames))
    assert within(pa.foreign_buffer(back.ctypes.data, back.nbytes), frames[1])
    assert not back.flags.writeable


def test_non_contiguous_and_byte_swapped() -> None:
    base = np.arange(60, dtype=np.int32).reshape(3, 4, 5)
    for array in (base.transpose(2, 0, 1), base[:, ::2, 1:], base.astype(">i4"), base.T[::-1]):
        back = table_to_tensor(frames_to_table(tensor_to_frames(array)))
        assert np.array_equal(back, array) and back.dtype == np.int32


@pytest.mark.parametrize(
    "array",
    [
        np.array(["a", "b"]),
        np.array([b"a"]),
        np.array([object()]),
        np.array(["2020-01-01"], "datetime64[D]"),
        np.zeros(2, np.longdouble) if np.dtype(np.longdouble).itemsize > 8 else np.array(["x"]),
        np.zeros(2, [("a", "i4")]),
        [1, 2, 3],
    ],
    ids=["str", "bytes", "object", "datetime", "longdouble", "record", "list"],
)
def test_unsupported_tensors(array: Any) -> None:
    with pytest.raises(UnsupportedData):
        tensor_to_table(array)


@pytest.mark.parametrize(
    "array",
    [
        np.ma.array([1, 2, 3], mask=[False, True, False]),
        np.ma.array(np.arange(6.0).reshape(2, 3), mask=[[False, False, True], [False] * 3]),
        np.ma.array([1, 2, 3]),  # nothing masked today: refused all the same
    ],
    ids=["masked", "2-d", "no mask"],
)
def test_masked_arrays_are_refused(array: np.ma.MaskedArray[Any, Any]) -> None:
    # The masked entries became nulls: the put was acknowledged, and every read of the
    # shard failed ("tensor column has 3 values for shape (3,) int64").
    with pytest.raises(UnsupportedData, match=r"masked array.*\.filled\(.*Arrow table"):
        tensor_to_table(array)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_a_matrix_is_stored_as_its_plain_data() -> None:
    matrix = np.matrix(np.arange(12.0).reshape(3, 4))
    for array in (matrix, matrix.T):
        back = table_to_tensor(frames_to_table(detached(tensor_to_frames(array))))
        assert type(back) is np.ndarray
        assert_same(np.asarray(array), back)


def test_a_numpy_scalar_is_stored_as_a_0d_array() -> None:
    # What arr.sum() gives was refused ("expected a numpy ndarray"), where a 0-d
    # array of the same value was stored.
    for scalar in (np.float64(1.5), np.int8(-3), np.bool_(True), np.complex64(1 - 2j)):
        back = table_to_tensor(tensor_to_table(scalar))
        assert isinstance(back, np.ndarray) and back.shape == () and back.dtype == scalar.dtype
        assert back.item() == scalar.item()
    with pytest.raises(UnsupportedData, match="not supported"):
        tensor_to_table(np.str_("text"))


def test_a_memory_map_is_stored_as_its_plain_data(tmp_path: Any) -> None:
    array = np.memmap(tmp_path / "map", np.float32, "w+", shape=(3, 4))
    array[:] = np.arange(12).reshape(3, 4)
    back = table_to_tensor(frames_to_table(detached(tensor_to_frames(array))))
    assert type(back) is np.ndarray
    assert_same(np.asarray(array), back)
    del array  # the map is closed before tmp_path goes


def test_a_tensor_column_holding_nulls_is_named_as_such() -> None:
    # Such shards were written by a put of a masked array before those were refused.
    good = tensor_to_table(np.arange(3))
    tensor_type = good.column("tensor").type
    storage = pa.FixedSizeListArray.from_arrays(pa.array([1, None, 3], pa.int64()), 1)
    bad = pa.Table.from_arrays(
        [pa.ExtensionArray.from_storage(tensor_type, storage)], schema=good.schema
    )
    with pytest.raises(MalformedArrow, match="1 null value"):
        table_to_tensor(bad)


def test_table_to_tensor_needs_tensor_metadata() -> None:
    with pytest.raises(WrongShardKind):
        table_to_tensor(pa.table({"tensor": [1, 2]}))
    assert not is_tensor_schema(pa.schema([("tensor", pa.int64())]))


def test_table_to_tensor_rejects_inconsistent_metadata() -> None:
    table = tensor_to_table(np.zeros((2, 3), np.float32))
    metadata = dict(table.schema.metadata)
    for key, value in [
        (b"tierstore.tensor.shape", b"[2, 4]"),
        (b"tierstore.tensor.shape", b"not json"),
        (b"tierstore.tensor.dtype", b"float64"),
        (b"tierstore.tensor.dtype", b"object"),
        (b"tierstore.tensor.shape", b"[true, 6]"),  # True is no dimension (a TypeError)
        (b"tierstore.tensor.shape", b"[2.0, 3]"),
        (b"tierstore.tensor.shape", b"[2, 1e400]"),  # a float: inf
        (b"tierstore.tensor.shape", b"[" * 100_000),  # RecursionError from json
        (b"tierstore.tensor.shape", b'{"2": 3}'),
    ]:
        bad = table.replace_schema_metadata({**metadata, key: value})
        with pytest.raises(MalformedArrow):
            table_to_tensor(bad)


def test_a_tensor_of_more_axes_than_numpy_allows_is_refused() -> None:
    # 71 axes (all of size 1 but the last): declared a tensor, it was stored and every
    # read raised ValueError from numpy's reshape.
    table = tensor_to_table(np.arange(6, dtype=np.int64))
    shape = b"[" + b"1, " * 70 + b"6]"
    bad = table.replace_schema_metadata({**table.schema.metadata, b"tierstore.tensor.shape": shape})
    with pytest.raises(MalformedArrow, match="71 axes"):
        check_tensor_schema(bad.schema, bad.num_rows)
    with pytest.raises(MalformedArrow, match="71 axes"):
        table_to_tensor(bad)


# ---------------------------------------------------------------- torch


def test_torch_roundtrip_all_dtypes() -> None:
    torch = pytest.importorskip("torch")
    dtypes = [
        torch.bool,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.complex64,
        torch.complex128,
        torch.uint16,
        torch.uint32,
        torch.uint64,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
    ]
    for dtype in dtypes:
        for shape in [(), (5,), (3, 4, 2), (0, 3)]:
            bits = torch.randint(0, 256, (*shape, dtype.itemsize), dtype=torch.uint8)
            tensor = bits.view(dtype).reshape(shape) if shape != () else bits.view(dtype)[0]
            if dtype == torch.bool:
                tensor = tensor.to(torch.uint8).bitwise_and(1).to(torch.bool)
            frames = detached(tensor_to_frames(tensor, 16 * KIB))
            back = table_to_tensor(frames_to_table(frames))
            assert isinstance(back, torch.Tensor), dtype
            assert back.dtype == dtype and back.shape == tensor.shape
            assert torch.equal(
                back.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)
            )


def test_torch_bfloat16_values_and_zero_copy() -> None:
    torch = pytest.importorskip("torch")
    tensor = torch.linspace(-3, 3, 120).reshape(10, 12).to(torch.bfloat16)
    frames = detached(tensor_to_frames(tensor))
    back = table_to_tensor(frames_to_table(frames))
    assert back.dtype == torch.bfloat16 and torch.equal(back, tensor)
    assert within(pa.foreign_buffer(back.data_ptr(), back.nbytes), frames[1])


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_torch_views_and_grad() -> None:
    torch = pytest.importorskip("torch")
    base = torch.randn(4, 6, requires_grad=True)
    for tensor in (base, base.t(), base[:, ::2]):
        back = table_to_tensor(frames_to_table(tensor_to_frames(tensor)))
        assert torch.equal(back, tensor.detach())
    conj = torch.randn(3, dtype=torch.complex64).conj()
    assert torch.equal(table_to_tensor(tensor_to_table(conj)), conj.resolve_conj())
    with pytest.raises(UnsupportedData):
        tensor_to_table(torch.zeros(2, dtype=torch.complex32))
    # Not the dtype: the layout or the device (the message blamed the dtype).
    with pytest.raises(UnsupportedData, match=r"layout torch.sparse_coo .* \.to_dense"):
        tensor_to_table(torch.eye(3).to_sparse())
    with pytest.raises(UnsupportedData, match="meta device"):
        tensor_to_table(torch.zeros(3, device="meta"))


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_torch_nested_tensors_are_refused_as_such() -> None:
    torch = pytest.importorskip("torch")
    # Its layout is torch.strided: refused, but the message blamed the dtype (float32).
    nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    with pytest.raises(UnsupportedData, match=r"nested torch tensor.*unbind\(\)"):
        tensor_to_table(nested)


@pytest.mark.filterwarnings("ignore:The PyTorch API of MaskedTensors is in prototype stage")
def test_torch_masked_tensors_are_refused_as_such() -> None:
    torch = pytest.importorskip("torch")
    masked = torch.masked.masked_tensor(torch.ones(3), torch.tensor([True, False, True]))
    # Refused before, but the message blamed the dtype (float32).
    with pytest.raises(UnsupportedData, match=r"MaskedTensor.*to_tensor\("):
        tensor_to_table(masked)


def test_torch_metadata_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(tensors, "_import_torch", lambda: None)
    back = table_to_tensor(tensor_to_table(torch.arange(6).reshape(2, 3)))
    assert isinstance(back, np.ndarray) and back.tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(UnsupportedData, match="bfloat16"):
        table_to_tensor(tensor_to_table(torch.zeros(2, dtype=torch.bfloat16)))


# ---------------------------------------------------------------- properties


@settings(max_examples=80, deadline=None)
@given(
    array=hnp.arrays(
        dtype=st.sampled_from([np.dtype(name) for name in NUMPY_DTYPES]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
    ),
    limit=st.sampled_from([1 * KIB, 4 * KIB, 64 * KIB]),
)
def test_property_tensor_roundtrip(array: np.ndarray, limit: int) -> None:
    frames = tensor_to_frames(array, limit)
    assert all(frame.size <= limit for frame in frames)
    assert_same(array, table_to_tensor(frames_to_table(detached(frames))))
    # The read that copies each frame's values into place as it goes: the same
    # tensor, and every frame taken out of the list it was given.
    taken = detached(frames)
    assert_same(array, tensors.frames_to_tensor(LettingGo(taken)))
    assert taken == [None] * len(frames)


def test_frames_to_tensor_refuses_what_table_to_tensor_refuses() -> None:
    array = np.arange(2400, dtype=np.float32).reshape(600, 4)
    table = tensor_to_table(array)
    metadata = dict(table.schema.metadata)
    for shape in (b"[599, 4]", b"[601, 4]", b"[2, 2]"):  # fewer or more values than stored
        bad = table.replace_schema_metadata({**metadata, b"tierstore.tensor.shape": shape})
        frames = table_to_frames(bad, 1024)  # several record batches
        assert len(frames) > 3
        with pytest.raises(MalformedArrow, match="values for shape"):
            tensors.frames_to_tensor(LettingGo(frames))
    with pytest.raises(WrongShardKind):
        tensors.frames_to_tensor(LettingGo(table_to_frames(pa.table({"x": [1, 2]}))))
    # A shape far past the shard's bytes (metadata is anyone's to write) is refused as
    # such, before anything is allocated: it was a MemoryError asking for 7 TiB.
    huge = table.replace_schema_metadata(
        {**metadata, b"tierstore.tensor.shape": b"[1000000000000]"}
    )
    frames = table_to_frames(huge, 1024)
    size = sum(frame.size for frame in frames)
    with pytest.raises(MalformedArrow, match=f"more than the shard's {size} bytes hold"):
        tensors.frames_to_tensor(LettingGo(frames), size)
