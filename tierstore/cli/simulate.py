"""``tierstore simulate``: replay a trace against placement policies and compare them.

The trace is a recorded file (``--trace``, see :mod:`tierstore.sim.tracefile`) or a
built-in workload (``--workload``, one trace per seed). Every policy asked for runs
at every capacity, and so do LRU and Belady, so each row says how far the policy
is from the baseline and from the offline optimum. Output: a table (default), JSON
rows (``--json``, nothing else on stdout), and optionally a miss-ratio plot.

Bad input (no or both trace sources, an unknown policy or workload, a capacity
outside (0, 1] or smaller than a shard, a malformed trace file, a ``--png`` that is a
directory or in none) prints one line on stderr and exits with code 2, through the
same error mapping as every other ``tierstore`` command. Replays run without
prefetching (Belady cannot prefetch), so policies are compared on eviction and
admission alone.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
from rich.progress import Progress as ProgressBar

from tierstore.cli.output import checked_output_file, err, fail, out, run_or_fail
from tierstore.cli.state import state
from tierstore.errors import InvalidArgument
from tierstore.policy.registry import POLICY_NAMES
from tierstore.sim.events import Trace
from tierstore.sim.report import SweepRow, rows_json, rows_table, write_png
from tierstore.sim.runner import Progress, sweep
from tierstore.sim.tracefile import load_trace

__all__ = ["SimulateRequest", "run_request", "simulate"]


@dataclass(frozen=True, slots=True)
class SimulateRequest:
    """The command's options, parsed but not yet checked against the registries."""

    trace: Path | None
    workload: str | None
    policies: tuple[str, ...]
    capacities: tuple[float, ...]
    seed: int
    seeds: int
    full: bool
    #: reads replayed but not counted; None: a workload's own warm-up, none for a file
    warmup_reads: int | None = None


