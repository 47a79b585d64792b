"""The ``tierstore`` command: ``serve`` a node, and administer one through the client.

Every command but ``serve`` and ``simulate`` talks to a server through
:mod:`tierstore.client`, and takes the connection options (``--address``, ``--token`` or
``--token-file``, ``--ca``, ``--insecure``, ``--timeout``) and ``--json`` before or after
its name; the connection options default to ``TIERSTORE_ADDRESS``, ``TIERSTORE_TOKEN`` (or
``TIERSTORE_TOKEN_FILE``) and ``TIERSTORE_CA``. Errors print one line on stderr and exit
non-zero (2 for a caller's mistake, 3 for not found, 4 for
permission problems, 5 for unavailable, 6 for data loss, 1 otherwise); ``--json`` prints
results for scripts.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import inspect
import io
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Annotated, Any, TextIO, TypeVar

import typer
from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

from tierstore import errors
from tierstore.client.deadlines import (
    DEFAULT_STREAM_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    timeout_problem,
)
from tierstore.client.download import output_target, partial_file, write_all
from tierstore.naming import validate_shard_name
from tierstore.types import ALL_DATASETS, Grant, Role, ShardInfo

T = TypeVar("T")

app = typer.Typer(help="tierstore: tiered storage for ML shards.", no_args_is_help=True)
dataset_app = typer.Typer(help="Create, list, update and delete datasets.", no_args_is_help=True)
token_app = typer.Typer(help="Issue, list and revoke access tokens.", no_args_is_help=True)
keys_app = typer.Typer(help="Master keys for encryption at rest.", no_args_is_help=True)
policy_app = typer.Typer(help="A dataset's placement policy.", no_args_is_help=True)
trace_app = typer.Typer(help="The node's access trace.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")
app.add_typer(token_app, name="token")
app.add_typer(keys_app, name="keys")
app.add_typer(policy_app, name="policy")
app.add_typer(trace_app, name="trace")

#: the width of tables written to a pipe: wide enough never to cut a column
_PIPED_WIDTH = 10_000


def _literal_console(*, stderr: bool = False, width: int | None = None) -> Console:
    """A console with no markup or emoji codes: what is printed holds names users chose
    (a shard named "x[/]y" or ":fire:" is printed as it is, not styled, changed or
    refused)."""
    return Console(stderr=stderr, width=width, markup=False, emoji=False)


def _stdout_console() -> Console:
    """At a terminal (or with COLUMNS set), its width; piped, as wide as the content, so
    a shard name is never cut to "…" on its way to grep (rich assumes 80 columns)."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
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
    (errors.Unavailable, 5),
    (errors.DataLoss, 6),
]


@dataclass
class _State:
    address: str | None = None
    token: str | None = None
    token_file: Path | None = None
    ca: Path | None = None
    insecure: bool = False
    #: seconds any one call may take (None: the client's defaults)
    timeout: float | None = None
    json: bool = False
    #: clients this command made, closed when it ends (see _client)
    clients: list[Any] = field(default_factory=list)


state = _State()


_CONNECTION = "Connection"
#: the client's deadlines when --timeout is not given
_DEFAULT_DEADLINES = f"{DEFAULT_TIMEOUT_S:g} s, {DEFAULT_STREAM_TIMEOUT_S:g} s for transfers"


@app.callback()
def _options(
    context: typer.Context,
    address: Annotated[
        str | None, typer.Option(help="HOST:PORT [TIERSTORE_ADDRESS]", rich_help_panel=_CONNECTION)
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="bearer token [TIERSTORE_TOKEN]", rich_help_panel=_CONNECTION)
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="file holding the bearer token, kept out of the process list "
            "[TIERSTORE_TOKEN_FILE]",
            rich_help_panel=_CONNECTION,
        ),
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option(help="server CA PEM file [TIERSTORE_CA]", rich_help_panel=_CONNECTION),
    ] = None,
    insecure: Annotated[
        bool, typer.Option(help="plaintext (loopback servers only)", rich_help_panel=_CONNECTION)
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            help=f"seconds a call may take, then it fails (default: {_DEFAULT_DEADLINES})",
            rich_help_panel=_CONNECTION,
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="print JSON for scripts", rich_help_panel=_CONNECTION)
    ] = False,
) -> None:
    # Given before the command's name; _ClientCommand adds what is given after it.
    context.call_on_close(_close_clients)
    state.address, state.token, state.token_file, state.ca = address, token, token_file, ca
    state.insecure, state.timeout, state.json = insecure, timeout, json_output


def _connection_options() -> list[Any]:
    """Fresh click parameters for :func:`_options`' options, as typer builds them, so
    the options are declared once for both places they may be given."""
    probe = typer.Typer(add_completion=False)
    probe.command()(_options)
    return list(typer.main.get_command(probe).params)


class _Command(TyperCommand):
    """A command whose summary in its group's list is its help's first paragraph as one
    line: the list keeps a docstring's line breaks, which then fall mid-sentence."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.short_help is None and self.help:
            first = inspect.cleandoc(self.help).split("\n\n")[0]
            self.short_help = " ".join(first.split())


class _ClientCommand(_Command):
    """A command that talks to a server: it takes the connection options after its name
    too (``tierstore dataset ls --json``), not only before it (``tierstore --json dataset
    ls``). An option given in both places counts as given after the name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connection = _connection_options()
        self.params.extend(self._connection)

    def invoke(self, ctx: Any) -> Any:
        # Runs after the group's callback (_options) has set the state from the options
        # given before the name. Popped: the command's own function does not take them.
        given = {param.name: ctx.params.pop(param.name) for param in self._connection}
        for name in ("address", "token", "token_file", "ca"):  # "" counts as given
            if given[name] is not None:
                setattr(state, name, given[name])
        state.insecure = given["insecure"] or state.insecure
        state.timeout = given["timeout"] if given["timeout"] is not None else state.timeout
        state.json = given["json_output"] or state.json
        return super().invoke(ctx)


def _client() -> Any:
    """A client for this command, closed when the command ends, error or not: closing
    reports the reads it served in place (from this host's hot tier), which were never
    counted while the CLI left its clients open."""
    from tierstore.client.client import connect

    if state.address == "":  # "$ADDRESS" of an unset variable: not the environment's node
        raise _fail(
            errors.InvalidArgument(
                "--address is empty: give HOST:PORT, or leave --address out to use "
                "TIERSTORE_ADDRESS"
            )
        )
    if state.token == "":  # "$TOKEN" of an unset variable: never the environment's instead
        raise _fail(
            errors.InvalidArgument(
                "--token is empty: give the token, or leave --token out to use "
                "TIERSTORE_TOKEN or TIERSTORE_TOKEN_FILE"
            )
        )
    if state.token and state.token_file:
        raise _fail(errors.InvalidArgument("give --token or --token-file, not both"))
    problem = None if state.timeout is None else timeout_problem(state.timeout)
    if problem is not None:
        raise _fail(errors.InvalidArgument(f"--timeout must be {problem}"))
    try:
        client = connect(
            state.address,
            token=state.token,
            token_file=state.token_file,
            ca=state.ca,
            insecure=state.insecure or None,  # not given: TIERSTORE_INSECURE decides
        )
    except errors.TierstoreError as exc:  # no address, an unreadable CA file...
        raise _fail(exc) from None
    if state.timeout is not None:  # unary calls and streams alike: an admin's bound
        client.timeout_s = client.stream_timeout_s = state.timeout
    state.clients.append(client)
    return client


