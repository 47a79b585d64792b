"""Epoch pinning: admit while there is room, never displace a pinned shard for a read."""

from __future__ import annotations

from tests.policy.conformance import HotModel, PolicyConformance
from tierstore.policy.base import Policy
from tierstore.policy.epoch_pin import EpochPinPolicy


class TestEpochPinConformance(PolicyConformance):
    def make(self) -> Policy:
        return EpochPinPolicy()


def test_first_shards_are_pinned_and_the_rest_bypassed() -> None:
    model = HotModel(EpochPinPolicy(), 5)
    for epoch in range(3):
        hits = sum(model.read(key, 1) for key in range(20))
        assert hits == (0 if epoch == 0 else 5)
    assert set(model.hot) == set(range(5))


def test_with_a_plan_only_planned_shards_are_admitted() -> None:
    policy = EpochPinPolicy()
    model = HotModel(policy, 10)
    policy.declare_plan("job", [1, 2, 3], [1, 1, 1], 0.0)
    for key in (7, 1, 8, 2):
        model.read(key, 1)
    assert set(model.hot) == {1, 2}
    policy.close_plan("job")
    model.read(9, 1)
    assert 9 in model.hot  # no plan left: anything fits while there is room


def test_victims_unplanned_first_then_newest() -> None:
    policy = EpochPinPolicy()
    model = HotModel(policy, 10)
    for key in range(4):
        model.insert(key, 1)
    policy.declare_plan("job", [0, 1, 2], [1, 1, 1], 0.0)
    assert model.victims(2) == [3, 2]
    policy.declare_plan("job", [0], [1], 0.0)  # replaces the plan: 1 and 2 unplanned
    assert model.victims(3) == [3, 2, 1]
