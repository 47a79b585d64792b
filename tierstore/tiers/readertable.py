"""The oldest snapshot a read of an LMDB environment may hold, from LMDB's reader table.

LMDB names the snapshot a read transaction sees by the id of the last write
transaction committed when it began (py-lmdb's ``Transaction.id()``; a write
transaction's own id is one past the last committed). What a write changed is seen
by every read whose snapshot id is at least the write's id, and by no other. The
account of unreadable records (:mod:`tierstore.engine.unreadable`) keeps each delete
until no read can be older than it, so that such a read does not report the deleted
record again; :meth:`~tierstore.tiers.lmdb.LmdbEnvironment.oldest_snapshot` tells
when, and costs nothing until it is asked (a read transaction pays nothing for it).

It reads LMDB's reader table: one slot per read transaction of every process that
maps the environment (local readers included), in the lock file, with the snapshot id
the read published there (``mdb_reader_list`` prints it: pid, thread, txnid; an idle
slot shows txnid ``-``). A read publishes its snapshot before it holds it:
``mdb_txn_renew0`` stores the last committed id (the lock file's ``mti_txnid``) in its
slot, reads that id again, retrying until the two agree, and only then takes that id
as its snapshot (``mt_txnid = mr_txnid``) and picks the meta page it names. So a
read's published id *is* its snapshot, and there is no time when a read holds a
snapshot its slot does not show. LMDB's own writer relies on the same: it reuses
the pages freed before the oldest id the table shows (``mdb_find_oldest``). A slot
left by a process that died in a read shows its id until a reader check frees it
(every write transaction makes one, at most every few seconds): until then it keeps
deletes longer, never shorter.

The bound is the least of the ids published and ``newest``, the snapshot of a read
begun just before the table is read (see ``oldest_snapshot``). A read the scan
missed published after the scan passed its slot, so took its snapshot after
``newest`` was taken: it is at least as new. ``newest`` is not
``env.info()["last_txnid"]``: that is the meta page's id, written before the commit
publishes it to new reads (``mdb_env_write_meta``), so for a moment it is one ahead
of the snapshot a read beginning then gets.

Pure: parses the table's text and knows nothing of an environment. Thread-safe.
"""

from __future__ import annotations

__all__ = ["HEADER", "NO_READERS", "oldest_snapshot_in", "published_snapshots"]

#: the line ``mdb_reader_list`` starts a table of one or more slots with.
HEADER = "pid thread txnid"
#: what it prints instead when no slot is held.
NO_READERS = "(no active readers)"
#: the txnid an idle slot shows (held by a process, no read under way in it).
_IDLE = "-"


def published_snapshots(table: str) -> list[int] | None:
    """The snapshot ids the read transactions under way published in ``table``
    (``lmdb.Environment.readers()``'s text), or ``None`` if the text is not the
    table this module knows (then nothing can be told of the reads)."""
    lines = table.splitlines()
    if [line.strip() for line in lines] == [NO_READERS]:
        return []
    if not lines or " ".join(lines[0].split()) != HEADER:
        return None
    snapshots = []
    for line in lines[1:]:
        fields = line.split()
        if len(fields) != 3 or not fields[0].isdigit():
            return None
        txnid = fields[2]
        if txnid == _IDLE:
            continue
        if not (txnid.isascii() and txnid.isdigit()):
            return None
        snapshots.append(int(txnid))
    return snapshots


def oldest_snapshot_in(table: str, newest: int) -> int | None:
    """The oldest snapshot a read under way (per ``table``) or yet to begin may hold,
    with ``newest`` the snapshot of a read begun before ``table`` was read; ``None``
    if ``table`` cannot be read (nothing can be told)."""
    published = published_snapshots(table)
    if published is None:
        return None
    return min([newest, *published])