def _close_clients() -> None:
    while state.clients:
        state.clients.pop().close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, ShardInfo):  # its size is a property, which asdict() leaves out
        return {**_jsonable(asdict(value)), "size": value.size, "frame_count": value.frame_count}
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value") and isinstance(value.value, str):
        return value.value
    return value


def _emit(value: Any, table: RenderableType | None = None) -> None:
    if state.json:
        sys.stdout.write(json.dumps(_jsonable(value), indent=None, default=str) + "\n")
    elif table is not None:
        out.print(table)


#: what gRPC says when TLS did not come up: most often the wrong CA file, or a port
#: that is not the API's (the health port is plaintext)
_TLS_FAILURE = re.compile(r"CERTIFICATE_VERIFY_FAILED|handshake|WRONG_VERSION_NUMBER", re.I)
_TLS_HINT = (
    "TLS failed: is --ca / TIERSTORE_CA the server's tls/ca.pem, and --address / "
    "TIERSTORE_ADDRESS its API port? A server started with --insecure speaks "
    "plaintext: then give --insecure too"
)
#: what gRPC says when a TLS server drops a plaintext connection
_CLOSED = re.compile(r"Socket closed|Connection reset|end of stream|EOF", re.I)
_INSECURE_HINT = (
    "--insecure (or TIERSTORE_INSECURE) speaks plaintext, and a TLS server closes such "
    "connections: drop it and give --ca, unless the server runs with --insecure too"
)

#: what a TLS connection closed at once most often means when no client certificate
#: was given: the server runs with --require-client-cert
_CLIENT_CERT_HINT = (
    "a server started with --require-client-cert closes connections that bring no "
    "client certificate: export TIERSTORE_CLIENT_CERT and TIERSTORE_CLIENT_KEY as its "
    "banner says"
)


def _closed_in_handshake(text: str) -> bool:
    """Whether gRPC says the server closed the connection in the TLS handshake
    ("Handshake read failed (Socket closed)"), which says nothing of a CA file."""
    return not _plaintext() and bool(_TLS_FAILURE.search(text) and _CLOSED.search(text))


def _closed_in_handshake_hint() -> str:
    """The causes of a connection closed in its TLS handshake. The CA hint alone was
    wrong for a server at its connection cap, which closes new connections so too."""
    causes = [
        "a server started with --insecure speaks plaintext: then give --insecure too",
        "one at its connection cap (serve --max-connections) closes new connections: "
        "try again later",
    ]
    if not os.environ.get("TIERSTORE_CLIENT_CERT"):
        causes.insert(1, _CLIENT_CERT_HINT.replace("a server started", "one started"))
    return "TLS failed: the server closed the connection in the handshake; " + "; ".join(causes)


def _deadline_text() -> str:
    return _DEFAULT_DEADLINES if state.timeout is None else f"{state.timeout:g} s"


def _plaintext() -> bool:
    """Whether this command speaks plaintext: --insecure, or TIERSTORE_INSECURE set."""
    flag = os.environ.get("TIERSTORE_INSECURE", "").strip().lower()
    return state.insecure or flag in ("1", "true", "yes", "on")


def _fail(exc: Exception, message: str | None = None) -> typer.Exit:
    """Print the command's one error line, ``exc``'s type and ``message`` (default: the
    exception's own); return the exit to raise, with the code ``exc`` maps to."""
    text = message or str(exc)
    if isinstance(exc, errors.Unavailable) and _closed_in_handshake(text):
        text += f" ({_closed_in_handshake_hint()})"
    elif isinstance(exc, errors.Unavailable) and _TLS_FAILURE.search(text):
        text += f" ({_TLS_HINT})"
    elif isinstance(exc, errors.Unavailable) and _CLOSED.search(text):
        if _plaintext():
            text += f" ({_INSECURE_HINT})"
        elif not os.environ.get("TIERSTORE_CLIENT_CERT"):
            text += f" ({_CLIENT_CERT_HINT})"
    if isinstance(exc, errors.Unavailable) and "DEADLINE_EXCEEDED" in text:
        text += f" (a call may take {_deadline_text()}; --timeout changes it)"
    # soft_wrap: one line whatever the terminal width, so scripts can read it.
    err.print(
        Text.assemble(("error:", "red"), f" {type(exc).__name__}: {text}"),
        highlight=False,
        soft_wrap=True,
    )
    code = next((c for cls, c in _EXIT_CODES if isinstance(exc, cls)), 1)
    return typer.Exit(code)


def _output_file(given: str) -> Path:
    """The file ``-o`` names, as given; refused (exit 2, one line) before any call to
    the server when no file can be written there: a directory, a name in a directory
    that does not exist, or a name ending in ``/`` (a directory's, even one that does
    not exist: ``-o newdir/`` wrote a file named ``newdir``)."""
    output = Path(given)
    if output.is_dir() or given.endswith(os.sep):
        raise _fail(errors.InvalidArgument(f"{given} is a directory; name a file to write"))
    if not output.parent.is_dir():
        raise _fail(errors.InvalidArgument(f"cannot write {output}: no directory {output.parent}"))
    return output


def _write_failed(output: Path, exc: OSError) -> typer.Exit:
    """The one error line (exit 1) for a local file that could not be written."""
    return _fail(exc, f"cannot write {output}: {exc.strerror or exc}")


def _run(action: Any) -> Any:
    try:
        return action()
    except errors.TierstoreError as exc:
        raise _fail(exc) from None


_SHARD_COLUMNS = (
    "name",
    "size",
    "frames",
    "kind",
    "hot",
    "pinned",
    "archived",
    "encrypted",
    "reads",
)
#: listings of more shards print as plain aligned columns: a table measures every cell
#: before its first line (50,000 shards took 82 s, against 7.8 s with --json)
PLAIN_LISTING_ROWS = 1000


def _shard_row(s: Any) -> tuple[str, ...]:
    return (
        s.name,
        f"{s.size:,}",
        str(s.frame_count),
        s.kind.value,
        _yes(s.hot),
        _pin_state(s.pinned, s.pinned_until),
        _yes(s.archived),
        _yes(s.encrypted),
        str(s.access_count),
    )


def _shard_table(shards: list[Any]) -> Table:
    table = Table(*_SHARD_COLUMNS)
    for s in shards:
        table.add_row(*_shard_row(s))
    return table


