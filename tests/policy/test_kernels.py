"""Each numba kernel agrees with its plain-Python twin on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierstore.policy.kernels import (
    decayed_frequency,
    decayed_frequency_py,
    farthest_weighted,
    farthest_weighted_py,
    next_use_times,
    next_use_times_py,
)

SEEDS = st.integers(0, 2**32 - 1)


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, slots=st.integers(1, 50), picks=st.integers(0, 30))
def test_decayed_frequency_agrees(seed: int, slots: int, picks: int) -> None:
    rng = np.random.default_rng(seed)
    score = rng.uniform(0, 10, slots).astype(np.float32)
    stamp = rng.uniform(0, 1000, slots)
    chosen = rng.integers(0, slots, picks)
    tick, half_life = float(rng.uniform(1000, 2000)), float(rng.uniform(1, 500))
    fast = decayed_frequency(score, stamp, chosen, tick, half_life)
    np.testing.assert_allclose(fast, decayed_frequency_py(score, stamp, chosen, tick, half_life))


def csr(plans: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Plans as the plan index stores them: per job, CSR over slots, end to end."""
    offsets, entries = [], []
    for plan in plans:
        span = int(plan.max()) + 1 if len(plan) else 0
        offsets.append(np.concatenate(([0], np.cumsum(np.bincount(plan, minlength=span)))))
        entries.append(np.argsort(plan, kind="stable"))
    offset_starts = np.concatenate(([0], np.cumsum([len(o) for o in offsets])))
    entry_starts = np.concatenate(([0], np.cumsum([len(e) for e in entries])))
    joined_offsets = np.concatenate(offsets) if plans else np.zeros(0)
    joined_entries = np.concatenate(entries) if plans else np.zeros(0)
    return (
        joined_offsets.astype(np.uint32),
        offset_starts.astype(np.int64),
        joined_entries.astype(np.uint32),
        entry_starts.astype(np.int64),
    )


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, jobs=st.integers(0, 5), slots=st.integers(1, 30), length=st.integers(0, 60))
def test_next_use_times_agrees(seed: int, jobs: int, slots: int, length: int) -> None:
    rng = np.random.default_rng(seed)
    plans = [rng.integers(0, slots, rng.integers(0, length + 1)) for _ in range(jobs)]
    index = csr(plans)
    positions = rng.integers(0, length + 2, jobs)
    rates = rng.uniform(0.1, 10, jobs)
    candidates = rng.integers(-1, slots + 2, 20)  # some slots in no plan
    fast = next_use_times(*index, positions, rates, candidates)
    slow = next_use_times_py(*index, positions, rates, candidates)
    np.testing.assert_allclose(fast, slow)


def test_next_use_times_by_hand() -> None:
    # Two jobs: [7, 3, 7] at position 1 reading 2 entries a second; [5, 7] at 0, 1/s.
    index = csr([np.array([7, 3, 7]), np.array([5, 7])])
    times = next_use_times(*index, np.array([1, 0]), np.array([2.0, 1.0]), np.array([7, 3, 5, 9]))
    assert times.tolist() == [0.5, 0.0, 0.0, np.inf]


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, count=st.integers(0, 40), step=st.integers(0, 100))
def test_farthest_weighted_agrees(seed: int, count: int, step: int) -> None:
    rng = np.random.default_rng(seed)
    next_use = rng.integers(step, step + 50, count)
    weight = rng.integers(1, 5, count).astype(np.float64)  # ties are likely: first wins
    index, score = farthest_weighted(next_use, weight, step)
    assert (index, score) == pytest.approx(farthest_weighted_py(next_use, weight, step))
