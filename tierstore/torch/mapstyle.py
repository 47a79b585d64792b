"""The map-style dataset: random access to sample ``i`` of a dataset's shards.

Sample indices run over the shards in name order: index ``i`` is row ``i - start[s]`` of
the shard ``s`` with ``start[s] <= i < start[s + 1]``, where ``start`` accumulates the
shards' row counts. So any sampler works — ``DistributedSampler`` included — and the
sampler alone decides order, sharding and epochs.

Row counts are the catalog's, recorded at put time; when the object is made every shard's
schema frame is read and checked against the first's (a small read per shard, in a few
threads, in the main process; no shard is read whole), and a shard written before row
counts were recorded is counted from the metadata of its frames. Pass ``rows=`` (e.g. a
previous object's :attr:`MapDataset.rows`) to skip that pass (drift is then found when a
shard is read). Each process keeps its most recently used shards converted in a small LRU
cache (``cache_shards``): a read is a whole shard, so samplers that visit a shard's rows
close together are the fast case, and a uniform random sampler over many shards reads a
shard per sample.

Process model and thread safety: as the iterable dataset, the object pickles without its
client or cache and reconnects per process; ``__getitem__`` is thread-safe (the cache is
locked; a shard missed by two threads at once is read twice, never torn).
"""

from __future__ import annotations

import operator
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data

from tierstore.errors import FailedPrecondition, InvalidArgument
from tierstore.torch.arguments import check_int
from tierstore.torch.arrow_tensors import Strings
from tierstore.torch.batches import ShardRows
from tierstore.torch.catalog import ShardSet, read_shard, resolve_through
from tierstore.torch.source import ShardSource, given_source, service_source
from tierstore.types import whole_number

__all__ = ["MapDataset"]

Sample = dict[str, Any]


