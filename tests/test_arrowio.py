"""Tests for tierstore.arrowio: Arrow tables as frames, and frame validation."""

from __future__ import annotations

import datetime
import decimal
import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.buffers import KIB, detached, misaligned_body, within
from tierstore import arrowio
from tierstore.arrowio import (
    frames_to_table,
    open_ipc_file,
    reader_to_frames,
    table_to_frames,
    validate_arrow_frames,
)
from tierstore.errors import InvalidArgument, MalformedArrow, OversizeFrame, UnsupportedData


def roundtrip(table: pa.Table, limit: int = 4 * KIB * KIB) -> pa.Table:
    frames = detached(table_to_frames(table, limit))
    assert all(frame.size <= limit for frame in frames)
    assert validate_arrow_frames(frames).equals(table.schema, check_metadata=True)
    # A generator is taken too (it has no len(), which the check needs).
    assert validate_arrow_frames(iter(frames)).equals(table.schema, check_metadata=True)
    back = frames_to_table(frames)
    assert back.schema.equals(table.schema, check_metadata=True)
    assert back.equals(table, check_metadata=True)
    return back


def stream_of(frames: list[pa.Buffer]) -> pa.Table:
    return pa.ipc.open_stream(b"".join(frame.to_pybytes() for frame in frames)).read_all()


# ---------------------------------------------------------------- tables

