"""Trace files (tierstore.sim.tracefile): the format, round trips, and every refusal."""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierstore.engine.trace import MAX_TRACED_PLAN_BYTES
from tierstore.errors import InvalidArgument, MalformedTrace
from tierstore.sim import tracefile
from tierstore.sim.events import Event, PlanClosed, PlanDeclared, PositionReported, Read, Trace
from tierstore.sim.tracefile import TraceWriter, dump_trace, load_trace

HEADER = '{"format": "tierstore-trace", "version": 1}'
READ = '{"t": 1.0, "op": "read", "dataset": "d", "shard": "a", "size": 10, "job": ""}'


def write_lines(path: Path, *lines: str, newline_at_end: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""), encoding="utf-8")
    return path


def test_the_writer_writes_the_documented_format_line_for_line() -> None:
    stream = io.StringIO()
    writer = TraceWriter(stream)
    writer.read(1.5, "d", "s", 123)
    writer.plan(1.6, "j1", "d", ["a", "b"], [10, 20])
    writer.position(1.7, "j1", 10)
    writer.close(1.8, "j1")
    assert stream.getvalue().splitlines() == [
        HEADER,
        '{"t": 1.5, "op": "read", "dataset": "d", "shard": "s", "size": 123, "job": ""}',
        '{"t": 1.6, "op": "plan", "job": "j1", "dataset": "d", "shards": ["a", "b"], '
        '"sizes": [10, 20]}',
        '{"t": 1.7, "op": "position", "job": "j1", "position": 10}',
        '{"t": 1.8, "op": "close", "job": "j1"}',
    ]


