"""The ``tierstore`` console script.

It loads the command line (:mod:`tierstore.cli.main`: typer, rich, numpy, the client's
modules; a second or so) inside a guard, so that Ctrl-C in that second ends the command
as it does later — exit 130, as a shell's SIGINT, and no traceback of whichever import
it cut short; before that, it sets gRPC's log level, which counts only before grpc
loads (:mod:`tierstore.cli.argv`). This module imports nothing heavy itself.

SIGTERM (and for ``serve`` SIGHUP) is caught from the first line too, until the command
sets its own handler (``serve`` stops gracefully; the others through
:func:`~tierstore.cli.stopsignal.stopping_on_sigterm`): one in that window ends the
command with 128 + its number, as the signal's default action would. Where the command
runs as a container's process 1, the kernel drops signals that a process left at their
default action: a node being started there when its pod was deleted came up and served
until the grace period ran out and it was killed.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

__all__ = ["main"]

#: the exit code of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it)
INTERRUPTED_EXIT = 130


class _Stopped(BaseException):
    """A SIGTERM or SIGHUP received before the command set its own handler for it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


def main() -> None:
    """Entry point of the ``tierstore`` command."""
    caught = [
        signum
        for signum in (signal.SIGTERM, signal.SIGHUP)
        if signal.getsignal(signum) is signal.SIG_DFL  # nohup's ignored hangup stays so
    ]
    for signum in caught:
        signal.signal(signum, _stop)
    try:
        try:
            from tierstore.cli.argv import quiet_grpc_for

            serving = quiet_grpc_for(sys.argv[1:])  # before grpc loads, with the command line
            from tierstore.cli.main import main as run_command
        except KeyboardInterrupt:
            sys.exit(INTERRUPTED_EXIT)
        if not serving and signal.SIGHUP in caught:  # a hangup kills the others, as before
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
        run_command()
    except _Stopped as stopped:
        sys.exit(128 + stopped.signum)
