"""Host-to-GPU feed rate: DeviceFeeder over memory-mapped Arrow data against the copy ceiling.

Usage (from the repository root; needs only pyarrow, numpy and torch)::

    python benchmarks/gpu_feed.py [--bytes 2GiB] [--batch-bytes 64MiB] [--prefetch 2]
                                  [--repeats 3] [--dir DIR] [--json OUT]

Cases, each over the same number of bytes, best of ``--repeats`` timed passes after one
untimed warm-up pass (``torch.cuda.synchronize()`` before the clock starts and before it stops):

* ``ceiling``: one pinned tensor of ``--batch-bytes`` copied with
  ``.to("cuda", non_blocking=True)`` once per batch: the DMA rate, no reading at all.
* ``feeder``: batches read from an Arrow IPC file through ``pa.memory_map``, each converted to
  tensors without copying (DLPack views of the mapped file, as ``tierstore.torch.arrow_tensors``
  converts them; what the local LMDB read path hands a loader), fed through
  :class:`tierstore.torch.feed.DeviceFeeder`.
* ``feeder, pinned source``: the feeder over the ceiling's pinned tensor (nothing to stage):
  what the feeder's stream and events cost.
* ``pageable``: the same tensors copied with ``.to("cuda", non_blocking=True)`` straight from
  the mapped (pageable) memory, for context.
* ``host staging only``: the feeder's host half alone, mapped file into a pinned buffer, no
  DMA: when ``feeder`` falls short of ``ceiling``, this says whether the host copy is why.

A batch is ``{"x": (rows, 128, 128) float32 fixed_shape_tensor, "y": (rows,) int64}``; the file
is written to a temporary directory first and read from the page cache (the map stays open
across passes, as an LMDB environment does). After the timed passes one pass checks every
batch's marker values on the device, so a fast but wrong feed cannot pass unnoticed.

On a machine without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

# Measure the checkout this script lives in, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tierstore.torch.feed import DeviceFeeder

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
ROW_SHAPE = (128, 128)  # float32: 64 KiB a row
ROW_BYTES = 4 * ROW_SHAPE[0] * ROW_SHAPE[1]
LABEL_BYTES = 8

Batch = dict[str, torch.Tensor]


def parse_size(text: str) -> int:
    """``2GiB``, ``64MiB``, ``512KiB`` or a plain byte count."""
    for suffix, unit in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB), ("", 1)):
        if text.endswith(suffix):
            return int(float(text.removesuffix(suffix) or "nan") * unit)
    raise argparse.ArgumentTypeError(f"not a size: {text!r}")


def write_arrow_file(path: Path, batches: int, rows: int) -> None:
    """``batches`` record batches of ``rows`` rows; batch ``i`` carries marker ``i``.

    The marker is the first and last element of ``x`` and every label of ``y``, so a batch
    delivered twice, out of order or half-copied shows up in :func:`verify`.
    """
    tensor_type = pa.fixed_shape_tensor(pa.float32(), list(ROW_SHAPE))
    schema = pa.schema([pa.field("x", tensor_type), pa.field("y", pa.int64())])
    width = ROW_SHAPE[0] * ROW_SHAPE[1]
    base = np.random.default_rng(0).standard_normal(rows * width, dtype=np.float32)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for i in range(batches):
            values = base.copy()
            values[0] = values[-1] = i
            storage = pa.FixedSizeListArray.from_arrays(pa.array(values), width)
            x = pa.ExtensionArray.from_storage(tensor_type, storage)
            y = pa.array(np.full(rows, i, dtype=np.int64))
            writer.write_batch(pa.record_batch([x, y], schema=schema))


def mapped_batches(reader: pa.ipc.RecordBatchFileReader) -> Iterator[Batch]:
    """Each record batch as tensors that are views of the mapped file (no copy)."""
    for i in range(reader.num_record_batches):
        batch = reader.get_batch(i)
        x = batch.column(0)
        flat = torch.utils.dlpack.from_dlpack(x.storage.flatten())
        yield {
            "x": flat.view(len(x), *ROW_SHAPE),
            "y": torch.utils.dlpack.from_dlpack(batch.column(1)),
        }


def timed(run: Callable[[], None], cuda: bool) -> float:
    """Seconds one call of ``run`` takes, all of its GPU work included."""
    if cuda:
        torch.cuda.synchronize()  # nothing queued before the clock starts counts
    started = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize()  # the copies are asynchronous: wait for the last one
    return time.perf_counter() - started


def measure(
    run: Callable[[], None], nbytes: int, repeats: int, cuda: bool = True
) -> dict[str, Any]:
    timed(run, cuda)  # warm-up: CUDA context, caching allocator, staging buffers, page tables
    seconds = [timed(run, cuda) for _ in range(repeats)]
    rates = [nbytes / s / 1e9 for s in seconds]
    return {"best_gb_s": max(rates), "median_gb_s": statistics.median(rates), "seconds": seconds}


def verify(reader: pa.ipc.RecordBatchFileReader, prefetch: int) -> int:
    """Check every batch's markers after the feeder; returns the batch count or exits 1."""
    columns: tuple[list[torch.Tensor], ...] = ([], [], [], [])
    for batch in DeviceFeeder(mapped_batches(reader), "cuda", prefetch=prefetch):
        x, y = batch["x"].view(-1), batch["y"]
        for kept, value in zip(columns, (x[0], x[-1], y[0], y[-1]), strict=True):
            kept.append(value)
    torch.cuda.synchronize()
    expected = torch.arange(reader.num_record_batches)
    checks = [
        torch.equal(torch.stack(values).cpu(), expected.to(values[0].dtype)) for values in columns
    ]
    if not all(checks):
        print(
            f"FAILED: the feeder delivered wrong data (x first, x last, y first, y last: {checks})"
        )
        raise SystemExit(1)
    return int(reader.num_record_batches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bytes", type=parse_size, default=2 * GiB, help="data per pass")
    parser.add_argument("--batch-bytes", type=parse_size, default=64 * MiB, help="x per batch")
    parser.add_argument("--prefetch", type=int, default=2, help="DeviceFeeder prefetch")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per case")
    parser.add_argument("--dir", type=Path, default=None, help="where the Arrow file goes")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--no-engine", action="store_true", help="skip the tierstore cases")
    args = parser.parse_args(argv)
    if args.batch_bytes < ROW_BYTES or args.batch_bytes % ROW_BYTES:
        parser.error(f"--batch-bytes must be a positive multiple of {ROW_BYTES}")
    if args.bytes < args.batch_bytes or args.repeats < 1:
        parser.error("--bytes must be at least --batch-bytes, --repeats at least 1")

    print(
        f"torch {torch.__version__} (CUDA build {torch.version.cuda}), pyarrow {pa.__version__}, "
        f"numpy {np.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )
    if not torch.cuda.is_available():
        print("no CUDA device: torch.cuda.is_available() is False; nothing to measure")
        if args.json:
            args.json.write_text(json.dumps({"skipped": "no CUDA device"}) + "\n")
        return 0

    device = torch.device("cuda", torch.cuda.current_device())
    gpu = torch.cuda.get_device_name(device)
    print(f"GPU: {gpu}, driver-visible devices: {torch.cuda.device_count()}")
    rows = args.batch_bytes // ROW_BYTES
    batches = args.bytes // args.batch_bytes
    nbytes = batches * rows * (ROW_BYTES + LABEL_BYTES)
    print(
        f"{batches} batches of {rows} rows ({args.batch_bytes / MiB:.0f} MiB of x each), "
        f"{nbytes / GiB:.2f} GiB a pass, best of {args.repeats} after a warm-up"
    )

    with tempfile.TemporaryDirectory(prefix="gpu-feed-", dir=args.dir) as tmp:
        path = Path(tmp) / "batches.arrow"
        started = time.perf_counter()
        write_arrow_file(path, batches, rows)
        print(f"wrote {path.stat().st_size / GiB:.2f} GiB in {time.perf_counter() - started:.1f} s")
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        results = run_cases(reader, device, batches, args, nbytes)
        results["verified_batches"] = verify(reader, args.prefetch)
        if not args.no_engine:
            results["cases"].update(engine_cases(reader, device, nbytes, args, Path(tmp)))
    ceiling = results["cases"]["ceiling"]["best_gb_s"]
    print(f"\n{'case':<22} {'best GB/s':>10} {'median GB/s':>12} {'best / ceiling':>15}")
    for name, case in results["cases"].items():
        ratio = case["best_gb_s"] / ceiling
        print(f"{name:<22} {case['best_gb_s']:>10.2f} {case['median_gb_s']:>12.2f} {ratio:>15.2f}")
    ratio = results["cases"]["feeder"]["best_gb_s"] / ceiling
    print(f"\nfeeder / ceiling = {ratio:.2f}; verified {results['verified_batches']} batches")
    if args.json:
        results.update(
            torch=torch.__version__,
            cuda=torch.version.cuda,
            gpu=gpu,
            pyarrow=pa.__version__,
            bytes_per_pass=nbytes,
            batch_bytes=args.batch_bytes,
            prefetch=args.prefetch,
            feeder_over_ceiling=ratio,
        )
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def run_cases(
    reader: pa.ipc.RecordBatchFileReader,
    device: torch.device,
    batches: int,
    args: argparse.Namespace,
    nbytes: int,
) -> dict[str, Any]:
    # The ceiling moves the same bytes per batch (x and y) from one pinned buffer.
    pinned = torch.ones(nbytes // batches, dtype=torch.uint8).pin_memory()
    # One feeder for every pass, as for every epoch of a training run: staging buffers stay.
    feeder = DeviceFeeder(_Reiterable(reader), device, prefetch=args.prefetch)
    staging = torch.empty(nbytes // batches, dtype=torch.uint8).pin_memory()

    def ceiling() -> None:
        for _ in range(batches):
            pinned.to(device, non_blocking=True)

    def feed() -> None:
        for _batch in feeder:
            pass

    # The feeder with nothing to stage: what its streams and events cost over the ceiling.
    pinned_feeder = DeviceFeeder([{"x": pinned}] * batches, device, prefetch=args.prefetch)

    def feed_pinned() -> None:
        for _batch in pinned_feeder:
            pass

    def pageable() -> None:
        for batch in mapped_batches(reader):
            for tensor in batch.values():
                tensor.to(device, non_blocking=True)

    def host_only() -> None:
        for batch in mapped_batches(reader):
            x, y = batch["x"].view(-1).view(torch.uint8), batch["y"].view(torch.uint8)
            staging[: x.numel()].copy_(x)
            staging[x.numel() : x.numel() + y.numel()].copy_(y)

    cases: dict[str, dict[str, Any]] = {}
    for name, run, cuda in (
        ("ceiling", ceiling, True),
        ("feeder", feed, True),
        ("feeder, pinned source", feed_pinned, True),
        ("pageable", pageable, True),
        ("host staging only", host_only, False),
    ):
        cases[name] = measure(run, nbytes, args.repeats, cuda)
        print(f"  {name}: best {cases[name]['best_gb_s']:.2f} GB/s", flush=True)
    cases["feeder"]["staging_bytes"] = feeder.staging_bytes
    return {"cases": cases}


def engine_cases(
    reader: pa.ipc.RecordBatchFileReader,
    device: torch.device,
    nbytes: int,
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, dict[str, Any]]:
    """The same batches stored as tierstore shards (one batch a shard, one frame a batch)
    in an in-process engine, read from its LMDB hot tier and fed to the GPU.

    This is the local path's mechanics — frames read in place from the LMDB map, each
    frame's integrity trailer verified, Arrow arrays and tensors pointing into the map
    (plaintext) or one ``decrypt_into`` per frame (encrypted) — without the gRPC grant
    calls around it (the archive is an in-memory tier: this machine runs no S3 server).
    """
    from tierstore.config import EngineSettings
    from tierstore.crypto import LocalKeyring
    from tierstore.engine.store import Store
    from tierstore.tiers.memory import MemoryTier
    from tierstore.types import DatasetSettings

    frame = max(4 * MiB, args.batch_bytes + 2 * MiB)
    settings = EngineSettings(
        data_dir=workdir / "engine",
        hot_capacity_bytes=4 * nbytes + 4 * frame,
        max_frame_bytes=frame,
        backlog_cap_bytes=8 * nbytes,
    )
    keyring = LocalKeyring.generate_file(workdir / "master.keys")
    cases: dict[str, dict[str, Any]] = {}
    with Store(settings, MemoryTier(), keyring) as store:
        for dataset, encrypted in (("plain", False), ("enc", True)):
            store.create_dataset(dataset, DatasetSettings(encrypted=encrypted))
            started = time.perf_counter()
            for i in range(reader.num_record_batches):
                store.put(dataset, f"b{i:05d}", pa.Table.from_batches([reader.get_batch(i)]))
            print(f"  stored {dataset}: {time.perf_counter() - started:.1f} s", flush=True)

            def batches(name: str = dataset) -> Iterator[Batch]:
                for i in range(reader.num_record_batches):
                    table = store.read_table(name, f"b{i:05d}")
                    yield from _table_batches(table)

            feeder = DeviceFeeder(_Again(batches), device, prefetch=args.prefetch)

            def feed(feeder: DeviceFeeder[Batch] = feeder) -> None:
                for _batch in feeder:
                    pass

            def host_read(batches: Callable[[], Iterator[Batch]] = batches) -> None:
                for batch in batches():
                    batch["x"].view(-1)[-1].item()  # the read alone (verified, decrypted)

            label = "engine plaintext" if not encrypted else "engine encrypted"
            for name, run, cuda in (
                (f"feeder, {label}", feed, True),
                (f"{label} read only", host_read, False),
            ):
                cases[name] = measure(run, nbytes, args.repeats, cuda)
                print(f"  {name}: best {cases[name]['best_gb_s']:.2f} GB/s", flush=True)
            marks = [
                int(b["y"][0]) for b in DeviceFeeder(batches(), device, prefetch=args.prefetch)
            ]
            # A stored batch may come back as several record batches (frames): each
            # carries its batch's marker, in order, and every marker appears.
            in_order = marks == sorted(marks)
            if not in_order or sorted(set(marks)) != list(range(reader.num_record_batches)):
                print(f"FAILED: engine {dataset} batches arrived wrong: {marks[:8]}...")
                raise SystemExit(1)
    return cases


def _table_batches(table: pa.Table) -> Iterator[Batch]:
    for batch in table.to_batches():
        x = batch.column(0)
        flat = torch.utils.dlpack.from_dlpack(x.storage.flatten())
        yield {
            "x": flat.view(len(x), *ROW_SHAPE),
            "y": torch.utils.dlpack.from_dlpack(batch.column(1)),
        }


class _Again:
    """``make()`` afresh on each ``iter()`` (one epoch each)."""

    def __init__(self, make: Callable[[], Iterator[Batch]]) -> None:
        self._make = make

    def __iter__(self) -> Iterator[Batch]:
        return self._make()


class _Reiterable:
    """The mapped file's batches, afresh on each ``iter()`` (one epoch each)."""

    def __init__(self, reader: pa.ipc.RecordBatchFileReader) -> None:
        self._reader = reader

    def __iter__(self) -> Iterator[Batch]:
        return mapped_batches(self._reader)


if __name__ == "__main__":
    sys.exit(main())
