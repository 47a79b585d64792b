"""One conformance suite that every live placement policy must pass.

Bind it to a policy in a few lines::

    class TestMyPolicy(PolicyConformance):
        def make(self) -> Policy:
            return MyPolicy()

The suite drives the policy the way both drivers do (see
:mod:`tierstore.policy.base`) against a model of the hot tier (a dict of hot keys
and sizes), with random sizes, pins and plan traffic, and checks the contract:
victims are hot, evictable, distinct and add up to what was asked (when enough is
evictable); nothing a driver may legally do makes a policy raise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierstore.errors import InvalidPlan
from tierstore.policy.base import Key, Policy, PrefetchBudget
from tierstore.policy.registry import POLICY_NAMES, make_policy

__all__ = ["HotModel", "PolicyConformance"]


class HotModel:
    """The driver's side: which keys are hot, their sizes, and which are pinned."""

    def __init__(self, policy: Policy, capacity: int) -> None:
        self.policy = policy
        self.capacity = capacity
        self.hot: dict[Key, int] = {}
        self.pinned: set[Key] = set()
        self.now = 0.0

    @property
    def used(self) -> int:
        return sum(self.hot.values())

    def evictable(self, key: Key) -> bool:
        return key not in self.pinned

    def victims(self, bytes_to_free: int) -> list[Key]:
        """Ask for victims and check the contract; does not evict them."""
        chosen = self.policy.victims(bytes_to_free, self.now, self.evictable)
        assert len(chosen) == len(set(chosen)), f"repeated victims {chosen}"
        for key in chosen:
            assert key in self.hot, f"victim {key!r} is not hot"
            assert key not in self.pinned, f"victim {key!r} is pinned"
        available = sum(size for key, size in self.hot.items() if key not in self.pinned)
        assert sum(self.hot[key] for key in chosen) >= min(bytes_to_free, available)
        return chosen

    def read(self, key: Key, size: int) -> bool:
        """One read, exactly as a driver does it; True if it was a hit."""
        self.now += 1.0
        hit = key in self.hot
        self.policy.record_access(key, self.hot.get(key, size), self.now, hit)
        if hit:
            return True
        free = self.capacity - self.used
        if size <= self.capacity and self.policy.admit(key, size, self.now, free):
            if size > free:
                for victim in self.victims(size - free):
                    self.remove(victim)
                    if self.capacity - self.used >= size:
                        break
            if self.capacity - self.used >= size:
                self.insert(key, size)
        return False

    def insert(self, key: Key, size: int) -> None:
        self.hot[key] = size
        self.policy.inserted(key, size, self.now)

    def remove(self, key: Key) -> None:
        del self.hot[key]
        self.pinned.discard(key)
        self.policy.removed(key)


KEYS = st.integers(0, 40)
SIZES = st.integers(1, 8)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("read"), KEYS, SIZES),
        st.tuples(st.just("write"), KEYS, SIZES),
        st.tuples(st.just("delete"), KEYS, SIZES),
        st.tuples(st.just("pin"), KEYS, SIZES),
        st.tuples(st.just("victims"), KEYS, st.integers(0, 60)),
        st.tuples(st.just("declare"), st.integers(0, 2), st.integers(0, 30)),
        st.tuples(st.just("report"), st.integers(0, 2), st.integers(-5, 80)),
        st.tuples(st.just("close"), st.integers(0, 2), SIZES),
        st.tuples(st.just("wait"), st.integers(0, 2), st.integers(0, 1000)),
        st.tuples(st.just("prefetch"), st.integers(0, 4), st.integers(0, 30)),
    ),
    max_size=120,
)


