"""The catalog: datasets, shard records, upload journal, counters and access statistics.

All of it lives in named sub-databases of the hot tier's LMDB environment, next to
the frames, so that a put commits frames + record + journal entry in one
transaction. Every method takes the caller's transaction; the catalog never
begins one itself, so callers decide what commits together.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tierstore.engine.records import (
    FORMAT_VERSION,
    KEPT_NAME_BYTES,
    AccessStats,
    JournalOp,
    ShardRecord,
    catalog_key,
    check_format,
    decode_dataset,
    encode_dataset,
    first_generation_of,
    shard_of_key,
)
from tierstore.engine.unreadable import UnreadableRecords
from tierstore.errors import DatasetNotFound, IntegrityError, ShardNotFound
from tierstore.tiers.lmdb import LmdbEnvironment
from tierstore.types import DatasetSettings

__all__ = [
    "DB_NAMES",
    "FRAMES_DB",
    "META_DB",
    "SHARDS_DB",
    "Catalog",
    "lookup_counter",
    "lookup_shard",
]

FRAMES_DB = "frames"
SHARDS_DB = "shards"
META_DB = "meta"
DB_NAMES = (FRAMES_DB, "datasets", SHARDS_DB, "journal", "access", META_DB)
_U64 = struct.Struct(">Q")
#: Key in ``meta`` of the hot tier's format mark (:meth:`Catalog.mark_format`).
_FORMAT = b"format\x00"
#: Key prefix in ``meta`` of the markers of staged promotions (counters and notes
#: are named in words: no counter begins so).
_STAGING = b"staging\x00"
#: Key prefix in ``meta`` of the journal entry of a generation's pending upload.
_UPLOAD = b"upload\x00"
#: Key prefix in ``meta`` of a dataset's backlog: the stored bytes and the number of
#: its pending uploads (two u64), kept with ``backlog_bytes``.
_BACKLOG = b"backlog\x00"
#: Key prefix in ``meta`` of a journal entry's commit time (f64, seconds since the
#: epoch), by sequence number.
_JOURNALED_AT = b"journaled\x00"
#: Key prefix in ``meta`` of the journal's index by dataset: this prefix, the dataset's
#: name, a NUL and an entry's sequence number (u64), for each pending entry (no value).
_JOURNAL_OF = b"journal-of\x00"
#: The counter of the newest sequence number up to which that index holds every entry:
#: it is whole while this equals ``journal_seq``. A release before the index appends
#: entries without it, and leaves this behind (:meth:`Catalog.index_journal`).
_INDEXED_THROUGH = "journal_indexed_through"
_F64 = struct.Struct(">d")
_PAIR = struct.Struct(">QQ")

log = logging.getLogger(__name__)

#: How far in the future a recorded read may lie (clocks step) before it is damage.
_CLOCK_SLACK_S = 86_400.0


def record_at(key: bytes, raw: bytes | memoryview) -> ShardRecord:
    """The shard record ``raw`` stored at ``key``. Raises IntegrityError when it does not
    decode, or names a shard whose key is not ``key``: a record copied or moved there
    (whoever can write the LMDB file), which would serve another dataset's shard, and
    hand its data key out, to a reader of this one."""
    record = ShardRecord.decode(raw)
    if catalog_key(record.dataset, record.name) != key:
        raise IntegrityError(
            f"the record names another shard ({record.dataset}/{record.name[:80]}): it was "
            "copied or moved to this key"
        )
    return record


def lookup_shard(txn: Any, shards_db: Any, dataset: str, name: str) -> ShardRecord | None:
    """The record of ``dataset/name`` in the ``shards`` sub-database, or ``None``.

    Read-only, and shared with the client's local read path (which opens the hot
    tier read-only in its own process), so both sides decode records alike.
    Raises IntegrityError for an undecodable record.
    """
    key = catalog_key(dataset, name)
    raw = txn.get(key, db=shards_db)
    if raw is None:
        return None
    try:
        record = record_at(key, raw)
    except IntegrityError as exc:
        raise IntegrityError(
            f"{dataset}/{name}: {exc}; its data cannot be read. Delete the shard (and put "
            "it again), or rebuild the node's hot tier from the archive"
        ) from exc
    # Long names share a truncated key prefix with a hash; the record holds the full name.
    return record if record.name == name else None


def lookup_counter(txn: Any, meta_db: Any, name: str) -> int:
    """A counter of the ``meta`` sub-database (0 if never set), such as
    ``next_generation``: one past the newest generation committed. Read-only, shared
    with the client's local read path."""
    raw = txn.get(name.encode(), db=meta_db)
    return 0 if raw is None else int(_U64.unpack(bytes(raw))[0])


