"""The loader benchmark's pieces: the shards, the plain PyTorch datasets, the plugin's read
counter, and one timed epoch. The live node they read from is in :mod:`loader_testbed`.

The same Arrow shards exist three ways (:meth:`loader_testbed.Testbed.load`):

* **local Arrow IPC files** in the work directory — the ceiling's input;
* **objects** in a SeaweedFS bucket (the same file bytes) — the boto3 baseline's input;
* **shards** of the tierstore dataset ``loader`` (``Client.put`` of the same table).

A shard is ``rows_per_shard`` rows of ``image``, a ``fixed_shape_tensor`` of uint8
``(3, 128, 128)`` (48 KiB a row), and ``label``, an int64 that is the row's global index
(so an epoch can check that it saw every row exactly once). Record batches hold
``rows_per_batch`` rows (just under 4 MiB), so each is one tierstore frame and every
column converts to a tensor without a copy on every path.

The plain datasets (:class:`FileDataset`, :class:`Boto3Dataset`) do what a careful user
would write without tierstore, and cost what the plugin costs where it counts: the same
epoch order rules (seeded shard permutation, ``order[worker::workers]``, a seeded row
permutation per shard), batches that span shards, and each batch gathered once, straight
into shared memory, as ``default_collate`` does in a worker (:func:`_gather`).
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import queue
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import numpy as np
import pyarrow as pa
import torch
import torch.utils.data

from tierstore.arrowio import fixed_list_values
from tierstore.client.client import Client
from tierstore.torch.feed import DeviceFeeder
from tierstore.torch.source import ShardTable

__all__ = [
    "DATASET",
    "OBJECT_BUCKET",
    "Boto3Dataset",
    "CudaAccelerator",
    "DataSpec",
    "Epoch",
    "FileDataset",
    "ReadPaths",
    "ipc_file_bytes",
    "run_epoch",
    "s3_client",
    "shard_table",
]

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
DATASET = "loader"
OBJECT_BUCKET = "loader-bench-objects"
IMAGE_SHAPE = (3, 128, 128)

Batch = dict[str, torch.Tensor]


# The shards.


@dataclass(frozen=True, slots=True)
class DataSpec:
    """How many shards of how many rows; every figure derives from these."""

    shards: int
    rows_per_shard: int = 640
    rows_per_batch: int = 80  # one record batch: 80 x 48 KiB = 3.75 MiB, one 4 MiB frame

    @classmethod
    def for_bytes(cls, total_bytes: int) -> DataSpec:
        """The fewest whole shards holding at least ``total_bytes`` of payload."""
        spec = cls(1)
        return cls(max(1, -(-total_bytes // spec.shard_bytes)))

    @property
    def row_bytes(self) -> int:
        return int(np.prod(IMAGE_SHAPE)) + 8

    @property
    def shard_bytes(self) -> int:
        return self.rows_per_shard * self.row_bytes

    @property
    def rows(self) -> int:
        return self.shards * self.rows_per_shard

    @property
    def payload_bytes(self) -> int:
        return self.rows * self.row_bytes

    @property
    def names(self) -> list[str]:
        return [f"shard-{i:05d}" for i in range(self.shards)]

    @property
    def label_sum(self) -> int:
        return self.rows * (self.rows - 1) // 2


def shard_table(spec: DataSpec, index: int) -> pa.Table:
    """Shard ``index``: random image bytes (seeded by the index), labels = global row ids."""
    rng = np.random.default_rng(index)
    first = index * spec.rows_per_shard
    batches = []
    for start in range(0, spec.rows_per_shard, spec.rows_per_batch):
        rows = min(spec.rows_per_batch, spec.rows_per_shard - start)
        image = np.frombuffer(rng.bytes(rows * int(np.prod(IMAGE_SHAPE))), np.uint8)
        labels = np.arange(first + start, first + start + rows, dtype=np.int64)
        batches.append(
            pa.record_batch(
                {
                    "image": pa.FixedShapeTensorArray.from_numpy_ndarray(
                        image.reshape(rows, *IMAGE_SHAPE)
                    ),
                    "label": pa.array(labels),
                }
            )
        )
    return pa.Table.from_batches(batches)


def ipc_file_bytes(table: pa.Table) -> pa.Buffer:
    """The table as an Arrow IPC file, record batches as they are (no compression)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches():
            writer.write_batch(batch)
    return sink.getvalue()


# The plain datasets.