def simulate(
    trace: Annotated[
        str | None,  # (a Path would make "" the current directory)
        typer.Option(
            metavar="PATH",
            help="a recorded trace file (JSON Lines, may be gzip; read once, so a pipe "
            "will do); -: read it from stdin, as `trace export -o -` writes it",
        ),
    ] = None,
    workload: Annotated[str | None, typer.Option(help="a built-in workload by name")] = None,
    policy: Annotated[
        str | None,
        typer.Option(help=f"policies to compare, comma-separated [{','.join(POLICY_NAMES)}]"),
    ] = None,
    capacity: Annotated[
        str, typer.Option(help="hot-tier sizes as fractions of the dataset bytes, in (0, 1]")
    ] = "0.01,0.1,0.5",
    seed: Annotated[int, typer.Option(help="the first workload seed")] = 0,
    seeds: Annotated[
        int, typer.Option(help="workload seeds to average over (a trace file is one run)")
    ] = 3,
    full: Annotated[bool, typer.Option(help="the workload at full size")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="print JSON rows only")] = False,
    png: Annotated[str | None, typer.Option(help="also plot the miss ratios to this PNG")] = None,
    warmup_reads: Annotated[
        int | None,
        typer.Option(
            help="reads of each run replayed to warm the tier but not counted (default: "
            "a workload's first epoch, or half its reads for zipf, scan and varsize, as in "
            "docs/policies.md; none of a trace file's)"
        ),
    ] = None,
) -> None:
    """Compare placement policies on a trace, with LRU and Belady (optimal) for reference.
    Replays do not prefetch (Belady cannot), so a trace of jobs that declared plans
    shows clairvoyant far below what the node reached, where prefetch fetched the
    planned shards ahead of their reads: compare eviction and admission only."""
    notes: list[str] = []  # about the trace file, said after the results
    # Before the replays, which may take minutes: their results were lost to a typo.
    if trace == "":  # an unset variable, say: not the working directory
        raise fail(InvalidArgument("--trace is empty: give a trace file, or - for stdin"))
    plot = None if png is None else checked_output_file(png, "--png")

    def run() -> list[SweepRow]:
        request = SimulateRequest(
            trace=None if trace is None else Path(trace),
            workload=workload,
            policies=_names(policy, "--policy") if policy is not None else (),
            capacities=tuple(_fraction(text) for text in _names(capacity, "--capacity")),
            seed=seed,
            seeds=seeds,
            full=full,
            warmup_reads=warmup_reads,
        )
        # On stderr, on terminals only, and gone when done: stdout holds only the
        # table or the JSON, and a script's stderr only errors.
        with ProgressBar(
            TextColumn("replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        ) as bar:
            task = bar.add_task("replaying", total=None)
            return run_request(
                request,
                lambda done, total: bar.update(task, completed=done, total=total),
                on_trace=lambda loaded: notes.append(reported_reads_note(loaded)),
            )

    rows: list[SweepRow] = run_or_fail(run)
    if plot is not None:
        run_or_fail(lambda: write_png(rows, plot))
    # --json here or before the command (``tierstore --json simulate``) alike.
    if json_output or state.json:
        sys.stdout.write(json.dumps(rows_json(rows)) + "\n")
        sys.stdout.flush()  # before the notes on stderr, which speak of these figures
    else:
        out.print(rows_table(rows))
        if plot is not None:
            out.print(f"miss-ratio curve written to {plot}")
    for note in filter(None, notes):
        err.print(f"note: {note}", highlight=False, soft_wrap=True)


def reported_reads_note(trace: Trace) -> str:
    """What to keep in mind about ``trace``'s results when local readers reported some of
    its reads ("" when none did)."""
    reads = trace.reads()
    reported = sum(read.reported for read in reads)
    if not reported:
        return ""
    return (
        f"{reported:,} of the trace's {len(reads):,} reads were reported by local readers "
        "in batches: traced at most 3 of a shard a batch, one after the other, so their "
        "order and frequency are not the readers'. The reads past 3 are missing, and were "
        "hits: the hit ratios above can be far below the node's (half of it, in one run "
        "of Zipf reads served mostly in place), and lean towards recency; compare the "
        "node's own hit ratio (tierstore stats) (docs/local-reads.md)"
    )


def run_request(
    request: SimulateRequest,
    progress: Progress | None = None,
    on_trace: Callable[[Trace], None] | None = None,
) -> list[SweepRow]:
    """The sweep a request asks for; every argument is checked before any replay.
    ``on_trace`` is given a trace file once it is loaded.

    Raises InvalidArgument for no or both trace sources, an unknown workload, fewer
    than one seed, or what :func:`tierstore.sim.runner.sweep` refuses (capacities;
    UnknownPolicy for policies); MalformedTrace for a trace file that does not parse.
    """
    policies = request.policies or POLICY_NAMES
    given = request.warmup_reads
    if given is not None and given < 0:
        raise InvalidArgument(f"--warmup-reads must not be negative, got {given}")
    if request.trace is not None and request.workload is not None:
        raise InvalidArgument("give one of --trace FILE and --workload NAME, not both")
    if request.trace is not None:
        path = request.trace
        # "-" is stdin, as trace export's "-o -" is stdout (a file named "-" is given
        # by a longer path: /full/path/-).
        from_stdin = path == Path("-")
        if from_stdin and sys.stdin is None:  # closed (<&-): Python gives it as None
            raise InvalidArgument("--trace -: stdin is closed, so there is no trace to read")
        label = "stdin" if from_stdin else path.name

        def load(_seed: int) -> Trace:
            loaded = load_trace(sys.stdin.buffer, "stdin") if from_stdin else load_trace(path)
            if on_trace is not None:
                on_trace(loaded)
            return loaded

        # A file is one trace whatever the seed. The sweep calls this only after it
        # has checked policies and capacities, so a typo fails before a long load.
        return sweep(
            load,
            policies,
            request.capacities,
            [request.seed],
            workload=label,
            progress=progress,
            warmup=lambda _trace: given or 0,
        )
    name = request.workload
    if name is None:
        raise InvalidArgument("give one of --trace FILE and --workload NAME")
    # Imported here: generating workloads pulls numpy, which other commands never need.
    from tierstore.sim import workloads

    if request.seeds < 1:
        raise InvalidArgument(f"--seeds must be at least 1, got {request.seeds}")
    full = request.full
    return sweep(
        lambda s: workloads.generate(name, seed=s, full=full),
        policies,
        request.capacities,
        range(request.seed, request.seed + request.seeds),
        workload=name,
        progress=progress,
        # The steady state by default, as the figures of docs/policies.md: the tier
        # starts cold, and counting its first fill put every policy below them.
        warmup=lambda trace: workloads.warmup_reads(name, trace) if given is None else given,
    )


def _names(text: str, option: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise InvalidArgument(f"{option} needs at least one value, got {text!r}")
    return names


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"--capacity {text!r} is not a number") from None