class Catalog:
    """Typed access to the catalog sub-databases.

    Its one state beyond the environment: the shard records it found unreadable
    (:attr:`unreadable`). LMDB keeps no checksum, so a record can be damaged on
    disk; walks over records pass such a record by (one bad record must not stop the
    node from opening, evicting or listing the rest) and note it there, where the
    store's statistics report it, and point lookups of it raise IntegrityError.
    """

    def __init__(self, environment: LmdbEnvironment) -> None:
        self._env = environment
        #: when this catalog was opened: the commit time of a journal entry without one.
        self._opened_at = time.time()
        #: the unreadable records found and not since deleted: some named, all counted.
        self.unreadable = UnreadableRecords(environment.oldest_snapshot)

    def _db(self, name: str) -> Any:
        return self._env.db(name)

    # Datasets.

    def get_dataset(self, txn: Any, name: str) -> DatasetSettings | None:
        raw = txn.get(name.encode(), db=self._db("datasets"))
        return None if raw is None else decode_dataset(raw)

    def put_dataset(
        self, txn: Any, name: str, settings: DatasetSettings, first_generation: int | None = None
    ) -> None:
        """Store a dataset's settings, with the first generation it may hold
        (:func:`~tierstore.engine.records.first_generation_of`; ``None``: as stored, for
        a change of settings)."""
        if first_generation is None:
            first_generation = self.dataset_first_generation(txn, name)
        txn.put(name.encode(), encode_dataset(settings, first_generation), db=self._db("datasets"))

    def dataset_first_generation(self, txn: Any, name: str) -> int:
        """The first generation dataset ``name`` may hold (0 if it has none recorded, or
        does not exist): an older one is an earlier namesake's."""
        raw = txn.get(name.encode(), db=self._db("datasets"))
        return 0 if raw is None else first_generation_of(raw)

    def dataset_object(self, txn: Any, name: str) -> bytes | None:
        """The bytes the archive's settings object of dataset ``name`` holds (a copy),
        or ``None`` when there is no such dataset. Raises IntegrityError for a record
        that does not read (it must not replace a good copy in the archive)."""
        raw = txn.get(name.encode(), db=self._db("datasets"))
        if raw is None:
            return None
        stored = bytes(raw)
        decode_dataset(stored)
        first_generation_of(stored)
        return stored

    def delete_dataset(self, txn: Any, name: str) -> None:
        txn.delete(name.encode(), db=self._db("datasets"))

    def require_dataset(self, txn: Any, name: str) -> DatasetSettings:
        """A dataset's settings. Raises DatasetNotFound."""
        settings = self.get_dataset(txn, name)
        if settings is None:
            raise DatasetNotFound(f"no dataset {name!r}")
        return settings

    def first_dataset(self, txn: Any) -> str | None:
        """The name of the first dataset in byte order, or None when there is none."""
        cursor = txn.cursor(db=self._db("datasets"))
        return bytes(cursor.key()).decode() if cursor.first() else None

    def list_datasets(self, txn: Any) -> list[tuple[str, DatasetSettings]]:
        return list(self.iter_datasets(txn))

    def dataset_names(self, txn: Any) -> list[str]:
        """The datasets' names in name order, their settings not decoded."""
        cursor = txn.cursor(db=self._db("datasets"))
        return [bytes(key).decode() for key in cursor.iternext(keys=True, values=False)]

    def iter_datasets(
        self,
        txn: Any,
        start_after: str | None = None,
        shown: Callable[[str], bool] | None = None,
    ) -> Iterator[tuple[str, DatasetSettings]]:
        """Datasets and their settings in name order, after ``start_after`` if given,
        those whose names ``shown`` takes (if given; the others' settings, each with
        its schema, are not decoded). Raises IntegrityError for unreadable settings."""
        cursor = txn.cursor(db=self._db("datasets"))
        # The next key after a name is the name and a NUL, which no name holds.
        positioned = (
            cursor.set_range(start_after.encode() + b"\x00") if start_after else cursor.first()
        )
        while positioned:
            name = bytes(cursor.key()).decode()
            if shown is None or shown(name):
                yield name, decode_dataset(cursor.value())
            positioned = cursor.next()

    # Shard records.

    def get_shard(self, txn: Any, dataset: str, name: str) -> ShardRecord | None:
        """A shard's record, or ``None``. Raises IntegrityError for an unreadable one."""
        try:
            return lookup_shard(txn, self._db(SHARDS_DB), dataset, name)
        except IntegrityError as exc:
            self._note_damaged(txn, catalog_key(dataset, name), exc.__cause__ or exc)
            raise

    def readable_shard(self, txn: Any, dataset: str, name: str) -> ShardRecord | None:
        """A shard's record; ``None`` when there is none or it is unreadable (then noted
        in :meth:`damaged_records`). For background work that must pass a damaged
        record by rather than stop at it."""
        try:
            return self.get_shard(txn, dataset, name)
        except IntegrityError:
            return None

    def require_shard(self, txn: Any, dataset: str, name: str) -> ShardRecord:
        """A shard's record. Raises DatasetNotFound, ShardNotFound."""
        self.require_dataset(txn, dataset)
        record = self.get_shard(txn, dataset, name)
        if record is None:
            raise ShardNotFound(f"no shard {name!r} in dataset {dataset!r}")
        return record

    def holds(self, txn: Any, record: ShardRecord) -> bool:
        """Whether ``record``'s generation is still the shard's current one."""
        current = self.get_shard(txn, record.dataset, record.name)
        return current is not None and current.generation == record.generation

    def put_shard(self, txn: Any, record: ShardRecord) -> None:
        txn.put(catalog_key(record.dataset, record.name), record.encode(), db=self._db(SHARDS_DB))

    def delete_shard(self, txn: Any, dataset: str, name: str) -> None:
        key = catalog_key(dataset, name)
        txn.delete(key, db=self._db(SHARDS_DB))
        txn.delete(key, db=self._db("access"))

    def iter_shards(
        self, txn: Any, dataset: str | None = None, prefix: str = "", start_after: str | None = None
    ) -> Iterator[ShardRecord]:
        """Records by dataset, then name (byte order), optionally of one dataset and prefix."""
        cursor = txn.cursor(db=self._db(SHARDS_DB))
        if dataset is None:
            positioned = cursor.first()
            head = b""
        else:
            # Seek by at most the kept part of a name: keys of long names end in a hash.
            head = dataset.encode() + b"\x00"
            start = head + prefix.encode()[:KEPT_NAME_BYTES]
            if start_after is not None:
                start = max(start, head + start_after.encode()[:KEPT_NAME_BYTES])
            positioned = cursor.set_range(start)
        raw_prefix = prefix.encode()
        for record in self._in_name_order(txn, cursor, positioned, head):
            raw_name = record.name.encode()
            if raw_prefix and not raw_name.startswith(raw_prefix):
                if raw_name[: len(raw_prefix)] > raw_prefix:
                    return  # sorted by name: nothing further can match
            elif start_after is None or raw_name > start_after.encode():
                yield record

    def claimed_generations(self, txn: Any) -> set[int]:
        """The generation of every readable record (hot or not); unreadable ones are
        noted in :meth:`damaged_records`."""
        generations: set[int] = set()
        for key, raw in txn.cursor(db=self._db(SHARDS_DB)):
            record = self._readable(txn, key, raw)
            if record is not None:
                generations.add(record.generation)
        return generations

    def count_shards(self, txn: Any, dataset: str, *, at_most: int | None = None) -> int:
        """How many shards ``dataset`` holds, counted up to ``at_most`` (walks its keys;
        decodes no record)."""
        cursor = txn.cursor(db=self._db(SHARDS_DB))
        head = dataset.encode() + b"\x00"
        count = 0
        positioned = cursor.set_range(head)
        while positioned and bytes(cursor.key()).startswith(head):
            count += 1
            if count == at_most:
                break
            positioned = cursor.next()
        return count

    def _in_name_order(
        self, txn: Any, cursor: Any, positioned: bool, head: bytes
    ) -> Iterator[ShardRecord]:
        """Readable records from the cursor on, while keys start with ``head``, sorted by
        name (unreadable ones are noted and passed by).

        Key order is name order except among names longer than the kept part that
        share it (their keys end in a hash): such a run is contiguous, and sorted here.
        """
        run: list[ShardRecord] = []
        run_head = ("", b"")
        while positioned and bytes(cursor.key()).startswith(head):
            record = self._readable(txn, cursor.key(), cursor.value())
            if record is None:
                positioned = cursor.next()
                continue
            raw_name = record.name.encode()
            if run and (record.dataset, raw_name[:KEPT_NAME_BYTES]) != run_head:
                yield from sorted(run, key=lambda r: r.name.encode())
                run = []
            if len(raw_name) > KEPT_NAME_BYTES:
                run_head = (record.dataset, raw_name[:KEPT_NAME_BYTES])
                run.append(record)
            else:
                yield record
            positioned = cursor.next()
        yield from sorted(run, key=lambda r: r.name.encode())

    # Damaged records.

    def _readable(self, txn: Any, key: Any, raw: Any) -> ShardRecord | None:
        """The record ``raw`` stored at ``key`` in ``txn``, or ``None`` (noted) if it
        does not decode."""
        try:
            return record_at(bytes(key), raw)
        except IntegrityError as exc:
            self._note_damaged(txn, bytes(key), exc)
            return None

    def _note_damaged(self, txn: Any, key: bytes, exc: BaseException) -> None:
        """Note the record at ``key``, read in ``txn``, as unreadable: a read in a
        snapshot older than the record's delete is not (see
        :mod:`tierstore.engine.unreadable`)."""
        dataset, name = shard_of_key(key)
        if self.unreadable.note(key, dataset, f"{dataset}/{name}: {exc}", txn.id()):
            log.error("catalog record %s/%s is unreadable: %s", dataset, name, exc)

    def damaged_records(self) -> list[str]:
        """The shard records found unreadable (``"dataset/name: why"``) and not since
        deleted, by key, a bounded number of them (:attr:`unreadable` counts the
        rest). Filled by walks and lookups (opening a store walks them all)."""
        return self.unreadable.named()

    def count_unreadable(self, txn: Any) -> None:
        """Walk every shard record to count the unreadable ones anew
        (:attr:`unreadable`), logging a count of those not named, by dataset. For a
        store that opens, before any other thread runs: a note or delete meanwhile
        would be lost."""
        named: dict[bytes, str] = {}
        unnamed: dict[str, int] = {}
        first_unnamed: dict[str, str] = {}
        for key, raw in txn.cursor(db=self._db(SHARDS_DB)):
            try:
                record_at(bytes(key), raw)
            except IntegrityError as exc:
                dataset, name = shard_of_key(bytes(key))
                if len(named) < self.unreadable.named_at_most:
                    named[bytes(key)] = f"{dataset}/{name}: {exc}"
                else:
                    unnamed[dataset] = unnamed.get(dataset, 0) + 1
                    first_unnamed.setdefault(dataset, f"{name}: {exc}")
        # A line a dataset, not a record: 20,000 damaged records logged 20,000 lines at
        # every start.
        for dataset, count in unnamed.items():
            log.error(
                "%d catalog records of dataset %s are unreadable and not named in stats "
                "(the first: %s)",
                count,
                dataset,
                first_unnamed[dataset],
            )
        self.unreadable.reset(named, unnamed)

    def damaged_keys_of(self, txn: Any, dataset: str) -> list[bytes]:
        """Keys of ``dataset``'s unreadable shard records, found by reading them all."""
        head = dataset.encode() + b"\x00"
        cursor = txn.cursor(db=self._db(SHARDS_DB))
        positioned = cursor.set_range(head)
        damaged = []
        while positioned and bytes(cursor.key()).startswith(head):
            if self._readable(txn, cursor.key(), cursor.value()) is None:
                damaged.append(bytes(cursor.key()))
            positioned = cursor.next()
        return damaged

    def delete_damaged(self, txn: Any, key: bytes) -> None:
        """Delete an unreadable record (and its access statistics) by key, in write
        transaction ``txn``; it is no longer reported, nor noted by a read older than
        ``txn`` (a failed commit leaves it unreported until a read newer than a later
        commit finds it again)."""
        txn.delete(key, db=self._db(SHARDS_DB))
        txn.delete(key, db=self._db("access"))
        self.unreadable.forget(key, shard_of_key(key)[0], txn.id())

    # The hot tier's format.

    def mark_format(self, txn: Any) -> None:
        """Refuse a hot tier of a newer format than this release's FORMAT_VERSION
        (NewerFormat), else mark it with this release's: the newest format a release
        has written into it, so that an older release that checks refuses it rather
        than drop what a newer one recorded (releases before the mark do not check).
        Raises IntegrityError for a mark that does not read as one."""
        raw = txn.get(_FORMAT, db=self._db(META_DB))
        where = f"the hot tier at {self._env.path}"
        if raw is not None:
            try:
                version = int(bytes(raw).decode("ascii"))
                check_format(version, where)
            except ValueError as exc:  # UnicodeDecodeError is one
                raise IntegrityError(f"{where} has an unreadable format mark: {exc}") from exc
            if version == FORMAT_VERSION:
                return
        txn.put(_FORMAT, str(FORMAT_VERSION).encode(), db=self._db(META_DB))

    # Counters and notes.

    def note(self, txn: Any, name: str) -> str:
        """A short text kept in the catalog ("" when never set)."""
        raw = txn.get(b"note:" + name.encode(), db=self._db("meta"))
        return "" if raw is None else bytes(raw).decode()

    def set_note(self, txn: Any, name: str, text: str) -> None:
        txn.put(b"note:" + name.encode(), text.encode(), db=self._db("meta"))

    def counter(self, txn: Any, name: str) -> int:
        return lookup_counter(txn, self._db(META_DB), name)

    def set_counter(self, txn: Any, name: str, value: int) -> None:
        txn.put(name.encode(), _U64.pack(max(0, value)), db=self._db("meta"))

    def add_counter(self, txn: Any, name: str, delta: int) -> int:
        value = max(0, self.counter(txn, name) + delta)
        self.set_counter(txn, name, value)
        return value

    # Staged promotions (see tierstore.engine.spool).

    def mark_staging(self, txn: Any, generation: int, frame_count: int) -> None:
        """Note that frames of cold ``generation`` (``frame_count`` of them) are being
        staged in the hot tier by a spooled promotion."""
        txn.put(_STAGING + _U64.pack(generation), _U64.pack(frame_count), db=self._db("meta"))

    def unmark_staging(self, txn: Any, generation: int) -> None:
        txn.delete(_STAGING + _U64.pack(generation), db=self._db("meta"))

    def staged_frame_count(self, txn: Any, generation: int) -> int:
        """How many frames ``generation``'s marker says it stages (0: no marker)."""
        raw = txn.get(_STAGING + _U64.pack(generation), db=self._db("meta"))
        return 0 if raw is None else int(_U64.unpack(bytes(raw))[0])

    def staged(self, txn: Any) -> dict[int, int]:
        """Every generation being staged, with its frame count."""
        cursor = txn.cursor(db=self._db("meta"))
        staged: dict[int, int] = {}
        positioned = cursor.set_range(_STAGING)
        while positioned and bytes(cursor.key()).startswith(_STAGING):
            generation = _U64.unpack(bytes(cursor.key())[len(_STAGING) :])[0]
            staged[generation] = _U64.unpack(bytes(cursor.value()))[0]
            positioned = cursor.next()
        return staged

    # Upload journal.

    def append_journal(self, txn: Any, op: JournalOp) -> int:
        """Append ``op``; returns its sequence number (increasing, never reused)."""
        seq = self.counter(txn, "journal_seq") + 1
        self.set_counter(txn, "journal_seq", seq)
        txn.put(_U64.pack(seq), op.encode(), db=self._db("journal"))
        txn.put(_journal_of(op.dataset, seq), b"", db=self._db("meta"))
        if self.counter(txn, _INDEXED_THROUGH) == seq - 1:
            self.set_counter(txn, _INDEXED_THROUGH, seq)  # whole still
        txn.put(_JOURNALED_AT + _U64.pack(seq), _F64.pack(time.time()), db=self._db("meta"))
        if op.op == "upload":
            # A generation journaled again (archive_again_in) while its upload is still
            # pending (it was uploaded ahead of its turn): the older entry's count goes
            # to the new one, which the index names from now on.
            self.forgo_upload(txn, op.generation)
            self.add_counter(txn, "backlog_bytes", op.nbytes)
            self._add_backlog(txn, op.dataset, op.nbytes, 1)
            txn.put(_UPLOAD + _U64.pack(op.generation), _U64.pack(seq), db=self._db("meta"))
        return seq

    def dataset_backlog(self, txn: Any, dataset: str) -> tuple[int, int]:
        """``dataset``'s stored bytes waiting for the archive and its uploads pending
        (those not forgone): its share of ``backlog_bytes``."""
        raw = txn.get(_BACKLOG + dataset.encode(), db=self._db("meta"))
        return (0, 0) if raw is None else _PAIR.unpack(bytes(raw))

    def _add_backlog(self, txn: Any, dataset: str, nbytes: int, shards: int) -> None:
        size, count = self.dataset_backlog(txn, dataset)
        size, count = max(0, size + nbytes), max(0, count + shards)
        key = _BACKLOG + dataset.encode()
        if size or count:
            txn.put(key, _PAIR.pack(size, count), db=self._db("meta"))
        else:
            txn.delete(key, db=self._db("meta"))

    def _drop_keys(self, txn: Any, prefix: bytes) -> None:
        """Delete every key of ``meta`` that starts with ``prefix``."""
        cursor = txn.cursor(db=self._db("meta"))
        positioned = cursor.set_range(prefix)
        while positioned and bytes(cursor.key()).startswith(prefix):
            positioned = cursor.delete()

    def oldest_journaled_at(self, txn: Any) -> float | None:
        """When the oldest pending journal entry committed (seconds since the epoch;
        None: the journal is empty). One journaled by a release that kept no commit
        time, since this catalog was opened: never None while an entry is pending."""
        for seq, _ in self._journal(txn, 1):
            raw = txn.get(_JOURNALED_AT + _U64.pack(seq), db=self._db("meta"))
            return self._opened_at if raw is None else float(_F64.unpack(bytes(raw))[0])
        return None

    def count_backlog(self, txn: Any) -> None:
        """On opening a hot tier whose journal a release that kept neither wrote to
        (its oldest or newest entry has no commit time, or it was never counted): each
        dataset's backlog, counted again from the pending uploads, and a commit time
        (the opening's) for each pending entry without one. An empty journal: what the
        entries an older release ran left behind goes (:meth:`_journal_emptied`)."""
        if not self.journal_length(txn):
            self._journal_emptied(txn)
            self.set_counter(txn, "backlog_by_dataset", 1)
            return
        if self.counter(txn, "backlog_by_dataset") and not self._untimed_ends(txn):
            return
        now = _F64.pack(self._opened_at)
        self._drop_keys(txn, _BACKLOG)
        for seq, raw in self._journal(txn):
            op = JournalOp.decode(raw)
            at = _JOURNALED_AT + _U64.pack(seq)
            if txn.get(at, db=self._db("meta")) is None:
                txn.put(at, now, db=self._db("meta"))
            if op.op == "upload" and self._counted(txn, seq, op):
                self._add_backlog(txn, op.dataset, op.nbytes, 1)
        self.set_counter(txn, "backlog_by_dataset", 1)

    def _untimed_ends(self, txn: Any) -> bool:
        """Whether the journal's oldest or newest entry has no commit time."""
        cursor = txn.cursor(db=self._db("journal"))
        for move in (cursor.first, cursor.last):
            at = _JOURNALED_AT + bytes(cursor.key()) if move() else None
            if at is not None and txn.get(at, db=self._db("meta")) is None:
                return True
        return False

    def _counted(self, txn: Any, seq: int, op: JournalOp) -> bool:
        """Whether upload ``op`` (entry ``seq``) counts in its dataset's backlog: it is
        its generation's pending upload, or was journaled before uploads were indexed
        and still holds bytes (one forgone holds none and is no longer indexed)."""
        raw = txn.get(_UPLOAD + _U64.pack(op.generation), db=self._db("meta"))
        return op.nbytes > 0 if raw is None else _U64.unpack(bytes(raw))[0] == seq

    def pending_upload_bytes(self, txn: Any, generation: int) -> int:
        """The backlog bytes ``generation``'s pending upload holds (0: none pending), which
        :meth:`forgo_upload` would release."""
        raw = txn.get(_UPLOAD + _U64.pack(generation), db=self._db("meta"))
        if raw is None:
            return 0
        op = self.journal_entry(txn, _U64.unpack(bytes(raw))[0])
        if op is None or op.op != "upload" or op.generation != generation:
            return 0
        return op.nbytes

    def forgo_upload(self, txn: Any, generation: int) -> None:
        """``generation`` was overwritten or deleted before its upload, which will never
        run: its bytes leave the backlog now, not when the mover passes its entry (an
        archive outage made every overwrite count until puts were refused). Nothing
        for a generation with no upload pending, or one journaled before uploads were
        indexed by generation."""
        index = _UPLOAD + _U64.pack(generation)
        raw = txn.get(index, db=self._db("meta"))
        if raw is None:
            return
        txn.delete(index, db=self._db("meta"))
        seq = _U64.unpack(bytes(raw))[0]
        op = self.journal_entry(txn, seq)
        if op is None or op.op != "upload" or op.generation != generation:
            return
        self._add_backlog(txn, op.dataset, -op.nbytes, -1)
        if not op.nbytes:
            return
        txn.put(_U64.pack(seq), dataclasses.replace(op, nbytes=0).encode(), db=self._db("journal"))
        self.add_counter(txn, "backlog_bytes", -op.nbytes)

    def journal_entries(self, txn: Any, limit: int = 256) -> list[tuple[int, JournalOp]]:
        """The oldest ``limit`` pending operations, in order."""
        return [(seq, JournalOp.decode(raw)) for seq, raw in self._journal(txn, limit)]

    def journal_entries_of(
        self, txn: Any, dataset: str, shard: str, before: int
    ) -> list[tuple[int, JournalOp]]:
        """The pending operations on ``dataset``'s settings object, its deletes, and
        those on ``dataset/shard``, older than ``before``, in order, with their
        sequence numbers.

        Found through the journal's index by dataset: a write-through put behind a
        long backlog of other datasets walked all of it (52 ms a put behind 20,000
        entries). Until the index is whole again (entries a release before it
        appended), through every older entry, those of other datasets undecoded."""
        mentioned = self.dataset_journal(txn, dataset, before)
        return [(seq, op) for seq, op in mentioned if _concerns(op, dataset, shard)]

    def dataset_journal(
        self, txn: Any, dataset: str, before: int | None = None
    ) -> Iterator[tuple[int, JournalOp]]:
        """``dataset``'s pending entries (older than ``before``, if given), in order,
        lazily: through the journal's index by dataset, or, until it is whole again,
        by a walk of the journal (see :meth:`journal_entries_of`)."""
        end = before if before is not None else self.counter(txn, "journal_seq") + 1
        if not self._journal_indexed(txn):
            return self._walk_journal_for(txn, dataset, end)
        listed = self._journal_of(txn, dataset, end)
        return ((seq, op) for seq, op in listed if op is not None)

    def _walk_journal_for(
        self, txn: Any, dataset: str, before: int
    ) -> Iterator[tuple[int, JournalOp]]:
        """The entries of ``dataset`` older than ``before``, found by walking the journal."""
        # JournalOp.encode writes the dataset as its list's second item, as json.dumps
        # writes it.
        marker = b"," + json.dumps(dataset).encode() + b","
        older = itertools.takewhile(lambda entry: entry[0] < before, self._journal(txn))
        mentioned = ((seq, JournalOp.decode(raw)) for seq, raw in older if marker in bytes(raw))
        return ((seq, op) for seq, op in mentioned if op.dataset == dataset)  # not a shard's name

    def _journal_indexed(self, txn: Any) -> bool:
        """Whether the journal's index by dataset holds every pending entry."""
        return self.counter(txn, _INDEXED_THROUGH) == self.counter(txn, "journal_seq")

    def _journal_of(
        self, txn: Any, dataset: str, before: int
    ) -> Iterator[tuple[int, JournalOp | None]]:
        """The entries the index by dataset names for ``dataset``, older than ``before``,
        in order, each with its operation (None: no longer pending; a release before the
        index removed it, and left its index key)."""
        head = _journal_of(dataset, 0)[:-8]
        cursor = txn.cursor(db=self._db("meta"))
        positioned = cursor.set_range(head)
        while positioned and bytes(cursor.key()).startswith(head):
            seq = _U64.unpack(bytes(cursor.key())[len(head) :])[0]
            if seq >= before:
                return
            yield seq, self.journal_entry(txn, seq)
            positioned = cursor.next()

    def index_journal(self, txn: Any) -> None:
        """On opening a hot tier: index by dataset the journal entries a release before
        the index appended (the index is then not whole), all of them over again."""
        if self._journal_indexed(txn):
            return
        self._drop_keys(txn, _JOURNAL_OF)
        count = 0
        for seq, raw in self._journal(txn):
            txn.put(_journal_of(JournalOp.decode(raw).dataset, seq), b"", db=self._db("meta"))
            count += 1
        self.set_counter(txn, _INDEXED_THROUGH, self.counter(txn, "journal_seq"))
        log.info("indexed %d pending journal entries by dataset", count)

    def _journal(self, txn: Any, limit: int | None = None) -> Iterator[tuple[int, Any]]:
        """The oldest ``limit`` (default: all) journal entries as ``(seq, encoded
        operation)``, lazily."""
        cursor = txn.cursor(db=self._db("journal"))
        for raw_seq, raw_op in itertools.islice(cursor, limit):
            yield _U64.unpack(bytes(raw_seq))[0], raw_op

    def journal_entry(self, txn: Any, seq: int) -> JournalOp | None:
        raw = txn.get(_U64.pack(seq), db=self._db("journal"))
        return None if raw is None else JournalOp.decode(raw)

    def remove_journal(self, txn: Any, seq: int) -> None:
        """Remove a finished operation (and release its backlog bytes)."""
        op = self.journal_entry(txn, seq)
        if op is None:
            return
        txn.delete(_U64.pack(seq), db=self._db("journal"))
        txn.delete(_JOURNALED_AT + _U64.pack(seq), db=self._db("meta"))
        txn.delete(_journal_of(op.dataset, seq), db=self._db("meta"))
        if op.op == "upload":
            self.add_counter(txn, "backlog_bytes", -op.nbytes)
            # Not an upload forgone (its shard was counted off then) nor one a newer
            # entry took over: its count, and its index if it has one, go with it.
            if self._counted(txn, seq, op):
                self._add_backlog(txn, op.dataset, -op.nbytes, -1)
                txn.delete(_UPLOAD + _U64.pack(op.generation), db=self._db("meta"))
        if not self.journal_length(txn):
            self._journal_emptied(txn)

    def _journal_emptied(self, txn: Any) -> None:
        """Nothing is pending: whatever drift the backlog's counts took (an older
        release's entries, counted by none) ends here, and so do the commit times and
        upload index of the entries an older release ran (it removed neither), and the
        index by dataset is whole again."""
        self.set_counter(txn, "backlog_bytes", 0)
        for prefix in (_BACKLOG, _JOURNALED_AT, _UPLOAD, _JOURNAL_OF):
            self._drop_keys(txn, prefix)
        self.set_counter(txn, _INDEXED_THROUGH, self.counter(txn, "journal_seq"))

    def datasets_on_the_journal(self, txn: Any) -> set[str]:
        """The datasets whose settings object a pending ``dataset`` operation writes or
        removes (the rest are passed over undecoded)."""
        # JournalOp.encode writes the operation first, as json.dumps writes it.
        marker = b'["dataset",'
        return {
            JournalOp.decode(raw).dataset
            for _, raw in self._journal(txn)
            if bytes(raw[: len(marker)]) == marker
        }

    def count_journal_ops(self, txn: Any, ops: Iterable[str]) -> int:
        """How many pending operations are one of ``ops`` (every entry walked, none
        decoded: a journal of millions of entries is never held in memory)."""
        # JournalOp.encode writes the operation first, as json.dumps writes it.
        markers = tuple(b"[" + json.dumps(op).encode() + b"," for op in ops)
        longest = max(map(len, markers), default=0)
        return sum(bytes(raw[:longest]).startswith(markers) for _, raw in self._journal(txn))

    def journal_length(self, txn: Any) -> int:
        return int(txn.stat(self._db("journal"))["entries"])

    # Access statistics.

    def get_access(self, txn: Any, dataset: str, name: str) -> AccessStats:
        """A shard's flushed access statistics (24 bytes in the ``access`` database); none
        for a record that does not decode: they are only statistics, so a damaged record
        costs that shard its counts (the next flush writes them afresh), not the reads,
        listings or start-up that look them up."""
        raw = txn.get(catalog_key(dataset, name), db=self._db("access"))
        if raw is None:
            return AccessStats()
        try:
            stats = AccessStats.unpack(bytes(raw))
            if stats.last > time.time() + _CLOCK_SLACK_S:
                # The policies' clock never goes back: one such record would stop it.
                raise ValueError(f"last read {stats.last:.0f} lies in the future")
            return stats
        except ValueError as exc:
            log.warning(
                "access statistics of %s/%s are damaged, read as none: %s", dataset, name, exc
            )
            return AccessStats()

    def add_access(
        self, txn: Any, dataset: str, name: str, reads: AccessStats, half_life_s: float
    ) -> None:
        """Merge ``reads`` into a shard's flushed statistics."""
        merged = self.get_access(txn, dataset, name).merged(reads, half_life_s)
        txn.put(catalog_key(dataset, name), merged.pack(), db=self._db("access"))


def _journal_of(dataset: str, seq: int) -> bytes:
    """The key in ``meta`` of entry ``seq``'s place in the journal's index by dataset."""
    return _JOURNAL_OF + dataset.encode() + b"\x00" + _U64.pack(seq)


def _concerns(op: JournalOp, dataset: str, shard: str) -> bool:
    """Whether ``op`` is on ``dataset``'s settings object, deletes one of its shards'
    objects (or a superseded generation's), or is on ``dataset/shard``. (Deletes, of a
    shard or of a dataset's earlier life, are part of what a rebuild must not find: a
    deleted encrypted shard left beside a plaintext dataset of the same name makes the
    rebuild leave it out.)"""
    if op.dataset != dataset:
        return False
    return op.op in ("dataset", "delete", "supersede", "outdated", "purge") or op.name == shard
