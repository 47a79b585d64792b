"""SIGTERM and SIGHUP stop a command (not ``serve``, which has its own graceful stop)
as Ctrl-C does.

Their default killed the command where it stood: a download left its hidden
``.<name>.<random>.part`` file behind, and ``rm``, ``put``, ``pin``, ``unpin`` and
``evict`` said nothing of what they had done. A supervisor's stop, ``timeout`` and
``kill`` send SIGTERM; a dropped ssh session or a closed terminal sends SIGHUP (a
review). Now either raises KeyboardInterrupt in the main thread, so the command
unwinds as for Ctrl-C (its partial file removed, what it did reported, naming the
signal), and it exits 128 + the signal's number (143, 129), as a shell reports it,
not 130. A SIGHUP ignored when the command starts (``nohup``) stays ignored.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

__all__ = ["stop_exit", "stopped_by", "stopping_on_sigterm"]

#: the signal that stopped the command (SIGINT until another came)
_received = signal.SIGINT


@contextmanager
def stopping_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP (unless ignored) raise
    KeyboardInterrupt in the main thread (enter it there); the handlers before them
    are put back after (a test calling the command in its own process keeps its own)."""
    global _received
    _received = signal.SIGINT

    def on_signal(signum: int, frame: object) -> None:
        global _received
        _received = signal.Signals(signum)
        raise KeyboardInterrupt

    with ExitStack() as handlers:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signum == signal.SIGHUP and signal.getsignal(signum) is signal.SIG_IGN:
                continue  # nohup's: the command is to outlive its terminal
            previous = signal.signal(signum, on_signal)
            handlers.callback(signal.signal, signum, previous)
        yield


def stopped_by() -> str:
    """What stopped the command, as its report names it: "Ctrl-C", "SIGTERM" or
    "SIGHUP"."""
    return "Ctrl-C" if _received == signal.SIGINT else _received.name


def stop_exit() -> int:
    """The exit status of a command so stopped: 130, 143 after SIGTERM, 129 after
    SIGHUP."""
    return 128 + int(_received)
