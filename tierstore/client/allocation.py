"""Where received and decrypted frames land: 64-byte-aligned buffers, pinned if asked.

An encrypted frame read in place is decrypted exactly once, straight into a buffer
from a :data:`FrameAllocator` (``size -> writable pyarrow.Buffer``). The default is
:func:`aligned_buffer` (Arrow's pool: 64-byte aligned). With ``pin_memory=True``
(and torch and CUDA there), :class:`PinnedAllocator` hands out page-locked host
memory from torch's caching host allocator, so a copy to the GPU is a DMA transfer.

Pinning is never automatic. Arrays and tensors made from a frame are views at an
offset into its block, and torch's caching host allocator records a pending
non-blocking copy only on a tensor that starts at a block it handed out: copied from
a view, the block goes back to its free list as soon as the views are dropped, and
the next frame can be written into it while the copy is still queued on the GPU.
So a caller who pins frames must keep a view alive until its copy has finished (or
copy with ``non_blocking=False``). Pinned batches that tierstore.torch gathers are
tensors of their own, which torch tracks.

Thread safety: allocators are safe to share between threads. Fork safety: pinned
memory cannot be had in a child forked after CUDA was initialized; the allocator
then falls back to aligned buffers (logged once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pyarrow as pa

__all__ = ["FrameAllocator", "PinnedAllocator", "aligned_buffer", "frame_allocator"]

log = logging.getLogger(__name__)

#: ``size -> writable buffer of exactly size bytes``, 64-byte aligned.
FrameAllocator = Callable[[int], pa.Buffer]
_ALIGNMENT = 64


def aligned_buffer(size: int) -> pa.Buffer:
    """A writable buffer from Arrow's memory pool (64-byte aligned)."""
    return pa.allocate_buffer(size)


class PinnedAllocator:
    """Page-locked buffers from torch (``torch.empty(..., pin_memory=True)``).

    The buffer keeps its tensor alive. Falls back to :func:`aligned_buffer` for
    good, logged once, if pinning fails (no CUDA in this process, a fork after
    CUDA was initialized) or the memory is not 64-byte aligned.
    """

    def __init__(self, torch: Any) -> None:
        self._torch = torch
        self._failed = False
        self._lock = threading.Lock()

    def __call__(self, size: int) -> pa.Buffer:
        if self._failed:
            return aligned_buffer(size)
        try:
            tensor = self._torch.empty(size, dtype=self._torch.uint8, pin_memory=True)
            # numpy() shares the tensor's memory and keeps it alive; py_buffer of a
            # writable array is a writable Arrow buffer.
            buffer = pa.py_buffer(tensor.numpy())
        except Exception as exc:  # CUDA errors come as RuntimeError and others
            self._give_up(f"pinned memory is unavailable ({exc}); using aligned buffers")
            return aligned_buffer(size)
        if size and buffer.address % _ALIGNMENT:
            self._give_up("pinned memory came unaligned; using aligned buffers")
            return aligned_buffer(size)
        return buffer

    def _give_up(self, why: str) -> None:
        with self._lock:
            if not self._failed:
                self._failed = True
                log.info("tierstore local reads: %s", why)


def frame_allocator(pin_memory: bool) -> FrameAllocator:
    """The allocator for received and decrypted frames: pinned when ``pin_memory`` and
    torch and CUDA are there (torch is imported to find out), else aligned."""
    if not pin_memory:
        return aligned_buffer
    try:
        import torch  # lazily: never a requirement
    except ImportError:
        return aligned_buffer
    try:
        usable = bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA install must not break reads
        usable = False
    return PinnedAllocator(torch) if usable else aligned_buffer
