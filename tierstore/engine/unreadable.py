"""The catalog's account of its unreadable shard records: named, up to a bound, and counted.

LMDB keeps no checksum, so a shard record can be damaged on disk; walks and lookups
that meet one note it here (:class:`~tierstore.engine.catalog.Catalog`), and the
store's statistics report it until it is deleted. A node whose records of a whole
dataset became unreadable noted each of millions, with its name and why, in memory
for as long as it ran: so at most :data:`NAMED_AT_MOST` are kept by name, and the
others only counted, by dataset.

Which of a dataset's unnamed records were counted cannot be told without their keys,
so one noted that is not named is taken for one of them while the dataset has any;
only a note that finds none counts a new one, and asks for a count
(:attr:`UnreadableRecords.recount`). A count is a walk of every record
(:meth:`~tierstore.engine.catalog.Catalog.count_unreadable`) that sets the names and
counts anew: a store that opens runs one if its opening walk asked for it, before any
other thread runs. So the counts are exact, but for a record that became unreadable
while the store ran, in a dataset with records counted unnamed already: it is
counted from the next start.

A note comes from a read, and a read may be older than a delete: the mover's journal
pass, retrying a damaged record's upload, read the record in a snapshot taken before
the shard's delete committed and noted it once the delete had forgotten it, and the
deleted shard stayed reported until the next start. So a note carries the snapshot it
was read in, and a delete the write transaction it is made in (LMDB's transaction
ids: a read sees a write's changes exactly when its id is at least the write's,
:mod:`tierstore.tiers.readertable`); a note from a snapshot older than the delete that
forgot its key is ignored. A record made again under the key since is noted by any
read that sees it: one new enough to see it is no older than the delete.

Each delete (of an unreadable record: no other is forgotten here) is kept, by key,
only while a read older than it may still note. It cannot go when it commits: a read
that began just before is older, and a read lease's read may last. The catalog's
:meth:`~tierstore.tiers.lmdb.LmdbEnvironment.oldest_snapshot` bounds every read of
the environment under way or yet to begin, in any process, read from LMDB's reader
table when asked (reads pay nothing for it); the deletes no read can be older than
are let go, oldest first (write ids never go back), at the next delete or note of
another transaction, and at each :meth:`UnreadableRecords.prune` (the mover's, after
each pass), each asking for the bound only while deletes are kept. A dataset of
millions of damaged records deleted at once keeps their keys in memory that long:
until the reads under way then have ended, and the next of those comes. An account
made without ``oldest_snapshot`` keeps every delete, for tests.

Thread safety: every method may be called from any thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["NAMED_AT_MOST", "UnreadableRecords"]

#: unreadable records named at most (the rest are counted by dataset).
NAMED_AT_MOST = 1_000


class UnreadableRecords:
    """Unreadable shard records by catalog key: some named (with why), all counted."""

    def __init__(self, oldest_snapshot: Callable[[], int] = lambda: 0) -> None:
        """``oldest_snapshot()``: a lower bound on the snapshot (LMDB's transaction id)
        of every read under way or yet to begin that may note a record (the catalog's
        :meth:`~tierstore.tiers.lmdb.LmdbEnvironment.oldest_snapshot`)."""
        #: records named at most (NAMED_AT_MOST).
        self.named_at_most = NAMED_AT_MOST
        self._oldest_snapshot = oldest_snapshot
        self._lock = threading.Lock()
        #: catalog key -> "dataset/name: why", for at most ``named_at_most`` records.
        self._named: dict[bytes, str] = {}
        #: by dataset, the records counted and not named.
        self._unnamed: dict[str, int] = {}
        #: whether a record was counted unnamed since the last count: the records of its
        #: dataset found after it were taken for it, so the counts may be short.
        self.recount = False
        #: catalog key -> the write transaction that forgot it, in that order (ids never
        #: go back): kept while a read older than it may note the key.
        self._deleted: OrderedDict[bytes, int] = OrderedDict()
        #: the transaction whose delete or note last let deletes go (once each, not
        #: once per record of a dataset deleted whole).
        self._pruned_for = -1

    def note(self, key: bytes, dataset: str, why: str, seen_in: int) -> bool:
        """Note the unreadable record at ``key`` of ``dataset``, read in snapshot
        ``seen_in`` (the reading transaction's id); returns whether it was counted now
        (else it was counted before, or is taken to have been, or it was read before
        a delete that forgot it)."""
        self._prune_for(seen_in)
        with self._lock:
            if seen_in < self._deleted.get(key, seen_in):
                return False  # read before its delete: that record is gone
            if key in self._named:
                self._named[key] = why
                return False
            room = len(self._named) < self.named_at_most
            if self._unnamed.get(dataset, 0):
                if room:  # one of those counted unnamed: named now
                    self._named[key] = why
                    self._take_unnamed(dataset)
                return False
            if room:
                self._named[key] = why
            else:
                self._unnamed[dataset] = 1
                self.recount = True
            return True

    def forget(self, key: bytes, dataset: str, deleted_in: int) -> None:
        """The record at ``key`` of ``dataset`` is deleted by write transaction
        ``deleted_in`` (its id): it is no longer counted, and no longer noted from a
        snapshot older than that transaction."""
        self._prune_for(deleted_in)
        with self._lock:
            if self._named.pop(key, None) is None:
                self._take_unnamed(dataset)
            self._deleted[key] = deleted_in
            self._deleted.move_to_end(key)

    def prune(self) -> None:
        """Let go of the deletes that no read under way or yet to begin is older than
        (the module docstring says when this runs). Raises what ``oldest_snapshot``
        raises."""
        with self._lock:
            if not self._deleted:
                return  # the bound costs a read transaction and a reader table scan
        # Outside the lock: the bound takes the environment's own locks.
        oldest = self._oldest_snapshot()
        with self._lock:
            while self._deleted:
                if next(iter(self._deleted.values())) > oldest:
                    return
                self._deleted.popitem(last=False)

    def _prune_for(self, txn: int) -> None:
        """:meth:`prune`, once per transaction ``txn`` and only with deletes kept."""
        with self._lock:
            if not self._deleted or txn == self._pruned_for:
                return
            self._pruned_for = txn
        self.prune()

    def deletes_kept(self) -> int:
        """How many deletes are kept to refuse notes older than them."""
        with self._lock:
            return len(self._deleted)

    def _take_unnamed(self, dataset: str) -> None:
        left = self._unnamed.get(dataset, 0) - 1
        if left > 0:
            self._unnamed[dataset] = left
        else:
            self._unnamed.pop(dataset, None)

    def reset(self, named: dict[bytes, str], unnamed: dict[str, int]) -> None:
        """Set what a count found: ``named`` (at most ``named_at_most``) and ``unnamed``."""
        with self._lock:
            self._named = dict(named)
            self._unnamed = {dataset: count for dataset, count in unnamed.items() if count}
            self.recount = False

    def named(self) -> list[str]:
        """The named records' "dataset/name: why", by key."""
        with self._lock:
            return [self._named[key] for key in sorted(self._named)]

    def unnamed(self) -> dict[str, int]:
        """By dataset, how many more records are unreadable than are named."""
        with self._lock:
            return dict(self._unnamed)

    def __len__(self) -> int:
        """Every record counted, named or not."""
        with self._lock:
            return len(self._named) + sum(self._unnamed.values())