TABLES: dict[str, pa.Table] = {
    "nulls": pa.table(
        {
            "i": pa.array([1, None, 3], pa.int32()),
            "f": [None, 2.5, None],
            "n": pa.nulls(3),
            "b": [True, None, False],
        }
    ),
    "strings": pa.table({"s": ["a", None, "ccc"], "bin": [b"x", b"", None]}),
    "large_strings": pa.table(
        {
            "s": pa.array(["x" * 1000, None, ""], pa.large_string()),
            "b": pa.array([b"1", b"22", None], pa.large_binary()),
        }
    ),
    "string_view": pa.table(
        {"v": pa.array(["short", "a much longer string value", None], pa.string_view())}
    ),
    "nested_lists": pa.table(
        {
            "l": [[[1, 2], []], None, [[3], None, [4, 5, 6]]],
            "ll": pa.array([[1], [], None], pa.large_list(pa.int64())),
            "fsl": pa.array([[1, 2], [3, 4], None], pa.list_(pa.int16(), 2)),
        }
    ),
    "structs": pa.table(
        {
            "st": [
                {"a": 1, "b": {"c": "x", "d": [1.0]}},
                None,
                {"a": None, "b": {"c": None, "d": []}},
            ]
        }
    ),
    "dictionary": pa.table(
        {
            "d": pa.array(["red", "green", None, "red"]).dictionary_encode(),
            "n": pa.array([1, 2, 3, 4]).dictionary_encode(),
        }
    ),
    "nested_dictionary": pa.table(
        {
            "s": pa.array(
                [{"k": "a"}, {"k": "b"}],
                pa.struct([("k", pa.dictionary(pa.int8(), pa.string()))]),
            )
        }
    ),
    "map_and_union": pa.table(
        {
            "m": pa.array([[("a", 1)], [], None], pa.map_(pa.string(), pa.int64())),
            "u": pa.UnionArray.from_dense(
                pa.array([0, 1, 0], pa.int8()),
                pa.array([0, 0, 1], pa.int32()),
                [pa.array([1, 2]), pa.array(["x"])],
            ),
        }
    ),
    "temporal_decimal": pa.table(
        {
            "ts": pa.array([datetime.datetime(2024, 1, 1), None], pa.timestamp("us", "UTC")),
            "d": pa.array([datetime.date(2020, 2, 29), None]),
            "dec": pa.array([decimal.Decimal("1.25"), None], pa.decimal128(10, 2)),
        }
    ),
    "tensor_extension": pa.table(
        {"t": pa.FixedShapeTensorArray.from_numpy_ndarray(np.arange(12.0).reshape(3, 2, 2))}
    ),
    "zero_rows": pa.table({"a": pa.array([], pa.int64()), "s": pa.array([], pa.string())}),
    "zero_rows_dictionary": pa.table({"d": pa.array([], pa.string()).dictionary_encode()}),
    "zero_columns": pa.table({"x": [1, 2, 3]}).select([]),
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_table_roundtrip_exact(name: str) -> None:
    table = TABLES[name].replace_schema_metadata({"owner": "tests", "name": name})
    roundtrip(table)


def test_zero_row_table_is_schema_frame_only() -> None:
    frames = table_to_frames(TABLES["zero_rows"], 4 * KIB)
    assert len(frames) == 1
    assert pa.ipc.read_message(frames[0]).type == "schema"


def test_record_batch_input() -> None:
    batch = pa.record_batch({"a": [1, 2, 3]}, metadata={"k": "v"})
    back = frames_to_table(table_to_frames(batch, 4 * KIB))
    assert back.equals(pa.Table.from_batches([batch]), check_metadata=True)


def test_chunks_with_different_dictionaries_roundtrip() -> None:
    chunked = pa.chunked_array(
        [pa.array(["a", "b"]).dictionary_encode(), pa.array(["c", "c"]).dictionary_encode()]
    )
    table = pa.table({"d": chunked})
    frames = table_to_frames(table, 4 * KIB)
    kinds = [pa.ipc.read_message(frame).type for frame in frames]
    assert kinds == ["schema", "dictionary", "record batch", "dictionary", "record batch"]
    roundtrip(table)


def big_table(rows: int = 50_000) -> pa.Table:
    rng = np.random.default_rng(7)
    return pa.table(
        {
            "i": np.arange(rows),
            "f": rng.random(rows),
            "s": pa.array([f"row-{i}" * (i % 5) for i in range(rows)]),
            "l": pa.array([list(range(i % 7)) for i in range(rows)]),
            "d": pa.array([f"c{i % 13}" for i in range(rows)]).dictionary_encode(),
        },
        metadata={"dataset": "big"},
    )


@pytest.mark.parametrize("with_dictionary", [False, True])
def test_multi_frame_table(with_dictionary: bool) -> None:
    table = big_table()
    if not with_dictionary:
        table = table.drop_columns(["d"])
    limit = 64 * KIB
    frames = table_to_frames(table, limit)
    assert len(frames) > 10
    assert all(frame.size <= limit for frame in frames)
    # most frames are well filled: the split estimate is not wildly pessimistic
    assert sum(frame.size for frame in frames[1:]) / (len(frames) - 1) > limit / 2
    assert stream_of(frames).equals(table, check_metadata=True)
    roundtrip(table, limit)


def test_runs_of_small_batches_are_joined_into_few_frames() -> None:
    # 10,000 one-row batches made 10,000 frames: a message and a check each, about
    # 300 us a frame through the service.
    rows = pa.Table.from_batches(
        [pa.record_batch({"i": [k], "s": [str(k)]}) for k in range(10_000)]
    )
    frames = table_to_frames(rows)
    assert len(frames) == 2  # the schema, then every row in one batch
    back = frames_to_table(frames)
    assert back.equals(rows, check_metadata=True) and back.column("i").to_pylist() == list(
        range(10_000)
    )
    # Big batches pass as they are, in order; the small ones between them are joined.
    big = pa.record_batch({"i": np.arange(100_000), "s": ["x"] * 100_000})
    small = [pa.record_batch({"i": [k], "s": ["y"]}) for k in range(3)]
    mixed = pa.Table.from_batches([*small, big, *small, big])
    frames = table_to_frames(mixed)
    rows_per_frame = [len(frames_to_table([frames[0], f])) for f in frames[1:]]
    assert rows_per_frame == [3, 100_000, 3, 100_000]
    assert frames_to_table(frames).equals(mixed)
    # Runs are joined up to about a MiB, and the frame limit still holds.
    medium = [pa.record_batch({"i": np.arange(4000)}) for _ in range(100)]  # 32 KB each
    frames = table_to_frames(pa.Table.from_batches(medium), 256 * KIB)
    assert 4 <= len(frames) - 1 <= 20 and all(f.size <= 256 * KIB for f in frames)
    assert frames_to_table(frames).column("i").to_pylist() == list(range(4000)) * 100


def test_small_dictionary_batches_are_left_as_they_come() -> None:
    batches = [pa.record_batch({"d": pa.array([f"v{k}"]).dictionary_encode()}) for k in range(50)]
    table = pa.Table.from_batches(batches)
    frames = table_to_frames(table)
    assert len(frames) > 50  # a dictionary message and a record batch each
    assert frames_to_table(frames).equals(table)


def test_sliced_table_writes_only_the_slice() -> None:
    table = big_table().drop_columns(["d"])
    part = table.slice(20_000, 100)
    frames = table_to_frames(part, 64 * KIB)
    assert sum(frame.size for frame in frames) < 10 * KIB
    roundtrip(part, 64 * KIB)


def columns_whose_slices_keep_whole_buffers(rows: int = 20_000) -> pa.Table:
    """Columns whose slice serializes with every buffer of the whole array: the views'
    data buffers, a list view's values, a dense union's children; and nested ones."""
    half = rows // 2
    sv = pa.array(
        [f"a string past the 12 inline bytes {i}" if i % 7 else None for i in range(rows)],
        pa.string_view(),
    )
    bv = pa.array([b"binary past the inline bytes %d" % i for i in range(rows)], pa.binary_view())
    lv = pa.array([[i, i + 1] if i % 5 else None for i in range(rows)], pa.list_view(pa.int64()))
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32))  # one item a row
    fields = [pa.field("s", sv.type, metadata={"k": "v"}), pa.field("l", lv.type, False)]
    return pa.table(
        {
            "sv": sv,
            "bv": bv,
            "lv": lv,
            "du": pa.UnionArray.from_dense(
                pa.array([0, 1] * half, pa.int8()),
                pa.array([i // 2 for i in range(rows)], pa.int32()),
                [pa.array(range(half)), pa.array([str(i) for i in range(half)])],
            ),
            "struct": pa.StructArray.from_arrays(
                [sv, lv], fields=fields, mask=pa.array(np.arange(rows) % 3 == 0)
            ),
            "list": pa.ListArray.from_arrays(offsets, sv, mask=pa.array(np.arange(rows) % 4 == 0)),
            "fixed_list": pa.FixedSizeListArray.from_arrays(bv, 1),
            "map": pa.MapArray.from_arrays(offsets, pa.array(map(str, range(rows))), sv),
        }
    )


SLICED_WHOLE = ["sv", "bv", "lv", "du", "struct", "list", "fixed_list", "map"]


@pytest.mark.parametrize("column", SLICED_WHOLE)
def test_columns_whose_slices_keep_whole_buffers_are_framed_by_rows(column: str) -> None:
    # Each piece carried the whole column's buffers: every one was over the limit,
    # down to one row, refused as "a single row serializes to a 300 KB record batch".
    table = columns_whose_slices_keep_whole_buffers().select([column])
    assert table.nbytes > 3 * 64 * KIB  # several frames
    roundtrip(table, 64 * KIB)
    part = table.slice(5_000, 100)  # and a slice stores its rows, not the whole column
    assert sum(frame.size for frame in table_to_frames(part, 64 * KIB)) < 16 * KIB
    roundtrip(part, 64 * KIB)


def test_a_column_left_uncompacted_is_refused_naming_it() -> None:
    # A dense union of views: Arrow has no take of views (that raised
    # ArrowNotImplementedError); it is left whole, refused when over a frame.
    views = columns_whose_slices_keep_whole_buffers().column("sv").combine_chunks()
    union = pa.UnionArray.from_dense(
        pa.array([0, 1] * 5_000, pa.int8()),
        pa.array(np.arange(10_000) // 2, pa.int32()),
        [pa.array(range(5_000)), views.slice(0, 5_000)],
    )
    table = pa.table({"i": range(10_000), "u": union})
    with pytest.raises(OversizeFrame, match=r"column\(s\) \['u'\] with the whole column's"):
        table_to_frames(table, 64 * KIB)
    roundtrip(table, 4 * KIB * KIB)


@pytest.mark.parametrize("column", SLICED_WHOLE)
def test_batches_sliced_from_one_such_column_are_joined_into_few_frames(column: str) -> None:
    # Each batch's size counted the whole column's buffers: none was joined to its
    # neighbours, and each was cut into pieces of a few rows (400 to 800 frames here).
    table = columns_whose_slices_keep_whole_buffers().select([column])
    batches = pa.Table.from_batches(table.to_batches(max_chunksize=100))
    frames = table_to_frames(batches, 256 * KIB)
    assert len(frames) - 1 <= 2 * table.nbytes // (256 * KIB) + 2
    assert frames_to_table(frames).equals(table)


def test_columns_selection() -> None:
    table = big_table(1000)
    back = frames_to_table(table_to_frames(table, 16 * KIB), columns=["s", "i"])
    assert back.column_names == ["s", "i"]
    assert back.equals(table.select(["s", "i"]), check_metadata=True)
    with pytest.raises(InvalidArgument, match="nope"):
        frames_to_table(table_to_frames(table, 16 * KIB), columns=["i", "nope"])


@pytest.mark.parametrize(
    "make",
    [
        lambda names: (name for name in names),
        iter,
        lambda names: dict.fromkeys(names).keys(),
        tuple,
    ],
    ids=["generator", "iterator", "dict keys", "tuple"],
)
def test_columns_may_be_any_iterable_of_names(make: Any) -> None:
    # A generator was used up by the unknown-columns check: the table came back with
    # no columns at all.
    table = big_table(100)
    frames = table_to_frames(table, 16 * KIB)
    back = frames_to_table(frames, columns=make(["s", "i"]))
    assert back.column_names == ["s", "i"]
    assert back.equals(table.select(["s", "i"]), check_metadata=True)
    with pytest.raises(InvalidArgument, match="nope"):
        frames_to_table(frames, columns=make(["i", "nope"]))


@pytest.mark.parametrize("columns", [3, object(), "s", b"s"], ids=["int", "object", "str", "bytes"])
def test_a_selection_that_is_no_iterable_of_names_is_refused_before_reading(columns: Any) -> None:
    # An int failed only after the whole shard was read, with a bare TypeError.
    with pytest.raises(InvalidArgument, match="columns must be"):
        arrowio.check_columns(columns)
    with pytest.raises(InvalidArgument, match="columns must be"):
        frames_to_table(table_to_frames(big_table(10)), columns=columns)


def test_a_column_name_that_is_not_a_string_is_refused() -> None:
    # Not read as a position: table.select() takes indices too.
    frames = table_to_frames(big_table(10))
    with pytest.raises(InvalidArgument, match="column names are strings"):
        frames_to_table(frames, columns=["s", 0])  # type: ignore[list-item]


def test_a_selection_naming_a_column_the_shard_has_twice_is_refused_naming_it() -> None:
    # It raised a bare KeyError; the shard's other columns are still selectable.
    table = pa.table([pa.array([1]), pa.array(["x"]), pa.array([2.0])], names=["a", "a", "b"])
    frames = table_to_frames(table)
    with pytest.raises(InvalidArgument, match=r"\['a'\].*more than once"):
        frames_to_table(frames, columns=["b", "a"])
    assert frames_to_table(frames, columns=["b"]).to_pydict() == {"b": [2.0]}


def test_frames_to_table_is_zero_copy() -> None:
    table = pa.table({"i": np.arange(1000), "s": [str(i) for i in range(1000)]})
    frames = detached(table_to_frames(table, 4 * KIB))
    back = frames_to_table(frames)
    assert back.column("i").num_chunks == len(frames) - 1
    for index, frame in enumerate(frames[1:]):
        for column in ("i", "s"):
            for buffer in back.column(column).chunk(index).buffers():
                if buffer is not None:
                    assert within(buffer, frame)


def test_frames_accept_bytes_and_memoryview() -> None:
    table = pa.table({"i": np.arange(100)})
    frames = table_to_frames(table, 4 * KIB)
    views = [memoryview(frame.to_pybytes()) for frame in frames]
    assert frames_to_table(views).equals(table)
    assert validate_arrow_frames([bytes(view) for view in views]).equals(table.schema)


# ---------------------------------------------------------------- oversize and bad arguments


def test_single_huge_row_is_oversize() -> None:
    table = pa.table({"s": ["small", "x" * 100 * KIB, "small"]})
    with pytest.raises(OversizeFrame, match="single row"):
        table_to_frames(table, 64 * KIB)


def test_oversize_schema() -> None:
    table = pa.table({"a": [1]}, metadata={"blob": "x" * 10 * KIB})
    with pytest.raises(OversizeFrame, match=r"schema message is \d+ bytes"):
        table_to_frames(table, 4 * KIB)


def test_oversize_dictionary() -> None:
    table = pa.table({"d": pa.array([f"{i:0>100}" for i in range(200)]).dictionary_encode()})
    with pytest.raises(OversizeFrame, match="dictionary"):
        table_to_frames(table, 8 * KIB)


@pytest.mark.parametrize("limit", [0, -1, 1.5])
def test_bad_max_frame_bytes(limit: Any) -> None:
    with pytest.raises(InvalidArgument):
        table_to_frames(pa.table({"a": [1]}), limit)


def test_not_a_table() -> None:
    with pytest.raises(UnsupportedData):
        table_to_frames({"a": [1]}, 4 * KIB)


# ---------------------------------------------------------------- record batch readers


def reader_cases() -> dict[str, pa.Table]:
    different_dictionaries = pa.table(
        {
            "d": pa.chunked_array(
                [pa.array(["a", "b"]).dictionary_encode(), pa.array(["c"]).dictionary_encode()]
            )
        }
    )
    small_batches = pa.Table.from_batches(
        [pa.record_batch({"i": [k], "s": [str(k)]}) for k in range(3000)]
    )
    return {
        **TABLES,
        "big": big_table().drop_columns(["d"]),
        "big_dictionary": big_table(),
        "different_dictionaries": different_dictionaries,
        "small_batches": small_batches,
    }


@pytest.mark.parametrize("name", sorted(reader_cases()))
def test_a_reader_is_framed_as_its_table_is(name: str) -> None:
    # Byte for byte: the schema once, a message a frame, big batches cut, small ones
    # joined, dictionaries before the batches that use them.
    table = reader_cases()[name].replace_schema_metadata({"owner": "tests"})
    limit = 64 * KIB
    frames = list(reader_to_frames(table.to_reader(), limit))
    assert [f.to_pybytes() for f in frames] == [
        f.to_pybytes() for f in table_to_frames(table, limit)
    ]
    back = frames_to_table(detached(frames))
    assert back.equals(table, check_metadata=True)


def test_an_empty_reader_is_the_schema_frame_alone() -> None:
    schema = pa.schema([("a", pa.int64()), ("d", pa.dictionary(pa.int8(), pa.string()))])
    schema = schema.with_metadata({"k": "v"})
    frames = list(reader_to_frames(pa.RecordBatchReader.from_batches(schema, []), 4 * KIB))
    assert len(frames) == 1
    back = frames_to_table(frames)
    assert back.num_rows == 0 and back.schema.equals(schema, check_metadata=True)


def test_a_readers_frames_are_cut_as_its_batches_arrive() -> None:
    # 40 batches of about 200 KB: a frame each, made as each batch is read, and no
    # batch kept once framed (a Table put's frames were all made first).
    made = 0
    alive: set[int] = set()
    most_alive = 0

    def batches() -> Any:
        nonlocal made, most_alive
        for k in range(40):
            batch = pa.record_batch({"i": np.full(25_000, k, np.int64)})
            made += 1
            alive.add(k)
            weakref.finalize(batch, alive.discard, k)
            most_alive = max(most_alive, len(alive))
            yield batch

    schema = pa.schema([("i", pa.int64())])
    frames = reader_to_frames(pa.RecordBatchReader.from_batches(schema, batches()), 1 << 20)
    assert made == 0
    got = [next(frames), next(frames)]  # the schema, then the first batch's frame
    assert made <= 2
    got.extend(frames)
    assert made == 40 and len(got) == 41
    assert most_alive <= 3
    back = frames_to_table(got)
    assert back.column("i").to_pylist() == [k for k in range(40) for _ in range(25_000)]


def test_a_dataset_scanners_reader_is_framed(tmp_path: Path) -> None:
    import pyarrow.dataset as ds

    table = big_table(20_000).drop_columns(["d"])
    ds.write_dataset(
        table, tmp_path, format="arrow", max_rows_per_file=6000, max_rows_per_group=6000
    )
    scanner = ds.dataset(tmp_path, format="arrow").scanner()
    reader = scanner.to_reader()
    assert isinstance(reader, pa.RecordBatchReader)
    back = frames_to_table(list(reader_to_frames(reader, 64 * KIB)))
    assert back.sort_by("i").equals(table.replace_schema_metadata(None), check_metadata=False)


def test_a_reader_whose_schema_changes_is_unsupported_data() -> None:
    schema = pa.schema([("a", pa.int64())])
    good = pa.record_batch({"a": [1, 2]})
    for other in (pa.record_batch({"a": ["x"]}), pa.record_batch({"b": [3]})):
        reader = pa.RecordBatchReader.from_batches(schema, [good, other])
        with pytest.raises(UnsupportedData, match=r"batch 1 .*schema"):
            list(reader_to_frames(reader, 4 * KIB))
    # A batch without the reader's schema metadata is one of its batches.
    reader = pa.RecordBatchReader.from_batches(schema.with_metadata({"k": "v"}), [good])
    assert len(list(reader_to_frames(reader, 4 * KIB))) == 2


def test_a_reader_that_fails_is_malformed_arrow(tmp_path: Path) -> None:
    def failing() -> Any:
        yield pa.record_batch({"a": [1, 2]})
        raise ValueError("the source went away")

    reader = pa.RecordBatchReader.from_batches(pa.schema([("a", pa.int64())]), failing())
    with pytest.raises(MalformedArrow, match="the source went away") as caught:
        list(reader_to_frames(reader, 4 * KIB))
    assert isinstance(caught.value.__cause__, ValueError)
    # An IPC stream cut short fails as it is read.
    path = tmp_path / "cut.arrows"
    table = big_table(5000)
    with pa.ipc.new_stream(path, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=1000):
            writer.write_batch(batch)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pa.ipc.open_stream(path) as cut, pytest.raises(MalformedArrow):
        list(reader_to_frames(cut, 64 * KIB))


def test_a_reader_is_checked_before_anything_is_read() -> None:
    reader = pa.RecordBatchReader.from_batches(pa.schema([("a", pa.int64())]), [])
    with pytest.raises(InvalidArgument, match="max_frame_bytes"):
        reader_to_frames(reader, 0)
    with pytest.raises(UnsupportedData):
        reader_to_frames(pa.table({"a": [1]}), 4 * KIB)  # type: ignore[arg-type]
    big_schema = pa.schema([("a", pa.int64())], metadata={"blob": "x" * 10 * KIB})
    with pytest.raises(OversizeFrame, match="schema message"):
        reader_to_frames(pa.RecordBatchReader.from_batches(big_schema, []), 4 * KIB)


def invalid_batches() -> dict[str, pa.RecordBatch]:
    """Batches that pass pyarrow's cheap checks but not ``validate(full=True)``."""
    rows = 10
    far = np.array([0, 5, 1 << 30] + [10] * (rows - 2), np.int32)
    offsets = pa.Array.from_buffers(
        pa.string(), rows, [None, pa.py_buffer(far.tobytes()), pa.py_buffer(b"abcdefghij")]
    )
    utf8 = pa.Array.from_buffers(
        pa.string(),
        rows,
        [
            None,
            pa.py_buffer(np.arange(rows + 1, dtype=np.int32).tobytes()),
            pa.py_buffer(b"\xff" * rows),
        ],
    )
    indices = pa.array(np.full(rows, 1000, np.int32))
    dictionary = pa.DictionaryArray.from_arrays(indices, pa.array(["a", "b"]), safe=False)
    return {
        "string offset out of range": pa.record_batch([offsets], names=["c"]),
        "bad utf-8": pa.record_batch([utf8], names=["c"]),
        "dictionary index out of range": pa.record_batch([dictionary], names=["c"]),
    }


@pytest.mark.parametrize("case", sorted(invalid_batches()))
@pytest.mark.parametrize("source", ["table", "reader"])
def test_an_invalid_batch_is_refused_before_it_is_framed(case: str, source: str) -> None:
    # Stored as they were, their reads segfaulted (an offset of 2**30 into 10 bytes)
    # or returned bad strings; two of them are joined before framing (small batches).
    batch = invalid_batches()[case]
    with pytest.raises(MalformedArrow, match="record batch 1: invalid"):
        if source == "table":
            table_to_frames(pa.Table.from_batches([batch.slice(0, 0), batch, batch]))
        else:
            reader = pa.RecordBatchReader.from_batches(batch.schema, [batch.slice(0, 0), batch])
            list(reader_to_frames(reader))


def test_a_dictionary_shared_by_batches_is_checked_for_each_batch_s_indices() -> None:
    # A dictionary many batches share is validated once (300 batches of one dictionary
    # of a million strings took 40 times as long to frame, validated in each batch):
    # the indices of every batch are still checked against it.
    dictionary = pa.array([f"value {i}" for i in range(100)])
    good = pa.DictionaryArray.from_arrays(pa.array([0, 5, 99], pa.int32()), dictionary)
    past = pa.DictionaryArray.from_arrays(pa.array([1, 100, 2], pa.int32()), dictionary, safe=False)
    schema = pa.schema([("d", good.type), ("n", pa.int64())])
    batches = [
        pa.record_batch([column, pa.array([1, 2, 3])], schema=schema)
        for column in (good, good, past)
    ]
    assert frames_to_table(table_to_frames(pa.Table.from_batches(batches[:2]))).num_rows == 6
    with pytest.raises(MalformedArrow, match="record batch 2: invalid"):
        table_to_frames(pa.Table.from_batches(batches))
    offsets = pa.py_buffer(np.array([0, 1, 2], np.int32).tobytes())
    bad_strings = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"\xff\xfe")])
    bad_dictionary = pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int32()), bad_strings)
    with pytest.raises(MalformedArrow, match="record batch 0: invalid"):
        table_to_frames(pa.table({"d": bad_dictionary}))


