"""A Tier wrapper that reports how long each archive request took (composition, no I/O of
its own): the service feeds these timings to its archive-latency metric."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from tierstore.tiers.base import Tier
from tierstore.tiers.forwarding import ForwardingTier

__all__ = ["Observer", "TimedTier"]

_T = TypeVar("_T")

#: Called with (operation, seconds, failed) after every request.
Observer = Callable[[str, float, bool], None]


class TimedTier(ForwardingTier):
    """Delegates to ``inner`` and reports each call's duration to ``observe``."""

    def __init__(self, inner: Tier, observe: Observer) -> None:
        super().__init__(inner)
        self._observe = observe

    def _request(self, operation: str, call: Callable[[], _T]) -> _T:
        started = time.perf_counter()
        failed = True
        try:
            result = call()
            failed = False
            return result
        finally:
            self._observe(operation, time.perf_counter() - started, failed)
