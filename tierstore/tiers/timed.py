"""A Tier wrapper that reports how long each archive request took (composition, no I/O of
its own): the service feeds these timings to its archive-latency metric."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from tierstore.tiers.base import BytesLike, ListPage, ObjectStat, Tier

__all__ = ["Observer", "TimedTier"]

#: Called with (operation, seconds, failed) after every request.
Observer = Callable[[str, float, bool], None]


class TimedTier:
    """Delegates to ``inner`` and reports each call's duration to ``observe``."""

    def __init__(self, inner: Tier, observe: Observer) -> None:
        self.inner = inner
        self._observe = observe

    def _timed(self, operation: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        failed = True
        try:
            result = call()
            failed = False
            return result
        finally:
            self._observe(operation, time.perf_counter() - started, failed)

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> memoryview | None:
        result: memoryview | None = self._timed("get", lambda: self.inner.get(key, byte_range))
        return result

    def put(self, key: str, value: BytesLike | Iterable[BytesLike]) -> None:
        self._timed("put", lambda: self.inner.put(key, value))

    def delete(self, key: str) -> None:
        self._timed("delete", lambda: self.inner.delete(key))

    def stat(self, key: str) -> ObjectStat | None:
        result: ObjectStat | None = self._timed("stat", lambda: self.inner.stat(key))
        return result

    def list(self, prefix: str = "", start_after: str | None = None, limit: int = 1000) -> ListPage:
        result: ListPage = self._timed("list", lambda: self.inner.list(prefix, start_after, limit))
        return result

    def close(self) -> None:
        self.inner.close()
