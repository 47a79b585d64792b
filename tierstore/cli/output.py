"""What ``tierstore`` commands print: results (a table, or JSON for scripts with
``--json``), the one error line of a failure with its exit code and a hint where gRPC's
words mislead, and the checks of a file a command is to write."""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console, RenderableType
from rich.text import Text

from tierstore import errors
from tierstore.cli.logs import json_error_line, logging_as_json
from tierstore.cli.state import deadline_text, gives_client_certificate, speaks_plaintext, state
from tierstore.cli.stopsignal import stop_exit, stopped_by
from tierstore.cli.tables import plain_lines, plain_widths, print_whole
from tierstore.types import ShardInfo

__all__ = [
    "Interrupted",
    "already_text",
    "checked_output_file",
    "emit",
    "emit_report",
    "emit_warned",
    "err",
    "fail",
    "hit_ratio_text",
    "interrupted",
    "interrupted_partway",
    "jsonable",
    "out",
    "plural",
    "print_as_fetched",
    "print_plain",
    "rate_text",
    "run_or_fail",
    "stopped_partway",
    "utc_minute",
    "write_failed",
    "yes_no",
]


T = TypeVar("T")

#: the width of tables written to a pipe: wide enough never to cut a column
_PIPED_WIDTH = 10_000


class _StdoutConsole(Console):
    """A console whose reader gone (EPIPE) raises BrokenPipeError, as a plain write
    does, where rich exits 1 on its own (SystemExit): :func:`emit` has to see it."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def _literal_console(*, stderr: bool = False, width: int | None = None) -> Console:
    """A console with no markup or emoji codes: what is printed holds names users chose
    (a shard named "x[/]y" or ":fire:" is printed as it is, not styled, changed or
    refused)."""
    console = Console if stderr else _StdoutConsole
    return console(stderr=stderr, width=width, markup=False, emoji=False)


def _stdout_console() -> Console:
    """At a terminal (or with COLUMNS set), its width; piped, as wide as the content, so
    a shard name is never cut to "…" on its way to grep (rich assumes 80 columns).
    A closed stdout (``>&-``: None) as a pipe: the command refuses to run then (main)."""
    if (sys.stdout is not None and sys.stdout.isatty()) or os.environ.get("COLUMNS"):
        return _literal_console()
    return _literal_console(width=_PIPED_WIDTH)


err = _literal_console(stderr=True)
out = _stdout_console()

_EXIT_CODES: list[tuple[type[errors.TierstoreError], int]] = [
    (errors.InvalidArgument, 2),
    (errors.NotFound, 3),
    (errors.AlreadyExists, 2),
    (errors.Unauthenticated, 4),
    (errors.PermissionDenied, 4),
    # A setup to mend (the CA file, the address's name), not an outage to wait out.
    (errors.ServerCertificateRejected, 2),
    (errors.Unavailable, 5),
    (errors.DataLoss, 6),
]


def jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it: dataclasses as dicts (a shard's size too), enums
    as their values, tuples as lists, keys as strings."""
    if isinstance(value, ShardInfo):  # its size is a property, which asdict() leaves out
        return {**jsonable(asdict(value)), "size": value.size, "frame_count": value.frame_count}
    if is_dataclass(value) and not isinstance(value, type):
        return jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "value") and isinstance(value.value, str):
        return value.value
    return value


def emit(value: Any, table: RenderableType | None = None) -> None:
    """Print a command's result: ``value`` as one line of JSON with --json, else
    ``table`` (if any) for people, with no name or number in it cut (:func:`print_whole`).

    A command that changes what the node holds (``state.changes``) whose report cannot
    be written (a full disk, or a reader gone: ``| true``) says so in an error line
    (:func:`output_lost`) and goes on, so that its own error line, warnings and exit
    code follow as they would; it exits 1 at least (``state.report_lost``). It exited
    1 without a word (the reader gone), or as if it had failed, and a script made a
    second token."""
    if state.report_lost:
        return  # said once; stdout is /dev/null since
    try:
        if state.json:
            sys.stdout.write(json.dumps(jsonable(value), indent=None, default=str) + "\n")
        elif table is not None:
            print_whole(out, table)
        sys.stdout.flush()
    except OSError as exc:
        if not state.changes or exc.errno not in OUTPUT_ERRNOS | {errno.EPIPE}:
            raise  # a listing's reader gone (| head): click ends it quietly, exit 1
        state.report_lost = True
        output_lost(exc, _what_is_unsaid(value))


