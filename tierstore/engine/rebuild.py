"""Reading the catalog back out of the archive alone.

The archive holds, per dataset, ``_dataset.json`` (its settings) and, per shard
generation, ``<generation>.frames`` plus ``<generation>.manifest`` (written last,
so a manifest means the frames are complete). :func:`scan_archive` turns a
listing of those objects into dataset settings and the newest generation of
every shard; :func:`restore_catalog` writes them into an empty catalog (for
:meth:`tierstore.engine.store.Store.rebuild_from_archive`).

A generation whose deletion had not reached the archive before the catalog was
lost comes back; that is the one thing a rebuild cannot know, but for one case: a
dataset's settings object records the first generation it may hold (generations are
numbered store-wide), so the shards of an earlier dataset of the same name, deleted
before this one was made, are told apart. They are not restored into the dataset
made since (for someone else, perhaps), and the restore journals their deletion.

Older generations of a shard it restores go, as an overwrite's do: the restore
journals their deletion (else they stayed for good, and a rebuild after a delete of
the shard brought it back with their bytes), which the mover carries out once the
restored generation's frames in the archive match their digests (else the older one,
the only good copy, becomes the shard's current generation again:
tierstore.engine.outdated).

The archive is untrusted (DESIGN 3.4). With a master key configured, every dataset
object and manifest must carry a seal made for it at its key
(:mod:`tierstore.engine.archiveseal`). Each manifest is also checked against what
else the archive says: it must sit at its own generation's key, its frames object
must hold exactly the stored bytes it describes, and it must be encrypted exactly
when its dataset is. An object that fails is reported as unreadable, with why, and
skipped (for a manifest, an older generation of the shard, if the archive still has
one, comes back instead); frames and data keys are still verified on every read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tierstore.engine.catalog import Catalog
from tierstore.engine.records import (
    JournalOp,
    ShardRecord,
    archive_dataset_key,
    archive_frames_key,
    archive_manifest_key,
    decode_dataset,
    first_generation_of,
)
from tierstore.engine.sealing import stored_size
from tierstore.errors import FailedPrecondition, IntegrityError, NewerFormat, UnknownKeyId
from tierstore.naming import is_dataset_name
from tierstore.tiers.base import Tier
from tierstore.types import DatasetSettings

__all__ = [
    "NOT_OURS",
    "ArchiveContents",
    "archive_keys",
    "believe_any_seal",
    "believed_manifest",
    "refuse_encrypted_without_keys",
    "restore_catalog",
    "scan_archive",
]

#: why an archive object at no key tierstore writes is not believed (someone else's)
NOT_OURS = "not at a key tierstore writes"


@dataclass(frozen=True, slots=True)
class ArchiveContents:
    """What the archive holds: datasets, newest shard generations, the older believed
    generations of those shards, and the objects not believed (key -> why).

    ``first_generations``: by dataset, the first generation it may hold (0: not
    recorded). ``former``: believed generations older than that, which belonged to an
    earlier dataset of the same name."""

    datasets: dict[str, DatasetSettings]
    shards: dict[tuple[str, str], ShardRecord]
    superseded: list[ShardRecord]
    unreadable: dict[str, str]
    first_generations: dict[str, int] = field(default_factory=dict)
    former: list[ShardRecord] = field(default_factory=list)


_HEX_DIGITS = re.compile("[0-9a-f]+")

#: Checks that an object read at a key carries a seal made for it (raises IntegrityError
#: or UnknownKeyId); see :func:`tierstore.engine.archiveseal.check_seal`.
SealCheck = Callable[[str, bytes | memoryview], None]


def believe_any_seal(key: str, raw: bytes | memoryview) -> None:
    """A :data:`SealCheck` that believes every object, sealed or not: for a rebuild
    whose master key file is lost for good (the other checks of :func:`scan_archive`
    still apply)."""


def refuse_encrypted_without_keys(contents: ArchiveContents) -> None:
    """Raise FailedPrecondition, naming them, if ``contents`` hold an encrypted dataset
    or shard: a rebuild that could not check seals has no keys to read those with, and
    believing an archive's "plaintext" there is what the seals exist to stop."""
    encrypted = {name for name, settings in contents.datasets.items() if settings.encrypted}
    encrypted |= {record.dataset for record in contents.shards.values() if record.envelope}
    if encrypted:
        names = ", ".join(sorted(encrypted)[:5]) + (", ..." if len(encrypted) > 5 else "")
        raise FailedPrecondition(
            f"the archive holds encrypted datasets ({names}): their data keys are wrapped "
            "by the master keys whose file is lost, and nothing reads them without it. "
            "Restore that key file (then --rebuild-from-archive alone); nothing was changed"
        )


