"""One store per hot tier: ``<data-dir>/store.lock``, and ``store.lock`` in the hot tier's
own directory, held while a Store is open.

LMDB lets any number of processes open one environment, so two stores on one data
directory — a node and an embedding script run against it, say — would both write
the catalog and race two movers over one journal: one could mark an entry archived
that its own archive holds and the node's does not. ``tierstore serve`` holds
``serve.lock`` besides, for its embedded archive; this lock is the engine's own, so
that :func:`~tierstore.engine.bootstrap.open_store` is refused too. The hot tier's
directory (``<data-dir>/hot``) may be a link to another device (an NVMe or tmpfs
mount): two data directories whose links lead to one directory would share one LMDB
environment, and a review's second node listed, and deleted, the first one's datasets.
So the hot tier's directory is locked as well, and one that is a link to nothing (a
tmpfs mount gone with a reboot) is refused by name rather than taken for a new one.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from pathlib import Path

from tierstore.errors import FailedPrecondition
from tierstore.private_files import hold_lock_or_name_holder, refuse_dangling_link

__all__ = ["StoreClaim", "hot_tier_dir"]

LOCK_NAME = "store.lock"
#: the hot tier's directory, made by the claim as the LMDB environment makes it
_HOT_DIR_MODE = 0o750


def hot_tier_dir(data_dir: Path) -> Path:
    """Where a store in ``data_dir`` keeps its LMDB hot tier (frames and catalog)."""
    return data_dir / "hot"


class StoreClaim:
    """The exclusive claim on ``data_dir``'s hot tier (made if missing), until
    :meth:`release`, until this object is freed, or until the process ends. A forked
    child does not hold it.

    Raises FailedPrecondition, naming the holder's process id, when another open store
    (in this process or another) holds it; OSError when the lock file cannot be made.
    """

    def __init__(self, data_dir: Path) -> None:
        self._fds: list[int] = []
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, holder = hold_lock_or_name_holder(data_dir / LOCK_NAME)
        if fd is None:
            raise FailedPrecondition(
                f"the hot tier in {data_dir} is open in another store (process {holder}: "
                "a tierstore serve, or another open_store); close it first — two stores "
                "on one hot tier would race two movers over one journal"
            )
        self._fds.append(fd)
        _CLAIMS.add(self)
        try:
            self._fds.append(_claim_hot_tier(hot_tier_dir(data_dir)))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Let go of the claim (idempotent)."""
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def __del__(self) -> None:
        # At interpreter exit os may be gone: the lock goes with the process then.
        with contextlib.suppress(Exception):
            self.release()


def _claim_hot_tier(hot: Path) -> int:
    """Lock ``hot`` (made if missing), the directory of a data directory whose own lock
    this process holds; returns the lock's descriptor. FailedPrecondition when another
    store holds it (so another data directory leads to it) or when ``hot`` is a link to
    nothing."""
    refuse_dangling_link(hot, "the hot tier's directory")
    hot.mkdir(mode=_HOT_DIR_MODE, exist_ok=True)
    fd, holder = hold_lock_or_name_holder(hot / LOCK_NAME)
    if fd is None:
        raise FailedPrecondition(
            f"the hot tier's directory {hot} leads to {hot.resolve()}, which another "
            f"store (process {holder}) of another data directory has open: each node "
            "needs a hot tier of its own (two on one would list, overwrite and delete "
            "each other's datasets); give this one another directory"
        )
    return fd


_CLAIMS: weakref.WeakSet[StoreClaim] = weakref.WeakSet()


def _forget_claims_in_child() -> None:
    # A forked child shares each lock's open file: its copy would keep the lock after the
    # parent let go (or died). Closing the copy leaves the parent's claim whole.
    for claim in list(_CLAIMS):
        claim.release()


os.register_at_fork(after_in_child=_forget_claims_in_child)
