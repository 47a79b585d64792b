"""The ``tierstore`` console script.

It loads the command line (:mod:`tierstore.cli.main`: typer, rich, numpy, the client's
modules; a second or so) inside a guard, so that Ctrl-C in that second ends the command
as it does later — exit 130, as a shell's SIGINT, and no traceback of whichever import
it cut short; before that, it sets gRPC's log level, which counts only before grpc
loads (:mod:`tierstore.cli.argv`). This module imports nothing heavy itself.

SIGTERM and SIGHUP are caught from the first line too, while the command line loads
and, for ``serve``, until it sets its own handlers (it stops gracefully): one in that
window ends the command with 128 + its number, as the signal's default action would.
The other commands then have the default actions back (a SIGTERM is theirs to handle:
:func:`~tierstore.cli.stopsignal.stopping_on_sigterm`), as does every command once it
returns. Where the command
runs as a container's process 1, the kernel drops signals that a process left at their
default action: a node being started there when its pod was deleted came up and served
until the grace period ran out and it was killed.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
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


def _print_what_the_terminal_cannot_show() -> None:
    """Write characters the output's encoding lacks as escapes (``\xfc``): with an ASCII
    one (``LC_ALL=C`` without Python's UTF-8 mode, ``PYTHONIOENCODING=ascii``) a listing
    of a shard named in another script ended in UnicodeEncodeError's traceback."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # a TextIOWrapper's
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def main(prepare: Callable[[], object] | None = None) -> None:
    """Entry point of the ``tierstore`` command. ``prepare`` runs after the first steps,
    before the command line loads (a benchmark's patches, which load grpc)."""
    _print_what_the_terminal_cannot_show()
    caught: list[signal.Signals] = []
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is signal.SIG_DFL:  # nohup's ignored hangup stays so
                signal.signal(signum, _stop)
                caught.append(signum)
        try:
            from tierstore.cli.argv import quiet_grpc_for

            serving = quiet_grpc_for(sys.argv[1:])  # before grpc loads, with the command line
            if serving:
                from tierstore.engine.allocator import cap_arenas

                cap_arenas()  # before any thread starts: gRPC's start as grpc loads
            if prepare is not None:
                prepare()
            from tierstore.cli.main import main as run_command
        except KeyboardInterrupt:
            sys.exit(INTERRUPTED_EXIT)
        if not serving:  # the others' own handling, or the default, as before
            _let_go(caught)
        run_command()
    except _Stopped as stopped:
        sys.exit(128 + stopped.signum)
    finally:
        # Not through the interpreter's shutdown: a SIGTERM there would be swallowed.
        _let_go(caught)


def _let_go(caught: list[signal.Signals]) -> None:
    """Put the default action back for those of ``caught`` still at :func:`_stop`."""
    for signum in caught:
        if signal.getsignal(signum) is _stop:
            signal.signal(signum, signal.SIG_DFL)
