"""A Tier that passes every request on to another, through one hook: the base of the
wrappers that watch an archive's requests (composition, no I/O of their own).

:class:`~tierstore.tiers.timed.TimedTier` times each request for the archive-latency
metric; :class:`~tierstore.engine.archivewatch.WatchedTier` notes whether the archive
answers. Each overrides :meth:`ForwardingTier._request` alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from tierstore.tiers.base import BytesLike, ListPage, ObjectStat, Tier

__all__ = ["ForwardingTier"]

_T = TypeVar("_T")


class ForwardingTier:
    """Passes each request to ``inner`` through :meth:`_request`. ``close`` is passed on
    as it is: it is no request."""

    def __init__(self, inner: Tier) -> None:
        self.inner = inner

    def _request(self, operation: str, call: Callable[[], _T]) -> _T:
        """Make request ``operation`` ("get", "put", "delete", "delete_many", "stat",
        "list") by ``call()``, returning what it returns; the hook the wrappers override."""
        return call()

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> memoryview | None:
        return self._request("get", lambda: self.inner.get(key, byte_range))

    def put(self, key: str, value: BytesLike | Iterable[BytesLike]) -> None:
        self._request("put", lambda: self.inner.put(key, value))

    def delete(self, key: str) -> None:
        self._request("delete", lambda: self.inner.delete(key))

    def delete_many(self, keys: Sequence[str]) -> None:
        self._request("delete_many", lambda: self.inner.delete_many(keys))

    def stat(self, key: str) -> ObjectStat | None:
        return self._request("stat", lambda: self.inner.stat(key))

    def list(self, prefix: str = "", start_after: str | None = None, limit: int = 1000) -> ListPage:
        return self._request("list", lambda: self.inner.list(prefix, start_after, limit))

    def close(self) -> None:
        self.inner.close()
