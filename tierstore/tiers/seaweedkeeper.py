"""Keeps a node's embedded archive running: a ``weed`` that exits on its own is started
again.

A node without an external archive runs SeaweedFS as its child (``tierstore serve``).
If that process dies (killed, out of memory), nothing brought it back: cold reads and
write-through calls failed and the journal grew until the node was restarted by hand,
with only the mover's "unreachable, will retry" in its log (nothing at all on an idle
node). The keeper checks the child every ``interval_s``; one that has exited is logged
at ERROR with its status and log file, and started again on its old S3 port, so the
node's S3 client reaches it where it was. A failed restart is logged and tried again
after a back-off.

Thread safety: :meth:`SeaweedKeeper.start` and :meth:`SeaweedKeeper.stop` from one
thread; the keeper's own thread is the only other user of the server.
"""

from __future__ import annotations

import logging
import threading

from tierstore.errors import ArchiveUnavailable
from tierstore.tiers.seaweedfs import SeaweedServer

__all__ = ["SeaweedKeeper"]

log = logging.getLogger(__name__)

#: the longest pause between two failed restarts (seconds).
MAX_BACKOFF_S = 60.0


class SeaweedKeeper:
    """Restarts ``server`` whenever its process has exited, until :meth:`stop`."""

    def __init__(
        self,
        server: SeaweedServer,
        interval_s: float = 1.0,
        until: threading.Event | None = None,
    ) -> None:
        """``until``: an event that, once set, stops the keeper as :meth:`stop` does
        (a node's own stop, which stops weed too, and is no crash)."""
        self._server = server
        self._interval_s = interval_s
        self._stop = until if until is not None else threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="tierstore-archive-keeper", daemon=True
        )
        #: restarts done since start (for tests and the curious).
        self.restarts = 0

    def start(self) -> SeaweedKeeper:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop watching (before the server is stopped, so that its stop is not taken
        for a crash); waits for a restart under way."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        backoff = self._interval_s
        failing = False  # the last restart failed: the next try is no new exit
        while not self._stop.wait(backoff):
            if self._server.running:
                backoff, failing = self._interval_s, False
                continue
            if not failing:
                if self._stop.wait(self._interval_s):
                    return  # the node is stopping: weed was told to stop with it
                status = self._server.exit_status
                log.error(
                    "the embedded archive (weed) exited%s; starting it again (its log: %s)",
                    "" if status is None else f" with status {status}",
                    self._server.log_path,
                )
            try:
                self._server.restart()
            except (ArchiveUnavailable, OSError) as exc:
                failing = True
                backoff = min(max(backoff * 2, self._interval_s), MAX_BACKOFF_S)
                log.error(
                    "the embedded archive did not start again (next try in %.0f s): %s",
                    backoff,
                    _short(exc),
                )
                continue
            self.restarts += 1
            backoff, failing = self._interval_s, False
            log.warning("the embedded archive is running again on its old S3 port")


def _short(error: BaseException, lines: int = 3) -> str:
    """``error``'s first line and the last ``lines`` of the rest (weed's log tail,
    whose last lines say why it stopped), for one log record."""
    text = str(error).splitlines()
    if len(text) <= lines + 1:
        return " | ".join(text)
    return " | ".join([text[0], "...", *text[-lines:]])
