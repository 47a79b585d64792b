"""Doing the next few pieces of work while the current result is consumed.

:func:`read_ahead` runs ``fetch`` on the items of an iterable in order with ``depth`` calls
running ahead of the consumer, in a small thread pool of the process that iterates (a
DataLoader worker has its own). Datasets use it to fetch the next shards, and to assemble
the next batches. Memory: the result being consumed plus up to ``depth`` more.

Fork safety: the pool is created on the first ``next()``, in the iterating process, and
is touched only by that process. A generator inherited through ``fork()`` is never
iterated in the child (datasets start a new one there); should the child garbage-collect
it, the clean-up sees the foreign pid and leaves the pool alone — its locks may be held
by parent threads that do not exist in the child, and touching them could hang.

Not thread-safe: one consumer per generator (the pool's threads only run fetches). Items
are drawn from the iterable on the consumer's thread, as results are taken.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["read_ahead"]

K = TypeVar("K")
T = TypeVar("T")

#: the stop event of each read-ahead running its pool, and the process it runs in
_running: weakref.WeakKeyDictionary[threading.Event, int] = weakref.WeakKeyDictionary()


def _stop_all() -> None:
    """Tell the fetches of this process's running read-aheads to stop (at exit)."""
    pid = os.getpid()
    for stop, owner in list(_running.items()):
        if owner == pid:  # one inherited through fork may be locked by a parent thread
            stop.set()


# Run as the interpreter exits, before concurrent.futures joins the pools' threads (these
# run last registered first; concurrent.futures registered its own on import, above).
threading._register_atexit(_stop_all)  # type: ignore[attr-defined]


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
    pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix=thread_name)
    upcoming = iter(names)
    pending: deque[Future[T]] = deque()
    _running[stop] = owner
    failure: Exception | None = None  # from `names`, raised once what precedes it is out

    try:
        while True:
            # The shard due next plus `depth` more: while the consumer holds shard i, shards
            # i+1 .. i+depth are being fetched.
            if failure is None:
                try:
                    for name in itertools.islice(upcoming, depth + 1 - len(pending)):
                        pending.append(pool.submit(fetch, name, stop))
                except Exception as exc:
                    failure = exc
            if not pending:
                if failure is not None:
                    raise failure
                return
            yield pending.popleft().result()
    finally:
        if os.getpid() == owner:
            _running.pop(stop, None)
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
