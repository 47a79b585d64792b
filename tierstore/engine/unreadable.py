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

Thread safety: every method may be called from any thread.
"""

from __future__ import annotations

import threading

__all__ = ["NAMED_AT_MOST", "UnreadableRecords"]

#: unreadable records named at most (the rest are counted by dataset).
NAMED_AT_MOST = 1_000


class UnreadableRecords:
    """Unreadable shard records by catalog key: some named (with why), all counted."""

    def __init__(self) -> None:
        #: records named at most (NAMED_AT_MOST).
        self.named_at_most = NAMED_AT_MOST
        self._lock = threading.Lock()
        #: catalog key -> "dataset/name: why", for at most ``named_at_most`` records.
        self._named: dict[bytes, str] = {}
        #: by dataset, the records counted and not named.
        self._unnamed: dict[str, int] = {}
        #: whether a record was counted unnamed since the last count: the records of its
        #: dataset found after it were taken for it, so the counts may be short.
        self.recount = False

    def note(self, key: bytes, dataset: str, why: str) -> bool:
        """Note the unreadable record at ``key`` of ``dataset``; returns whether it was
        counted now (else it was counted before, or is taken to have been)."""
        with self._lock:
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

    def forget(self, key: bytes, dataset: str) -> None:
        """The record at ``key`` of ``dataset`` was deleted: it is no longer counted."""
        with self._lock:
            if self._named.pop(key, None) is None:
                self._take_unnamed(dataset)

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
