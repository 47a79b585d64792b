"""Cutting values into frames (tierstore/framing.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tierstore.arrowio import frames_to_table
from tierstore.errors import InvalidArgument, MalformedArrow, UnsupportedData
from tierstore.framing import frame_value, frames_streamed
from tierstore.types import ShardKind


@pytest.mark.parametrize("size", [-1, 0, True, 2.0, "8"])
@pytest.mark.parametrize(
    "value", [b"important data", pa.py_buffer(b"xyz"), pa.table({"a": [1]}), np.ones(3)]
)
def test_a_frame_size_that_is_not_a_positive_int_is_refused(value: object, size: object) -> None:
    # Raw bytes cut by -1 made no frames at all: a put stored an empty shard.
    with pytest.raises(InvalidArgument, match="max_frame_bytes must be a positive int"):
        frame_value(value, size)  # type: ignore[arg-type]


def test_raw_bytes_are_cut_into_frames_of_the_size_given() -> None:
    framed = frame_value(b"0123456789", 4)
    assert framed.kind is ShardKind.RAW
    assert [bytes(frame) for frame in framed.frames] == [b"0123", b"4567", b"89"]


def test_a_masked_array_is_refused_at_put() -> None:
    # It was acknowledged as a tensor shard that no read could return.
    with pytest.raises(UnsupportedData, match="masked array"):
        frame_value(np.ma.array([1, 2, 3], mask=[False, True, False]), 4096)


def _batches(count: int) -> list[pa.RecordBatch]:
    return [pa.record_batch({"i": [k, k + 1], "s": ["a", None]}) for k in range(0, 2 * count, 2)]


@pytest.mark.parametrize(
    "make",
    [
        lambda batches: pa.Table.from_batches(batches).to_reader(),
        lambda batches: pa.RecordBatchReader.from_batches(batches[0].schema, iter(batches)),
        lambda batches: list(batches),
        lambda batches: tuple(batches),
        lambda batches: (batch for batch in batches),
    ],
    ids=["table-reader", "reader", "list", "tuple", "generator"],
)
def test_a_stream_of_record_batches_is_framed_as_their_table(make: Any) -> None:
    batches = _batches(5)
    table = pa.Table.from_batches(batches)
    framed = frame_value(make(batches), 4096)
    assert framed.kind is ShardKind.ARROW and framed.rows == 10
    expected = frame_value(table, 4096)
    assert [bytes(f) for f in framed.frames] == [bytes(f) for f in expected.frames]
    assert frames_to_table(framed.frames).equals(table)


def test_an_empty_reader_is_a_zero_row_table_and_an_empty_iterable_is_refused() -> None:
    schema = pa.schema([("i", pa.int64())])
    framed = frame_value(pa.RecordBatchReader.from_batches(schema, []), 4096)
    assert framed.rows == 0 and frames_to_table(framed.frames).schema.equals(schema)
    for empty in ([], (), iter([])):
        with pytest.raises(UnsupportedData, match="RecordBatchReader"):
            frame_value(empty, 4096)


def test_an_iterable_of_other_things_is_unsupported_data() -> None:
    for value in ([1, 2], [pa.record_batch({"i": [1]}), "x"], iter([pa.table({"i": [1]})])):
        with pytest.raises(UnsupportedData):
            frame_value(value, 4096)


def test_frames_streamed_are_none_for_other_values_and_lazy_for_streams() -> None:
    for other in (b"x", pa.table({"i": [1]}), np.ones(3)):
        assert frames_streamed(other, 4096) is None
    taken = 0

    def batches() -> Any:
        nonlocal taken
        for batch in _batches(100):
            taken += 1
            yield batch.append_column("pad", pa.array([b"x" * 100_000] * 2))

    frames = frames_streamed(batches(), 1 << 20)
    assert frames is not None
    first = [next(frames), next(frames)]
    assert taken <= 3
    rest = list(frames)
    assert taken == 100
    assert frames_to_table([*first, *rest]).num_rows == 200


def test_a_file_object_is_not_taken_for_a_stream_of_batches(tmp_path: Any) -> None:
    path = tmp_path / "lines"
    path.write_bytes(b"first\nsecond\n")
    with path.open("rb") as file:
        with pytest.raises(UnsupportedData, match="cannot store a BufferedReader"):
            frame_value(file, 4096)
        assert file.read() == b"first\nsecond\n"  # nothing of it was read


@pytest.mark.parametrize("as_reader", [False, True])
def test_an_invalid_batch_is_refused_at_put(as_reader: bool) -> None:
    # An in-process put stored it unchecked; reading its strings segfaulted.
    far = np.array([0, 5, 1 << 30, 10], np.int32)
    strings = pa.Array.from_buffers(
        pa.string(), 3, [None, pa.py_buffer(far.tobytes()), pa.py_buffer(b"abcdefghij")]
    )
    batch = pa.record_batch([strings], names=["c"])
    value = pa.RecordBatchReader.from_batches(batch.schema, [batch]) if as_reader else batch
    with pytest.raises(MalformedArrow, match="record batch 0: invalid"):
        frame_value(value, 4096)
