"""Sweep reports (tierstore.sim.report): table, JSON rows and the miss-ratio plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from tierstore.errors import InvalidArgument
from tierstore.sim.report import (
    SweepRow,
    miss_ratio_figure,
    ratio,
    rows_json,
    rows_table,
    rows_text,
    write_png,
)


def row(policy: str, fraction: float, miss: float, workload: str = "zipf-0.8") -> SweepRow:
    return SweepRow(
        workload=workload,
        policy=policy,
        capacity_fraction=fraction,
        capacity_bytes=int(fraction * 1_000_000),
        seeds=3,
        hit_ratio=1 - miss,
        byte_hit_ratio=0.5,
        miss_ratio=miss,
        miss_ratio_vs_belady=miss / 0.25,
        miss_ratio_vs_lru=None,
        hit_ratio_vs_lru=1.25,
    )


ROWS = [
    row("lru", 0.5, 0.4),
    row("belady", 0.5, 0.25),
    row("lru", 0.01, 0.9),
    row("belady", 0.01, 0.7),
    row("lru", 0.1, 0.6),
    row("belady", 0.1, 0.5),
]


@pytest.mark.parametrize(
    "numerator, denominator, expected",
    [(1.0, 2.0, 0.5), (3.0, 1.5, 2.0), (0.0, 0.0, 1.0), (0.2, 0.0, None), (0.0, 0.5, 0.0)],
)
def test_ratio_is_one_for_zero_over_zero_and_none_when_infinite(
    numerator: float, denominator: float, expected: float | None
) -> None:
    assert ratio(numerator, denominator) == expected


def test_json_rows_carry_every_field_and_null_for_missing_ratios() -> None:
    decoded = json.loads(json.dumps(rows_json(ROWS[:1])))
    assert decoded == [
        {
            "workload": "zipf-0.8",
            "policy": "lru",
            "capacity_fraction": 0.5,
            "capacity_bytes": 500_000,
            "seeds": 3,
            "hit_ratio": 0.6,
            "byte_hit_ratio": 0.5,
            "miss_ratio": 0.4,
            "miss_ratio_vs_belady": 1.6,
            "miss_ratio_vs_lru": None,
            "hit_ratio_vs_lru": 1.25,
            "warmup_reads": 0,
        }
    ]


def cells(text: str, first: set[str]) -> list[str]:
    """The table's body rows (those whose first cell is in ``first``), blanks squeezed."""
    rows = [" ".join(line.split()) for line in text.splitlines()]
    return [row for row in rows if row.split(" ", 1)[0] in first]


def test_the_text_table_has_a_line_per_row_in_order_without_escape_codes() -> None:
    text = rows_text(ROWS)
    assert "\x1b" not in text
    assert text.startswith("policy sweep of zipf-0.8, 3 seeds a row")
    lines = cells(text, {"lru", "belady"})
    assert [line.split()[0] for line in lines] == [r.policy for r in ROWS]
    # policy, capacity, bytes, hit, byte hit, miss, vs belady, vs lru (None), hit vs lru
    assert lines[0] == "lru 50% 500.0 kB 0.600 0.500 0.400 1.600 - 1.250"


def test_the_table_fits_80_columns_uncut() -> None:
    text = rows_text([row("clairvoyant", 0.125, 0.3), *ROWS], width=80)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
    assert "…" not in text
    assert cells(text, {"clairvoyant"}) == [
        "clairvoyant 12.5% 125.0 kB 0.700 0.500 0.300 1.200 - 1.250"
    ]


def test_workloads_and_seed_counts_that_differ_get_columns() -> None:
    other = SweepRow(**{**rows_json(ROWS[:1])[0], "workload": "scan", "seeds": 1})
    text = rows_text([ROWS[0], other])
    assert text.splitlines()[0].strip() == "policy sweep"
    assert cells(text, {"zipf-0.8", "scan"}) == [
        "zipf-0.8 lru 50% 500.0 kB 3 0.600 0.500 0.400 1.600 - 1.250",
        "scan lru 50% 500.0 kB 1 0.600 0.500 0.400 1.600 - 1.250",
    ]


def test_the_rich_table_has_one_row_per_sweep_row() -> None:
    assert rows_table(ROWS).row_count == len(ROWS)


def test_the_figure_draws_one_line_per_policy_ordered_by_capacity() -> None:
    figure = miss_ratio_figure(ROWS)
    (axes,) = figure.axes
    lines = {str(line.get_label()): line for line in axes.get_lines()}
    assert set(lines) == {"lru", "belady"}
    assert np.asarray(lines["lru"].get_xdata()).tolist() == [0.01, 0.1, 0.5]
    assert np.asarray(lines["lru"].get_ydata()).tolist() == [0.9, 0.6, 0.4]
    assert np.asarray(lines["belady"].get_ydata()).tolist() == [0.7, 0.5, 0.25]
    assert axes.get_xscale() == "log"  # 0.01 to 0.5 spans more than 10x
    assert axes.get_title() == "zipf-0.8"


def test_a_narrow_range_is_linear_and_several_workloads_are_told_apart() -> None:
    rows = [row("lru", 0.2, 0.5, "a"), row("lru", 0.4, 0.3, "a"), row("lru", 0.2, 0.6, "b")]
    (axes,) = miss_ratio_figure(rows).axes
    assert axes.get_xscale() == "linear"
    assert sorted(str(line.get_label()) for line in axes.get_lines()) == ["a: lru", "b: lru"]


def test_write_png_writes_a_png_image(tmp_path: Path) -> None:
    path = tmp_path / "curve.png"
    write_png(ROWS, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    assert pixels.std() > 0  # something was drawn


def test_nothing_to_plot_or_nowhere_to_write_is_an_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no sweep rows"):
        write_png([], tmp_path / "empty.png")
    with pytest.raises(InvalidArgument, match="cannot write"):
        write_png(ROWS, tmp_path / "missing-dir" / "curve.png")
    assert not (tmp_path / "empty.png").exists()
