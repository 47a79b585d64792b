"""How big should the hot tier be? LRU miss-ratio curves from a sample of the keys.

SHARDS (Waldspurger et al., "Efficient MRC Construction with SHARDS", FAST'15):
a key is sampled when ``hash(key) mod P < T`` (rate ``R = T / P``), so every access
to a sampled key is kept and every access to another key is dropped. Over the
sampled stream we measure each access's reuse (stack) distance in bytes: the bytes
of the distinct keys read since the previous access to the same key. Only a
fraction ``R`` of those keys is in the sample, so that sum is scaled by ``1/R``;
the key's own size is added unscaled, since it is always in the sample. An LRU
cache of ``C`` bytes hits an access exactly when its distance is at most ``C``
(LRU keeps the longest most-recently-used prefix of the recency stack that fits),
so the curve is one pass and one histogram over the requested capacities.

Counts follow SHARDS_adj: a few hot keys dominate the sample's hits, so the number
of sampled accesses swings with whether they are sampled. Misses are spread over
many keys and are the steadier count, so the miss ratio is sampled misses over the
*expected* sample size ``N * R`` (for capacities at or above the smallest distance
seen; below it everything misses). With ``R = 1`` this is exact LRU.

Distances come from a Fenwick tree over access times in which each key holds its
size at the time of its latest access; the tree is compacted (times renumbered)
when full, so memory stays proportional to the sampled keys, not the accesses.

Accuracy is set by the number of sampled accesses, not by the rate as such: the
error is the variance of which popular keys land in the sample (the estimate is
unbiased). On 100,000 Zipf(0.9) reads over 50,000 shards of 32-64 MiB, over 50
seeds, the worst error across capacities of 2-50% had a median of 0.025 at
R = 0.1 (10,000 sampled reads; 60% of seeds within 0.03) and 0.087 at R = 0.01;
the mean curve of 8 seeds at R = 0.1 was within 0.005. A million reads at R = 0.01
did about as well as 100,000 at R = 0.1: aim for 10,000 sampled reads or more.

Keys are hashed with xxh64 over ``repr(key)`` (Python's ``hash`` is salted per
process), so keys must have a stable repr: ints, strings, bytes, tuples of them.
A key whose size changes counts at its newest size from its next access on.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterable, Sequence

import xxhash

from tierstore.errors import InvalidArgument

__all__ = ["MissRatioEstimator", "miss_ratio_curve"]

#: the hash modulus P; 2**24 gives sampling rates down to 6e-8.
_MODULUS = 1 << 24
_MIN_TREE = 1024


class _Fenwick:
    """Prefix sums over slots 0..n-1 (a binary indexed tree of ints)."""

    __slots__ = ("_tree",)

    def __init__(self, n: int) -> None:
        self._tree = [0] * (n + 1)

    def __len__(self) -> int:
        return len(self._tree) - 1

    def add(self, slot: int, delta: int) -> None:
        i = slot + 1
        tree = self._tree
        while i < len(tree):
            tree[i] += delta
            i += i & -i

    def prefix(self, end: int) -> int:
        """Sum of slots 0..end-1."""
        total = 0
        i = end
        tree = self._tree
        while i > 0:
            total += tree[i]
            i -= i & -i
        return total


class MissRatioEstimator:
    """An LRU miss-ratio curve built one access at a time (fixed-rate SHARDS).

    ``capacities`` are the cache sizes (bytes) the curve is wanted at, in any order;
    ``sample_rate`` is in (0, 1]; ``seed`` picks which keys are sampled. Raises
    InvalidArgument for a rate outside (0, 1] or a negative capacity. Not
    thread-safe: one writer, or a lock around :meth:`add` and :meth:`miss_ratios`.
    """

    def __init__(
        self, capacities: Sequence[int], *, sample_rate: float = 0.01, seed: int = 0
    ) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise InvalidArgument(f"sample_rate must be in (0, 1], got {sample_rate}")
        if any(c < 0 for c in capacities):
            raise InvalidArgument(f"capacities must not be negative, got {list(capacities)}")
        self._capacities = list(capacities)
        self._sorted = sorted(set(self._capacities))
        self._threshold = max(1, round(sample_rate * _MODULUS))
        self._rate = self._threshold / _MODULUS  # the rate actually applied
        self._seed = seed
        # _hits[i]: sampled reuses whose distance lies in (_sorted[i-1], _sorted[i]].
        self._hits = [0] * len(self._sorted)
        self._accesses = 0
        self._sampled = 0
        self._min_distance = float("inf")
        self._last: dict[Hashable, tuple[int, int]] = {}  # key -> (time slot, size)
        self._tree = _Fenwick(_MIN_TREE)
        self._now = 0

    @property
    def accesses(self) -> int:
        """Accesses added so far, sampled or not."""
        return self._accesses

    @property
    def sampled_accesses(self) -> int:
        """Accesses to sampled keys so far (about ``accesses * sample_rate``)."""
        return self._sampled

    @property
    def sampled_keys(self) -> int:
        """Distinct sampled keys so far: what the estimator's memory grows with."""
        return len(self._last)

    def add(self, key: Hashable, size: int) -> None:
        """Note one access to ``key`` of ``size`` bytes (amortised O(log n)).

        Raises InvalidArgument for a negative size (and counts nothing).
        """
        if size < 0:
            raise InvalidArgument(f"size must not be negative, got {size}")
        self._accesses += 1
        digest = xxhash.xxh64_intdigest(repr(key).encode(), seed=self._seed)
        if digest % _MODULUS >= self._threshold:
            return
        self._sampled += 1
        if self._now == len(self._tree):
            self._compact()
        previous = self._last.get(key)
        if previous is not None:
            slot, old_size = previous
            others = self._tree.prefix(self._now) - self._tree.prefix(slot + 1)
            distance = others / self._rate + size
            self._min_distance = min(self._min_distance, distance)
            index = bisect.bisect_left(self._sorted, distance)
            if index < len(self._hits):
                self._hits[index] += 1
            self._tree.add(slot, -old_size)
        self._tree.add(self._now, size)
        self._last[key] = (self._now, size)
        self._now += 1

    def miss_ratios(self) -> list[float]:
        """The estimated LRU miss ratio at each capacity, in the order given.

        1.0 everywhere before any access; every value lies in [0, 1].
        """
        expected = self._accesses * self._rate
        by_capacity: dict[int, float] = {}
        hits = 0
        for capacity, count in zip(self._sorted, self._hits, strict=True):
            hits += count
            if expected == 0 or capacity < self._min_distance:
                by_capacity[capacity] = 1.0
            else:
                by_capacity[capacity] = min(1.0, max(0.0, (self._sampled - hits) / expected))
        return [by_capacity[c] for c in self._capacities]

    def _compact(self) -> None:
        # Only each key's latest slot holds bytes: renumber those slots 0..k-1 in
        # time order, so the tree needs room for the keys, not for every access.
        order = sorted(self._last.items(), key=lambda item: item[1][0])
        self._tree = _Fenwick(max(_MIN_TREE, 2 * len(order)))
        for slot, (key, (_, size)) in enumerate(order):
            self._tree.add(slot, size)
            self._last[key] = (slot, size)
        self._now = len(order)


def miss_ratio_curve(
    accesses: Iterable[tuple[Hashable, int]],
    capacities: Sequence[int],
    *,
    sample_rate: float = 0.01,
    seed: int = 0,
) -> list[float]:
    """The LRU miss ratio at each of ``capacities`` (bytes) for ``(key, size)`` accesses.

    Pure and deterministic for a given ``seed``; with ``sample_rate=1.0`` it equals
    an exact LRU simulation. Raises InvalidArgument for a rate outside (0, 1] or a
    negative capacity.
    """
    estimator = MissRatioEstimator(capacities, sample_rate=sample_rate, seed=seed)
    for key, size in accesses:
        estimator.add(key, size)
    return estimator.miss_ratios()
