"""The engine's side of the placement-policy contract: one policy object per dataset.

:class:`PolicyDriver` owns a :class:`~tierstore.policy.base.Policy` for every
dataset (the one its settings name, changeable at run time) and tells it what
happens, in the order :mod:`tierstore.policy.base` asks for:

* a read: ``record_access(hit)``, then on a miss ``admit`` — a refused shard is
  served from the archive and not promoted;
* a shard that turns hot (written, promoted, prefetched, found hot at start):
  ``inserted``; one that leaves the hot tier (evicted, deleted, overwritten):
  ``removed``;
* eviction: ``victims`` with an ``evictable`` predicate (archived, not pinned —
  the engine's rules override any policy), then ``removed`` per shard evicted;
* prefetch: ``prefetch`` within a :class:`~tierstore.policy.base.PrefetchBudget`;
* access plans: ``declare_plan`` / ``report_position`` / ``close_plan``.

Keys are ``(dataset, shard name)``; sizes are stored bytes (what the hot tier
holds). ``now`` is the monotonic clock, on the wall clock's scale as of the
driver's start (it never goes back, nor stands still when the system clock is set
back).

**Eviction across datasets.** The hot tier is shared, so bytes to free are split
among the datasets in proportion to the bytes each holds hot (rounded up): a
dataset holding 60 % of the hot bytes frees 60 % of them, chosen by its own
policy. Whatever a dataset cannot free (everything else of it is pinned or not
archived yet) is asked of the others, largest first. A promotion's room (one
shard's) is asked of one dataset at a time: first of those no longer in use (none
of their shards read or gone hot in the last tier's worth of reads), least recently
used first, then of the others, largest first. Largest first alone kept a dataset
read once and never again holding half the tier for good, while the one being read
evicted its own shards to promote others.

Thread safety and lock order: every policy call runs under the driver's one lock
(policies are not thread-safe). Calls that change the hot set are made *inside*
the LMDB write transaction that changes it, as its last steps, so they reach the
policies in commit order; so the order is **LMDB write transaction → driver
lock**, and the driver lock is never held while a write transaction is begun.
The ``evictable``, ``is_hot``, ``arriving`` and ``size_of`` callbacks run under the
driver lock and must not call back into the driver.

Invariant, and its one gap: the policies hold hot exactly the shards the catalog
does. A transaction that fails after telling the policies (at its commit, or at a
later shard of a transaction that changes several, e.g. on a full disk) breaks
it; eviction then forgets any key the policies hold hot and the catalog does
not, and the next start seeds the policies afresh.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from tierstore.engine.access import AccessRecorder
from tierstore.engine.catalog import Catalog
from tierstore.engine.records import ShardRecord
from tierstore.engine.sealing import stored_size
from tierstore.errors import InvalidArgument, UnknownPolicy
from tierstore.policy.base import Key, Policy, PrefetchBudget
from tierstore.policy.registry import DEFAULT_POLICY, make_driven_policy

__all__ = ["HotShard", "PolicyDriver", "hot_shards", "shard_of"]


log = logging.getLogger(__name__)

#: A hot shard as the driver seeds a policy with it: key, stored bytes, and the time
#: that orders it (its last read, or its creation if never read).
HotShard = tuple[Key, int, float]


class PolicyDriver:
    """One placement policy per dataset, driven in the contract's order. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._policies: dict[str, Policy] = {}
        self._sizes: dict[Key, int] = {}  # hot keys the policies were told of, and sizes
        #: per dataset: its keys in _sizes. Finding them by a scan of _sizes made a
        #: start (a seed per dataset) quadratic: 9 s of a 12.5 s start at 100,000 hot
        #: shards of 400 datasets.
        self._keys_of: dict[str, set[Key]] = {}
        self._hot_bytes: dict[str, int] = {}  # per dataset: the sum of its _sizes
        self._clock = 0.0
        #: the wall clock's reading at monotonic time 0, as of the driver's start: its
        #: clock runs on the monotonic one (see :meth:`_tick`).
        self._epoch = time.time() - time.monotonic()
        self._rotation = 0
        #: reads told so far, and per dataset the count at its last read or shard
        #: gone hot: which datasets are idle (see :meth:`_promotion_order`).
        self._reads = 0
        self._last_used: dict[str, int] = {}
        #: per thread: the changes recorded by each open :meth:`undone_on_failure`.
        self._undo = threading.local()

    # Datasets and their policies.

    @staticmethod
    def check(name: str) -> None:
        """Raise UnknownPolicy (no policy of that name) or InvalidArgument (an offline-only
        policy) unless a live policy is called ``name``."""
        _build(name)

    def open_dataset(self, dataset: str, name: str, hot: Iterable[HotShard] = ()) -> str:
        """Give ``dataset`` a new policy called ``name`` that knows its ``hot`` shards
        (inserted in the order given: oldest first). Returns the name of the policy in
        force — ``name``, or the default (then ``lru``) when no policy of that name is
        available, as for a setting written by another release."""
        policy = _make_available(name)
        with self._lock:
            self._seed(dataset, policy, hot)
        return policy.name

    def set_policy(self, dataset: str, name: str, hot: Iterable[HotShard]) -> None:
        """Replace ``dataset``'s policy with a new ``name`` policy seeded with its ``hot``
        shards (oldest first). Plans are not carried over: the caller declares them again.
        Call inside the write transaction that stores the setting. Raises UnknownPolicy.
        """
        policy = _build(name)
        with self._lock:
            self._seed(dataset, policy, hot)

    def drop_dataset(self, dataset: str) -> Policy | None:
        """Forget ``dataset`` and its policy (after its shards were removed, which an
        open undo puts back). Returns the policy, for :meth:`restore_dataset` should
        the deletion fail."""
        with self._lock:
            self._forget_keys_of(dataset)  # drift only: removing its shards cleared the rest
            self._hot_bytes.pop(dataset, None)
            self._last_used.pop(dataset, None)
            return self._policies.pop(dataset, None)

    def restore_dataset(self, dataset: str, policy: Policy | None) -> None:
        """Put back the policy :meth:`drop_dataset` forgot (its deletion failed to
        commit); the undo then tells it of the shards the dataset still holds."""
        if policy is not None:
            with self._lock:
                self._policies[dataset] = policy

    def policy_name(self, dataset: str) -> str:
        """The name of the policy in force for ``dataset`` (the default if it has none)."""
        with self._lock:
            policy = self._policies.get(dataset)
            return policy.name if policy is not None else DEFAULT_POLICY

    # The hot set (call inside the write transaction that changes it).

    def inserted(self, key: Key, size: int) -> None:
        """``key`` turned hot holding ``size`` stored bytes (or changed size)."""
        with self._lock:
            self._note(key)
            self._insert(key, size, self._tick())
            # A dataset whose shards go hot is in use, read yet or not (prefetched
            # ahead of its readers, written): not idle.
            self._last_used[_dataset_of(key)] = self._reads

    def removed(self, key: Key) -> None:
        """``key`` left the hot tier. Nothing happens for a key the driver holds cold."""
        with self._lock:
            self._note(key)
            self._remove(key)

    @contextmanager
    def undone_on_failure(self) -> Iterator[None]:
        """Undo what this thread tells the policies inside the block if the block
        raises. Open it around a write transaction (outside it, so that a failed
        commit is seen): the hot set is told of inside the transaction, before its
        commit, which can still fail (a full map). Without the undo a policy could
        forget a shard that stays hot, and then never evict it."""
        logs: list[list[tuple[Key, int | None]]] = self._undo.__dict__.setdefault("logs", [])
        log: list[tuple[Key, int | None]] = []
        logs.append(log)
        try:
            yield
        except BaseException:
            with self._lock:
                now = self._tick()
                for key, size in reversed(log):
                    self._remove(key)
                    if size is not None:
                        self._insert(key, size, now)
            raise
        finally:
            logs.pop()

    def _note(self, key: Key) -> None:
        """Under the lock: record ``key``'s size before a change, for an open undo."""
        logs = self._undo.__dict__.get("logs")
        if logs:
            logs[-1].append((key, self._sizes.get(key)))

    # Reads.

    def read(self, key: Key, size: int, hit: bool, free_bytes: int) -> bool:
        """One read of ``key``; on a miss, whether the policy admits it to the hot tier.

        ``free_bytes``: room left below the high watermark. Returns True for a hit.
        A read of a dataset with no policy (deleted since the read found its shard) is
        not told to any, and a miss of it is not admitted.
        """
        with self._lock:
            # Never made here: a policy made for a dataset its deletion forgot would be
            # kept for good (see _policy).
            dataset = _dataset_of(key)
            policy = self._policies.get(dataset)
            if policy is None:
                return hit
            self._reads += 1
            self._last_used[dataset] = self._reads
            now = self._tick()
            policy.record_access(key, size, now, hit)
            return hit or policy.admit(key, size, now, free_bytes)

    # Eviction.

    def hot_bytes(self, dataset: str) -> int:
        """Stored bytes of ``dataset``'s hot shards, as the policies were told of them
        (exact inside a write transaction: every hot-set change tells the driver in one)."""
        with self._lock:
            return self._hot_bytes.get(dataset, 0)

    def hot_keys(self, at_most: int) -> list[Key]:
        """Up to ``at_most`` of the keys the policies hold hot (those eviction may
        reach), in the order they went hot. O(at_most); asks no policy."""
        with self._lock:
            return list(itertools.islice(self._sizes, at_most))

    def dataset_victims(
        self, dataset: str, bytes_to_free: int, evictable: Callable[[Key], bool]
    ) -> list[Key]:
        """Hot keys of ``dataset`` alone to evict, as its policy chooses them (for its
        quota). The keys stay hot for the policies until :meth:`removed` is called."""
        if bytes_to_free <= 0:
            return []
        with self._lock:
            policy = self._policies.get(dataset)
            if policy is None:
                return []
            return list(policy.victims(bytes_to_free, self._tick(), evictable))

    def victims(
        self, bytes_to_free: int, evictable: Callable[[Key], bool], *, spread: bool = True
    ) -> list[Key]:
        """Hot keys to evict, freeing at least ``bytes_to_free`` if enough are evictable,
        split across datasets by their hot bytes (see the module docstring); without
        ``spread``, taken from the idle datasets first, then from those holding the
        most hot bytes (:meth:`_promotion_order`), each asked only for what is still
        needed (a promotion's room: a share of at least one byte each would cost every
        dataset a whole shard). The keys stay hot for the policies
        until :meth:`removed` is called for each."""
        if bytes_to_free <= 0:
            return []
        with self._lock:
            now = self._tick()
            total = sum(self._hot_bytes.values())
            if total <= 0:
                return []
            chosen: list[Key] = []
            taken: set[Key] = set()

            def allowed(key: Key) -> bool:
                return key not in taken and evictable(key)

            def take(policy: Policy, wanted: int) -> int:
                freed = 0
                for key in policy.victims(wanted, now, allowed):
                    if key not in taken:
                        taken.add(key)
                        chosen.append(key)
                        freed += self._sizes.get(key, 0)
                return freed

            largest_first = sorted(self._hot_bytes.items(), key=lambda item: -item[1])
            freed = 0
            for dataset, hot in largest_first if spread else ():
                share = math.ceil(bytes_to_free * hot / total)
                if hot > 0 and dataset in self._policies:
                    freed += take(self._policies[dataset], share)
            for dataset, hot in largest_first if spread else self._promotion_order():
                if freed >= bytes_to_free:
                    break
                if hot > 0 and dataset in self._policies:
                    freed += take(self._policies[dataset], bytes_to_free - freed)
            return chosen

    def _promotion_order(self) -> list[tuple[str, int]]:
        """Under the lock: the datasets (and hot bytes) a promotion's room is asked of,
        in turn. First the idle ones, least recently used first: none of their shards
        was read or went hot in the last tier's worth of reads (as many as shards are
        hot), so they give way to the datasets in use, as one LRU over the whole tier
        would have them do. Then the others, the most hot bytes first. (A dataset
        unused since the start is idle once that many reads were made.)"""
        window = max(1, len(self._sizes))

        def turn(item: tuple[str, int]) -> tuple[int, int, int]:
            dataset, hot = item
            last = self._last_used.get(dataset, 0)
            if self._reads - last >= window:  # idle
                return (0, last, -hot)
            return (1, 0, -hot)

        return sorted(self._hot_bytes.items(), key=turn)

    # Prefetch.

    def prefetch(
        self,
        budget: PrefetchBudget,
        is_hot: Callable[[Key], bool],
        size_of: Callable[[Key], int],
        *,
        idle: bool = False,
        arriving: Callable[[Key], bool] | None = None,
    ) -> list[Key]:
        """Cold keys to fetch next within ``budget``, asking each dataset's policy in turn
        (starting one further each call, so no dataset always goes first) with what the
        earlier ones left. ``size_of`` gives a key's stored size; ``arriving``, which of
        the keys ``is_hot`` accepts are on their way in (see
        :meth:`~tierstore.policy.base.Policy.prefetch`).

        A key larger than the bytes left is taken only as the first and only key, and
        only when ``idle`` (nothing is in flight, so ``budget.bytes`` is the whole
        horizon), as :class:`~tierstore.policy.base.PrefetchBudget` allows; else it is
        passed over (a later call asks again) and the keys after it are taken as
        they fit."""
        with self._lock:
            now = self._tick()
            datasets = sorted(self._policies)
            if not datasets:
                return []
            self._rotation = (self._rotation + 1) % len(datasets)
            order = datasets[self._rotation :] + datasets[: self._rotation]
            requests, room = budget.requests, budget.bytes
            wanted: list[Key] = []
            seen: set[Key] = set()
            for dataset in order:
                if requests <= 0 or room <= 0:
                    break
                offered = self._policies[dataset].prefetch(
                    now, PrefetchBudget(requests, room), is_hot, arriving=arriving
                )
                for key in offered[:requests]:
                    if key in seen:
                        continue
                    size = size_of(key)
                    if size > room and not (idle and not wanted):
                        continue
                    seen.add(key)
                    wanted.append(key)
                    requests -= 1
                    room -= size
            return wanted

    # Access plans.

    def declare_plan(
        self,
        dataset: str,
        job: str,
        keys: Sequence[Key],
        sizes: Sequence[int],
        position: int = 0,
    ) -> None:
        """``job`` will read ``keys`` of ``dataset`` in order (replacing its earlier plan),
        having read the first ``position`` already (a plan handed to a new policy).
        Nothing happens for a dataset with no policy (deleted meanwhile)."""
        with self._lock:
            policy = self._policies.get(dataset)
            if policy is None:
                return
            now = self._tick()
            policy.declare_plan(job, keys, sizes, now)
            if position:
                # At the declaration's instant: a rate is measured over time between
                # reports, and none passed. Reported a moment later, the position was
                # taken for entries read in that moment (millions a second).
                policy.report_position(job, position, now)

    def report_position(self, dataset: str, job: str, position: int) -> None:
        """``job`` has read the first ``position`` entries of its plan (nothing happens
        for a dataset with no policy: deleted meanwhile)."""
        with self._lock:
            policy = self._policies.get(dataset)
            if policy is not None:
                policy.report_position(job, position, self._tick())

    def close_plan(self, dataset: str, job: str) -> None:
        """``job``'s plan over ``dataset`` is over."""
        with self._lock:
            policy = self._policies.get(dataset)
            if policy is not None:
                policy.close_plan(job)

    # Internals (called with the lock held).

    def _tick(self) -> float:
        # The monotonic clock, on the wall clock's scale as of the start: on the wall
        # clock made monotonic, a system clock set back an hour (an NTP step) had the
        # driver's stand still for that hour, every policy call seeing one instant.
        self._clock = max(self._clock, self._wall_now())
        return self._clock

    def _wall_now(self) -> float:
        """The monotonic clock now, on the wall clock's scale as of the driver's start."""
        return self._epoch + time.monotonic()

    def _policy(self, dataset: str) -> Policy:
        """``dataset``'s policy, made (the default) if it has none: for a shard turning
        hot, whose write transaction holds the dataset, so no deletion's is between.
        Reads and plan calls, which hold no such transaction, never make one: one of a
        dataset whose deletion (its transaction, then :meth:`drop_dataset`) came between
        the call's look-up and the call put back a policy nothing would ever forget."""
        policy = self._policies.get(dataset)
        if policy is None:  # a dataset opened by no path here
            policy = self._policies[dataset] = _make_available(DEFAULT_POLICY)
        return policy

    def _seed(self, dataset: str, policy: Policy, hot: Iterable[HotShard]) -> None:
        self._forget_keys_of(dataset)
        self._policies[dataset] = policy
        self._hot_bytes[dataset] = 0
        now = self._wall_now()
        for key, size, when in hot:
            # Seeded in their own order, and never ahead of the driver's clock; nor of
            # the wall clock: a shard stamped while the system clock ran ahead (a
            # creation time, which nothing bounds) stopped the clock, which never goes
            # back, until the wall clock caught up: every policy saw one instant.
            self._clock = max(self._clock, min(when, now))
            self._insert(key, size, self._clock)

    def _insert(self, key: Key, size: int, now: float) -> None:
        dataset = _dataset_of(key)
        self._policy(dataset).inserted(key, size, now)
        previous = self._sizes.get(key, 0)
        self._sizes[key] = size
        self._keys_of.setdefault(dataset, set()).add(key)
        self._hot_bytes[dataset] = self._hot_bytes.get(dataset, 0) + size - previous

    def _remove(self, key: Key) -> None:
        dataset = _dataset_of(key)
        policy = self._policies.get(dataset)
        if policy is not None:
            policy.removed(key)
        size = self._sizes.pop(key, None)
        if size is not None:
            self._hot_bytes[dataset] = self._hot_bytes.get(dataset, 0) - size
            self._keys_of[dataset].discard(key)

    def _forget_keys_of(self, dataset: str) -> None:
        """Under the lock: drop ``dataset``'s keys from :attr:`_sizes` (no policy told)."""
        for key in self._keys_of.pop(dataset, ()):
            del self._sizes[key]


