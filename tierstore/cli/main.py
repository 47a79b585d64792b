"""The ``tierstore`` command: ``serve`` a node, and administer one through the client.

Every command but ``serve`` and ``simulate`` talks to a server through
:mod:`tierstore.client`, and takes the connection options (``--address``, ``--token`` or
``--token-file``, ``--ca``, ``--insecure``, ``--timeout``) and ``--json`` before or after
its name; the connection options default to ``TIERSTORE_ADDRESS``, ``TIERSTORE_TOKEN`` (or
``TIERSTORE_TOKEN_FILE``) and ``TIERSTORE_CA``. Errors print one line on stderr and exit
non-zero (2 for a caller's mistake, 3 for not found, 4 for
permission problems, 5 for unavailable, 6 for data loss, 1 otherwise); ``--json`` prints
results for scripts.

The commands live by subject: :mod:`~tierstore.cli.serve_command` (``serve``),
:mod:`~tierstore.cli.datasets`, :mod:`~tierstore.cli.uploads` (``put``),
:mod:`~tierstore.cli.shards`, :mod:`~tierstore.cli.admin` and
:mod:`~tierstore.cli.simulate`, over :mod:`~tierstore.cli.app` (the groups, the
connection options, the client a command makes), :mod:`~tierstore.cli.output` (what is
printed, the error line and its exit code) and :mod:`~tierstore.cli.state` (the options
given). This module puts the commands into the tree and runs it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import typer
from rich.text import Text

from tierstore import errors
from tierstore.cli import admin, datasets, serve_command, shards, uploads
from tierstore.cli.app import (
    ChangingCommand,
    ClientCommand,
    Command,
    app,
    dataset_app,
    keys_app,
    policy_app,
    token_app,
    trace_app,
)
from tierstore.cli.argv import command_index, quiet_grpc_for
from tierstore.cli.entry import INTERRUPTED_EXIT
from tierstore.cli.output import OUTPUT_ERRNOS, err, fail, output_lost
from tierstore.cli.simulate import simulate
from tierstore.cli.state import state
from tierstore.cli.stopsignal import stop_exit, stopping_on_sigterm

__all__ = ["app", "main"]

# The command tree, in the order `tierstore --help` lists it: each command's module
# holds its function (whose name is the command's, unless given here), and this is the
# one place that puts it in the tree.
app.command(cls=Command)(serve_command.serve)
dataset_app.command("create", cls=ChangingCommand)(datasets.dataset_create)
dataset_app.command("update", cls=ChangingCommand)(datasets.dataset_update)
dataset_app.command("ls", cls=ClientCommand)(datasets.dataset_ls)
policy_app.command("set", cls=ChangingCommand)(datasets.policy_set)
policy_app.command("show", cls=ClientCommand)(datasets.policy_show)
dataset_app.command("rm", cls=ChangingCommand)(datasets.dataset_rm)
app.command(cls=ChangingCommand)(uploads.put)
app.command(cls=ClientCommand)(shards.get)
app.command("ls", cls=ClientCommand)(shards.ls)
app.command(cls=ClientCommand)(shards.stat)
app.command(cls=ChangingCommand)(shards.rm)
app.command(cls=ChangingCommand)(shards.pin)
app.command(cls=ChangingCommand)(shards.unpin)
app.command(cls=ChangingCommand)(shards.prefetch)
app.command(cls=ChangingCommand)(shards.evict)
app.command(cls=ClientCommand)(admin.stats)
trace_app.command("export", cls=ClientCommand)(admin.trace_export)
token_app.command("create", cls=ChangingCommand)(admin.token_create)
token_app.command("revoke", cls=ChangingCommand)(admin.token_revoke)
token_app.command("ls", cls=ClientCommand)(admin.token_ls)
keys_app.command("rotate", cls=ChangingCommand)(admin.keys_rotate)
keys_app.command("retire", cls=ChangingCommand)(admin.keys_retire)
keys_app.command("ls", cls=ClientCommand)(admin.keys_ls)
app.command("simulate", cls=Command)(simulate)


def main() -> None:
    """Entry point of the ``tierstore`` command."""
    # Set by the console script already (tierstore.cli.entry), before grpc loaded; a
    # caller of this function (a test's runner) gets the same level, late as it is.
    serving = quiet_grpc_for(sys.argv[1:])
    _stand_in_for_closed_streams(serving)
    # serve stops gracefully on SIGTERM, its own way.
    with contextlib.nullcontext() if serving else stopping_on_sigterm():
        code = _run_command()
        if code == INTERRUPTED_EXIT:  # typer's exit for a KeyboardInterrupt it was handed
            code = stop_exit()  # 143 or 129 if it came of SIGTERM or SIGHUP
    code = code if isinstance(code, int) else 0
    sys.exit(1 if code == 0 and state.report_lost else code)  # done, but not said


def _run_command() -> Any:
    """Run the command line; its exit code (typer's return, or that of an error)."""
    try:
        return app(standalone_mode=False)
    except KeyboardInterrupt:  # as typer builds the command tree, before click's handling
        return INTERRUPTED_EXIT
    except typer.Abort:
        err.print("Aborted!", highlight=False)
        return 1
    except typer.TyperException as exc:  # a usage error: an option's value, a command...
        return _usage_error(exc)
    except OSError as exc:
        if exc.filename is not None or exc.errno not in OUTPUT_ERRNOS:
            raise  # not the output's: a bug to see whole
        # stdout redirected to a full disk, say (get ... > file), which printed a
        # traceback. (Commands catch what they read and the files they write
        # themselves, naming them.)
        return output_lost(exc)


def _stand_in_for_closed_streams(serving: bool) -> None:
    """Make do with a stdout or stderr closed (``>&-``), which Python gives as None (it
    failed with an AttributeError traceback). A closed stderr is /dev/null: the error
    lines go nowhere, the exit code tells. A closed stdout is /dev/null for serve (a
    node prints only its banner there); any other command is refused, before any
    call, with its one error line (exit 2): what it did would go unsaid (a token
    printed once, shards deleted), and /dev/null discards output on purpose."""
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (for good)
    if sys.stdout is None and serving:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (for good)
    elif sys.stdout is None:
        closed = errors.InvalidArgument(
            "stdout is closed: the command has nowhere to print what it does; nothing "
            "was done (redirect it to /dev/null to discard the output)"
        )
        sys.exit(fail(closed).exit_code)


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


def _command_path(argv: list[str]) -> list[str]:
    """The words naming the command ``argv`` runs: its command, and for a group
    (``dataset``, ``token``...) the group's command after it too."""
    index = command_index(argv)
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
    # Too late for the entry's first steps: this module has loaded grpc, and with it
    # gRPC's threads, before the node's arena cap or gRPC's log level could be set.
    print(
        "tierstore: run the tierstore command, or python -m tierstore, not this module",
        file=sys.stderr,
    )
    sys.exit(2)  # a usage mistake, as the command's
