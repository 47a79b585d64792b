"""Tensors as Arrow shards: numpy arrays and torch tensors to tables and frames, and back.

Tensors are stored as a table with one non-nullable column named ``tensor`` of the canonical
``arrow.fixed_shape_tensor`` extension type. The true shape, dtype and framework live in the
schema metadata under ``tierstore.tensor.*`` keys. Row layout (key ``tierstore.tensor.layout``):

- ``rows``: one row per index of the first axis (row shape ``shape[1:]``), used when the array
  has at least two axes and one row takes at most a quarter of a frame, so a row never has to
  be split and every frame holds several rows;
- ``flat``: otherwise (0-d, 1-d, zero-size or very wide rows), the elements in C order, one
  element per row (row shape ``(1,)``). This costs nothing extra: a fixed-size list has no
  offsets, so the values buffer is the raw element bytes either way.

Storage value types: ``bool`` is stored as ``uint8`` (0/1); ``complex64``/``complex128`` as
``float32``/``float64`` pairs (a trailing row axis of 2: real, imaginary); torch ``bfloat16``
as its ``uint16`` bits and the torch ``float8`` types as their ``uint8`` bits.

Framing the resulting tables is :mod:`tierstore.arrowio`'s job. Every function here is pure
(no I/O, no shared state) and therefore thread-safe.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from tierstore.arrowio import (
    DEFAULT_MAX_FRAME_BYTES,
    fixed_list_values,
    read_batches,
    table_to_frames,
)
from tierstore.errors import MalformedArrow, UnsupportedData, WrongShardKind

__all__ = [
    "TENSOR_COLUMN",
    "check_tensor_schema",
    "frames_to_tensor",
    "is_tensor_schema",
    "table_to_tensor",
    "tensor_kind",
    "tensor_shape",
    "tensor_to_frames",
    "tensor_to_table",
]

TENSOR_COLUMN = "tensor"

_KEY_SHAPE = b"tierstore.tensor.shape"
_KEY_DTYPE = b"tierstore.tensor.dtype"
_KEY_FRAMEWORK = b"tierstore.tensor.framework"
_KEY_LAYOUT = b"tierstore.tensor.layout"

# logical dtype name -> (numpy storage dtype, storage elements per logical element)
_STORAGE: dict[str, tuple[np.dtype[Any], int]] = {
    name: (np.dtype(name), 1)
    for name in (
        "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64",
    )
}  # fmt: skip
_STORAGE["bool"] = (np.dtype(np.uint8), 1)
_STORAGE["complex64"] = (np.dtype(np.float32), 2)
_STORAGE["complex128"] = (np.dtype(np.float64), 2)
# torch dtypes numpy lacks, kept as their raw bits
_TORCH_BITS = {"bfloat16": "uint16", "float8_e4m3fn": "uint8", "float8_e5m2": "uint8"}
_STORAGE.update({name: (np.dtype(bits), 1) for name, bits in _TORCH_BITS.items()})


def _numpy_max_dims() -> int:
    """The most axes a numpy array may have, numpy's own constant: 64 since numpy 2.0
    (where it moved), 32 before."""
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        with contextlib.suppress(ImportError, AttributeError):
            return int(importlib.import_module(module).MAXDIMS)
    return 32  # numpy's limit for as long as it has had one


#: a tensor of more axes was stored, but no read could reshape it
_MAX_DIMS = _numpy_max_dims()


def _torch_to_numpy(tensor: Any) -> tuple[str, npt.NDArray[Any]]:
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise UnsupportedData(f"expected a numpy ndarray or torch tensor, got {type(tensor)!r}")
    name = str(tensor.dtype).removeprefix("torch.")
    if tensor.layout != torch.strided:
        raise UnsupportedData(
            f"torch tensor of layout {tensor.layout} is not supported (only dense, "
            "torch.strided: call .to_dense() first)"
        )
    if tensor.is_nested:  # of layout torch.strided too
        raise UnsupportedData(
            "a nested torch tensor is not supported (its rows differ in shape): store "
            "each of its .unbind() tensors as a shard of its own"
        )
    if tensor.device.type == "meta":
        raise UnsupportedData("a torch tensor on the meta device has no data to store")
    if isinstance(tensor, torch.masked.MaskedTensor):
        raise UnsupportedData(
            "a torch MaskedTensor is not supported: a tensor has no missing values; fill "
            "it first (.to_tensor(fill_value)), or store it as an Arrow table with nulls"
        )
    try:
        tensor = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous()
        if name in _TORCH_BITS:
            tensor = tensor.view(getattr(torch, _TORCH_BITS[name]))
        return name, tensor.numpy()
    except (TypeError, RuntimeError) as exc:
        raise UnsupportedData(f"torch tensor of dtype {tensor.dtype} is not supported") from exc


def tensor_to_table(array: Any, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> pa.Table:
    """Wrap a numpy ndarray or torch tensor as a one-column ``fixed_shape_tensor`` table.

    Zero-copy for C-contiguous native-endian numpy arrays of a directly mapped dtype (the table
    then references the array's memory); a non-contiguous array, a non-CPU or conjugated torch
    tensor, or a foreign byte order is copied once (into the native order, which is what
    :func:`table_to_tensor` returns). ``max_frame_bytes`` only picks the row
    layout (see the module docstring); torch is imported only for torch tensors.

    Other ndarray subclasses (``np.matrix``, ``np.memmap``) are stored as their plain
    data, and read back as an ndarray; a numpy scalar (``np.float64(1.5)``) as the 0-d
    array it is the value of, and read back as that array.

    Raises:
        UnsupportedData: not an ndarray or tensor, a numpy masked array or torch
            MaskedTensor (a tensor has no nulls), or a dtype outside the supported set
            (object, strings, datetimes, long double, torch complex32 or quantized, ...).
    """
    if isinstance(array, np.generic):  # a numpy scalar (what arr.sum() gives): 0-d
        array = np.asarray(array)
    if type(array).__module__.split(".")[0] == "torch":
        framework = "torch"
        name, values = _torch_to_numpy(array)
    elif isinstance(array, np.ndarray):
        if isinstance(array, np.ma.MaskedArray):  # even with nothing masked: not by the data
            raise UnsupportedData(
                "a numpy masked array is not supported: a tensor has no missing values; "
                "fill it first (array.filled(fill_value)), or store it as an Arrow table "
                "with nulls"
            )
        framework, name = "numpy", array.dtype.name
        # The plain ndarray over the same memory (no copy): pa.array() of a plain array
        # makes no nulls, and a subclass's own conversions (__arrow_array__, ravel) are
        # not asked.
        values = array.view(np.ndarray)
        if name not in _STORAGE or name in _TORCH_BITS or array.dtype.kind not in "biufc":
            raise UnsupportedData(f"numpy dtype {array.dtype} is not supported")
        if not values.dtype.isnative:
            values = values.astype(values.dtype.newbyteorder("="))
    else:
        raise UnsupportedData(f"expected a numpy ndarray or torch tensor, got {type(array)!r}")
    shape = tuple(int(n) for n in values.shape)
    storage_dtype, width = _STORAGE[name]
    flat = np.ravel(values, order="C").view(storage_dtype)  # a view when already C-contiguous
    row_elements = math.prod(shape[1:]) * width
    if len(shape) >= 2 and 0 < row_elements * storage_dtype.itemsize <= max_frame_bytes // 4:
        layout, row_shape = "rows", shape[1:] + ((width,) if width > 1 else ())
    else:
        layout, row_shape = "flat", (width,)
    tensor_type = pa.fixed_shape_tensor(pa.from_numpy_dtype(storage_dtype), row_shape)
    storage = pa.FixedSizeListArray.from_arrays(pa.array(flat), math.prod(row_shape))
    metadata = {
        _KEY_SHAPE: json.dumps(shape),
        _KEY_DTYPE: name,
        _KEY_FRAMEWORK: framework,
        _KEY_LAYOUT: layout,
    }
    schema = pa.schema([pa.field(TENSOR_COLUMN, tensor_type, nullable=False)], metadata=metadata)
    return pa.Table.from_arrays(
        [pa.ExtensionArray.from_storage(tensor_type, storage)], schema=schema
    )


def tensor_to_frames(array: Any, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> list[pa.Buffer]:
    """``table_to_frames(tensor_to_table(array, max_frame_bytes), max_frame_bytes)``.

    Raises what those two raise (UnsupportedData, OversizeFrame, InvalidArgument).
    """
    return table_to_frames(tensor_to_table(array, max_frame_bytes), max_frame_bytes)


def is_tensor_schema(schema: pa.Schema) -> bool:
    """True if ``schema`` carries tierstore tensor metadata and a ``tensor`` column."""
    metadata = schema.metadata or {}
    return _KEY_SHAPE in metadata and TENSOR_COLUMN in schema.names


def tensor_shape(recorded: bytes) -> tuple[int, ...]:
    """The shape that ``recorded``, a tensor schema's ``tierstore.tensor.shape`` value,
    records: a JSON list of sizes (ints >= 0; not bools, floats or lists), at most as
    many as numpy allows axes. Metadata is anyone's to write (any Arrow shard may carry
    these keys), so anything else raises MalformedArrow, never what ``json`` or the
    conversions raise. Pure and thread-safe."""
    try:
        shape = json.loads(recorded)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8; nesting past the stack
        raise MalformedArrow(f"unreadable tierstore.tensor.shape: {exc}") from exc
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise MalformedArrow(f"bad tierstore.tensor.shape {recorded!r:.200}: not a list of sizes")
    if len(shape) > _MAX_DIMS:
        raise MalformedArrow(
            f"tierstore.tensor.shape records {len(shape)} axes; numpy arrays have at "
            f"most {_MAX_DIMS}"
        )
    return tuple(shape)


def _tensor_metadata(schema: pa.Schema) -> tuple[tuple[int, ...], str, str]:
    if not is_tensor_schema(schema):
        raise WrongShardKind("the table holds no tierstore tensor (no tierstore.tensor.* metadata)")
    metadata = schema.metadata
    shape = tensor_shape(metadata[_KEY_SHAPE])
    try:
        name = metadata[_KEY_DTYPE].decode()
        framework = metadata.get(_KEY_FRAMEWORK, b"numpy").decode()
    except (KeyError, ValueError) as exc:  # no dtype recorded, or not UTF-8
        raise MalformedArrow(f"unreadable tierstore.tensor metadata: {exc}") from exc
    if name not in _STORAGE:
        raise MalformedArrow(f"bad tierstore.tensor metadata: dtype {name!r:.100}")
    return shape, name, framework


def _tensor_column_index(schema: pa.Schema, name: str) -> int:
    """Where the tensor column is; MalformedArrow unless there is one, of ``name``'s type."""
    indices: list[int] = schema.get_all_field_indices(TENSOR_COLUMN)
    if len(indices) != 1:
        raise MalformedArrow(f"the table has {len(indices)} columns named {TENSOR_COLUMN!r}")
    dtype = schema.field(indices[0]).type
    storage_dtype, _ = _STORAGE[name]
    if not isinstance(dtype, pa.FixedShapeTensorType) or dtype.value_type != (
        pa.from_numpy_dtype(storage_dtype)
    ):
        raise MalformedArrow(f"tensor column of type {dtype} does not hold {name}")
    return indices[0]