def _is_metadata_key(key: str) -> bool:
    """Whether ``key`` has the shape of a key :mod:`tierstore.engine.records` names a
    dataset's settings or a generation's manifest with: ``<dataset>/_dataset.json`` or
    ``<dataset>/<hex generation>.manifest``, for a valid dataset name."""
    dataset, _, name = key.partition("/")
    if not is_dataset_name(dataset):
        return False
    if name == "_dataset.json":
        return True
    generation = name.removesuffix(".manifest")
    return generation != name and _HEX_DIGITS.fullmatch(generation) is not None


def archive_keys(archive: Tier, prefix: str = "") -> list[str]:
    """Every key in ``archive`` that starts with ``prefix``, page by page. Raises
    ArchiveUnavailable if the archive cannot be listed."""
    keys: list[str] = []
    start_after: str | None = None
    while True:
        page = archive.list(prefix, start_after=start_after, limit=1000)
        keys.extend(page.keys)
        if page.next_start_after is None:
            return keys
        start_after = page.next_start_after


def scan_archive(archive: Tier, check_seal: SealCheck) -> ArchiveContents:
    """List and decode every dataset object and manifest in ``archive``.

    Raises ArchiveUnavailable if the archive cannot be listed or read. Objects
    that are not believed (unsealed, not decoding, disagreeing with the archive) are
    reported in ``unreadable``, not raised.
    """
    datasets: dict[str, DatasetSettings] = {}
    first_generations: dict[str, int] = {}
    generations: dict[tuple[str, str], list[ShardRecord]] = {}
    unreadable: dict[str, str] = {}
    for key in archive_keys(archive):
        if not key.endswith(("/_dataset.json", ".manifest")):
            continue
        if not _is_metadata_key(key):
            # Someone else's object (a tier may even refuse to read its key: an empty
            # segment, a backslash), which ended the rebuild: not ours to believe.
            unreadable[key] = NOT_OURS
            continue
        raw = archive.get(key)
        if raw is None:
            continue  # deleted since the listing
        try:
            if key.endswith("/_dataset.json"):
                check_seal(key, raw)
                name = key.rsplit("/", 1)[0]
                datasets[name] = decode_dataset(raw)
                first_generations[name] = first_generation_of(raw)
                continue
            record = believed_manifest(archive, key, raw, check_seal)
        except (IntegrityError, UnknownKeyId, NewerFormat) as exc:
            unreadable[key] = str(exc)
            continue
        generations.setdefault((record.dataset, record.name), []).append(record)
    former = _take_former(generations, first_generations)
    # A seal does not stop an old sealed object from being put back. A settings object
    # saying "plaintext" where sealed encrypted manifests of the dataset exist is stale
    # or replayed (a dataset deleted and created again): never downgrade on its word,
    # leave the dataset out (and say why) instead.
    encrypted_in = {r.dataset for records in generations.values() for r in records if r.envelope}
    for name in encrypted_in:
        if name in datasets and not datasets[name].encrypted:
            del datasets[name]
            unreadable[archive_dataset_key(name)] = (
                "says plaintext, but encrypted manifests of the dataset are in the archive: "
                "a stale or replayed settings object; the dataset is left out"
            )
    newest: dict[tuple[str, str], ShardRecord] = {}
    superseded: list[ShardRecord] = []
    for slot, records in generations.items():
        # Known only once every dataset object is read (listing order is the
        # archive's): a generation encrypted otherwise than its dataset is not
        # believed, and the newest one left, if any, is the shard's.
        settings = datasets.get(slot[0])
        believed = []
        for record in records:
            if settings is not None and settings.encrypted != (record.envelope is not None):
                unreadable[archive_manifest_key(record.dataset, record.generation)] = (
                    "encrypted otherwise than its dataset"
                )
            else:
                believed.append(record)
        if believed:
            newest[slot] = max(believed, key=lambda record: record.generation)
            superseded += [r for r in believed if r.generation < newest[slot].generation]
    return ArchiveContents(datasets, newest, superseded, unreadable, first_generations, former)


