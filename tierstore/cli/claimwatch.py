"""A serving node watching its claim on the archive (:mod:`tierstore.engine.archiveclaim`).

A start checks the claim; a node that keeps running while its hot tier is rebuilt
elsewhere from its archive (thought lost, it was only cut off) would go on uploading
and deleting there, each node deleting the generations the other overwrote. Every
:data:`CLAIM_CHECK_S`, :class:`ClaimWatch` reads the claim again; once it is another
node's, the journal is held for good (:meth:`Mover.hold_archive
<tierstore.engine.mover.Mover.hold_archive>`): no upload, delete or write-through put
reaches the archive, and stats, /metrics and the log say why. A minute of overlap
remains, so the docs still say to stop a node before its archive is rebuilt elsewhere.
"""

from __future__ import annotations

import logging
import threading

from tierstore.engine.store import Store
from tierstore.errors import ArchiveUnavailable

__all__ = ["CLAIM_CHECK_S", "ClaimWatch"]

log = logging.getLogger(__name__)

#: how often a serving node reads its archive's claim again (one small GET)
CLAIM_CHECK_S = 60.0


class ClaimWatch:
    """A daemon thread reading ``store``'s archive claim every ``interval_s`` and holding
    its journal for good once another node holds it. An archive that does not answer
    is asked again next round. :meth:`stop` before the store is closed."""

    def __init__(self, store: Store, interval_s: float = CLAIM_CHECK_S) -> None:
        self._store, self._interval_s = store, interval_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # no hold is set once stop() has returned
        self._thread = threading.Thread(target=self._run, name="tierstore-claim-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; does not wait for a read inside a hung archive request."""
        with self._lock:
            self._stopping.set()
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            try:
                theirs = self._store.archive_claimed_by_another()
            except ArchiveUnavailable:
                continue  # the archive watch shows it; asked again next round
            except Exception:
                if self._stopping.is_set():
                    return  # the store closed under the read
                log.exception("reading the archive's claim failed")
                continue
            if theirs is None:
                continue
            reason = (
                f"another node took this node's archive over: {theirs.describe()} (its "
                "hot tier was rebuilt from the archive, or it was given this archive's "
                "settings). Uploads, deletes and write-through puts stay held: two nodes "
                "on one archive prefix delete each other's overwritten generations. Stop "
                "this node; what it acknowledged since is on its journal, not in the archive"
            )
            with self._lock:
                if self._stopping.is_set():
                    return
                self._store.mover.hold_archive(reason)
            log.error("%s", reason)
            return