def shard_of(key: Key) -> tuple[str, str]:
    """The ``(dataset, name)`` an engine key stands for (policies see opaque keys)."""
    return cast(tuple[str, str], key)


def _dataset_of(key: Key) -> str:
    return shard_of(key)[0]


def _build(name: str) -> Policy:
    """A new live ``name`` policy. Raises UnknownPolicy, InvalidArgument (offline)."""
    return make_driven_policy(name)  # the engine ends plans itself


def _make_available(name: str) -> Policy:
    """A ``name`` policy, else the default, else LRU (the baseline always exists)."""
    for candidate in dict.fromkeys((name, DEFAULT_POLICY, "lru")):
        try:
            policy = _build(candidate)
        except InvalidArgument:
            continue
        if candidate != name:
            log.warning("placement policy %r is not available; using %r", name, candidate)
        return policy
    raise UnknownPolicy("no placement policy is available")  # pragma: no cover - lru exists


def hot_shards(
    txn: Any,
    catalog: Catalog,
    access: AccessRecorder,
    dataset: str | None = None,
    *,
    cold_pins: list[ShardRecord] | None = None,
) -> dict[str, list[HotShard]]:
    """The hot shards (of ``dataset``, or all) by dataset, each list oldest first: by
    last read, or by creation for a shard never read (writing a shard uses it too).
    ``cold_pins``, given, gets the cold shards a pin holds, from the same pass.

    Reads the catalog in ``txn`` and the pending statistics; hold
    ``access.flush_lock`` around it to see every read exactly once.
    """
    found: dict[str, list[HotShard]] = {}
    now = time.time()
    for record in catalog.iter_shards(txn, dataset):
        if not record.hot:
            if cold_pins is not None and record.pin_holds(now):
                cold_pins.append(record)
            continue
        reads = catalog.get_access(txn, record.dataset, record.name)
        pending = access.pending(record.dataset, record.name, record.generation)
        size = stored_size(record)
        when = max(reads.last, pending.last, record.created_at)
        found.setdefault(record.dataset, []).append(((record.dataset, record.name), size, when))
    for shards in found.values():
        shards.sort(key=lambda shard: shard[2])
    return found