# ---------------------------------------------------------------- malformed frames


def good_frames() -> list[pa.Buffer]:
    return table_to_frames(
        pa.table({"i": np.arange(300), "s": [str(i) for i in range(300)]}), 1 * KIB
    )


def test_validate_good_frames() -> None:
    frames = good_frames()
    assert len(frames) > 3
    assert validate_arrow_frames(frames).names == ["i", "s"]
    with pytest.raises(OversizeFrame):
        validate_arrow_frames(frames, max_frame_bytes=100)


def malformed_cases() -> dict[str, list[Any]]:
    frames = good_frames()
    other = table_to_frames(pa.table({"x": ["a", "b"], "y": [1.5, 2.5], "z": [1, 2]}), 4 * KIB)
    compressed = pa.BufferOutputStream()
    with pa.ipc.new_stream(
        compressed,
        pa.schema([("i", pa.int64()), ("s", pa.string())]),
        options=pa.ipc.IpcWriteOptions(compression="zstd"),
    ) as writer:
        writer.write_batch(pa.record_batch({"i": np.arange(300), "s": ["a"] * 300}))
    eos = b"\xff\xff\xff\xff\x00\x00\x00\x00"
    return {
        "no frames": [],
        "random bytes": [os.urandom(200)],
        "random batch": [frames[0], os.urandom(500)],
        "empty frame": [frames[0], b""],
        "truncated batch": [frames[0], frames[1].to_pybytes()[:-16]],
        "truncated schema": [frames[0].to_pybytes()[:-8], frames[1]],
        "batch first": [frames[1], frames[0]],
        "only batches": frames[1:],
        "two messages": [frames[0], frames[1].to_pybytes() + frames[2].to_pybytes()],
        "schema plus batch": [frames[0].to_pybytes() + frames[1].to_pybytes()],
        "second schema": [frames[0], frames[1], frames[0]],
        "trailing bytes": [frames[0], frames[1].to_pybytes() + b"\0" * 8],
        "end of stream": [frames[0], eos, frames[1]],
        "other schema": [frames[0], other[1]],
        "compressed": [frames[0], arrowio._split_messages(compressed.getvalue())[1]],
    }


