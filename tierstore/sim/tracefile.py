"""Access-trace files: JSON Lines that a live node records and the simulator replays.

The format, one JSON object a line, the first line a header::

    {"format": "tierstore-trace", "version": 1}
    {"t": 1.5, "op": "read", "dataset": "d", "shard": "s", "size": 123, "job": ""}
    {"t": 1.6, "op": "plan", "job": "j1", "dataset": "d", "shards": ["a", "b"], "sizes": [10, 20]}
    {"t": 1.7, "op": "position", "job": "j1", "position": 10}
    {"t": 1.8, "op": "close", "job": "j1"}

``t`` is seconds on a clock that never goes back; a read's ``job`` may be left out
(it means ""); ``"reported": true`` marks a read a local reader reported later with
others, as a count (:class:`~tierstore.types.TracedRead`: its order and frequency are
not the reader's); unknown extra fields are ignored so later writers can add some. A
file may be gzip-compressed (recognised by its magic bytes, whatever its name). It is
read once, from start to end, so a pipe (``/dev/stdin``, ``<(zcat f)``) or a binary
stream does as well as a file.

:func:`load_trace` names shards by dense ints in order of first appearance, as
:class:`~tierstore.sim.events.Trace` wants; a shard's size is the latest one seen.
Shards that no event names are not in a file, so :func:`dump_trace` followed by
:func:`load_trace` keeps every event but drops never-named shards from the sizes.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from tierstore.errors import InvalidArgument, MalformedTrace
from tierstore.sim.events import Event, PlanClosed, PlanDeclared, PositionReported, Read, Trace
from tierstore.sim.linereader import next_line, opened

__all__ = ["FORMAT", "MAX_LINE_BYTES", "VERSION", "TraceWriter", "dump_trace", "load_trace"]

FORMAT = "tierstore-trace"
VERSION = 1

_HEADER = {"format": FORMAT, "version": VERSION}

#: the fields each op must carry, besides ``t`` and ``op``.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "read": ("dataset", "shard", "size"),
    "plan": ("job", "dataset", "shards", "sizes"),
    "position": ("job", "position"),
    "close": ("job",),
}


class _Invalid(Exception):
    """One record is wrong; the caller adds where (line number) and the public type."""


def _check_record(record: Any) -> None:
    """Raise _Invalid unless ``record`` is a well-formed event record (time order aside).

    The one validator both sides use, so a TraceWriter never writes what load_trace
    would refuse.
    """
    if not isinstance(record, dict):
        raise _Invalid(f"expected a JSON object, got {type(record).__name__}")
    op = record.get("op")
    if not isinstance(op, str) or op not in _REQUIRED:  # a list is no key of a dict
        raise _Invalid(f"unknown op {op!r:.40} (expected one of {', '.join(_REQUIRED)})")
    missing = [f for f in ("t", *_REQUIRED[op]) if f not in record]
    if missing:
        raise _Invalid(f"{op} record is missing {', '.join(missing)}")
    t = record["t"]
    # bool is an int subclass; "t": true is a bug in the writer, not a time.
    if isinstance(t, bool) or not isinstance(t, int | float) or not _finite(t):
        raise _Invalid(f"t must be a finite number, got {t!r:.40}")
    for name in ("dataset", "shard", "job"):
        if name in record and not isinstance(record[name], str):
            raise _Invalid(f"{name} must be a string, got {record[name]!r:.40}")
    if op == "read":
        _check_size("size", record["size"])
        if not isinstance(record.get("reported", False), bool):
            raise _Invalid(f"reported must be true or false, got {record['reported']!r:.40}")
    elif op == "plan":
        shards, sizes = record["shards"], record["sizes"]
        if not isinstance(shards, list) or not all(isinstance(s, str) for s in shards):
            raise _Invalid("shards must be a list of strings")
        if not isinstance(sizes, list):
            raise _Invalid("sizes must be a list of sizes")
        if len(shards) != len(sizes):
            raise _Invalid(f"plan has {len(shards)} shards but {len(sizes)} sizes")
        for size in sizes:
            _check_size("sizes entry", size)
    elif op == "position":
        _check_size("position", record["position"])


def _finite(t: float) -> bool:
    """Whether ``t`` is a finite float, or an int that fits one (math.isfinite raises
    OverflowError for a larger one: 1 followed by 400 zeros)."""
    try:
        return math.isfinite(t)
    except OverflowError:
        return False


#: the most bytes a line may hold, its newline included. Far above the longest line an
#: export writes: one plan declaration, which the node's trace keeps only up to
#: MAX_TRACED_PLAN_BYTES (512 MiB) of entries (name bytes, a separator and 8 bytes of
#: size each), and which JSON writes in at most 3 times that (a name's byte as up to 3
#: characters of "\u00e9", 2 quotes, 2 separators, at most 19 digits): about 1.5 GiB.
#: It bounds what one line of a file that is no trace (a gzip bomb of one line) takes.
MAX_LINE_BYTES = 2 << 30

#: the largest size or position a trace may hold.
MAX_SIZE = 2**63 - 1


def _check_size(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"{name} must be an integer, got {value!r:.40}")
    if value < 0:
        raise _Invalid(f"{name} must not be negative, got {value!r:.40}")
    if value > MAX_SIZE:  # the simulator keeps sizes and positions as 64-bit integers
        raise _Invalid(f"{name} must be at most 2**63 - 1, got {value!r:.40}")


class TraceWriter:
    """Writes a trace to a text stream: the header at once, then one line an event.

    Every method raises InvalidArgument (and writes nothing) for an event that
    :func:`load_trace` would refuse: a bad size, a plan whose shards and sizes differ
    in length, or a time before the previous event's. The stream is not closed.
    Not thread-safe: serialise calls.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._last_t = -math.inf
        stream.write(json.dumps(_HEADER) + "\n")

    def read(
        self,
        t: float,
        dataset: str,
        shard: str,
        size: int,
        job: str = "",
        *,
        reported: bool = False,
    ) -> None:
        """Record a read of ``size`` bytes of ``dataset``/``shard`` by ``job``
        (``reported``: by a local reader, reported later as a count)."""
        record = {
            "t": t,
            "op": "read",
            "dataset": dataset,
            "shard": shard,
            "size": size,
            "job": job,
        }
        if reported:
            record["reported"] = True
        self._write(record)

    def plan(
        self, t: float, job: str, dataset: str, shards: Sequence[str], sizes: Sequence[int]
    ) -> None:
        """Record that ``job`` will read ``shards`` of ``dataset`` in this order."""
        self._write(
            {
                "t": t,
                "op": "plan",
                "job": job,
                "dataset": dataset,
                "shards": list(shards),
                "sizes": list(sizes),
            }
        )

    def position(self, t: float, job: str, position: int) -> None:
        """Record that ``job`` has read the first ``position`` entries of its plan."""
        self._write({"t": t, "op": "position", "job": job, "position": position})

    def close(self, t: float, job: str) -> None:
        """Record that ``job`` is done with its plan (the stream stays open)."""
        self._write({"t": t, "op": "close", "job": job})

    def _write(self, record: dict[str, Any]) -> None:
        try:
            _check_record(record)
        except _Invalid as exc:
            raise InvalidArgument(f"trace event not written: {exc}") from None
        if record["t"] < self._last_t:
            raise InvalidArgument(
                f"trace event not written: t={record['t']!r:.40} is before t={self._last_t!r:.40}"
            )
        self._last_t = record["t"]
        self._stream.write(json.dumps(record) + "\n")