def _check_value_count(count: int, shape: tuple[int, ...], name: str) -> None:
    if count != math.prod(shape) * _STORAGE[name][1]:
        raise MalformedArrow(f"tensor column has {count} values for shape {shape} {name}")


def tensor_kind(schema: pa.Schema) -> str | None:
    """What tensors of ``schema`` are, as a dataset's tensor schema compares them: the
    dtype, and the shape past the first axis ("float32 (N, 4, 4)"; a 0-d tensor "int8
    ()"), from its ``tierstore.tensor.*`` metadata, not its Arrow type (whose row
    layout depends on the frame size the tensor was cut with); None for a schema
    without tensor metadata. Raises MalformedArrow for unreadable metadata."""
    if not is_tensor_schema(schema):
        return None
    shape, name, _ = _tensor_metadata(schema)
    if not shape:
        return f"{name} ()"
    return f"{name} ({', '.join(['N', *map(str, shape[1:])])})"


def check_tensor_schema(schema: pa.Schema, rows: int) -> None:
    """Raise as :func:`table_to_tensor` would for a table of ``schema`` and ``rows``
    rows, but for null rows (its data is not looked at): for frames that a put
    declares a tensor, which were otherwise stored as a tensor shard that no read
    returned. Raises WrongShardKind and MalformedArrow."""
    shape, name, _ = _tensor_metadata(schema)
    index = _tensor_column_index(schema, name)
    _check_value_count(rows * math.prod(schema.field(index).type.shape), shape, name)


