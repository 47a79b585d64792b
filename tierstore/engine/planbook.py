"""Live access plans: which job will read which shards of a dataset, in what order.

A loader declares its plan — a sampler spec (:class:`~tierstore.plans.SamplerPlan`,
regenerated here with :func:`~tierstore.plans.rank_order` over the dataset's
shard names in catalog order, optionally only those under a prefix, and refused
when it carries a digest of other names than those) or an explicit list of shard
names — and then reports how far it has read. The plan
goes to the dataset's placement policy (keys ``(dataset, name)``, stored sizes),
which may prefetch just ahead of the reader and evict what is needed furthest in
the future.

Rules: a plan is at most :data:`~tierstore.plans.MAX_PLAN_EPOCHS` times as long
as the shards it draws from (the dataset's, or the prefix's for a sampler plan)
and never over :data:`MAX_PLAN_ENTRIES`; an explicit plan names only existing
shards. A plan expires ``ttl_s`` seconds after its declaration or its last
position report; an expired or closed job is unknown (:class:`PlanNotFound`).

Plans live in memory (about 40 bytes an entry, with the policy's share), and declaring
one needs only the reader role, so the book is bounded: each owner (the principal
that declared it, in the service) holds at most :data:`MAX_OWNER_PLAN_ENTRIES`
entries in at most :data:`MAX_OWNER_PLANS` plans, and the book at most
:data:`MAX_LIVE_PLAN_ENTRIES` entries in :data:`MAX_LIVE_PLANS` plans. A declaration
past a bound is refused (:class:`PlanLimitReached`), not queued and not made room for:
the caller closes plans or waits for them to expire. Expired plans are ended first, so
they never count.
Declaring a job again replaces its plan. Reads are not tied to plans: a job that
reads shards off its plan is served like any reader, and its plan only steers
placement.

Thread safety: a :class:`PlanBook` is safe to share. Lock order: the plan book's
lock → the policy driver's lock → the trace ring's lock; no LMDB transaction is
begun while the plan book's lock is held.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import Any, cast, overload

from tierstore.engine.catalog import Catalog
from tierstore.engine.policies import PolicyDriver
from tierstore.engine.sealing import stored_size
from tierstore.engine.trace import TraceRing
from tierstore.errors import (
    InvalidArgument,
    InvalidPlan,
    PlanLimitReached,
    PlanNotFound,
    PlanShardsChanged,
)
from tierstore.naming import MAX_SHARD_NAME_BYTES, given_names, validate_shard_name
from tierstore.plans import (
    MAX_PLAN_EPOCHS,
    SamplerKind,
    SamplerPlan,
    check_plan_ttl,
    rank_order,
    shard_list_digest,
)
from tierstore.tiers.lmdb import LmdbEnvironment
from tierstore.types import TracedClose, TracedPlan, TracedPosition

__all__ = [
    "MAX_LIVE_PLANS",
    "MAX_LIVE_PLAN_ENTRIES",
    "MAX_OWNER_PLANS",
    "MAX_OWNER_PLAN_ENTRIES",
    "MAX_PLAN_ENTRIES",
    "PlanBook",
    "PlanInfo",
    "PlanKeys",
]

#: the most entries one plan may have, whatever the dataset's size.
MAX_PLAN_ENTRIES = 10_000_000
#: the most entries one owner's live plans may have together: one plan of the largest
#: size, or its workers' shares of it.
MAX_OWNER_PLAN_ENTRIES = MAX_PLAN_ENTRIES
#: the most live plans of one owner (a DataLoader declares one per worker and rank).
MAX_OWNER_PLANS = 16_384
#: the most entries all live plans may have together (about 1 GB with the policies').
MAX_LIVE_PLAN_ENTRIES = 2 * MAX_PLAN_ENTRIES
#: the most live plans altogether.
MAX_LIVE_PLANS = 65_536
MAX_JOB_CHARS = 512


class PlanKeys(Sequence[tuple[str, str]]):
    """A plan's shard names as policy keys ``(dataset, name)``, made on access (a plan
    of millions of entries does not become millions of tuples unless a policy asks)."""

    __slots__ = ("_dataset", "_names")

    def __init__(self, dataset: str, names: Sequence[str]) -> None:
        self._dataset = dataset
        self._names = names

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        dataset = self._dataset
        return ((dataset, name) for name in self._names)

    @overload
    def __getitem__(self, index: int) -> tuple[str, str]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, str]]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [(self._dataset, name) for name in self._names[index]]
        return (self._dataset, self._names[index])


@dataclass(frozen=True, slots=True)
class PlanInfo:
    """A live plan as its owner may see it."""

    job: str
    dataset: str
    length: int
    position: int


@dataclass
class _Plan:
    owner: str
    dataset: str
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    ttl_s: float
    deadline: float  # on the monotonic clock
    position: int = 0
    #: who keeps it alive: the declaration's or last report's ``keeper``
    keeper: str = ""


class PlanBook:
    """The live plans of one store, and their expiry."""

    def __init__(
        self,
        environment: LmdbEnvironment,
        catalog: Catalog,
        policies: PolicyDriver,
        trace: TraceRing,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._env = environment
        self._catalog = catalog
        self._policies = policies
        self._trace = trace
        self._clock = clock
        self._lock = threading.Lock()
        self._plans: dict[str, _Plan] = {}

    def __len__(self) -> int:
        """Plans declared and not closed (some may have expired unnoticed)."""
        with self._lock:
            return len(self._plans)

    def declare(
        self,
        dataset: str,
        *,
        sampler: SamplerPlan | None,
        shards: Iterable[str] | None,
        prefix: str,
        job: str | None,
        ttl_s: float,
        owner: str = "",
        keeper: str = "",
        keeper_left_s: float | None = None,
        position: int = 0,
    ) -> str:
        """Declare (or replace) ``job``'s plan over ``dataset`` (a valid name); returns
        the job id (a new random one when ``job`` is None). ``owner``: whose plan it
        is, for the per-owner bounds (a replaced plan is counted as gone); ``keeper``:
        who keeps it alive (:meth:`close_kept_by`), for ``keeper_left_s`` seconds more
        (None: for good): the plan expires then at the latest. ``position``: entries
        of the plan already read (a resumed epoch), told to the policy at the
        declaration's instant, so no read rate is measured from them (reported a
        moment later, they were taken for entries read in that moment).

        Raises DatasetNotFound; PlanShardsChanged for a sampler whose ``shards_digest``
        is not that of the shard names under ``prefix`` now; InvalidPlan for both or
        neither of ``sampler`` and ``shards``, a prefix with explicit shards, ``shards``
        that is no iterable of names (a str; any other iterable is taken), an unknown
        shard, or a plan too long;
        InvalidName for a malformed shard name; InvalidArgument for a bad sampler,
        job id, ``ttl_s`` or ``position`` (not a whole number from 0 to the plan's
        length); PlanLimitReached past one of the book's bounds. A refused declaration
        leaves ``job``'s earlier plan as it was.
        """
        ttl_s = check_plan_ttl(ttl_s)
        _check_position(position)
        job = _check_job(job) if job is not None else uuid.uuid4().hex
        if (sampler is None) == (shards is None):
            raise InvalidPlan("a plan is either a sampler or a list of shards (exactly one)")
        if sampler is not None:
            names, sizes = self._sampled(dataset, sampler, prefix)
        else:
            assert shards is not None
            if prefix:
                raise InvalidPlan("a prefix applies to sampler plans only")
            names, sizes = self._listed(dataset, shards)
        _check_within(position, len(names))
        deadline = _deadline(self._clock(), ttl_s, keeper_left_s)
        plan = _Plan(
            owner, dataset, names, sizes, float(ttl_s), deadline, position=position, keeper=keeper
        )
        with self._lock:
            self._expire_locked()
            self._check_room(job, plan)
            previous = self._plans.pop(job, None)
            if previous is not None and previous.dataset != dataset:
                self._policies.close_plan(previous.dataset, job)
            self._plans[job] = plan
            keys = PlanKeys(dataset, names)
            self._policies.declare_plan(dataset, job, keys, sizes, position)
            # (The trace ring stamps every event with its own clock: t=0 here; these
            # two with one instant, so a replay measures no rate from the position.)
            declared = TracedPlan(0.0, job, dataset, names, sizes)
            if position:
                self._trace.plan_event(declared, TracedPosition(0.0, job, dataset, position))
            else:
                self._trace.plan_event(declared)
        return job

    def report(
        self, job: str, position: int, keeper: str = "", keeper_left_s: float | None = None
    ) -> None:
        """``job`` has read the first ``position`` entries of its plan; keeps it alive,
        kept by ``keeper`` from now on (for ``keeper_left_s``, as :meth:`declare` has
        it). A position behind the last one reported moves the plan back nowhere.

        Raises PlanNotFound (unknown, closed or expired job), InvalidArgument for a
        position outside ``[0, len(plan)]``.
        """
        _check_position(position)
        with self._lock:
            plan = self._live(job)
            _check_within(position, len(plan.names))
            # A report behind the last one (a reader that fell behind, a late message)
            # keeps the plan alive but moves it back nowhere, as the policies' contract
            # has it: redeclared to a new policy, it named entries read as still to come.
            plan.position = max(plan.position, position)
            plan.deadline = _deadline(self._clock(), plan.ttl_s, keeper_left_s)
            plan.keeper = keeper
            self._policies.report_position(plan.dataset, job, position)
            self._trace.plan_event(TracedPosition(0.0, job, plan.dataset, position))

    def close(self, job: str) -> None:
        """End ``job``'s plan. Raises PlanNotFound (unknown, closed or expired job)."""
        with self._lock:
            self._live(job)
            self._end(job)

    def info(self, job: str) -> PlanInfo:
        """``job``'s live plan. Raises PlanNotFound (unknown, closed or expired job)."""
        with self._lock:
            plan = self._live(job)
            return PlanInfo(job, plan.dataset, len(plan.names), plan.position)

    def expire(self) -> int:
        """End every plan past its deadline; returns how many."""
        with self._lock:
            return self._expire_locked()

    def close_kept_by(self, keeper: str) -> int:
        """End every plan ``keeper`` (not "") declared or last reported on: in the
        service, the plans of a token being revoked. Returns how many."""
        if not keeper:
            return 0
        with self._lock:
            ended = [job for job, plan in self._plans.items() if plan.keeper == keeper]
            for job in ended:
                self._end(job)
            return len(ended)

    def close_dataset(self, dataset: str) -> None:
        """End every plan over ``dataset`` (it was deleted)."""
        with self._lock:
            for job in [job for job, plan in self._plans.items() if plan.dataset == dataset]:
                self._end(job)

    def redeclare(self, dataset: str) -> None:
        """Hand ``dataset``'s live plans, and positions, to its policy again (after the
        policy was replaced)."""
        with self._lock:
            for job, plan in self._plans.items():
                if plan.dataset == dataset:
                    keys = PlanKeys(dataset, plan.names)
                    self._policies.declare_plan(dataset, job, keys, plan.sizes, plan.position)

    # Internals.

    def _expire_locked(self) -> int:
        now = self._clock()
        expired = [job for job, plan in self._plans.items() if plan.deadline <= now]
        for job in expired:
            self._end(job)
        return len(expired)

    def _check_room(self, job: str, plan: _Plan) -> None:
        """Raise PlanLimitReached unless ``plan`` may take ``job``'s place (lock held).
        Counts by walking the plans: a declaration is rare next to reads, and a count
        kept on the side could drift from the book."""
        owner_plans = owner_entries = live_plans = live_entries = 0
        for other_job, other in self._plans.items():
            if other_job == job:
                continue  # replaced by this declaration
            live_plans += 1
            live_entries += len(other.names)
            if other.owner == plan.owner:
                owner_plans += 1
                owner_entries += len(other.names)
        entries = len(plan.names)
        for held, adding, bound, what in (
            (owner_plans, 1, MAX_OWNER_PLANS, "live plans of this caller"),
            (owner_entries, entries, MAX_OWNER_PLAN_ENTRIES, "plan entries of this caller"),
            (live_plans, 1, MAX_LIVE_PLANS, "live plans on this node"),
            (live_entries, entries, MAX_LIVE_PLAN_ENTRIES, "plan entries on this node"),
        ):
            if held + adding > bound:
                raise PlanLimitReached(
                    f"a plan of {entries:,} entries would pass the {bound:,} {what} "
                    f"({held:,} held): close finished plans or let them expire"
                )

    def _live(self, job: str) -> _Plan:
        """``job``'s plan (lock held); ends it and raises PlanNotFound if expired."""
        if not isinstance(job, str):
            raise PlanNotFound("no live access plan for that job")
        plan = self._plans.get(job)
        if plan is None:
            raise PlanNotFound(f"no live access plan for job {job[:200]!r}")
        if plan.deadline <= self._clock():
            self._end(job)
            raise PlanNotFound(
                f"job {job[:200]!r}'s access plan expired ({plan.ttl_s:g} s without a report)"
            )
        return plan

    def _end(self, job: str) -> None:
        plan = self._plans.pop(job)
        self._policies.close_plan(plan.dataset, job)
        self._trace.plan_event(TracedClose(0.0, job, plan.dataset))

    def _sampled(
        self, dataset: str, sampler: SamplerPlan, prefix: str
    ) -> tuple[tuple[str, ...], tuple[int, ...]]:
        sampler.validate()
        if not isinstance(prefix, str):
            raise InvalidPlan("the prefix must be a string")
        if len(prefix.encode("utf-8", "surrogatepass")) > MAX_SHARD_NAME_BYTES:
            # It would match no shard, and was kept for the plan's life all the same.
            raise InvalidPlan(
                f"the prefix is longer than any shard name ({MAX_SHARD_NAME_BYTES} bytes)"
            )
        with self._env.read() as txn:
            self._catalog.require_dataset(txn, dataset)
            sizes_by_name = {
                record.name: stored_size(record)
                for record in self._catalog.iter_shards(txn, dataset, prefix)
            }
        names = list(sizes_by_name)  # catalog order: the sorted order rank_order wants
        count = len(names)
        if sampler.shards_digest and shard_list_digest(names) != sampler.shards_digest:
            # The reader reads the shards it listed: an order regenerated over others
            # would prepare shards it never reads, and put its reports off by as many.
            raise PlanShardsChanged(
                f"the shards under prefix {prefix!r} of {dataset!r} changed since the reader "
                f"listed them (the plan's digest of their names is not that of the {count} "
                "shards there now): declare the shards it reads as an explicit list"
            )
        draws = count
        if sampler.kind is SamplerKind.REPLACEMENT and count:
            draws = sampler.samples_per_epoch or count
        per_epoch = max(0, -(-(draws - sampler.rank) // sampler.world_size))  # ceil, no len()
        length = sampler.epochs * per_epoch
        _check_length(length, count, f"{count} shards under prefix {prefix!r}")
        order = tuple(rank_order(sampler, names))
        return order, tuple(sizes_by_name[name] for name in order)

    def _listed(
        self, dataset: str, shards: Iterable[str]
    ) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """``shards`` (any iterable of names but a str) as the plan's names and sizes.
        InvalidPlan for a str (the names of its one-letter shards), a non-iterable, an
        unknown name or a plan too long; InvalidName for an entry that is no name."""
        if isinstance(shards, Sized) and not isinstance(shards, str):
            # Measured before the names are taken in: a review's 9 million names for a
            # dataset of a few shards grew the server by 1.3 GB before it was refused.
            with self._env.read() as txn:
                self._catalog.require_dataset(txn, dataset)
                count = self._catalog.count_shards(txn, dataset)
            _check_length(len(shards), count, f"dataset {dataset!r}'s {count} shards")
        # A non-iterable was a raw TypeError (no len()); an endless generator is taken
        # one entry past the bound, and refused.
        given = given_names(
            shards,
            "shards must be a sequence of shard names",
            error=InvalidPlan,
            most=MAX_PLAN_ENTRIES,
        )
        if len(given) > MAX_PLAN_ENTRIES:
            raise InvalidPlan(f"a plan has at most {MAX_PLAN_ENTRIES:,} entries")
        names = cast(tuple[str, ...], given)  # each checked below: InvalidName if not
        try:
            unique = dict.fromkeys(names)
        except TypeError:  # an unhashable entry (a list): InvalidName says which
            for name in names:
                validate_shard_name(name)
            raise
        for name in unique:
            validate_shard_name(name)
        sizes_by_name: dict[str, int] = {}
        with self._env.read() as txn:
            self._catalog.require_dataset(txn, dataset)
            count = self._catalog.count_shards(txn, dataset)
            _check_length(len(names), count, f"dataset {dataset!r}'s {count} shards")
            for name in unique:
                record = self._catalog.get_shard(txn, dataset, name)
                if record is None:
                    raise InvalidPlan(
                        f"the plan names {name[:200]!r}, which is no shard of {dataset!r}"
                    )
                sizes_by_name[name] = stored_size(record)
        return names, tuple(sizes_by_name[name] for name in names)


def _deadline(now: float, ttl_s: float, keeper_left_s: float | None) -> float:
    """When a plan declared or reported on at ``now`` expires: ``ttl_s`` later, or when
    its keeper ends (``keeper_left_s``, None: never), whichever comes first."""
    return now + (ttl_s if keeper_left_s is None else min(ttl_s, keeper_left_s))


def _check_position(position: object) -> None:
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise InvalidArgument(f"position must be a whole number >= 0, got {position!r:.40}")


def _check_within(position: int, length: int) -> None:
    if position > length:
        # Not naming the job: the service knows it by an id its caller never sees.
        raise InvalidArgument(f"position {position} is past the end of the plan ({length} entries)")


def _check_job(job: object) -> str:
    if not isinstance(job, str) or not 0 < len(job) <= MAX_JOB_CHARS or not job.isprintable():
        raise InvalidArgument(f"a job id is 1-{MAX_JOB_CHARS} printable characters")
    return job


def _check_length(length: int, shards: int, what: str) -> None:
    limit = min(MAX_PLAN_ENTRIES, MAX_PLAN_EPOCHS * shards)
    if length > limit:
        raise InvalidPlan(
            f"the plan has {length:,} entries; at most {limit:,} are allowed "
            f"({MAX_PLAN_EPOCHS} epochs of {what}, and never over {MAX_PLAN_ENTRIES:,})"
        )