def dump_trace(trace: Trace, stream: TextIO, dataset: str = "sim") -> None:
    """Write ``trace`` in the file format; shard ``k`` is named ``str(k)`` in ``dataset``.

    Raises InvalidArgument if the trace holds an event the format cannot carry
    (e.g. times going back). The stream is not closed.
    """
    writer = TraceWriter(stream)
    sizes = trace.sizes
    for event in trace.events:
        if isinstance(event, Read):
            writer.read(
                event.t,
                dataset,
                str(event.key),
                sizes[event.key],
                event.job,
                reported=event.reported,
            )
        elif isinstance(event, PlanDeclared):
            writer.plan(
                event.t,
                event.job,
                dataset,
                [str(k) for k in event.keys],
                [sizes[k] for k in event.keys],
            )
        elif isinstance(event, PositionReported):
            writer.position(event.t, event.job, event.position)
        else:
            writer.close(event.t, event.job)


def load_trace(source: Path | BinaryIO, name: str | None = None) -> Trace:
    """Read a trace file (plain or gzip) into a :class:`Trace` named ``name`` (default:
    the file's name).

    ``source`` is a path, or a binary stream (stdin's buffer, say) read from where it
    stands and left open; either is read once, so it may be a pipe.

    Raises MalformedTrace, naming the line and what is wrong with it, for a missing
    or wrong header, a line longer than :data:`MAX_LINE_BYTES` or not UTF-8 or not JSON
    (or a last line cut short), a second header (two traces joined), an unknown
    op, missing or mistyped fields, a negative size, a time before the previous
    event's, a plan whose shards and sizes differ in length, or a gzip stream that is
    cut short or corrupt. Raises InvalidArgument if the file cannot be opened or
    read, or holds no events (a header alone: what an idle node exports).
    """
    if name is None:
        given = source.name if isinstance(source, Path) else getattr(source, "name", None)
        name = Path(given).name if isinstance(given, str) else "stream"
    where = str(source) if isinstance(source, Path) else name  # what errors call it
    keys: dict[tuple[str, str], int] = {}
    sizes: list[int] = []

    def key_of(dataset: str, shard: str, size: int) -> int:
        key = keys.setdefault((dataset, shard), len(keys))
        if key == len(sizes):
            sizes.append(size)
        else:
            sizes[key] = size  # the latest size wins: a shard may be overwritten
        return key

    events: list[Event] = []
    last_t = -math.inf
    for lineno, record in _records(source, where):
        t = record["t"]
        if t < last_t:
            raise MalformedTrace(f"{where}: line {lineno}: t={t!r:.40} is before t={last_t!r:.40}")
        last_t = t
        op = record["op"]
        if op == "read":
            key = key_of(record["dataset"], record["shard"], record["size"])
            events.append(Read(t, key, record.get("job", ""), record.get("reported", False)))
        elif op == "plan":
            ds = record["dataset"]
            plan = zip(record["shards"], record["sizes"], strict=True)
            events.append(PlanDeclared(t, record["job"], tuple(key_of(ds, s, n) for s, n in plan)))
        elif op == "position":
            events.append(PositionReported(t, record["job"], record["position"]))
        else:
            events.append(PlanClosed(t, record["job"]))
    return Trace(name, tuple(sizes), events)


