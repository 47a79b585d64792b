"""An older generation a rebuild found beside the one it restored: an ``outdated``
journal entry (docs/engine.md, *Generations*).

A rebuild reads no frames, so the generation it restored may be damaged in the
archive while the older one is whole. Before the older one is deleted, the current
generation's archive object is checked against its digests; when it does not match,
the older generation becomes the shard's current one again (older bytes, but what
the archive can give whole), and the damaged generation's deletion is journaled.
(Kept beside a current generation that named it nowhere, the older one outlived every
later delete of the shard, and the next rebuild brought the deleted shard back.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tierstore.engine.archived import damage_in_archive
from tierstore.engine.catalog import Catalog
from tierstore.engine.rebuild import SealCheck, believed_manifest
from tierstore.engine.records import JournalOp, ShardRecord, archive_manifest_key
from tierstore.errors import IntegrityError, UnknownKeyId
from tierstore.tiers.base import Tier
from tierstore.tiers.lmdb import LmdbEnvironment

__all__ = ["back_to_the_older"]

log = logging.getLogger(__name__)


def back_to_the_older(
    env: LmdbEnvironment,
    catalog: Catalog,
    archive: Tier,
    check_object: SealCheck,
    under_current: Callable[[ShardRecord, bytes | memoryview], ShardRecord | None],
    op: JournalOp,
    progressed: Callable[[], None],
    report: Callable[[str], None],
) -> bool:
    """For ``outdated`` entry ``op``: whether its older generation is the shard's
    current one again, made so now (or by an earlier run of the entry that a crash cut
    short) because the current generation is damaged in the archive (its deletion is
    then journaled, and the loss of its bytes ``report``-ed). False when the
    older generation may be deleted as a ``supersede`` would: the shard is gone or was
    overwritten, its current generation matches its digests (or has none to check, as
    an overwrite's supersede trusts it), or the older one is no believable copy either
    (the damage is reported then too). ``progressed()`` is called after each frame
    checked. The older generation comes back under the current master key
    (``under_current``: the record, its data key rewrapped, when it or its manifest's
    seal is under another key), its manifest's rewrite journaled: a rotation that
    passed over the shard before left them under an older key, which could then be
    retired. Raises ArchiveUnavailable."""
    with env.read() as txn:
        current = catalog.get_shard(txn, op.dataset, op.name)
    if current is not None and current.generation == op.generation:
        # Made the shard's again by this entry already, which a crash (or a failure to
        # remove it) left on the journal: deleted now, it was the shard's only copy.
        return True
    if (
        current is None
        or not current.archived
        or current.generation <= op.generation
        or current.frame_digests is None
    ):
        return False
    why = damage_in_archive(archive, current, progressed)
    if why is None:
        return False
    lost = f"{op.dataset}/{op.name}@{current.generation}: {why}"
    key = archive_manifest_key(op.dataset, op.generation)
    try:
        raw = archive.get(key)
        if raw is None:
            raise IntegrityError("it is gone")
        older = believed_manifest(archive, key, raw, check_object)
    except (IntegrityError, UnknownKeyId) as exc:
        log.error("%s; older generation %d is no copy either: %s", lost, op.generation, exc)
        report(lost)
        return False
    with env.write() as txn:
        now = catalog.get_shard(txn, op.dataset, op.name)
        settings = catalog.get_dataset(txn, op.dataset)
        if (
            now is None
            or now.generation != current.generation
            or now.hot
            or settings is None
            or settings.encrypted != (older.envelope is not None)
            or (older.dataset, older.name) != (op.dataset, op.name)
        ):
            return False  # changed meanwhile, or no copy of this shard: as a supersede
        restored = under_current(older, raw)
        catalog.put_shard(
            txn, (restored or older).with_state(pinned=now.pinned, pinned_until=now.pinned_until)
        )
        catalog.append_journal(txn, JournalOp("delete", op.dataset, op.name, now.generation))
        if restored is not None:
            catalog.append_journal(txn, JournalOp("manifest", op.dataset, op.name, op.generation))
    log.error("%s; generation %d, older, is the shard's again", lost, op.generation)
    report(f"{lost}; generation {op.generation}, older, is the shard's again")
    return True
