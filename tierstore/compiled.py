"""numba's ``njit`` for the project's kernels: compiled to release the GIL, with the
machine code cached on disk where numba finds a writable place for it.

numba refuses ``cache=True`` when the function is decorated ("cannot cache function
...: no locator available") if neither the source tree's ``__pycache__`` nor a user
cache directory (``NUMBA_CACHE_DIR``, else the home directory's cache) can be written:
a container with a read-only root filesystem, say. That must not make importing the
module fail, so such a kernel is compiled without the disk cache instead: on first use
in each process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

__all__ = ["njit"]

F = TypeVar("F", bound=Callable[..., Any])


def njit(function: F) -> F:
    """``numba.njit(cache=True, nogil=True)``, or without ``cache`` where numba has no
    writable place for its cache."""
    compiled: Any
    try:
        compiled = numba.njit(cache=True, nogil=True)(function)
    except RuntimeError:  # no cache locator: nowhere to write
        compiled = numba.njit(nogil=True)(function)
    return cast(F, compiled)