def _shard_order(count: int, seed: int, epoch: int) -> list[int]:
    order: list[int] = np.random.default_rng((seed, epoch)).permutation(count).tolist()
    return order


def _row_order(rows: int, seed: int, epoch: int, shard: int) -> np.ndarray:
    return np.random.default_rng((seed, epoch, shard, 1)).permutation(rows).astype(np.int64)


class _ShardViews:
    """A shard's columns as tensors, one pair per record batch, views of its memory."""

    def __init__(self, table: pa.Table) -> None:
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        with warnings.catch_warnings():
            # Read-only memory (a mapped file, a received body): never written here.
            warnings.simplefilter("ignore", UserWarning)
            for batch in table.to_batches():
                # (flatten() would import pyarrow.compute in every freshly forked worker)
                image = fixed_list_values(batch.column("image").storage)
                label = batch.column("label")
                self.images.append(
                    torch.from_numpy(image.to_numpy(zero_copy_only=True)).view(
                        len(batch), *IMAGE_SHAPE
                    )
                )
                self.labels.append(torch.from_numpy(label.to_numpy(zero_copy_only=True)))
        self.starts = np.cumsum([0] + [len(x) for x in self.labels], dtype=np.int64)

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        groups = np.searchsorted(self.starts, rows, side="right") - 1
        return groups, rows - self.starts[groups]


def _shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    # As default_collate does in a worker: the batch is allocated in shared memory, so it
    # reaches the main process without another copy.
    numel = int(np.prod(shape))
    storage = torch.UntypedStorage._new_shared(numel * dtype.itemsize)  # type: ignore[no-untyped-call]
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


def _gather(parts: list[tuple[_ShardViews, np.ndarray]]) -> Batch:
    """One copy of each row, straight into shared memory. Within a batch the rows are
    grouped by record batch (a batch is a set of random rows; SGD does not see the order),
    so each group is one ``index_select`` into place."""
    total = sum(len(rows) for _, rows in parts)
    image = _shared_empty((total, *IMAGE_SHAPE), torch.uint8)
    label = _shared_empty((total,), torch.int64)
    at = 0
    for views, rows in parts:
        groups, local = views.locate(rows)
        order = np.argsort(groups, kind="stable")
        groups, local = groups[order], local[order]
        cuts = [0, *(np.flatnonzero(np.diff(groups)) + 1).tolist(), len(groups)]
        for start, stop in itertools.pairwise(cuts):
            group, index = int(groups[start]), torch.from_numpy(local[start:stop])
            torch.index_select(views.images[group], 0, index, out=image[at + start : at + stop])
            torch.index_select(views.labels[group], 0, index, out=label[at + start : at + stop])
        at += len(rows)
    return {"image": image, "label": label}


class _PlainDataset(torch.utils.data.IterableDataset[Batch]):
    """Shards in a seeded order, ``order[worker::workers]`` per DataLoader worker, rows
    in a seeded order per shard, batches of ``batch_size`` rows spanning shards."""

    def __init__(self, names: list[str], batch_size: int, seed: int = 0) -> None:
        self.names = names
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def open_shard(self, name: str) -> pa.Table:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        order = _shard_order(len(self.names), self.seed, self.epoch)[worker::workers]
        parts: list[tuple[_ShardViews, np.ndarray]] = []
        held = 0
        for shard in order:
            views = _ShardViews(self.open_shard(self.names[shard]))
            rows = _row_order(int(views.starts[-1]), self.seed, self.epoch, shard)
            at = 0
            while at < len(rows):
                take = rows[at : at + self.batch_size - held]
                parts.append((views, take))
                held += len(take)
                at += len(take)
                if held == self.batch_size:
                    yield _gather(parts)
                    parts, held = [], 0
        if held:
            yield _gather(parts)


class FileDataset(_PlainDataset):
    """The ceiling: each shard's local Arrow IPC file, memory-mapped, read in place."""

    def __init__(self, directory: Path, names: list[str], batch_size: int, seed: int = 0):
        super().__init__(names, batch_size, seed)
        self.directory = directory

    def open_shard(self, name: str) -> pa.Table:
        return pa.ipc.open_file(pa.memory_map(str(self.directory / f"{name}.arrow"))).read_all()