@pytest.mark.parametrize("case", sorted(malformed_cases()))
def test_validate_rejects(case: str) -> None:
    frames = malformed_cases()[case]
    with pytest.raises(MalformedArrow, match=r"frame|no frames"):
        validate_arrow_frames(frames)


def zstd_frames(table: pa.Table) -> list[pa.Buffer]:
    stream = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(stream, table.schema, options=options) as writer:
        writer.write_table(table)
    return arrowio._split_messages(stream.getvalue())


def test_compressed_batches_are_refused_before_anything_is_decompressed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 8 KB of zstd per 256 MiB of zeros: every batch was decompressed and held before
    # the in-place check refused them, gigabytes for a writer's few KB.
    zeros = pa.table({"z": np.zeros(1 << 20, dtype=np.int64)})  # 8 MiB, a few KB compressed
    frames = zstd_frames(zeros)
    bomb = [frames[0], *[frames[1]] * 8]
    assert sum(frame.size for frame in bomb[1:]) < zeros.nbytes // 100
    decoded: list[object] = []
    monkeypatch.setattr(arrowio, "_read_stream", lambda frames: decoded.append(frames))
    with pytest.raises(
        MalformedArrow, match=r"frame 1: the record batch message's body is compressed"
    ):
        validate_arrow_frames(bomb)
    assert decoded == []
    # A compressed dictionary batch too.
    words = pa.table({"w": pa.array(["a", "b", "a"] * 1000).dictionary_encode()})
    dictionary = zstd_frames(words)
    assert [arrowio._message_type(i, f) for i, f in enumerate(dictionary)][1] == "dictionary"
    assert arrowio.message_is_compressed(dictionary[1])
    with pytest.raises(
        MalformedArrow, match=r"frame 1: the dictionary message's body is compressed"
    ):
        validate_arrow_frames(dictionary)


