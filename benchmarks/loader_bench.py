"""DataLoader benchmark: the tierstore PyTorch plugin against plain PyTorch datasets, one run.

Usage (from the repository root)::

    python benchmarks/loader_bench.py [--gib 2] [--repeats 3] [--json OUT] [--quick]

The same Arrow shards (``--gib`` of payload, 30 MiB shards, see :mod:`loader_cases`) are
read, one DataLoader epoch per case, all with the same ``--batch-size`` (in-worker batches,
``DataLoader(batch_size=None)``), ``--workers`` workers (fork), shuffled by seed and epoch:

* **ceiling** — a plain ``IterableDataset`` memory-mapping local Arrow IPC files;
* **tierstore, local path** — ``tierstore.torch.IterableDataset``, the client reading hot
  shards in place (the default on the server's host);
* **tierstore, gRPC path** — the same with ``connect(..., local_reads=False)``;
* **tierstore, batch threads** — the local path without worker processes:
  ``DataLoader(num_workers=0)`` over the plugin with ``batch_threads=--batch-threads``, so
  batches are assembled by threads of the training process and never cross a process
  boundary (in the ``gpu`` phase also ``pin_memory=True``: assembled in page-locked memory);
* **boto3** — a plain ``IterableDataset`` doing ``get_object`` + ``pa.ipc`` decode of the
  same files from SeaweedFS, directly and through the throttling proxy
  (:class:`~tierstore.testing.throttle.ThrottlingProxy`: ``--ttfb-ms`` to first byte,
  ``--mb-per-s`` per connection), which stands for a real object store;
* **tierstore, cold** — every shard evicted first, then one epoch through tierstore with the
  server's archive on loopback, and behind the proxy;
* **2x the hot tier** — the server restarted with a hot tier of half the dataset's stored
  size, archive behind the proxy, every shard evicted; epochs 1 and 2;
* **simulated accelerator** — the warm cases again, each batch handed to an asynchronous
  simulated accelerator (a thread with a launch queue of 2, as a GPU runs queued work
  beside the host) that spends 1.2x the ceiling's best read time per batch on it;
  utilisation = compute time / wall time (until the last batch is computed);
* **GPU** (phase ``gpu``, on a machine with CUDA) — the same, with a real GPU as the
  accelerator: batches go to the device through ``tierstore.torch.DeviceFeeder`` and each
  gets a kernel that spins for the same compute time, timed with CUDA events.

Warm cases (and the accelerator cases) run ``--repeats`` rounds, interleaved case by case;
figures are the best epoch with the median in brackets; ratios are best/best (median/
median). Cold cases run ``--cold-repeats`` rounds. The targets (the DataLoader issue) are
checked at the end and every miss is reported as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Measure the checkout this script lives in, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3
import pyarrow as pa
import torch
from loader_cases import (
    DATASET,
    Boto3Dataset,
    DataSpec,
    Epoch,
    FileDataset,
    GiB,
    MiB,
    ReadPaths,
    run_epoch,
)
from loader_testbed import Testbed
from torch.utils.data import DataLoader

from tierstore.client.connect import connect
from tierstore.testing.throttle import ThrottleSettings
from tierstore.torch import IterableDataset
from tierstore.torch.source import GrpcShardSource

CEILING = "ceiling: local Arrow files (mmap)"
LOCAL = "tierstore local path, warm"
THREADS = "tierstore local path, batch threads, no workers"
GRPC = "tierstore gRPC path, warm"
BOTO3 = "boto3, SeaweedFS on loopback"
BOTO3_PROXY = "boto3, behind the proxy"
COLD = "tierstore cold, archive on loopback"
COLD_PROXY = "tierstore cold, archive behind the proxy"
HALF_1 = "hot tier = dataset/2, proxy: epoch 1"
HALF_2 = "hot tier = dataset/2, proxy: epoch 2"
ACCEL = " + accelerator"
GPU = " + GPU (DeviceFeeder)"
PHASES = ("warm", "accel", "cold", "half", "gpu")

T_LOCAL_VS_CEILING = 0.8
T_WARM_VS_BOTO3 = 5.0
T_COLD_VS_BOTO3 = 0.9
T_UTILISATION = 0.9
COMPUTE_FACTOR = 1.2


def log(message: str) -> None:
    print(message, flush=True)


class Cases:
    """Makes one case's dataset and DataLoader, and times its epoch."""

    def __init__(self, bed: Testbed, args: argparse.Namespace) -> None:
        self.bed = bed
        self.args = args
        self.spec = bed.spec
        self.epochs: list[Epoch] = []

    def _loader(self, dataset: Any, in_process: bool = False) -> DataLoader[Any]:
        if in_process:
            return DataLoader(dataset, batch_size=None, num_workers=0)
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.args.workers,
            multiprocessing_context="fork",
        )

    def plain(
        self, case: str, epoch: int, compute_s: float = 0.0, device: str | None = None
    ) -> Epoch:
        names, size = self.spec.names, self.args.batch_size
        dataset: FileDataset | Boto3Dataset
        if case == CEILING:
            dataset = FileDataset(self.bed.files, names, size, self.args.seed)
        else:
            endpoint = self.bed.endpoint(throttled=case == BOTO3_PROXY)
            dataset = Boto3Dataset(endpoint, self.bed.credentials, names, size, self.args.seed)
        dataset.set_epoch(epoch)
        loader = self._loader(dataset)
        return self._record(run_epoch(case, loader, self.spec, compute_s, device=device))

    def tierstore(
        self,
        case: str,
        epoch: int,
        *,
        local: bool,
        compute_s: float = 0.0,
        device: str | None = None,
        threads: int = 0,
    ) -> Epoch:
        """One epoch of the plugin: in ``--workers`` worker processes, or with ``threads``
        in this process (``num_workers=0``, ``batch_threads=threads``, pinned for a
        device)."""
        make_client = functools.partial(connect, **self.bed.connect_kwargs(), local_reads=local)
        source = ReadPaths(GrpcShardSource(make_client))
        dataset = IterableDataset(
            DATASET,
            batch_size=self.args.batch_size,
            seed=self.args.seed,
            source=source,
            batch_threads=threads,
            pin_memory=threads > 0 and device is not None,
        )
        dataset.set_epoch(epoch)
        before = self.bed.dataset_stats()
        loader = self._loader(dataset, in_process=threads > 0)
        result = run_epoch(case, loader, self.spec, compute_s, device=device)
        after = self.bed.dataset_stats()
        return self._record(
            dataclasses.replace(
                result,
                paths=source.take(),
                hits=after["hits"] - before["hits"],
                misses=after["misses"] - before["misses"],
            )
        )

    def _record(self, epoch: Epoch) -> Epoch:
        self.epochs.append(epoch)
        extra = ""
        if epoch.paths is not None:
            extra = f"  reads {epoch.paths}  server misses {epoch.misses}"
        if epoch.compute_s:
            extra += (
                f"  utilisation {epoch.utilisation:.3f} "
                f"(after the first batch {epoch.steady_utilisation:.3f})"
            )
        log(
            f"  {epoch.case:<52} {epoch.samples_per_s:9.0f} samples/s {epoch.gb_per_s:6.3f} GB/s "
            f"({epoch.wall_s:.2f} s, first batch {epoch.first_batch_s:.2f} s){extra}"
        )
        return epoch

    def of(self, case: str) -> list[Epoch]:
        return [e for e in self.epochs if e.case == case]


