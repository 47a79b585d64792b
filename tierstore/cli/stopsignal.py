"""SIGTERM stops a command (not ``serve``, which has its own graceful stop) as Ctrl-C does.

SIGTERM's default killed the command where it stood: a download left its hidden
``.<name>.<random>.part`` file behind, and ``rm``, ``put``, ``pin``, ``unpin`` and
``evict`` said nothing of what they had done. A supervisor's stop, ``timeout`` and
``kill`` send it. Now it raises KeyboardInterrupt in the main thread, so the command
unwinds as for Ctrl-C (its partial file removed, what it did reported, naming
SIGTERM), and it exits 143 (128 + SIGTERM, as a shell reports the signal), not 130.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["stop_exit", "stopped_by", "stopping_on_sigterm"]

#: the signal that stopped the command (SIGINT until a SIGTERM came)
_received = signal.SIGINT


@contextmanager
def stopping_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM raises KeyboardInterrupt in the main thread (enter
    it there); the handler before it is put back after (a test calling the command in
    its own process keeps its own)."""
    global _received
    _received = signal.SIGINT

    def on_sigterm(signum: int, frame: object) -> None:
        global _received
        _received = signal.Signals(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stopped_by() -> str:
    """What stopped the command, as its report names it: "Ctrl-C" or "SIGTERM"."""
    return "SIGTERM" if _received == signal.SIGTERM else "Ctrl-C"


def stop_exit() -> int:
    """The exit status of a command so stopped: 130, or 143 after SIGTERM."""
    return 128 + int(_received)