def _print_plain(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """``rows`` under ``columns``, each column as wide as its widest cell, written as
    they are (no markup: names are anyone's)."""
    widths = [
        max([len(column), *(len(row[i]) for row in rows)]) for i, column in enumerate(columns)
    ]
    lines = (
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [columns, *rows]
    )
    sys.stdout.write("".join(line + "\n" for line in lines))


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _pin_state(pinned: bool, until: float) -> str:
    """ "no", "yes" (until unpinned), or "until <UTC minute>" for a pin with a TTL."""
    if not pinned:
        return "no"
    return f"until {_utc_minute(until)}" if until else "yes"


# serve


_LOG_LEVELS = ("debug", "info", "warning", "error")


@app.command(cls=_Command)
def serve(
    data_dir: Annotated[
        str | None,
        typer.Option(
            help="where the node keeps everything [default: data_dir of the settings "
            "file or TIERSTORE_DATA_DIR, else ./tierstore-data]",
            show_default=False,
        ),
    ] = None,
    listen: Annotated[str, typer.Option(help="API address HOST:PORT")] = "127.0.0.1:7443",
    health_listen: Annotated[str, typer.Option(help="plaintext health port")] = "127.0.0.1:7444",
    metrics_listen: Annotated[str, typer.Option(help="Prometheus /metrics ('' = off)")] = (
        "127.0.0.1:7445"
    ),
    metrics_dataset_labels: Annotated[
        bool,
        typer.Option(help="label hits and misses by dataset (names visible to scrapers)"),
    ] = False,
    insecure: Annotated[bool, typer.Option(help="plaintext API (loopback only)")] = False,
    require_client_cert: Annotated[bool, typer.Option(help="mutual TLS")] = False,
    hostname: Annotated[list[str] | None, typer.Option(help="extra certificate names")] = None,
    s3_endpoint: Annotated[str, typer.Option(help="external S3 archive URL")] = "",
    bucket: Annotated[str, typer.Option(help="archive bucket (default: tierstore)")] = "",
    prefix: Annotated[
        str | None, typer.Option(help='archive key prefix ("" for none, over a settings file)')
    ] = None,
    s3_access_key: Annotated[str, typer.Option(envvar="TIERSTORE_S3_ACCESS_KEY")] = "",
    s3_secret_key: Annotated[str, typer.Option(envvar="TIERSTORE_S3_SECRET_KEY")] = "",
    master_key_file: Annotated[Path | None, typer.Option(help="master key file")] = None,
    config: Annotated[Path | None, typer.Option(help="engine settings TOML file")] = None,
    hot_capacity: Annotated[int | None, typer.Option(help="hot tier bytes")] = None,
    local_reads: Annotated[
        bool, typer.Option(help="let readers on this host read the hot tier in place")
    ] = True,
    local_grant_ttl: Annotated[
        float, typer.Option(help="seconds a local-read grant holds (revocation delay)")
    ] = 60.0,
    max_connections: Annotated[
        int,
        typer.Option(
            min=0,
            max=1 << 20,
            help="connections open at once; past it new ones are refused "
            "(0: half the open-file limit, from 16 to 4096)",
        ),
    ] = 0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    reseal_archive: Annotated[
        bool,
        typer.Option(
            help="the master key file was lost for good and no dataset is encrypted: seal "
            "the archive's metadata under the keys given now (refused while the node holds "
            "encrypted shards); with --rebuild-from-archive, the rebuild believes the "
            "archive's metadata without its seals (refused if any of it is encrypted)"
        ),
    ] = False,
    rebuild_from_archive: Annotated[
        bool,
        typer.Option(
            help="if this start makes a new hot tier while the archive holds objects (a "
            "lost hot tier), rebuild the catalog from the archive instead of refusing to start"
        ),
    ] = False,
) -> None:
    """Run a node: hot tier, archive (embedded SeaweedFS by default), TLS, tokens."""
    from tierstore.cli.logs import configure_logging
    from tierstore.cli.serve import ServeOptions
    from tierstore.cli.serve import serve as run

    if data_dir is not None and not data_dir.strip():  # an unset variable in a script
        raise _fail(errors.InvalidArgument("--data-dir is empty; give a directory"))
    if log_level.lower() not in _LOG_LEVELS:
        raise _fail(
            errors.InvalidArgument(
                f"--log-level must be one of {', '.join(_LOG_LEVELS)}, not {log_level!r}"
            )
        )
    configure_logging(log_level)
    options = ServeOptions(
        data_dir=Path(data_dir) if data_dir is not None else None,
        listen=listen,
        health_listen=health_listen,
        metrics_listen=metrics_listen,
        metrics_dataset_labels=metrics_dataset_labels,
        insecure=insecure,
        require_client_cert=require_client_cert,
        hostnames=tuple(hostname or ()),
        s3_endpoint=s3_endpoint,
        bucket=bucket,
        prefix=prefix,
        s3_access_key=s3_access_key,
        s3_secret_key=s3_secret_key,
        master_key_file=master_key_file,
        config_file=config,
        hot_capacity_bytes=hot_capacity,
        local_reads=local_reads,
        local_grant_ttl_s=local_grant_ttl,
        max_connections=max_connections,
        rebuild_from_archive=rebuild_from_archive,
        reseal_archive=reseal_archive,
    )
    raise typer.Exit(_run(lambda: run(options, sys.stdout)))


# datasets

_HOT_QUOTA_HELP = (
    "most bytes of the dataset in the hot tier (0: no quota; at most 2**64-1); room is made "
    "by evicting its own archived shards"
)
_MAX_HOT_QUOTA = 2**64 - 1  # the wire carries it as a uint64


def _check_hot_quota(hot_quota: int | None) -> None:
    """Refuse (exit 2, one line) a ``--hot-quota`` the wire cannot carry, before any call."""
    if hot_quota is not None and not 0 <= hot_quota <= _MAX_HOT_QUOTA:
        raise _fail(
            errors.InvalidArgument(
                f"--hot-quota must be from 0 to {_MAX_HOT_QUOTA} bytes, not {hot_quota}"
            )
        )


@dataset_app.command("create", cls=_ClientCommand)
def dataset_create(
    name: str,
    encrypted: Annotated[bool, typer.Option(help="encrypt at rest")] = False,
    durability: Annotated[str, typer.Option(help="write-back | write-through")] = "write-back",
    policy: Annotated[
        str | None, typer.Option(help="placement policy (default: the server's)")
    ] = None,
    hot_quota: Annotated[int, typer.Option(help=_HOT_QUOTA_HELP)] = 0,
) -> None:
    """Create a dataset."""
    _check_hot_quota(hot_quota)
    options: dict[str, Any] = {
        "encrypted": encrypted,
        "durability": durability,
        "hot_quota_bytes": hot_quota,
    }
    if policy is not None:
        options["policy"] = policy
    settings = _run(lambda: _client().create_dataset(name, **options))
    _emit({"name": name, **_jsonable(settings)}, f"created dataset {name}")


@dataset_app.command("update", cls=_ClientCommand)
def dataset_update(
    name: str,
    durability: Annotated[str | None, typer.Option(help="write-back | write-through")] = None,
    hot_quota: Annotated[int | None, typer.Option(help=_HOT_QUOTA_HELP)] = None,
) -> None:
    """Change a dataset's durability or hot-tier quota (admin on the dataset). A lower
    quota evicts the dataset's archived, unpinned shards down to it, and says how many
    hot bytes (pinned, or not archived yet) stay above it."""
    if durability is None and hot_quota is None:
        raise _fail(
            errors.InvalidArgument("nothing to update: give --durability and/or --hot-quota")
        )
    _check_hot_quota(hot_quota)
    client = _client()
    settings = _run(
        lambda: client.update_dataset(name, durability=durability, hot_quota_bytes=hot_quota)
    )
    shown = {"name": name, **_jsonable(settings)}
    above = _hot_bytes_above_quota(client, name, hot_quota) if hot_quota else None
    note = ""
    if above:
        shown["hot_bytes"] = above
        note = (
            f"; {above:,} bytes of it are still hot, above the quota: pinned shards stay "
            "(unpin them to let them go), and shards not archived yet go as the mover "
            "uploads them"
        )
    _emit(shown, f"updated dataset {name}{note}")


def _hot_bytes_above_quota(client: Any, name: str, quota: int) -> int | None:
    """The dataset's hot bytes when a quota just set left them above it, else None.
    Only a hint for the caller: a stats call that fails (no read grant) gives None."""
    try:
        figures = client.stats(name)["datasets"].get(name)
    except (errors.TierstoreError, OSError):
        return None
    hot = int(figures["hot_bytes"]) if figures else 0
    return hot if quota and hot > quota else None


@dataset_app.command("ls", cls=_ClientCommand)
def dataset_ls() -> None:
    """List the datasets you may see."""
    datasets = _run(lambda: _client().list_datasets())
    table = Table("name", "encrypted", "durability", "hot quota", "policy")
    for name, settings in datasets:
        quota = f"{settings.hot_quota_bytes:,}" if settings.hot_quota_bytes else "none"
        table.add_row(
            name, _yes(settings.encrypted), settings.durability.value, quota, settings.policy
        )
    _emit([{"name": n, **_jsonable(s)} for n, s in datasets], table)


# placement policies


@policy_app.command("set", cls=_ClientCommand)
def policy_set(dataset: str, name: str) -> None:
    """Switch a dataset to another placement policy, at once (admin on the dataset)."""
    settings = _run(lambda: _client().set_policy(dataset, name))
    _emit({"dataset": dataset, "policy": settings.policy}, f"{dataset}: policy {settings.policy}")


@policy_app.command("show", cls=_ClientCommand)
def policy_show(dataset: str) -> None:
    """Show a dataset's placement policy and its hit ratio since the server started."""
    figures = _run(lambda: _client().stats(dataset))["datasets"][dataset]
    shown = {
        "dataset": dataset,
        "policy": figures["policy"],
        "hits": figures["hits"],
        "misses": figures["misses"],
        "hit_ratio": figures["hit_ratio"],
    }
    _emit(
        shown,
        f"{dataset}: policy {figures['policy']}, hit ratio {_hit_ratio_text(figures)} "
        f"({figures['hits']} hits, {figures['misses']} misses)",
    )


@dataset_app.command("rm", cls=_ClientCommand)
def dataset_rm(
    name: str, force: Annotated[bool, typer.Option(help="also delete its shards")] = False
) -> None:
    """Delete a dataset. Every token's grant on it goes too (a dataset made again under
    the name is not theirs); grants on "*" stay."""
    removed = _run(lambda: _client().delete_dataset(name, force=force))
    note = f"; grants on it removed from {removed} token(s)" if removed else ""
    _emit({"deleted": name, "grants_removed": removed}, f"deleted dataset {name}{note}")


# shards


@app.command(cls=_ClientCommand)
def put(
    dataset: str,
    paths: Annotated[list[Path], typer.Argument(help="files or directories")],
    prefix: Annotated[str, typer.Option(help="shard name prefix")] = "",
    kind: Annotated[
        str,
        typer.Option(
            help="raw: each file's bytes as they are; arrow: each file is an Arrow IPC "
            "file or stream, stored as an Arrow shard (what the DataLoader plugin reads)"
        ),
    ] = "raw",
) -> None:
    """Upload files (directories recursively) as shards named by their relative paths, in
    order. In a directory, links to files are followed; a link to a directory or to
    nothing, or a pipe, is refused before anything is uploaded. Stops at the first one
    it cannot upload; the ones uploaded before it are still
    reported on stdout (with --json too: "uploaded" and "not_uploaded"), the error on
    stderr."""
    if kind not in ("raw", "arrow"):
        raise _fail(errors.InvalidArgument(f"--kind must be raw or arrow, not {kind!r}"))
    client = _client()
    files: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            files += [(f, prefix + f.relative_to(path).as_posix()) for f in _files_under(path)]
        elif path.is_file():
            files.append((path, prefix + path.name))
        else:
            raise _fail(errors.InvalidArgument(f"{path} is not a file or directory"))
    files = _checked_uploads(files)
    total = sum(f.stat().st_size for f, _ in files)
    uploaded = []
    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TransferSpeedColumn(),
        console=err,
        # Off a terminal a progress bar cannot be redrawn: it would only leave an
        # empty line before an error, or bar text in a log.
        disable=state.json or not err.is_terminal,
        transient=True,  # gone when done: a failure leaves its one error line, alone
    ) as progress:
        task = progress.add_task("uploading", total=total)
        failure: errors.TierstoreError | None = None
        interrupted = False
        sending: str | None = None  # the shard whose put is under way, if any
        try:
            for file, name in files:
                try:
                    size = file.stat().st_size
                    value = _put_value(file, kind)
                    sending = name
                    uploaded.append(client.put(dataset, name, value))
                    sending = None
                except OSError as exc:  # unreadable, or gone since it was listed
                    raise errors.InvalidArgument(
                        f"cannot read {file}: {exc.strerror or exc}"
                    ) from None
                progress.advance(task, size)
        except errors.TierstoreError as exc:
            failure = exc
        except KeyboardInterrupt:
            interrupted = True
    names = [name for _, name in files]
    if interrupted:
        raise _put_interrupted(names, len(uploaded), sending)
    if failure is not None:
        raise _stopped(failure, names, len(uploaded), "uploaded")
    elapsed = max(time.monotonic() - started, 1e-9)
    _emit(
        {
            "shards": [i.name for i in uploaded],
            "uploaded": [i.name for i in uploaded],
            "not_uploaded": [],
            "bytes": total,
            "bytes_per_s": total / elapsed,
        },
        f"uploaded {_count(len(uploaded), 'shard')}, {total:,} bytes, "
        f"{total / elapsed / 1e6:.1f} MB/s",
    )


