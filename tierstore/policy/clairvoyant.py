"""The clairvoyant policy: Belady's rule, driven by the access plans jobs declare.

Jobs declare plans (:meth:`declare_plan`) and report positions. For a shard, the
policy estimates its next use as ``min over jobs of (next entry of the shard in the
job's plan at or after the job's position - position) / job's rate`` seconds, rates
being smoothed from reports (:mod:`tierstore.policy.plan_index`; lookups are binary
searches in per-job CSR arrays, in the ``next_use_times`` kernel). Between reports a
job's position also advances when a read is its next plan entry.

* **eviction** — resident shards no live plan will read ("unplanned") go first, in
  the order of the S3-FIFO fallback, which manages exactly those shards (and sees
  every read of unplanned shards, so undeclared traffic is cached as ``s3fifo``
  would cache it). Then the planned resident with the farthest next use among
  ``sample_size`` sampled ones and the ``pool_size`` runners-up of the previous
  decision (sampling keeps a decision O((sample + pool) x jobs x log epochs) with a
  million shards; the error is small, see docs/policies.md).
* **admission** — when the tier is full, a planned shard is refused if its next use
  is later than its would-be victim's (Belady's bypass; the victim is one eviction may
  take, as far as the driver's last answers tell); an unplanned one is put to
  the fallback while unplanned shards are resident or none is, and refused otherwise
  (it would displace a shard a job said it needs).
* **prefetch** — cold planned shards in order of earliest next use, within the
  budget: as many as the unplanned residents' bytes make room for (they are evicted
  first; shards on their way in count too, not those that never come, as ``arriving``
  tells, and those the driver would not evict when last asked for victims, pinned
  say, do not), then only those due before the farthest
  planned resident eviction may take, as far as it knows (else fetching one would
  evict a shard needed sooner); with no such resident, no bound. The most urgent one
  is named first even when it alone is larger than the budget's bytes, as
  :class:`~tierstore.policy.base.PrefetchBudget` allows.

Plans expire when no report arrives for ``plan_ttl_s`` of the driver's time. Reads
that follow no plan, plans naming shards never read, reports out of range: all are
absorbed (the policy never raises for them); only a plan whose keys and sizes
differ in length raises InvalidPlan.

Per-shard numeric state: slot table 17 + plan references 4 + resident flag 1 +
held flag 1 + member index 4 + member array 4 = 31 bytes, plus the fallback's 30 for
a shard it tracks: at most 61. Per plan entry 9 bytes, per job and shard 4
(:mod:`~tierstore.policy.plan_index`).

Not thread-safe (the driver serialises calls); deterministic for a given ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from tierstore.errors import InvalidPlan
from tierstore.policy.base import Key, Policy, PrefetchBudget, check_plan
from tierstore.policy.plan_index import PlanBook
from tierstore.policy.s3fifo import S3FifoPolicy
from tierstore.policy.slots import NIL, SLOT_TABLE_BYTES, SlotTable

__all__ = ["ClairvoyantPolicy"]


#: plan entries looked at per job and prefetch call (bounds the call's cost).
_PREFETCH_SCAN = 256
#: plan entries looked at per prefetch call over all jobs: with thousands of plans
#: open, every pass walked 256 entries of each (and held the policy driver's lock,
#: which reports wait on, meanwhile). Jobs take turns going first, so each is looked
#: at within a few passes; up to 64 jobs are all looked at in every one.
_PREFETCH_SCAN_TOTAL = 64 * _PREFETCH_SCAN


class ClairvoyantPolicy(Policy):
    """Farthest-estimated-next-use eviction and bypass from declared plans."""

    name = "clairvoyant"

    def __init__(
        self,
        *,
        plan_ttl_s: float = 300.0,
        sample_size: int = 24,
        pool_size: int = 8,
        seed: int = 0,
    ) -> None:
        self._ttl = plan_ttl_s
        self._sample_size = sample_size
        self._pool_size = pool_size
        self._pool: list[int] = []  # runners-up of the last decision
        self._random = np.zeros(0)  # uniform draws in [0, 1), used in order
        self._random_at = 0
        self._rng = np.random.default_rng(seed)
        self._fallback = S3FifoPolicy()
        self._slots = SlotTable(queues=0)
        self._slots.add_array("refs", np.int32)  # live plans that will still read it
        self._slots.add_array("resident", np.uint8)
        self._slots.add_array("member", np.int32, NIL)  # index in _members, if planned
        self._slots.add_array("held", np.uint8)  # not evictable when last asked
        self._members = np.zeros(64, dtype=np.int32)  # planned resident slots, dense
        self._count = 0
        self._plans = PlanBook(self._on_done)
        self._scan_turn = 0  # the job a prefetch call looks at first, in turn
        self._now = 0.0
        self._expiry_check_at = 0.0
        self._chosen: int = NIL  # admit()'s would-be victim, for victims() right after
        #: bytes of the unplanned residents the driver would not evict when last asked
        #: (pinned, not archived yet; flagged "held", as are such planned ones): a
        #: prefetch cannot make room there.
        self._held_bytes = 0

    # --- plans --------------------------------------------------------------------

    def declare_plan(self, job: str, keys: Sequence[Key], sizes: Sequence[int], now: float) -> None:
        check_plan(job, keys, sizes)
        if len(keys) >= 1 << 32:  # positions are uint32 in the plan index
            raise InvalidPlan(f"plan of {job!r} has {len(keys)} entries; the limit is 2**32")
        self._tick(now)
        # Close the old plan before mapping keys, so no slot is released under us.
        self._plans.close(job)
        slots = self._slots
        add = slots.add
        plan = np.fromiter((add(key) for key in keys), dtype=np.int32, count=len(keys))
        # A resident shard's size is the one it was inserted with; others take the plan's.
        cold = slots.array("resident")[plan] == 0
        slots.array("size")[plan[cold]] = np.asarray(sizes, dtype=np.int64)[cold]
        declared = self._plans.declare(job, plan, now)
        distinct = plan[declared.last]
        refs = slots.array("refs")
        refs[distinct] += 1
        resident = slots.array("resident")
        for slot in distinct[(refs[distinct] == 1) & (resident[distinct] == 1)].tolist():
            # Unplanned until now: take it from the fallback.
            self._hold(slot, False)
            self._fallback.removed(slots.key(slot))
            self._add_member(slot)

    def report_position(self, job: str, position: int, now: float) -> None:
        self._tick(now)
        self._plans.report(job, position, now)

    def close_plan(self, job: str) -> None:
        self._plans.close(job)

    def _on_done(self, done: npt.NDArray[np.int32]) -> None:
        """A job will no longer read the (distinct) slots ``done``."""
        slots = self._slots
        refs = slots.array("refs")
        refs[done] -= 1
        for slot in done[refs[done] == 0].tolist():
            if slots.view("member")[slot] != NIL:
                self._hold(slot, False)  # asked again as an unplanned one
                self._remove_member(slot)
                self._fallback.inserted(slots.key(slot), slots.size[slot], self._now)
            elif not slots.view("resident")[slot]:
                slots.release(slot)

    def _tick(self, now: float) -> None:
        self._now = now
        if now >= self._expiry_check_at:
            self._plans.expire(now, self._ttl)
            self._expiry_check_at = now + min(1.0, self._ttl / 10)

    # --- reads and residency ---------------------------------------------------------

    def record_access(self, key: Key, size: int, now: float, hit: bool) -> None:
        self._tick(now)
        self._chosen = NIL
        slot = self._slots.slot(key)
        if slot != NIL:
            self._plans.observe(slot)
        if slot == NIL or self._slots.view("refs")[slot] == 0:
            self._fallback.record_access(key, size, now, hit)

    def admit(self, key: Key, size: int, now: float, free_bytes: int) -> bool:
        if size <= free_bytes:
            return True
        slot = self._slots.slot(key)
        if slot == NIL or self._slots.view("refs")[slot] == 0:
            if self._fallback.resident_bytes or not self._count:
                # No planned shard would be displaced (with none hot at all, the room
                # is other datasets' in a shared tier): the fallback's gate decides.
                return self._fallback.admit(key, size, now, free_bytes)
            return False
        if self._fallback.resident_bytes or not self._count:
            return True  # the victims will be unplanned shards
        # The would-be victim is one eviction may take, as far as the driver's last
        # answers tell (weighed against a pinned one, a shard got in by evicting one
        # due before it).
        victim, victim_due, due = self._farthest(self._not_held, set(), also=slot)
        self._chosen = victim
        return due < victim_due

    def inserted(self, key: Key, size: int, now: float) -> None:
        self._chosen = NIL
        slots = self._slots
        slot = slots.add(key)
        self._hold(slot, False)  # before its size changes (it is asked again)
        slots.size[slot] = size
        if slots.view("resident")[slot] and slots.view("member")[slot] != NIL:
            return
        slots.view("resident")[slot] = 1
        if slots.view("refs")[slot] > 0:
            self._add_member(slot)
        else:
            self._fallback.inserted(key, size, now)

    def removed(self, key: Key) -> None:
        self._chosen = NIL
        slots = self._slots
        slot = slots.slot(key)
        if slot == NIL or not slots.view("resident")[slot]:
            return
        self._hold(slot, False)
        if slots.view("member")[slot] != NIL:
            self._remove_member(slot)
        else:
            self._fallback.removed(key)
        slots.view("resident")[slot] = 0
        if slots.view("refs")[slot] == 0:
            slots.release(slot)

    def victims(
        self, bytes_to_free: int, now: float, evictable: Callable[[Key], bool]
    ) -> list[Key]:
        self._tick(now)
        slots = self._slots

        def asked(key: Key) -> bool:
            allowed = evictable(key)
            self._hold(slots.slot(key), not allowed)
            return allowed

        chosen = self._fallback.victims(bytes_to_free, now, asked)
        freed = sum(slots.size[slots.slot(key)] for key in chosen)
        taken: set[int] = set()
        if self._chosen != NIL and freed < bytes_to_free:
            key = slots.key(self._chosen)
            if slots.view("member")[self._chosen] != NIL and asked(key):
                taken.add(self._chosen)
                chosen.append(key)
                freed += slots.size[self._chosen]
        self._chosen = NIL
        while freed < bytes_to_free and len(taken) < self._count:
            slot, _, _ = self._farthest(asked, taken)
            if slot == NIL:
                break
            taken.add(slot)
            chosen.append(slots.key(slot))
            freed += slots.size[slot]
        return chosen

    def prefetch(
        self,
        now: float,
        budget: PrefetchBudget,
        is_hot: Callable[[Key], bool],
        *,
        arriving: Callable[[Key], bool] | None = None,
    ) -> list[Key]:
        self._tick(now)
        if budget.requests <= 0 or budget.bytes <= 0 or not len(self._plans):
            return []
        # Fetching a shard evicts the unplanned residents first (the fallback's), then
        # the planned one used farthest ahead that eviction may take: past the
        # fallback's bytes, only shards due before that one are worth it; shards on
        # their way in count against the fallback's bytes too. (With no horizon while
        # the fallback held a shard, each prefetch beyond it evicted the shard fetched
        # just before, due sooner, which the next pass fetched again: several fetches
        # per shard a job read in order. A horizon set by a pinned shard did the same.)
        # With no planned resident eviction may take (none hot, or every one held), a
        # fetch displaces no planned shard: no horizon. (Taken from the search's "none"
        # answer, -inf, it stopped every pass before its first entry.)
        horizon = np.inf
        unplanned = max(0, self._fallback.resident_bytes - self._held_bytes)
        if self._count:
            farthest, due, _ = self._farthest(self._not_held, set())
            if farthest != NIL:
                horizon = due
        scan_horizon = np.inf if unplanned else horizon
        slots = self._slots
        resident = slots.view("resident")
        wanted: dict[int, float] = {}
        hot: set[int] = set()  # slots found hot in this call: asked once, not per job
        incoming = 0  # bytes of planned shards being fetched (hot to the driver)
        jobs = list(self._plans)
        first = self._scan_turn % len(jobs)
        left = _PREFETCH_SCAN_TOTAL
        for turn, job in enumerate(jobs[first:] + jobs[:first]):
            if left <= 0:
                break
            self._scan_turn = first + turn + 1  # the next call starts after this job
            rate = self._plans.rate(job)
            found = 0
            end = min(len(job), job.position + _PREFETCH_SCAN, job.position + left)
            for index in range(job.position, end):
                left -= 1  # entries looked at, not the most that might have been
                due = (index - job.position) / rate
                if due >= scan_horizon or found >= budget.requests:
                    break
                slot = job.slot_view[index]
                if slot in hot:
                    continue
                if slot in wanted:  # another job's too: the sooner of the two counts
                    wanted[slot] = min(wanted[slot], due)
                    continue
                if resident[slot] or is_hot(slots.key(slot)):
                    # On its way in, it takes unplanned room too; one that never comes
                    # (larger than the tier takes) takes none.
                    if not resident[slot] and (arriving is None or arriving(slots.key(slot))):
                        incoming += int(slots.size[slot])
                    hot.add(slot)
                    continue
                wanted[slot] = due
                found += 1
        picked: list[Key] = []
        spent, fetched = 0, incoming
        for slot in sorted(wanted, key=wanted.__getitem__):
            if len(picked) == budget.requests:
                break
            size = int(slots.size[slot])
            if wanted[slot] >= horizon and fetched + size > unplanned:
                break  # it would evict a planned shard due sooner than itself
            if not picked and size > budget.bytes:
                # The most urgent shard is named even when it alone is larger than the
                # bytes, else one larger than the whole look-ahead would never be
                # fetched. The driver takes it (alone) only when nothing else is in
                # flight, else passes it over: the rest fills the bytes without it.
                picked.append(slots.key(slot))
                fetched += size
            elif spent + size <= budget.bytes:
                picked.append(slots.key(slot))
                spent += size
                fetched += size
        return picked

    @classmethod
    def metadata_bytes_per_shard(cls) -> int:
        own = SLOT_TABLE_BYTES + 4 + 1 + 1 + 4 + 4
        return own + S3FifoPolicy.metadata_bytes_per_shard()

    def _hold(self, slot: int, held: bool) -> None:
        """Flag resident ``slot`` as one the driver would not evict (or not: it left
        the tier or changed sides, or was evictable when asked), counting the bytes of
        the unplanned ones."""
        slots = self._slots
        flags = slots.view("held")
        if bool(flags[slot]) != held:
            flags[slot] = int(held)
            if slots.view("member")[slot] == NIL:
                size = int(slots.size[slot])
                self._held_bytes += size if held else -size

    def _not_held(self, key: Key) -> bool:
        """Whether the driver would evict ``key``, as far as the policy knows."""
        return not self._slots.view("held")[self._slots.slot(key)]

    # --- the planned residents --------------------------------------------------------

    def _farthest(
        self, evictable: Callable[[Key], bool], taken: set[int], also: int = NIL
    ) -> tuple[int, float, float]:
        """A planned resident with the farthest next use among the pool and a fresh
        sample, as (slot, its due time, the due time of slot ``also`` looked up in the
        same kernel call); (NIL, -inf, inf) if none is evictable. The runners-up stay
        in the pool for the next decision (Redis's eviction pool): a good candidate
        found once is not lost, so a small sample per decision does as well as a big
        one. Tries a few samples, then all planned residents."""
        count = self._count
        member = self._slots.view("member")
        for attempt in range(4):
            if attempt < 3 and count > self._sample_size:
                pool = np.array([s for s in self._pool if member[s] != NIL], dtype=np.int64)
                picks = np.concatenate((pool, self._members[self._sample(count)]))
            else:
                picks = self._members[:count].astype(np.int64)
            extra = np.array([also] if also != NIL else [], dtype=np.int64)
            candidates = np.concatenate((picks, extra))
            due = self._plans.next_use(candidates)
            also_due = float(due[-1]) if also != NIL else np.inf
            order = np.argsort(-due[: len(picks)], kind="stable")
            ranked = picks[order].tolist()
            for rank, slot in enumerate(ranked):
                if slot not in taken and evictable(self._slots.key(slot)):
                    runners_up = dict.fromkeys(s for s in ranked if s != slot)
                    self._pool = list(runners_up)[: self._pool_size]
                    return slot, float(due[order[rank]]), also_due
            if count <= self._sample_size:
                break
        return NIL, -np.inf, np.inf

    def _sample(self, count: int) -> npt.NDArray[np.int64]:
        """``sample_size`` random indices below ``count`` (drawn in bulk: one
        generator call per call is a large share of a decision's cost)."""
        if self._random_at + self._sample_size > len(self._random):
            self._random, self._random_at = self._rng.random(8192), 0
        start, self._random_at = self._random_at, self._random_at + self._sample_size
        return (self._random[start : self._random_at] * count).astype(np.int64)

    def _add_member(self, slot: int) -> None:
        if self._count == len(self._members):
            self._members = np.resize(self._members, 2 * self._count)
        self._members[self._count] = slot
        self._slots.view("member")[slot] = self._count
        self._count += 1

    def _remove_member(self, slot: int) -> None:
        member = self._slots.view("member")
        index, last = member[slot], self._count - 1
        moved = int(self._members[last])
        self._members[index] = moved
        member[moved] = index
        member[slot] = NIL
        self._count = last
