"""How the simulated archive link moves fetches: channels of their own, or one shared link.

:class:`SharedLink` is one link of a fixed rate that the transfers in flight split evenly
(processor sharing): what TCP flows through one bottleneck get, and what the throttling
proxy's one token bucket, taken in turn in 64 KiB chunks, gives its connections. A lone
transfer gets the whole rate; ``k`` that start together finish together, each after ``k``
times its own time. :class:`Channels` gives every transfer a channel of its own.

Both are driven the same way, on the trace's clock: :meth:`advance` to an event's time
(which reports the transfers done by then, in order), then :meth:`add` transfers that
start at that time. Pure and deterministic.
"""

from __future__ import annotations

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

    def add(self, transfer: int, size: int, now: float) -> None:
        """Start ``transfer`` (a new id) of ``size`` bytes at ``now``."""
        self._done_at[transfer] = now + size / self._rate

    def advance(self, now: float) -> list[tuple[int, float]]:
        """Forget the transfers done by ``now``; ``(transfer, when done)`` of each, in order."""
        done = sorted((at, transfer) for transfer, at in self._done_at.items() if at <= now)
        for _, transfer in done:
            del self._done_at[transfer]
        return [(transfer, at) for at, transfer in done]

    def done_at(self, transfer: int) -> float:
        """When ``transfer`` (still on its channel) will be done."""
        return self._done_at[transfer]


class SharedLink:
    """One link of ``rate`` bytes/s split evenly among the transfers on it.

    The link is a token bucket: while it idles it saves up to ``burst_bytes``, which the
    next transfer to start gets at once (the proxy's bucket starts full).
    """

    def __init__(self, rate: float, burst_bytes: int = 0) -> None:
        self._rate = rate
        self._burst = burst_bytes
        #: bytes each transfer on the link has left to move, as of ``_clock``.
        self._left: dict[int, float] = {}
        self._clock = -math.inf
        self._idle_since = -math.inf

    def __len__(self) -> int:
        return len(self._left)

    def __contains__(self, transfer: object) -> bool:
        return transfer in self._left

    def add(self, transfer: int, size: int, now: float) -> None:
        """Start ``transfer`` (a new id) of ``size`` bytes at ``now``. The link must have
        been advanced to ``now`` first (transfers finish at their own times, not at
        ``now``, only if it was). ValueError if ``now`` is before the time advanced to."""
        if now < self._clock:
            raise ValueError(f"a transfer at {now} starts before the link's time {self._clock}")
        saved = 0.0
        if not self._left:
            saved = min(float(self._burst), max(0.0, now - self._idle_since) * self._rate)
        self._left[transfer] = max(0.0, size - saved)
        self._clock = max(self._clock, now)

    def advance(self, now: float) -> list[tuple[int, float]]:
        """Move the link on to ``now``; ``(transfer, when done)`` of each transfer done by
        then, in order of completion."""
        done: list[tuple[int, float]] = []
        while self._left:
            sharing = len(self._left)
            smallest = min(self._left.values())
            finish = self._clock + smallest * sharing / self._rate
            if finish > now:
                moved = max(0.0, now - self._clock) * self._rate / sharing
                for transfer in self._left:
                    self._left[transfer] -= moved
                break
            self._clock = finish
            for transfer, left in list(self._left.items()):
                # x - x is exactly 0.0: the smallest ones (and their equals) are done.
                if left - smallest <= 0.0:
                    del self._left[transfer]
                    done.append((transfer, finish))
                else:
                    self._left[transfer] = left - smallest
            if not self._left:
                self._idle_since = finish
        self._clock = max(self._clock, now)
        return done

    def done_at(self, transfer: int) -> float:
        """When ``transfer`` (on the link) will be done if no other transfer starts."""
        clock, moved = self._clock, 0.0
        ordered = sorted(self._left.items(), key=lambda item: item[1])
        for index, (other, left) in enumerate(ordered):
            clock += (left - moved) * (len(ordered) - index) / self._rate
            moved = left
            if other == transfer:
                return clock
        raise KeyError(transfer)
