"""LRU: the baseline policy."""

from __future__ import annotations

from tests.policy.conformance import HotModel, PolicyConformance
from tierstore.policy.base import Policy
from tierstore.policy.lru import LruPolicy


class TestLruConformance(PolicyConformance):
    def make(self) -> Policy:
        return LruPolicy()


def test_evicts_least_recently_read_first() -> None:
    model = HotModel(LruPolicy(), 40)
    for key in "abcd":
        model.read(key, 10)
    model.read("a", 10)  # a is now the most recent
    model.read("e", 10)  # evicts b, the least recent
    assert set(model.hot) == {"a", "c", "d", "e"}
    assert model.policy.victims(20, 0.0, lambda key: True) == ["c", "d"]


def test_victims_skip_keys_that_are_not_evictable() -> None:
    policy = LruPolicy()
    for key in range(5):
        policy.inserted(key, 1, 0.0)
    assert policy.victims(2, 0.0, lambda key: key != 0) == [1, 2]