def _records(source: Path | BinaryIO, where: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, checked record) for each event line; raises MalformedTrace.
    ``where`` is what error messages call ``source``.

    Also the one place that translates I/O and decoding errors (see load_trace).
    """
    lineno = 0  # of the last line read whole
    try:
        events = 0
        with opened(source) as binary:
            # A line at a time, each decoded alone, so an error names its own line.
            while raw := next_line(binary, MAX_LINE_BYTES):
                lineno += 1
                if len(raw) > MAX_LINE_BYTES:
                    raise MalformedTrace(
                        f"{where}: line {lineno}: longer than {MAX_LINE_BYTES:,} bytes, "
                        "the most a trace line may hold"
                    )
                line = "" if raw.isspace() else _decoded(where, lineno, raw)
                del raw  # a long line's bytes need not outlive its text
                record = _parse(where, lineno, line)
                if lineno == 1:
                    _check_header(where, record, line)
                elif record is not None:
                    _check_not_header(where, lineno, record)
                    try:
                        _check_record(record)
                    except _Invalid as exc:
                        raise MalformedTrace(f"{where}: line {lineno}: {exc}") from None
                    events += 1
                    yield lineno, record
    # Found while reading the next line; its damage may lie a little further on (the
    # decompressor runs ahead of the lines by a buffer).
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise MalformedTrace(
            f"{where}: near line {lineno + 1}: corrupt gzip stream ({exc})"
        ) from None
    except OSError as exc:
        raise InvalidArgument(f"cannot read trace {where}: {exc.strerror or exc}") from None
    if lineno == 0:
        raise MalformedTrace(f"{where}: line 1: empty file (expected the header)")
    if events == 0:
        # Not malformed: what `trace export` writes for a node that traced nothing.
        raise InvalidArgument(
            f"{where} holds no events: nothing to replay (the header alone, as a node "
            "that traced nothing exports)"
        )


def _decoded(where: str, lineno: int, raw: bytes | bytearray) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedTrace(
            f"{where}: line {lineno}: not UTF-8 text (byte {exc.start + 1} of the line)"
        ) from None


def _check_not_header(where: str, lineno: int, record: Any) -> None:
    # `cat a.jsonl.gz b.jsonl.gz > c.jsonl.gz` makes one stream of both (gzip reads
    # its members as one): their times would go back at the join, or worse, not.
    if isinstance(record, dict) and "op" not in record and record.get("format") == FORMAT:
        raise MalformedTrace(
            f"{where}: line {lineno}: a second header (traces joined?): a file holds one trace"
        )


def _check_header(where: str, record: Any, line: str) -> None:
    # Extra header fields are allowed (a recorder may say who it is); the version is not.
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise MalformedTrace(
            f"{where}: line 1: expected the header {json.dumps(_HEADER)}, got {line.strip()[:80]!r}"
        )
    if record.get("version") != VERSION or isinstance(record.get("version"), bool):
        raise MalformedTrace(
            f"{where}: line 1: unsupported trace version {record.get('version')!r:.40} "
            f"(this reader knows version {VERSION})"
        )


def _parse(where: str, lineno: int, line: str) -> Any:
    """The JSON value of one line (None for a blank line); raises MalformedTrace."""
    if not line.strip():
        return None
    try:
        return json.loads(line, parse_constant=_reject_constant)
    # ValueError: JSON's errors, and an integer too long for int() (4300 digits);
    # RecursionError: arrays or objects nested too deep to parse.
    except (ValueError, RecursionError, _Invalid) as exc:
        # A writer ends every line with "\n": a last line without one was cut short.
        if not line.endswith("\n"):
            raise MalformedTrace(f"{where}: line {lineno}: truncated last line") from None
        raise MalformedTrace(f"{where}: line {lineno}: not valid JSON ({exc})") from None


def _reject_constant(name: str) -> Any:
    # json accepts NaN and Infinity, which are not JSON and not times.
    raise _Invalid(f"{name} is not valid JSON")
