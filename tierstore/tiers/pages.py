"""Dropping pages of a read-only file mapping from the process (Linux ``madvise``).

After a frame has been copied out of the LMDB map, its pages still count in the
process's resident set until the kernel reclaims them. ``MADV_DONTNEED`` on a
shared, read-only file mapping drops them from this process at once; the data
stays in the page cache and a later access maps it again. Only whole pages
inside the buffer are released, so neighbouring data is never touched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
from typing import Any

import pyarrow as pa

__all__ = ["release_pages"]

_MADV_DONTNEED = 4
_PAGE = mmap.PAGESIZE

_madvise: Any
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    _madvise = _libc.madvise
    _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _madvise.restype = ctypes.c_int
except (OSError, AttributeError, TypeError):  # not Linux/glibc: keep the pages
    _madvise = None


def release_pages(view: memoryview) -> None:
    """Tell the kernel this process no longer needs the whole pages under ``view``.

    ``view`` must lie in a read-only shared file mapping (LMDB with
    ``writemap=False``); never call it on anonymous memory, which it would zero.
    Best effort: does nothing where ``madvise`` is unavailable.
    """
    if _madvise is None or len(view) < _PAGE:
        return
    address = pa.py_buffer(view).address
    start = -(-address // _PAGE) * _PAGE
    stop = (address + len(view)) // _PAGE * _PAGE
    if stop > start:
        _madvise(ctypes.c_void_p(start), ctypes.c_size_t(stop - start), _MADV_DONTNEED)