def _import_torch() -> Any:
    try:
        import torch
        import torch.utils.dlpack
    except ImportError:
        return None
    return torch


def table_to_tensor(table: pa.Table) -> Any:
    """Exact inverse of ``tensor_to_table``: same shape, dtype, values and framework
    (a foreign byte order excepted: values come back in the native one, so a big-endian
    ``>i4`` array returns as ``<i4`` on a little-endian machine, with equal values).

    Returns a ``torch.Tensor`` when the metadata says torch and torch imports, else a numpy
    ndarray. Zero-copy when the column has one chunk (a one-frame shard) and the dtype maps
    directly (not bool); the result then aliases the table's memory, which may be read-only
    (numpy arrays are flagged so; torch cannot flag it: do not write into such a tensor).

    Raises:
        WrongShardKind: the table has no tierstore tensor metadata.
        MalformedArrow: the metadata and the column disagree (type, size, nulls), or
            the metadata is unreadable or records more axes than numpy allows.
        UnsupportedData: a torch-only dtype (bfloat16, float8) and torch is not importable.
    """
    shape, name, framework = _tensor_metadata(table.schema)
    storage_dtype, _ = _STORAGE[name]
    column = table.column(_tensor_column_index(table.schema, name))
    chunks = [_tensor_values(chunk) for chunk in column.chunks]
    if len(chunks) == 1:
        values = chunks[0]
    else:  # the one copy a multi-frame tensor costs
        values = pa.concat_arrays(chunks) if chunks else pa.array(np.empty(0, storage_dtype))
    _check_value_count(len(values), shape, name)
    return _as_tensor(values.to_numpy(zero_copy_only=True), shape, name, framework)