def _take_former(
    generations: dict[tuple[str, str], list[ShardRecord]], first_generations: dict[str, int]
) -> list[ShardRecord]:
    """Take out of ``generations`` (by shard) and return those older than their
    dataset's first generation: an earlier namesake's. Before anything else is judged
    by them: an earlier namesake's encrypted shards say nothing against the settings of
    a plaintext dataset made since."""
    former: list[ShardRecord] = []
    for slot in list(generations):
        first = first_generations.get(slot[0], 0)
        kept = [record for record in generations[slot] if record.generation >= first]
        former += [record for record in generations[slot] if record.generation < first]
        if kept:
            generations[slot] = kept
        else:
            del generations[slot]
    return former


def believed_manifest(
    archive: Tier, key: str, raw: bytes | memoryview, check_seal: SealCheck
) -> ShardRecord:
    """The record (archived, not hot) of the manifest ``raw`` read at ``key``, once it
    is believed: sealed for its key (``check_seal``), at its own generation's key, and
    its frames object holding exactly the stored bytes it lists. Raises IntegrityError
    (not believed), UnknownKeyId, ArchiveUnavailable."""
    check_seal(key, raw)
    record = ShardRecord.decode(raw).with_state(hot=False, archived=True)
    _check_against_its_objects(archive, key, record)
    return record


def _check_against_its_objects(archive: Tier, key: str, record: ShardRecord) -> None:
    """Raise IntegrityError unless manifest ``key`` describes its own generation and
    that generation's frames object holds exactly the stored bytes it lists."""
    if key != archive_manifest_key(record.dataset, record.generation):
        raise IntegrityError(f"describes generation {record.generation} of another key")
    frames = archive.stat(archive_frames_key(record.dataset, record.generation))
    if frames is None or frames.size != stored_size(record):
        raise IntegrityError("its frames object does not hold the bytes it lists")


def restore_catalog(txn: Any, catalog: Catalog, contents: ArchiveContents) -> tuple[int, int]:
    """Write scanned ``contents`` into the catalog in the caller's write transaction.

    Shards of datasets the archive holds no settings for are left out. Journals the
    archive's deletion of the older generations of the shards restored (``outdated``
    entries, newest first: see :mod:`tierstore.engine.outdated`), and of the earlier
    namesakes' generations (``delete``). Raises the ``next_generation`` counter past
    every generation scanned and to every dataset's first. Returns the shards restored
    and the newest generation the counter is now past (0 when there is none).
    """
    for name, settings in contents.datasets.items():
        catalog.put_dataset(txn, name, settings, contents.first_generations.get(name, 0))
    for record in contents.shards.values():
        if record.dataset in contents.datasets:
            catalog.put_shard(txn, record)
    # Newest first: should the restored generation prove damaged, the newest whole one
    # before it becomes the shard's (tierstore.engine.outdated), not the oldest.
    for record in sorted(contents.superseded, key=lambda r: r.generation, reverse=True):
        if record.dataset in contents.datasets:
            catalog.append_journal(
                txn, JournalOp("outdated", record.dataset, record.name, record.generation)
            )
    for record in contents.former:
        if record.dataset in contents.datasets:
            catalog.append_journal(
                txn, JournalOp("delete", record.dataset, record.name, record.generation)
            )
    # Past every generation seen, not only those restored: a former one's number taken
    # again would have its pending delete remove the new generation's objects.
    scanned = [*contents.shards.values(), *contents.superseded, *contents.former]
    newest = max(
        max((r.generation for r in scanned), default=0),
        max(contents.first_generations.values(), default=0) - 1,
    )
    if catalog.counter(txn, "next_generation") <= newest:
        catalog.set_counter(txn, "next_generation", newest + 1)
    return sum(1 for r in contents.shards.values() if r.dataset in contents.datasets), newest
