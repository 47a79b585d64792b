"""Reporting reads served in place: counted on the read path, sent in batches off it.

A local read bypasses the server, which must still hear of it: access statistics,
hit counts, the trace and the placement policy all learn from reads.
:class:`ReadReporter` counts reads per (dataset, shard, generation) in memory — O(1)
under one short lock — and a background thread sends them (``ReportLocalReads``)
every ``every_reads`` reads or ``interval_s`` seconds, whichever comes first.
:meth:`ReadReporter.flush` sends at once, on the caller's thread (the client does so
at close and before it shows statistics, so a client sees its own reads counted).

A report that could not leave the client, its channel still connecting (as after a
node's restart), is tried again for as long as an idempotent call would be (1.5 s)
rather than dropped at once: no other failure is retried, as a report that arrived
would count twice, and one that never left cannot have arrived. Only the last flush,
at close, does not try again. A batch that cannot be sent, or that the
server refuses, is dropped (one the node did not answer with the rest of its flush:
one deadline spent on a node that stopped answering, not one per dataset), and the
reason logged once: a lost report costs placement accuracy, never data. Reads counted
but not yet sent when a process dies (a DataLoader worker killed at the end of an
epoch) are lost the same way — at most one interval's worth.

Fork safety: counts belong to the process that made them. A child starts empty (the
parent reports its own) and makes its own thread on its first read. Before a fork a
report in flight is waited for (at most ``_FORK_WAIT_S``), so the child never
inherits gRPC in the middle of a call; the fork handlers are registered once the
first reporter starts — after gRPC registered its own, so ours run first.

Thread safety: safe to share between threads.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterator

from tierstore.engine.localreads import LocalReadCount
from tierstore.errors import Unavailable
from tierstore.wire.local import MAX_REPORT_ENTRIES, MAX_REPORTED_READS

__all__ = ["ReadReporter", "Sender"]

log = logging.getLogger(__name__)

#: ``send(dataset, counts, wait_for_ready)``: one ReportLocalReads call, tried again
#: while its channel is still connecting if ``wait_for_ready``; raises on failure.
Sender = Callable[[str, list[LocalReadCount], bool], None]
#: The longest a fork waits for a report in flight.
_FORK_WAIT_S = 5.0


class ReadReporter:
    """Counts reads served in place and reports them to the server in batches."""

    def __init__(
        self,
        send: Sender,
        *,
        every_reads: int = 256,
        interval_s: float = 1.0,
        on_wake: Callable[[], object] | None = None,
    ) -> None:
        """``on_wake`` is called on the background thread after each round of sending
        (so at least every ``interval_s`` while the thread runs): the local path drops
        the data keys of expired grants there. It must not raise."""
        self._send = send
        self.every_reads = every_reads
        self.interval_s = interval_s
        self._on_wake = on_wake
        self._logged: set[str] = set()
        self._reset()
        _REPORTERS.add(self)

    def _reset(self) -> None:
        # (Re)made in each process: locks, counts and thread are this process's own.
        self._lock = threading.Lock()
        self._sending = threading.Lock()
        self._pending: dict[str, dict[tuple[str, int], int]] = {}
        self._count = 0
        #: wake-ups of the thread: a queue, not an Event, as the reporter's collection
        #: wakes it from a weakref callback, which may run wherever the garbage
        #: collector does (SimpleQueue.put is safe there; an Event's lock is not)
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, dataset: str, shard: str, generation: int) -> None:
        """Count one read (never blocks on the network)."""
        with self._lock:
            counts = self._pending.setdefault(dataset, {})
            counts[(shard, generation)] = counts.get((shard, generation), 0) + 1
            self._count += 1
            due = self._count >= self.every_reads
        self.start()
        if due:
            self._wake.put(None)

    def start(self) -> None:
        """Start the background thread if it is not running: it reports, and calls
        ``on_wake`` (which expires data keys) at least every ``interval_s``."""
        if self._thread is not None:
            return
        _register_fork_handlers()
        with self._lock:
            if self._thread is not None:
                return
            wake: queue.SimpleQueue[None] = queue.SimpleQueue()
            stop = threading.Event()
            self._wake, self._stop = wake, stop
            # Woken as the reporter is collected (a client dropped without close()), so
            # its thread ends then, not at its next wake-up: a loop of dropped clients
            # held a thread each for up to interval_s. (The callback holds the queue,
            # not the reporter.)
            gone = weakref.ref(self, lambda _ref: wake.put(None))
            thread = threading.Thread(
                target=_report_loop,
                args=(gone, wake, stop, self.interval_s),
                name="tierstore-read-reports",
                daemon=True,
            )
            # Started before it is published: a close() in another thread joined one not
            # started yet (RuntimeError), and left the client's keys and channel open.
            thread.start()
            self._thread = thread

    def flush(self, *, wait_for_ready: bool = True) -> None:
        """Send every read counted so far, now, on this thread (``wait_for_ready``: see
        the module's docstring)."""
        with self._sending:
            with self._lock:
                pending, self._pending, self._count = self._pending, {}, 0
            for dataset, counts in pending.items():
                reads = [LocalReadCount(shard, gen, n) for (shard, gen), n in counts.items()]
                for batch in _batches(reads):
                    if not self._deliver(dataset, batch, wait_for_ready):
                        # The node did not answer: the rest are dropped too. Each sent
                        # into the same outage took its own deadline, and a stat()
                        # behind five datasets' reports waited 26 s on a stopped node.
                        return

    def close(self) -> None:
        """Send what is pending and stop the thread (the next read starts another).
        Idempotent."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
            self._wake.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self.flush(wait_for_ready=False)  # a node gone for good must not hold up a close

    def _deliver(self, dataset: str, batch: list[LocalReadCount], wait_for_ready: bool) -> bool:
        """Send one batch (a failure is logged once per kind); False if the node did not
        answer it (Unavailable: unreachable, busy, past the deadline). A refusal it
        answered (a revoked grant's PermissionDenied) is the dataset's alone."""
        try:
            self._send(dataset, batch, wait_for_ready)
        except Exception as exc:  # a report is best effort: log why, once per kind
            reason = type(exc).__name__
            unanswered = isinstance(exc, Unavailable)
            if reason not in self._logged:
                self._logged.add(reason)
                log.info(
                    "tierstore: could not report local reads of %s%s: %s",
                    dataset,
                    " (the flush's other reports were dropped with it)" if unanswered else "",
                    exc,
                )
            return not unanswered
        return True

    def _before_fork(self) -> bool:
        return self._sending.acquire(timeout=_FORK_WAIT_S)


def _report_loop(
    reporter: weakref.ref[ReadReporter],
    wake: queue.SimpleQueue[None],
    stop: threading.Event,
    interval_s: float,
) -> None:
    # Holds the reporter only while sending, so a client dropped without close() is
    # collected (its thread then ends: the collection wakes it).
    while True:
        _wait_and_drain(wake, interval_s)
        current = reporter()
        if current is None or stop.is_set():
            return
        current.flush()
        if current._on_wake is not None:
            current._on_wake()
        del current


def _wait_and_drain(wake: queue.SimpleQueue[None], timeout_s: float) -> None:
    """Wait for a wake-up or ``timeout_s``, then take every wake-up queued: one round of
    sending answers them all."""
    try:
        wake.get(timeout=timeout_s)
    except queue.Empty:
        return
    while True:
        try:
            wake.get_nowait()
        except queue.Empty:
            return


def _batches(reads: list[LocalReadCount]) -> Iterator[list[LocalReadCount]]:
    """``reads`` cut into batches the server accepts (entries and total reads bounded)."""
    batch: list[LocalReadCount] = []
    total = 0
    for read in reads:
        left = read.count
        while left:
            if len(batch) == MAX_REPORT_ENTRIES or total == MAX_REPORTED_READS:
                yield batch
                batch, total = [], 0
            take = min(left, MAX_REPORTED_READS - total)
            batch.append(LocalReadCount(read.shard, read.generation, take))
            total += take
            left -= take
    if batch:
        yield batch


_REPORTERS: weakref.WeakSet[ReadReporter] = weakref.WeakSet()
_held: list[ReadReporter] = []
_registered = False
_register_lock = threading.Lock()


def _register_fork_handlers() -> None:
    global _registered
    with _register_lock:
        if _registered:
            return
        _registered = True
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


def _before_fork() -> None:
    _held[:] = [reporter for reporter in list(_REPORTERS) if reporter._before_fork()]


def _after_fork_in_parent() -> None:
    for reporter in _held:
        reporter._sending.release()
    _held.clear()


def _after_fork_in_child() -> None:
    _held.clear()
    for reporter in list(_REPORTERS):
        reporter._reset()