def test_load_numbers_shards_by_first_appearance_and_keeps_the_latest_size(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.jsonl"
    with path.open("w") as stream:
        writer = TraceWriter(stream)
        writer.read(0.0, "d", "x", 5, job="j0")
        writer.plan(1.0, "j1", "d", ["y", "x", "z"], [7, 6, 8])
        writer.read(1.0, "e", "x", 9)  # another dataset: another shard
        writer.position(2.0, "j1", 1)
        writer.read(3.0, "d", "y", 70)  # overwritten since the plan
        writer.close(4.0, "j1")
    trace = load_trace(path)
    assert trace.name == "t.jsonl"
    assert trace.sizes == (6, 70, 8, 9)
    assert list(trace.events) == [
        Read(0.0, 0, "j0"),
        PlanDeclared(1.0, "j1", (1, 0, 2)),
        Read(1.0, 3, ""),
        PositionReported(2.0, "j1", 1),
        Read(3.0, 1, ""),
        PlanClosed(4.0, "j1"),
    ]


def test_a_read_may_leave_out_its_job_and_carry_unknown_fields(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "t.jsonl",
        '{"format": "tierstore-trace", "version": 1, "recorder": "node-1"}',
        '{"t": 2, "op": "read", "dataset": "d", "shard": "a", "size": 10, "hit": true}',
    )
    assert list(load_trace(path).events) == [Read(2, 0, "")]


def test_gzip_files_are_read_transparently(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as stream:
        writer = TraceWriter(stream)
        writer.read(0.0, "d", "a", 1)
        writer.read(1.0, "d", "b", 2)
    trace = load_trace(path)
    assert trace.sizes == (1, 2)
    assert list(trace.events) == [Read(0.0, 0), Read(1.0, 1)]


def trace_bytes(*, compressed: bool) -> bytes:
    body = "\n".join([HEADER, READ, READ.replace('"a"', '"b"')]) + "\n"
    return gzip.compress(body.encode()) if compressed else body.encode()


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_a_pipe_is_read_once_from_its_start(compressed: bool) -> None:
    # /dev/stdin, <(cat f) or a pipe's /dev/fd/N can be read only once: the file was
    # opened twice (once to look for the gzip magic), and that first look had read
    # the whole (short) trace, so the second found it empty.
    readable, writable = os.pipe()
    try:
        os.write(writable, trace_bytes(compressed=compressed))
        os.close(writable)
        trace = load_trace(Path(f"/dev/fd/{readable}"))
    finally:
        os.close(readable)
    assert trace.sizes == (10, 10)
    assert list(trace.events) == [Read(1.0, 0), Read(1.0, 1)]


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_a_binary_stream_is_read_and_left_open(compressed: bool) -> None:
    stream = io.BytesIO(trace_bytes(compressed=compressed))
    trace = load_trace(stream)
    assert list(trace.events) == [Read(1.0, 0), Read(1.0, 1)]
    assert trace.name == "stream"  # a stream without a name
    assert not stream.closed  # stdin, say: the caller's to close


def test_a_stream_that_yields_a_byte_at_a_time_is_read_whole() -> None:
    # A pipe may deliver the gzip magic's two bytes in two reads.
    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            if not self.data:
                return 0
            buffer[0] = self.data[0]
            self.data = self.data[1:]
            return 1

    trace = load_trace(Trickle(trace_bytes(compressed=True)))  # type: ignore[arg-type]
    assert list(trace.events) == [Read(1.0, 0), Read(1.0, 1)]


def test_dump_then_load_keeps_every_event_of_a_workload_trace(tmp_path: Path) -> None:
    # Keys appear in 0, 1, 2 order, so the loaded ids are the original ones.
    original = Trace(
        "hand-made",
        (10, 20, 30),
        [
            PlanDeclared(0.0, "j", (0, 1, 2, 1)),
            Read(0.5, 0, "j"),
            Read(1.0, 1, "j"),
            PositionReported(1.0, "j", 2),
            Read(1.5, 2, "j"),
            Read(2.0, 1, "j"),
            PlanClosed(2.0, "j"),
            Read(3.0, 0),
        ],
    )
    path = tmp_path / "w.jsonl"
    with path.open("w") as stream:
        dump_trace(original, stream, dataset="w")
    loaded = load_trace(path)
    assert loaded.sizes == original.sizes
    assert list(loaded.events) == list(original.events)


times = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def traces(draw: st.DrawFn) -> tuple[tuple[int, ...], list[Event]]:
    sizes = tuple(draw(st.lists(st.integers(0, 2**40), min_size=1, max_size=8)))
    key = st.integers(0, len(sizes) - 1)
    job = st.sampled_from(["", "a", "b"])
    event = st.one_of(
        st.builds(Read, times, key, job, st.booleans()),
        st.builds(PlanDeclared, times, job, st.lists(key, max_size=5).map(tuple)),
        st.builds(PositionReported, times, job, st.integers(0, 1000)),
        st.builds(PlanClosed, times, job),
    )
    events = draw(st.lists(event, min_size=1, max_size=30))
    return sizes, sorted(events, key=lambda e: e.t)


@given(traces())
def test_any_trace_survives_dump_and_load_up_to_renaming(
    drawn: tuple[tuple[int, ...], list[Event]],
) -> None:
    sizes, events = drawn
    stream = io.StringIO()
    dump_trace(Trace("t", sizes, events), stream)
    # Shards are renumbered by first appearance: map the originals the same way.
    order: dict[int, int] = {}
    for event in events:
        for key in (event.key,) if isinstance(event, Read) else getattr(event, "keys", ()):
            order.setdefault(key, len(order))
    expected = [
        Read(e.t, order[e.key], e.job, e.reported)
        if isinstance(e, Read)
        else PlanDeclared(e.t, e.job, tuple(order[k] for k in e.keys))
        if isinstance(e, PlanDeclared)
        else e
        for e in events
    ]
    loaded = _load_text(stream.getvalue())
    assert list(loaded.events) == expected
    assert loaded.sizes == tuple(sizes[k] for k in sorted(order, key=order.__getitem__))


def _load_text(text: str) -> Trace:
    # hypothesis runs many examples per test; a tmp_path fixture would be shared by all.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.jsonl"
        path.write_text(text, encoding="utf-8")
        return load_trace(path)


MALFORMED = {
    "missing header": ((READ,), "line 1: expected the header"),
    "wrong format": (('{"format": "other", "version": 1}', READ), "line 1: expected the header"),
    "header not an object": (("[1, 2]", READ), "line 1: expected the header"),
    "wrong version": (('{"format": "tierstore-trace", "version": 2}', READ), "line 1: unsupported"),
    "bad JSON": ((HEADER, READ, "{not json}", READ), "line 3: not valid JSON"),
    "NaN time": ((HEADER, READ.replace("1.0", "NaN")), "line 2: not valid JSON"),
    "not an object": ((HEADER, "[1]"), "line 2: expected a JSON object"),
    "unknown op": ((HEADER, READ.replace('"read"', '"write"')), "line 2: unknown op 'write'"),
    "missing op": ((HEADER, '{"t": 1}'), "line 2: unknown op None"),
    "missing field": (
        (HEADER, '{"t": 1, "op": "read", "dataset": "d", "size": 1}'),
        "line 2: read record is missing shard",
    ),
    "missing time": ((HEADER, '{"op": "close", "job": "j"}'), "line 2: close record is missing t"),
    "negative size": ((HEADER, READ.replace('"size": 10', '"size": -1')), "line 2: size must not"),
    "fractional size": ((HEADER, READ.replace('"size": 10', '"size": 1.5')), "line 2: size must"),
    "size past 64 bits": (
        (HEADER, READ.replace('"size": 10', f'"size": {2**63}')),
        "line 2: size must be at most 2\\*\\*63 - 1",
    ),
    "reported not a boolean": (
        (HEADER, READ.replace('"job": ""', '"job": "", "reported": 1')),
        "line 2: reported must be true or false",
    ),
    "boolean size": ((HEADER, READ.replace('"size": 10', '"size": true')), "line 2: size must"),
    "string time": ((HEADER, READ.replace("1.0", '"1.0"')), "line 2: t must be a finite number"),
    "time past a float": (
        (HEADER, READ.replace("1.0", "1" + "0" * 400)),
        "line 2: t must be a finite number",
    ),
    "numeric shard": ((HEADER, READ.replace('"a"', "7")), "line 2: shard must be a string"),
    "time going back": ((HEADER, READ, READ.replace("1.0", "0.5")), "line 3: t=0.5 is before"),
    "plan length mismatch": (
        (
            HEADER,
            '{"t": 1, "op": "plan", "job": "j", "dataset": "d", "shards": ["a"], "sizes": [1, 2]}',
        ),
        "line 2: plan has 1 shards but 2 sizes",
    ),
    "plan negative size": (
        (
            HEADER,
            '{"t": 1, "op": "plan", "job": "j", "dataset": "d", "shards": ["a"], "sizes": [-3]}',
        ),
        "line 2: sizes entry must not be negative",
    ),
    "negative position": (
        (HEADER, '{"t": 1, "op": "position", "job": "j", "position": -1}'),
        "line 2: position must not be negative",
    ),
    "integer too long to convert": (
        (HEADER, READ, READ.replace('"size": 10', '"size": ' + "9" * 5000)),
        "line 3: not valid JSON",
    ),
    "arrays nested too deep": (
        (HEADER, READ.replace('"job": ""', '"job": "", "x": ' + "[" * 100_000 + "]" * 100_000)),
        "line 2: not valid JSON",
    ),
}


@pytest.mark.parametrize("lines, message", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_files_are_refused_naming_the_line(
    tmp_path: Path, lines: tuple[str, ...], message: str
) -> None:
    path = write_lines(tmp_path / "bad.jsonl", *lines)
    with pytest.raises(MalformedTrace, match=message):
        load_trace(path)


LONG = "[" + ", ".join(["123456789"] * 20_000) + "]"  # 220 KB of one value
ECHOED = {
    "op": (READ.replace('"read"', LONG), "line 2: unknown op [123456789, "),
    "job": (READ.replace('""', LONG), "line 2: job must be a string, got [123456789, "),
    "reported": (
        READ.replace('"job": ""', f'"job": "", "reported": {LONG}'),
        "line 2: reported must be true or false, got [123456789, ",
    ),
    "size": (READ.replace("10", LONG), "line 2: size must be an integer, got [123456789, "),
    "negative size": (
        READ.replace("10", "-" + "9" * 4000),
        "line 2: size must not be negative, got -99999999",
    ),
    "huge size": (READ.replace("10", "9" * 4000), "line 2: size must be at most 2"),
    "time going back": (
        READ.replace("1.0", "1" + "0" * 300),
        "line 3: t=1.0 is before t=" + "1" + "0" * 30,
    ),
}


@pytest.mark.parametrize("line, message", ECHOED.values(), ids=ECHOED.keys())
def test_a_refusal_quotes_at_most_the_start_of_a_value(
    tmp_path: Path, line: str, message: str
) -> None:
    # A value was quoted whole: an error of 220 KB for a long list of an op.
    lines = (HEADER, line, READ) if message.startswith("line 3") else (HEADER, line)
    path = write_lines(tmp_path / "long.jsonl", *lines)
    with pytest.raises(MalformedTrace) as caught:
        load_trace(path)
    text = str(caught.value).removeprefix(f"{path}: ")
    assert text.startswith(message)
    assert len(text) < 200


def test_a_header_of_a_long_version_is_quoted_in_part(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "v.jsonl", HEADER.replace("1}", LONG + "}"), READ)
    with pytest.raises(MalformedTrace, match="unsupported trace version") as caught:
        load_trace(path)
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize("lines", [(HEADER,), (HEADER, "", "  ")], ids=["header", "blanks"])
def test_a_trace_of_no_events_is_refused_as_empty_not_as_malformed(
    tmp_path: Path, lines: tuple[str, ...]
) -> None:
    # What `trace export` writes for a node that traced nothing: it said "wrote 0
    # events", and simulate called the file malformed ("no events after the header").
    path = write_lines(tmp_path / "idle.jsonl", *lines)
    with pytest.raises(
        InvalidArgument, match=r"idle\.jsonl holds no events: nothing to replay"
    ) as caught:
        load_trace(path)
    assert not isinstance(caught.value, MalformedTrace)
    assert "malformed" not in str(caught.value).lower()


def test_a_last_line_cut_short_is_reported_as_truncated(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "cut.jsonl", HEADER, READ, READ[:30], newline_at_end=False)
    with pytest.raises(MalformedTrace, match="line 3: truncated last line"):
        load_trace(path)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    with pytest.raises(MalformedTrace, match="line 1: empty file"):
        load_trace(path)


def test_bytes_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(HEADER.encode() + b"\n" + READ.replace('"a"', '"\xe9"').encode("latin-1"))
    with pytest.raises(MalformedTrace, match="not UTF-8"):
        load_trace(path)


def test_a_gzip_stream_cut_short_is_refused(tmp_path: Path) -> None:
    body = "\n".join([HEADER, *[READ.replace("1.0", f"{i}.0") for i in range(1, 500)]]) + "\n"
    packed = gzip.compress(body.encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(MalformedTrace, match="corrupt gzip stream"):
        load_trace(path)


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_a_line_longer_than_the_limit_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressed: bool
) -> None:
    # A line was read whole, however long: a 400 KB gzip file holding one 400 MiB
    # line took 818 MB.
    monkeypatch.setattr(tracefile, "MAX_LINE_BYTES", 1000)
    long_read = READ.replace('"job": ""', '"job": "", "x": "' + "x" * 2000 + '"')
    body = "\n".join([HEADER, READ, long_read]) + "\n"
    path = tmp_path / "long.jsonl"
    path.write_bytes(gzip.compress(body.encode()) if compressed else body.encode())
    with pytest.raises(MalformedTrace, match="line 3: longer than 1,000 bytes"):
        load_trace(path)
    # A line of the limit, its newline included, is read.
    fits = READ.replace('"job": ""', '"job": "", "x": "' + "x" * (999 - len(READ) - 9) + '"')
    assert len(fits) + 1 == 1000
    assert load_trace(write_lines(tmp_path / "fits.jsonl", HEADER, fits)).events == [Read(1.0, 0)]


def test_a_long_line_takes_about_its_own_size_to_read(tmp_path: Path) -> None:
    # 400 MiB of blanks took 818 MB: decoded text beside its bytes, or (readline with
    # a limit) the line's chunks beside their join.
    size = 64 << 20
    path = tmp_path / "blank.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=1) as stream:
        stream.write(f"{HEADER}\n{READ}\n".encode())
        stream.write(b" " * size + b"\n")
    tracemalloc.start()
    try:
        assert load_trace(path).events == [Read(1.0, 0)]  # a blank line
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * size


def test_the_line_limit_holds_the_longest_line_an_export_writes() -> None:
    # The longest: one plan declaration the node's trace keeps, MAX_TRACED_PLAN_BYTES of
    # entries (a name's UTF-8 bytes, a separator and 8 bytes of size each). In JSON an
    # entry is its escaped name (at most 3 characters a byte: "\u00e9" for two bytes,
    # a surrogate pair of 12 for four), two quotes, two separators and up to 19 digits:
    # at most 3 times its bytes in the ring, plus the event's other fields.
    assert tracefile.MAX_LINE_BYTES >= 3 * MAX_TRACED_PLAN_BYTES + (1 << 20)
    entry = ["é" * 512]  # 1,024 bytes of name: 3,072 characters escaped
    line = json.dumps({"shards": entry, "sizes": [2**63 - 1]})
    assert len(line) - len('{"shards": [], "sizes": []}') <= 3 * (1024 + 1 + 8)


def test_a_bad_byte_is_reported_at_its_own_line(tmp_path: Path) -> None:
    # The text was decoded in chunks: a bad byte on line 15001 was reported at 14959.
    lines = [HEADER.encode()] + [READ.replace("1.0", f"{i}.0").encode() for i in range(1, 1000)]
    lines[900] = lines[900].replace(b'"a"', b'"\xe9"')
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(MalformedTrace, match="line 901: not UTF-8 text"):
        load_trace(path)
    gz = tmp_path / "bad.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(MalformedTrace, match="line 901: not UTF-8 text"):
        load_trace(gz)


def test_a_corrupt_gzip_stream_is_placed_near_its_line(tmp_path: Path) -> None:
    body = "\n".join([HEADER, *[READ.replace("1.0", f"{i}.0") for i in range(1, 3000)]]) + "\n"
    # A second gzip member whose deflate data is bad from its first byte (block type 3).
    bad_member = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\x07" + bytes(64)
    path = tmp_path / "corrupt.jsonl.gz"
    path.write_bytes(gzip.compress(body.encode()) + bad_member)
    with pytest.raises(MalformedTrace, match="near line 3001: corrupt gzip stream"):
        load_trace(path)


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_two_traces_joined_are_named_as_such(tmp_path: Path, compressed: bool) -> None:
    # `cat a.jsonl.gz b.jsonl.gz` is one gzip stream of both: the second header was
    # refused as "unknown op None".
    one = ("\n".join([HEADER, READ]) + "\n").encode()
    path = tmp_path / "joined.jsonl"
    path.write_bytes(gzip.compress(one) * 2 if compressed else one * 2)
    with pytest.raises(MalformedTrace, match=r"line 3: a second header \(traces joined\?\)"):
        load_trace(path)


def test_a_missing_file_is_an_invalid_argument_not_a_malformed_trace(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read trace") as caught:
        load_trace(tmp_path / "nope.jsonl")
    assert not isinstance(caught.value, MalformedTrace)


@pytest.mark.parametrize(
    "bad_call, message",
    [
        (lambda w: w.read(1.0, "d", "s", -1), "size must not be negative"),
        (lambda w: w.plan(1.0, "j", "d", ["a", "b"], [1]), "2 shards but 1 sizes"),
        (lambda w: w.position(1.0, "j", -2), "position must not be negative"),
        (lambda w: w.read(float("nan"), "d", "s", 1), "t must be a finite number"),
        (lambda w: w.read(10**400, "d", "s", 1), "t must be a finite number"),
        (lambda w: w.close(0.5, "j"), "t=0.5 is before t=1.0"),
    ],
)
def test_the_writer_refuses_what_the_loader_would_and_writes_nothing(
    bad_call: Callable[[TraceWriter], None], message: str
) -> None:
    stream = io.StringIO()
    writer = TraceWriter(stream)
    writer.read(1.0, "d", "s", 1)
    before = stream.getvalue()
    with pytest.raises(InvalidArgument, match=message):
        bad_call(writer)
    assert stream.getvalue() == before
