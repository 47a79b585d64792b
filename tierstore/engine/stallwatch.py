"""Whether the archive is taking the data of the journal entry in progress.

A frozen archive (a process stopped, a link dropping packets) answers nothing, and its
requests' time-outs and retries take minutes to end (``read_timeout_s`` x
``max_attempts``). Meanwhile the only sign is that the entry hands the archive no data:
:class:`StallWatch` tells how long it has not, for stats and /metrics
(:meth:`Mover.archive_failure <tierstore.engine.mover.Mover.archive_failure>`), for a
write-through caller deciding whether to wait on, for its turn or for its own entry
(:meth:`Mover.run_entry <tierstore.engine.mover.Mover.run_entry>`), and for the log.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

from tierstore.errors import InvalidArgument
from tierstore.tiers.s3_limits import MAX_PART_SIZE, MiB, part_size_for

__all__ = ["STALL_REPORT_S", "StallWatch"]

log = logging.getLogger(__name__)

#: seconds a journal entry may hand the archive no data before it counts as stalled,
#: per part in flight of 8 MiB (as many as the upload has, up to mover_threads; one
#: for any other request): a part slower than that, about 280 KB/s, is as good as no
#: answer. A larger part gets proportionally more.
STALL_REPORT_S = 30.0
#: the part size STALL_REPORT_S is meant for (the S3 tier's default)
_PART_BYTES: Final = 8 * MiB


class StallWatch:
    """When the journal entry in progress last handed the archive data. The mover's
    journal thread (or a write-through caller's attempt, holding the journal) marks an
    attempt's :meth:`begin`, each frame it hands over (:meth:`progressed`) and its
    :meth:`end`; any thread may ask :meth:`stalled_for`. ``parts_in_flight``: the parts
    of one upload sent at once (``mover_threads``). An upload of an object too large for
    10,000 parts of 8 MiB goes in larger parts (:func:`part_size_for
    <tierstore.tiers.s3_limits.part_size_for>`), each of which hands no new data for
    as long as it takes to send: the journal thread says so (:meth:`uploading`)."""

    def __init__(self, parts_in_flight: int) -> None:
        self._parts_in_flight = parts_in_flight
        #: the size of the parts the attempt now sends, and how many go at once (one
        #: but for an upload of several parts)
        self._part_bytes = _PART_BYTES
        self._in_flight = 1
        #: when the attempt in progress began or last handed data; None between them.
        self._since: float | None = None
        #: attempts begun so far: tells a stall of one attempt from the next's.
        self._attempts = 0

    def begin(self) -> None:
        """An attempt at a journal entry starts."""
        self._part_bytes = _PART_BYTES
        self._in_flight = 1
        self._since = time.monotonic()
        self._attempts += 1

    def uploading(self, size: int) -> None:
        """The attempt now uploads an object of ``size`` bytes (0: that upload ended),
        in parts of 8 MiB or, for one too large for 10,000 of them, larger: a stall is
        then that much longer per part."""
        try:
            self._part_bytes = part_size_for(size, _PART_BYTES)
        except InvalidArgument:  # refused before a byte is sent
            self._part_bytes = MAX_PART_SIZE
        # No more at once than it has: an upload of one part is one request, whatever
        # mover_threads (a frozen archive under it went unseen for 30 s a thread).
        parts = -(-size // self._part_bytes)
        self._in_flight = max(1, min(self._parts_in_flight, parts))

    def progressed(self) -> None:
        """The attempt in progress handed the archive data (a frame was asked for)."""
        self._since = time.monotonic()

    def end(self) -> None:
        """The attempt ended, done or failed."""
        self._since = None

    def stalled_for(self) -> float | None:
        """Seconds the attempt in progress has handed the archive no data, once that is
        ``STALL_REPORT_S`` per part in flight (of the upload under way, up to
        ``parts_in_flight``; one between uploads); None before, or with none in
        progress."""
        since = self._since
        if since is None:
            return None
        idle = time.monotonic() - since
        # The next frame is asked for as a part completes, and the parts in flight share
        # the link: at that many parts, completions come that many times apart.
        allowed = STALL_REPORT_S * self._in_flight * self._part_bytes / _PART_BYTES
        return idle if idle >= allowed else None

    def describe(self) -> str | None:
        """What a stall means, for stats and the log; None when there is none."""
        idle = self.stalled_for()
        if idle is None:
            return None
        return (
            f"the archive has taken no data of the current journal entry for {idle:.0f} s "
            "(no answer yet; it is still being tried)"
        )

    def log_stalls(self, stop: threading.Event) -> None:
        """Until ``stop`` is set: log a warning when the attempt in progress stalls,
        once per stall, and a line when that attempt hands the archive data again (one
        that fails is logged as it fails). The mover runs this on a thread of its own:
        a frozen archive's requests fail, and are logged, only minutes later."""
        warned_of: int | None = None  # the attempt whose stall was warned of
        while not stop.wait(STALL_REPORT_S / 4):
            attempt, stall = self._attempts, self.describe()
            if stall is not None and warned_of is None:
                warned_of = attempt
                log.warning("%s", stall)
            elif stall is None and warned_of is not None:
                if attempt == warned_of and self._since is not None:
                    log.info("the archive is taking the journal entry's data again")
                warned_of = None
