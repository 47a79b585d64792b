"""The trace simulator: replays a trace against one policy and one hot-tier size.

It is the policies' second driver (the engine's policy driver is the first) and follows the
contract in :mod:`tierstore.policy.base` to the letter:

* a read: ``record_access``; on a miss ``admit``; if admitted and the tier lacks
  room, ``victims`` for the missing bytes, then ``removed`` for each victim it
  evicts (in order, only as many as are needed), then ``inserted``;
* plan events: ``declare_plan`` / ``report_position`` / ``close_plan``;
* with a :class:`PrefetchModel`: ``prefetch`` after every event and whenever a fetch
  is done; a fetch (a prefetch, or the promotion of an admitted miss) makes its room
  (``victims``, ``removed``) and is ``inserted`` when it lands, as the engine's mover
  does.

Every hot shard is evictable (the simulator models neither pins nor an archive
backlog). Time is the trace's: a stall is recorded, it does not delay later events
(an open-loop replay).

Pure and deterministic: the same trace, policy and capacity give the same result.
Calls share nothing, so replays may run in parallel threads — each with its own
policy object (policies are not thread-safe).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from tierstore.errors import InvalidArgument
from tierstore.policy.base import Key, Policy, PrefetchBudget, look_ahead_bytes
from tierstore.policy.registry import make_policy
from tierstore.sim.events import PlanClosed, PlanDeclared, PositionReported, Read, Trace
from tierstore.sim.links import Channels, SharedLink

__all__ = ["PrefetchModel", "SimResult", "simulate", "simulate_offline"]


@dataclass(frozen=True, slots=True)
class SimResult:
    """What one replay measured: the reads and bytes after the warm-up only; the
    stalls and prefetches of the whole replay, warm-up included (a plan's prefetch
    started in the warm-up serves reads after it).

    ``stall_s``: seconds reads spent waiting for fetches still in flight, prefetches or
    earlier misses' promotions (such a read is not a hit). ``prefetches``: fetches the
    policy started.
    """

    policy: str
    capacity_bytes: int
    reads: int
    hits: int
    read_bytes: int
    hit_bytes: int
    stall_s: float = 0.0
    prefetches: int = 0

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.reads if self.reads else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.hit_bytes / self.read_bytes if self.read_bytes else 0.0

    @property
    def miss_ratio(self) -> float:
        return 1.0 - self.hit_ratio


@dataclass(frozen=True, slots=True)
class PrefetchModel:
    """A time model for prefetching: the policy may have ``io_depth`` fetches in flight,
    the promotions of missed reads included. Those promotions are started whatever is in
    flight (the engine queues them for its promotion threads instead; a cap of 4 on
    these traces changed no prediction, so the queue is not modelled).

    Channels (``shared_link=False``): each fetch has a channel of its own moving
    ``bandwidth_bytes_per_s``, so a fetch of ``size`` bytes takes ``size / bandwidth``
    however many run; the policy is offered ``bandwidth x io_depth x horizon_s`` bytes.

    One shared link (``shared_link=True``): the archive link moves
    ``bandwidth_bytes_per_s`` in all, split evenly among the transfers on it
    (:class:`~tierstore.sim.links.SharedLink`: a lone fetch gets the whole link, ``k``
    that start together finish together); the policy is offered ``bandwidth x
    horizon_s`` bytes — the engine's own budget against a bandwidth-capped archive.

    Either way a missed read takes the link too: admitted, it is fetched as a
    promotion (a request and the link; hot when it lands); not admitted, its bytes
    still cross the link. A fetch makes its room in the tier when it lands.

    Either way the policy is offered, after every event and whenever a fetch lands, the
    free requests and the bytes above minus those in flight."""

    bandwidth_bytes_per_s: float
    io_depth: int
    horizon_s: float
    shared_link: bool = False
    #: shared link only: the link is a token bucket that holds up to this many bytes
    #: while it idles (a fetch starting after an idle spell gets them at once).
    burst_bytes: int = 0
    #: the archive's time to first byte: every transfer waits this long before it takes
    #: a share of the link (a fetch holds its request meanwhile).
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if (
            not 0 < self.bandwidth_bytes_per_s < math.inf
            or self.io_depth < 1
            or not 0 < self.horizon_s < math.inf
            or self.burst_bytes < 0
            or not self.latency_s >= 0
        ):
            raise InvalidArgument(
                "a PrefetchModel needs a finite bandwidth_bytes_per_s > 0, io_depth >= 1, "
                "a finite horizon_s > 0, burst_bytes >= 0 and latency_s >= 0"
            )


def _always(_: Key) -> bool:
    return True


def _shard(policy: Policy, key: Key, count: int) -> int:
    """``key`` as a shard id of the trace; RuntimeError if the policy made it up."""
    if not isinstance(key, int) or not 0 <= key < count:
        raise RuntimeError(f"{policy.name} returned {key!r}, which is no shard of the trace")
    return key


class _Tier:
    """The simulated hot tier: which shards are hot, and the bytes they take."""

    def __init__(self, policy: Policy, sizes: tuple[int, ...], capacity: int) -> None:
        self.policy = policy
        self.sizes = sizes
        self.capacity = capacity
        self.hot = bytearray(len(sizes))
        self.used = 0

    def make_room(self, size: int, now: float) -> bool:
        """Evict the policy's victims until ``size`` bytes are free; False if it can't."""
        missing = size - (self.capacity - self.used)
        if missing <= 0:
            return True
        for key in self.policy.victims(missing, now, _always):
            victim = _shard(self.policy, key, len(self.hot))
            if not self.hot[victim]:
                raise RuntimeError(f"{self.policy.name}: victim {victim} is not hot")
            self.hot[victim] = 0
            self.used -= self.sizes[victim]
            self.policy.removed(victim)
            if self.capacity - self.used >= size:
                return True
        return self.capacity - self.used >= size

    def insert(self, key: int, now: float) -> None:
        """``key`` becomes hot (room already made)."""
        self.hot[key] = 1
        self.used += self.sizes[key]
        self.policy.inserted(key, self.sizes[key], now)


class _Prefetcher:
    """Fetches in flight under a :class:`PrefetchModel`, run as the engine's mover runs
    its promotions: the policy's prefetches and the promotions of admitted misses take
    the same requests and the same link, and a fetched shard takes its room in the tier
    when it lands (the engine evicts when it writes a promotion, not when it starts one;
    the bytes on their way are held in memory meanwhile, not in the tier). A missed read
    that is not admitted still takes the link, for its own bytes."""

    def __init__(self, model: PrefetchModel, tier: _Tier) -> None:
        self.model = model
        self.tier = tier
        rate = model.bandwidth_bytes_per_s
        self.link = SharedLink(rate, model.burst_bytes) if model.shared_link else Channels(rate)
        self.transfers = itertools.count()
        #: shards on their way (not landed yet): shard -> its transfer.
        self.fetching: dict[int, int] = {}
        #: fetches still on the link: transfer -> shard. A read that waits for a fetch
        #: lands it at once (trace times do not move), but the link stays busy with it
        #: until it is done, so it counts against the requests until then.
        self.fetches_on_link: dict[int, int] = {}
        self.in_flight_bytes = 0
        self.started = 0

    def is_hot(self, key: Key) -> bool:
        # In flight counts as hot: the policy must not ask for it twice.
        shard = _shard(self.tier.policy, key, len(self.tier.hot))
        return shard in self.fetching or bool(self.tier.hot[shard])

    def complete(self, now: float) -> None:
        """Every fetch done by ``now`` becomes hot, in the order they finish; after each
        completion the policy is offered what it frees (the engine's prefetch loop
        wakes whenever a promotion finishes)."""
        while finished := self.link.next_done(now):
            for transfer, done in finished:
                key = self.fetches_on_link.pop(transfer, None)
                if key is not None and self.fetching.get(key) == transfer:
                    self._land(key, done)
            self.start(finished[-1][1])

    def wait(self, key: int, now: float) -> float:
        """A read of ``key`` while it is in flight: land it; the seconds waited."""
        done = self.link.done_at(self.fetching[key])
        self._land(key, max(done, now))
        return max(0.0, done - now)

    def _land(self, key: int, now: float) -> None:
        del self.fetching[key]
        size = self.tier.sizes[key]
        self.in_flight_bytes -= size
        # Room is made now, as the engine makes it before it writes a promotion. Every
        # hot shard is evictable here and no shard outgrows the tier, so a policy that
        # names enough victims always makes it; if one does not, the shard is dropped.
        if self.tier.make_room(size, now):
            self.tier.insert(key, now)

    def _fetch(self, key: int, now: float) -> None:
        transfer = next(self.transfers)
        size = self.tier.sizes[key]
        self.link.add(transfer, size, now, self.model.latency_s)
        self.fetching[key] = transfer
        self.fetches_on_link[transfer] = key
        self.in_flight_bytes += size

    def promote(self, key: int, now: float) -> None:
        """A missed read that the policy admitted: fetch ``key`` as a promotion (it
        takes a request and the link, and lands when done)."""
        self._fetch(key, now)

    def stream(self, key: int, now: float) -> None:
        """A missed read that the policy did not admit: the link carries the shard to
        the reader (no request is taken, nothing lands)."""
        self.link.add(next(self.transfers), self.tier.sizes[key], now, self.model.latency_s)

    def start(self, now: float) -> None:
        """Offer the policy the free requests and bytes; start what it asks for."""
        model, tier = self.model, self.tier
        requests = model.io_depth - len(self.fetches_on_link)
        channels = 1 if model.shared_link else model.io_depth
        room = look_ahead_bytes(model.bandwidth_bytes_per_s * channels, model.horizon_s)
        budget = PrefetchBudget(requests=requests, bytes=room - self.in_flight_bytes)
        if requests <= 0 or budget.bytes <= 0:
            return
        spent = 0
        for wanted in tier.policy.prefetch(now, budget, self.is_hot)[:requests]:
            key = _shard(tier.policy, wanted, len(tier.hot))
            size = tier.sizes[key]
            lone = not self.fetching and spent == 0
            if self.is_hot(key) or (spent + size > budget.bytes and not lone):
                continue
            spent += size
            self._fetch(key, now)
            self.started += 1


def simulate(
    trace: Trace,
    policy: Policy,
    capacity_bytes: int,
    *,
    warmup_reads: int = 0,
    prefetch: PrefetchModel | None = None,
) -> SimResult:
    """Replay ``trace`` against ``policy`` on a hot tier of ``capacity_bytes``.

    The first ``warmup_reads`` reads drive the policy but are not counted. Raises
    InvalidArgument if the capacity is smaller than the largest shard (no policy
    could ever hold it), ``warmup_reads`` is negative, or a read or a plan names a shard
    id the trace does not have (a malformed trace); RuntimeError if the policy breaks its
    contract (a victim that is not hot).
    """
    largest = max(trace.sizes, default=0)
    if capacity_bytes < largest:
        raise InvalidArgument(
            f"capacity_bytes={capacity_bytes} is smaller than the largest shard of "
            f"{trace.name!r} ({largest} bytes); the hot tier could never hold it"
        )
    if warmup_reads < 0:
        raise InvalidArgument(f"warmup_reads must not be negative, got {warmup_reads}")
    count = len(trace.sizes)
    for event in trace.events:
        if type(event) is Read:
            # A negative id read the shard counted from the end, which the policy took
            # for another key (hits it never saw inserted); one past the end, an IndexError.
            if not 0 <= event.key < count:
                raise InvalidArgument(
                    f"{trace.name!r}: a read at t={event.t:g} names shard {event.key!r:.40}, "
                    "which the trace does not have"
                )
        elif isinstance(event, PlanDeclared) and any(not 0 <= key < count for key in event.keys):
            raise InvalidArgument(
                f"{trace.name!r}: the plan of {event.job!r} names shards the trace does not have"
            )
    tier = _Tier(policy, trace.sizes, capacity_bytes)
    fetcher = _Prefetcher(prefetch, tier) if prefetch is not None else None
    sizes, hot = trace.sizes, tier.hot
    # Bound methods in locals: this loop runs once per event of traces of millions.
    record, admit, make_room, insert = (
        policy.record_access,
        policy.admit,
        tier.make_room,
        tier.insert,
    )
    seen = reads = hits = read_bytes = hit_bytes = 0
    stall = 0.0
    for event in trace.events:
        now = event.t
        if fetcher is not None:
            fetcher.complete(now)
        if type(event) is Read:
            key = event.key
            size = sizes[key]
            if fetcher is not None and key in fetcher.fetching:
                # A fetch still in flight: the read waits for it, and is no hit.
                stall += fetcher.wait(key, now)
                hit = False
                record(key, size, now, True)
            else:
                hit = bool(hot[key])
                record(key, size, now, hit)
                if not hit:
                    admitted = admit(key, size, now, capacity_bytes - tier.used)
                    if fetcher is not None:
                        # Timed: the shard crosses the link, and lands if admitted.
                        (fetcher.promote if admitted else fetcher.stream)(key, now)
                    elif admitted and make_room(size, now):
                        insert(key, now)
            seen += 1
            if seen > warmup_reads:
                reads += 1
                read_bytes += size
                if hit:
                    hits += 1
                    hit_bytes += size
        elif isinstance(event, PositionReported):
            policy.report_position(event.job, event.position, now)
        elif isinstance(event, PlanDeclared):
            policy.declare_plan(event.job, event.keys, [sizes[k] for k in event.keys], now)
        elif isinstance(event, PlanClosed):
            policy.close_plan(event.job)
        if fetcher is not None:
            fetcher.start(now)
    return SimResult(
        policy=policy.name,
        capacity_bytes=capacity_bytes,
        reads=reads,
        hits=hits,
        read_bytes=read_bytes,
        hit_bytes=hit_bytes,
        stall_s=stall,
        prefetches=fetcher.started if fetcher is not None else 0,
    )


def simulate_offline(
    trace: Trace, capacity_bytes: int, *, policy: str = "belady", warmup_reads: int = 0
) -> SimResult:
    """Replay ``trace`` against an offline policy (``belady`` or ``belady-size``),
    giving it the trace's reads as its future. Raises as :func:`simulate` does, and
    UnknownPolicy / InvalidArgument for a name that is not an offline policy."""
    future = [read.key for read in trace.reads()]
    return simulate(
        trace, make_policy(policy, future=future), capacity_bytes, warmup_reads=warmup_reads
    )
