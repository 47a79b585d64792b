"""A put of a pyarrow RecordBatchReader (or an iterable of record batches) into the engine:
framed as its table is, and a reader that fails or changes schema stores nothing."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest

from tierstore.engine.store import Store
from tierstore.errors import MalformedArrow, UnsupportedData
from tierstore.types import ShardKind

SCHEMA = pa.schema([("i", pa.int64()), ("s", pa.string())], metadata={"owner": "tests"})


def batches(count: int, rows: int = 700) -> Iterator[pa.RecordBatch]:
    for k in range(count):
        ids = np.arange(k * rows, (k + 1) * rows)
        yield pa.record_batch([pa.array(ids), pa.array([f"row-{i}" for i in ids])], schema=SCHEMA)


@pytest.mark.parametrize("dataset", ["plain", "enc", "wt-enc"])
def test_a_reader_reads_back_as_the_table_of_its_batches(store: Store, dataset: str) -> None:
    expected = pa.Table.from_batches(list(batches(6)), schema=SCHEMA)
    info = store.put(dataset, "r", pa.RecordBatchReader.from_batches(SCHEMA, batches(6)))
    assert (info.kind, info.rows) == (ShardKind.ARROW, expected.num_rows)
    assert len(info.frame_sizes) > 2  # 4 KiB frames: the batches were cut
    back = store.read_table(dataset, "r")
    assert back.equals(expected, check_metadata=True)
    store.put(dataset, "t", expected.to_reader())
    assert store.read_table(dataset, "t").equals(expected, check_metadata=True)
    store.put(dataset, "g", batches(3))  # an iterable of batches: the first's schema
    assert store.read_table(dataset, "g").equals(expected.slice(0, 2100))


def test_an_empty_reader_is_a_zero_row_table_of_its_schema(store: Store) -> None:
    info = store.put("enc", "empty", pa.RecordBatchReader.from_batches(SCHEMA, []))
    assert info.rows == 0 and len(info.frame_sizes) == 1
    back = store.read_table("enc", "empty")
    assert back.num_rows == 0 and back.schema.equals(SCHEMA, check_metadata=True)


def failing() -> Iterator[pa.RecordBatch]:
    yield from batches(3)
    raise OSError("the source file went away")


def changing() -> Iterator[pa.RecordBatch]:
    yield from batches(3)
    yield pa.record_batch({"i": pa.array([1.5]), "s": ["x"]})


@pytest.mark.parametrize(
    ("source", "error", "says"),
    [(failing, MalformedArrow, "went away"), (changing, UnsupportedData, "another schema")],
    ids=["fails", "changes-schema"],
)
@pytest.mark.parametrize("dataset", ["plain", "enc"])
def test_a_bad_reader_stores_nothing(
    store: Store, dataset: str, source: object, error: type[Exception], says: str
) -> None:
    before = store.put(dataset, "kept", pa.table({"x": [1, 2, 3]}))
    reader = pa.RecordBatchReader.from_batches(SCHEMA, source())  # type: ignore[operator]
    with pytest.raises(error, match=says):
        store.put(dataset, "kept", reader)
    assert store.stat(dataset, "kept").generation == before.generation
    assert store.read_table(dataset, "kept").equals(pa.table({"x": [1, 2, 3]}))
    with pytest.raises(error, match=says):
        store.put(dataset, "new", source())  # type: ignore[operator]
    assert [info.name for info in store.list(dataset)[0]] == ["kept"]
