"""Verify-ahead: a helper thread checks (or decrypts) the next frames while the
consumer reads or checks the current one.

Checking a frame (xxh3 over every byte) and reading it are both passes over memory.
Done one after the other on one core they cost about 1.6x a bare read. The helper
thread runs the checksum (``xxhash`` releases the GIL) one or two frames ahead of the
consumer, who still gets nothing that has not been verified, and then reads the frame
while it is still in the shared cache. The two passes still share the memory
bandwidth, so the overlap is partial (benchmarks/RESULTS.md has the figures).
A whole-shard read that collects every frame gets its frames checked (or decrypted:
``cryptography`` releases the GIL too) on two threads at once.

The consumer keeps every LMDB access on its own thread: it looks each frame up and
hands the view over; the helper only hashes views it was given. When the consumer is
done, or walks away mid-shard, it stops the helper and waits for the frame in hand
(if any) before it lets go of the read lease, so the mapped pages outlive every
access to them.

Small frames are checked on the consumer's thread alone: a hand-over to the helper
costs tens of microseconds of locking, more than checking a frame under
:data:`MIN_HELPER_FRAME_BYTES` (a shard of 100,000 tiny frames read at 30 us a frame
through the helper, against a few without it).

If the helper is late (its pool busy with other readers), the consumer verifies the
frame it needs itself: frames are claimed in order by whichever side gets there
first, so no frame is checked twice and nobody waits on a queued task.

Thread safety: one :class:`VerifyAhead` serves one consumer thread and one helper.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["MIN_HELPER_FRAME_BYTES", "VerifyAhead", "collect", "process_helper_pool"]

#: what a check hands out: a payload view, or a buffer decrypted into.
T = TypeVar("T")

#: how long the helper waits for the consumer to hand it the next frame before it
#: leaves the rest of the read to the consumer.
HELPER_IDLE_S = 0.1

#: how many frames the consumer keeps handed to the helper beyond the one it needs
#: (measured: 1 and 2 alike; 4 or all at once slower, the frames leave the cache
#: before the consumer reads them).
LOOKAHEAD_FRAMES = 2

#: the smallest mean size of the first frames looked up for which the helper is used.
MIN_HELPER_FRAME_BYTES = 256 * 1024


_process_pool: ThreadPoolExecutor | None = None
_process_pool_lock = threading.Lock()


def _forget_parent_pool() -> None:
    # In a forked child the parent's helper thread is gone, and the lock may have been
    # held by a parent thread at the fork: start over with neither.
    global _process_pool, _process_pool_lock
    _process_pool = None
    _process_pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_parent_pool)


def process_helper_pool() -> ThreadPoolExecutor:
    """This process's one helper thread for readers that have no pool of their own
    (clients). A forked child gets a fresh pool: the parent's thread is not there."""
    global _process_pool
    with _process_pool_lock:
        if _process_pool is None:
            _process_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tierstore-verify")
        return _process_pool


