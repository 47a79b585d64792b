"""Arrow columns to torch tensors, without copying wherever Arrow's layout allows it.

What each column type becomes (one tensor per record batch; row ``i`` is ``tensor[i]``):

=====================================  ===============================  =================
Arrow type                             tensor                           copy?
=====================================  ===============================  =================
int8..int64, uint8..uint64,            1-d, same dtype                  no (a view)
float16/32/64
``fixed_shape_tensor`` of those        ``(rows, *logical shape)``       no (a view;
                                       (permuted as the type says)      strided if
                                                                        permuted)
``fixed_size_list`` of those           ``(rows, list_size)``            no (a view)
bool                                   1-d ``torch.bool``               yes (Arrow packs
                                                                        bits)
string, binary (and large/view)        a Python list (``strings="list"``) yes
anything else, or any null             UnsupportedData                  —
=====================================  ===============================  =================

Zero-copy tensors are made through DLPack from the Arrow arrays themselves, so each one
keeps its Arrow buffer alive and its ``data_ptr()`` is the buffer's address (plus the
array's offset). They alias the shard's memory: **do not write into them** (clone first);
a map-style dataset's cache would hand the change to the next reader of that row.

Nulls are refused rather than filled: a tensor cannot say "missing", and a silent 0 or NaN
would be a wrong value. Strings are refused unless ``strings="list"`` asks for them as
lists, so a numeric pipeline never receives a column it cannot stack.

Every function here is pure and thread-safe; torch is imported when this module is.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeAlias

import pyarrow as pa
import torch
import torch.utils.dlpack

from tierstore.arrowio import fixed_list_values, repeated_columns
from tierstore.errors import InvalidArgument, UnsupportedData
from tierstore.tensors import TENSOR_COLUMN, tensor_shape

__all__ = [
    "Column",
    "Strings",
    "batch_to_tensors",
    "check_schema",
    "check_tensor_rows",
    "column_to_tensor",
    "recorded_dtype",
    "scalar_samples",
]

#: How string and binary columns are handled: refused (``"error"``) or returned as lists.
Strings: TypeAlias = Literal["error", "list"]
#: One converted column of one record batch.
Column: TypeAlias = "torch.Tensor | list[Any]"

_NUMERIC: dict[pa.DataType, torch.dtype] = {
    pa.int8(): torch.int8,
    pa.int16(): torch.int16,
    pa.int32(): torch.int32,
    pa.int64(): torch.int64,
    pa.uint8(): torch.uint8,
    pa.uint16(): torch.uint16,
    pa.uint32(): torch.uint32,
    pa.uint64(): torch.uint64,
    pa.float16(): torch.float16,
    pa.float32(): torch.float32,
    pa.float64(): torch.float64,
}


def _is_string(dtype: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_binary(dtype)
        or pa.types.is_large_binary(dtype)
        or pa.types.is_string_view(dtype)
        or pa.types.is_binary_view(dtype)
    )


def _element_type(dtype: pa.DataType) -> pa.DataType | None:
    """The numeric element type of a tensor or fixed-size-list column, else None."""
    if isinstance(dtype, pa.FixedShapeTensorType):
        return dtype.value_type
    if pa.types.is_fixed_size_list(dtype):
        return dtype.value_type
    return None


def check_schema(schema: pa.Schema, strings: Strings) -> None:
    """Check that every column of ``schema`` converts to tensors (or lists).

    Raises:
        InvalidArgument: ``strings`` is neither ``"error"`` nor ``"list"``.
        UnsupportedData: a column of another type, named with its type and what to do;
            columns of one name (:func:`batch_to_tensors` keys columns by name).
    """
    if strings not in ("error", "list"):
        raise InvalidArgument(f"strings must be 'error' or 'list', not {strings!r}")
    _refuse_repeated_names(schema)
    for field in schema:
        dtype = field.type
        element = _element_type(dtype)
        if dtype in _NUMERIC or pa.types.is_boolean(dtype) or element in _NUMERIC:
            continue
        if element is not None:
            # Packed bits, nested lists and the like: no view of a flat buffer of numbers.
            raise UnsupportedData(
                f"column {field.name!r} of type {dtype} holds {element} elements, which "
                "have no tensor form: tierstore.torch reads fixed_shape_tensor and "
                "fixed_size_list columns of fixed-width numeric elements (store bool "
                "elements as uint8); leave it out with columns="
            )
        if _is_string(dtype):
            if strings == "list":
                continue
            raise UnsupportedData(
                f"column {field.name!r} holds {dtype}, which has no tensor form: pass "
                "strings='list' to get such columns as lists, or leave it out with columns="
            )
        raise UnsupportedData(
            f"column {field.name!r} of type {dtype} cannot become a tensor: tierstore.torch "
            "reads fixed-width numeric, bool, fixed_shape_tensor and fixed_size_list columns "
            "(and strings with strings='list'); leave it out with columns="
        )


def _refuse_repeated_names(schema: pa.Schema) -> None:
    repeated = repeated_columns(schema)
    if repeated:
        # A sample is a dict keyed by column name: one such column would replace the others.
        raise UnsupportedData(
            f"columns {repeated} appear more than once in the schema, and samples are "
            "keyed by column name: choose columns of unique names with columns="
        )


def _refuse_nulls(name: str, array: pa.Array) -> None:
    if array.null_count:
        raise UnsupportedData(
            f"column {name!r} has {array.null_count} null value(s): tensors cannot hold "
            "nulls; fill them before writing the shard, or leave the column out with columns="
        )


def _flat_tensor(name: str, values: pa.Array) -> torch.Tensor:
    """A 1-d tensor over a primitive array without nulls: a view of its buffer."""
    _refuse_nulls(name, values)
    dtype = _NUMERIC[values.type]
    if len(values) == 0:  # an empty array may have no data buffer to point into
        return torch.empty(0, dtype=dtype)
    # DLPack honours the array's offset and keeps the Arrow array alive with the tensor.
    tensor: torch.Tensor = torch.utils.dlpack.from_dlpack(values)
    return tensor


def _tensor_column(name: str, array: pa.ExtensionArray) -> torch.Tensor:
    dtype = array.type
    _refuse_nulls(name, array.storage)
    # The type's shape is the physical one (each row's storage in C order); logical axis i
    # is physical axis permutation[i] (numpy's transpose), as the Arrow spec defines it.
    shape = [int(n) for n in dtype.shape]
    permutation = [int(p) for p in dtype.permutation or range(len(shape))]
    tensor = _flat_tensor(name, fixed_list_values(array.storage)).reshape(len(array), *shape)
    if permutation != sorted(permutation):
        tensor = tensor.permute(0, *[1 + p for p in permutation])  # a strided view, no copy
    return tensor


#: the schema keys under which tierstore.tensors records a tensor shard's dtype, its
#: shape and how its rows are laid out ("rows", or "flat": one element per row)
_KEY_DTYPE = b"tierstore.tensor.dtype"
_KEY_SHAPE = b"tierstore.tensor.shape"
_KEY_LAYOUT = b"tierstore.tensor.layout"
#: logical dtypes stored as integers of the same width, viewed back as themselves
_LOGICAL: dict[bytes, torch.dtype] = {
    b"bfloat16": torch.bfloat16,
    b"float8_e4m3fn": torch.float8_e4m3fn,
    b"float8_e5m2": torch.float8_e5m2,
    b"bool": torch.bool,
}


def _flat_shape(schema: pa.Schema) -> tuple[int, ...] | None:
    """The shape of the tensor a tensor shard's ``schema`` says it stores one element
    per row (layout "flat"), else None (rows layout, or no tensor shard). Raises
    MalformedArrow for a recorded shape that is no list of sizes (:func:`tensor_shape`)."""
    metadata = schema.metadata or {}
    if metadata.get(_KEY_LAYOUT) != b"flat":
        return None
    return tensor_shape(metadata.get(_KEY_SHAPE, b"[]"))


def scalar_samples(schema: pa.Schema) -> bool:
    """Whether a shard of ``schema`` is a tensor shard of a vector or a scalar (stored
    one element per row), whose samples are scalars, not rows. Its Arrow type is that
    of a tensor of one-element rows, whose samples have shape (1,). The layout alone
    tells (no shape parsed: this runs for every record batch), since a flat tensor
    with rows never gets this far (:func:`check_tensor_rows`)."""
    return (schema.metadata or {}).get(_KEY_LAYOUT) == b"flat"


def recorded_dtype(schema: pa.Schema) -> str | None:
    """The dtype a tensor shard's ``schema`` records for its tensor (``"bfloat16"`` for
    one stored as its uint16 bits), else None. Shards of one stored type may record
    different dtypes, which their samples are read as."""
    value = (schema.metadata or {}).get(_KEY_DTYPE)
    return None if value is None else value.decode(errors="replace")


def check_tensor_rows(schema: pa.Schema, shard: str) -> None:
    """Raise UnsupportedData when ``schema`` (shard ``shard``'s) is a tensor shard whose
    tensor has rows (two axes or more) but is stored one element per row, as
    :mod:`tierstore.tensors` stores a tensor whose rows are wider than a quarter of a
    frame: a dataset reads one sample per stored row, so each number would be a
    sample (a tensor of shape (3, 300000) read as 900,000 samples). Raises
    MalformedArrow when its recorded shape is unreadable."""
    shape = _flat_shape(schema)
    if shape is not None and len(shape) >= 2 and math.prod(shape) > 0:
        raise UnsupportedData(
            f"shard {shard!r} is a tensor of shape {list(shape)} whose rows are too wide to store "
            "one per row (over a quarter of a frame), so it is stored one element per row "
            "and has no samples to read here: put it with narrower rows (split each row, or "
            "put it with a larger frame size), or read it whole with Client.read_tensor"
        )


def column_to_tensor(name: str, array: pa.Array) -> torch.Tensor:
    """One Arrow array (one record batch's column) as a tensor, per the module's table.

    Raises UnsupportedData for nulls and for types with no tensor form (strings included).
    """
    dtype = array.type
    if dtype in _NUMERIC:
        return _flat_tensor(name, array)
    if isinstance(dtype, pa.FixedShapeTensorType) and dtype.value_type in _NUMERIC:
        return _tensor_column(name, array)
    if pa.types.is_fixed_size_list(dtype) and dtype.value_type in _NUMERIC:
        _refuse_nulls(name, array)
        flat = _flat_tensor(name, fixed_list_values(array))
        return flat.reshape(len(array), dtype.list_size)
    if pa.types.is_boolean(dtype):
        _refuse_nulls(name, array)
        # Arrow packs booleans into bits; torch.bool is a byte each: the one copy.
        return torch.from_numpy(array.to_numpy(zero_copy_only=False))
    check_schema(pa.schema([pa.field(name, dtype)]), "error")  # raises the column's error
    raise AssertionError(f"unreachable: {dtype}")  # pragma: no cover


def batch_to_tensors(batch: pa.RecordBatch, strings: Strings = "error") -> dict[str, Column]:
    """Every column of ``batch`` by name: a tensor (a view of the batch where possible), or
    for string and binary columns with ``strings="list"`` a list of ``str``/``bytes``.

    Raises UnsupportedData as :func:`column_to_tensor` and :func:`check_schema`, and for
    columns of one name.
    """
    _refuse_repeated_names(batch.schema)
    out: dict[str, Column] = {}
    for name, array in zip(batch.schema.names, batch.columns, strict=True):
        if _is_string(array.type) and strings == "list":
            _refuse_nulls(name, array)
            out[name] = array.to_pylist()
        else:
            out[name] = column_to_tensor(name, array)
    logical = _LOGICAL.get((batch.schema.metadata or {}).get(_KEY_DTYPE, b""))
    column = out.get(TENSOR_COLUMN)
    if logical is not None and isinstance(column, torch.Tensor):
        # A tensor shard of a dtype Arrow lacks, stored as its bits: the same bytes
        # viewed as what was put (bfloat16 came back as uint16 bit patterns).
        out[TENSOR_COLUMN] = column = column.view(logical)
    if (
        scalar_samples(batch.schema)
        and isinstance(column, torch.Tensor)
        and column.shape[1:] == (1,)  # not complex, stored as float pairs
    ):
        # A vector (or a scalar) stored one element per row: each element a scalar
        # sample, so batches are (B,), not (B, 1). (A flat tensor with rows is refused
        # when the dataset is made: check_tensor_rows.)
        out[TENSOR_COLUMN] = column.reshape(len(batch))
    return out