def frames_to_tensor(frames: Sequence[pa.Buffer], payload_bytes: int | None = None) -> Any:
    """``table_to_tensor(frames_to_table(frames))``, copying each frame's values into
    place as it is decoded (:func:`~tierstore.arrowio.read_batches`: each frame asked
    for once, in order). With frames that are let go of once read, a multi-frame
    tensor's read holds the tensor and a frame or two, not every frame and a tensor
    made from them as well. A one-frame tensor stays zero-copy over its frame.
    ``payload_bytes``, the frames' bytes in all when known, bounds what the recorded
    shape may ask to be allocated (MalformedArrow past it, not a MemoryError: the
    metadata is anyone's to write). Raises what those two raise.
    """
    assembly = _TensorAssembly(payload_bytes)
    schema = read_batches(frames, assembly.add)
    return assembly.tensor(schema)


class _TensorAssembly:
    """A tensor's values gathered from its record batches as they are decoded."""

    def __init__(self, payload_bytes: int | None) -> None:
        self._payload_bytes = payload_bytes
        self._layout: tuple[tuple[int, ...], str, str, int] | None = None
        #: the first batch's values (zero-copy), until a second batch comes
        self._first: pa.Array | None = None
        self._out: npt.NDArray[Any] | None = None
        self._filled = 0

    def add(self, index: int, batch: pa.RecordBatch, frame: pa.Buffer) -> None:
        """Take one batch's values (an ``arrowio`` batch callback)."""
        if self._layout is None:
            shape, name, framework = _tensor_metadata(batch.schema)
            column = _tensor_column_index(batch.schema, name)
            self._layout = shape, name, framework, column
        shape, name, _, column = self._layout
        values = _tensor_values(batch.column(column))
        if self._out is None and self._first is None:
            self._first = values  # the whole tensor, if no batch follows
            return
        if self._out is None:
            assert self._first is not None
            storage_dtype, width = _STORAGE[name]
            count = math.prod(shape) * width
            if self._payload_bytes is not None and count * storage_dtype.itemsize > (
                self._payload_bytes
            ):
                raise MalformedArrow(
                    f"tensor metadata records shape {shape} {name}, more than the shard's "
                    f"{self._payload_bytes} bytes hold"
                )
            self._out = np.empty(count, storage_dtype)
            first, self._first = self._first, None
            self._copy(first, shape, name)
        self._copy(values, shape, name)

    def _copy(self, values: pa.Array, shape: tuple[int, ...], name: str) -> None:
        assert self._out is not None
        end = self._filled + len(values)
        if end > len(self._out):
            _check_value_count(end, shape, name)  # raises: more values than the shape
        self._out[self._filled : end] = values.to_numpy(zero_copy_only=True)
        self._filled = end

    def tensor(self, schema: pa.Schema) -> Any:
        """The tensor, once every batch was added; ``schema`` is the shard's."""
        if self._layout is None:  # no batch at all
            shape, name, framework = _tensor_metadata(schema)
            _tensor_column_index(schema, name)
            storage_dtype, _ = _STORAGE[name]
            flat = np.empty(0, storage_dtype)
        else:
            shape, name, framework, _ = self._layout
            flat = (
                self._out[: self._filled]
                if self._out is not None
                else self._first.to_numpy(zero_copy_only=True)  # type: ignore[union-attr]
            )
        _check_value_count(len(flat), shape, name)
        return _as_tensor(flat, shape, name, framework)


