"""How the simulated archive link moves fetches: channels of their own, or one shared link.

:class:`SharedLink` is one link of a fixed rate that the transfers in flight split evenly
(processor sharing): what TCP flows through one bottleneck get, and what the throttling
proxy's one token bucket, taken in turn in 64 KiB chunks, gives its connections. A lone
transfer gets the whole rate; ``k`` that start together finish together, each after ``k``
times its own time. :class:`Channels` gives every transfer a channel of its own.

Both are driven the same way, on the trace's clock: :meth:`advance` to an event's time
(which reports the transfers done by then, in order), or :meth:`next_done` step by step
to act at each completion, then :meth:`add` transfers that start at that time. Pure and
deterministic.
"""

from __future__ import annotations

import copy
import heapq
import math

__all__ = ["Channels", "SharedLink"]


class Channels:
    """Every transfer on a channel of its own that moves ``rate`` bytes/s."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._done_at: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._done_at)

    def __contains__(self, transfer: object) -> bool:
        return transfer in self._done_at

    def add(self, transfer: int, size: int, now: float, latency: float = 0.0) -> None:
        """Request ``transfer`` (a new id) of ``size`` bytes at ``now``; its first byte
        comes ``latency`` seconds later."""
        self._done_at[transfer] = now + latency + size / self._rate

    def advance(self, now: float) -> list[tuple[int, float]]:
        """Forget the transfers done by ``now``; ``(transfer, when done)`` of each, in order."""
        done = sorted((at, transfer) for transfer, at in self._done_at.items() if at <= now)
        for _, transfer in done:
            del self._done_at[transfer]
        return [(transfer, at) for at, transfer in done]

    def next_done(self, now: float) -> list[tuple[int, float]]:
        """Like :meth:`advance`, but only up to the first time a transfer is done (if
        one is by ``now``): the transfers done at that time."""
        first = min(self._done_at.values(), default=math.inf)
        return self.advance(first) if first <= now else []

    def done_at(self, transfer: int) -> float:
        """When ``transfer`` (still on its channel) will be done."""
        return self._done_at[transfer]


class SharedLink:
    """One link of ``rate`` bytes/s split evenly among the transfers on it.

    A transfer requested with a ``latency`` (the store's time to first byte) joins the
    link that much later: until then it takes no share. The link is a token bucket:
    while it idles it saves up to ``burst_bytes``, which the next transfer to join gets
    at once (the proxy's bucket starts full).
    """

    def __init__(self, rate: float, burst_bytes: int = 0) -> None:
        self._rate = rate
        self._burst = burst_bytes
        #: bytes each transfer on the link has left to move, as of ``_clock``.
        self._left: dict[int, float] = {}
        #: requested transfers not on the link yet: (when they join, transfer, size).
        self._joining: list[tuple[float, int, int]] = []
        self._clock = -math.inf
        self._idle_since = -math.inf

    def __len__(self) -> int:
        return len(self._left) + len(self._joining)

    def __contains__(self, transfer: object) -> bool:
        return transfer in self._left or any(transfer == t for _, t, _ in self._joining)

    def add(self, transfer: int, size: int, now: float, latency: float = 0.0) -> None:
        """Request ``transfer`` (a new id) of ``size`` bytes at ``now``; it joins the
        link ``latency`` seconds later. The link must have been advanced to ``now``
        first (transfers finish at their own times, not at ``now``, only if it was).
        ValueError if ``now`` is before the time advanced to."""
        if now < self._clock:
            raise ValueError(f"a transfer at {now} starts before the link's time {self._clock}")
        if now > self._clock and (self._left or self._joining):
            raise ValueError(f"advance the link to {now} before adding a transfer then")
        self._clock = now
        heapq.heappush(self._joining, (now + latency, transfer, size))
        self._join_due()

    def _join_due(self) -> None:
        """Put on the link every requested transfer whose first byte is due by now."""
        while self._joining and self._joining[0][0] <= self._clock:
            _, transfer, size = heapq.heappop(self._joining)
            saved = 0.0
            if not self._left:
                idle = max(0.0, self._clock - self._idle_since)
                saved = min(float(self._burst), idle * self._rate)
            self._left[transfer] = max(0.0, size - saved)

    def advance(self, now: float) -> list[tuple[int, float]]:
        """Move the link on to ``now``; ``(transfer, when done)`` of each transfer done by
        then, in order of completion."""
        done: list[tuple[int, float]] = []
        while step := self.next_done(now):
            done += step
        return done

    def next_done(self, now: float) -> list[tuple[int, float]]:
        """Move the link on to the first time a transfer is done, if one is by ``now``,
        and return the transfers done then; else move it on to ``now`` and return []."""
        while True:
            joins = self._joining[0][0] if self._joining else math.inf
            until = min(now, joins)
            if not self._left:
                self._clock = max(self._clock, until)
                if not self._joining or joins > now:
                    return []
                self._join_due()
                continue
            sharing = len(self._left)
            smallest = min(self._left.values())
            finish = self._clock + smallest * sharing / self._rate
            if finish <= until:
                return self._finish(smallest, finish)
            moved = max(0.0, until - self._clock) * self._rate / sharing
            for transfer in self._left:
                # Rounding must not leave a negative count (finish was just past until).
                self._left[transfer] = max(0.0, self._left[transfer] - moved)
            self._clock = max(self._clock, until)
            if joins > now:
                return []
            self._join_due()

    def _finish(self, smallest: float, finish: float) -> list[tuple[int, float]]:
        """The link moves on to ``finish``, when the transfers with ``smallest`` bytes
        left are done; those transfers."""
        self._clock = finish
        done: list[tuple[int, float]] = []
        for transfer, left in list(self._left.items()):
            # x - x is exactly 0.0: the smallest ones (and their equals) are done.
            if left - smallest <= 0.0:
                del self._left[transfer]
                done.append((transfer, finish))
            else:
                self._left[transfer] = left - smallest
        if not self._left:
            self._idle_since = finish
        self._join_due()
        return done

    def done_at(self, transfer: int) -> float:
        """When ``transfer`` (requested, not done) will be done if no other is requested."""
        for other, when in copy.deepcopy(self).advance(math.inf):
            if other == transfer:
                return when
        raise KeyError(transfer)