def test_the_pre_1_0_compression_marker_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrow still decompresses a V4 batch whose custom metadata names a codec, with no
    # compression field: such frames passed the check, and were decompressed.
    table = pa.table({"x": np.zeros(2000)})
    stream = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(metadata_version=pa.ipc.MetadataVersion.V4)
    with pa.ipc.new_stream(stream, table.schema, options=options) as writer:
        batch = table.to_batches()[0]
        writer.write_batch(batch)
        writer.write_batch(batch, custom_metadata={"ARROW:experimental_compression": "zstd"})
    frames = arrowio._split_messages(stream.getvalue())
    assert [arrowio.message_is_compressed(frame) for frame in frames] == [False, False, True]
    assert validate_arrow_frames(frames[:2]).names == ["x"]
    decoded: list[object] = []
    monkeypatch.setattr(arrowio, "_read_stream", lambda frames: decoded.append(frames))
    with pytest.raises(MalformedArrow, match="frame 2: the record batch message's body is"):
        validate_arrow_frames(frames)
    assert decoded == []


def test_delta_dictionaries_are_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    # Decoding joins each delta to its base in new memory that every later batch keeps:
    # 600 deltas in 2.7 MiB of frames took 750 MiB to decode, on every put and read.
    words = pa.schema([("w", pa.dictionary(pa.int32(), pa.string()))])
    stream = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(emit_dictionary_deltas=True)
    with pa.ipc.new_stream(stream, words, options=options) as writer:
        for values in (["a", "b"], ["a", "b", "c"]):
            writer.write_batch(pa.record_batch([pa.array(values).dictionary_encode()], words))
    frames = arrowio._split_messages(stream.getvalue())
    deltas = [arrowio.message_is_delta(frame) for frame in frames]
    assert deltas.count(True) == 1 and not deltas[1]  # the first dictionary is whole
    assert validate_arrow_frames(frames[: deltas.index(True)]) == words
    decoded: list[object] = []
    monkeypatch.setattr(arrowio, "_read_stream", lambda frames: decoded.append(frames))
    with pytest.raises(MalformedArrow, match=r"a delta dictionary batch; .*emit_dictionary_deltas"):
        validate_arrow_frames(frames)
    assert decoded == []


