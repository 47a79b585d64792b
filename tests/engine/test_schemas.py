"""A dataset's Arrow schema: every shard put into it must have it (tierstore/engine/schemas.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tests.engine.stores import StoreFactory, payload
from tierstore.errors import InvalidArgument, MalformedArrow, SchemaMismatch, ShardNotFound
from tierstore.tensors import tensor_to_table
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings

SCHEMA = pa.schema([pa.field("label", pa.int64(), nullable=False), pa.field("text", pa.string())])


def table(rows: int = 3, **columns: pa.Array) -> pa.Table:
    data = {"label": pa.array(range(rows), pa.int64()), "text": pa.array(["t"] * rows)}
    return pa.Table.from_pydict(data | columns, schema=SCHEMA if not columns else None)


@pytest.fixture
def settings() -> DatasetSettings:
    return DatasetSettings(arrow_schema=SCHEMA.serialize().to_pybytes())


def test_a_dataset_takes_only_shards_of_its_schema(
    open_store: StoreFactory, settings: DatasetSettings
) -> None:
    store = open_store(datasets={"typed": settings, "any": DatasetSettings()})
    store.put("typed", "a", table())
    # Metadata aside: a schema's or a field's metadata may differ.
    tagged = table().replace_schema_metadata({b"source": b"camera-7"})
    store.put("typed", "b", tagged)
    assert store.read_table("typed", "b").schema.metadata == {b"source": b"camera-7"}
    wrong_type = table().set_column(
        0, pa.field("label", pa.int32()), pa.array([1, 2, 3], pa.int32())
    )
    cases = {
        "type": (wrong_type, "column 'label' is int32, the dataset's is int64 not null"),
        "nullability": (
            pa.table({"label": pa.array([1], pa.int64()), "text": ["x"]}),
            "column 'label' is int64, the dataset's is int64 not null",
        ),
        "columns": (pa.table({"text": ["x"], "label": [1]}), "its columns are ['text', 'label']"),
        "raw": (b"bytes", "takes Arrow shards of its schema only, and 'a' is raw bytes"),
        "tensor": (np.zeros((2, 3)), "its columns are ['tensor']"),
    }
    for name, (value, said) in cases.items():
        with pytest.raises(SchemaMismatch) as caught:
            store.put("typed", "a", value)
        assert said in str(caught.value), name
        assert store.read_table("typed", "a").equals(table())  # the shard kept as it was
    with pytest.raises(SchemaMismatch):  # a reader's frames, as a streamed put's
        store.put("typed", "c", wrong_type.to_reader())
    with pytest.raises(ShardNotFound):
        store.stat("typed", "c")
    store.put("any", "a", b"bytes")  # a dataset without a schema takes anything


def test_a_tensor_dataset_takes_tensors_of_one_dtype_and_shape_past_the_first_axis(
    open_store: StoreFactory,
) -> None:
    schema = tensor_to_table(np.zeros((1, 4, 4), np.float32)).schema
    settings = DatasetSettings(arrow_schema=schema.serialize().to_pybytes())
    store = open_store(datasets={"emb": settings})
    store.put("emb", "a", np.ones((10, 4, 4), np.float32))  # another count of rows
    np.testing.assert_array_equal(store.read_tensor("emb", "a"), np.ones((10, 4, 4), np.float32))
    # The same tensor cut at another frame size has another row layout in its Arrow
    # type (a row must fit a quarter of a frame): it was refused, naming shape=[1].
    wide = np.ones((8, 64, 64), np.float32)  # 16 KiB rows: this store's 4 KiB frames cut
    wide_schema = tensor_to_table(wide[:1]).schema  # them "flat", 4 MiB ones in "rows"
    assert tensor_to_table(wide, 4096).schema != wide_schema
    store.create_dataset("wide", DatasetSettings(arrow_schema=wide_schema.serialize().to_pybytes()))
    store.put("wide", "small-frames", wide)
    np.testing.assert_array_equal(store.read_tensor("wide", "small-frames"), wide)
    cases = {
        "row shape": (np.ones((10, 4, 5), np.float32), "is a float32 (N, 4, 5) tensor"),
        "dtype": (np.ones((10, 4, 4), np.float64), "is a float64 (N, 4, 4) tensor"),
        "axes": (np.ones(16, np.float32), "is a float32 (N) tensor"),
        "table": (pa.table({"x": [1]}), "is no tensor"),
    }
    for name, (value, said) in cases.items():
        with pytest.raises(SchemaMismatch, match="takes float32 \\(N, 4, 4\\) tensors") as caught:
            store.put("emb", "b", value)
        assert said in str(caught.value), name


def test_a_staged_put_of_another_schema_stages_nothing(
    open_store: StoreFactory, settings: DatasetSettings
) -> None:
    store = open_store(datasets={"typed": settings}, put_chunk_bytes=1 << 16)
    big = pa.table({"label": pa.array(range(400_000), pa.int32()), "text": ["x"] * 400_000})
    before = store.stats().lmdb_file_bytes
    with pytest.raises(SchemaMismatch):
        store.put("typed", "big", big)  # 3.6 MB of frames, staged 64 KiB at a time
    assert store.stats().lmdb_file_bytes - before < 256 << 10  # none was written
    assert store.stats().hot_bytes == 0


def test_the_schema_is_kept_across_a_restart_and_a_rebuild_from_the_archive(
    open_store: StoreFactory, settings: DatasetSettings
) -> None:
    archive = MemoryTier()
    store = open_store(archive, datasets={"typed": settings})
    store.put("typed", "a", table())
    assert store.drain(10)
    reopened = open_store.reopen(store, archive)
    assert reopened.get_dataset("typed") == settings
    with pytest.raises(SchemaMismatch):
        reopened.put("typed", "b", payload(10))
    reopened.close()
    rebuilt = open_store(archive)
    assert rebuilt.rebuild_from_archive() == 1
    assert rebuilt.get_dataset("typed") == settings
    with pytest.raises(SchemaMismatch):
        rebuilt.put("typed", "b", payload(10))


def test_a_schema_that_is_no_schema_is_refused_at_creation(open_store: StoreFactory) -> None:
    store = open_store()
    with pytest.raises(MalformedArrow, match="not an Arrow IPC schema message"):
        store.create_dataset("bad", DatasetSettings(arrow_schema=b"not a schema"))
    with pytest.raises(InvalidArgument, match="arrow_schema must be the bytes"):
        DatasetSettings(arrow_schema=SCHEMA)  # type: ignore[arg-type]
    assert store.list_datasets() == []