class Boto3Dataset(_PlainDataset):
    """The baseline: ``get_object`` of each shard's IPC file from S3, decoded in place
    (the table points into the received body). One boto3 client per process."""

    def __init__(
        self,
        endpoint_url: str,
        credentials: tuple[str, str],
        names: list[str],
        batch_size: int,
        seed: int = 0,
    ) -> None:
        super().__init__(names, batch_size, seed)
        self.endpoint_url = endpoint_url
        self.credentials = credentials
        self._client: Any = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_pid": -1}

    def open_shard(self, name: str) -> pa.Table:
        if self._pid != os.getpid():
            self._client, self._pid = s3_client(self.endpoint_url, self.credentials), os.getpid()
        body = self._client.get_object(Bucket=OBJECT_BUCKET, Key=f"{name}.arrow")["Body"].read()
        return pa.ipc.open_file(pa.py_buffer(body)).read_all()


def s3_client(endpoint_url: str, credentials: tuple[str, str]) -> Any:
    """A boto3 S3 client (path style; checksums only when required, as the archive uses)."""
    return boto3.session.Session(
        aws_access_key_id=credentials[0],
        aws_secret_access_key=credentials[1],
        region_name="us-east-1",
    ).client(
        "s3",
        endpoint_url=endpoint_url,
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 5, "mode": "standard"},
        ),
    )


# Which path served the tierstore plugin's reads (counted in the workers).


class ReadPaths:
    """A :class:`tierstore.torch.source.ShardSource` that passes reads to ``inner`` and
    records, per DataLoader worker, its client's ``read_counts`` in shared memory.

    Works with fork-started workers only (the shared array is inherited, not pickled).
    """

    FIELDS = ("local", "grpc", "fallbacks", "copies")

    def __init__(self, inner: Any, max_workers: int = 16) -> None:
        self._inner = inner
        self._counts = multiprocessing.get_context("fork").Array("q", max_workers * 4)

    def client(self) -> Client:
        client: Client = self._inner.client()
        return client

    def read(self, dataset: str, shard: str, stop: threading.Event | None = None) -> ShardTable:
        read: ShardTable = self._inner.read(dataset, shard, stop)
        info = torch.utils.data.get_worker_info()
        slot = 0 if info is None else info.id
        counts = self._inner.client().read_counts
        for i, name in enumerate(self.FIELDS):
            self._counts[slot * 4 + i] = getattr(counts, name)
        return read

    def take(self) -> dict[str, int]:
        """The workers' counts since the last take (workers restart every epoch)."""
        values = [int(v) for v in self._counts[:]]
        self._counts[:] = [0] * len(values)
        return {name: sum(values[i::4]) for i, name in enumerate(self.FIELDS)}


# One epoch.


@dataclass(frozen=True, slots=True)
class Epoch:
    """One DataLoader epoch, timed in the consuming loop (``iter()`` to the last batch)."""

    case: str
    samples: int
    payload_bytes: int
    batches: int
    wall_s: float
    first_batch_s: float
    #: the simulated accelerator's busy time (0 without one).
    compute_s: float = 0.0
    paths: dict[str, int] | None = None
    hits: int | None = None
    misses: int | None = None

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s

    @property
    def gb_per_s(self) -> float:
        return self.payload_bytes / self.wall_s / 1e9

    @property
    def utilisation(self) -> float:
        return self.compute_s / self.wall_s

    @property
    def steady_utilisation(self) -> float:
        """Utilisation after the first batch arrived (without the workers' start)."""
        return self.compute_s / (self.wall_s - self.first_batch_s)

    @property
    def read_s_per_batch(self) -> float:
        return self.wall_s / self.batches


class SimulatedAccelerator:
    """An accelerator that spends ``compute_s`` on each batch, asynchronously.

    Like a GPU, it runs beside the host: the consuming loop hands it a batch
    (:meth:`submit`) and goes on to fetch the next one, and it works through at most
    ``queue_depth`` queued batches in order (a bounded launch queue: :meth:`submit`
    blocks while it is full). Its work is a sleep, not a busy loop, because an
    accelerator's kernels leave the host's cores to the loader. A batch stays alive until
    its compute is over, as a device's inputs do.
    """

    def __init__(self, compute_s: float, queue_depth: int = 2) -> None:
        self.compute_s = compute_s
        self.busy_s = 0.0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_depth)
        self._thread = threading.Thread(target=self._run, name="accelerator", daemon=True)
        self._thread.start()

    def submit(self, batch: Any) -> None:
        self._queue.put(batch)

    def finish(self) -> None:
        """Wait until every submitted batch is computed, then stop."""
        self._queue.put(_DONE)
        self._thread.join()

    def _run(self) -> None:
        while (batch := self._queue.get()) is not _DONE:
            start = time.perf_counter()
            time.sleep(self.compute_s)
            self.busy_s += time.perf_counter() - start
            del batch