def _files_under(directory: Path) -> list[Path]:
    """The files under ``directory``, at any depth, sorted. A link to a file is
    followed (the shard, named by the link, holds its target's bytes). Exits
    (InvalidArgument, nothing uploaded) at a link to a directory (not followed: links
    can loop), a link to nothing, anything else that is not a file (a pipe would block
    the upload), or a directory that cannot be listed: each was skipped without a
    word, so a dataset could go up with shards missing."""

    def refuse(entry: Path, why: str) -> typer.Exit:
        return _fail(errors.InvalidArgument(f"{entry} {why}; nothing uploaded"))

    def unlisted(exc: OSError) -> None:
        raise refuse(Path(exc.filename), f"cannot be listed: {exc.strerror or exc}")

    found = []
    for root, directories, names in os.walk(directory, onerror=unlisted):
        here = Path(root)
        for name in directories:
            if (here / name).is_symlink():
                raise refuse(here / name, "is a link to a directory, which is not followed")
        for name in names:
            entry = here / name
            if entry.is_file():
                found.append(entry)
            elif entry.is_symlink() and not entry.exists():
                raise refuse(entry, "is a link to nothing")
            else:
                raise refuse(entry, "is not a regular file")
    return sorted(found)


def _checked_uploads(files: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """``files`` with a file given twice (under one name) once. Exits (InvalidArgument,
    nothing uploaded) when a name is not a valid shard name, or two inputs would get one
    shard name: the second would silently replace the first."""
    first_of: dict[str, Path] = {}
    for file, name in files:
        try:
            validate_shard_name(name)
        except errors.InvalidArgument as exc:
            raise _fail(exc, f"{str(file)!r}: {exc}; nothing uploaded") from None
        earlier = first_of.setdefault(name, file)
        if earlier != file:
            raise _fail(
                errors.InvalidArgument(
                    f"{earlier} and {file} would both be shard {name!r}; nothing uploaded "
                    "(upload them separately with different --prefix values)"
                )
            )
    return list(dict.fromkeys(files))


@app.command(cls=_ClientCommand)
def get(
    dataset: str,
    shard: str,
    given: Annotated[
        str | None, typer.Option("-o", "--output", help="file (default, or -: stdout)")
    ] = None,
    offset: int = 0,
    length: int | None = None,
) -> None:
    """Download a shard (or a byte range of it). Without -o (or with -o -) the bytes go
    to stdout as they are, --json or not (with -o FILE, --json prints what was written)."""
    # "-" is the usual spelling of stdout (a file named "-": its full path).
    output = None if given in (None, "-") else _output_file(given)
    if output is None:
        data = _run(lambda: _client().get(dataset, shard, offset=offset, length=length))
        write_all(sys.stdout.buffer, memoryview(data))
        sys.stdout.buffer.flush()
        return
    # To a file: streamed into it, so memory does not grow with the shard.
    try:
        written = _run(
            lambda: _client().download(dataset, shard, output, offset=offset, length=length)
        )
    except OSError as exc:
        raise _write_failed(output, exc) from None
    if state.json:
        _emit({"shard": shard, "bytes": written, "output": str(output)})


@app.command("ls", cls=_ClientCommand)
def ls(
    dataset: str,
    prefix: Annotated[str, typer.Argument()] = "",
    limit: Annotated[int | None, typer.Option(min=0, help="list at most this many shards")] = None,
    after: Annotated[
        str, typer.Option(help="list only names after this one (to page on from the last)")
    ] = "",
) -> None:
    """List a dataset's shards, in name order (over 1,000 of them: as plain aligned
    columns, quicker to print than a table). A large dataset can be listed a page at
    a time: --limit N, then --after the last name printed."""
    shards = _run(lambda: _client().list(dataset, prefix, limit=limit, start_after=after))
    if len(shards) > PLAIN_LISTING_ROWS and not state.json:
        _print_plain(_SHARD_COLUMNS, [_shard_row(s) for s in shards])
        return
    _emit(shards, _shard_table(shards))


@app.command(cls=_ClientCommand)
def stat(dataset: str, shard: str) -> None:
    """Show what the server knows of a shard."""
    info = _run(lambda: _client().stat(dataset, shard))
    _emit(info, _shard_table([info]))


@app.command(cls=_ClientCommand)
def rm(dataset: str, shards: list[str]) -> None:
    """Delete shards, in the order given. Stops at the first one it cannot delete; the
    ones deleted before it are still reported on stdout (with --json too: "deleted" and
    "not_deleted", which --json always holds, empty when all went), the error on stderr.
    pin, unpin and evict do the same."""
    client = _client()
    shards = list(dict.fromkeys(shards))  # each once: the second of two was ShardNotFound
    _shard_by_shard(shards, lambda shard: client.delete(dataset, shard), "deleted")
    _emit({"deleted": shards, "not_deleted": []}, f"deleted {_count(len(shards), 'shard')}")


def _shard_by_shard(shards: list[str], action: Callable[[str], T], done: str) -> list[T]:
    """``action`` on each shard in order; its results. At the first error, the shards it
    was ``done`` for are reported on stdout (with --json too: ``done`` and ``not_<done>``)
    and the command ends with the error's one line."""
    results: list[T] = []
    try:
        for shard in shards:
            results.append(action(shard))
    except errors.TierstoreError as exc:
        raise _stopped(exc, shards, len(results), done) from None
    return results


def _put_value(file: Path, kind: str) -> Any:
    """What ``put --kind`` uploads of ``file``: the file itself (raw), or the table it
    holds (arrow; MalformedArrow if it holds none)."""
    if kind == "raw":
        return file
    from tierstore.arrowio import read_ipc_table  # pyarrow only when it is needed

    return read_ipc_table(file)


class Interrupted(Exception):
    """Ctrl-C stopped a command part way (exit 130)."""


def _put_interrupted(names: list[str], count: int, in_doubt: str | None) -> typer.Exit:
    """Ctrl-C stopped a put after ``count`` of ``names``: report those, and ``in_doubt``,
    the one whose put was under way, if any: the server stores a stream it received
    whole even when its answer finds nobody. Exit 130, as a shell does for SIGINT."""
    before = f": {', '.join(names[:count])}" if count else ""
    _emit(
        {"uploaded": names[:count], "not_uploaded": names[count:], "in_doubt": in_doubt},
        Text(f"uploaded {count} of {len(names)} shards before Ctrl-C{before}"),
    )
    doubt = (
        f"; {in_doubt!r} was on its way and may have been stored all the same (see tierstore stat)"
        if in_doubt is not None
        else ""
    )
    _fail(Interrupted(f"stopped by Ctrl-C{doubt}; the rest were not uploaded"))
    return typer.Exit(130)


def _stopped(exc: errors.TierstoreError, names: list[str], count: int, done: str) -> typer.Exit:
    """Report the first ``count`` of ``names`` as ``done`` (with --json, ``done`` and
    ``not_<done>`` even when none was done); return the exit with ``exc``'s one line."""
    if count or state.json:
        _emit(
            {done: names[:count], f"not_{done}": names[count:]},
            Text(
                f"{done} {count} of {len(names)} shards before an error: "
                + ", ".join(names[:count])
            ),
        )
    return _fail(exc)


@app.command(cls=_ClientCommand)
def pin(
    dataset: str,
    shards: list[str],
    ttl: Annotated[
        float | None, typer.Option(help="seconds until the pin runs out (default: never)")
    ] = None,
) -> None:
    """Keep shards in the hot tier, whatever the placement policy says. A cold one is
    queued for promotion, which is skipped if the hot tier or the dataset's quota has
    no room (pinned shards are never evicted to make it): ls shows which are hot."""
    client = _client()
    shards = list(dict.fromkeys(shards))  # each once, and its bytes queued counted once
    queued = sum(_shard_by_shard(shards, lambda s: client.pin(dataset, s, ttl_s=ttl), "pinned"))
    promoting = (
        f"; {queued:,} bytes of them were cold and are queued for promotion, which is "
        "skipped where there is no room (ls shows which are hot)"
        if queued
        else ""
    )
    _emit(
        {"pinned": shards, "not_pinned": [], "bytes_queued": queued},
        f"pinned {_count(len(shards), 'shard')}{promoting}",
    )


@app.command(cls=_ClientCommand)
def unpin(dataset: str, shards: list[str]) -> None:
    """Let the policy evict shards again."""
    client = _client()
    shards = list(dict.fromkeys(shards))  # each once, as rm, pin and evict
    _shard_by_shard(shards, lambda shard: client.unpin(dataset, shard), "unpinned")
    _emit({"unpinned": shards, "not_unpinned": []}, f"unpinned {_count(len(shards), 'shard')}")


@app.command(cls=_ClientCommand)
def prefetch(dataset: str, shards: list[str]) -> None:
    """Promote shards to the hot tier ahead of use. Shards already hot (or on their way)
    are not queued again; a shard that does not exist is named, and the command exits as
    for ShardNotFound once the others are queued, so a mistyped name does not pass for
    one already hot."""
    client = _client()
    queued = _run(lambda: client.prefetch(dataset, shards))
    missing = []
    if queued < len(set(shards)):  # some were hot, or unknown: only then the stats
        missing = [shard for shard in dict.fromkeys(shards) if not _exists(client, dataset, shard)]
    lines = [f"queued {_count(queued, 'shard')}", *(f"not found: {shard}" for shard in missing)]
    _emit({"queued": queued, "not_found": missing}, "\n".join(lines))
    if missing:
        raise _fail(
            errors.ShardNotFound(
                f"no shard {', '.join(map(repr, missing))} in dataset {dataset!r} "
                f"({len(missing)} of the {len(set(shards))} named; the others were queued "
                "or are hot)"
            )
        )


def _exists(client: Any, dataset: str, shard: str) -> bool:
    try:
        client.stat(dataset, shard)
    except errors.ShardNotFound:
        return False
    except errors.TierstoreError as exc:
        raise _fail(exc) from None
    return True


@app.command(cls=_ClientCommand)
def evict(dataset: str, shards: list[str]) -> None:
    """Drop shards from the hot tier (only ones the archive holds, and not pinned). A hot
    shard that stays is reported with the reason ("kept"), and one that was cold already
    as such ("already cold"), so nothing looks evicted that is not."""
    client = _client()
    shards = list(dict.fromkeys(shards))  # each once: a second evict frees nothing
    freed_each: list[int] = []
    failure: errors.TierstoreError | None = None
    try:
        for shard in shards:
            freed_each.append(client.evict(dataset, shard))
    except errors.TierstoreError as exc:
        failure = exc  # the ones before it are reported, kept ones with why
    done = shards[: len(freed_each)]
    kept: dict[str, str] = {}
    already_cold: list[str] = []
    unknown = ""  # after an error that stopped it, the first failed stat ends the asking
    for shard, freed in zip(done, freed_each, strict=True):
        if freed:
            continue
        try:
            why = unknown or _why_still_hot(client, dataset, shard)
        except errors.TierstoreError as exc:
            if failure is None:
                raise _fail(exc) from None
            why = unknown = f"not known ({type(exc).__name__} asking)"
        if why == _EMPTY_AND_COLD:
            continue  # evicted or not, it held nothing: evicted, as it is cold now
        if why == _COLD:
            already_cold.append(shard)  # it held bytes, and the evict freed none
        else:
            kept[shard] = why
    freed = sum(freed_each)
    evicted = [shard for shard in done if shard not in kept and shard not in already_cold]
    report = {
        "evicted": evicted,
        "already_cold": already_cold,
        "not_evicted": shards[len(done) :],
        "freed_bytes": freed,
        "kept": kept,
    }
    notes = [f"kept {shard}: {why}" for shard, why in kept.items()]
    if already_cold:
        notes.append(f"already cold: {', '.join(already_cold)}")
    if failure is None:
        _emit(report, Text("\n".join([f"freed {freed:,} bytes", *notes])))
        return
    if done or state.json:
        named = f": {', '.join(evicted)}" if evicted else ""
        head = f"evicted {len(evicted)} of {len(shards)} shards before an error{named}"
        _emit(report, Text("\n".join([head, *notes])))
    raise _fail(failure)


#: what :func:`_why_still_hot` says of a cold shard, and of a cold empty one
_COLD, _EMPTY_AND_COLD = "", "empty"


def _why_still_hot(client: Any, dataset: str, shard: str) -> str:
    """Why an evict freed nothing of ``shard``: :data:`_COLD` when it is cold (it was
    already), :data:`_EMPTY_AND_COLD` when it is cold and empty (an evict frees nothing
    of it either way). Raises what the stat raises."""
    info = client.stat(dataset, shard)
    if not info.hot:
        return _EMPTY_AND_COLD if info.size == 0 else _COLD
    if info.pinned:
        return "pinned (unpin it first)"
    if not info.archived:
        return "not archived yet: the hot copy is the only one"
    return "hot again (read or promoted since)"


@app.command(cls=_ClientCommand)
def stats(dataset: Annotated[str, typer.Argument()] = "") -> None:
    """Hot-tier usage; per dataset shards, bytes, what each tier holds, policy and live
    hit ratio; and the sizing curve: the miss ratio recent reads would have had at other
    hot-tier sizes."""
    figures = _run(lambda: _client().stats(dataset, sizing=True))
    table = Table(
        "dataset",
        "policy",
        "shards",
        "bytes",
        "hot shards",
        "hot bytes",
        "archived shards",
        "archived bytes",
        "hits",
        "misses",
        "hit ratio",
    )
    for name, d in figures["datasets"].items():
        table.add_row(
            name,
            d["policy"],
            str(d["shards"]),
            f"{d['bytes']:,}",
            str(d["hot_shards"]),
            f"{d['hot_bytes']:,}",
            str(d["archived_shards"]),
            f"{d['archived_bytes']:,}",
            str(d["hits"]),
            str(d["misses"]),
            _hit_ratio_text(d),
        )
    failing = figures.get("archive_error")
    table.caption = (
        f"hot tier {figures['hot_bytes']:,} of {figures['hot_capacity_bytes']:,} bytes; "
        f"{figures['backlog_bytes']:,} bytes waiting for the archive; "
        f"{_journal_text(figures['journal_entries'])}"
        + (f"; the archive is failing: {failing}" if failing else "")
    )
    capacity = figures["hot_capacity_bytes"]
    sizing = Table("hot-tier size", "of capacity", "miss ratio (LRU)")
    traced = figures["traced_reads"]
    for point in figures["sizing"] if traced else []:  # no reads: no curve, not 100% misses
        share = point["capacity_bytes"] / capacity if capacity else 0.0
        sizing.add_row(f"{point['capacity_bytes']:,}", f"{share:g}x", f"{point['miss_ratio']:.1%}")
    sizing.caption = (
        f"sizing curve over the last {traced:,} traced reads"
        if traced
        else "sizing curve: no traced reads yet"
    )
    shown: list[Any] = [table, sizing]
    if figures["data_loss"]:
        lost = Table("shard: why", title="data loss reported (the node's log has more)")
        for entry in figures["data_loss"]:
            lost.add_row(entry)
        shown.append(lost)
    _emit(_stats_for_scripts(figures), Group(*shown))


def _stats_for_scripts(figures: dict[str, Any]) -> dict[str, Any]:
    """``figures`` as --json prints them: no traced reads give no sizing curve, not
    100 % misses. (A dataset not yet read has a null hit ratio, from the client.)"""
    sizing = figures["sizing"] if figures["traced_reads"] else []
    return {**figures, "sizing": sizing}


# traces


@trace_app.command("export", cls=_ClientCommand)
def trace_export(
    given: Annotated[
        str, typer.Option("-o", "--output", help="trace file (.gz: gzipped; -: stdout)")
    ],
    dataset: Annotated[str | None, typer.Option(help="only this dataset's events")] = None,
) -> None:
    """Save the node's recent reads and plan events as a trace file for the simulator
    (admin on every dataset). The file is private (mode 0600): it names every dataset
    and shard read. With -o - the trace goes to stdout and the summary to stderr."""
    from tierstore.sim.tracefile import TraceWriter
    from tierstore.types import TracedClose, TracedPlan, TracedPosition, TracedRead

    # "-" is stdout, as usual (a file named "-" is given by its full path).
    to_stdout = given == "-"
    output = Path(given) if to_stdout else _output_file(given)
    target, through_partial = output_target(output)
    counts: Counter[str] = Counter()

    def write(stream: TextIO) -> None:
        writer = TraceWriter(stream)
        for event in _client().export_trace(dataset):
            if isinstance(event, TracedRead):
                writer.read(
                    event.t, event.dataset, event.shard, event.size, reported=event.reported
                )
            elif isinstance(event, TracedPlan):
                writer.plan(event.t, event.job, event.dataset, event.shards, event.sizes)
            elif isinstance(event, TracedPosition):
                writer.position(event.t, event.job, event.position)
            elif isinstance(event, TracedClose):
                writer.close(event.t, event.job)
            counts[type(event).__name__.removeprefix("Traced").lower()] += 1

    def export() -> None:
        if not through_partial:  # a device or a pipe
            with target.open("w", encoding="utf-8") as stream:
                write(stream)
            return
        # Private (0600), and renamed over the target only when complete.
        with partial_file(target, private=True) as private:
            if output.suffix == ".gz":
                with gzip.open(private, "wt") as stream:
                    write(stream)
            else:
                with io.TextIOWrapper(private, encoding="utf-8") as stream:
                    write(stream)

    def to_stream() -> None:
        write(sys.stdout)
        sys.stdout.flush()

    try:
        _run(to_stream if to_stdout else export)
    except BrokenPipeError:
        raise  # its reader went away (`| head`): click ends quietly, with status 1
    except OSError as exc:
        raise _write_failed(Path("stdout") if to_stdout else output, exc) from None
    total = sum(counts.values())
    summary = {"output": "-" if to_stdout else str(output), "events": total, **counts}
    where = "stdout" if to_stdout else str(output)
    line = f"wrote {_count(total, 'event')} ({_count(counts['read'], 'read')}) to {where}"
    if to_stdout:  # stdout holds the trace
        sys.stderr.write((json.dumps(summary) if state.json else line) + "\n")
    else:
        _emit(summary, line)


# tokens and keys


@token_app.command("create", cls=_ClientCommand)
def token_create(
    principal: str,
    grant: Annotated[
        list[str], typer.Option(help="DATASET=ROLE (role: reader, writer, admin; DATASET may be *)")
    ],
    ttl: Annotated[
        float, typer.Option(help="seconds until it expires: 1 to ten years (0: never)")
    ] = 0,
) -> None:
    """Issue a token; it is printed once."""
    grants = []
    for item in grant:
        dataset, _, role = item.partition("=")
        try:
            grants.append(Grant(dataset, Role(role)))
        except ValueError:
            raise _fail(
                errors.InvalidArgument(f"grant {item!r} is not DATASET=reader|writer|admin")
            ) from None
    token_id, token = _run(lambda: _client().create_token(principal, grants, ttl_s=ttl))
    _emit({"token_id": token_id, "token": token}, f"token {token_id} for {principal}:\n{token}")


@token_app.command("revoke", cls=_ClientCommand)
def token_revoke(token_id: str) -> None:
    """Revoke a token for good. Revoking the last live admin token is allowed, with a
    warning: admin calls then fail until the node restarts and writes a new admin.token."""
    client = _client()
    last_admin = _run(lambda: _live_admin_tokens(client.list_tokens())) == [token_id]
    _run(lambda: client.revoke_token(token_id))
    _emit({"revoked": token_id, "last_admin": last_admin}, f"revoked {token_id}")
    if last_admin:
        err.print(
            "warning: that was the last live admin token: admin calls fail until the node "
            "restarts, which writes a new admin.token in its data directory",
            highlight=False,
            soft_wrap=True,
        )


def _live_admin_tokens(tokens: list[dict[str, Any]]) -> list[str]:
    """The ids of tokens that hold the admin role on every dataset and still work."""
    now = time.time()
    admin = Grant(ALL_DATASETS, Role.ADMIN)
    return [
        t["token_id"]
        for t in tokens
        if admin in t["grants"]
        and not t["revoked"]
        and not (t["expires_at"] and t["expires_at"] <= now)
    ]


@token_app.command("ls", cls=_ClientCommand)
def token_ls() -> None:
    """List tokens (never the tokens themselves)."""
    tokens = _run(lambda: _client().list_tokens())
    if state.json:
        _emit(tokens)
        return
    table = Table("id", "principal", "grants", "expires", "revoked")
    now = time.time()
    for t in tokens:
        grants = ", ".join(f"{g.dataset}={g.role.value}" for g in t["grants"])
        expires = _utc_minute(t["expires_at"]) if t["expires_at"] else "never"
        if t["expires_at"] and t["expires_at"] <= now:  # NaN compares false: not marked
            expires += " (expired)"
        table.add_row(t["token_id"], t["principal"], grants, expires, _yes(t["revoked"]))
    _emit(tokens, table)


def _count(number: int, noun: str) -> str:
    """``number`` and ``noun``, plural unless one: "1 shard", "2 shards", "1,200 shards"."""
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"


def _journal_text(entries: int) -> str:
    """The journal's size for an operator: deletes and reseals carry no bytes, so a
    journal of them shows only here (waits such as ``--reseal-archive``'s end on it)."""
    if entries == 0:
        return "journal empty"
    return f"{entries:,} journal {'entry' if entries == 1 else 'entries'} pending"


def _hit_ratio_text(figures: Mapping[str, Any]) -> str:
    """A dataset's hit ratio for a table: "n/a (no reads)" before its first read."""
    if figures["hit_ratio"] is None:
        return "n/a (no reads)"
    return f"{figures['hit_ratio']:.1%}"


def _utc_minute(timestamp: float) -> str:
    """``timestamp`` (seconds since the epoch) as a UTC date and minute; the number itself
    when it is no date (NaN, or too far out for the platform): a table shows whatever
    the server sent, and never fails on it."""
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(timestamp))
    except (OverflowError, OSError, ValueError):
        return f"{timestamp:g} (not a date)"