class PolicyConformance(ABC):
    """The contract every live policy keeps; subclass and implement :meth:`make`."""

    @abstractmethod
    def make(self) -> Policy:
        """A new policy under test."""

    def test_registered_by_name(self) -> None:
        policy = self.make()
        assert policy.name in POLICY_NAMES
        assert type(make_policy(policy.name)) is type(policy)

    def test_metadata_within_budget(self) -> None:
        assert 0 < self.make().metadata_bytes_per_shard() <= 64

    # One test body runs for every subclass: that is the point of a conformance suite.
    @settings(
        max_examples=60, deadline=None, suppress_health_check=[HealthCheck.differing_executors]
    )
    @given(ops=OPS, capacity=st.integers(8, 60))
    def test_random_driving_keeps_the_contract(
        self, ops: list[tuple[str, int, int]], capacity: int
    ) -> None:
        model = HotModel(self.make(), capacity)
        policy = model.policy
        for op, a, b in ops:
            if op == "read":
                model.read(a, b)
            elif op == "write" and b <= capacity:
                if a in model.hot:
                    model.remove(a)
                free = capacity - model.used
                if b > free:
                    for victim in model.victims(b - free):
                        model.remove(victim)
                if capacity - model.used >= b:
                    model.insert(a, b)
            elif op == "delete" and a in model.hot:
                model.remove(a)
            elif op == "pin" and a in model.hot:
                model.pinned.add(a)
            elif op == "victims":
                model.victims(b)
            elif op == "declare":
                # Plans may name keys never read and keys outside any trace.
                keys = [(k * 7 + a) % 50 for k in range(b)]
                policy.declare_plan(f"job{a}", keys, [1 + k % 8 for k in keys], model.now)
            elif op == "report":
                policy.report_position(f"job{a}", b, model.now)
            elif op == "close":
                policy.close_plan(f"job{a}")
            elif op == "wait":
                model.now += b  # long enough, at times, for plans to expire
            elif op == "prefetch":
                budget = PrefetchBudget(requests=a, bytes=b)
                wanted = policy.prefetch(model.now, budget, lambda key: key in model.hot)
                assert len(wanted) <= a
                assert len(wanted) == len(set(wanted))
                assert all(key not in model.hot for key in wanted)
        assert model.used <= capacity

    def test_pinned_keys_are_never_victims(self) -> None:
        model = HotModel(self.make(), 100)
        for key in range(20):
            model.insert(key, 5)
            model.read(key, 5)
        model.pinned = set(range(0, 20, 2))
        chosen = model.victims(1000)
        assert set(chosen) == set(range(1, 20, 2))

    def test_victims_not_removed_stay_hot_and_are_offered_again(self) -> None:
        model = HotModel(self.make(), 100)
        for key in range(10):
            model.insert(key, 10)
        first = model.victims(10)
        second = model.victims(10)  # the driver evicted nothing in between
        assert first and second
        for key in first:
            model.remove(key)
        assert all(key not in model.hot for key in first)
        model.victims(10)

    def test_reinserting_updates_the_size(self) -> None:
        model = HotModel(self.make(), 100)
        model.insert("a", 3)
        model.insert("a", 30)
        assert model.policy.victims(30, 1.0, lambda key: True) == ["a"]

    def test_unknown_keys_and_jobs_are_ignored(self) -> None:
        policy = self.make()
        policy.removed("never-seen")
        policy.report_position("no-such-job", 5, 1.0)
        policy.close_plan("no-such-job")
        assert policy.victims(10, 1.0, lambda key: True) == []
        assert policy.prefetch(1.0, PrefetchBudget(4, 100), lambda key: False) == []

    def test_a_plan_whose_keys_and_sizes_differ_is_refused(self) -> None:
        # The contract's one plan error; lru, s3fifo and epoch-pin took one silently.
        policy = self.make()
        with pytest.raises(InvalidPlan):
            policy.declare_plan("job", [1, 2], [1], 0.0)

    def test_prefetch_keeps_to_the_bytes_but_never_starves_a_large_key(self) -> None:
        # Cold planned keys: 0 is larger than every budget below, the rest 10 bytes.
        # A policy that prefetches names keys adding up to at most the budget's bytes,
        # except that its most urgent key comes first even when it alone is larger
        # (the driver fetches it, alone, when nothing else is in flight): else that
        # key could never be prefetched.
        policy = self.make()
        sizes = {0: 30, 1: 10, 2: 10, 3: 10, 4: 10}
        policy.declare_plan("job", list(sizes), list(sizes.values()), 0.0)

        def cold(key: Key) -> bool:
            return False

        roomy = policy.prefetch(0.0, PrefetchBudget(requests=4, bytes=1000), cold)
        if not roomy:
            return  # a policy that never prefetches keeps this part of the contract
        assert len(roomy) <= 4 and set(roomy) <= set(sizes)
        for budget in (PrefetchBudget(8, 25), PrefetchBudget(8, 5), PrefetchBudget(1, 25)):
            wanted = policy.prefetch(0.0, budget, cold)
            assert len(wanted) <= budget.requests and len(set(wanted)) == len(wanted)
            rest = wanted[1:] if wanted and sizes[wanted[0]] > budget.bytes else wanted
            assert sum(sizes[key] for key in rest) <= budget.bytes, (budget, wanted)
            if roomy[0] == 0:
                assert wanted[:1] == [0], (budget, wanted)  # the most urgent, however large

    def test_admits_when_there_is_room(self) -> None:
        policy = self.make()
        policy.record_access("new", 5, 1.0, False)
        assert policy.admit("new", 5, 1.0, free_bytes=5)

    def test_opaque_keys(self) -> None:
        model = HotModel(self.make(), 30)
        keys: list[Key] = [("dataset", "shard-1"), ("dataset", "shard-2"), 7, "x", None]
        for key in keys * 3:
            model.read(key, 10)
        assert set(model.hot) <= set(keys)
