"""Process-wide allocator tuning for a storage process (glibc only).

A put allocates multi-MiB frame buffers and LMDB allocates the pages of every
large value afresh in each write transaction. glibc serves requests above its
mmap threshold (128 KiB to 32 MiB, adapting) with fresh ``mmap`` calls and
returns them at ``free``: every 4 MiB frame then costs ~1,000 page faults that
the kernel answers by zeroing pages — measured at over a quarter of a put's CPU
time. Raising the mmap and trim thresholds above the largest frame keeps that
memory in the heap for reuse, at the price of holding on to freed memory up to
the trim threshold.

This changes the whole process, so the library never does it on its own: the
server and :func:`tierstore.engine.bootstrap.open_store` call it, and embedders
may.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["tune_allocator"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator(max_frame_bytes: int) -> bool:
    """Keep buffers of up to a few frames in the heap; returns False where not glibc.

    Safe to call more than once; never raises.
    """
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    threshold = min(max(4 * max_frame_bytes, 32 << 20), 1 << 30)
    ok = bool(mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(threshold)))
    # Keep up to a few shards' worth of freed memory: a promotion frees a whole shard
    # at once, and giving it back each time costs the page faults we are avoiding.
    trim = min(max(8 * threshold, 256 << 20), 1 << 30)
    ok = bool(mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trim))) and ok
    if not ok:
        log.warning("mallopt refused the allocator thresholds; puts will be slower")
    return ok