def _tensor_values(chunk: pa.Array) -> pa.Array:
    """The values under one chunk of a tensor column (zero-copy); MalformedArrow if it
    holds nulls."""
    if chunk.null_count:
        raise MalformedArrow("tensor column has null rows")
    values = fixed_list_values(chunk.storage)
    if values.null_count:
        raise MalformedArrow(
            f"tensor column holds {values.null_count} null value(s); a tensor has none "
            "(was a numpy masked array stored?)"
        )
    return values


def _as_tensor(flat: npt.NDArray[Any], shape: tuple[int, ...], name: str, framework: str) -> Any:
    """The tensor of ``shape`` and logical dtype ``name`` over ``flat``, its storage
    values in C order: a numpy array, or a torch tensor when ``framework`` says torch
    and torch imports."""
    _, width = _STORAGE[name]
    if name == "bool":
        flat = flat != 0
    elif width > 1:
        flat = flat.view(np.dtype(name))
    result = flat.reshape(shape)
    torch = _import_torch() if framework == "torch" else None
    if torch is not None:
        try:
            tensor = torch.utils.dlpack.from_dlpack(result)
        except BufferError:  # numpy < 2.1 cannot export read-only arrays
            tensor = torch.from_numpy(result.copy())
        return tensor.view(getattr(torch, name)) if name in _TORCH_BITS else tensor
    if name in _TORCH_BITS:
        raise UnsupportedData(f"a {name} tensor needs torch, which is not importable")
    return result
