"""One-run service report: every case's tierstore side and ceiling on the same data, as a table.

Usage::

    python benchmarks/service_report.py [--size-gib 1] [--quick] [--repeats 5]
                                        [--large-gib 2] [--clients 8] [--workdir DIR]
                                        [--profile] [--py-spy PATH] [--json PATH] [--strict]
                                        [--what-if]

Starts a SeaweedFS (loopback, telemetry off), ``tierstore serve`` over it and
the bare grpcio server (all subprocesses on ``127.0.0.1``) in a temporary
directory (default: the system temporary directory; it must be on a disk, not
tmpfs), loads the data through the client, measures every case of
:mod:`service_cases` (tierstore and ceiling interleaved, best of ``--repeats``
after one warm-up round), then the memory case (``--clients`` processes
streaming one ``--large-gib`` shard), prints the table and removes everything.
``--quick`` is a smoke run: 128 MiB, 3 repeats, a 256 MiB shard for the memory
case. ``--profile`` adds, per case, a py-spy profile of the server process
(``py-spy`` on PATH or ``--py-spy``) and a cProfile of this process (the
client) during one tierstore repetition. ``--what-if`` then restarts the
server through ``serve_what_if.py`` (two suspected hot spots patched out in its
process) and measures the hot get and the memory case again as extra rows.
``--strict`` exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from engine_cases import SHARD_BYTES, Case, GiB, MiB, PairResult, check_not_tmpfs, measure
from engine_report import Row, log, machine_info, pair_row
from service_cases import (
    ArchiveGet,
    BareTlsCost,
    EncryptedHotGet,
    HotGet,
    MemoryResult,
    ServiceBench,
    ServicePut,
    run_memory_case,
)

CaseFactory = Callable[[ServiceBench], Case]
CASES: tuple[CaseFactory, ...] = (
    HotGet,
    lambda bench: HotGet(bench, path="local"),
    ArchiveGet,
    lambda bench: ArchiveGet(bench, path="grpc"),
    EncryptedHotGet,
    lambda bench: EncryptedHotGet(bench, path="grpc"),
    BareTlsCost,
    ServicePut,
)
WHAT_IF_GET = "hot get vs bare grpcio (TLS), server patched (what-if)"


def memory_rows(result: MemoryResult, what_if: bool = False) -> list[Row]:
    name = f"server RSS, {result.clients} clients streaming one {_size(result.shard_bytes)} shard"
    if what_if:
        name += ", server patched (what-if)"
    if result.error is not None:
        return [Row(f"{name}: {result.error}", "—", "—", "—", "—", "MISS")]
    peak = max(result.peak_rss, result.hwm)
    verdict = "PASS" if result.passed else "MISS"
    return [
        Row(
            f"{name} (peak VmRSS)",
            f"{peak / MiB:.0f} MiB",
            f"{result.limit_bytes / MiB:.0f} MiB",
            f"{peak / result.limit_bytes:.2f}",
            "—" if what_if else f"< {result.limit_bytes / MiB:.0f} MiB",
            "info" if what_if else verdict,
        ),
        Row(
            "… of which anonymous (peak RssAnon) / file-backed (peak RssFile)",
            f"{result.peak_anon / MiB:.0f} MiB",
            f"{result.peak_file / MiB:.0f} MiB",
            "—",
            "—",
            "info",
        ),
        Row(
            "… at start (VmRSS, RssAnon) / aggregate stream GiB/s",
            f"{result.baseline.rss / MiB:.0f} MiB, {result.baseline.anon / MiB:.0f} MiB",
            f"{result.gib_s:.3f} GiB/s",
            "—",
            "—",
            "info",
        ),
    ]


def _size(nbytes: int) -> str:
    return f"{nbytes / GiB:g} GiB" if nbytes >= GiB else f"{nbytes / MiB:g} MiB"


def render(rows: list[Row]) -> str:
    header = Row("case", "tierstore", "ceiling", "ratio best (median)", "target", "result")
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


# Profiles: the server with py-spy (it is another process), the client with cProfile.


def _py_spy_summary(raw: Path, top: int) -> str:
    """Top functions by own samples, and by samples anywhere on the stack, from py-spy raw."""
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
    if not total:
        return "(no samples)"
    lines = [f"{total} samples of busy threads; own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines.append("on the stack (inclusive):")
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in anywhere.most_common(top)]
    return "\n".join(lines)


def profile_case(case: Case, bench: ServiceBench, py_spy: str | None, top: int = 18) -> str:
    """One tierstore repetition of ``case`` under cProfile (client) and py-spy (server)."""
    assert bench.server is not None
    raw = bench.workdir / "py-spy.txt"
    spy = None
    if py_spy is not None:
        command = [py_spy, "record", f"--pid={bench.server.pid}", "--format=raw"]
        command += ["--rate=250", "--nonblocking", f"--output={raw}"]
        spy = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # attached before the first call
    profiler = cProfile.Profile()
    try:
        case.setup_engine()
        profiler.runcall(case.engine)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        case.finish()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    server = _py_spy_summary(raw, top) if spy is not None and raw.exists() else "(no py-spy)"
    raw.unlink(missing_ok=True)
    return f"### server (py-spy)\n\n{server}\n\n### client (cProfile)\n\n{out.getvalue().strip()}"


# Main.


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=1.0, help="data per case (GiB)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 MiB, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5)")
    parser.add_argument("--large-gib", type=float, default=None, help="memory case's shard")
    parser.add_argument("--clients", type=int, default=8, help="memory case's stream clients")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument("--profile", action="store_true", help="profile server and client")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy executable")
    parser.add_argument("--json", type=Path, default=None, help="also write figures here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--what-if",
        action="store_true",
        help="add rows measured on a server with suspected hot spots patched (serve_what_if.py)",
    )
    args = parser.parse_args(argv)
    size = 128 * MiB if args.quick else int(args.size_gib * GiB)
    args.total_bytes = max(SHARD_BYTES, size // SHARD_BYTES * SHARD_BYTES)
    if args.large_gib is None:
        args.large_gib = 0.25 if args.quick else 2.0
    args.large_bytes = max(SHARD_BYTES, int(args.large_gib * GiB) // SHARD_BYTES * SHARD_BYTES)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    return args


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parent = args.workdir or Path(os.environ.get("TMPDIR", "/tmp"))
    fstype = check_not_tmpfs(parent)
    info = machine_info(parent)
    info["service libraries"] = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("grpcio", "protobuf")
    )
    total = args.total_bytes
    log(f"loading {total / MiB:.0f} MiB x 2 datasets through the client under {parent} ({fstype})")
    results: list[PairResult] = []
    profiles: list[tuple[str, str]] = []
    with ServiceBench(total, parent) as bench:
        log(f"loaded; measuring (load average {_load()})")
        for factory in CASES:
            result = measure(factory(bench), args.repeats)
            log(f"{result.name}: ratio {result.ratio:.2f} (median {result.median_ratio:.2f})")
            results.append(result)
            if args.profile:
                case = factory(bench)
                profiles.append((case.name, profile_case(case, bench, args.py_spy)))
        log(
            f"memory: {args.clients} clients streaming one {_size(args.large_bytes)} shard "
            f"(load average {_load()})"
        )
        memory = run_memory_case(bench, args.large_bytes, clients=args.clients)
        what_ifs: list[MemoryResult] = []
        if args.what_if:
            log("what-if: the server restarted through serve_what_if.py")
            bench.start_server(what_if=True)
            result = measure(HotGet(bench, name=WHAT_IF_GET, target=0.0), args.repeats)
            log(f"{result.name}: ratio {result.ratio:.2f} (median {result.median_ratio:.2f})")
            results.append(result)
            what_ifs.append(
                run_memory_case(bench, args.large_bytes, clients=args.clients, what_if=True)
            )
    info["load average at end"] = _load()

    rows = [pair_row(r) for r in results] + memory_rows(memory)
    for extra in what_ifs:
        rows += memory_rows(extra, what_if=True)
    print("# tierstore service benchmark\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print(
        f"- data: {total / MiB:.0f} MiB of random bytes, 64 MiB shards of 4 MiB frames; "
        f"timings: best of {args.repeats} interleaved tierstore/ceiling rounds after 1 warm-up "
        "(median ratio in brackets); throughput in GiB/s\n"
    )
    print(render(rows))
    print()
    for result in results:
        warm = ""
        if result.warmup_engine_s and result.warmup_ceiling_s:
            warm = (
                f" (warm-up round: tierstore {total / result.warmup_engine_s[0] / GiB:.3f}, "
                f"ceiling {total / result.warmup_ceiling_s[0] / GiB:.3f} GiB/s)"
            )
        print(f"- {result.name}: {result.note}{warm}")
    print(
        f"- memory: VmRSS sampled every 20 ms ({memory.samples} samples, "
        f"{memory.seconds:.1f} s) from /proc/<server pid>/status after a restart; "
        f"VmHWM at the end {memory.hwm / MiB:.0f} MiB"
    )
    for name, text in profiles:
        print(f"\n## Profile, tierstore side: {name}\n\n```\n{text}\n```")
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
                }
                for r in results
            ],
            "memory": asdict(memory),
            "memory_what_if": [asdict(extra) for extra in what_ifs],
        }
        args.json.write_text(json.dumps(document, indent=2))
    missed = any(row.result == "MISS" for row in rows)
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
