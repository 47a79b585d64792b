"""Where decrypted frames land: 64-byte-aligned buffers, pinned when CUDA will take them.

An encrypted frame read in place is decrypted exactly once, straight into a buffer
from a :data:`FrameAllocator` (``size -> writable pyarrow.Buffer``). The default is
:func:`aligned_buffer` (Arrow's pool: 64-byte aligned). Where torch is in use and
CUDA is available, :class:`PinnedAllocator` hands out page-locked host memory from
torch's caching host allocator, so the later copy to the GPU is a DMA transfer and
the decrypted bytes are never copied again on the host.

torch is never required and never imported just to decide: the automatic choice
(``pin_memory=None``) pins only when the application has already imported torch
(importing it costs seconds and hundreds of MB, which a CLI reading an encrypted
shard should not pay). ``pin_memory=True`` imports it if it can.

Thread safety: allocators are safe to share between threads. Fork safety: pinned
memory cannot be had in a child forked after CUDA was initialized; the allocator
then falls back to aligned buffers (logged once).
"""

from __future__ import annotations

import logging
import sys
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


def frame_allocator(pin_memory: bool | None) -> FrameAllocator:
    """The allocator for decrypted frames: pinned when asked for (or, with ``None``,
    when torch is already imported) and CUDA is available, else aligned."""
    if pin_memory is False:
        return aligned_buffer
    torch = sys.modules.get("torch")
    if torch is None and pin_memory:
        try:
            import torch  # lazily: never a requirement
        except ImportError:
            return aligned_buffer
    if torch is None:
        return aligned_buffer
    try:
        usable = bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA install must not break reads
        usable = False
    return PinnedAllocator(torch) if usable else aligned_buffer
