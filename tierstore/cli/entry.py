"""The ``tierstore`` console script.

It loads the command line (:mod:`tierstore.cli.main`: typer, rich, numpy, the client's
modules; a second or so) inside a guard, so that Ctrl-C in that second ends the command
as it does later — exit 130, as a shell's SIGINT, and no traceback of whichever import
it cut short; before that, it sets gRPC's log level, which counts only before grpc
loads (:mod:`tierstore.cli.argv`). This module imports nothing heavy itself.
"""

from __future__ import annotations

import sys

__all__ = ["main"]

#: the exit code of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it)
INTERRUPTED_EXIT = 130


def main() -> None:
    """Entry point of the ``tierstore`` command."""
    try:
        from tierstore.cli.argv import quiet_grpc_for

        quiet_grpc_for(sys.argv[1:])  # before grpc loads, with the command line
        from tierstore.cli.main import main as run_command
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED_EXIT)
    run_command()
