"""One store per hot tier: ``<data-dir>/store.lock``, held while a Store is open.

LMDB lets any number of processes open one environment, so two stores on one data
directory — a node and an embedding script run against it, say — would both write
the catalog and race two movers over one journal: one could mark an entry archived
that its own archive holds and the node's does not. ``tierstore serve`` holds
``serve.lock`` besides, for its embedded archive; this lock is the engine's own, so
that :func:`~tierstore.engine.bootstrap.open_store` is refused too.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from pathlib import Path

from tierstore.errors import FailedPrecondition
from tierstore.private_files import hold_lock_or_name_holder

__all__ = ["StoreClaim"]

LOCK_NAME = "store.lock"


class StoreClaim:
    """The exclusive claim on ``data_dir``'s hot tier (made if missing), until
    :meth:`release`, until this object is freed, or until the process ends. A forked
    child does not hold it.

    Raises FailedPrecondition, naming the holder's process id, when another open store
    (in this process or another) holds it; OSError when the lock file cannot be made.
    """

    def __init__(self, data_dir: Path) -> None:
        self._fd: int | None = None
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, holder = hold_lock_or_name_holder(data_dir / LOCK_NAME)
        if fd is None:
            raise FailedPrecondition(
                f"the hot tier in {data_dir} is open in another store (process {holder}: "
                "a tierstore serve, or another open_store); close it first — two stores "
                "on one hot tier would race two movers over one journal"
            )
        self._fd = fd
        _CLAIMS.add(self)

    def release(self) -> None:
        """Let go of the claim (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        # At interpreter exit os may be gone: the lock goes with the process then.
        with contextlib.suppress(Exception):
            self.release()


_CLAIMS: weakref.WeakSet[StoreClaim] = weakref.WeakSet()


def _forget_claims_in_child() -> None:
    # A forked child shares each lock's open file: its copy would keep the lock after the
    # parent let go (or died). Closing the copy leaves the parent's claim whole.
    for claim in list(_CLAIMS):
        claim.release()


os.register_at_fork(after_in_child=_forget_claims_in_child)
