"""How often a refused call gets an audit line of its own.

Every call refused for its credentials was audited, one line (about 330 bytes) each:
an observability review's client without a token grew the node's log by 1.3 GB an hour.
A :class:`RefusalLog` lets through the first refusal of each kind (peer host, reason,
and for a token the node knows, its id) in a window and counts the rest, which the next
line of that kind gives as ``repeats``, or a line of their own when the kind is
forgotten. A token id the node does not know is no part of the kind: a client making
one up for every call would have had a line for each. Every refusal is still counted
in ``tierstore_requests_total``; only the lines are thinned, and a flood that stops
leaves its last window's count unsaid (the metric has it).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["RefusalLog", "peer_host"]

#: a refusal of each kind audited at most once per this many seconds
WINDOW_S = 10.0
#: kinds remembered at once (oldest forgotten first): a scan from many hosts, or with
#: many token ids, costs bounded memory, and a kind forgotten is audited afresh
MAX_KINDS = 1024


class RefusalLog:
    """Which refusals to audit. Thread-safe."""

    def __init__(
        self,
        window_s: float = WINDOW_S,
        max_kinds: int = MAX_KINDS,
        clock: Callable[[], float] = time.monotonic,
        forgotten: Callable[[tuple[str, ...], int], None] = lambda kind, count: None,
    ) -> None:
        """``forgotten(kind, count)`` is called for a kind forgotten (past ``max_kinds``)
        with ``count`` refusals not audited, so that none goes unsaid."""
        self._window_s, self._max_kinds, self._clock = window_s, max_kinds, clock
        self._forgotten = forgotten
        self._lock = threading.Lock()
        #: by kind: when its window began, and the refusals not audited since
        self._kinds: OrderedDict[tuple[str, ...], tuple[float, int]] = OrderedDict()

    def admit(self, kind: tuple[str, ...]) -> int | None:
        """None when a refusal of ``kind`` is not to be audited (one was, this window);
        else how many of that kind went unaudited before it (0: none)."""
        now = self._clock()
        with self._lock:
            seen = self._kinds.get(kind)
            if seen is not None and now - seen[0] < self._window_s:
                self._kinds[kind] = (seen[0], seen[1] + 1)
                return None
            self._kinds[kind] = (now, 0)
            self._kinds.move_to_end(kind)
            while len(self._kinds) > self._max_kinds:
                old, (_, count) = self._kinds.popitem(last=False)
                if count:
                    self._forgotten(old, count)
            return 0 if seen is None else seen[1]


def peer_host(peer: str) -> str:
    """The host part of a gRPC peer string (``ipv4:10.0.0.1:5555`` → ``ipv4:10.0.0.1``,
    ``ipv6:[::1]:5555`` → ``ipv6:[::1]``): each connection has a port of its own."""
    if peer.startswith(("ipv4:", "ipv6:")):
        host, _, port = peer.rpartition(":")
        if port.isdigit():
            return host
    return peer
