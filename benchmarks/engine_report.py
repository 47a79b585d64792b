"""One-run engine report: every case's engine and ceiling on the same data, as a table.

Usage::

    python benchmarks/engine_report.py [--size-gib 1] [--quick] [--repeats 5]
                                       [--workdir DIR] [--profile] [--json PATH] [--strict]
                                       [--what-if] [--no-tune-malloc]
                                       [--only TEXT ...] [--no-churn]

Starts a real SeaweedFS (loopback, telemetry off) and a store in a temporary
directory (default: the system temporary directory; it must be on a disk, not
tmpfs), loads the data, measures every case of :mod:`engine_cases`
(engine and ceiling interleaved, best of ``--repeats`` after one warm-up
round), runs the churn test, prints the table and removes everything.
``--quick`` is a smoke run on 128 MiB. ``--profile`` adds a cProfile of one
engine repetition per case. ``--strict`` exits 1 when a target is missed.
``--what-if`` adds rows with a suspected hot spot patched out in this process.
The allocator is tuned as the server tunes it (``tierstore/engine/allocator.py``);
``--no-tune-malloc`` measures glibc's defaults instead. ``--only`` keeps the cases
whose name contains one of the given texts (e.g. ``--only put cold``) and
``--no-churn`` skips the churn run: for quick A/B runs, not for RESULTS.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from churn_case import CHURN_ARCHIVE, ChurnResult, run_churn
from engine_cases import (
    SHARD_BYTES,
    BareVerifyPipeline,
    Case,
    ColdRead,
    EncryptedHotRead,
    EngineBench,
    GiB,
    HotRead,
    MiB,
    PairResult,
    WriteBackPut,
    check_not_tmpfs,
    measure,
)

from tierstore.engine.allocator import ARENAS, tune_allocator
from tierstore.tiers.seaweedfs import find_weed_binary

CaseFactory = Callable[[EngineBench], Case]
CASES: tuple[CaseFactory, ...] = (
    HotRead,
    #: a what-if (only with --what-if): the per-read checksum patched out.
    lambda bench: HotRead(bench, verify=False),
    #: a what-if (only with --what-if): xxh3 then touch with no engine code, two threads.
    BareVerifyPipeline,
    EncryptedHotRead,
    ColdRead,
    lambda bench: ColdRead(bench, promotion=False, target=0.0),
    WriteBackPut,
    lambda bench: WriteBackPut(bench, mover=False),
)
WHAT_IF_CASES = frozenset({1, 2})  # indexes into CASES run only with --what-if


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# The machine.


def _first_line(path: str, prefix: str) -> str:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _weed_version() -> str:
    binary = find_weed_binary()
    if binary is None:
        return "not installed"
    done = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else "?"


def machine_info(workdir: Path) -> dict[str, str]:
    """What the figures were measured on."""
    import lmdb

    versions = {
        name: metadata.version(name)
        for name in ("lmdb", "cryptography", "numpy", "pyarrow", "boto3", "xxhash")
    }
    versions["lmdb"] += f" (LMDB {'.'.join(map(str, lmdb.version()))})"
    disk = (
        subprocess.run(["df", "-hT", str(workdir)], capture_output=True, text=True, timeout=30)
        .stdout.strip()
        .splitlines()[-1]
    )
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": f"{os.cpu_count()} x {_first_line('/proc/cpuinfo', 'model name')}",
        "memory": _first_line("/proc/meminfo", "MemTotal"),
        "disk (df -hT of the work directory)": " ".join(disk.split()),
        "python": platform.python_version(),
        "libraries": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "seaweedfs": _weed_version(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# The table.


@dataclass(frozen=True, slots=True)
class Row:
    case: str
    engine: str
    ceiling: str
    ratio: str
    target: str
    result: str


def pair_row(result: PairResult) -> Row:
    diagnostic = result.target <= 0
    return Row(
        result.name,
        f"{result.engine_gib_s:.3f}",
        f"{result.ceiling_gib_s:.3f}",
        f"{result.ratio:.2f} ({result.median_ratio:.2f})",
        "—" if diagnostic else f">= {result.target:.2f}",
        "info" if diagnostic else ("PASS" if result.passed else "MISS"),
    )


def churn_rows(churn: ChurnResult) -> list[Row]:
    if churn.error is not None:
        failed = Row(f"churn: {churn.error}", "—", "—", "—", "—", "MISS")
        return [failed]
    first, last = churn.cycles[0], churn.cycles[-1]
    return [
        Row(
            "churn: largest data.mdb / hot capacity",
            f"{churn.max_file_bytes / MiB:.0f} MiB",
            f"{churn.capacity / MiB:.0f} MiB",
            f"{churn.file_ratio:.2f}",
            f"<= {churn.file_target:.2f}",
            "PASS" if churn.file_passed else "MISS",
        ),
        Row(
            "churn: write throughput, last / first cycle",
            f"{last.gib_s:.3f}",
            f"{first.gib_s:.3f}",
            f"{churn.throughput_ratio:.2f}",
            f">= {churn.throughput_target:.2f}",
            "PASS" if churn.throughput_passed else "MISS",
        ),
    ]


def render(rows: list[Row]) -> str:
    header = Row("case", "engine GiB/s", "ceiling GiB/s", "ratio best (median)", "target", "result")
    cells = [
        [row.case, row.engine, row.ceiling, row.ratio, row.target, row.result]
        for row in (header, *rows)
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    lines = []
    for index, line in enumerate(cells):
        padded = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        lines.append("| " + " | ".join(padded) + " |")
        if index == 0:
            lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def profile_engine(case: Case, top: int = 15) -> str:
    """cProfile of one engine repetition of ``case``, top functions by own time."""
    profiler = cProfile.Profile()
    try:
        case.setup_engine()
        profiler.runcall(case.engine)
    finally:
        case.finish()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


# Main.


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=1.0, help="data per case (GiB)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 MiB, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5)")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument("--profile", action="store_true", help="cProfile each engine side")
    parser.add_argument("--json", type=Path, default=None, help="also write figures here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--what-if", action="store_true", help="add rows with suspected hot spots patched out"
    )
    parser.add_argument(
        "--no-tune-malloc",
        action="store_true",
        help="leave glibc's allocator untuned (the server and open_store() tune it)",
    )
    parser.add_argument(
        "--only", nargs="+", default=None, metavar="TEXT", help="cases whose name contains TEXT"
    )
    parser.add_argument("--no-churn", action="store_true", help="skip the churn run")
    args = parser.parse_args(argv)
    size = 128 * MiB if args.quick else int(args.size_gib * GiB)
    args.total_bytes = max(SHARD_BYTES, size // SHARD_BYTES * SHARD_BYTES)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.no_tune_malloc:
        tune_allocator(4 * MiB, arenas=ARENAS)  # as `tierstore serve` does
    parent = args.workdir or Path(os.environ.get("TMPDIR", "/tmp"))
    parent.mkdir(parents=True, exist_ok=True)  # df had nothing to say of a missing one
    fstype = check_not_tmpfs(parent)
    info = machine_info(parent)
    total = args.total_bytes
    log(f"loading {total / MiB:.0f} MiB x 2 datasets into a store under {parent} ({fstype})")
    results: list[PairResult] = []
    profiles: list[tuple[str, str]] = []
    with EngineBench(total, parent) as bench:
        log("loaded; measuring")
        for index, factory in enumerate(CASES):
            if index in WHAT_IF_CASES and not args.what_if:
                continue
            case = factory(bench)
            if args.only and not any(text in case.name for text in args.only):
                continue
            result = measure(case, args.repeats)
            log(f"{result.name}: ratio {result.ratio:.2f} (median {result.median_ratio:.2f})")
            results.append(result)
            if args.profile:  # right after its case: later cases change the store's state
                case = factory(bench)
                profiles.append((case.name, profile_engine(case)))
    churn: ChurnResult | None = None
    if not args.no_churn:
        log(f"churn: hot capacity {total / MiB:.0f} MiB, 5 cycles of {total / MiB:.0f} MiB")
        churn = run_churn(total, parent, progress=log)
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info["allocator"] = "untuned glibc" if args.no_tune_malloc else "tuned (engine/allocator.py)"

    rows = [pair_row(r) for r in results] + (churn_rows(churn) if churn is not None else [])
    print("# tierstore engine benchmark\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print(
        f"- data: {total / MiB:.0f} MiB of random bytes, 64 MiB shards of 4 MiB frames; "
        f"timings: best of {args.repeats} interleaved engine/ceiling rounds after 1 warm-up "
        "(median ratio in brackets)\n"
    )
    print(render(rows))
    print()
    for result in results:
        warm = ""
        if result.warmup_engine_s and result.warmup_ceiling_s:
            warm = (
                f" (warm-up round: engine {total / result.warmup_engine_s[0] / GiB:.3f}, "
                f"ceiling {total / result.warmup_ceiling_s[0] / GiB:.3f} GiB/s)"
            )
        print(f"- {result.name}: {result.note}{warm}")
    if churn is not None:
        print(f"- churn archive: {CHURN_ARCHIVE}")
    if churn is not None and churn.cycles:
        per_cycle = ", ".join(
            f"{c.gib_s:.3f} GiB/s / {c.lmdb_file_bytes / MiB:.0f} MiB" for c in churn.cycles
        )
        print(
            f"- churn: filled to {churn.fill_bytes / MiB:.0f} MiB hot; per cycle "
            f"(throughput / data.mdb): {per_cycle}"
        )
    for name, text in profiles:
        print(f"\n## cProfile, engine side: {name}\n\n```\n{text.strip()}\n```")
    if args.json is not None:
        document = {
            "machine": info,
            "total_bytes": total,
            "repeats": args.repeats,
            "cases": [
                {
                    "name": r.name,
                    "target": r.target,
                    "engine_s": r.engine_s,
                    "ceiling_s": r.ceiling_s,
                    "engine_gib_s": r.engine_gib_s,
                    "ceiling_gib_s": r.ceiling_gib_s,
                    "ratio": r.ratio,
                    "median_ratio": r.median_ratio,
                    "warmup_engine_s": r.warmup_engine_s,
                    "warmup_ceiling_s": r.warmup_ceiling_s,
                }
                for r in results
            ],
            "churn": None
            if churn is None
            else {
                "capacity": churn.capacity,
                "max_file_bytes": churn.max_file_bytes,
                "cycles": [
                    {"gib_s": c.gib_s, "file_bytes": c.lmdb_file_bytes} for c in churn.cycles
                ],
                "error": churn.error,
            },
        }
        args.json.write_text(json.dumps(document, indent=2))
    missed = any(row.result == "MISS" for row in rows)
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
