"""The ``tierstore`` command groups, the connection options every command that calls
a server takes (before its name or after it), and the client such a command makes.
:mod:`tierstore.cli.main` puts the commands into the groups."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from tierstore import errors
from tierstore.cli.output import fail
from tierstore.cli.state import DEFAULT_DEADLINES, close_clients, state
from tierstore.client.deadlines import timeout_problem

__all__ = [
    "ClientCommand",
    "Command",
    "app",
    "command_client",
    "connection_options",
    "dataset_app",
    "keys_app",
    "policy_app",
    "token_app",
    "trace_app",
]


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


_CONNECTION = "Connection"


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
        str | None,  # (a Path would make "" the current directory)
        typer.Option(
            metavar="PATH",
            help="file holding the bearer token, kept out of the process list "
            "[TIERSTORE_TOKEN_FILE]",
            rich_help_panel=_CONNECTION,
        ),
    ] = None,
    ca: Annotated[
        str | None,  # (a Path would make "" the current directory)
        typer.Option(
            metavar="PATH", help="server CA PEM file [TIERSTORE_CA]", rich_help_panel=_CONNECTION
        ),
    ] = None,
    client_cert: Annotated[
        str | None,  # (a Path would make "" the current directory)
        typer.Option(
            metavar="PATH",
            help="client certificate PEM file, for a server that requires one "
            "[TIERSTORE_CLIENT_CERT]",
            rich_help_panel=_CONNECTION,
        ),
    ] = None,
    client_key: Annotated[
        str | None,  # (a Path would make "" the current directory)
        typer.Option(
            metavar="PATH",
            help="the client certificate's key PEM file [TIERSTORE_CLIENT_KEY]",
            rich_help_panel=_CONNECTION,
        ),
    ] = None,
    insecure: Annotated[
        bool | None,
        typer.Option(
            help="plaintext (loopback servers only); --no-insecure: TLS, whatever "
            "TIERSTORE_INSECURE says [TIERSTORE_INSECURE]",
            rich_help_panel=_CONNECTION,
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            help=f"seconds a call may take, then it fails (default: {DEFAULT_DEADLINES})",
            rich_help_panel=_CONNECTION,
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="print JSON for scripts", rich_help_panel=_CONNECTION)
    ] = False,
) -> None:
    # Given before the command's name; ClientCommand adds what is given after it.
    context.call_on_close(close_clients)
    state.address, state.token, state.token_file, state.ca = address, token, token_file, ca
    state.client_cert, state.client_key = client_cert, client_key
    state.insecure, state.timeout, state.json = insecure, timeout, json_output
    state.changes, state.report_lost = False, False  # the command's own say (ChangingCommand)


def connection_options() -> list[Any]:
    """Fresh click parameters for :func:`_options`' options, as typer builds them, so
    the options are declared once for both places they may be given."""
    probe = typer.Typer(add_completion=False)
    probe.command()(_options)
    return list(typer.main.get_command(probe).params)


class Command(TyperCommand):
    """A command whose summary in its group's list is its help's first sentence, as one
    line: the list keeps a docstring's line breaks, which then fall mid-sentence, and
    a whole paragraph of caveats there buried the list (``--help`` of the command
    itself shows them all)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.short_help is None and self.help:
            first = " ".join(inspect.cleandoc(self.help).split("\n\n")[0].split())
            self.short_help = _first_sentence(first)


def _first_sentence(text: str) -> str:
    """``text`` up to the end of its first sentence: a full stop (or ! or ?) outside
    parentheses, followed by a space and a capital, or by nothing."""
    depth = 0
    for at, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        after = text[at + 1 : at + 3]
        ends = not after or (after[:1] == " " and after[1:].isupper())
        if char in ".!?" and depth <= 0 and ends:
            return text[: at + 1]
    return text


#: connection options whose every value given, "" included, counts as given
_GIVEN_EMPTY_OR_NOT = ("address", "token", "token_file", "ca", "client_cert", "client_key")


class ClientCommand(Command):
    """A command that talks to a server: it takes the connection options after its name
    too (``tierstore dataset ls --json``), not only before it (``tierstore --json dataset
    ls``). An option given in both places counts as given after the name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connection = connection_options()
        self.params.extend(self._connection)

    def invoke(self, ctx: Any) -> Any:
        # Runs after the group's callback (_options) has set the state from the options
        # given before the name. Popped: the command's own function does not take them.
        given = {param.name: ctx.params.pop(param.name) for param in self._connection}
        for name in _GIVEN_EMPTY_OR_NOT:
            if given[name] is not None:
                setattr(state, name, given[name])
        if given["insecure"] is not None:  # --no-insecure too: it wins over the environment
            state.insecure = given["insecure"]
        state.timeout = given["timeout"] if given["timeout"] is not None else state.timeout
        state.json = given["json_output"] or state.json
        return super().invoke(ctx)


class ChangingCommand(ClientCommand):
    """A :class:`ClientCommand` that changes what the node holds (creates, deletes,
    uploads, pins, tokens, keys): a report of what it did that cannot be written is
    said on stderr (:func:`tierstore.cli.output.emit`), not lost without a word."""

    def invoke(self, ctx: Any) -> Any:
        state.changes = True
        return super().invoke(ctx)


#: the connection options that name a file: (option, its name in the state, variable)
_FILE_OPTIONS = (
    ("--token-file", "token_file", "TIERSTORE_TOKEN_FILE"),
    ("--ca", "ca", "TIERSTORE_CA"),
    ("--client-cert", "client_cert", "TIERSTORE_CLIENT_CERT"),
    ("--client-key", "client_key", "TIERSTORE_CLIENT_KEY"),
)


def _path(given: str | None) -> Path | None:
    return None if given is None else Path(given)


def command_client() -> Any:
    """A client for this command, closed when the command ends, error or not: closing
    reports the reads it served in place (from this host's hot tier), which were never
    counted while the CLI left its clients open."""
    from tierstore.client.connect import connect

    if state.address == "":  # "$ADDRESS" of an unset variable: not the environment's node
        raise fail(
            errors.InvalidArgument(
                "--address is empty: give HOST:PORT, or leave --address out to use "
                "TIERSTORE_ADDRESS"
            )
        )
    if state.token == "":  # "$TOKEN" of an unset variable: never the environment's instead
        raise fail(
            errors.InvalidArgument(
                "--token is empty: give the token, or leave --token out to use "
                "TIERSTORE_TOKEN or TIERSTORE_TOKEN_FILE"
            )
        )
    for option, given, variable in _FILE_OPTIONS:
        if getattr(state, given) == "":  # as for --token: never the environment's instead
            raise fail(
                errors.InvalidArgument(
                    f"{option} is empty: give a path, or leave {option} out to use {variable}"
                )
            )
    if state.token and state.token_file:
        raise fail(errors.InvalidArgument("give --token or --token-file, not both"))
    problem = None if state.timeout is None else timeout_problem(state.timeout)
    if problem is not None:
        raise fail(errors.InvalidArgument(f"--timeout must be {problem}"))
    try:
        client = connect(
            state.address,
            token=state.token,
            token_file=_path(state.token_file),
            ca=_path(state.ca),
            client_cert=_path(state.client_cert),
            client_key=_path(state.client_key),
            insecure=state.insecure,  # None, not given: TIERSTORE_INSECURE decides
        )
    except errors.TierstoreError as exc:  # no address, an unreadable CA file...
        raise fail(exc) from None
    if state.timeout is not None:  # unary calls and streams alike: an admin's bound
        client.timeout_s = client.stream_timeout_s = state.timeout
    state.clients.append(client)
    return client
