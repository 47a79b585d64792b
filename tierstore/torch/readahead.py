"""Doing the next few pieces of work while the current result is consumed.

:func:`read_ahead` runs ``fetch`` on the items of an iterable in order with ``depth`` calls
running ahead of the consumer, on a few threads of the process that iterates (a
DataLoader worker has its own). Datasets use it to fetch the next shards, and to assemble
the next batches. Memory: the result being consumed plus up to ``depth`` more.

The threads are daemon threads, which the interpreter does not wait for at exit. A fetch
can block where no stop event reaches it — a gRPC read from a node that stopped answering
waits for the channel's keepalive or the transfer's deadline, a custom source for its own
I/O — and the threads of a ``concurrent.futures`` pool are joined at exit, always: Ctrl-C
on a loader reading ahead from a frozen node took over a minute to end the process.
Cancelling the blocked call instead would need a hook into every source's reads (a gRPC
stream, a local map, a user's source); abandoning the thread needs none, and costs
nothing, as what it was fetching is wanted by no one once the process ends.

Fork safety: the threads are started on the first ``next()``, in the iterating process,
and are touched only by that process. A generator inherited through ``fork()`` is never
iterated in the child (datasets start a new one there); should the child garbage-collect
it, the clean-up sees the foreign pid and leaves the parent's queue and futures alone —
their locks may be held by parent threads that do not exist in the child, and touching
them could hang.

Not thread-safe: one consumer per generator (the threads only run fetches). Items are
drawn from the iterable on the consumer's thread, as results are taken.
"""

from __future__ import annotations

import functools
import itertools
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, wait
from typing import TypeVar

__all__ = ["read_ahead"]

K = TypeVar("K")
T = TypeVar("T")


class _DaemonThreads:
    """``count`` daemon threads running submitted calls in submission order, each call's
    outcome in its future. Calls still queued when their future is cancelled are skipped.
    ``submit`` and ``close`` are thread-safe."""

    def __init__(self, count: int, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[object], Callable[[], object]] | None]
        self._calls = queue.SimpleQueue()
        self._count = count
        for index in range(count):
            thread = threading.Thread(target=self._run, name=f"{name}_{index}", daemon=True)
            thread.start()

    def submit(self, call: Callable[..., T], *args: object) -> Future[T]:
        """Queue ``call(*args)``; its future holds its result or exception."""
        future: Future[T] = Future()
        self._calls.put((future, functools.partial(call, *args)))  # type: ignore[arg-type]
        return future

    def close(self) -> None:
        """End each thread after the calls queued before this one; waits for none of them."""
        for _ in range(self._count):
            self._calls.put(None)

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            _settle(*item)
            del item  # the result is the consumer's alone to keep alive


def _settle(future: Future[object], call: Callable[[], object]) -> None:
    """Run ``call`` into ``future`` (unless it was cancelled while queued). A function of
    its own, so that nothing of the result outlives it on the thread: a local of the
    thread's loop kept each thread's last shard while it fetched the next."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(call())
    except BaseException as exc:  # the consumer's to raise, as an executor does
        future.set_exception(exc)


#: How long the consumer waits for a result at a time, in seconds. Between two waits the
#: main thread runs the signal handlers it has pending: a Ctrl-C (SIGINT) that the kernel
#: handed to another thread of the process does not wake a wait with no timeout, and was
#: raised only once the fetch ended, which a read from a frozen node took over a minute
#: to do. (gRPC's own blocking calls wait in slices for the same reason.)
_WAIT_SLICE_S = 0.1


def _result(future: Future[T]) -> T:
    """``future``'s result (or exception) once it is done, waited for in slices."""
    while not wait((future,), _WAIT_SLICE_S).done:
        pass
    return future.result()


def read_ahead(
    fetch: Callable[[K, threading.Event], T],
    names: Iterable[K],
    depth: int,
    *,
    thread_name: str = "tierstore-read-ahead",
) -> Generator[T, None, None]:
    """``fetch(name, stop)`` for each of ``names``, in order, up to ``depth`` ahead.

    ``depth`` 0 fetches inline, without threads. ``stop`` is set when the consumer stops
    early (the generator is closed or collected), so fetches can give up their retries.
    A fetch's exception is raised when its result is due, not before: shards fetched
    ahead of a failure are still yielded first. So is an exception from ``names`` itself.
    """
    stop = threading.Event()
    if depth <= 0:
        for name in names:
            yield fetch(name, stop)
        return
    owner = os.getpid()
    threads = _DaemonThreads(depth, thread_name)
    upcoming = iter(names)
    pending: deque[Future[T]] = deque()
    failure: Exception | None = None  # from `names`, raised once what precedes it is out

    try:
        while True:
            # The shard due next plus `depth` more: while the consumer holds shard i, shards
            # i+1 .. i+depth are being fetched.
            if failure is None:
                try:
                    for name in itertools.islice(upcoming, depth + 1 - len(pending)):
                        pending.append(threads.submit(fetch, name, stop))
                except Exception as exc:
                    failure = exc
            if not pending:
                if failure is not None:
                    raise failure
                return
            yield _result(pending.popleft())
    finally:
        if os.getpid() == owner:
            stop.set()
            for future in pending:
                future.cancel()  # those not started; the running ones see `stop`
            threads.close()
