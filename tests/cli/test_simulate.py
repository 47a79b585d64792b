"""``tierstore simulate`` (tierstore.cli.simulate), invoked through a Typer app of its own."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from tests.server.conftest import clean_env, tierstore_command
from tierstore.cli.simulate import simulate
from tierstore.policy.registry import POLICY_NAMES
from tierstore.sim.tracefile import TraceWriter

app = typer.Typer()
app.command("simulate")(simulate)


@app.callback()
def _group() -> None:
    """Keeps ``simulate`` a subcommand, as it is under ``tierstore``."""


# The smallest built-in workload (2,000 shards, 10,000 reads): a replay takes ~0.1 s.
WORKLOAD = ["--workload", "epochs"]
FIELDS = {
    "workload",
    "policy",
    "capacity_fraction",
    "capacity_bytes",
    "seeds",
    "hit_ratio",
    "byte_hit_ratio",
    "miss_ratio",
    "miss_ratio_vs_belady",
    "miss_ratio_vs_lru",
    "hit_ratio_vs_lru",
    "warmup_reads",
}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, ["simulate", *args])


def json_rows(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    """A loop over three 10-byte shards, then one 20-byte shard (50 bytes in all)."""
    path = tmp_path / "loop.jsonl"
    with path.open("w") as stream:
        writer = TraceWriter(stream)
        for t in range(30):
            writer.read(float(t), "d", f"s{t % 3}", 10)
        writer.read(30.0, "d", "big", 20)
    return path


def test_a_workload_sweep_prints_json_rows_for_every_policy_and_capacity() -> None:
    rows = json_rows(
        invoke(*WORKLOAD, "--policy", "s3fifo", "--capacity", "0.1,0.5", "--seeds", "2", "--json")
    )
    assert [(r["capacity_fraction"], r["policy"]) for r in rows] == [
        (0.1, "s3fifo"),
        (0.1, "lru"),
        (0.1, "belady"),
        (0.5, "s3fifo"),
        (0.5, "lru"),
        (0.5, "belady"),
    ]
    for r in rows:
        assert set(r) == FIELDS
        assert r["workload"] == "epochs"
        assert r["seeds"] == 2
        assert 0.0 <= r["miss_ratio"] <= 1.0
        assert r["miss_ratio"] == pytest.approx(1.0 - r["hit_ratio"])
    belady = [r for r in rows if r["policy"] == "belady"]
    assert all(r["miss_ratio_vs_belady"] == 1.0 for r in belady)


def test_a_workload_is_measured_in_its_steady_state_unless_told_otherwise() -> None:
    # The cold first epoch was counted: Belady read 0.08 on single-job epochs at 10%,
    # where docs/policies.md (steady state) says exactly C/N = 0.10.
    args = (*WORKLOAD, "--policy", "s3fifo", "--capacity", "0.1", "--seeds", "1", "--json")
    steady = {r["policy"]: r for r in json_rows(invoke(*args))}
    assert steady["belady"]["hit_ratio"] == pytest.approx(0.10)
    assert steady["belady"]["warmup_reads"] == 2000  # one epoch of the 2,000 shards
    cold = {r["policy"]: r for r in json_rows(invoke(*args, "--warmup-reads", "0"))}
    assert cold["belady"]["hit_ratio"] == pytest.approx(0.08)  # 800 of 10,000 reads
    assert cold["belady"]["warmup_reads"] == 0
    table = invoke(*WORKLOAD, "--policy", "s3fifo", "--capacity", "0.1", "--seeds", "1")
    assert "first 2,000 reads not counted" in " ".join(table.stdout.split())
    for bad, says in (("-1", "must not be negative"), ("10000", "leaves none")):
        refused = invoke(*args, "--warmup-reads", bad)
        assert refused.exit_code == 2 and says in refused.stderr, refused.output


def test_the_default_is_a_table_of_every_live_policy() -> None:
    result = invoke(*WORKLOAD, "--capacity", "0.5", "--seeds", "1")
    assert result.exit_code == 0, result.output
    row_names = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    for policy in (*POLICY_NAMES, "belady"):
        assert policy in row_names
    assert "miss ÷" in result.stdout  # the ratio columns are there


def test_a_trace_file_is_one_run_named_after_the_file(trace_file: Path, tmp_path: Path) -> None:
    png = tmp_path / "curve.png"
    rows = json_rows(
        invoke(
            "--trace",
            str(trace_file),
            "--policy",
            "lru",
            "--capacity",
            "0.4,1",
            "--json",
            "--png",
            str(png),
        )
    )
    assert {(r["policy"], r["workload"], r["seeds"]) for r in rows} == {
        ("lru", "loop.jsonl", 1),
        ("belady", "loop.jsonl", 1),
    }
    at = {(r["policy"], r["capacity_fraction"]): r for r in rows}
    # 20 bytes of room for a loop over 30: LRU never hits; with all 50 bytes only the
    # four first reads miss.
    assert at["lru", 0.4]["hit_ratio"] == 0.0
    assert at["lru", 1.0]["hit_ratio"] == pytest.approx(27 / 31)
    assert at["belady", 0.4]["hit_ratio"] > 0.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_trace_dash_reads_the_trace_from_stdin(
    trace_file: Path, tmp_path: Path, compressed: bool
) -> None:
    # `trace export -o -` writes to stdout; `simulate --trace -` read a file named "-".
    data = trace_file.read_bytes()
    result = CliRunner().invoke(
        app,
        ["simulate", "--trace", "-", "--policy", "lru", "--capacity", "1", "--json"],
        input=gzip.compress(data) if compressed else data,
    )
    rows = json_rows(result)
    assert {(r["policy"], r["workload"]) for r in rows} == {("lru", "stdin"), ("belady", "stdin")}
    assert [r["hit_ratio"] for r in rows if r["policy"] == "lru"] == [pytest.approx(27 / 31)]


def test_a_trace_with_reads_local_readers_reported_gets_a_note(tmp_path: Path) -> None:
    path = tmp_path / "reported.jsonl"
    with path.open("w") as stream:
        writer = TraceWriter(stream)
        for t in range(12):
            writer.read(float(t), "d", f"s{t % 4}", 10, reported=t % 3 == 0)
    result = invoke("--trace", str(path), "--policy", "lru", "--capacity", "0.5", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)  # the rows, as ever
    note = result.stderr.strip()
    assert note.startswith("note: 4 of the trace's 12 reads were reported by local readers")
    assert "order and frequency are not the readers'" in note


def test_the_note_on_reported_reads_follows_the_figures_it_speaks_of(tmp_path: Path) -> None:
    # It says "the hit ratios above", and came before them.
    path = tmp_path / "reported.jsonl"
    with path.open("w") as stream:
        TraceWriter(stream).read(0.0, "d", "s", 10, reported=True)
    result = invoke("--trace", str(path), "--policy", "lru", "--capacity", "1")
    assert result.exit_code == 0, result.output
    assert "the hit ratios above" in result.output
    assert result.output.index("belady") < result.output.index("note: ")


def test_a_png_that_cannot_be_written_is_refused_before_the_replay(tmp_path: Path) -> None:
    # It was refused only once every replay had run, and their results were lost.
    path = tmp_path / "reported.jsonl"
    with path.open("w") as stream:
        TraceWriter(stream).read(0.0, "d", "s", 10, reported=True)
    args = ("--trace", str(path), "--capacity", "1", "--png")
    for png, says in (
        (str(tmp_path / "no" / "curve.png"), "no directory"),
        (str(tmp_path), "directory"),
        ("", "--png is empty"),  # it said ". is a directory"
    ):
        refused = invoke(*args, png)
        assert_refused(refused, says)  # one line: no note of a trace never loaded


def assert_refused(result: Result, *expected: str) -> None:
    """Exit code 2 and one line on stderr that says what was wrong."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0]


