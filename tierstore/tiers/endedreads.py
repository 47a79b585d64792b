"""Read transactions that have ended, kept until no one else holds them.

py-lmdb 1.x frees an ended read transaction when its Python object goes, and lets go
of the GIL to do so. An object that went in a reader's thread just after its read was
counted done could so be freed while another thread closed (unmapped) the environment:
a SIGBUS, about one close in 40 under two reading threads. Kept here, ended
transactions are freed only by :meth:`EndedReads.end` and :meth:`EndedReads.free`,
which their owner calls while a read still counts as under way (so a close waits), or
let go by :meth:`EndedReads.forget` after the close, which invalidated them first.

Each kept transaction holds its reader slot until it is freed: at most
:data:`PRUNE_AT` are kept past their last holder, and a reader table found full frees
them all (``free()``). Thread-safe.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

__all__ = ["PRUNE_AT", "EndedReads"]

#: ended read transactions kept at most before those no one holds are freed.
PRUNE_AT = 16


class EndedReads:
    """The ended read transactions of one environment in one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: list[Any] = []

    def end(self, txn: Any) -> None:
        """Abort read transaction ``txn`` and keep it; free those no one holds past
        :data:`PRUNE_AT`. Call it while ``txn``'s read still counts as under way."""
        txn.abort()
        with self._lock:
            self._kept.append(txn)
        self.free(keep_at_most=PRUNE_AT)

    def free(self, keep_at_most: int = 0) -> None:
        """Past ``keep_at_most`` kept, free the transactions no one else holds. Call it
        while a read of this process counts as under way."""
        # Nothing is allocated with the lock held: an allocation may start a garbage
        # collection, which may end a read lease caught in a reference cycle, whose
        # end() takes this lock (it deadlocked when the list was filtered under it).
        fresh: list[Any] = []
        with self._lock:
            if len(self._kept) <= keep_at_most:
                return
            kept, self._kept = self._kept, fresh
        # Held by `kept`, the loop and getrefcount's argument alone: no one's.
        survivors = [txn for txn in kept if sys.getrefcount(txn) > 3]
        del kept  # frees the others, here
        with self._lock:
            self._kept.extend(survivors)  # with any ended meanwhile

    def forget(self) -> None:
        """Let them all go: after the environment closed (which invalidated them), or
        in a forked child (py-lmdb leaves a parent's transactions be there)."""
        with self._lock:
            self._kept = []
