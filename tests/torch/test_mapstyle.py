"""MapDataset over an in-memory service (tests/torch/memory.py): row counting from frame
metadata and schema checks at construction. The DataLoader tests against the real server
are in test_dataloader.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tierstore.errors import FailedPrecondition, InvalidArgument
from tierstore.torch import IterableDataset, MapDataset

from .memory import MemoryService, MemorySource, sample_table

#: rows per shard (20 bytes each); at 32 KiB frames the larger shards span several frames
ROWS = {"a": 3000, "b": 0, "c": 1, "d": 12000}


def tables() -> dict[str, pa.Table]:
    return {name: sample_table(i, n) for i, (name, n) in enumerate(ROWS.items())}


def test_recorded_row_counts_are_used_and_only_schema_frames_are_read() -> None:
    svc = MemoryService("ds", tables(), frame_bytes=32768)
    dataset = MapDataset("ds", source=MemorySource(svc))
    assert dataset.rows == ROWS
    assert svc.reads == []
    schema_frames = {(info.name, 0, info.frame_sizes[0]) for info in svc.list("ds")}
    assert set(svc.gets) == schema_frames  # each shard's schema frame, nothing else
    even = IterableDataset("ds", source=MemorySource(svc), even_ranks=True)
    assert even.shards.rows == tuple(rows for rows in ROWS.values() if rows)  # empty left out


def test_rows_are_counted_from_frame_metadata_without_reading_a_shard_whole() -> None:
    # Shards written before row counts were recorded.
    svc = MemoryService("ds", tables(), frame_bytes=32768, record_rows=False)
    assert max(info.frame_count for info in svc.list("ds")) > 5  # several frames to count

    dataset = MapDataset("ds", source=MemorySource(svc), count_threads=3)

    assert dataset.rows == ROWS
    assert len(dataset) == sum(ROWS.values())
    assert svc.reads == []  # no shard read (and converted) whole
    sizes = {info.name: info.size for info in svc.list("ds")}
    ranged = [(shard, length) for shard, _, length in svc.gets]
    assert all(length is not None and length <= 4096 for _, length in ranged), ranged
    assert sum(length or 0 for _, length in ranged) < sum(sizes.values()) / 5
    # The counts name the right rows: the last sample of every shard is its last row.
    ends = np.cumsum([n for n in ROWS.values()])
    for (shard, rows), end in zip(ROWS.items(), ends, strict=True):
        if rows:
            assert (
                int(dataset[int(end) - 1]["id"]) == list(ROWS).index(shard) * 1_000_000 + rows - 1
            )


def drifted_service(record_rows: bool = True) -> MemoryService:
    drifted = pa.table({"id": np.arange(3, dtype=np.int32), "x": sample_table(2, 3)["x"]})
    shards = {"a": sample_table(0, 2), "b": sample_table(1, 4), "c": drifted}
    return MemoryService("ds", shards, record_rows=record_rows)


@pytest.mark.parametrize("recorded", [True, False], ids=["rows-recorded", "rows-counted"])
def test_schema_drift_is_found_at_construction_naming_both_shards(recorded: bool) -> None:
    svc = drifted_service(recorded)
    with pytest.raises(
        InvalidArgument, match="column 'id' is int32 in shard 'c' but int64 in shard 'a'"
    ):
        MapDataset("ds", source=MemorySource(svc))
    with pytest.raises(InvalidArgument, match="column 'id' is int32 in shard 'c'"):
        IterableDataset("ds", source=MemorySource(svc), even_ranks=True)
    assert svc.reads == []
    # Only the selected columns have to agree.
    assert len(MapDataset("ds", source=MemorySource(svc), columns=["x"])) == 9


def test_given_rows_skip_the_count_and_drift_is_found_when_the_shard_is_read() -> None:
    svc = drifted_service()
    dataset = MapDataset("ds", source=MemorySource(svc), rows={"a": 2, "b": 4, "c": 3})
    assert svc.gets == [("a", 0, svc.list("ds")[0].frame_sizes[0])]  # the reference schema only
    assert int(dataset[5]["id"]) == 1_000_003
    with pytest.raises(InvalidArgument, match="column 'id' is int32 in shard 'c'"):
        dataset[6]


def test_a_reference_shard_rewritten_with_other_types_is_named_as_rewritten() -> None:
    svc = MemoryService("ds", {"a": sample_table(0, 2), "b": sample_table(1, 4)})
    dataset = MapDataset("ds", source=MemorySource(svc))
    svc.rewrite("a", sample_table(0, 2).set_column(0, "id", pa.array([1, 2], pa.int32())))
    # It named shard 'a' twice: "is int32 in shard 'a' but int64 in shard 'a'".
    with pytest.raises(
        InvalidArgument,
        match=r"is int32 in shard 'a' but int64 when this dataset object was made "
        r"\(it was rewritten since\)",
    ):
        dataset[0]


def test_a_shard_rewritten_with_as_many_rows_is_refused_not_mixed_in() -> None:
    # Its rows would have changed under the indexes: samples of one epoch drawn from
    # two generations, depending on which process had it cached.
    svc = MemoryService("ds", {"a": sample_table(0, 2), "b": sample_table(1, 4)})
    for rows in (None, {"a": 2, "b": 4}):
        dataset = MapDataset("ds", source=MemorySource(svc), rows=rows, cache_shards=1)
        assert int(dataset[2]["id"]) == 1_000_000  # shard b, read and cached
        svc.rewrite("a", sample_table(5, 2))
        with pytest.raises(FailedPrecondition, match=r"ds/a was rewritten .*generation"):
            dataset[0]
        assert int(dataset[3]["id"]) == 1_000_001  # the others still read
        svc.rewrite("b", sample_table(1, 4))  # put back: a fresh dataset for the next pass


def test_a_source_that_returns_a_bare_table_is_told_so() -> None:
    # A two-column table would otherwise unpack as (table, generation), wrongly.
    class TableOnly(MemorySource):
        def read(self, dataset: str, shard: str, stop: Any = None) -> Any:
            return super().read(dataset, shard, stop).table

    svc = MemoryService("ds", {"a": sample_table(0, 2)})
    dataset = MapDataset("ds", source=TableOnly(svc), rows={"a": 2})
    with pytest.raises(InvalidArgument, match=r"TableOnly.read returned a Table, not a Shard"):
        dataset[0]


def test_a_wrong_rows_count_is_blamed_on_rows_too() -> None:
    svc = MemoryService("ds", {"a": sample_table(0, 2), "b": sample_table(1, 4)})
    dataset = MapDataset("ds", source=MemorySource(svc), rows={"a": 2, "b": 5})
    with pytest.raises(FailedPrecondition, match=r"has 4 rows, but 5 rows= gave, or the shard"):
        dataset[2]
    with pytest.raises(InvalidArgument, match="counts must be ints"):
        MapDataset("ds", source=MemorySource(svc), rows={"a": True, "b": 4})
    with pytest.raises(InvalidArgument, match="counts must be ints"):
        MapDataset("ds", source=MemorySource(svc), rows={"a": 2.0, "b": 4})


def test_rows_counts_may_be_numpy_integers() -> None:
    svc = MemoryService("ds", {"a": sample_table(0, 2), "b": sample_table(1, 4)})
    rows = {"a": np.int64(2), "b": np.uint32(4)}
    dataset = MapDataset("ds", source=MemorySource(svc), rows=rows)  # type: ignore[arg-type]
    assert len(dataset) == 6 and type(len(dataset)) is int


@pytest.mark.parametrize("rows", [6, ["a", "b"], [2, 4], "ab"], ids=repr)
def test_rows_that_map_no_name_to_a_count_are_refused_by_name(rows: Any) -> None:
    # rows=6 raised a bare TypeError ('int' object is not iterable), and a list of the
    # shard names one from indexing the list with a name; a list of counts was refused
    # as naming shards not read ("not read [2, 4]").
    svc = MemoryService("ds", {"a": sample_table(0, 2), "b": sample_table(1, 4)})
    with pytest.raises(InvalidArgument, match="rows= must map each shard's name to its row"):
        MapDataset("ds", source=MemorySource(svc), rows=rows)