def _what_is_unsaid(report: Any) -> str:
    """What the error line of a changing command's lost ``report`` adds."""
    said = "; what the command did is not shown: look (ls, stat, token ls) before running it again"
    if isinstance(report, dict) and "token_id" in report:
        token = report["token_id"]
        said += f"; token {token} was created: revoke it (token revoke {token}), its secret unseen"
    return said


#: what writing a command's output fails with: a full disk or quota, a file past its
#: size limit, a failing device (a reader that went away, EPIPE, is click's: it exits
#: 1 quietly, except from a command that changes what the node holds, :func:`emit`)
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def output_lost(exc: OSError, after: str = "") -> int:
    """Print the one error line of a command whose output (stdout) could not be
    written, ending in ``after``, and return its exit code (1). stdout then points at
    /dev/null, so that Python's last flush of what is left in its buffer does not fail
    again at exit."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    # stderr may be gone too (a terminal closed under a SIGHUP): the exit code tells.
    with contextlib.suppress(OSError):
        err.print(
            Text.assemble(
                ("error:", "red"),
                f" OSError: cannot write the output (stdout): {exc.strerror or exc}{after}",
            ),
            highlight=False,
            soft_wrap=True,
        )
    return 1


def emit_warned(value: dict[str, Any], table: RenderableType, warning: str | None) -> None:
    """:func:`emit` ``value`` and ``table``, with ``warning`` (if any) as ``value``'s
    ``"warning"`` and as a line on stderr: the command did what it was asked."""
    if warning is not None:
        value["warning"] = warning
    emit(value, table)
    if warning is not None:
        err.print(warning, highlight=False, soft_wrap=True)


def emit_report(value: Any, line: str, output: Path | None) -> None:
    """Print the report of a command that wrote its output to ``output`` (None: to
    stdout, ``-o -``): ``value`` as JSON with --json, else ``line``. On stdout, unless
    stdout is where the output went (``-o -``, or stdout under another name: ``-o
    /dev/stdout``), where it would end up in the output: on stderr then."""
    if output is not None and not _names_stdout(output):
        emit(value, Text(line))
        return
    sys.stderr.write((json.dumps(jsonable(value), default=str) if state.json else line) + "\n")


def _names_stdout(path: Path) -> bool:
    """Whether ``path`` is this process's stdout under another name (``/dev/stdout``,
    ``/dev/fd/1``, the terminal's device, the pipe's descriptor)."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError):  # no such file; no stdout (closed, or not a file)
        return False


#: what gRPC says when TLS did not come up: most often the wrong CA file, or a port
#: that is not the API's (the health port is plaintext)
_TLS_FAILURE = re.compile(r"CERTIFICATE_VERIFY_FAILED|handshake|WRONG_VERSION_NUMBER", re.I)
_TLS_HINT = (
    "TLS failed: is --ca / TIERSTORE_CA the server's tls/ca.pem, and --address / "
    "TIERSTORE_ADDRESS its API port? A server started with --insecure speaks "
    "plaintext: then give --insecure too"
)
#: what gRPC says when this side gave up on a handshake the server never answered (it
#: took the connection: a stopped or overloaded process), which says nothing of a CA
_NO_ANSWER = re.compile(r"Endpoint closing|handshake (timed out|timeout)", re.I)
_NO_ANSWER_HINT = (
    "the server at --address / TIERSTORE_ADDRESS accepted the connection but did not "
    "answer: is it stopped or overloaded? (not a CA problem: a wrong CA file fails at once)"
)
#: what gRPC says when a TLS server drops a plaintext connection
_CLOSED = re.compile(r"Socket closed|Connection reset|end of stream|EOF", re.I)
_INSECURE_HINT = (
    "--insecure (or TIERSTORE_INSECURE) speaks plaintext, and a TLS server closes such "
    "connections: drop it and give --ca, unless the server runs with --insecure too "
    "(then it may be at its connection cap, serve --max-connections: try again later)"
)

#: what a TLS connection closed at once most often means when no client certificate
#: was given: the server runs with --require-client-cert
_CLIENT_CERT_CAUSE = (
    "started with --require-client-cert closes connections that bring no client "
    "certificate: export TIERSTORE_CLIENT_CERT and TIERSTORE_CLIENT_KEY as its banner says "
    "(or give --client-cert and --client-key)"
)
_CLIENT_CERT_HINT = f"a server {_CLIENT_CERT_CAUSE}"


