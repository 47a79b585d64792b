"""Threads for archive fetches that a closing store does not wait for.

A cold read, a sealed stream and a promotion fetch their frames from the archive by
ranged GETs on a pool of threads. Against an archive that takes connections and never
answers (a stopped process, a network that drops packets), each GET waits out its read
time-out on each of its attempts: minutes. A ThreadPoolExecutor's ``shutdown`` waited
for them, and the interpreter joins its threads at exit, so a node stopping then
lingered for minutes past its stop's bound, and was killed.

:class:`FetchPool` runs its calls on daemon threads, and its :meth:`~FetchPool.shutdown`
waits for none of them: every call not yet done, queued or under way, fails at once with
:class:`StoreClosed`, so whoever waits on one goes on; the request itself ends with its
time-out, on a thread the process does not wait for. For calls that only fetch (a late
result is dropped), whose callers take StoreClosed for a store that closed under them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, InvalidStateError
from functools import partial
from queue import SimpleQueue
from typing import Any, ParamSpec, TypeVar

from tierstore.errors import StoreClosed

__all__ = ["FetchPool"]

P = ParamSpec("P")
T = TypeVar("T")


class FetchPool(Executor):
    """Up to ``workers`` daemon threads named ``<name>_<n>``, started as calls come,
    running calls in the order submitted. Thread-safe."""

    def __init__(self, workers: int, name: str) -> None:
        self._workers = workers
        self._name = name
        self._lock = threading.Lock()
        self._queue: SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = SimpleQueue()
        self._threads = 0
        #: calls submitted and not yet done: failed by shutdown().
        self._undone: set[Future[Any]] = set()
        self._closed = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on a thread of the pool; StoreClosed after
        :meth:`shutdown`."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise StoreClosed("the store is closed")
            self._undone.add(future)
            self._queue.put((future, partial(fn, *args, **kwargs)))
            if self._threads < self._workers:
                self._threads += 1
                threading.Thread(
                    target=self._work, name=f"{self._name}_{self._threads - 1}", daemon=True
                ).start()
        future.add_done_callback(self._forget)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Fail every call not yet done with StoreClosed, queued or under way (whatever
        ``wait`` and ``cancel_futures`` say: the calls under way are not waited for),
        and let the threads end once their calls do. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            undone, self._undone = self._undone, set()
            for _ in range(self._threads):
                self._queue.put(None)
        # Outside the lock: a future's done callbacks (_forget) take it.
        for future in undone:
            with contextlib.suppress(InvalidStateError):  # done meanwhile
                future.set_exception(
                    StoreClosed("the store closed while the archive was being read")
                )

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._undone.discard(future)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, call = item
            del item
            with self._lock:  # as shutdown() decides what to fail
                if self._closed or not future.set_running_or_notify_cancel():
                    continue  # failed by shutdown(), or cancelled
            try:
                result = call()
            except BaseException as exc:  # handed to whoever waits on the call
                with contextlib.suppress(InvalidStateError):  # failed by shutdown()
                    future.set_exception(exc)
            else:
                with contextlib.suppress(InvalidStateError):
                    future.set_result(result)
            # Not held while waiting for the next call (a frame's bytes, say).
            del future, call
            result = None