def test_replacement_dictionaries_and_a_v5_marker_are_not_refused() -> None:
    # Arrow honours the pre-1.0 marker in V4 messages only: in a V5 one it is metadata.
    words = pa.schema([("w", pa.dictionary(pa.int32(), pa.string()))])
    stream = pa.BufferOutputStream()
    with pa.ipc.new_stream(stream, words) as writer:  # a new dictionary: a replacement
        for values in (["a", "b"], ["c"]):
            writer.write_batch(pa.record_batch([pa.array(values).dictionary_encode()], words))
    frames = arrowio._split_messages(stream.getvalue())
    assert validate_arrow_frames(frames) == words
    assert frames_to_table(frames).column("w").to_pylist() == ["a", "b", "c"]
    table = pa.table({"x": np.arange(64)})
    stream = pa.BufferOutputStream()
    with pa.ipc.new_stream(stream, table.schema) as writer:  # V5
        marked = {"ARROW:experimental_compression": "zstd"}
        writer.write_batch(table.to_batches()[0], custom_metadata=marked)
    frames = arrowio._split_messages(stream.getvalue())
    assert not arrowio.message_is_compressed(frames[1])
    assert frames_to_table(frames).equals(table) and validate_arrow_frames(frames)


def test_uncompressed_messages_are_told_apart() -> None:
    frames = table_to_frames(pa.table({"w": pa.array(["a", "b"] * 10).dictionary_encode()}), KIB)
    assert [arrowio.message_is_compressed(frame) for frame in frames] == [False] * len(frames)
    assert len(frames) >= 3  # schema, dictionary, batch


def test_a_batch_of_more_columns_than_its_schema_is_refused() -> None:
    # Arrow decodes the schema's columns and ignores the rest: it was stored, and read
    # back without its last column.
    schema_frame = table_to_frames(pa.table({"a": [1, 2], "s": ["x", "y"]}))[0]
    wider = table_to_frames(pa.table({"a": [1, 2], "s": ["x", "y"], "t": [1.0, 2.0]}))
    with pytest.raises(
        MalformedArrow, match=r"frame 1: .*3 field nodes and 7 buffers.*2 field nodes and 5 buffers"
    ):
        validate_arrow_frames([schema_frame, wider[1]])
    deeper = table_to_frames(pa.table({"s": [{"x": 1, "y": 2}]}))
    narrower = table_to_frames(pa.table({"s": [{"x": 1}]}))
    with pytest.raises(MalformedArrow, match="field nodes"):
        validate_arrow_frames([narrower[0], deeper[1]])


def every_layout() -> pa.Table:
    """A column of each layout whose IPC buffer count is not its type's ``num_buffers``
    alone (nulls, unions, run-end encoded, views) and of the usual ones."""
    strings = pa.array(["a", "a much longer string than a view inlines", None])
    return pa.table(
        {
            "null": pa.nulls(3),
            "int": [1, None, 3],
            "str": strings,
            "view": strings.cast(pa.string_view()),
            "list_view": pa.array([[1], [], None], pa.list_view(pa.int8())),
            "sparse": pa.UnionArray.from_sparse(
                pa.array([0, 1, 0], pa.int8()), [pa.array([1, 2, 3]), strings]
            ),
            "dense": pa.UnionArray.from_dense(
                pa.array([0, 1, 0], pa.int8()),
                pa.array([0, 0, 1], pa.int32()),
                [pa.array([1, 2]), pa.array(["x"])],
            ),
            "ree": pa.RunEndEncodedArray.from_arrays([2, 3], ["a", "b"]),
            "map": pa.array([[("a", 1)], [], None], pa.map_(pa.string(), pa.int64())),
            "struct": [{"a": 1, "b": [1.0]}, None, {"a": None, "b": []}],
            "dictionary": strings.dictionary_encode(),
            "tensor": pa.FixedShapeTensorArray.from_numpy_ndarray(np.zeros((3, 2, 2))),
        }
    )


@pytest.mark.parametrize("version", ["V4", "V5"])
def test_batches_of_every_layout_pass_the_count_check(version: str) -> None:
    # In a V4 message unions and run-end encoded arrays have a validity buffer too.
    table = every_layout()
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(metadata_version=getattr(pa.ipc.MetadataVersion, version))
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    frames = arrowio._split_messages(sink.getvalue())
    assert validate_arrow_frames(frames).equals(table.schema)
    assert frames_to_table(frames).equals(table)


def test_validate_names_the_frame() -> None:
    frames = good_frames()
    bad = [*frames[:3], frames[3].to_pybytes()[:-16], *frames[4:]]
    with pytest.raises(MalformedArrow, match="frame 3"):
        validate_arrow_frames(bad)


def test_a_batch_whose_buffers_are_not_8_byte_aligned_is_refused() -> None:
    # Metadata 4 bytes longer than the writer's puts the body 4 bytes past an 8-byte
    # boundary: it was stored, and numpy and torch views of it were misaligned.
    frames = table_to_frames(pa.table({"a": np.arange(10), "s": ["x"] * 10}))
    with pytest.raises(MalformedArrow, match=r"frame 1: .*not 8-byte aligned"):
        validate_arrow_frames([frames[0], misaligned_body(frames[1])])
    # A dictionary batch's too: its values are served in place like a batch's columns.
    frames = table_to_frames(pa.table({"d": pa.array(["red", "green"]).dictionary_encode()}))
    assert [pa.ipc.read_message(f).type for f in frames] == ["schema", "dictionary", "record batch"]
    with pytest.raises(MalformedArrow, match=r"frame 1: .*not 8-byte aligned"):
        validate_arrow_frames([frames[0], misaligned_body(frames[1]), frames[2]])


@pytest.mark.parametrize(
    "case",
    [
        "random bytes",
        "truncated batch",
        "batch first",
        "no frames",
        "end of stream",
        "other schema",
    ],
)
def test_frames_to_table_rejects(case: str) -> None:
    with pytest.raises(MalformedArrow):
        frames_to_table(malformed_cases()[case])


# ---------------------------------------------------------------- properties