def test_a_malformed_trace_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"format": "tierstore-trace", "version": 1}\n{"t": 1, "op": "oops"}\n')
    assert_refused(invoke("--trace", str(path)), "MalformedTrace", "line 2", "unknown op")


def test_a_trace_of_no_events_is_refused_as_nothing_to_replay(tmp_path: Path) -> None:
    path = tmp_path / "idle.jsonl"
    with path.open("w") as stream:
        TraceWriter(stream)  # the header alone: what an idle node's export holds
    result = invoke("--trace", str(path))
    assert_refused(result, "InvalidArgument", "holds no events: nothing to replay")
    assert "MalformedTrace" not in result.stderr


def test_a_missing_trace_file_is_refused(tmp_path: Path) -> None:
    assert_refused(invoke("--trace", str(tmp_path / "none.jsonl")), "cannot read trace")


def test_an_unknown_policy_is_refused(trace_file: Path) -> None:
    assert_refused(
        invoke("--trace", str(trace_file), "--policy", "lru,nope"), "UnknownPolicy", "'nope'"
    )


def test_an_unknown_workload_is_refused() -> None:
    assert_refused(invoke("--workload", "nope", "--policy", "lru"), "no workload", "'nope'")


@pytest.mark.parametrize("capacity", ["0", "1.5", "-0.1", "nan", "0.1,2"])
def test_a_capacity_outside_zero_to_one_is_refused(trace_file: Path, capacity: str) -> None:
    assert_refused(
        invoke("--trace", str(trace_file), "--capacity", capacity), "not a fraction", "(0, 1]"
    )


@pytest.mark.parametrize("capacity, message", [("abc", "not a number"), (",", "at least one")])
def test_a_capacity_that_is_not_a_list_of_numbers_is_refused(
    trace_file: Path, capacity: str, message: str
) -> None:
    assert_refused(invoke("--trace", str(trace_file), "--capacity", capacity), message)


def test_a_capacity_smaller_than_one_shard_is_refused(trace_file: Path) -> None:
    # 30% of 50 bytes is 15: less than the 20-byte shard.
    assert_refused(
        invoke("--trace", str(trace_file), "--capacity", "0.3"), "smaller than its largest shard"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "give one of --trace FILE and --workload NAME"),
        (("--workload", "epochs", "--trace", "x.jsonl"), "not both"),
        (("--workload", "epochs", "--seeds", "0"), "--seeds must be at least 1"),
        # An unset variable's "": it said "cannot read trace .: Is a directory".
        (("--trace", ""), "--trace is empty"),
    ],
)
def test_trace_source_and_seed_mistakes_are_refused(args: tuple[str, ...], message: str) -> None:
    assert_refused(invoke(*args), message)


def test_trace_dash_with_stdin_closed_is_refused_in_one_line() -> None:
    # Python gives a closed stdin (<&-) as None: an AttributeError's traceback (a review).
    done = subprocess.run(
        [tierstore_command(), "simulate", "--trace", "-", "--capacity", "0.5"],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        preexec_fn=lambda: os.close(0),
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "error: InvalidArgument: --trace -: stdin is closed, so there is no trace to read"
    )
