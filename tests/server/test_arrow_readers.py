"""A put of a pyarrow RecordBatchReader through the client and the real server: streamed
a frame at a time as its batches are read, and a reader that fails or changes schema
part way stores nothing (the shard's previous generation stays)."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from tierstore import errors
from tierstore.client.client import Client
from tierstore.types import ShardKind
from tierstore.v1 import common_pb2, shards_pb2

from .conftest import ServerProcess

MiB = 1 << 20
SCHEMA = pa.schema([("i", pa.int64()), ("v", pa.float64())], metadata={"owner": "tests"})


def batches(count: int, rows: int = 50_000) -> Iterator[pa.RecordBatch]:
    """``count`` batches of ``rows`` rows, about 16 bytes a row, each made when asked for."""
    for k in range(count):
        ids = np.arange(k * rows, (k + 1) * rows)
        yield pa.record_batch([pa.array(ids), pa.array(ids * 0.5)], schema=SCHEMA)


def test_a_reader_reads_back_as_the_table_of_its_batches(
    admin: Client, any_dataset: str, tmp_path: Path
) -> None:
    expected = pa.Table.from_batches(list(batches(12)), schema=SCHEMA)  # 9.6 MB: 3+ frames
    info = admin.put(any_dataset, "r", pa.RecordBatchReader.from_batches(SCHEMA, batches(12)))
    assert (info.kind, info.rows) == (ShardKind.ARROW, expected.num_rows)
    assert admin.read_table(any_dataset, "r").equals(expected, check_metadata=True)
    admin.put(any_dataset, "t", expected.to_reader())
    assert admin.read_table(any_dataset, "t").equals(expected, check_metadata=True)
    admin.put(any_dataset, "g", batches(2))  # an iterable of batches
    assert admin.read_table(any_dataset, "g").equals(expected.slice(0, 100_000))
    # A dataset of files on disk, read by a scanner as it is sent.
    ds.write_dataset(
        expected,
        tmp_path / "files",
        format="parquet",
        max_rows_per_file=200_000,
        max_rows_per_group=100_000,
    )
    scanner = ds.dataset(tmp_path / "files", format="parquet").scanner()
    admin.put(any_dataset, "scan", scanner.to_reader())
    back = admin.read_table(any_dataset, "scan")
    assert back.sort_by("i").equals(expected.replace_schema_metadata(None), check_metadata=False)


def test_a_reader_or_generator_read_by_a_put_is_refused_by_the_next(
    admin: Client, any_dataset: str
) -> None:
    # Its batches are gone: a second put of it stored a zero-row table over the first,
    # without a word (the obvious retry after "put it again with a new reader").
    for made in (lambda: pa.table({"a": [7, 8]}).to_reader(), lambda: batches(1, 2)):
        source = made()
        admin.put(any_dataset, "once", source)
        with pytest.raises(errors.InvalidArgument, match="was read by an earlier put"):
            admin.put(any_dataset, "once", source)
        assert admin.read_table(any_dataset, "once").num_rows == 2  # the first put's
        admin.put(any_dataset, "once", made())  # a new one goes through


def test_an_empty_reader_is_a_zero_row_table_of_its_schema(admin: Client, any_dataset: str) -> None:
    info = admin.put(any_dataset, "empty", pa.RecordBatchReader.from_batches(SCHEMA, []))
    assert (info.kind, info.rows, len(info.frame_sizes)) == (ShardKind.ARROW, 0, 1)
    back = admin.read_table(any_dataset, "empty")
    assert back.num_rows == 0 and back.schema.equals(SCHEMA, check_metadata=True)


def test_a_reader_is_sent_as_its_batches_are_read(server: ServerProcess, dataset: str) -> None:
    # 40 batches of 800 KB (32 MB): a reader bigger than memory is never held whole in
    # the client. Arrow memory (the batches, and the frames serialized from them) is
    # measured as each batch is read: it holds a few frames, not all that came before.
    alive: set[int] = set()
    most_alive = 0
    most_arrow_bytes = 0

    def watched() -> Iterator[pa.RecordBatch]:
        nonlocal most_alive, most_arrow_bytes
        for k, batch in enumerate(batches(40)):
            most_arrow_bytes = max(most_arrow_bytes, pa.total_allocated_bytes())
            alive.add(k)
            weakref.finalize(batch, alive.discard, k)
            most_alive = max(most_alive, len(alive))
            yield batch

    with server.connect() as client:
        client.frame_bytes = 1 * MiB
        start = pa.total_allocated_bytes()
        info = client.put(dataset, "s", pa.RecordBatchReader.from_batches(SCHEMA, watched()))
    assert info.rows == 40 * 50_000 and len(info.frame_sizes) == 41
    assert most_alive <= 4, most_alive
    assert most_arrow_bytes - start < 8 * MiB, most_arrow_bytes - start
    assert not alive


def failing() -> Iterator[pa.RecordBatch]:
    yield from batches(8)  # past the first frames: some were sent
    raise OSError("the source file went away")


def changing() -> Iterator[pa.RecordBatch]:
    yield from batches(8)
    yield pa.record_batch({"i": pa.array([1.5]), "v": [2.0]})


@pytest.mark.parametrize(
    ("source", "error", "says"),
    [(failing, errors.MalformedArrow, "went away"), (changing, errors.UnsupportedData, "schema")],
    ids=["fails", "changes-schema"],
)
def test_a_bad_reader_stores_nothing(
    admin: Client,
    any_dataset: str,
    source: object,
    error: type[Exception],
    says: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kept = pa.table({"x": [1, 2, 3]})
    before = admin.put(any_dataset, "kept", kept)
    with caplog.at_level(logging.ERROR):
        for shard in ("kept", "new"):
            reader = pa.RecordBatchReader.from_batches(SCHEMA, source())  # type: ignore[operator]
            with pytest.raises(error, match=says):
                admin.put(any_dataset, shard, reader)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # grpc logs none
    assert admin.stat(any_dataset, "kept").generation == before.generation
    assert admin.read_table(any_dataset, "kept").equals(kept)
    assert [info.name for info in admin.list(any_dataset)] == ["kept"]


def test_the_error_of_a_failing_batch_iterator_is_chained(admin: Client, any_dataset: str) -> None:
    # Its MalformedArrow kept the message but lost the cause, and its traceback with it:
    # where in the caller's own generator it failed.
    with pytest.raises(errors.MalformedArrow, match="went away") as caught:
        admin.put(any_dataset, "chained", failing())
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.__traceback__ is not None


def test_a_put_stream_whose_header_counts_no_arrow_frames_ends_at_its_end(
    server: ServerProcess, dataset: str
) -> None:
    # What the client sends for a reader: the count is not known before the batches are.
    table = pa.Table.from_batches(list(batches(2)), schema=SCHEMA)
    frames = [table.schema.serialize().to_pybytes()] + [
        b.serialize().to_pybytes() for b in table.to_batches()
    ]
    header = shards_pb2.PutShardHeader(
        dataset=dataset, shard="streamed", kind=common_pb2.SHARD_KIND_ARROW, frame_count=0
    )
    messages = [
        shards_pb2.PutShardRequest(header=header),
        *(shards_pb2.PutShardRequest(frame=f) for f in frames),
        shards_pb2.PutShardRequest(end=shards_pb2.PutShardEnd()),
    ]
    call = server.channel().stream_unary("/tierstore.v1.ShardService/PutShard")
    call((m.SerializeToString() for m in messages), metadata=server.metadata, timeout=30)
    with server.connect() as client:
        assert client.read_table(dataset, "streamed").equals(table, check_metadata=True)
        # Raw bytes still count their frames: 0 announced and one sent is refused.
        header.kind, header.shard = common_pb2.SHARD_KIND_RAW, "raw"
        raw = [shards_pb2.PutShardRequest(header=header), messages[1], messages[-1]]
        with pytest.raises(Exception, match="more frames than the 0"):
            call((m.SerializeToString() for m in raw), metadata=server.metadata, timeout=30)
        assert [info.name for info in client.list(dataset)] == ["streamed"]
