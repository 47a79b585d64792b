"""Process-wide allocator tuning for a storage process (glibc only).

A put allocates multi-MiB frame buffers and LMDB allocates the pages of every
large value afresh in each write transaction. glibc serves requests above its
mmap threshold (128 KiB to 32 MiB, adapting) with fresh ``mmap`` calls and
returns them at ``free``: every 4 MiB frame then costs ~1,000 page faults that
the kernel answers by zeroing pages — measured at over a quarter of a put's CPU
time. Raising the mmap and trim thresholds above the largest frame keeps that
memory in the heap for reuse, at the price of holding on to freed memory up to
the trim threshold.

That price is per glibc arena, and a server's worker threads spread over many
arenas: after a burst of concurrent puts the process kept well over a GiB it no
longer used, and more after each burst. :class:`IdleTrim` gives it back
(``malloc_trim``) once puts have stopped for a while, so bursts keep the fast
path and an idle node keeps only what it uses.

``malloc_trim`` cannot give all of it back, though: it returns the free pages
inside each arena, but shrinks the top of the main arena only. Freed frames that
merged into the top of a thread's arena (up to 64 MiB each, never shrunk below the
raised trim threshold) stayed resident: a CI run's idle server kept 300 MiB of a
burst of six 32 MiB puts, and eight threads that freed 32 MiB each kept all
256 MiB after a trim. So a node gets :data:`ARENAS` arenas, which its threads take
in turn: what the trim cannot give back is one thread arena's top at most.

This changes the whole process, so the library never does it on its own: the
server and :func:`tierstore.engine.bootstrap.open_store` call it, and embedders
may.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["IdleTrim", "cap_arenas", "trim_heap", "tune_allocator"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: glibc arenas for the whole process (its default: 8 per core). Threads share them;
#: a thread's small allocations come from its own cache without the arena's lock.
ARENAS = 2

#: how long puts must have stopped before their freed memory goes back to the OS.
IDLE_TRIM_S = 2.0


@functools.cache
def _glibc_function(name: str) -> Callable[..., int] | None:
    """``name`` from the C library, or None where it has none (not glibc)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)  # type: ignore[no-any-return]
    except (OSError, AttributeError, TypeError):
        return None


def tune_allocator(max_frame_bytes: int, *, arenas: int | None = None) -> bool:
    """Keep buffers of up to a few frames in the heap and, with ``arenas``, cap glibc at
    that many arenas (:data:`ARENAS` for a node: :func:`cap_arenas`); returns False
    where not glibc.

    The cap holds only for threads that first allocate after it, so a process sets it
    before it starts any (serve's console script does; ``open_store`` leaves the arenas
    alone: an embedding process has threads of its own, and no :class:`IdleTrim`).
    Safe to call more than once; never raises.
    """
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    threshold = min(max(4 * max_frame_bytes, 32 << 20), 1 << 30)
    ok = bool(mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(threshold)))
    # Keep up to a few shards' worth of freed memory: a promotion frees a whole shard
    # at once, and giving it back each time costs the page faults we are avoiding.
    trim = min(max(8 * threshold, 256 << 20), 1 << 30)
    ok = bool(mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trim))) and ok
    if arenas is not None:
        ok = cap_arenas(arenas) and ok
    if not ok:
        log.warning("mallopt refused the allocator thresholds; puts will be slower")
    return ok


def cap_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc at ``arenas`` arenas, unless an operator's ``MALLOC_ARENA_MAX`` or
    ``glibc.malloc.arena_max`` tunable set a number (theirs wins); False where glibc
    refused or is not there. Safe to call more than once; never raises.

    Only threads that first allocate afterwards are held to it: each earlier one took an
    arena of its own (while fewer than eight exist, glibc makes a new one for each new
    thread), and later threads share all the arenas there are. So ``serve``'s console
    script calls it first, before grpc loads: the client's fork gate makes a channel as
    it is imported, whose threads took seven arenas before the node capped them, and
    the node kept glibc's nine.
    """
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    if _arenas_set_by_operator():
        return True
    return bool(mallopt(_M_ARENA_MAX, ctypes.c_int(arenas)))


def _arenas_set_by_operator() -> bool:
    return "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", "")


def trim_heap() -> bool:
    """Give the free memory of every glibc arena back to the OS (``malloc_trim(0)``);
    whether any was. A no-op (False) where not glibc. Thread-safe; never raises."""
    malloc_trim = _glibc_function("malloc_trim")
    if malloc_trim is None:
        return False
    # ctypes releases the GIL for the call: other threads run while it walks the arenas.
    return bool(malloc_trim(ctypes.c_size_t(0)))


class IdleTrim:
    """Runs ``trim`` once no put has been in flight for ``idle_s``, after puts ran.

    "Puts" here is any work that fills the heap with frames: the server wraps puts,
    cold reads and the promoter's promotions. Wrap each in :meth:`busy`; work that
    must not put the trim off calls :meth:`owe` when it ends instead. With
    ``background`` a thread, started with the first put, waits on a condition for the
    trim to fall due (no wake-ups while nothing is owed; one per ``idle_s`` at most
    while puts keep coming); without it the caller calls :meth:`trim_if_due`.
    Thread-safe.
    """

    def __init__(
        self,
        idle_s: float = IDLE_TRIM_S,
        trim: Callable[[], object] = trim_heap,
        clock: Callable[[], float] = time.monotonic,
        *,
        background: bool = True,
    ) -> None:
        self._idle_s = idle_s
        self._trim = trim
        self._clock = clock
        self._background = background
        self._changed = threading.Condition()
        self._in_flight = 0
        #: when the last put in flight ended, while a trim is owed for it
        self._idle_since: float | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Count a put in flight for as long as the block runs."""
        with self._changed:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._changed:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._owe_from_now()

    def owe(self) -> None:
        """Owe a trim for heap work that ended without :meth:`busy` (the mover's
        archive operations): one falls due ``idle_s`` from now, or when one owed
        already does. Unlike a put in flight, such work never puts a trim off: an
        archive retried without end would keep the node from ever trimming."""
        with self._changed:
            if self._idle_since is None:
                self._owe_from_now()

    def trim_if_due(self) -> float | None:
        """Trim if a trim is owed and no put has run for ``idle_s``; else the seconds
        until one may fall due (None: none is owed, or a put is in flight)."""
        with self._changed:
            wait = self._due_in()
            if wait is None or wait > 0:
                return wait
            self._idle_since = None
        self._trim_now()
        return None

    def close(self) -> None:
        """Stop the thread (a trim under way finishes first). Idempotent."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _owe_from_now(self) -> None:
        # Called holding the lock: a trim falls due idle_s from now.
        self._idle_since = self._clock()
        self._start()
        self._changed.notify_all()

    def _due_in(self) -> float | None:
        # Called holding the lock.
        if self._in_flight or self._idle_since is None:
            return None
        return self._idle_since + self._idle_s - self._clock()

    def _trim_now(self) -> None:
        # Outside the lock: a put starting meanwhile does not wait for the trim.
        try:
            self._trim()
        except Exception:  # never let a trim take the thread down
            log.exception("giving freed memory back to the OS failed")

    def _start(self) -> None:
        # Called holding the lock.
        if self._background and self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="idle-trim", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while self._next_trim():
            self._trim_now()

    def _next_trim(self) -> bool:
        """Wait until a trim falls due (True) or the trimmer is closed (False)."""
        with self._changed:
            while not self._closed:
                wait = self._due_in()
                if wait is not None and wait <= 0:
                    self._idle_since = None
                    return True
                self._changed.wait(wait)
            return False
