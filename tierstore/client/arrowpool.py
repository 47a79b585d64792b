"""pyarrow's default memory pool, made one that a forked child can allocate from.

pyarrow allocates from mimalloc by default, and mimalloc registers no fork handlers.
It takes process-wide locks when a thread makes its first allocation and when a thread
ends. A ``fork()`` made while another thread holds one leaves it held in the child for
good, and every thread the child starts then hangs at its first Arrow allocation. Seen:
a DataLoader worker whose read-ahead threads hung in mimalloc's thread set-up (a stack
dump of the worker), forked while the parent's reading thread started and ended
read-ahead threads; about one test-suite run in ten. The client's fork gate cannot
help: threads start and end outside any call of ours. A stress run (three threads
starting and ending threads that allocate while the main thread forks, each child
allocating on a new thread) hung 3 children in 15,700 forks with mimalloc and none in
17,400 with jemalloc.

jemalloc takes its locks before ``fork()`` and frees them after, in both processes
(it registers ``pthread_atfork`` handlers), and glibc's malloc is made safe by
``fork()`` itself. So a process that uses the client makes jemalloc pyarrow's default
pool — the system allocator where pyarrow was built without jemalloc — unless
``ARROW_DEFAULT_MEMORY_POOL`` chose a pool: that choice is the user's, and is kept
(with a RuntimeWarning at import if the pool it chose is not fork-safe). Buffers
allocated before keep the pool they came from.
"""

from __future__ import annotations

import os
import warnings

import pyarrow as pa

__all__ = ["FORK_SAFE_BACKENDS", "use_fork_safe_pool"]

#: Allocators whose locks a ``fork()`` cannot leave held in the child.
FORK_SAFE_BACKENDS = frozenset({"jemalloc", "system"})


def use_fork_safe_pool() -> str:
    """Make a fork-safe pool pyarrow's default unless ``ARROW_DEFAULT_MEMORY_POOL``
    names one (warns if that one is not fork-safe); returns the name of the default
    pool's allocator now. Idempotent."""
    current: str = pa.default_memory_pool().backend_name
    if current in FORK_SAFE_BACKENDS:
        return current
    asked = os.environ.get("ARROW_DEFAULT_MEMORY_POOL")
    if asked:
        warnings.warn(
            f"ARROW_DEFAULT_MEMORY_POOL={asked} is kept, and pyarrow allocates from "
            f"{current}, which has no fork handlers: a child forked while a thread starts "
            "or ends (a DataLoader's worker) can hang for good at its first Arrow "
            "allocation on a new thread; unset it to let tierstore choose jemalloc",
            RuntimeWarning,
            stacklevel=2,
        )
        return current
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc
        pool = pa.system_memory_pool()
    pa.set_memory_pool(pool)
    chosen: str = pool.backend_name
    return chosen
