"""The policies' numeric kernels, compiled by numba, each with a plain-Python twin.

Every kernel ``f`` has a twin ``f_py`` that computes the same result with ordinary
Python (tests check that they agree on random inputs); the twins document the
arithmetic and serve when a reader wants to step through it. Kernels take only
numpy arrays and scalars, never Python objects, and release the GIL.

The kernels are few on purpose: each costs a compile on first use (``cache=True``
keeps the machine code in ``__pycache__`` for the next process, where it can be
written: :mod:`tierstore.compiled`).

Occurrence index (built by :mod:`tierstore.policy.plan_index`): each live plan (a
*job*) is CSR over slots — job ``j``'s offsets are ``offsets[o:o2]`` with
``o = offset_starts[j]``, ``o2 = offset_starts[j + 1]`` (one per slot, plus one),
and slot ``s``'s entry positions, ascending, are
``entries[e + offsets[o + s] : e + offsets[o + s + 1]]`` with ``e = entry_starts[j]``.
The next entry of ``s`` at or after position ``p`` is a binary search in that short
run (one entry per epoch the plan spans).
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from tierstore.compiled import njit

__all__ = [
    "decayed_frequency",
    "decayed_frequency_py",
    "farthest_weighted",
    "farthest_weighted_py",
    "next_use_times",
    "next_use_times_py",
]

F64Array = npt.NDArray[np.float64]


@njit
def decayed_frequency(
    score: Any, stamp: Any, slots: Any, tick: float, half_life: float
) -> Any:  # pragma: no cover - compiled; its twin below is what coverage sees
    """``score[s] * 2 ** (-(tick - stamp[s]) / half_life)`` for each ``s`` in ``slots``:
    a read count that halves every ``half_life`` ticks, evaluated at ``tick``."""
    out = np.empty(len(slots), dtype=np.float64)
    for i in range(len(slots)):
        s = slots[i]
        out[i] = score[s] * 2.0 ** (-(tick - stamp[s]) / half_life)
    return out


def decayed_frequency_py(
    score: Any, stamp: Any, slots: Any, tick: float, half_life: float
) -> F64Array:
    """Plain-Python twin of :func:`decayed_frequency`."""
    return np.array(
        [float(score[s]) * 2.0 ** (-(tick - float(stamp[s])) / half_life) for s in slots],
        dtype=np.float64,
    )


@njit
def next_use_times(
    offsets: Any,
    offset_starts: Any,
    entries: Any,
    entry_starts: Any,
    positions: Any,
    rates: Any,
    slots: Any,
) -> Any:  # pragma: no cover - compiled; its twin below is what coverage sees
    """For each slot: the estimated seconds until its next planned read, over all jobs.

    Job ``j`` is at ``positions[j]`` and reads ``rates[j]`` entries per second; a slot
    whose next entry in the job's plan (at or after the position) is at ``q`` is due
    in ``(q - positions[j]) / rates[j]`` seconds. The result is the minimum over
    jobs, or ``inf`` when no job will read the slot. O(jobs * log epochs) per slot.
    """
    jobs = len(positions)
    out = np.full(len(slots), np.inf, dtype=np.float64)
    # Two passes: first every (slot, job) run bound, then the searches. The loads of
    # the first pass are independent of one another, so the CPU overlaps their cache
    # misses instead of waiting for each in turn (with a million shards, nearly
    # every lookup misses the cache).
    firsts = np.empty((len(slots), jobs), dtype=np.int64)
    stops = np.empty((len(slots), jobs), dtype=np.int64)
    for i in range(len(slots)):
        slot = slots[i]
        for j in range(jobs):
            base = offset_starts[j]
            if slot < 0 or slot + 1 >= offset_starts[j + 1] - base:
                firsts[i, j] = stops[i, j] = 0  # a slot the plan does not name
            else:
                firsts[i, j] = entry_starts[j] + offsets[base + slot]
                stops[i, j] = entry_starts[j] + offsets[base + slot + 1]
    for i in range(len(slots)):
        for j in range(jobs):
            low, high = firsts[i, j], stops[i, j]
            position = positions[j]
            while low < high:  # the first entry at or after the position
                middle = (low + high) >> 1
                if entries[middle] < position:
                    low = middle + 1
                else:
                    high = middle
            if low < stops[i, j]:
                due = (np.int64(entries[low]) - position) / rates[j]
                if due < out[i]:
                    out[i] = due
    return out


def next_use_times_py(
    offsets: Any,
    offset_starts: Any,
    entries: Any,
    entry_starts: Any,
    positions: Any,
    rates: Any,
    slots: Any,
) -> F64Array:
    """Plain-Python twin of :func:`next_use_times`."""
    out: list[float] = []
    for slot in (int(s) for s in slots):
        best = math.inf
        for j in range(len(positions)):
            base = int(offset_starts[j])
            if slot < 0 or slot + 1 >= int(offset_starts[j + 1]) - base:
                continue
            first = int(entry_starts[j]) + int(offsets[base + slot])
            stop = int(entry_starts[j]) + int(offsets[base + slot + 1])
            k = bisect.bisect_left(entries, int(positions[j]), first, stop)
            if k < stop:
                best = min(best, (int(entries[k]) - int(positions[j])) / float(rates[j]))
        out.append(best)
    return np.array(out, dtype=np.float64)


@njit
def farthest_weighted(
    next_use: Any, weight: Any, step: int
) -> Any:  # pragma: no cover - compiled; its twin below is what coverage sees
    """``(i, score)`` of the largest ``score = (next_use[i] - step) * weight[i]`` (the
    first such ``i`` on ties); ``(-1, -inf)`` for empty input. One pass, no temporaries."""
    best, best_score = -1, -np.inf
    for i in range(len(next_use)):
        score = (next_use[i] - step) * weight[i]
        if score > best_score:
            best, best_score = i, score
    return best, best_score


def farthest_weighted_py(next_use: Any, weight: Any, step: int) -> tuple[int, float]:
    """Plain-Python twin of :func:`farthest_weighted`."""
    best, best_score = -1, -math.inf
    for i, (upcoming, w) in enumerate(zip(next_use, weight, strict=True)):
        score = float(int(upcoming) - step) * float(w)
        if score > best_score:
            best, best_score = i, score
    return best, best_score
