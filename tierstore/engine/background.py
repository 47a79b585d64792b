"""Background threads run at a lower CPU priority than the threads that serve callers.

Uploads, promotions and evictions are work the engine decides when to do; reads and
puts are work a caller is waiting for. When every core is busy, the scheduler should
give the second kind first claim. Linux applies a nice value to each thread, so the
mover's journal thread and the promoter's fill thread raise their own when they
start (RocksDB lowers its compaction threads' priority for the same reason).
Raising a nice value needs no privilege, but an unprivileged thread can never lower
it again, so a lowered thread only ever does background work.

The cost is priority inversion on the GIL: a lowered thread holding it while other
processes take the cores delays the threads waiting for it. The work of these threads
is mostly in C that releases the GIL (LMDB, hashing, sockets), and a moderate nice
value keeps them a real share of a busy core (nice 10 weighs about a tenth of nice
0), so they are slowed, never stopped.

Elsewhere than Linux, a nice value set this way would apply to the whole process,
so there the threads keep the process's priority.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

__all__ = ["MAX_NICENESS", "lower_this_thread"]

log = logging.getLogger(__name__)

#: the lowest priority a nice value can give.
MAX_NICENESS = 19


def lower_this_thread(niceness: int) -> None:
    """Run the calling thread ``niceness`` steps below the process's priority (capped
    at nice 19); no effect at 0, elsewhere than Linux, or on a thread already lower.
    Never raises: where the system refuses, the thread keeps its priority (logged)."""
    if niceness <= 0 or sys.platform != "linux":
        return
    thread_id = threading.get_native_id()
    try:
        target = min(MAX_NICENESS, os.getpriority(os.PRIO_PROCESS, os.getpid()) + niceness)
        if os.getpriority(os.PRIO_PROCESS, thread_id) < target:
            os.setpriority(os.PRIO_PROCESS, thread_id, target)
    except OSError as exc:  # e.g. a sandbox that forbids it: run on, at the same priority
        log.warning("cannot lower the priority of thread %s: %s", thread_id, exc)
