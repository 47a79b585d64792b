"""A placement policy that writes down every call the engine makes, for driver tests.

:class:`RecordingPolicy` is the LRU baseline plus a log of calls and two knobs: whether
it admits misses, and which keys it asks to prefetch (the next ones of the last plan it
was given, from the reported position on). The ``recording`` fixture (conftest) makes
the engine build one for the policy names ``recording`` and ``refusing``;
:func:`policy_of` finds the one in force for a dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tierstore.engine.store import Store
from tierstore.policy.base import Key, PrefetchBudget
from tierstore.policy.lru import LruPolicy

__all__ = ["RecordingPolicy", "policy_of"]


def policy_of(store: Store, dataset: str) -> RecordingPolicy:
    """The recording policy the store's driver holds for ``dataset``."""
    policy = store._policies._policies[dataset]
    assert isinstance(policy, RecordingPolicy), type(policy)
    return policy


class RecordingPolicy(LruPolicy):
    """LRU that logs each call as a tuple ``(method, arguments...)`` in :attr:`calls`
    (prefetch calls, which the prefetch loop makes whenever it likes, in
    :attr:`prefetches`)."""

    def __init__(self, *, admits: bool = True) -> None:
        super().__init__()
        self.admits = admits
        self.calls: list[tuple[Any, ...]] = []
        self.prefetches: list[tuple[PrefetchBudget, tuple[Key, ...]]] = []
        self.plan: list[Key] = []
        self.position = 0

    def names(self, method: str) -> list[tuple[Any, ...]]:
        """The calls of one method, without the method name."""
        return [call[1:] for call in self.calls if call[0] == method]

    def record_access(self, key: Key, size: int, now: float, hit: bool) -> None:
        self.calls.append(("record_access", key, hit))
        super().record_access(key, size, now, hit)

    def admit(self, key: Key, size: int, now: float, free_bytes: int) -> bool:
        self.calls.append(("admit", key))
        return self.admits

    def inserted(self, key: Key, size: int, now: float) -> None:
        self.calls.append(("inserted", key))
        super().inserted(key, size, now)

    def removed(self, key: Key) -> None:
        self.calls.append(("removed", key))
        super().removed(key)

    def victims(
        self, bytes_to_free: int, now: float, evictable: Callable[[Key], bool]
    ) -> list[Key]:
        chosen = super().victims(bytes_to_free, now, evictable)
        self.calls.append(("victims", bytes_to_free, tuple(chosen)))
        return chosen

    def prefetch(
        self,
        now: float,
        budget: PrefetchBudget,
        is_hot: Callable[[Key], bool],
        *,
        arriving: Callable[[Key], bool] | None = None,
    ) -> list[Key]:
        wanted = [key for key in self.plan[self.position :] if not is_hot(key)]
        wanted = wanted[: budget.requests]
        self.prefetches.append((budget, tuple(wanted)))
        return wanted

    def declare_plan(self, job: str, keys: Sequence[Key], sizes: Sequence[int], now: float) -> None:
        self.calls.append(("declare_plan", job, tuple(keys), tuple(sizes)))
        self.plan, self.position = list(keys), 0

    def report_position(self, job: str, position: int, now: float) -> None:
        self.calls.append(("report_position", job, position))
        self.position = position

    def close_plan(self, job: str) -> None:
        self.calls.append(("close_plan", job))
        self.plan, self.position = [], 0
