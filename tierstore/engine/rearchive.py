"""Archiving a node's hot tier again after its archive was lost for good.

A node whose archive holds none of its datasets' objects refuses to start
(:meth:`~tierstore.engine.store.Store.archive_missing_datasets`). When that archive is
gone for good (an embedded archive's directory deleted, a bucket emptied), the hot
tier may hold the only copies left; ``serve --archive-lost`` has them archived again
(:func:`archive_again_in`), in one write transaction, before the mover starts:

* every hot record marked archived is marked not archived and its upload journaled,
  so it is not evicted before it is in the new archive;
* every record whose only copy was in the lost archive (not hot) is removed: its bytes
  are gone, and a read of it is ShardNotFound. (A damaged record, of
  :mod:`tierstore.engine.damaged`, is one the catalog cannot read; these it reads, and
  nothing is left of them to report as damaged, so the record goes, named in the log.);
* every dataset's settings object is journaled to be written again.

Records whose upload is pending already, and unreadable records, are left as they are.
A transaction that did not commit left nothing; once it has, the archive holds none of
the datasets' objects only until the mover wrote the first, and while none is written
the datasets' pending entries keep the start's check quiet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tierstore.engine.catalog import Catalog
from tierstore.engine.records import JournalOp
from tierstore.engine.sealing import stored_size

__all__ = ["Rearchived", "archive_again_in"]


@dataclass
class Rearchived:
    """What :func:`archive_again_in` did."""

    #: hot shards whose upload was journaled again.
    uploads: int = 0
    #: ``dataset/name`` of every shard dropped: its only copy was in the lost archive.
    lost: list[str] = field(default_factory=list)
    #: datasets whose settings object is to be written again.
    datasets: int = 0


def archive_again_in(txn: Any, catalog: Catalog) -> Rearchived:
    """In the caller's write transaction (the mover not running), have the hot tier
    archived again and drop the shards it does not hold (see the module's notes). The
    caller tells the policies of the dropped shards, if they know them."""
    done = Rearchived()
    for record in list(catalog.iter_shards(txn)):
        if not record.hot:
            catalog.forgo_upload(txn, record.generation)
            catalog.delete_shard(txn, record.dataset, record.name)
            done.lost.append(f"{record.dataset}/{record.name}")
        elif record.archived:
            catalog.put_shard(txn, record.with_state(archived=False))
            upload = JournalOp(
                "upload", record.dataset, record.name, record.generation, stored_size(record)
            )
            catalog.append_journal(txn, upload)
            done.uploads += 1
    for name, _ in catalog.list_datasets(txn):
        catalog.append_journal(txn, JournalOp("dataset", name))
        done.datasets += 1
    return done
