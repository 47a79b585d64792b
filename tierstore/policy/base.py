"""The placement-policy contract (pure: no I/O, no clocks, no threads).

A policy decides three things for one hot tier (or one dataset's share of it):

* **admission** — is a shard that was just read from the archive worth promoting?
* **eviction** — which hot shards leave when the tier must free bytes? Only shards
  the driver says are evictable (the archive holds them, they are not pinned).
* **prefetch** — which cold shards should be fetched next, within a budget?

Two drivers use the very same policy objects: the live engine (the mover) and the
trace simulator (``tierstore.sim``). Keys are opaque hashables — ``(dataset, name)``
in the engine, small ints in the simulator — and every shard has its own size.

The driver's side of the contract, in order, for each event:

* a read: :meth:`Policy.record_access` (hit or miss) first; on a miss the driver
  asks :meth:`Policy.admit`; if admitted it frees room with :meth:`Policy.victims`,
  calls :meth:`Policy.removed` for every victim it actually evicts, then
  :meth:`Policy.inserted`;
* a write (always hot), a promotion by prefetch or pin, a shard found hot at
  restart: :meth:`Policy.inserted`;
* a shard that leaves the hot tier for any reason (eviction, delete, overwrite):
  :meth:`Policy.removed`;
* a loader's declared access plan: :meth:`Policy.declare_plan`, then
  :meth:`Policy.report_position` as it reads, :meth:`Policy.close_plan` at the end.

``now`` is seconds on any clock that never goes back, supplied by the driver (the
simulator's virtual time, the engine's wall clock), so a policy never reads a clock.

Thread safety: a policy is not thread-safe; its driver serialises calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from tierstore.errors import InvalidPlan

__all__ = [
    "MAX_LOOK_AHEAD_BYTES",
    "Key",
    "Policy",
    "PrefetchBudget",
    "check_plan",
    "look_ahead_bytes",
]

#: A shard's identity as the driver names it.
Key = Hashable


def check_plan(job: str, keys: Sequence[Key], sizes: Sequence[int]) -> None:
    """Raise InvalidPlan for a plan whose keys and sizes differ in length: the one
    plan error of the policies' contract, whether or not a policy uses plans."""
    if len(keys) != len(sizes):
        raise InvalidPlan(f"plan of {job!r}: {len(keys)} keys but {len(sizes)} sizes")


#: the most bytes :func:`look_ahead_bytes` gives: more than any tier holds.
MAX_LOOK_AHEAD_BYTES = 1 << 62


def look_ahead_bytes(bytes_per_s: float, seconds: float) -> int:
    """The whole bytes ``bytes_per_s`` moves in ``seconds``, at most
    :data:`MAX_LOOK_AHEAD_BYTES`: a product of two finite settings can overflow to
    infinity, which no whole number holds. 0 for a product that is not a positive
    number (nan included). Never raises."""
    product = bytes_per_s * seconds
    if not product > 0:
        return 0
    return int(min(product, MAX_LOOK_AHEAD_BYTES))


@dataclass(frozen=True, slots=True)
class PrefetchBudget:
    """What the driver can fetch from the archive right now.

    ``requests``: fetches it can start now (free I/O depth). ``bytes``: bytes it can
    bring in before more would be useless (archive bandwidth times the look-ahead
    horizon, minus what is already in flight). A policy returns at most ``requests``
    keys whose sizes add up to at most ``bytes``, with one exception: its most
    urgent key comes first even when it alone is larger than ``bytes`` (and is then
    not counted in them), or a shard larger than the look-ahead would never be
    fetched. The driver takes such a key, alone, only when nothing else is in
    flight (``bytes`` is then the whole horizon); otherwise it passes it over and
    takes the rest.
    """

    requests: int
    bytes: int


class Policy(ABC):
    """One placement policy; subclasses are registered by :attr:`name`."""

    #: the name users pick it by (``tierstore policy set DATASET NAME``).
    name: ClassVar[str]

    @abstractmethod
    def record_access(self, key: Key, size: int, now: float, hit: bool) -> None:
        """Note one read of ``key`` (``size`` bytes); ``hit`` says it was hot.

        Called for every read, before admission is asked. Amortised O(1).
        """

    def admit(self, key: Key, size: int, now: float, free_bytes: int) -> bool:
        """On a miss: promote ``key``? ``free_bytes`` is the room left before eviction
        would be needed. The default admits everything."""
        return True

    @abstractmethod
    def inserted(self, key: Key, size: int, now: float) -> None:
        """``key`` is now hot (written, promoted, prefetched, or found hot at restart).
        Inserting a key that is already hot updates its size."""

    @abstractmethod
    def removed(self, key: Key) -> None:
        """``key`` is no longer hot. Removing a key that is not hot does nothing."""

    @abstractmethod
    def victims(
        self, bytes_to_free: int, now: float, evictable: Callable[[Key], bool]
    ) -> list[Key]:
        """Hot keys to evict, in order, whose sizes add up to at least ``bytes_to_free``
        (fewer if not enough are evictable). Only keys for which ``evictable`` is true.

        The keys stay hot until the driver calls :meth:`removed` for each one it evicts.
        """

    def prefetch(
        self,
        now: float,
        budget: PrefetchBudget,
        is_hot: Callable[[Key], bool],
        *,
        arriving: Callable[[Key], bool] | None = None,
    ) -> list[Key]:
        """Cold keys to fetch next, most urgent first, within ``budget``. Default: none.

        ``is_hot`` is true for the keys there is nothing to fetch for: hot, on their way
        in, or never to be hot (larger than the tier takes, say). ``arriving``, when the
        driver gives it, is true for those of them that are on their way in (they take
        room when they land); without it, every key ``is_hot`` accepts that the policy
        does not hold hot is taken to be on its way in.
        """
        return []

    def declare_plan(self, job: str, keys: Sequence[Key], sizes: Sequence[int], now: float) -> None:
        """A reader (``job``) will read ``keys`` in this order (``sizes`` alongside).

        Replaces that job's earlier plan; its position starts at 0. Policies that do
        not use plans ignore it (the default), once it passes :func:`check_plan`.
        """
        check_plan(job, keys, sizes)

    def report_position(self, job: str, position: int, now: float) -> None:
        """``job`` has read the first ``position`` entries of its plan. Unknown jobs are
        ignored (their plan may have expired)."""
        return None

    def close_plan(self, job: str) -> None:
        """``job`` is done; forget its plan. Unknown jobs are ignored."""
        return None

    @classmethod
    def metadata_bytes_per_shard(cls) -> int:
        """Bytes of per-shard numeric state this policy keeps (the budget is 64)."""
        return 0