class MapDataset(torch.utils.data.Dataset[Sample]):
    """``dataset``'s rows as ``dict[str, torch.Tensor]`` samples, by global index.

    ``address``/``token``/``token_file``/``ca``, ``shards``/``prefix``, ``columns``, ``strings``,
    ``retry_s`` and ``source`` as for :class:`~tierstore.torch.IterableDataset`.
    ``rows``: each shard's row count by name, to skip counting them (must name exactly the
    shards read). ``cache_shards``: converted shards kept per process. ``count_threads``:
    parallel small reads while checking schemas (and counting rows not recorded).

    Raises (at construction) what :class:`~tierstore.torch.IterableDataset` raises, plus
    InvalidArgument for a ``rows`` that does not match the shards and for schema drift
    (while counting; with ``rows=``, when the drifted shard is read). ``__getitem__``
    raises IndexError outside ``[-len, len)``, FailedPrecondition when a shard no longer
    has the rows it was counted with or was rewritten since the shards were listed (its
    generation differs: indexes would name other rows), and DataLoss / UnsupportedData /
    Unavailable / ShardNotFound (a shard deleted since) as the iterable dataset does.
    """

    def __init__(
        self,
        dataset: str,
        *,
        address: str | None = None,
        token: str | None = None,
        token_file: str | Path | None = None,
        ca: str | Path | None = None,
        shards: Sequence[str] | None = None,
        prefix: str = "",
        columns: Iterable[str] | None = None,
        strings: Strings = "error",
        rows: Mapping[str, int] | None = None,
        cache_shards: int = 2,
        count_threads: int = 8,
        retry_s: float = 60.0,
        source: ShardSource | None = None,
    ) -> None:
        super().__init__()
        self.cache_shards = check_int("cache_shards", cache_shards, 1)  # True is no count
        count_threads = check_int("count_threads", count_threads, 1)
        given = given_source(source)  # "is None": a source may be falsy (a __len__ of 0)
        self._source = (
            service_source(address, token, ca, retry_s, token_file) if given is None else given
        )
        #: the shards and columns read
        self.shards: ShardSet = resolve_through(
            self._source,
            dataset,
            shards=shards,
            prefix=prefix,
            columns=columns,
            strings=strings,
            with_rows=rows is None,
            count_threads=count_threads,
        )
        #: row count of each shard, in name order
        self.rows: dict[str, int] = self.shards.row_counts() if rows is None else self._given(rows)
        self._rows_given = rows is not None
        #: each shard's generation when listed: a shard read at another was rewritten
        self._generations = dict(zip(self.shards.names, self.shards.generations, strict=False))
        counts = [self.rows[name] for name in self.shards.names]
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self._reset_cache()

    def _reset_cache(self) -> None:
        # Per process: a cache or lock inherited through fork may be mid-update by a thread
        # that does not exist in the child.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, ShardRows] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_lock", "_cache", "_pid"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_cache()

    def __repr__(self) -> str:
        shards = len(self.shards.names)
        return f"MapDataset({self.shards.dataset!r}, {shards} shards, {len(self)} rows)"

    def _given(self, rows: Mapping[str, int]) -> dict[str, int]:
        if not isinstance(rows, Mapping):  # a list of counts or names, a count, a str
            raise InvalidArgument(
                "rows= must map each shard's name to its row count (such as a MapDataset's "
                f".rows), not a {type(rows).__name__}"
            )
        names = set(self.shards.names)
        if set(rows) != names:
            missing, extra = sorted(names - set(rows)), sorted(set(rows) - names)
            raise InvalidArgument(
                f"rows= must give the row count of exactly the shards read: missing "
                f"{missing[:5]}, not read {extra[:5]}"
            )
        counts: dict[str, int] = {}
        for name in self.shards.names:
            count = whole_number(rows[name])  # an int or a numpy integer, not a bool
            if count is None or count < 0:
                raise InvalidArgument(f"rows= counts must be ints >= 0, got {rows[name]!r}")
            counts[name] = count
        return counts

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[str, int]:
        """``(shard, row)`` of sample ``index`` (negative counts from the end).

        Raises IndexError outside ``[-len, len)`` and TypeError for a non-integer.
        """
        asked = operator.index(index)
        total = len(self)
        index = asked + total if asked < 0 else asked
        if not 0 <= index < total:
            raise IndexError(f"sample {asked} of a {total}-sample dataset")
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.shards.names[shard], index - int(self._starts[shard])

    def __getitem__(self, index: int) -> Sample:
        """Sample ``index``: views of its shard's tensors (do not write into them)."""
        shard, row = self.locate(index)
        return self._shard(shard).row(row)

    def _shard(self, name: str) -> ShardRows:
        if self._pid != os.getpid():
            self._reset_cache()
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None:
                self._cache.move_to_end(name)
                return cached
        # Read outside the lock: other threads keep hitting the cache meanwhile.
        rows = read_shard(self._source, self.shards, name)
        if len(rows) != self.rows[name]:
            counted = (
                "rows= gave, or the shard was rewritten since: pass the counts the shards "
                "have (a MapDataset's .rows), or leave rows= out to count them"
                if self._rows_given
                else "when this dataset was made: it was rewritten; make a new MapDataset"
            )
            raise FailedPrecondition(
                f"shard {self.shards.dataset}/{name} has {len(rows)} rows, but "
                f"{self.rows[name]} {counted}"
            )
        listed = self._generations.get(name)
        if listed is not None and rows.generation not in (None, listed):
            # As many rows, but not the same ones: indexes would name other samples,
            # and processes that cached the old generation would go on serving it.
            raise FailedPrecondition(
                f"shard {self.shards.dataset}/{name} was rewritten since this dataset was "
                f"made (generation {rows.generation}, listed at {listed}): make a new "
                "MapDataset"
            )
        with self._lock:
            self._cache[name] = rows
            self._cache.move_to_end(name)
            while len(self._cache) > self.cache_shards:
                self._cache.popitem(last=False)
        return rows