#: what gRPC says when this side could not set TLS up: its own files are the trouble
_NO_HANDSHAKER = re.compile(r"Failed to create security handshaker", re.I)


def _no_handshaker_hint() -> str:
    """The causes of TLS that this client could not start: the server is not to blame."""
    files = "is --ca / TIERSTORE_CA a PEM CA certificate"
    if gives_client_certificate():
        files += (
            ", and --client-cert / TIERSTORE_CLIENT_CERT a PEM certificate whose own key is "
            "--client-key / TIERSTORE_CLIENT_KEY (a certificate and a key that are not a "
            "pair fail so)"
        )
    return f"TLS could not start on this side: {files}?"


def _closed_in_handshake(text: str) -> bool:
    """Whether gRPC says the server closed the connection in the TLS handshake
    ("Handshake read failed (Socket closed)"), which says nothing of a CA file."""
    return not speaks_plaintext() and bool(_TLS_FAILURE.search(text) and _CLOSED.search(text))


def _closed_in_handshake_hint() -> str:
    """The causes of a connection closed in its TLS handshake. The CA hint alone was
    wrong for a server at its connection cap, which closes new connections so too."""
    causes = [
        "a server started with --insecure speaks plaintext: then give --insecure too",
        "one at its connection cap (serve --max-connections) closes new connections: "
        "try again later",
    ]
    if not gives_client_certificate():
        causes.insert(1, f"one {_CLIENT_CERT_CAUSE}")
    return "TLS failed: the server closed the connection in the handshake; " + "; ".join(causes)


def fail(exc: Exception, message: str | None = None) -> typer.Exit:
    """Print the command's one error line, ``exc``'s type and ``message`` (default: the
    exception's own); return the exit to raise, with the code ``exc`` maps to."""
    text = message or str(exc)
    if isinstance(exc, errors.Unavailable) and _NO_HANDSHAKER.search(text):
        text += f" ({_no_handshaker_hint()})"
    elif isinstance(exc, errors.Unavailable) and _NO_ANSWER.search(text):
        text += f" ({_NO_ANSWER_HINT})"
    elif isinstance(exc, errors.Unavailable) and _closed_in_handshake(text):
        text += f" ({_closed_in_handshake_hint()})"
    elif isinstance(exc, errors.Unavailable) and _TLS_FAILURE.search(text):
        text += f" ({_TLS_HINT})"
    elif isinstance(exc, errors.Unavailable) and _CLOSED.search(text):
        if speaks_plaintext():
            text += f" ({_INSECURE_HINT})"
        elif not gives_client_certificate():
            text += f" ({_CLIENT_CERT_HINT})"
    if isinstance(exc, errors.Unavailable) and "DEADLINE_EXCEEDED" in text:
        text += f" (a call may take {deadline_text()}; --timeout changes it)"
    code = next((c for cls, c in _EXIT_CODES if isinstance(exc, cls)), 1)
    name = type(exc).__name__
    if logging_as_json():  # tierstore serve: its log is JSON lines, and so is this one
        print(json_error_line(name, text), file=sys.stderr, flush=True)
        return typer.Exit(code)
    # soft_wrap: one line whatever the terminal width, so scripts can read it.
    err.print(Text.assemble(("error:", "red"), f" {name}: {text}"), highlight=False, soft_wrap=True)
    return typer.Exit(code)


def checked_output_file(given: str, option: str = "-o") -> Path:
    """The file ``option`` names, as given; refused (exit 2, one line) before any call
    to the server when no file can be written there: a directory, a name in a directory
    that does not exist, a name ending in ``/`` (a directory's, even one that does not
    exist: ``-o newdir/`` wrote a file named ``newdir``), or no name at all (an unset
    variable's, which said " is a directory")."""
    if not given:
        raise fail(errors.InvalidArgument(f"{option} is empty: name a file to write"))
    output = Path(given)
    if output.is_dir() or given.endswith(os.sep):
        raise fail(errors.InvalidArgument(f"{given} is a directory; name a file to write"))
    if not output.parent.is_dir():
        raise fail(errors.InvalidArgument(f"cannot write {output}: no directory {output.parent}"))
    return output