CELLS = {
    pa.int64(): st.integers(-(2**63), 2**63 - 1),
    pa.float64(): st.floats(allow_nan=False),
    pa.string(): st.text(max_size=30),
    pa.binary(): st.binary(max_size=30),
    pa.bool_(): st.booleans(),
}


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    rows = draw(st.integers(0, 300))
    columns = {}
    for index in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["scalar", "list", "struct", "dictionary"]))
        arrow_type = draw(st.sampled_from(list(CELLS)))
        cell = st.none() | CELLS[arrow_type]
        if kind == "list":
            cell = st.none() | st.lists(cell, max_size=4)
            arrow_type = pa.list_(arrow_type)
        elif kind == "struct":
            cell = st.none() | st.fixed_dictionaries({"v": cell})
            arrow_type = pa.struct([("v", arrow_type)])
        values = draw(st.lists(cell, min_size=rows, max_size=rows))
        array = pa.array(values, arrow_type)
        if kind == "dictionary" and arrow_type != pa.bool_():
            array = array.dictionary_encode()
        columns[f"c{index}"] = array
    table = pa.table(
        columns,
        metadata=draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)),
    )
    split = draw(st.integers(0, rows))  # two chunks, one of them maybe empty
    return pa.concat_tables([table.slice(0, split), table.slice(split)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=tables(), limit=st.sampled_from([2 * KIB, 8 * KIB, 64 * KIB]))
def test_property_table_roundtrip(table: pa.Table, limit: int) -> None:
    try:
        frames = table_to_frames(table, limit)
    except OversizeFrame:
        return  # a wide row or a big dictionary under a 2 KiB limit
    assert all(frame.size <= limit for frame in frames)
    assert validate_arrow_frames(detached(frames)).equals(table.schema, check_metadata=True)
    assert frames_to_table(detached(frames)).equals(table, check_metadata=True)
    assert stream_of(frames).equals(table, check_metadata=True)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_property_corrupted_frames_fail_cleanly(data: st.DataObject) -> None:
    frames = [frame.to_pybytes() for frame in good_frames()[:4]]
    index = data.draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[index])
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(frame) - 1))
        frame[position] = data.draw(st.integers(0, 255))
    frames[index] = bytes(frame)
    try:
        validate_arrow_frames(frames)
    except MalformedArrow:
        return
    frames_to_table(frames)  # whatever validates must decode


def _buffer_addresses(table: pa.Table) -> list[int]:
    return [
        buffer.address
        for column in table.columns
        for chunk in column.chunks
        for buffer in chunk.buffers()
        if buffer is not None
    ]


def test_a_misaligned_frame_is_copied_to_an_aligned_buffer_and_an_aligned_one_is_not() -> None:
    table = pa.table({"x": pa.array(np.arange(10, dtype=np.int64)), "y": [1.5] * 10})
    frames = [bytes(frame) for frame in table_to_frames(table, 4096)]
    # Each frame at an odd address (as LMDB may store a small value inside a page).
    shifted = []
    for frame in frames:
        holder = bytearray(len(frame) + 1)
        holder[1:] = frame
        shifted.append(memoryview(holder)[1:])
    assert all(pa.py_buffer(view).address % 2 == 1 for view in shifted)
    rebuilt = frames_to_table(shifted)
    assert rebuilt.equals(table)
    assert all(address % 8 == 0 for address in _buffer_addresses(rebuilt))
    # Aligned frames are used in place: the table's buffers lie inside them.
    aligned = [pa.py_buffer(frame) for frame in frames]
    in_place = frames_to_table(aligned)
    spans = [(frame.address, frame.address + frame.size) for frame in aligned]
    assert all(
        any(low <= address < high for low, high in spans) for address in _buffer_addresses(in_place)
    )


# ---------------------------------------------------------------- fixed-size list values


@given(
    values=st.integers(0, 40),
    list_size=st.integers(1, 5),
    child_offset=st.integers(0, 5),
    data=st.data(),
)
def test_fixed_list_values_equal_flatten_on_any_slice(
    values: int, list_size: int, child_offset: int, data: st.DataObject
) -> None:
    child = pa.array(np.arange(values + child_offset, dtype=np.int32)).slice(child_offset)
    rows = len(child) // list_size
    array = pa.FixedSizeListArray.from_arrays(child.slice(0, rows * list_size), list_size)
    start = data.draw(st.integers(0, rows))
    length = data.draw(st.integers(0, rows - start))
    sliced = array.slice(start, length)
    assert arrowio.fixed_list_values(sliced).to_pylist() == sliced.flatten().to_pylist()


# ---------------------------------------------------------------- row counts from headers


def pyarrow_rows(frames: list[pa.Buffer]) -> list[int]:
    """Each frame's rows as pyarrow reads the whole stream (0 for a non-batch message)."""
    reader = pa.ipc.open_stream(b"".join(frame.to_pybytes() for frame in frames))
    batches = iter([batch.num_rows for batch in reader])
    kinds = [pa.ipc.read_message(pa.BufferReader(frame)).type for frame in frames]
    return [next(batches) if kind == "record batch" else 0 for kind in kinds]


@pytest.mark.parametrize("name", sorted(TABLES))
def test_message_rows_reads_the_row_count_from_the_header_alone(name: str) -> None:
    table = TABLES[name]
    frames = table_to_frames(table, 4 * KIB)
    # Only the header: no byte of the body.
    counted = [
        arrowio.message_rows(frame[: arrowio.message_header_bytes(frame)]) for frame in frames
    ]
    assert counted == pyarrow_rows(frames)
    assert sum(counted) == table.num_rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(0, 3000),
    columns=st.integers(1, 40),
    limit=st.sampled_from([4 * KIB, 16 * KIB, 64 * KIB]),
)
def test_message_rows_agrees_with_pyarrow(rows: int, columns: int, limit: int) -> None:
    table = pa.table({f"c{i}": np.arange(rows, dtype=np.int64) * i for i in range(columns)})
    frames = table_to_frames(table, limit)
    counts = [arrowio.message_rows(frame) for frame in frames]
    assert counts == pyarrow_rows(frames)
    assert sum(counts) == rows


@pytest.mark.parametrize(
    "header",
    [
        b"\xff\xff\xff\xff",  # too short
        b"\xff\xff\xff\xff\x00\x00\x00\x00",  # no metadata
        b"\xff\xff\xff\xff\x10\x00\x00\x00" + b"\xff" * 16,  # metadata that does not parse
    ],
)
def test_message_rows_refuses_malformed_headers(header: bytes) -> None:
    with pytest.raises(MalformedArrow):
        arrowio.message_rows(header)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=8, max_size=300), st.booleans())
def test_message_rows_of_any_bytes_is_a_count_or_malformed(tail: bytes, marker: bool) -> None:
    # Metadata that announces its own length (so that parsing starts), then anything.
    prefix = (b"\xff\xff\xff\xff" if marker else b"") + len(tail).to_bytes(4, "little")
    try:
        rows = arrowio.message_rows(prefix + tail)
    except MalformedArrow:
        return
    assert isinstance(rows, int) and rows >= 0


def test_message_rows_never_reads_outside_the_metadata() -> None:
    # The root table right after the root offset, its vtable 16 bytes before it: before
    # the buffer, where a negative offset would have read the buffer's last bytes.
    metadata = (4).to_bytes(4, "little") + (16).to_bytes(4, "little", signed=True) + bytes(8)
    header = b"\xff\xff\xff\xff" + len(metadata).to_bytes(4, "little") + metadata
    with pytest.raises(MalformedArrow, match="outside"):
        arrowio.message_rows(header)


