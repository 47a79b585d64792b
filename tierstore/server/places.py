"""Places for the calls that hold a worker for long: a bound on all of them at once,
and on one caller's share of them.

The server has a fixed pool of workers. The calls that may hold one for long, shard
streams (:mod:`tierstore.server.streamslots`) and calls waiting on the archive
(:mod:`tierstore.server.archivecalls`), each first take a place of a bound smaller than
the pool, so that the workers left serve the rest; every call takes a place of the
workers themselves (:mod:`tierstore.server.callerworkers`); and one caller (a principal, by
name: every process that holds its token counts as one) holds at most ``per_caller``
of a bound's places (three quarters by default, at least one; ``serve --caller-share``),
so that one that opens many calls
and reads none, or just many, leaves the rest to the node's other callers. A call past
either is refused at once with ServerBusy (an Unavailable: nothing of it was done),
which clients make again after a pause, a put too, for up to two minutes: a refusal
here is a queue in the client. A caller on a node of its own is bounded by its share
too: a node whose callers are one user (one token for every job) may be given a share
of 1, which bounds nothing but the places. Not done: a share that shrinks as callers come, so
two callers that each take theirs can still hold every place between them (the workers
keep a few places for the node's admins, :mod:`tierstore.server.callerworkers`).

Thread safety: one bound serves every handler thread of a server.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from tierstore.errors import InvalidArgument, ServerBusy

__all__ = ["CALLER_SHARE", "Places", "check_caller_share"]

#: of a bound's places, the share that one caller's calls may hold (by default).
CALLER_SHARE = 0.75


def check_caller_share(share: float) -> None:
    """InvalidArgument unless ``share`` is a number in (0, 1]."""
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
        raise InvalidArgument(
            f"the caller share must be a number above 0 and at most 1 (1: none), got {share!r}"
        )


class Places:
    """At most ``slots`` calls at once, and ``per_caller`` of them for any one caller.
    Subclasses say what they bound (:attr:`calls`) and word the refusal when every
    place is taken (:meth:`_all_taken`)."""

    #: what the places are held by, for the refusals ("shard streams")
    calls = "calls"

    def __init__(self, slots: int, share: float = CALLER_SHARE, group_bound: int = 0) -> None:
        """``group_bound``: the places the calls of a group of callers (those taken
        with ``in_group``) hold at most together; 0: no such bound."""
        if slots < 1:
            raise InvalidArgument(f"{self.calls} places must be at least 1, got {slots}")
        check_caller_share(share)
        self.slots = slots
        self.per_caller = max(1, int(slots * share))
        self.group_bound = group_bound or slots
        self._lock = threading.Lock()
        self._taken = 0
        self._in_group = 0
        self._by_caller: Counter[str] = Counter()

    @property
    def in_use(self) -> int:
        """The places held now (for the node's metrics)."""
        return self._taken

    @contextmanager
    def slot(self, what: str, who: str) -> Iterator[None]:
        """Hold a place while the block runs ``what`` (for the error: "a shard read")
        for the caller named ``who``; ServerBusy at once if none is free to it."""
        self.take(what, who)
        try:
            yield
        finally:
            self.give_back(who)

    def take(self, what: str, who: str, *, in_group: bool = False) -> None:
        """Take a place for ``who`` (one of the group's callers when ``in_group``) until
        :meth:`give_back`; ServerBusy if none is free to it (:meth:`slot` for a block)."""
        self._take(what, who, in_group=in_group)

    def _take(self, what: str, who: str, *, keep: bool = True, in_group: bool = False) -> None:
        """Take a place for ``who`` (without ``keep``, only look that one is free to it);
        ServerBusy if none is: the caller's own share is named first, as what it can
        change."""
        with self._lock:
            held = self._by_caller[who]
            its_share_taken = held >= self.per_caller or self._taken >= self.slots
            group_full = in_group and self._in_group >= self.group_bound
            if not (its_share_taken or group_full) and keep:
                self._taken += 1
                self._by_caller[who] += 1
                self._in_group += in_group
        if its_share_taken:
            self._refuse(what, who, held)
        if group_full:
            raise ServerBusy(f"{what}: {self._group_full()}; retry shortly")

    def give_back(self, who: str, *, in_group: bool = False) -> None:
        """Give back a place :meth:`take` took for ``who`` (``in_group`` as it was taken)."""
        with self._lock:
            assert self._by_caller[who] > 0, "a place given back that was not taken"
            self._taken -= 1
            self._in_group -= in_group
            self._by_caller[who] -= 1
            if not self._by_caller[who]:
                del self._by_caller[who]

    def _refuse(self, what: str, who: str, held: int) -> NoReturn:
        if held >= self.per_caller:
            bound = (
                f"{who} holds {held} of the node's {self.slots} {self.calls} already, the "
                "most one caller holds (the rest are kept for its other callers)"
            )
        else:
            bound = self._all_taken()
        raise ServerBusy(f"{what}: {bound}; retry shortly")

    def _all_taken(self) -> str:
        """Why a call is refused when every place is taken."""
        return f"the node serves {self.slots} {self.calls} at once, and every place is taken"

    def _group_full(self) -> str:
        """Why a call of the group is refused when the group holds its bound."""
        return f"its callers hold {self.group_bound} of the node's {self.slots} {self.calls}"