@keys_app.command("rotate", cls=_ClientCommand)
def keys_rotate() -> None:
    """Make a new master key current and rewrap every data key (frames are not rewritten)."""
    rewrapped, key_id = _run(lambda: _client().rotate_keys())
    _emit(
        {"rewrapped": rewrapped, "key_id": key_id},
        f"master key {key_id}; {rewrapped} data keys rewrapped",
    )


@keys_app.command("retire", cls=_ClientCommand)
def keys_retire(key_id: str) -> None:
    """Drop an old master key from the node's key file, once nothing of the node needs
    it: after a rotation, when the mover has resealed the archive under the new key.
    Refused, with nothing changed, before that, and for the current key. The key is
    kept aside in <key file>.retired (nodes sharing the file may need it)."""
    left, current = _run(lambda: _client().retire_key(key_id))
    _emit(
        {"retired": key_id, "key_ids": left, "current": current},
        f"retired master key {key_id}; the key file holds {', '.join(left)} "
        f"(current: {current}). The node keeps {key_id} beside its key file, in the "
        "key file's name plus .retired (by default <data dir>/master.keys.retired), for "
        "nodes that share the key file: delete it once none does",
    )


def _register_simulate() -> None:
    # Imported here, not at the top: simulate.py imports this module for its helpers.
    from tierstore.cli.simulate import simulate

    app.command("simulate", cls=_Command)(simulate)


