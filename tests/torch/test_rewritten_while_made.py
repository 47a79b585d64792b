"""Shards rewritten while a dataset object is being made.

A dataset object lists its shards, then reads ranges of them (each schema frame; the
frame headers of shards written before row counts were recorded) at offsets and lengths
taken from the listing's frame sizes. A writer that puts a new generation in between
changes those sizes: the object is made from one consistent listing (listed and read
again), or fails saying the shards kept changing — never a MalformedArrow naming a
good shard, nor row counts of another generation.

The writer is made to land in that window deterministically: the listing is wrapped so
that a shard is rewritten right after it returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pyarrow as pa
import pytest
from torch.utils.data import DataLoader

from tests.server.conftest import ServerProcess
from tierstore.client.client import Client
from tierstore.errors import FailedPrecondition
from tierstore.torch import IterableDataset, MapDataset

from .conftest import Samples, loader_batches, sample_table, write_samples
from .memory import MemoryService, MemorySource
from .memory import sample_table as memory_table

pytestmark = pytest.mark.timeout(120)


def padded(shard: int, rows: int, pad: int) -> pa.Table:
    """Shard ``shard``'s first ``rows`` rows, its schema frame grown by ``pad`` bytes of
    schema metadata: the listed size of that frame no longer holds it."""
    return sample_table(shard, rows).replace_schema_metadata({"pad": "p" * pad})


@contextlib.contextmanager
def rewritten_after_listings(rewrite: Callable[[int], None], times: int) -> Iterator[None]:
    """Every ``Client.list`` call, for its first ``times`` calls, is followed at once by
    ``rewrite(call_number)``: a writer landing between a listing and the reads it placed."""
    listed = Client.list
    calls = 0

    def listing_then_rewrite(self: Client, *args: Any, **kwargs: Any) -> list[Any]:
        nonlocal calls
        infos = listed(self, *args, **kwargs)
        if calls < times:
            calls += 1
            rewrite(calls)
        return infos

    with mock.patch.object(Client, "list", listing_then_rewrite):
        yield


def loader_ids(dataset: Any) -> list[int]:
    loader = DataLoader(
        dataset, batch_size=None, num_workers=2, multiprocessing_context="fork", timeout=60
    )
    return sorted(int(sample["id"]) for sample in loader_batches(loader))


@pytest.mark.parametrize("shard", ["part-000", "part-003"], ids=["reference", "other"])
def test_a_shard_rewritten_after_the_listing_is_listed_and_read_again(
    server: ServerProcess, admin: Client, shard: str
) -> None:
    samples: Samples = write_samples(server, admin)
    index = samples.shards.index(shard)

    def rewrite(_: int) -> None:
        admin.put(samples.dataset, shard, padded(index, 25, 600))

    with rewritten_after_listings(rewrite, times=1):
        # It failed: "malformed Arrow data: torch-.../part-000: its first frame is not an
        # Arrow schema" — the new, longer schema frame read to the old frame's length.
        dataset = MapDataset(samples.dataset, **samples.connection)

    rows = {**samples.rows, shard: 25}
    assert dataset.rows == rows
    listed_at = dataset.shards.generations[dataset.shards.names.index(shard)]
    assert listed_at == admin.stat(samples.dataset, shard).generation
    written = sorted(
        i for n, count in enumerate(rows.values()) for i in sample_table(n, count)["id"].to_pylist()
    )
    assert loader_ids(dataset) == written


def test_the_reference_shard_rewritten_after_the_listing_of_an_iterable_dataset(
    server: ServerProcess, admin: Client
) -> None:
    samples: Samples = write_samples(server, admin)

    def rewrite(_: int) -> None:
        admin.put(samples.dataset, "part-000", padded(0, 25, 600))

    with rewritten_after_listings(rewrite, times=1):
        dataset = IterableDataset(samples.dataset, shuffle=False, **samples.connection)

    assert dataset.shards.generations[0] == admin.stat(samples.dataset, "part-000").generation
    assert len(loader_ids(dataset)) == samples.total - samples.rows["part-000"] + 25


def test_shards_rewritten_after_every_listing_fail_saying_so(
    server: ServerProcess, admin: Client
) -> None:
    samples: Samples = write_samples(server, admin, rows=(10, 10))

    def rewrite(call: int) -> None:
        admin.put(samples.dataset, "part-000", padded(0, 10, 200 + 100 * (call % 10)))

    with (
        rewritten_after_listings(rewrite, times=1000),
        pytest.raises(
            FailedPrecondition,
            match=r"shard\(s\) \['part-000'\] .*rewritten or deleted while this dataset "
            r"object was made",
        ),
    ):
        MapDataset(samples.dataset, **samples.connection)


def test_a_shard_deleted_after_the_listing_is_left_out_when_listed_again(
    server: ServerProcess, admin: Client
) -> None:
    samples: Samples = write_samples(server, admin, rows=(10, 12, 14))

    def delete(_: int) -> None:
        admin.delete(samples.dataset, "part-000")

    with rewritten_after_listings(delete, times=1):
        dataset = MapDataset(samples.dataset, **samples.connection)
    assert dataset.rows == {"part-001": 12, "part-002": 14}


def test_rows_counted_from_frames_of_a_shard_rewritten_after_the_listing() -> None:
    # Shards written before row counts were recorded (which only an old server's data
    # holds: the in-memory service stands in), counted when len() is first asked for.
    tables = {"a": memory_table(0, 3000), "b": memory_table(1, 5000)}
    svc = MemoryService("ds", tables, frame_bytes=4096, record_rows=False)
    dataset = IterableDataset("ds", source=MemorySource(svc), shuffle=False)
    listed = svc.list
    rewrites = iter([lambda: svc.rewrite("b", memory_table(1, 4000), frame_bytes=16384)])

    def listing_then_rewrite(*args: Any, **kwargs: Any) -> Any:
        infos = listed(*args, **kwargs)
        for rewrite in rewrites:
            rewrite()
            break
        return infos

    svc.list = listing_then_rewrite  # type: ignore[method-assign]
    # It failed (frame headers read at the old generation's offsets), or counted wrongly.
    assert len(dataset) == 3000 + 4000
