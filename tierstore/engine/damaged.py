"""Deleting shards whose catalog record is unreadable.

LMDB keeps no checksum, so a shard record can be damaged on disk. Walks pass such
a record by (see :class:`~tierstore.engine.catalog.Catalog`); deleting the shard is
how an operator drops it. The record names no generation, so its hot frames are
found the other way round: a generation's hot frames are written and dropped in the
same transaction as its record's ``hot`` flag, so every hot frame belongs to a
readable hot record's generation or to an unreadable record's. The frames no
readable record claims are deleted with the record, and the hot-bytes counter
drops by their size.

When the record being deleted is the only unreadable one, those frames are its
own, so their generations' archive objects are journaled for deletion too. With
other unreadable records about, or when its generation had no hot frames (evicted),
the archive objects are left: a rebuild from the archive would bring the shard
back, as it would any shard whose delete never reached the archive.
"""

from __future__ import annotations

from typing import Any

from tierstore.engine.catalog import Catalog
from tierstore.engine.policies import PolicyDriver
from tierstore.engine.records import JournalOp, generation_of_frame_key, shard_of_key
from tierstore.tiers.lmdb import LmdbTier

__all__ = ["delete_damaged_in"]


def delete_damaged_in(
    txn: Any, catalog: Catalog, frames: LmdbTier, policies: PolicyDriver, keys: list[bytes]
) -> int:
    """Delete the unreadable records ``keys`` in the caller's write transaction, with
    every hot frame no readable record claims; returns the bytes of frames deleted.
    Costs a walk of every record and every frame key: for repairs, not the data path.
    """
    if not keys:
        return 0
    for key in keys:
        catalog.delete_damaged(txn, key)
        policies.removed(shard_of_key(key))
    claimed, others_damaged = catalog.hot_generations(txn)
    orphans: dict[int, int] = {}
    stale_keys: list[str] = []
    for frame, size in frames.sizes_in(txn):
        generation = generation_of_frame_key(frame)
        if generation not in claimed:
            orphans[generation] = orphans.get(generation, 0) + size
            stale_keys.append(frame)
    for frame in stale_keys:
        frames.delete_in(txn, frame)
    freed = sum(orphans.values())
    catalog.add_counter(txn, "hot_bytes", -freed)
    if len(keys) == 1 and not others_damaged:
        dataset, name = shard_of_key(keys[0])
        for generation in sorted(orphans):
            catalog.append_journal(txn, JournalOp("delete", dataset, name, generation))
    return freed