class VerifyAhead(Generic[T]):
    """Verifies ``count`` frames, in order, on a helper thread and the consumer's."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._cond = threading.Condition()
        self._stored: list[memoryview] = []  # fed by the consumer, in order
        #: each frame's outcome: what the check returned, or what it raised.
        self._results: list[T | Exception | None] = [None] * count
        self._next_claim = 0  # the next frame nobody has started to verify
        self._cancelled = False
        self._helper_done = threading.Event()
        #: the check, for the helper: reached through this object, not passed to the
        #: pool, so that the pool's finished work item does not keep what it refers
        #: to (a read lease) alive after :meth:`frames` has ended and cleared it.
        self._verify: Callable[[int, memoryview], T] | None = None
        # Who sleeps on the condition, so that the other side notifies only when needed.
        self._helper_waits = False
        self._consumer_waits = False

    def frames(
        self,
        helper_pool: Executor,
        lookup: Callable[[int], memoryview],
        verify: Callable[[int, memoryview], T],
        *,
        collect: bool = False,
    ) -> Iterator[T]:
        """Each frame's verified payload, in order; raises IntegrityError at the first
        frame that fails (the frames before it are yielded), or whatever else the check
        raised for it, on either thread.

        ``lookup(k)`` returns the stored bytes of frame ``k`` and is called on the
        consumer's thread only; ``verify(k, stored)`` checks (or decrypts) them and
        returns what is handed out, or raises IntegrityError, on either thread. When this generator
        ends (or is closed) the helper has stopped and no reference to a stored view
        is left here, so the caller may end the read transaction.

        ``collect``: the caller only gathers the frames (a whole read), so every frame
        is looked up at once and the consumer checks later frames too while the
        helper holds the one it needs, instead of waiting for it. Otherwise the
        helper stays :data:`LOOKAHEAD_FRAMES` ahead, and the consumer finds each
        frame just checked, still in the cache. Frames of a mean size under
        :data:`MIN_HELPER_FRAME_BYTES` (among those looked up first) are all checked
        on the consumer's thread.
        """
        helper: Future[None] | None = None
        try:
            lookahead = self._count if collect else LOOKAHEAD_FRAMES
            for k in range(min(self._count, lookahead)):
                self._feed(lookup(k))
            if not _worth_a_helper(self._stored):  # one frame, or small ones
                yield from self._inline(lookup, verify)
                return
            self._verify = verify
            # A pool already shut down (store closing): every frame is verified here.
            with contextlib.suppress(RuntimeError):
                helper = helper_pool.submit(self._run_helper)
            for k in range(self._count):
                if k + lookahead < self._count:
                    self._feed(lookup(k + lookahead))
                yield self._wait(k, verify, collect)
        finally:
            with self._cond:
                self._cancelled = True
                self._cond.notify_all()
            if helper is not None and not helper.cancel():
                self._helper_done.wait()  # at most the frame it is checking now
            self._stored.clear()
            self._results.clear()
            self._verify = None

    def _inline(
        self, lookup: Callable[[int], memoryview], verify: Callable[[int, memoryview], T]
    ) -> Iterator[T]:
        """Every frame checked here, in order, with no helper and no lock."""
        fed = len(self._stored)
        for k in range(self._count):
            stored = self._stored[k] if k < fed else lookup(k)
            yield verify(k, stored)

    def _feed(self, stored: memoryview) -> None:
        with self._cond:
            self._stored.append(stored)
            if self._helper_waits:
                self._cond.notify_all()

    def _claim(self, k: int | None = None) -> int | None:
        """Under the lock: claim frame ``k`` (the consumer) or the next frame (the
        helper, unless cancelled), if it is unclaimed and fed."""
        if k is None and self._cancelled:
            return None
        j = self._next_claim if k is None else k
        if j != self._next_claim or j >= len(self._stored):
            return None
        self._next_claim = j + 1
        return j

    def _check(self, j: int, verify: Callable[[int, memoryview], T]) -> None:
        """Verify frame ``j`` (claimed by this thread) and publish the outcome."""
        outcome: T | Exception
        try:
            outcome = verify(j, self._stored[j])
        except Exception as error:  # IntegrityError, or any other (out of memory, ...):
            outcome = error  # kept for the consumer, who raises it when it reaches frame j
        with self._cond:
            self._results[j] = outcome
            if isinstance(outcome, Exception):
                self._cancelled = True  # nothing after a failed frame is handed out
            if self._consumer_waits:
                self._cond.notify_all()

    def _run_helper(self) -> None:
        try:
            verify = self._verify
            if verify is None:  # frames() has ended already: nothing left to check
                return
            while True:
                with self._cond:
                    while True:
                        if self._cancelled or self._next_claim >= self._count:
                            return
                        j = self._claim()
                        if j is not None:
                            break
                        # Wait for the consumer to feed the next frame, but not for a
                        # consumer that has paused (a half-read iterator): the helper
                        # would hold up the pool, and a store's close, for ever. A
                        # consumer that comes back verifies the rest itself.
                        self._helper_waits = True
                        fed = self._cond.wait(HELPER_IDLE_S)
                        self._helper_waits = False
                        if not fed:
                            return
                self._check(j, verify)
        finally:
            verify = None  # nothing of this read stays referenced once done is signalled
            self._helper_done.set()

    def _wait(self, k: int, verify: Callable[[int, memoryview], T], share: bool) -> T:
        while True:
            with self._cond:
                if self._results[k] is not None:
                    break
                mine = self._claim(k)  # unclaimed: verify it here, do not wait for the helper
                if mine is None and share:
                    mine = self._claim()  # the helper has frame k: take a later one meanwhile
                if mine is None:
                    self._consumer_waits = True  # the helper is verifying frame k
                    self._cond.wait()
                    self._consumer_waits = False
                    continue
            self._check(mine, verify)
        result = self._results[k]
        assert result is not None
        if isinstance(result, Exception):
            raise result
        return result


def _worth_a_helper(stored: list[memoryview]) -> bool:
    """Whether frames like ``stored`` (the first ones looked up) are big enough for
    the hand-over to the helper to pay: at least two, of the mean size."""
    return len(stored) > 1 and sum(v.nbytes for v in stored) >= MIN_HELPER_FRAME_BYTES * len(stored)


def collect(
    count: int, lookup: Callable[[int], memoryview], verify: Callable[[int, memoryview], T]
) -> list[T]:
    """Every frame's ``verify`` result, in order, checked on this thread and the
    process's helper at once (``collect`` mode). Raises IntegrityError at the first
    frame that fails, once the helper has stopped."""
    return list(VerifyAhead[T](count).frames(process_helper_pool(), lookup, verify, collect=True))
