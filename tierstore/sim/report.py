"""What a policy sweep found, as a table, JSON rows, or a miss-ratio plot.

A :class:`SweepRow` is one (workload, policy, capacity) cell of a sweep, averaged
over its seeds (:mod:`tierstore.sim.runner` makes them). The three ``*_vs_*``
fields compare the row with the LRU baseline and the offline optimum (Belady) at
the same capacity: ``miss_ratio_vs_belady`` of 1.0 is optimal, ``hit_ratio_vs_lru``
above 1.0 beats the baseline. A ratio whose denominator is zero is 1.0 when the
numerator is zero too, and ``None`` (JSON ``null``) when it would be infinite.

Everything here is pure but :func:`write_png`, which writes one file. matplotlib
is imported only by the plotting functions (it is slow to import), and draws on a
private Agg canvas, never pyplot's global figures, so plotting is thread-safe.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box, filesize
from rich.console import Console, JustifyMethod
from rich.table import Table

from tierstore.errors import InvalidArgument

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "SweepRow",
    "miss_ratio_figure",
    "ratio",
    "rows_json",
    "rows_table",
    "rows_text",
    "write_png",
]


@dataclass(frozen=True, slots=True)
class SweepRow:
    """One policy at one capacity on one workload, averaged over ``seeds`` runs.

    ``capacity_bytes`` is the mean over the seeds' traces (their sizes may differ);
    the ratios are of the means, not means of per-seed ratios.
    """

    workload: str
    policy: str
    capacity_fraction: float
    capacity_bytes: int
    seeds: int
    hit_ratio: float
    byte_hit_ratio: float
    miss_ratio: float
    miss_ratio_vs_belady: float | None
    miss_ratio_vs_lru: float | None
    hit_ratio_vs_lru: float | None
    #: reads of each run replayed to warm the tier but not counted (mean over the seeds)
    warmup_reads: int = 0


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``; 1.0 for 0/0 (both policies perfect), None for x/0."""
    if denominator == 0:
        return 1.0 if numerator == 0 else None
    return numerator / denominator


def rows_json(rows: Sequence[SweepRow]) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts, one per row, with the field names as keys."""
    return [asdict(row) for row in rows]


_Column = tuple[str, Callable[[SweepRow], str]]
_COLUMNS: tuple[_Column, ...] = (
    ("policy", lambda r: r.policy),
    ("capacity", lambda r: f"{100 * r.capacity_fraction:g}%"),
    ("bytes", lambda r: filesize.decimal(r.capacity_bytes)),
    ("hit\nratio", lambda r: f"{r.hit_ratio:.3f}"),
    ("bytes\nhit", lambda r: f"{r.byte_hit_ratio:.3f}"),
    ("miss\nratio", lambda r: f"{r.miss_ratio:.3f}"),
    ("miss ÷\nbelady", lambda r: _optional(r.miss_ratio_vs_belady)),
    ("miss ÷\nlru", lambda r: _optional(r.miss_ratio_vs_lru)),
    ("hit ÷\nlru", lambda r: _optional(r.hit_ratio_vs_lru)),
)
_WORKLOAD: _Column = ("workload", lambda r: r.workload)
_SEEDS: _Column = ("seeds", lambda r: str(r.seeds))


def rows_table(rows: Sequence[SweepRow]) -> Table:
    """A rich table of the rows, in the order given (a sweep orders them by capacity).

    The workload and the seed count go in the title when every row shares them (so
    the table fits 80 columns), else in columns of their own.
    """
    columns = list(_COLUMNS)
    title = "policy sweep"
    workloads = sorted({row.workload for row in rows})
    seeds = sorted({row.seeds for row in rows})
    if len(workloads) == 1:
        title += f" of {workloads[0]}"
    else:
        columns.insert(0, _WORKLOAD)
    if len(seeds) == 1:
        title += f", {seeds[0]} seed{'s' if seeds[0] != 1 else ''} a row"
    else:
        columns.insert(-6, _SEEDS)
    warmups = {row.warmup_reads for row in rows}
    if len(warmups) == 1 and (warmup := warmups.pop()):
        title += f", the first {warmup:,} reads not counted (warm-up)"
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )
    for header, _ in columns:
        justify: JustifyMethod = "left" if header in ("workload", "policy") else "right"
        table.add_column(header, justify=justify, no_wrap=True)
    for row in rows:
        table.add_row(*(cell(row) for _, cell in columns))
    return table


def rows_text(rows: Sequence[SweepRow], width: int = 160) -> str:
    """The table as plain text (no colour or escape codes), for logs and files."""
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False).print(
        rows_table(rows)
    )
    return buffer.getvalue()


def _optional(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def miss_ratio_figure(rows: Sequence[SweepRow]) -> Figure:
    """Miss ratio against capacity fraction, one line per (workload, policy).

    The x axis is logarithmic when the capacities span a factor of ten or more.
    Raises InvalidArgument when there are no rows.
    """
    if not rows:
        raise InvalidArgument("no sweep rows to plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    workloads = list(dict.fromkeys(row.workload for row in rows))
    lines: dict[tuple[str, str], list[SweepRow]] = {}
    for row in rows:
        lines.setdefault((row.workload, row.policy), []).append(row)

    figure = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself: the figure renders with Agg, not pyplot's
    axes = figure.add_subplot()
    for (workload, policy), points in lines.items():
        points = sorted(points, key=lambda row: row.capacity_fraction)
        label = policy if len(workloads) == 1 else f"{workload}: {policy}"
        axes.plot(
            [row.capacity_fraction for row in points],
            [row.miss_ratio for row in points],
            marker="o",
            label=label,
        )
    fractions = [row.capacity_fraction for row in rows]
    if max(fractions) >= 10 * min(fractions):
        axes.set_xscale("log")
    axes.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))
    axes.set_xlabel("hot-tier capacity (share of dataset bytes)")
    axes.set_ylabel("miss ratio")
    axes.set_ylim(bottom=0.0)
    axes.set_title(", ".join(workloads))
    axes.grid(True, alpha=0.3)
    axes.legend()
    return figure


def write_png(rows: Sequence[SweepRow], path: Path) -> None:
    """Write :func:`miss_ratio_figure` of ``rows`` to ``path`` as a PNG.

    Raises InvalidArgument when there are no rows or the file cannot be written.
    """
    figure = miss_ratio_figure(rows)
    try:
        figure.savefig(path, format="png", dpi=120)
    except OSError as exc:
        raise InvalidArgument(f"cannot write {path}: {exc.strerror or exc}") from None
