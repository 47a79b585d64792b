"""The ``tierstore`` console script.

It loads the command line (:mod:`tierstore.cli.main`: typer, rich, numpy, the client's
modules; a second or so) inside a guard, so that Ctrl-C in that second ends the command
as it does later — exit 130, as a shell's SIGINT, and no traceback of whichever import
it cut short. This module imports nothing heavy itself.
"""

from __future__ import annotations

import sys

__all__ = ["main"]

#: the exit code of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it)
INTERRUPTED_EXIT = 130


def main() -> None:
    """Entry point of the ``tierstore`` command."""
    try:
        from tierstore.cli.main import main as run_command
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED_EXIT)
    run_command()