_DONE = object()


class CudaAccelerator:
    """A real GPU as the accelerator: each batch (already on the device, from a
    :class:`~tierstore.torch.feed.DeviceFeeder`) gets a kernel that keeps the GPU busy for
    ``compute_s`` (``torch.cuda._sleep``, a spin calibrated once), queued on the current
    stream, so it starts only after the batch's copy has landed.

    Like :class:`SimulatedAccelerator`, it has a launch queue: :meth:`submit` blocks while
    more than ``queue_depth`` batches wait behind the one running. Its busy time is
    measured on the device (CUDA events around each kernel), not assumed.
    """

    def __init__(self, compute_s: float, queue_depth: int = 2) -> None:
        self.compute_s = compute_s
        self.busy_s = 0.0
        self._depth = queue_depth
        self._cycles = _spin_cycles(compute_s)
        self._launched: collections.deque[tuple[Any, Any, Any]] = collections.deque()

    def submit(self, batch: Any) -> None:
        while len(self._launched) > self._depth:
            self._retire()
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record()
        torch.cuda._sleep(self._cycles)  # type: ignore[no-untyped-call]
        end.record()
        self._launched.append((start, end, batch))

    def finish(self) -> None:
        """Wait until every submitted batch is computed."""
        while self._launched:
            self._retire()

    def _retire(self) -> None:
        start, end, _batch = self._launched.popleft()
        end.synchronize()
        self.busy_s += start.elapsed_time(end) / 1e3


def _spin_cycles(seconds: float) -> int:
    """GPU clock cycles that ``torch.cuda._sleep`` spins for ``seconds`` (measured here)."""
    probe = 20_000_000
    torch.cuda._sleep(probe)  # type: ignore[no-untyped-call]  # warm-up: clocks up, module loaded
    start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    start.record()
    torch.cuda._sleep(probe)  # type: ignore[no-untyped-call]
    end.record()
    end.synchronize()
    per_s = probe / (start.elapsed_time(end) / 1e3)
    return max(1, int(seconds * per_s))


class _Tally:
    """Counts rows, bytes and label sums of host batches as they pass."""

    def __init__(self) -> None:
        self.samples = self.nbytes = self.batches = self.label_sum = 0

    def count(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        for batch in batches:
            labels = batch["label"]
            self.samples += len(labels)
            self.label_sum += int(labels.sum())
            self.nbytes += batch["image"].nbytes + labels.nbytes
            self.batches += 1
            yield batch


def run_epoch(
    case: str,
    loader: torch.utils.data.DataLoader[Any],
    spec: DataSpec,
    compute_s: float = 0.0,
    *,
    device: str | None = None,
) -> Epoch:
    """Consume one epoch of ``loader``, handing each batch to an accelerator that spends
    ``compute_s`` on it (none when 0): a :class:`SimulatedAccelerator`, or with ``device``
    (``"cuda"``) a :class:`CudaAccelerator`, the batches moved there by a
    :class:`~tierstore.torch.feed.DeviceFeeder`. The epoch ends when the last batch is
    computed. Raises RuntimeError unless every row arrived exactly once (count and sum of
    the labels, taken on the host)."""
    tally = _Tally()
    accelerator: SimulatedAccelerator | CudaAccelerator | None = None
    if compute_s:
        accelerator = CudaAccelerator(compute_s) if device else SimulatedAccelerator(compute_s)
    first = None
    began = time.perf_counter()
    batches: Iterable[Batch] = tally.count(loader)
    if device:
        batches = DeviceFeeder(batches, device)
    for batch in batches:
        if first is None:
            first = time.perf_counter() - began
        if accelerator is not None:
            accelerator.submit(batch)
        del batch
    if accelerator is not None:
        accelerator.finish()
    elif device:
        torch.cuda.synchronize()
    busy = accelerator.busy_s if accelerator is not None else 0.0
    wall = time.perf_counter() - began
    if tally.samples != spec.rows or tally.label_sum != spec.label_sum:
        raise RuntimeError(
            f"{case}: {tally.samples} samples (label sum {tally.label_sum}), expected "
            f"{spec.rows} ({spec.label_sum}): rows lost or repeated"
        )
    return Epoch(case, tally.samples, tally.nbytes, tally.batches, wall, first or 0.0, busy)
