"""Telling the service what a worker is about to read: its epoch order as an access plan.

The clairvoyant placement policy prefetches just ahead of a declared plan and evicts what
it needs furthest in the future (DESIGN.md 3.3). Each worker declares its own order at the
start of its epoch — compactly as a :class:`~tierstore.plans.SamplerPlan` when it reads a
prefix (or all) of the dataset, since the server regenerates the same order from it, or as
the explicit shard list when the user named the shards, with the shards a resumed epoch
has done already — reports how many shards it has finished as it goes, and closes the
plan at the end. A sampler plan carries a digest of the shard names the dataset object
listed; a server that lists others under the prefix now (shards added or deleted since)
refuses it (PlanShardsChanged), and the worker's order is declared as its explicit list
instead, so the plan is what the worker reads.

The plan is advisory: it must never break reading. A client without the plan calls yet
(AttributeError), a server that does not know the plan or the dataset (NotFound), one that
is unavailable, or any other refusal is logged once per process and the plan is dropped
for the rest of the epoch; reading carries on. An abandoned plan expires after ``ttl_s``.

Not thread-safe: one reporter belongs to the thread that iterates the worker's epoch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from tierstore.errors import (
    DatasetNotFound,
    PermissionDenied,
    PlanShardsChanged,
    TierstoreError,
    Unauthenticated,
)
from tierstore.plans import DEFAULT_PLAN_TTL_S, SamplerPlan

__all__ = ["REPORT_INTERVAL_S", "PlanReporter"]

_log = logging.getLogger(__name__)

#: the least time between two position reports of one worker.
REPORT_INTERVAL_S = 0.25

#: error kinds already logged in this process (one line each, not one per worker epoch)
_logged: set[str] = set()


class PlanReporter:
    """One worker epoch's access plan on the service, or nothing when that fails."""

    def __init__(
        self,
        client: Any,
        dataset: str,
        *,
        ttl_s: float = DEFAULT_PLAN_TTL_S,
        report_interval_s: float = REPORT_INTERVAL_S,
    ) -> None:
        self._client = client
        self._dataset = dataset
        self._ttl_s = ttl_s
        self._interval_s = report_interval_s
        self._job: str | None = None
        self._reported = -1
        self._reported_at = float("-inf")

    @property
    def job(self) -> str | None:
        """The plan's job id while a plan is open, else None."""
        return self._job

    def declare(
        self,
        *,
        sampler: SamplerPlan | None = None,
        shards: Sequence[str] | None = None,
        prefix: str = "",
        position: int = 0,
        order: Sequence[str] | None = None,
    ) -> None:
        """Declare the order (``sampler`` over ``prefix``'s shards, or the explicit
        ``shards``); ``position`` shards of it are already done (a resumed epoch).
        ``order``, with ``sampler``: the shards it orders, declared instead when the
        server refuses the sampler as made over other shards than the prefix has now.

        The position goes with the declaration, not in a report right after it: the
        policy rates the reader by its reports over time, and took a start reported a
        round trip after the declaration for shards read in that moment (the first
        report past it is paced from the declaration, as from a report).
        """
        self._job = None
        # Sent only when there is one, so a declaration from the start is as it was.
        start: dict[str, Any] = {"position": position} if position else {}
        changed = (PlanShardsChanged,) if order is not None else ()
        try:
            job = self._call(
                "declare_plan",
                self._dataset,
                sampler=sampler,
                shards=list(shards) if shards is not None else None,
                prefix=prefix,
                ttl_s=self._ttl_s,
                passing=changed,
                **start,
            )
        except PlanShardsChanged:
            # Shards were added under the prefix (or deleted) since the dataset object
            # listed them: the server's order over them is not the one read here.
            assert order is not None
            job = self._call(
                "declare_plan",
                self._dataset,
                sampler=None,
                shards=list(order),
                prefix="",
                ttl_s=self._ttl_s,
                **start,
            )
        self._job = job if isinstance(job, str) and job else None
        if self._job is not None and position:
            self._reported, self._reported_at = position, time.monotonic()

    def report(self, position: int) -> None:
        """``position`` shards of the declared order are finished: sent when it moved and
        at least ``report_interval_s`` passed since the last report.

        The call blocks the thread that builds batches, so reports are paced by time, not
        sent per shard: the policy estimates the job's rate from them, and a few reports a
        second are plenty for that.
        """
        if self._job is None or position <= self._reported:
            return
        now = time.monotonic()
        if now - self._reported_at < self._interval_s:
            return
        self._reported, self._reported_at = position, now
        self._call("report_position", self._job, position)

    def close(self) -> None:
        """Close the plan (idempotent; a failure is logged once and ignored)."""
        if self._job is not None:
            self._call("close_plan", self._job)
        self._job = None

    def _call(
        self,
        method: str,
        *args: Any,
        passing: tuple[type[TierstoreError], ...] = (),
        **kwargs: Any,
    ) -> Any:
        """``client.method(*args, **kwargs)``, or None — and the plan dropped — on failure
        (an error of a class in ``passing`` is raised, for the caller to handle)."""
        function = getattr(self._client, method, None)
        if function is None:
            _warn_once(
                f"missing {method}",
                f"this tierstore client has no {method}(); the access plan is not sent "
                "(reading is unaffected)",
            )
            self._job = None
            return None
        try:
            return function(*args, **kwargs)
        except passing:
            raise
        except Exception as exc:  # advisory: nothing here may stop the reads
            # An error of the caller's authority or of the dataset fails the reads too:
            # "unaffected" was said just before they failed with the same error.
            reads = (
                "the reads will likely fail with it too"
                if isinstance(exc, Unauthenticated | PermissionDenied | DatasetNotFound)
                else "reading is unaffected"
            )
            _warn_once(
                f"{method} {type(exc).__name__}",
                f"{method} failed ({type(exc).__name__}: {exc}); the access plan is dropped "
                f"for this epoch ({reads})",
                # A foreign exception may be a bug worth its stack; ours say what they mean.
                exc_info=not isinstance(exc, TierstoreError),
            )
            self._job = None
            return None


def _warn_once(key: str, message: str, *, exc_info: bool = False) -> None:
    """Log ``message`` unless this process already logged one under ``key``."""
    if key not in _logged:
        _logged.add(key)
        _log.warning(message, exc_info=exc_info)