@pytest.mark.parametrize("new_writer", [pa.ipc.new_file, pa.ipc.new_stream], ids=["file", "stream"])
def test_an_arrow_ipc_file_is_read_a_batch_at_a_time(tmp_path: Path, new_writer: Any) -> None:
    table = pa.table({"x": list(range(1000)), "s": pa.array(["a", "b"] * 500).dictionary_encode()})
    path = tmp_path / "whole.arrow"
    with pa.OSFile(str(path), "wb") as sink, new_writer(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=100)
    with open_ipc_file(path) as reader:
        assert reader.schema.equals(table.schema, check_metadata=True)
        assert [batch.num_rows for batch in reader] == [100] * 10  # as written, one by one
    with open_ipc_file(path) as reader:
        assert reader.read_all().equals(table)
    with open_ipc_file(path) as reader:
        framed = [bytes(frame) for frame in reader_to_frames(reader)]
    with open_ipc_file(path) as reader:  # framed as the table read whole was
        assert framed == [frame.to_pybytes() for frame in table_to_frames(reader.read_all())]


@pytest.mark.parametrize("cut", [0, 8, -16])
def test_an_arrow_file_cut_short_or_not_arrow_is_malformed_arrow(tmp_path: Path, cut: int) -> None:
    table = pa.table({"x": list(range(1000))})
    whole = tmp_path / "whole.arrows"
    with pa.OSFile(str(whole), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    cut_short = tmp_path / "cut.arrows"
    cut_short.write_bytes(whole.read_bytes()[:cut] if cut else b"not arrow at all")
    if cut < 0:  # its schema whole, but no end-of-stream marker: refused on opening
        with pytest.raises(MalformedArrow, match="without its end-of-stream marker"):
            arrowio.check_ipc_file(cut_short)
        # Cut in its batch, then bytes that read as a marker: refused as it is read.
        cut_short.write_bytes(whole.read_bytes()[: cut - 8] + b"\xff\xff\xff\xff" + bytes(4))
        with open_ipc_file(cut_short) as reader, pytest.raises(MalformedArrow, match="batch 0"):
            list(reader_to_frames(reader))
    else:
        neither = "neither an Arrow IPC file nor an IPC stream"
        with pytest.raises(MalformedArrow, match=neither), open_ipc_file(cut_short):
            pass
    with pytest.raises(OSError), open_ipc_file(tmp_path / "missing.arrow"):
        pass


def _stream_of_batches(path: Path, *, legacy: bool = False) -> tuple[pa.Table, list[int]]:
    """An IPC stream at ``path`` of four 250-row batches (a dictionary column too); its
    table, and where in the file each message before the end-of-stream marker ends."""
    table = pa.table({"x": list(range(1000)), "s": pa.array(["a", "b"] * 500).dictionary_encode()})
    options = pa.ipc.IpcWriteOptions(use_legacy_format=legacy)
    with (
        pa.OSFile(str(path), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema, options=options) as writer,
    ):
        writer.write_table(table, max_chunksize=250)
    ends = []
    with pa.OSFile(str(path)) as source:
        reader = pa.ipc.open_stream(source)
        ends.append(source.tell())  # the schema's (and nothing else: no batch read yet)
        for _ in reader:
            ends.append(source.tell())
    return table, ends


def _put_refusal(path: Path) -> str:
    """What a put of the stream file at ``path`` is refused with (MalformedArrow), on
    opening it or as its batches are read."""
    with pytest.raises(MalformedArrow) as refused, open_ipc_file(path) as reader:
        list(reader_to_frames(reader))
    return str(refused.value)


@pytest.mark.parametrize("batches_left", [4, 2, 0])
def test_a_stream_cut_at_a_message_boundary_is_refused_not_read_short(
    tmp_path: Path, batches_left: int
) -> None:
    # pyarrow ends a stream at the end of its file as it does at its end-of-stream
    # marker: a stream that lost its marker, or its marker and its last batches, read
    # as a shorter table, and a put of it stored that without a word.
    whole = tmp_path / "whole.arrows"
    _, ends = _stream_of_batches(whole)
    cut = tmp_path / "cut.arrows"
    cut.write_bytes(whole.read_bytes()[: ends[batches_left]])
    assert "without its end-of-stream marker" in _put_refusal(cut)
    # Its last bytes are no marker: refused on opening, before anything is uploaded.
    with pytest.raises(MalformedArrow, match=f"{cut}: the IPC stream ends without its"):
        arrowio.check_ipc_file(cut)


def test_a_stream_whose_last_bytes_look_like_a_marker_is_still_refused(tmp_path: Path) -> None:
    # A batch whose body ends in four zero bytes (the marker of the legacy format) or in
    # the whole marker: the check before the upload passes it, the read does not.
    table = pa.table({"x": pa.array([1, 0xFFFFFFFF], pa.int64())})
    whole = tmp_path / "whole.arrows"
    with pa.OSFile(str(whole), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    cut = tmp_path / "cut.arrows"
    cut.write_bytes(whole.read_bytes()[:-8])  # the marker gone
    assert cut.read_bytes()[-8:] == b"\xff\xff\xff\xff\x00\x00\x00\x00"  # the value 2**32-1
    arrowio.check_ipc_file(cut)
    with open_ipc_file(cut) as reader, pytest.raises(MalformedArrow, match="end-of-stream marker"):
        list(reader_to_frames(reader))


def test_bytes_after_a_streams_marker_are_refused(tmp_path: Path) -> None:
    # Two streams one after the other (a second put appended to the file, say): only
    # the first was read, and the rest was dropped without a word.
    path = tmp_path / "twice.arrows"
    _stream_of_batches(path)
    once = path.read_bytes()
    path.write_bytes(once + once)
    with (
        open_ipc_file(path) as reader,
        pytest.raises(MalformedArrow, match="after its end-of-stream"),
    ):
        list(reader_to_frames(reader))


def test_a_stream_ends_in_the_marker_of_its_own_format(tmp_path: Path) -> None:
    # Its messages in today's format, its end in the one before Arrow 0.15 (four zero
    # bytes), as no writer makes it (pyarrow would read it): refused, as a stream whose
    # last batch ends in four zero bytes and lost its marker must be.
    path = tmp_path / "mixed.arrows"
    _stream_of_batches(path)
    path.write_bytes(path.read_bytes()[:-8] + bytes(4))
    with pytest.raises(MalformedArrow, match="without its end-of-stream marker"):
        arrowio.check_ipc_file(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["marker", "legacy-marker"])
def test_a_whole_stream_reads_to_its_marker(tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "whole.arrows"
    table, _ = _stream_of_batches(path, legacy=legacy)
    arrowio.check_ipc_file(path)
    with open_ipc_file(path) as reader:
        assert reader.read_all().equals(table)
