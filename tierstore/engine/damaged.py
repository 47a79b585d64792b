"""Deleting shards whose catalog record is unreadable.

LMDB keeps no checksum, so a shard record can be damaged on disk. Walks pass such
a record by (see :class:`~tierstore.engine.catalog.Catalog`); deleting the shard is
how an operator drops it. The record no longer says which generation it held, so:

* **Hot frames** are found the other way round. A generation's frames are written
  and dropped in the same transaction as its record (or staged under a marker by a
  promotion under way, :mod:`tierstore.engine.spool`), so every frame belongs to some
  record's generation or marker; the frames whose generation no readable record names (in
  any state: a record that decodes to a wrong ``hot`` flag still claims its frames)
  are the unreadable records' own, and are deleted with the record, the hot-bytes
  counter dropping by their size. With several unreadable records, which frames
  were whose cannot be told: all of theirs go (none of them could be read anyway).
* **Archive objects** are found by their manifests, which name their shard: a
  ``purge`` journal entry has the mover delete every archived generation whose
  manifest names the deleted shard and that is older than the delete (so a shard
  put again under the name meanwhile keeps its own), so a rebuild from the archive
  cannot bring it back. The entry carries the record's catalog key (in hex) rather
  than the name: a long name's key keeps only its start and a hash. A generation whose
  upload is still on the journal may have its frames in the archive and no manifest
  yet: its objects are deleted by name (a ``delete`` entry), as a shard's are.
"""

from __future__ import annotations

from typing import Any

from tierstore.engine.catalog import Catalog
from tierstore.engine.records import JournalOp, catalog_key, generation_of_frame_key
from tierstore.tiers.lmdb import LmdbTier

__all__ = ["delete_damaged_in"]


def delete_damaged_in(
    txn: Any, catalog: Catalog, frames: LmdbTier, keys: list[bytes], next_generation: int
) -> int | None:
    """Delete the unreadable records ``keys`` in the caller's write transaction, with
    every hot frame no readable record claims, and journal the purge of their archived
    generations older than ``next_generation`` (the first generation not yet handed
    out); returns the sequence number of the last journal entry it made (a purge;
    None for no keys): once the mover has done it and the entries before it on the
    dataset, the archive holds none of them. The caller tells the policies. Costs a
    walk of every record and every frame key: for repairs, not the data path.
    """
    if not keys:
        return None
    # An upload still on the journal may have put its frames and not yet its manifest,
    # by which the purge finds a generation: each such generation's objects are deleted
    # by name (its frames otherwise stayed in the archive for good).
    damaged = set(keys)
    for _, op in catalog.journal_entries(txn, limit=catalog.journal_length(txn)):
        if op.op == "upload" and catalog_key(op.dataset, op.name) in damaged:
            catalog.forgo_upload(txn, op.generation)
            catalog.append_journal(txn, JournalOp("delete", op.dataset, op.name, op.generation))
    last = None
    for key in keys:
        catalog.delete_damaged(txn, key)
        dataset, _, name_key = key.partition(b"\x00")
        purge = JournalOp("purge", dataset.decode(), name_key.hex(), next_generation)
        last = catalog.append_journal(txn, purge)
    # Frames staged by a promotion under way are its own (see tierstore.engine.spool).
    claimed = catalog.claimed_generations(txn) | catalog.staged(txn).keys()
    unclaimed = [
        (key, size)
        for key, size in frames.sizes_in(txn)
        if generation_of_frame_key(key) not in claimed
    ]
    for frame, _ in unclaimed:
        frames.delete_in(txn, frame)
    catalog.add_counter(txn, "hot_bytes", -sum(size for _, size in unclaimed))
    return last
