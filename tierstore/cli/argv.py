"""Which command a ``tierstore`` command line runs, found before the command line (and
grpc) loads, and gRPC's log level for it.

gRPC's C core reads ``GRPC_VERBOSITY`` as grpc loads, and logs on stderr: a failed TLS
handshake or an unreadable CA file comes out as lines around the one-line error a
command prints. So the console script sets the level before it loads the command line,
which loads grpc: a command that calls a server keeps none of gRPC's lines, and a node
(``serve``) keeps its errors in its log. (Set in the command's ``main``, it came after
grpc had loaded: a command given the wrong CA printed grpc's handshake line too.) This
module loads typer, not grpc.
"""

from __future__ import annotations

import os

from tierstore.cli.app import connection_options

__all__ = ["command_index", "command_name", "quiet_grpc_for"]

#: top-level options that take a value (the next argument, unless given as --opt=value):
#: the connection options but the flags (a list of names missed --client-cert)
_VALUED_OPTIONS = frozenset(
    name for option in connection_options() if not option.is_flag for name in option.opts
)


def command_name(argv: list[str]) -> str | None:
    """The command ``argv`` runs: its first argument that is neither an option nor a
    top-level option's value."""
    index = command_index(argv)
    return None if index is None else argv[index]


def command_index(argv: list[str]) -> int | None:
    """Where in ``argv`` the command is (see :func:`command_name`)."""
    skip = False
    for index, argument in enumerate(argv):
        if skip:
            skip = False
        elif argument in _VALUED_OPTIONS:
            skip = True
        elif not argument.startswith("-"):
            return index
    return None


def quiet_grpc_for(argv: list[str]) -> bool:
    """Set gRPC's log level for the command ``argv`` runs, unless the user set one
    (``GRPC_VERBOSITY`` wins): errors for ``serve``, nothing for the rest. Whether the
    command is ``serve``. Takes effect only before grpc loads."""
    serving = command_name(argv) == "serve"
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR" if serving else "NONE")
    return serving