_register_simulate()


def main() -> None:
    """Entry point of the ``tierstore`` command."""
    # gRPC's C core logs on stderr (before grpc loads, or never): a failed TLS handshake
    # or an unreadable CA file comes out as several lines around the one-line error a
    # command prints, so a command that calls a server keeps none of them; a node keeps
    # gRPC's errors in its log. GRPC_VERBOSITY set by the user wins.
    serving = _command_name(sys.argv[1:]) == "serve"
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR" if serving else "NONE")
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        err.print("Aborted!", highlight=False)
        code = 1
    except typer.TyperException as exc:  # a usage error: an option's value, a command...
        code = _usage_error(exc)
    except OSError as exc:
        if exc.filename is not None or exc.errno not in _OUTPUT_ERRNOS:
            raise  # not the output's: a bug to see whole
        code = _output_failed(exc)
    sys.exit(code if isinstance(code, int) else 0)


#: what writing a command's output fails with: a full disk or quota, a file past its
#: size limit, a failing device (a reader that went away, EPIPE, is click's: it exits
#: 1 quietly)
_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def _output_failed(exc: OSError) -> int:
    """Print the one error line of a command whose output could not be written, and
    return its exit code (1): stdout redirected to a full disk, say (``get ... >
    file``), which printed a traceback. (Commands catch what they read and the files
    they write themselves, naming them.) stdout then points at /dev/null, so that
    Python's last flush of what is left in its buffer does not fail again at exit."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    err.print(
        Text.assemble(
            ("error:", "red"),
            f" OSError: cannot write the output (stdout): {exc.strerror or exc}",
        ),
        highlight=False,
        soft_wrap=True,
    )
    return 1


def _usage_error(exc: typer.TyperException) -> int:
    """Print a usage error (a bad option value, an unknown command) as the one error
    line every other error gets, with where help is; return its exit code (2)."""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    context = getattr(exc, "ctx", None)
    if context is not None:
        where = f"{context.command_path} --help"
    else:  # an option's error found before its command's context was made
        where = f"{' '.join(['tierstore', *_command_path(sys.argv[1:])])} --help"
    if message.strip():  # none when a bare group printed its help instead
        err.print(
            Text.assemble(("error:", "red"), f" {type(exc).__name__}: {message} (see {where})"),
            highlight=False,
            soft_wrap=True,
        )
    code = getattr(exc, "exit_code", 2)
    return code if isinstance(code, int) else 2


#: top-level options that take a value (the next argument, unless given as --opt=value)
_VALUED_OPTIONS = frozenset({"--address", "--token", "--token-file", "--ca", "--timeout"})


def _command_name(argv: list[str]) -> str | None:
    """The command ``argv`` runs: its first argument that is neither an option nor a
    top-level option's value."""
    index = _command_index(argv)
    return None if index is None else argv[index]


def _command_index(argv: list[str]) -> int | None:
    """Where in ``argv`` the command is (see :func:`_command_name`)."""
    skip = False
    for index, argument in enumerate(argv):
        if skip:
            skip = False
        elif argument in _VALUED_OPTIONS:
            skip = True
        elif not argument.startswith("-"):
            return index
    return None


def _command_path(argv: list[str]) -> list[str]:
    """The words naming the command ``argv`` runs: its command, and for a group
    (``dataset``, ``token``...) the group's command after it too."""
    index = _command_index(argv)
    if index is None:
        return []
    command = argv[index]
    groups = {group.name for group in app.registered_groups}
    if command not in groups:
        return [command]
    rest = argv[index + 1 :]
    sub = next((word for word in rest if not word.startswith("-")), None)
    return [command, sub] if sub is not None else [command]


if __name__ == "__main__":
    main()
