"""An in-memory stand-in for the service, for dataset tests that need no server.

:class:`MemoryService` answers the few client calls the datasets make (``list``, ranged
``get`` of the schema frame, ``read_table`` and the access-plan calls, which it records),
and :class:`MemorySource` is a :class:`~tierstore.torch.source.ShardSource` over it. The
shards are framed with :mod:`tierstore.arrowio`, as the real service frames them.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from tierstore.arrowio import frames_to_table, table_to_frames
from tierstore.errors import DatasetNotFound, ShardNotFound, WrongShardKind
from tierstore.torch.source import ShardTable
from tierstore.types import ShardInfo, ShardKind


def sample_table(shard: int, rows: int, width: int = 3) -> pa.Table:
    """A table whose ``id`` column numbers its rows uniquely across shards."""
    ids = np.arange(rows, dtype=np.int64) + shard * 1_000_000
    values = np.repeat(ids.astype(np.float32)[:, None], width, axis=1)
    storage = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), width)
    tensor = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.float32(), [width]), storage)
    return pa.table({"id": ids, "x": tensor})


class MemoryService:
    """One dataset's shards held in memory; thread-safe (reads only, calls recorded)."""

    def __init__(
        self,
        dataset: str,
        shards: Mapping[str, pa.Table | bytes],
        frame_bytes: int = 4096,
        record_rows: bool = True,
    ):
        self.dataset = dataset
        #: each Arrow shard's row count, as the catalog records it at put time (none
        #: without ``record_rows``: shards written before rows were recorded)
        self._rows = {
            name: value.num_rows
            for name, value in shards.items()
            if record_rows and isinstance(value, pa.Table)
        }
        self._frames = {
            name: table_to_frames(value, frame_bytes)
            if isinstance(value, pa.Table)
            else [pa.py_buffer(value)]
            for name, value in shards.items()
        }
        self._kinds = {
            name: ShardKind.ARROW if isinstance(v, pa.Table) else ShardKind.RAW
            for name, v in shards.items()
        }
        self.calls: list[tuple[str, Any]] = []
        self.reads: list[str] = []
        #: every ranged ``get``: (shard, offset, length)
        self.gets: list[tuple[str, int, int | None]] = []
        #: each shard's generation (1 unless a test sets another: a rewritten shard)
        self.generations: dict[str, int] = {}
        self._lock = threading.Lock()

    def rewrite(self, name: str, table: pa.Table, frame_bytes: int = 4096) -> None:
        """Put a new generation of Arrow shard ``name`` (or its first: a shard added)."""
        if name not in self._frames:
            self._kinds[name] = ShardKind.ARROW
        else:
            self.generations[name] = self.generations.get(name, 1) + 1
        self._frames[name] = table_to_frames(table, frame_bytes)
        self._rows[name] = table.num_rows

    def _info(self, name: str) -> ShardInfo:
        sizes = tuple(frame.size for frame in self._frames[name])
        generation = self.generations.get(name, 1)
        kind = self._kinds[name]
        info = ShardInfo(self.dataset, name, generation, kind, sizes, 0.0, False, True, True)
        return dataclasses.replace(info, rows=self._rows.get(name))

    def _check(self, dataset: str, shard: str | None = None) -> None:
        if dataset != self.dataset:
            raise DatasetNotFound(f"no dataset {dataset!r}")
        if shard is not None and shard not in self._frames:
            raise ShardNotFound(f"no shard {dataset}/{shard}")

    def list(self, dataset: str, prefix: str = "", *, limit: int | None = None) -> list[ShardInfo]:
        self._check(dataset)
        return [self._info(n) for n in sorted(self._frames) if n.startswith(prefix)]

    def get(
        self, dataset: str, shard: str, *, offset: int = 0, length: int | None = None
    ) -> pa.Buffer:
        self._check(dataset, shard)
        with self._lock:
            self.gets.append((shard, offset, length))
        data = b"".join(frame.to_pybytes() for frame in self._frames[shard])
        return pa.py_buffer(data[offset : None if length is None else offset + length])

    def read_table(self, dataset: str, shard: str, columns: Any = None) -> pa.Table:
        self._check(dataset, shard)
        if self._kinds[shard] is ShardKind.RAW:
            raise WrongShardKind(f"{dataset}/{shard} holds raw bytes")
        with self._lock:
            self.reads.append(shard)
        return frames_to_table(self._frames[shard], columns)

    # The access-plan calls, recorded.

    def declare_plan(self, dataset: str, **kwargs: Any) -> str:
        with self._lock:
            self.calls.append(("declare", kwargs))
            return f"job-{len(self.calls)}"

    def report_position(self, job: str, position: int) -> None:
        with self._lock:
            self.calls.append(("report", (job, position)))

    def close_plan(self, job: str) -> None:
        with self._lock:
            self.calls.append(("close", job))


class MemorySource:
    """A ShardSource over a MemoryService (no connection, nothing to reopen)."""

    def __init__(self, service: MemoryService) -> None:
        self.service = service

    def read(self, dataset: str, shard: str, stop: threading.Event | None = None) -> ShardTable:
        table = self.service.read_table(dataset, shard)  # tests rewrite between reads only
        return ShardTable(table, self.service.generations.get(shard, 1))

    def client(self) -> Any:
        return self.service