def write_failed(output: Path, exc: OSError) -> typer.Exit:
    """The one error line (exit 1) for a local file that could not be written."""
    return fail(exc, f"cannot write {output}: {exc.strerror or exc}")


def run_or_fail(action: Any) -> Any:
    """``action()``; a TierstoreError it raises becomes the command's one error line
    and exit code (:func:`fail`)."""
    try:
        return action()
    except errors.TierstoreError as exc:
        raise fail(exc) from None


def print_plain(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """``rows`` under ``columns``, each column as wide as its widest cell, written as
    they are (no markup: names are anyone's)."""
    sys.stdout.write("".join(line + "\n" for line in plain_lines(columns, rows)))


def print_as_fetched(
    columns: tuple[str, ...],
    row_of: Callable[[T], tuple[str, ...]],
    first: list[T],
    rest: Iterator[T],
    page: int,
    name_of: Callable[[T], str],
) -> None:
    """A listing too long to hold whole, printed as it is fetched: ``first`` (not
    empty), then ``rest`` ``page`` entries at a time, each written once it has come.
    With --json one array, as :func:`emit` prints a list; else plain columns as wide as
    ``first``'s widest cells (a wider cell later pushes the rest of its line). An
    error part way is the command's error once what came before it is printed (a
    --json array is left open), after a line naming the last entry printed
    (``name_of``), to go on from."""
    widths = plain_widths(columns, [row_of(entry) for entry in first])
    batch: list[T] = first
    failure: errors.TierstoreError | None = None
    printed = 0
    last = first[-1]
    while batch or failure is not None:
        if batch:
            if state.json:
                entries = ", ".join(json.dumps(jsonable(entry), default=str) for entry in batch)
                sys.stdout.write(("[" if not printed else ", ") + entries)
            else:
                rows = [row_of(entry) for entry in batch]
                lines = plain_lines(columns, rows, widths, header=not printed)
                sys.stdout.write("".join(line + "\n" for line in lines))
            sys.stdout.flush()
            printed, last = printed + len(batch), batch[-1]
        if failure is not None:
            err.print(
                f"the listing stopped after {name_of(last)} ({printed:,} printed)",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
            raise fail(failure)
        batch = []
        try:
            batch.extend(itertools.islice(rest, page))
        except errors.TierstoreError as exc:  # what came of the page is printed first
            failure = exc
    if state.json:
        sys.stdout.write("]\n")


def yes_no(flag: bool) -> str:
    """A table's cell for a flag."""
    return "yes" if flag else "no"


def stopped_partway(
    exc: errors.TierstoreError,
    names: list[str],
    count: int,
    done: str,
    already: tuple[str, Collection[str]] | None = None,
    totals: Mapping[str, Any] | None = None,
    done_also_as: str | None = None,
) -> typer.Exit:
    """Report the first ``count`` of ``names`` as ``done`` (with --json, ``done`` and
    ``not_<done>`` even when none was done, and ``in_doubt``: the name whose call was
    cut off before the server answered, ``exc.outcome_unknown``, so that it may have
    been done all the same; else null); return the exit with ``exc``'s one line.

    ``already``, a key and names: those of the first ``count`` that needed nothing (an
    unpin of a shard that was not pinned) are named under the key, not as ``done``.
    ``totals``: the command's other keys, as far as it got (pin's ``bytes_queued``),
    so that --json holds the keys it holds when all go; ``done_also_as``, a key that
    names the ``done`` ones again (put's ``shards``), for the same reason.

    A write-through call that failed with NotArchivedYet was done here, though: its
    name counts as ``done``, and (with --json) ``not_archived`` names it."""
    fields: dict[str, Any] = {}
    cause = " before an error"
    if isinstance(exc, errors.NotArchivedYet) and count < len(names):
        fields["not_archived"] = [names[count]]
        count += 1
        # "deleted 1 of 1 shards before an error" read as if nothing had been deleted.
        cause = f", the last {done} on this node only: the archive has not taken it yet"
    in_doubt = names[count] if exc.outcome_unknown and count < len(names) else None
    if count or state.json:
        _report_partway(
            names,
            count,
            done,
            cause,
            in_doubt,
            already,
            {**(totals or {}), **fields},
            done_also_as,
        )
    return fail(exc)


def _report_partway(
    names: list[str],
    count: int,
    done: str,
    cause: str,
    in_doubt: str | None,
    already: tuple[str, Collection[str]] | None,
    totals: Mapping[str, Any],
    done_also_as: str | None = None,
) -> None:
    """Emit what a command stopped part way (``cause``: " before Ctrl-C"...) did: the first
    ``count`` of ``names`` as ``done`` (those in ``already``'s names under its key) and
    under ``done_also_as`` too, the rest as ``not_<done>``, ``totals`` and
    ``in_doubt``; for :func:`stopped_partway` and :func:`interrupted_partway`."""
    key, given = already or ("", ())
    needed_nothing = set(given)
    unchanged = [name for name in names[:count] if name in needed_nothing]
    changed = [name for name in names[:count] if name not in needed_nothing]
    line = f"{done} {len(changed)} of {len(names)} shards{cause}"
    line += f": {', '.join(changed)}" if changed else ""
    line += already_text(key, unchanged)
    report = {
        done: changed,
        **({key: unchanged} if key else {}),
        f"not_{done}": names[count:],
        **totals,
        **({done_also_as: changed} if done_also_as else {}),
        "in_doubt": in_doubt,
    }
    emit(report, Text(line))


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM: :mod:`tierstore.cli.stopsignal`) stopped a command part way
    (exit 130, or 143)."""


def interrupted(in_doubt: str | None, done: str, maybe: str | None = None) -> typer.Exit:
    """Print the one error line of a command stopped by Ctrl-C: the rest were not
    ``done``, and ``in_doubt`` (if any), the shard whose call was on its way, may have
    been ``maybe`` (default: ``done``) all the same, as the server carries out a call
    it received whole even when its answer finds nobody. Return the exit, 130 (143
    after SIGTERM)."""
    doubt = (
        f"; {in_doubt!r} was on its way and may have been {maybe or done} all the same "
        "(see tierstore stat)"
        if in_doubt is not None
        else ""
    )
    fail(Interrupted(f"stopped by {stopped_by()}{doubt}; the rest were not {done}"))
    return typer.Exit(stop_exit())


def interrupted_partway(
    names: list[str],
    count: int,
    done: str,
    in_doubt: str | None,
    already: tuple[str, Collection[str]] | None = None,
    totals: Mapping[str, Any] | None = None,
    maybe: str | None = None,
    done_also_as: str | None = None,
) -> typer.Exit:
    """Report the first ``count`` of ``names`` as ``done`` before Ctrl-C stopped the
    command, and ``in_doubt`` (:func:`interrupted`); with --json the keys
    :func:`stopped_partway` prints (``done``, ``not_<done>``, ``already``'s key,
    ``totals``, ``done_also_as``, ``in_doubt``), even when none was done. Return the
    exit, 130 (143 after SIGTERM, 129 after SIGHUP)."""
    cause = f" before {stopped_by()}"
    _report_partway(names, count, done, cause, in_doubt, already, totals or {}, done_also_as)
    return interrupted(in_doubt, done, maybe)


def already_text(key: str, names: list[str]) -> str:
    """What follows a command's summary for ``names`` that needed nothing, listed under
    ``key`` with --json: "; already unpinned: a, b"; nothing when there are none."""
    return f"; {key.replace('_', ' ')}: {', '.join(names)}" if names else ""


def plural(number: int, noun: str) -> str:
    """``number`` and ``noun``, plural unless one: "1 shard", "2 shards", "1,200 shards"."""
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"


def rate_text(bytes_per_s: float) -> str:
    """A transfer rate for people, in the decimal units of the byte counts beside it:
    "2.4 GB/s", "155.7 MB/s", "12.5 kB/s", "80 B/s" (a small upload said "0.0 MB/s")."""
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if bytes_per_s >= scale:
            return f"{bytes_per_s / scale:.1f} {unit}"
    return f"{bytes_per_s:.0f} B/s"


def hit_ratio_text(figures: Mapping[str, Any]) -> str:
    """A dataset's hit ratio for a table: "n/a (no reads)" before its first read."""
    if figures["hit_ratio"] is None:
        return "n/a (no reads)"
    return f"{figures['hit_ratio']:.1%}"


def utc_minute(timestamp: float) -> str:
    """``timestamp`` (seconds since the epoch) as a UTC date and minute; the number itself
    when it is no date (NaN, or too far out for the platform): a table shows whatever
    the server sent, and never fails on it."""
    try:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))
    except (OverflowError, OSError, ValueError):
        return f"{timestamp:g} (not a date)"
