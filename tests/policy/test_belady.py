"""Belady's offline optimum: optimal on small cases by exhaustive search; the
size-aware variant; the future it is given must be the one replayed."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierstore.errors import InvalidArgument
from tierstore.policy.belady import BeladyPolicy, BeladySizePolicy
from tierstore.sim.events import Read, Trace
from tierstore.sim.simulator import simulate_offline


def best_hits(sequence: tuple[int, ...], capacity: int) -> int:
    """The most hits any policy can get (unit sizes): every decision on every miss —
    bypass, fill a free slot, or evict any one resident — tried exhaustively."""

    @functools.cache
    def best(i: int, hot: frozenset[int]) -> int:
        if i == len(sequence):
            return 0
        key = sequence[i]
        if key in hot:
            return 1 + best(i + 1, hot)
        options = [best(i + 1, hot)]  # bypass
        if len(hot) < capacity:
            options.append(best(i + 1, hot | {key}))
        else:
            options.extend(best(i + 1, (hot - {victim}) | {key}) for victim in hot)
        return max(options)

    return best(0, frozenset())


def unit_trace(sequence: list[int], shards: int) -> Trace:
    return Trace("t", (1,) * shards, [Read(float(t), key) for t, key in enumerate(sequence)])


@settings(max_examples=150, deadline=None)
@given(
    sequence=st.lists(st.integers(0, 5), max_size=14),
    capacity=st.integers(1, 4),
)
def test_belady_is_optimal_on_small_cases(sequence: list[int], capacity: int) -> None:
    result = simulate_offline(unit_trace(sequence, 6), capacity)
    assert result.hits == best_hits(tuple(sequence), capacity)


def test_belady_keeps_c_of_a_loop() -> None:
    sequence = list(range(10)) * 6
    result = simulate_offline(unit_trace(sequence, 10), 4, warmup_reads=10)
    assert result.hits == 4 * 5


def test_the_future_must_be_the_one_replayed() -> None:
    policy = BeladyPolicy(future=[1, 2, 3])
    policy.record_access(1, 1, 0.0, False)
    with pytest.raises(InvalidArgument, match="future"):
        policy.record_access(3, 1, 1.0, False)


def test_reads_past_the_future_are_refused_loudly() -> None:
    policy = BeladySizePolicy(future=[1])
    policy.record_access(1, 1, 0.0, False)
    with pytest.raises(InvalidArgument):
        policy.record_access(1, 1, 1.0, True)


def test_belady_size_evicts_the_most_bytes_times_distance() -> None:
    policy = BeladySizePolicy(future=["a", "b", "c", "b", "a", "c"])
    for key, size in (("a", 10), ("b", 1), ("c", 4)):
        policy.record_access(key, size, 0.0, False)
        policy.inserted(key, size, 0.0)
    # now at step 3: b is due in 0 reads (x1 = 0), a in 1 (x10 = 10), c in 2 (x4 = 8).
    assert policy.victims(1, 0.0, lambda key: True) == ["a"]
    assert policy.victims(11, 0.0, lambda key: key != "a") == ["c", "b"]


def test_belady_size_bypasses_a_big_shard_due_late() -> None:
    policy = BeladySizePolicy(future=["s", "big", "s", "big"])
    policy.record_access("s", 1, 0.0, False)
    policy.inserted("s", 1, 0.0)
    policy.record_access("big", 100, 1.0, False)
    assert not policy.admit("big", 100, 1.0, free_bytes=0)
    assert policy.admit("big", 100, 1.0, free_bytes=100)


def test_keys_outside_the_future_are_never_needed() -> None:
    policy = BeladyPolicy(future=[1, 1])
    policy.inserted("stranger", 1, 0.0)
    policy.record_access(1, 1, 0.0, False)
    policy.inserted(1, 1, 0.0)
    assert policy.victims(1, 0.0, lambda key: True) == ["stranger"]


@pytest.mark.parametrize("again", ["size update", "removed first"])
def test_a_key_inserted_again_is_named_once_among_the_victims(again: str) -> None:
    # Inserted again with the same next use (a size update, or an overwrite: removed,
    # then inserted), the key's old heap entry passed for current again beside the new
    # one, and a walk past it named the key twice: a driver evicting both freed its
    # bytes twice (the simulator's tier found a victim that was not hot).
    policy = BeladyPolicy(future=["a", "b", "a", "b"])
    policy.inserted("a", 10, 0.0)
    policy.inserted("b", 10, 0.0)
    if again == "removed first":
        policy.removed("a")
    policy.inserted("a", 10, 0.0)
    assert sorted(policy.victims(30, 0.0, lambda key: True)) == ["a", "b"]