# The run.


def run(args: argparse.Namespace, bed: Testbed) -> Cases:
    cases = Cases(bed, args)
    spec = bed.spec
    capacity = 2 * spec.payload_bytes + 256 * MiB  # never reaches the high watermark
    phases = set(args.phases.split(","))
    bed.start_server(throttled=False, hot_capacity=capacity)
    log(f"loading {spec.shards} shards ({spec.payload_bytes / GiB:.2f} GiB) ...")
    bed.load(log)
    stored = bed.dataset_stats()["bytes"]
    epoch = 0

    def warm_round(names: list[str], compute_s: float = 0.0, device: str | None = None) -> None:
        nonlocal epoch
        suffix = (GPU if device else ACCEL) if compute_s else ""
        for case in names:
            if case in (CEILING, BOTO3, BOTO3_PROXY):
                cases.plain(case + suffix, epoch, compute_s, device)
            else:
                threads = args.batch_threads if case == THREADS else 0
                cases.tierstore(
                    case + suffix,
                    epoch,
                    local=case in (LOCAL, THREADS),
                    compute_s=compute_s,
                    device=device,
                    threads=threads,
                )
        epoch += 1

    if phases & {"warm", "accel", "gpu"}:
        log(f"warm epochs ({args.repeats} rounds, server archive on loopback) ...")
        for _ in range(args.repeats):
            warm_round(
                [CEILING, LOCAL, THREADS, GRPC, BOTO3, BOTO3_PROXY]
                if "warm" in phases
                else [CEILING]
            )
    if phases & {"accel", "gpu"}:
        per_batch = min(e.read_s_per_batch for e in cases.of(CEILING))
        args.compute_s = COMPUTE_FACTOR * per_batch
        log(
            f"accelerator: {args.compute_s * 1e3:.2f} ms per batch "
            f"(= {COMPUTE_FACTOR} x the ceiling's best {per_batch * 1e3:.2f} ms read per batch)"
        )
    if "accel" in phases:
        for _ in range(args.repeats):
            warm_round([CEILING, LOCAL, THREADS, GRPC], args.compute_s)
    if "gpu" in phases:
        log("GPU epochs: DeviceFeeder to cuda, a spin kernel per batch ...")
        for _ in range(args.repeats):
            warm_round([CEILING, LOCAL, THREADS, GRPC], args.compute_s, device="cuda")
    if "cold" in phases:
        log(f"cold epochs ({args.cold_repeats} rounds, archive on loopback) ...")
        for _ in range(args.cold_repeats):
            bed.evict_all()
            cases.tierstore(COLD, epoch, local=True)
            cases.plain(BOTO3, epoch)
            epoch += 1
        bed.start_server(throttled=True, hot_capacity=capacity)
        log(f"cold epochs ({args.cold_repeats} rounds, archive behind the proxy) ...")
        for _ in range(args.cold_repeats):
            bed.evict_all()
            cases.tierstore(COLD_PROXY, epoch, local=True)
            cases.plain(BOTO3_PROXY, epoch)
            epoch += 1
    if "half" in phases:
        log(f"hot tier of {stored // 2 / GiB:.2f} GiB (dataset/2), archive behind the proxy ...")
        bed.evict_all()
        bed.start_server(throttled=True, hot_capacity=stored // 2)
        bed.evict_all()
        cases.tierstore(HALF_1, epoch, local=True)
        cases.tierstore(HALF_2, epoch + 1, local=True)
        if "cold" not in phases:
            cases.plain(BOTO3_PROXY, epoch)
    return cases


# The report.


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    case: str
    samples_per_s: float
    median_samples_per_s: float
    gb_per_s: float
    epochs: int
    first_batch_s: float
    utilisation: float | None = None
    steady_utilisation: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    name: str
    measured: float
    median: float
    threshold: float
    comparison: str  # ">="

    @property
    def met(self) -> bool:
        return self.measured >= self.threshold


def _row(cases: Cases, case: str) -> Row | None:
    epochs = cases.of(case)
    if not epochs:
        return None
    best = max(epochs, key=lambda e: e.samples_per_s)
    accelerated = best.compute_s > 0
    return Row(
        case,
        best.samples_per_s,
        statistics.median(e.samples_per_s for e in epochs),
        best.gb_per_s,
        len(epochs),
        statistics.median(e.first_batch_s for e in epochs),
        max(e.utilisation for e in epochs) if accelerated else None,
        max(e.steady_utilisation for e in epochs) if accelerated else None,
    )


def report(cases: Cases, args: argparse.Namespace) -> dict[str, Any]:
    names = [CEILING, LOCAL, THREADS, GRPC, BOTO3, BOTO3_PROXY, COLD, COLD_PROXY, HALF_1, HALF_2]
    names += [n + suffix for suffix in (ACCEL, GPU) for n in (CEILING, LOCAL, THREADS, GRPC)]
    rows = {n: r for n in names if (r := _row(cases, n)) is not None}

    def ratio(case: str, base: str) -> tuple[float, float] | None:
        if case not in rows or base not in rows:
            return None
        a, b = rows[case], rows[base]
        return a.samples_per_s / b.samples_per_s, a.median_samples_per_s / b.median_samples_per_s

    log("")
    log(
        f"{'case':<58} {'samples/s':>10} {'GB/s':>7} {'vs ceiling':>13} "
        f"{'vs boto3 proxy':>15} {'vs boto3 lo':>13} {'1st batch':>9} {'util':>12}"
    )
    for row in rows.values():
        cells = []
        for base in (CEILING, BOTO3_PROXY, BOTO3):
            pair = ratio(row.case, base)
            cells.append(f"{pair[0]:.2f} ({pair[1]:.2f})" if pair and row.case != base else "—")
        util = ""
        if row.utilisation is not None:
            util = f"{row.utilisation:.3f} ({row.steady_utilisation:.3f})"
        log(
            f"{row.case:<58} {row.samples_per_s:10.0f} {row.gb_per_s:7.3f} {cells[0]:>13} "
            f"{cells[1]:>15} {cells[2]:>13} {row.first_batch_s:8.2f}s {util:>12}"
        )

    targets: list[Target] = []

    def target(name: str, measured: tuple[float, float] | None, threshold: float) -> None:
        if measured is not None:
            targets.append(Target(name, measured[0], measured[1], threshold, ">="))

    target("warm local path / ceiling", ratio(LOCAL, CEILING), T_LOCAL_VS_CEILING)
    target("warm local path, batch threads / ceiling", ratio(THREADS, CEILING), T_LOCAL_VS_CEILING)
    target("warm local path / boto3 behind the proxy", ratio(LOCAL, BOTO3_PROXY), T_WARM_VS_BOTO3)
    target("warm gRPC path / boto3 behind the proxy", ratio(GRPC, BOTO3_PROXY), T_WARM_VS_BOTO3)
    target(
        "cold epoch / boto3, both behind the proxy", ratio(COLD_PROXY, BOTO3_PROXY), T_COLD_VS_BOTO3
    )
    target(
        "hot tier = dataset/2, epoch 1 / boto3 behind the proxy",
        ratio(HALF_1, BOTO3_PROXY),
        T_COLD_VS_BOTO3,
    )
    for case, label in ((LOCAL, "warm local path"), (THREADS, "warm local path, batch threads")):
        if accelerated := cases.of(case + ACCEL):
            utils = [e.utilisation for e in accelerated]
            target(
                f"accelerator utilisation, {label}",
                (max(utils), statistics.median(utils)),
                T_UTILISATION,
            )
    log("(best epoch, median in brackets; util: whole epoch (after the first batch), best)")
    log("")
    log(f"{'target':<58} {'best (median)':>15} {'needs':>8}  result")
    for t in targets:
        log(
            f"{t.name:<58} {t.measured:7.2f} ({t.median:.2f}) {'>= ' + str(t.threshold):>8}  "
            f"{'MET' if t.met else 'NOT MET'}"
        )
    info = {
        "warm local path / boto3 on loopback (unthrottled)": ratio(LOCAL, BOTO3),
        "warm gRPC path / boto3 on loopback (unthrottled)": ratio(GRPC, BOTO3),
        "cold epoch / boto3, both on loopback (unthrottled)": ratio(COLD, BOTO3),
        "warm gRPC path / ceiling": ratio(GRPC, CEILING),
        "hot tier = dataset/2, epoch 2 / boto3 behind the proxy": ratio(HALF_2, BOTO3_PROXY),
    }
    if accel := cases.of(LOCAL + ACCEL):
        steady = [e.steady_utilisation for e in accel]
        info["utilisation after the first batch, warm local path"] = (
            max(steady),
            statistics.median(steady),
        )
    gpu_cases = (
        (LOCAL + GPU, "local path"),
        (THREADS + GPU, "batch threads"),
        (CEILING + GPU, "ceiling"),
    )
    for case, short in gpu_cases:
        if gpu := cases.of(case):
            for label, values in (
                ("GPU utilisation", [e.utilisation for e in gpu]),
                ("GPU utilisation after the first batch", [e.steady_utilisation for e in gpu]),
            ):
                info[f"{label}, {short}"] = (
                    max(values),
                    statistics.median(values),
                )
    for name, value in info.items():
        if value is not None:
            log(f"{name:<58} {value[0]:7.2f} ({value[1]:.2f})       —  info")
    return {
        "rows": [dataclasses.asdict(r) for r in rows.values()],
        "targets": [{**dataclasses.asdict(t), "met": t.met} for t in targets],
        "info": {k: v for k, v in info.items() if v is not None},
    }


def machine() -> dict[str, Any]:
    with open("/proc/loadavg") as loadavg:
        load = loadavg.read().split()[:3]
    return {
        "cpus": os.cpu_count(),
        "load_average": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyarrow": pa.__version__,
        "boto3": boto3.__version__,
        "cuda": torch.cuda.is_available(),
        "platform": platform.platform(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=2.0, help="payload size (default 2)")
    parser.add_argument("--quick", action="store_true", help="0.25 GiB, 1 round: a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="warm rounds (default 3)")
    parser.add_argument("--cold-repeats", type=int, default=2, help="cold rounds (default 2)")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per batch (256)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (2)")
    parser.add_argument(
        "--batch-threads", type=int, default=4, help="the batch-threads case's threads (4)"
    )
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--ttfb-ms", type=float, default=20.0, help="proxy: time to first byte")
    parser.add_argument("--mb-per-s", type=float, default=100.0, help="proxy: MB/s per connection")
    default_phases = PHASES if torch.cuda.is_available() else PHASES[:-1]
    parser.add_argument(
        "--phases",
        default=",".join(default_phases),
        help="subset of " + ",".join(PHASES) + " (gpu: default where CUDA is available)",
    )
    parser.add_argument(
        "--encrypted",
        action="store_true",
        help="an encrypted dataset (the default of dataset create; the figures of record "
        "are plaintext's)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the work directory")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.gib, args.repeats, args.cold_repeats = 0.25, 1, 1
    unknown = set(args.phases.split(",")) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}")
    if "gpu" in args.phases.split(",") and not torch.cuda.is_available():
        parser.error("the gpu phase needs a CUDA device, and torch sees none")
    args.compute_s = 0.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = DataSpec.for_bytes(int(args.gib * GiB))
    throttle = ThrottleSettings(
        ttfb_s=args.ttfb_ms / 1e3, per_connection_bytes_per_s=args.mb_per_s * 1e6
    )
    start_machine = machine()
    log(
        f"loader benchmark: {spec.shards} shards x {spec.rows_per_shard} rows "
        f"({spec.shard_bytes / MiB:.1f} MiB), {spec.rows} samples, "
        f"{spec.payload_bytes / GiB:.2f} GiB; "
        f"batch {args.batch_size}, {args.workers} workers; proxy {args.ttfb_ms:g} ms to first "
        f"byte, {args.mb_per_s:g} MB/s per connection; "
        f"{'encrypted' if args.encrypted else 'plaintext'} dataset; "
        f"load average {start_machine['load_average']}"
    )
    began = time.perf_counter()
    with Testbed(spec, throttle, args.workdir, encrypted=args.encrypted) as bed:
        cases = run(args, bed)
    summary = report(cases, args)
    end_machine = machine()
    log(
        f"\n{time.perf_counter() - began:.0f} s; load average {start_machine['load_average']} -> "
        f"{end_machine['load_average']}"
    )
    if args.json is not None:
        result = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "spec": dataclasses.asdict(spec),
            "machine": {"start": start_machine, "end": end_machine},
            "epochs": [
                {
                    **dataclasses.asdict(e),
                    "samples_per_s": e.samples_per_s,
                    "gb_per_s": e.gb_per_s,
                    "utilisation": e.utilisation,
                    "steady_utilisation": e.steady_utilisation if e.compute_s else None,
                }
                for e in cases.epochs
            ],
            **summary,
        }
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
